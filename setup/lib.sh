# Shared by start-env.sh, stop-env.sh and status-env.sh: where things are, and how to
# ask a broker whether it is up. Sourced, not run.

SETUP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SETUP_DIR")
STATE_DIR=${STREAMKIT_STATE_DIR:-$REPO_DIR/.state}/kafka
BOOTSTRAP=localhost:29092
TOPICS=(website-visit website-out website-visit-dlq)
PARTITIONS=3
TANSU_VERSION=0.6.0
COMPOSE_PROJECT=streamkit
COMPOSE_FILE=$SETUP_DIR/docker-compose.yml

say() { echo "$(basename "$0"): $*"; }
die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# The backend that start-env.sh recorded, or nothing.
recorded_backend() { cat "$STATE_DIR/backend" 2>/dev/null || true; }

docker_engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu
  elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  fi
}

# The pid recorded for our tansu, if that process is alive and is tansu.
native_pid() {
  local pid
  pid=$(cat "$STATE_DIR/tansu.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "tansu broker" || return 1
  echo "$pid"
}

# True when the broker at $BOOTSTRAP answers a metadata request.
broker_answers() {
  case "$(recorded_backend)" in
    docker) docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" exec -T kafka \
              /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 --list >/dev/null 2>&1 ;;
    *) local tansu; tansu=$(tansu_bin); [ -n "$tansu" ] && "$tansu" topic list --broker "tcp://$BOOTSTRAP" >/dev/null 2>&1 ;;
  esac
}

# True when something accepts TCP connections on the bootstrap port.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/${BOOTSTRAP##*:}") 2>/dev/null; }
