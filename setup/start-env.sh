#!/usr/bin/env bash
# Starts a local Kafka-compatible cluster at localhost:29092, as the article's
# start-flink-env.sh -k does, with or without Docker. Idempotent.
set -euo pipefail
source "$(dirname "$(readlink -f "$0")")/lib.sh"

usage() {
  cat <<USAGE
Usage: setup/start-env.sh [-k|--kafka] [-a|--all] [--backend auto|docker|native] [--memory] [-h|--help]

Starts a local Kafka-compatible cluster at $BOOTSTRAP and creates the topics
${TOPICS[*]} ($PARTITIONS partitions each). Returns once the broker answers.

  -k, --kafka        start Kafka (the default)
  -a, --all          start everything: Kafka, and kafka-ui on localhost:8080 with Docker
      --backend B    docker: Apache Kafka (KRaft) and kafka-ui in Docker Compose
                     native: tansu, a Kafka-compatible broker in Rust (installed if missing)
                     auto (default): docker when a Docker engine answers, else native
      --memory       native: keep data in memory (about 20x faster to produce, lost on stop)
  -h, --help         this help

State (pid, logs, data) lives in ${STATE_DIR/#$REPO_DIR\//}. Stop with setup/stop-env.sh.
USAGE
}

backend=${STREAMKIT_BACKEND:-auto}
storage=sqlite
services=(kafka)
while [[ "$#" -gt 0 ]]; do
  case $1 in
    -k|--kafka) ;;
    -a|--all) services=(kafka kafka-ui) ;;
    --backend) [ "$#" -ge 2 ] || { usage; exit 1; }; backend=$2; shift ;;
    --backend=*) backend=${1#--backend=} ;;
    --memory) storage=memory ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unknown parameter passed: $1" >&2; usage >&2; exit 1 ;;
  esac
  shift
done
case $backend in
  auto) if docker_engine_answers; then backend=docker; else backend=native; fi ;;
  docker|native) ;;
  *) echo "Unknown backend: $backend" >&2; usage >&2; exit 1 ;;
esac

running=$(recorded_backend)
if [ -n "$running" ] && [ "$running" != "$backend" ] && broker_answers; then
  die "a $running cluster is already running at $BOOTSTRAP; stop it first (setup/stop-env.sh)"
fi
mkdir -p "$STATE_DIR"

wait_until_up() {
  local deadline=$((SECONDS + ${1:-60}))
  until broker_answers; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      [ "$backend" = native ] && tail -n 20 "$STATE_DIR/tansu.log" >&2
      die "the broker did not answer at $BOOTSTRAP within ${1:-60} s"
    fi
    sleep 0.2
  done
}

start_native() {
  local tansu
  tansu=$(tansu_bin)
  if [ -z "$tansu" ]; then
    say "installing tansu $TANSU_VERSION with cargo (about 10 minutes on 2 cores, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
    tansu=$(tansu_bin)
    [ -n "$tansu" ] || die "tansu is not on PATH after cargo install"
  fi
  echo native > "$STATE_DIR/backend"
  if pid=$(native_pid); then
    say "tansu is already running (pid $pid)"
  else
    port_in_use && die "port ${BOOTSTRAP##*:} is in use by another process; stop it or use that broker with --bootstrap-servers"
    mkdir -p "$STATE_DIR/data"
    local engine=sqlite://data/tansu.db
    [ "$storage" = memory ] && engine=memory://tansu/
    # tansu takes the sqlite path relative to its working directory: run it in the state folder.
    (cd "$STATE_DIR" && exec nohup "$tansu" broker \
        --listener-url "tcp://127.0.0.1:${BOOTSTRAP##*:}" \
        --advertised-listener-url "tcp://$BOOTSTRAP" \
        --storage-engine "$engine" >> tansu.log 2>&1 < /dev/null) &
    echo $! > "$STATE_DIR/tansu.pid"
    echo "$engine" > "$STATE_DIR/storage"
    say "started tansu (pid $!, storage $engine, log ${STATE_DIR/#$REPO_DIR\//}/tansu.log)"
  fi
  wait_until_up 60
  # tansu refuses to create a topic that exists (with sqlite storage): create the missing ones.
  local existing
  existing=$("$tansu" topic list --broker "tcp://$BOOTSTRAP")
  for topic in "${TOPICS[@]}"; do
    if ! grep -q "\"name\":\"$topic\"" <<< "$existing"; then
      "$tansu" topic create --broker "tcp://$BOOTSTRAP" --partitions "$PARTITIONS" "$topic" >/dev/null
    fi
  done
}

start_docker() {
  echo docker > "$STATE_DIR/backend"
  docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" up -d "${services[@]}"
  wait_until_up 120
  for topic in "${TOPICS[@]}"; do
    docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" exec -T kafka /opt/kafka/bin/kafka-topics.sh \
      --bootstrap-server localhost:9092 --create --if-not-exists --topic "$topic" --partitions "$PARTITIONS" >/dev/null
  done
}

"start_$backend"
say "Kafka ($backend) is up at $BOOTSTRAP with topics ${TOPICS[*]}"
if [ "$backend" = docker ] && [ "${#services[@]}" -gt 1 ]; then say "kafka-ui: http://localhost:8080"; fi
hint=""
[ "$backend" = native ] && hint=" -X fetch.wait.max.ms=5"
cat <<HINTS
  generate:  cargo run --release --bin datagen -- --source streaming --num-users 5 --delay-seconds 0.5
  run:       cargo run --release --bin pipeline -- --use-own$hint
  stop:      setup/stop-env.sh -k
HINTS
[ "$backend" = native ] && echo "  (tansu holds each fetch for fetch.wait.max.ms; a low value keeps consumers fast)"
exit 0
