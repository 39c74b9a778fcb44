#!/usr/bin/env bash
# Prints the pipeline's figures (issue targets: transform >= 700,000 records/s on one core;
# Kafka to Kafka >= 0.7 of a plain librdkafka copy; peak RSS < 200 MB draining 1,000,000).
# Needs a broker at BOOTSTRAP_SERVERS (default localhost:29092) that accepts CreateTopics.
# Extra arguments are passed as librdkafka properties, e.g. for tansu 0.6:
#   bench/pipeline.sh -X fetch.wait.max.ms=5
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
cargo build --quiet --release --bins --examples
release=$CARGO_TARGET_DIR/release

echo "== the transform alone, one core" >&2
taskset -c 0 "$release/examples/transform_bench" 3000000

echo "== Kafka to Kafka, 1,000,000 events, at ${BOOTSTRAP_SERVERS:-localhost:29092}" >&2
read -r input output dead_letters < <("$release/examples/kafka_bench" 1000000 "$@" 2> >(grep -v '^pipeline: \(job\|read\|warning\)' >&2))

echo "== peak memory of pipeline (default --parallelism 3) draining that backlog of 1,000,000" >&2
/usr/bin/time -f "peak RSS %M KB in %e s" "$release/pipeline" --bounded --use-own --input-topic "$input" \
  --output-topic "$output" --dead-letter-topic "$dead_letters" --job-name "rss-$input" "$@" \
  2>&1 | grep -E "peak RSS|^pipeline: (read|error)" >&2
