#!/usr/bin/env bash
# Prints datagen's throughput figures (issue targets: >= 1,000,000 events/s batch on one
# core; streaming events/s for 1,000,000 events to a local broker). Figures go to stderr
# as datagen's summary lines. Usage: bench/datagen.sh [EVENTS]   (default 3,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-3000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
cargo build --quiet --release --bin datagen
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

servers=${BOOTSTRAP_SERVERS:-localhost:29092}
echo "== streaming 1,000,000 events to topic ${TOPIC_NAME:-website-visit} at $servers" >&2
if ! "$bin" -s streaming -e 1000000 -q; then
  echo "   (streaming skipped: no broker at $servers; see README, 'A local Kafka')" >&2
fi
echo "== the same with --compression lz4" >&2
"$bin" -s streaming -e 1000000 -q --compression lz4 || true
