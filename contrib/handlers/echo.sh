#!/bin/sh
# agentroom handler for tests and demos: replies with the message it received, prefixed "echo: ".
#   agentroomctl room open --on-message /path/to/contrib/handlers/echo.sh
set -eu
message=$(cat)
printf 'echo: %s\n' "$message"
