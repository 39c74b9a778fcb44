#!/usr/bin/env bash
# Prints datagen's throughput figures on stderr:
# - batch generation on one pinned core and on every core, to /dev/null and to a file;
# - streaming to the local cluster (Apache Kafka unless STREAMKIT_BACKEND=tansu, started if
#   down) or BOOTSTRAP_SERVERS, in the same run as Apache Kafka's own
#   kafka-producer-perf-test: the same number of records and the same value bytes (datagen's
#   events, through --payload-file), both idempotent with acks=all, both batching as datagen
#   does (linger.ms=20, batches up to 1 MB); and a bare idempotent librdkafka producer
#   (src/bench/producer.rs) sending the same events with datagen's settings, prepared
#   in memory before its clock starts. Records/s, MB/s and CPU per record for each.
# Usage: bench/datagen.sh [BATCH_EVENTS]   (default 3,000,000; STREAM_EVENTS, default
# 1,000,000, sets the streaming count; ROUNDS, default 2, how often each streaming run repeats)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-3000000}
stream_events=${STREAM_EVENTS:-1000000}
rounds=${ROUNDS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
cargo build --quiet --release --bin datagen --bin bench --features bench
bin=$CARGO_TARGET_DIR/release/datagen
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

seeded=(--seed 1 --start-time 2024-04-18T09:00:00Z -q)
for threads in 1 "$(nproc)"; do
  pin=(); [ "$threads" = 1 ] && pin=(taskset -c 0)
  echo "== batch, --threads $threads${pin:+ (pinned to one core)}: $events events to /dev/null (generation alone)" >&2
  "${pin[@]}" "$bin" -e "$events" --threads "$threads" "${seeded[@]}" -o /dev/null
  # Dirty pages from the previous run would throttle this one: start from a clean cache.
  sync
  echo "== batch, --threads $threads: $events events to a file" >&2
  "${pin[@]}" "$bin" -e "$events" --threads "$threads" "${seeded[@]}" -o "$out/$threads.jsonl"
done
cmp -s "$out/1.jsonl" "$out/$(nproc).jsonl" && echo "   (file outputs byte-identical across thread counts)" >&2
rm -f "$out"/*.jsonl

source bench/lib.sh
echo "== streaming $stream_events events: datagen, and kafka-producer-perf-test on the same value bytes" >&2
# The perf test sends values picked from this file: datagen's own events.
"$bin" -e 100000 "${seeded[@]}" -o "$out/payload.jsonl" 2>/dev/null

# cpu_per_record SECONDS_FILE RECORDS: microseconds of user+sys CPU per record.
cpu_per_record() { awk -v n="$2" '{printf "%.2f", ($1 + $2) * 1e6 / n}' "$1"; }

for round in $(seq "$rounds"); do
  for compression in none lz4; do
    topic=$(fresh_topic datagen)
    /usr/bin/time -f "%U %S" -o "$out/cpu" "$bin" -s streaming --bootstrap-servers "$servers" \
      --topic "$topic" -e "$stream_events" --seed 1 -q --compression "$compression" 2> "$out/log" ||
      { cat "$out/log" >&2; exit 1; }
    rate=$(sed -n 's/.* s: \([0-9,]*\) events\/s (\([0-9.]*\) MB\/s).*/\1 events\/s, \2 MB\/s (keys and values)/p' "$out/log")
    echo "   round $round, compression $compression: datagen                 $rate, $(cpu_per_record "$out/cpu" "$stream_events") µs CPU/record" >&2
    datagen_rate=$(sed -n 's/.* s: \([0-9,]*\) events\/s.*/\1/p' "$out/log" | tr -d ,)

    # The baseline of target 5: a bare idempotent producer with datagen's settings, sending
    # the same events (prepared before its clock starts), in the same round.
    topic=$(fresh_topic bare)
    read -r bare_rate bare_cpu < <(BOOTSTRAP_SERVERS=$servers "$release/bench" producer \
      "$topic" "$out/payload.jsonl" "$stream_events" "$compression" 2>/dev/null)
    awk -v d="$datagen_rate" -v b="$bare_rate" -v c="$bare_cpu" -v r="$round" -v z="$compression" 'BEGIN {
      printf "   round %s, compression %s: bare idempotent producer %d records/s, %.2f µs CPU/record; datagen = %.2f of it\n", r, z, b, c, d / b }' >&2

    if [ "$bench_backend" = tansu ]; then
      [ "$round$compression" = 1none ] &&
        echo "   (kafka-producer-perf-test is skipped: tansu 0.6 never answers the Java producer of Kafka 4.4)" >&2
    elif [ -z "$(kafka_missing)" ]; then
      topic=$(fresh_topic perf)
      /usr/bin/time -f "%U %S" -o "$out/cpu" "$SETUP_DIR/kafka.sh" producer-perf-test \
        --bootstrap-server "$servers" --topic "$topic" --num-records "$stream_events" --throughput -1 \
        --payload-file "$out/payload.jsonl" \
        --command-property acks=all enable.idempotence=true linger.ms=20 batch.size=1000000 \
          compression.type="$compression" > "$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
      rate=$(grep "records sent" "$out/log" | tail -n 1 |
        sed -n 's/.*sent, \([0-9.]*\) records\/sec (\([0-9.]*\) MB\/sec).*/\1 records\/s, \2 MB\/s (values)/p')
      echo "   round $round, compression $compression: kafka-producer-perf-test $rate, $(cpu_per_record "$out/cpu" "$stream_events") µs CPU/record (JVM included)" >&2
    fi
  done
done
