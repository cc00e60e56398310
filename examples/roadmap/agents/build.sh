#!/usr/bin/env bash
# Build System Stabilization Agent.
set -euo pipefail
source "$(dirname "$0")/common.sh"
log "starting $1: $BATON_TASK_TITLE"
case "$1" in
    analyze-base64ct) work 0.3; done_with "base64ct 1.7 requires edition2024; pinned by 3 crates" ;;
    research-edition2024) work 0.3; done_with "edition2024 needs rustc 1.85; the toolchain has it" ;;
    update-cargo-toml) work 0.4; done_with "pinned base64ct in [workspace.dependencies]" ;;
    test-workspace-build) work 0.3; done_with "cargo build --workspace: ok" ;;
    *) work 0.2; done_with "$BATON_TASK_TITLE: done" ;;
esac
