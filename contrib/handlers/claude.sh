#!/bin/sh
# agentroom handler: answers each message with Claude Code (`claude -p`), remembering the
# conversation with each peer (see _history.sh).
#   agentroomctl room open --on-message /path/to/contrib/handlers/claude.sh
# Environment: CLAUDE_HANDLER_MODEL (e.g. haiku, sonnet; default: claude's own), AGENTROOM_SYSTEM_PROMPT,
# AGENTROOM_HANDLER_STATE, AGENTROOM_HISTORY_LINES.
set -eu
. "$(dirname "$0")/_history.sh"

if ! command -v claude >/dev/null 2>&1; then
    echo "claude.sh: the 'claude' CLI is not on PATH. Install Claude Code (npm install -g @anthropic-ai/claude-code)," \
        "run 'claude' once to log in, and make sure the daemon's PATH includes it" \
        "(agentroomd install-service records your current PATH)." >&2
    exit 127
fi

message=$(cat)
history_open claude
# The prompt goes through stdin: nothing the peer wrote ever reaches a command line.
reply=$(history_prompt "$message" | claude -p ${CLAUDE_HANDLER_MODEL:+--model "$CLAUDE_HANDLER_MODEL"}) || {
    echo "claude.sh: claude -p failed" >&2
    exit 1
}
if [ -z "$reply" ]; then
    echo "claude.sh: claude returned an empty reply" >&2
    exit 1
fi
history_remember "$message" "$reply"
printf '%s\n' "$reply"
