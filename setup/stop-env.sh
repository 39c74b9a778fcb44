#!/usr/bin/env bash
# Stops what start-env.sh started, by its recorded pid or compose project, and removes
# its data (as the article's `down -v`) unless --keep-data. Idempotent.
set -euo pipefail
source "$(dirname "$(readlink -f "$0")")/lib.sh"

usage() {
  cat <<USAGE
Usage: setup/stop-env.sh [-k|--kafka] [-a|--all] [--keep-data] [-h|--help]

Stops the local cluster started by setup/start-env.sh and removes its data.

  -k, --kafka      stop Kafka (the default)
  -a, --all        stop everything start-env.sh started
      --keep-data  keep the topics' data for the next start
  -h, --help       this help
USAGE
}

keep_data=false
while [[ "$#" -gt 0 ]]; do
  case $1 in
    -k|--kafka|-a|--all) ;;
    --keep-data) keep_data=true ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unknown parameter passed: $1" >&2; usage >&2; exit 1 ;;
  esac
  shift
done

case "$(recorded_backend)" in
  native)
    if pid=$(native_pid); then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      say "stopped tansu (pid $pid)"
    else
      say "tansu is not running"
    fi
    rm -f "$STATE_DIR/tansu.pid"
    if [ "$keep_data" = false ]; then
      rm -rf "$STATE_DIR/data" "$STATE_DIR/storage" "$STATE_DIR/backend"
      say "removed its data"
    fi
    ;;
  docker)
    volumes=(-v)
    [ "$keep_data" = true ] && volumes=()
    docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" down "${volumes[@]}"
    [ "$keep_data" = false ] && rm -f "$STATE_DIR/backend"
    ;;
  *) say "nothing to stop: no cluster was started by setup/start-env.sh" ;;
esac
exit 0
