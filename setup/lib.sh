# Shared by start-env.sh, stop-env.sh, status-env.sh and kafka.sh: where things are, how to
# find and run each backend, and how to ask a broker whether it is up. Sourced, not run.

SETUP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SETUP_DIR")
STATE_DIR=${STREAMKIT_STATE_DIR:-$REPO_DIR/.state}/kafka
BOOTSTRAP=localhost:29092
CONTROLLER_PORT=29093
TOPICS=(website-visit website-out website-visit-dlq)
PARTITIONS=3
TANSU_VERSION=0.6.0
COMPOSE_PROJECT=streamkit
COMPOSE_FILE=$SETUP_DIR/docker-compose.yml
KAFKA_POM=$SETUP_DIR/kafka/pom.xml
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")
KAFKA_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/streamkit/kafka-$KAFKA_VERSION
# Minimum Java for Apache Kafka 4 (broker and tools).
JAVA_MIN=17

say() { echo "$(basename "$0"): $*"; }
die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# The backend that start-env.sh recorded (docker, kafka or tansu), or nothing.
recorded_backend() {
  local backend
  backend=$(cat "$STATE_DIR/backend" 2>/dev/null || true)
  # Recorded by earlier versions of these scripts.
  [ "$backend" = native ] && backend=tansu
  echo "$backend"
}

docker_engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu
  elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  fi
}

# Installs tansu with cargo (about 10 minutes on 2 cores, once).
install_tansu() {
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
}

# The java to run Kafka with: $JAVA_HOME's, else the one on PATH.
java_bin() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then command -v java
  fi
}

# The major version of `java_bin`, or nothing.
java_major() {
  local java version
  java=$(java_bin)
  [ -n "$java" ] || return 0
  version=$("$java" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
  version=${version#1.}
  echo "${version%%[.+-]*}"
}

# Why Apache Kafka cannot run natively here (nothing when it can), in one line.
kafka_missing() {
  local major
  major=$(java_major)
  if [ -z "$(java_bin)" ]; then
    echo "Apache Kafka needs Java $JAVA_MIN or newer, and no java was found (set JAVA_HOME or put java on PATH)"
  elif [ -z "$major" ] || [ "$major" -lt "$JAVA_MIN" ]; then
    echo "Apache Kafka needs Java $JAVA_MIN or newer; $(java_bin) is Java ${major:-of an unknown version} (set JAVA_HOME to a newer JDK)"
  elif [ ! -f "$KAFKA_HOME/libs/.complete" ] && ! command -v mvn >/dev/null 2>&1; then
    echo "the first start of Apache Kafka needs Maven (mvn) to fetch its jars from Maven Central, and mvn was not found"
  fi
}

# Copies Kafka's jars from Maven Central to $KAFKA_HOME/libs, once, printing progress.
ensure_kafka_jars() {
  [ -f "$KAFKA_HOME/libs/.complete" ] && return 0
  local tmp log
  mkdir -p "$KAFKA_HOME"
  tmp=$(mktemp -d "$KAFKA_HOME/libs.XXXXXX")
  log="$tmp.log"
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into ${KAFKA_HOME/#$HOME/\~} (once; about 55 MB)"
  # Maven prints a line per file it fetches: show each one as it arrives.
  if ! mvn -B -f "$KAFKA_POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 | tee "$log" |
      sed -un 's:^.*Downloaded from [^:]*\: .*/\([^/]*\.jar\) (\([^)]*\)).*:  fetched \1 (\2):p'; then
    local cause
    cause=$(grep -m 1 -E '^\[ERROR\]' "$log" | sed 's/^\[ERROR\] *//')
    rm -rf "$tmp" "$log"
    rmdir "$KAFKA_HOME" 2>/dev/null || true
    die "Maven could not resolve Apache Kafka $KAFKA_VERSION: ${cause:-see mvn -f setup/kafka/pom.xml dependency:copy-dependencies}"
  fi
  rm -f "$log"
  touch "$tmp/.complete"
  rm -rf "$KAFKA_HOME/libs"
  mv "$tmp" "$KAFKA_HOME/libs"
  say "Apache Kafka $KAFKA_VERSION is in ${KAFKA_HOME/#$HOME/\~}/libs ($(ls "$KAFKA_HOME/libs" | wc -l) jars)"
}

# Runs a Kafka class from the cached jars with the tools' JVM settings and logging, the way
# bin/kafka-run-class.sh does. Extra JVM options come from KAFKA_TOOL_OPTS.
kafka_run_class() {
  local java
  java=$(java_bin)
  # shellcheck disable=SC2086
  "$java" ${KAFKA_HEAP_OPTS:--Xmx512m} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SETUP_DIR/kafka/tools-log4j2.properties" \
    ${KAFKA_TOOL_OPTS:-} -cp "$KAFKA_HOME/libs/*" "$@"
}

# The pid recorded for our broker (tansu or Kafka), if that process is alive and is one.
native_pid() {
  local pid file
  for file in "$STATE_DIR/broker.pid" "$STATE_DIR/tansu.pid"; do
    pid=$(cat "$file" 2>/dev/null) || continue
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || continue
    # No pipe into grep -q here: under pipefail its early exit would fail the check.
    local command
    command=$(tr '\0' ' ' < "/proc/$pid/cmdline")
    if [[ $command == *"tansu broker"* || $command == *" kafka.Kafka "* ]]; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# True when something accepts TCP connections on `port` (default: the bootstrap port).
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/${1:-${BOOTSTRAP##*:}}") 2>/dev/null; }

# True when the broker at $BOOTSTRAP answers a metadata request.
broker_answers() {
  case "$(recorded_backend)" in
    docker) docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" exec -T kafka \
              /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 --list >/dev/null 2>&1 ;;
    kafka) port_in_use && [ -f "$KAFKA_HOME/libs/.complete" ] &&
             KAFKA_TOOL_OPTS=-XX:TieredStopAtLevel=1 kafka_run_class org.apache.kafka.tools.TopicCommand \
               --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1 ;;
    *) local tansu; tansu=$(tansu_bin); [ -n "$tansu" ] && "$tansu" topic list --broker "tcp://$BOOTSTRAP" >/dev/null 2>&1 ;;
  esac
}

# What runs: "Apache Kafka 4.4.0", "tansu 0.6.0", or the Docker image.
backend_version() {
  case "$1" in
    kafka) echo "Apache Kafka $(cat "$STATE_DIR/version" 2>/dev/null || echo "$KAFKA_VERSION")" ;;
    tansu) local tansu; tansu=$(tansu_bin); echo "tansu $([ -n "$tansu" ] && "$tansu" --version 2>/dev/null | awk '{print $NF}' | head -n 1)" ;;
    docker) echo "Apache Kafka in Docker ($(sed -n 's/^ *image: *\(apache\/kafka:.*\)/\1/p' "$COMPOSE_FILE"))" ;;
  esac
}
