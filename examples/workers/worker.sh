#!/usr/bin/env bash
# A Baton worker agent in plain bash. Baton starts it once and talks to it with JSON-RPC 2.0,
# one message per line, on stdin and stdout (see docs/agent-protocol.md). It answers
# `initialize`, runs each `task/assign` (here: reports the task's title back), sends a
# heartbeat when it has been quiet for a while, and exits on `shutdown`.
#
# Parsing JSON with bash patterns is only good enough for a demo: it relies on Baton's
# messages being compact, one per line, with keys in sorted order (so the request's own `id`
# comes first) and string values free of escaped quotes.
set -u

field() { # field NAME LINE: the value of a string or number field
    if [[ $2 =~ \"$1\":\"([^\"]*)\" ]]; then printf '%s' "${BASH_REMATCH[1]}"
    elif [[ $2 =~ \"$1\":([0-9]+) ]]; then printf '%s' "${BASH_REMATCH[1]}"
    fi
}

reply() { # reply ID RESULT_JSON
    printf '{"jsonrpc":"2.0","id":%s,"result":%s}\n' "$1" "$2"
}

while true; do
    if ! IFS= read -r -t 2 line; then
        [ $? -gt 128 ] || exit 0   # stdin closed: Baton is gone
        printf '{"jsonrpc":"2.0","method":"heartbeat","params":{}}\n'
        continue
    fi
    id=$(field id "$line")
    case "$(field method "$line")" in
        initialize)
            echo "[worker.sh] initialized as $(field agent "$line")" >&2
            reply "$id" '{"name":"shell-example-worker"}' ;;
        task/assign)
            title=$(field title "$line")
            echo "[worker.sh] working on: $title" >&2
            reply "$id" "{\"echo\":\"$title\",\"by\":\"worker.sh\"}" ;;
        shutdown)
            reply "$id" '{}'
            exit 0 ;;
        task/cancel) echo "[worker.sh] cancel requested" >&2 ;;
        *) [ -n "$id" ] && printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"unknown method"}}\n' "$id" ;;
    esac
done
