#!/usr/bin/env bash
# Says whether the local cluster is up, where, on which backend and version. Exit 0 when it answers.
set -euo pipefail
source "$(dirname "$(readlink -f "$0")")/lib.sh"

case "${1:-}" in
  "") ;;
  -h|--help) echo "Usage: setup/status-env.sh   (exit 0 when the local cluster answers at $BOOTSTRAP)"; exit 0 ;;
  *) echo "Unknown parameter passed: $1" >&2; echo "Usage: setup/status-env.sh" >&2; exit 1 ;;
esac
backend=$(recorded_backend)
if [ -z "$backend" ]; then
  say "no cluster started by setup/start-env.sh"
  exit 1
fi
detail=""
case $backend in
  tansu) detail=" (pid $(native_pid || echo none), storage $(cat "$STATE_DIR/storage" 2>/dev/null || echo unknown))" ;;
  kafka) detail=" (pid $(native_pid || echo none), data ${STATE_DIR/#$REPO_DIR\//}/kafka-data)" ;;
esac
if broker_answers; then
  say "up: $backend, $(backend_version "$backend"), at $BOOTSTRAP$detail"
else
  say "down: $backend, $(backend_version "$backend"), at $BOOTSTRAP does not answer$detail"
  exit 1
fi
