#!/bin/sh
# agentroom handler: answers each message with OpenCode (`opencode run`), remembering the
# conversation with each peer (see _history.sh).
#   agentroomctl room open --on-message /path/to/contrib/handlers/opencode.sh
# Environment: OPENCODE_MODEL (provider/model), OPENCODE_SERVER (attach to a running `opencode serve`,
# e.g. http://127.0.0.1:4096, to skip start-up time), AGENTROOM_SYSTEM_PROMPT, AGENTROOM_HANDLER_STATE,
# AGENTROOM_HISTORY_LINES (keep the prompt under the 128 KiB limit of one command-line argument).
set -eu
. "$(dirname "$0")/_history.sh"

if ! command -v opencode >/dev/null 2>&1; then
    echo "opencode.sh: the 'opencode' CLI is not on PATH. Install OpenCode (npm install -g opencode-ai," \
        "or curl -fsSL https://opencode.ai/install | bash), run 'opencode auth login' once, and make sure" \
        "the daemon's PATH includes it (agentroomd install-service records your current PATH)." >&2
    exit 127
fi

message=$(cat)
history_open opencode
prompt=$(history_prompt "$message")
# `opencode run` takes the prompt as an argument: one argv word, never interpreted by a shell.
reply=$(opencode run ${OPENCODE_MODEL:+--model "$OPENCODE_MODEL"} ${OPENCODE_SERVER:+--attach "$OPENCODE_SERVER"} \
    "$prompt" </dev/null) || {
    echo "opencode.sh: opencode run failed" >&2
    exit 1
}
if [ -z "$reply" ]; then
    echo "opencode.sh: opencode returned an empty reply" >&2
    exit 1
fi
history_remember "$message" "$reply"
printf '%s\n' "$reply"
