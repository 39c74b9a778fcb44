#!/usr/bin/env bash
# Prints the traffic-agg job's figures on stderr:
# - the aggregation alone on one pinned core (decode, parse, event time, count, fire), over
#   1,000,000 events (or EVENTS) of 10,000 users, then of 100 users;
# - Kafka to Kafka on the local cluster (Apache Kafka unless STREAMKIT_BACKEND=tansu,
#   started if down) or BOOTSTRAP_SERVERS: the same backlog drained by `pipeline --bounded`
#   as traffic-agg and as the stateless kafka-io job, alternately, twice each, with
#   records/s, CPU seconds per million records and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${EVENTS:-1000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
cargo build --quiet --release --bins --features bench
source bench/lib.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for users in 10000 100; do
  "$release/datagen" -e "$events" -u "$users" --seed 1 --start-time 2024-04-28T00:00:00Z \
    --time-step-ms 10 -l 3 -o "$work/events.jsonl" -q
  echo "== the aggregation alone, one core, $events events of $users users" >&2
  taskset -c 0 "$release/bench" window "$work/events.jsonl"
done

echo "== Kafka to Kafka, $events events of 10000 users, at $servers" >&2
input=$(fresh_topic windows-in)
"$release/datagen" -s streaming -e "$events" -u 10000 --seed 1 --start-time 2024-04-28T00:00:00Z \
  --time-step-ms 10 -l 3 --bootstrap-servers "$servers" --topic "$input" -q "${client_props[@]}"
for round in 1 2; do
  for job in traffic-agg kafka-io; do
    out=$(fresh_topic "$job-out")
    dlq=$(fresh_topic "$job-dlq")
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$release/pipeline" --bounded --job "$job" \
      --job-name "bench-$job-$round-$input" --bootstrap-servers "$servers" --input-topic "$input" \
      --output-topic "$out" --dead-letter-topic "$dlq" --no-ui "${client_props[@]}" 2> "$work/log" \
      || { cat "$work/log" >&2; exit 1; }
    read -r elapsed user sys rss < "$work/time"
    awk -v job="$job" -v n="$events" -v e="$elapsed" -v u="$user" -v s="$sys" -v m="$rss" 'BEGIN {
      printf "round %s %-11s %8.0f records/s in %5.2f s, %.2f CPU-s per million records, peak RSS %d MB\n",
        "'"$round"'", job, n / e, e, (u + s) * 1e6 / n, m / 1024 }' >&2
    grep "^pipeline: read" "$work/log" >&2
  done
done
