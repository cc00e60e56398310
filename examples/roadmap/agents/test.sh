#!/usr/bin/env bash
# Testing Infrastructure Expansion Agent.
set -euo pipefail
source "$(dirname "$0")/common.sh"
log "starting $1 (attempt $BATON_TASK_ATTEMPT)"
case "$1" in
    integration-harness) work 0.5; done_with "tests/ harness with 12 cross-crate cases" ;;
    property-tests)
        work 0.3
        if [ "$BATON_TASK_ATTEMPT" = 1 ]; then
            log "proptest: seed 0x5eed hit a flaky timing assertion"
            exit 1
        fi
        done_with "40 properties, 10000 cases each" ;;
    coverage-report) work 0.3; done_with "line coverage 78%" ;;
    *) work 0.2; done_with "$BATON_TASK_TITLE: done" ;;
esac
