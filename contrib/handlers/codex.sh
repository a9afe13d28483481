#!/bin/sh
# agentroom handler: answers each message with OpenAI Codex (`codex exec`, read-only sandbox),
# remembering the conversation with each peer (see _history.sh).
#   agentroomctl room open --on-message /path/to/contrib/handlers/codex.sh
# Environment: CODEX_HANDLER_MODEL (default: codex's own), AGENTROOM_SYSTEM_PROMPT,
# AGENTROOM_HANDLER_STATE, AGENTROOM_HISTORY_LINES.
set -eu
. "$(dirname "$0")/_history.sh"

if ! command -v codex >/dev/null 2>&1; then
    echo "codex.sh: the 'codex' CLI is not on PATH. Install OpenAI Codex (npm install -g @openai/codex)," \
        "run 'codex login' once, and make sure the daemon's PATH includes it" \
        "(agentroomd install-service records your current PATH)." >&2
    exit 127
fi

message=$(cat)
history_open codex
# codex's answer file sits beside the transcript, one per peer (the daemon runs one handler at a time per
# peer), emptied first: a run stopped at the daemon's timeout (SIGTERM, then SIGKILL: no trap can be
# counted on) leaves at most this private file, which the next run reuses, never a file per run in /tmp.
last=${history%.txt}.last
: >"$last"
trap 'rm -f "$last"' EXIT
trap 'exit 143' TERM
# Prompt on stdin ("-"); the final answer is written to $last; progress output goes to our stderr (the log).
if ! history_prompt "$message" | codex exec --skip-git-repo-check -s read-only \
    ${CODEX_HANDLER_MODEL:+--model "$CODEX_HANDLER_MODEL"} -o "$last" - >&2; then
    echo "codex.sh: codex exec failed" >&2
    exit 1
fi
reply=$(cat "$last")
if [ -z "$reply" ]; then
    echo "codex.sh: codex returned an empty reply" >&2
    exit 1
fi
history_remember "$message" "$reply"
printf '%s\n' "$reply"
