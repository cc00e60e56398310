#!/usr/bin/env bash
# A developer agent, used by the kernel, storage, security and performance workstreams: works
# on its task and reports what it did.
set -euo pipefail
source "$(dirname "$0")/common.sh"
log "starting $1: $BATON_TASK_TITLE"
work 0.4
done_with "$BATON_TASK_TITLE: done"
