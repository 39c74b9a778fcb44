#!/usr/bin/env bash
# Starts a local Kafka cluster at localhost:29092, as the article's start-flink-env.sh -k
# does, with or without Docker. Idempotent.
set -euo pipefail
source "$(dirname "$(readlink -f "$0")")/lib.sh"

usage() {
  cat <<USAGE
Usage: setup/start-env.sh [-k|--kafka] [-a|--all] [--backend auto|docker|kafka|tansu] [--memory] [-h|--help]

Starts a local Kafka cluster at $BOOTSTRAP and creates the topics
${TOPICS[*]} ($PARTITIONS partitions each). Returns once the broker answers.

  -k, --kafka        start Kafka (the default)
  -a, --all          start everything: Kafka, and kafka-ui on localhost:8080 with Docker
      --backend B    docker: Apache Kafka (KRaft) and kafka-ui in Docker Compose
                     kafka:  Apache Kafka $KAFKA_VERSION natively, on Java $JAVA_MIN+ (its jars come
                             from Maven Central through mvn, once)
                     tansu:  tansu $TANSU_VERSION, a Kafka-compatible broker in Rust, no JVM
                             (installed with cargo if missing; 'native' is an old name for it)
                     auto (default, or env STREAMKIT_BACKEND): docker when a Docker engine
                             answers, else kafka when Java and Maven are here, else tansu
      --memory       tansu: keep data in memory (about 20x faster to produce, lost on stop)
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
    --backend) [ "$#" -ge 2 ] || { usage >&2; exit 1; }; backend=$2; shift ;;
    --backend=*) backend=${1#--backend=} ;;
    --memory) storage=memory ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unknown parameter passed: $1" >&2; usage >&2; exit 1 ;;
  esac
  shift
done
case $backend in
  auto)
    if docker_engine_answers; then backend=docker
    elif [ -z "$(kafka_missing)" ]; then backend=kafka
    else backend=tansu
    fi ;;
  native) say "'native' is now called 'tansu': starting tansu"; backend=tansu ;;
  docker|kafka|tansu) ;;
  *) echo "Unknown backend: $backend" >&2; usage >&2; exit 1 ;;
esac

running=$(recorded_backend)
if [ -n "$running" ] && [ "$running" != "$backend" ] && broker_answers; then
  die "a $running cluster is already running at $BOOTSTRAP; stop it first (setup/stop-env.sh)"
fi
mkdir -p "$STATE_DIR"

# Waits until the broker answers; prints the tail of `log` and fails if it does not within
# `seconds`, or if the process `pid` dies first.
wait_until_up() {
  local seconds=$1 log=$2 pid=${3:-}
  local deadline=$((SECONDS + seconds))
  until broker_answers; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2 2>/dev/null || true
      die "the broker exited during start-up (above: the end of ${log/#$REPO_DIR\//})"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$log" >&2 2>/dev/null || true
      die "the broker did not answer at $BOOTSTRAP within $seconds s (above: the end of ${log/#$REPO_DIR\//})"
    fi
    sleep 0.5
  done
}

refuse_taken_ports() {
  local port
  for port in "${BOOTSTRAP##*:}" "$@"; do
    port_in_use "$port" && die "port $port is in use by another process; stop it or use that broker with --bootstrap-server"
  done
  return 0
}

start_tansu() {
  local tansu
  tansu=$(tansu_bin)
  if [ -z "$tansu" ]; then
    say "installing tansu $TANSU_VERSION with cargo (about 10 minutes on 2 cores, once)"
    install_tansu
    tansu=$(tansu_bin)
    [ -n "$tansu" ] || die "tansu is not on PATH after cargo install"
  fi
  echo tansu > "$STATE_DIR/backend"
  if pid=$(native_pid); then
    say "tansu is already running (pid $pid)"
  else
    refuse_taken_ports
    mkdir -p "$STATE_DIR/data"
    local engine=sqlite://data/tansu.db
    [ "$storage" = memory ] && engine=memory://tansu/
    # tansu takes the sqlite path relative to its working directory: run it in the state folder.
    (cd "$STATE_DIR" && exec nohup "$tansu" broker \
        --listener-url "tcp://127.0.0.1:${BOOTSTRAP##*:}" \
        --advertised-listener-url "tcp://$BOOTSTRAP" \
        --storage-engine "$engine" >> tansu.log 2>&1 < /dev/null) &
    pid=$!
    echo "$pid" > "$STATE_DIR/broker.pid"
    echo "$engine" > "$STATE_DIR/storage"
    say "started tansu (pid $pid, storage $engine, log ${STATE_DIR/#$REPO_DIR\//}/tansu.log)"
  fi
  wait_until_up 60 "$STATE_DIR/tansu.log" "$pid"
  # tansu refuses to create a topic that exists (with sqlite storage): create the missing ones.
  local existing
  existing=$("$tansu" topic list --broker "tcp://$BOOTSTRAP")
  for topic in "${TOPICS[@]}"; do
    if ! grep -q "\"name\":\"$topic\"" <<< "$existing"; then
      "$tansu" topic create --broker "tcp://$BOOTSTRAP" --partitions "$PARTITIONS" "$topic" >/dev/null
    fi
  done
}

start_kafka() {
  local missing
  missing=$(kafka_missing)
  [ -z "$missing" ] || die "$missing. Other backends: --backend tansu (no JVM), --backend docker"
  ensure_kafka_jars
  echo kafka > "$STATE_DIR/backend"
  if pid=$(native_pid); then
    say "Apache Kafka is already running (pid $pid)"
  else
    refuse_taken_ports "$CONTROLLER_PORT"
    local data=$STATE_DIR/kafka-data config=$STATE_DIR/server.properties
    mkdir -p "$data" "$STATE_DIR/logs"
    { cat "$SETUP_DIR/kafka/server.properties"; echo "log.dirs=$data"; } > "$config"
    if [ ! -f "$data/meta.properties" ]; then
      # A new cluster: format its storage once (KRaft). Later starts reuse the data.
      local cluster_id
      cluster_id=$(kafka_run_class kafka.tools.StorageTool random-uuid)
      kafka_run_class kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$config" \
        > "$STATE_DIR/logs/format.log" 2>&1 || { cat "$STATE_DIR/logs/format.log" >&2; die "cannot format Kafka's storage in $data"; }
    fi
    # The broker's JVM: bin/kafka-server-start.sh's settings, with a 1 GiB heap (its default).
    # shellcheck disable=SC2086
    nohup "$(java_bin)" ${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g} \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dkafka.logs.dir="$STATE_DIR/logs" -Dlog4j2.configurationFile="$SETUP_DIR/kafka/log4j2.properties" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$config" >> "$STATE_DIR/logs/kafka.out" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$STATE_DIR/broker.pid"
    echo "$KAFKA_VERSION" > "$STATE_DIR/version"
    say "started Apache Kafka $KAFKA_VERSION (pid $pid, data ${data/#$REPO_DIR\//}, log ${STATE_DIR/#$REPO_DIR\//}/logs/server.log)"
  fi
  # The JVM's own output (a crash, a bad option) lands in kafka.out; the broker's in server.log.
  local log=$STATE_DIR/logs/server.log
  [ -s "$log" ] || log=$STATE_DIR/logs/kafka.out
  wait_until_up 60 "$log" "$pid"
  # Create the missing topics only: each call of a Kafka tool costs a JVM start.
  local existing topic
  existing=$(KAFKA_TOOL_OPTS=-XX:TieredStopAtLevel=1 kafka_run_class org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BOOTSTRAP" --list)
  for topic in "${TOPICS[@]}"; do
    grep -qx "$topic" <<< "$existing" && continue
    KAFKA_TOOL_OPTS=-XX:TieredStopAtLevel=1 kafka_run_class org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$topic" --partitions "$PARTITIONS" >/dev/null
  done
}

start_docker() {
  echo docker > "$STATE_DIR/backend"
  docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" up -d "${services[@]}"
  wait_until_up 120 /dev/null
  for topic in "${TOPICS[@]}"; do
    docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" exec -T kafka /opt/kafka/bin/kafka-topics.sh \
      --bootstrap-server localhost:9092 --create --if-not-exists --topic "$topic" --partitions "$PARTITIONS" >/dev/null
  done
}

"start_$backend"
say "$(backend_version "$backend") is up at $BOOTSTRAP with topics ${TOPICS[*]}"
if [ "$backend" = docker ] && [ "${#services[@]}" -gt 1 ]; then say "kafka-ui: http://localhost:8080"; fi
hint=""
look="setup/kafka.sh console-consumer --topic website-out --from-beginning --formatter-property print.key=true"
if [ "$backend" = tansu ]; then
  hint=" -X fetch.wait.max.ms=5"
  look="tansu cat consume --broker tcp://$BOOTSTRAP --partition 0 website-out"
fi
cat <<HINTS
  generate:  cargo run --release --bin datagen -- --source streaming --num-users 5 --delay-seconds 0.5
  run:       cargo run --release --bin pipeline -- --use-own$hint
  look:      $look
  stop:      setup/stop-env.sh -k
HINTS
[ "$backend" = tansu ] && echo "  (tansu holds each fetch for fetch.wait.max.ms; a low value keeps consumers fast)"
exit 0
