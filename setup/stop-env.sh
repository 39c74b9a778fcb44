#!/usr/bin/env bash
# Stops what start-env.sh started, by its recorded pid or compose project, and removes
# its data (as the article's `down -v`) unless --keep-data. Idempotent.
set -euo pipefail
source "$(dirname "$(readlink -f "$0")")/lib.sh"

usage() {
  cat <<USAGE
Usage: setup/stop-env.sh [-k|--kafka] [-a|--all] [--keep-data] [-h|--help]

Stops the local cluster started by setup/start-env.sh (any backend) and removes its data.

  -k, --kafka      stop Kafka (the default)
  -a, --all        stop everything start-env.sh started
      --keep-data  keep the topics' data and committed positions for the next start
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

# Stops our broker process: SIGTERM (Kafka shuts down in order), SIGKILL after `seconds`.
stop_process() {
  local name=$1 seconds=$2 pid
  if pid=$(native_pid); then
    kill -TERM "$pid"
    for _ in $(seq $((seconds * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid"
      for _ in $(seq 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      say "stopped $name (pid $pid; killed after $seconds s)"
    else
      say "stopped $name (pid $pid)"
    fi
  else
    say "$name is not running"
  fi
  rm -f "$STATE_DIR/broker.pid" "$STATE_DIR/tansu.pid"
}

case "$(recorded_backend)" in
  tansu)
    stop_process tansu 10
    if [ "$keep_data" = false ]; then
      rm -rf "$STATE_DIR/data" "$STATE_DIR/storage" "$STATE_DIR/backend"
      say "removed its data"
    fi
    ;;
  kafka)
    stop_process "Apache Kafka" 30
    if [ "$keep_data" = false ]; then
      rm -rf "$STATE_DIR/kafka-data" "$STATE_DIR/server.properties" "$STATE_DIR/version" "$STATE_DIR/backend"
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
