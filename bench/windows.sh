#!/usr/bin/env bash
# Prints the traffic-agg job's figures on stderr:
# - the aggregation alone on one pinned core (decode, parse, event time, count, fire), over
#   1,000,000 events (or EVENTS) of 10,000 users, then of 100 users;
# - Kafka to Kafka on the local cluster (Apache Kafka unless STREAMKIT_BACKEND=tansu,
#   started if down) or BOOTSTRAP_SERVERS: the same backlog (6 partitions, keyed as the
#   original keys it) drained by `pipeline --bounded`, twice each, alternately: traffic-agg
#   through its repartition topic in one process, the same in three processes started
#   together (wall time from the first start to the last exit, CPU summed), traffic-agg in
#   one stage (--no-repartition), and the stateless kafka-io job; with records/s, CPU
#   seconds per million records and peak RSS (the largest of the processes).
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
input=$(fresh_topic windows-in 6)
"$release/datagen" -s streaming -e "$events" -u 10000 --seed 1 --start-time 2024-04-28T00:00:00Z \
  --time-step-ms 10 -l 3 --bootstrap-servers "$servers" --topic "$input" -q "${client_props[@]}"

# run LABEL PROCESSES JOB [FLAG...]: PROCESSES `pipeline --bounded` processes of one job,
# started together; prints its figures.
run() {
  local label=$1 processes=$2 job=$3 i
  shift 3
  local name="bench-$label-$round-$input"
  local out dlq
  out=$(fresh_topic "$label-out" 6)
  dlq=$(fresh_topic "$label-dlq")
  local started ended
  started=$(date +%s.%N)
  for i in $(seq "$processes"); do
    /usr/bin/time -f "%e %U %S %M" -o "$work/time$i" "$release/pipeline" --bounded --job "$job" \
      --job-name "$name" --bootstrap-servers "$servers" --input-topic "$input" \
      --output-topic "$out" --dead-letter-topic "$dlq" --no-ui "$@" "${client_props[@]}" \
      2> "$work/log$i" &
  done
  for i in $(seq "$processes"); do
    wait -n || { cat "$work"/log* >&2; exit 1; }
  done
  ended=$(date +%s.%N)
  cat "$work"/time[0-9]* | awk -v label="$label" -v n="$events" -v p="$processes" \
    -v s0="$started" -v s1="$ended" -v round="$round" '
    { cpu += $2 + $3; if ($4 > rss) rss = $4 }
    END { e = s1 - s0; printf "round %s %-22s %8.0f records/s in %5.2f s, %.2f CPU-s per million records, peak RSS %d MB\n",
      round, label, n / e, e, cpu * 1e6 / n, rss / 1024 }' >&2
  grep -h "^pipeline: read" "$work"/log[0-9]* >&2
  rm -f "$work"/time[0-9]* "$work"/log[0-9]*
}

for round in 1 2; do
  run traffic-agg 1 traffic-agg
  run traffic-agg-x3 3 traffic-agg
  run traffic-agg-one-stage 1 traffic-agg --no-repartition
  run kafka-io 1 kafka-io
done
