#!/usr/bin/env bash
# Prints the pipeline's figures on stderr:
# - the transform alone on one pinned core, next to a bare serde_json loop;
# - Kafka to Kafka on the local cluster (Apache Kafka unless STREAMKIT_BACKEND=tansu,
#   started if down) or BOOTSTRAP_SERVERS: 1,000,000 events (or EVENTS), copied by an
#   expert-tuned idempotent librdkafka copy (the I/O limit; first, in the middle and last),
#   and by the pipeline at --parallelism 3 (the default), 1 and 2, each with records/s and
#   CPU seconds per million records;
# - the pipeline's peak RSS while it drains that backlog.
# Extra arguments are librdkafka properties for every client (-X key=value); on tansu the
# script adds -X fetch.wait.max.ms=5 itself.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${EVENTS:-1000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
cargo build --quiet --release --bins --features bench
source bench/lib.sh

echo "== the transform alone, one core" >&2
taskset -c 0 "$release/bench" transform 3000000

echo "== Kafka to Kafka, $events events, at $servers" >&2
read -r input output dead_letters < <(BOOTSTRAP_SERVERS=$servers "$release/bench" kafka "$events" \
  "${client_props[@]}" "$@" 2> >(grep -v '^pipeline: \(job\|read\|warning\)' >&2))

echo "== peak memory of pipeline (default --parallelism 3) draining that backlog of $events" >&2
/usr/bin/time -f "peak RSS %M KB in %e s" "$release/pipeline" --bounded --bootstrap-servers "$servers" \
  --input-topic "$input" --output-topic "$output" --dead-letter-topic "$dead_letters" --job-name "rss-$input" \
  --no-ui "${client_props[@]}" "$@" 2>&1 | grep -E "peak RSS|^pipeline: (read|error)" >&2

echo "== 1, 2 and 3 pipeline processes (--parallelism 1 each, one consumer group) draining that backlog of $events" >&2
for processes in 1 2 3; do
  out_topic=$(fresh_topic "p$processes-out")
  job="bench-processes-$processes-$input"
  started=$(date +%s.%N)
  pids=()
  for i in $(seq "$processes"); do
    /usr/bin/time -f "%U %S" -o "$CARGO_TARGET_DIR/bench-cpu-$i" "$release/pipeline" --bounded \
      --bootstrap-servers "$servers" --input-topic "$input" --output-topic "$out_topic" \
      --dead-letter-topic "$dead_letters" --job-name "$job" --parallelism 1 --no-ui \
      "${client_props[@]}" "$@" 2> "$CARGO_TARGET_DIR/bench-log-$i" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  ended=$(date +%s.%N)
  cpu=$(cat "$CARGO_TARGET_DIR"/bench-cpu-[1-"$processes"] | awk '{s += $1 + $2} END {print s}')
  reads=$(grep -h "= written" "$CARGO_TARGET_DIR"/bench-log-[1-"$processes"] | sed 's/.*read \([0-9,]*\) = .*/\1/' | tr -d , | tr '\n' ' ')
  awk -v n="$events" -v p="$processes" -v s="$started" -v e="$ended" -v c="$cpu" -v r="$reads" 'BEGIN {
    printf "%d process(es): %.0f records/s (%.2f s from the first start to the last exit), %.2f CPU-s per million records; records read per process: %s\n",
      p, n / (e - s), e - s, c * 1e6 / n, r }' >&2
done
rm -f "$CARGO_TARGET_DIR"/bench-cpu-* "$CARGO_TARGET_DIR"/bench-log-*
