#!/usr/bin/env bash
# Prints the cost of exactly-once on stderr: on the local cluster (Apache Kafka, started if
# down; transactions need it) or BOOTSTRAP_SERVERS, one backlog of 2,000,000 events (or
# EVENTS) on 6 partitions drained by `pipeline --bounded` (one process, 3 workers) at
# least once, then exactly once with transactions every 100 ms, 1 s and 10 s, then at
# least once again; then Kafka Streams (bench/jvm/StreamsEventLog.java, the same job, 3
# stream threads) on the same backlog at at_least_once and at exactly_once_v2 with
# commit.interval.ms=100; records/s and CPU seconds per million records for each, from
# start to exit. SKIP_STREAMS=1 leaves Kafka Streams out.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${EVENTS:-2000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
cargo build --quiet --release --bins
source bench/lib.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

topic() {
  local name
  name="bench-$1-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  "$SETUP_DIR/kafka.sh" topics --bootstrap-server "$servers" --create --topic "$name" --partitions 6 >/dev/null
  echo "$name"
}

input=$(topic eos-in)
"$release/datagen" -s streaming -e "$events" --seed 1 --bootstrap-servers "$servers" --topic "$input" -q
echo "== $events events on 6 partitions at $servers; pipeline --bounded, 3 workers" >&2
# Prints a run's records/s and CPU seconds per million records (from $work/time, written
# by /usr/bin/time -f "%e %U %S"), then the job's own summary: the lines of $work/log
# that match $2.
report() {
  local label=$1 summary=$2 elapsed user sys
  read -r elapsed user sys < "$work/time"
  awk -v label="$label" -v n="$events" -v e="$elapsed" -v u="$user" -v s="$sys" 'BEGIN {
    printf "%-26s %8.0f records/s in %6.2f s, %.2f CPU-s per million records\n",
      label, n / e, e, (u + s) * 1e6 / n }' >&2
  grep "$summary" "$work/log" >&2
}
run() {
  local label=$1
  shift
  local out dlq
  out=$(topic eos-out)
  dlq=$(topic eos-dlq)
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$release/pipeline" --bounded --use-own \
    --bootstrap-servers "$servers" --job-name "bench-$label-$out" --input-topic "$input" \
    --output-topic "$out" --dead-letter-topic "$dlq" --no-ui "$@" 2> "$work/log" \
    || { cat "$work/log" >&2; exit 1; }
  report "$label" "^pipeline: read"
}
run "at-least-once"
run "exactly-once, 100 ms" --processing-guarantee exactly-once --instance-id bench
run "exactly-once, 1 s" --processing-guarantee exactly-once --instance-id bench --commit-interval 1000
run "exactly-once, 10 s" --processing-guarantee exactly-once --instance-id bench --commit-interval 10000
run "at-least-once (again)"

[ -n "${SKIP_STREAMS:-}" ] && exit 0
# Kafka Streams at the broker's version, from Maven Central (once), compiled ahead so
# that compiling is not timed; its JVM's start is, as the pipeline's start is.
streams_libs=$(dirname "$KAFKA_HOME")/kafka-streams-$KAFKA_VERSION/libs
if [ ! -f "$streams_libs/.complete" ]; then
  echo "== fetching Kafka Streams $KAFKA_VERSION from Maven Central (once)" >&2
  mvn -B -f bench/jvm/pom.xml dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" \
    -DincludeScope=runtime -DoutputDirectory="$streams_libs" > "$work/mvn.log" 2>&1 \
    || { tail -n 20 "$work/mvn.log" >&2; exit 1; }
  touch "$streams_libs/.complete"
fi
classpath="$streams_libs/*:$KAFKA_HOME/libs/*"
# The compiler beside the java that runs it (JAVA_HOME's when set).
"$(dirname "$(readlink -f "$(java_bin)")")/javac" -d "$work/classes" -cp "$classpath" bench/jvm/StreamsEventLog.java
streams() {
  local label=$1 guarantee=$2 commit_ms=$3
  local out dlq
  out=$(topic eos-out)
  dlq=$(topic eos-dlq)
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$(java_bin)" -Xmx1g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$SETUP_DIR/kafka/tools-log4j2.properties" \
    -cp "$work/classes:$classpath" StreamsEventLog "$servers" "bench-streams-$out" \
    "$input" "$out" "$dlq" "$guarantee" "$commit_ms" 3 "$events" 2> "$work/log" \
    || { cat "$work/log" >&2; exit 1; }
  report "$label" "^StreamsEventLog:"
}
streams "Kafka Streams, at_least_once" at_least_once 30000
streams "Kafka Streams, exactly_once_v2, 100 ms" exactly_once_v2 100
