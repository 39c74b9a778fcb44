# Shared by the benchmark scripts: the broker to measure on, fresh topics, and CPU figures.
# Sourced, not run.

source "$(dirname "${BASH_SOURCE[0]}")/../setup/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/streamkit-target}
release=$CARGO_TARGET_DIR/release
servers=${BOOTSTRAP_SERVERS:-$BOOTSTRAP}

# With no BOOTSTRAP_SERVERS, the local cluster: started if it is down, on Apache Kafka
# unless STREAMKIT_BACKEND says otherwise (tansu, for the broker without a JVM).
bench_backend=external
client_props=()
if [ -z "${BOOTSTRAP_SERVERS:-}" ]; then
  if ! "$SETUP_DIR/status-env.sh" >/dev/null 2>&1; then
    STREAMKIT_BACKEND=${STREAMKIT_BACKEND:-kafka} "$SETUP_DIR/start-env.sh" -k >&2
  fi
  bench_backend=$(recorded_backend)
  # tansu holds every fetch for fetch.wait.max.ms: its consumers get a low value.
  [ "$bench_backend" = tansu ] && client_props=(-X fetch.wait.max.ms=5)
  echo "== broker: $(backend_version "$bench_backend") at $servers" >&2
fi

# A fresh topic with 3 partitions (or $2), named bench-<what>-<random>; prints its name.
fresh_topic() {
  local name partitions=${2:-3}
  name="bench-$1-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  if [ "$bench_backend" = tansu ]; then
    "$(tansu_bin)" topic create --broker "tcp://$servers" --partitions "$partitions" "$name" >/dev/null
  else
    "$SETUP_DIR/kafka.sh" topics --bootstrap-server "$servers" --create --topic "$name" --partitions "$partitions" >/dev/null
  fi
  echo "$name"
}
