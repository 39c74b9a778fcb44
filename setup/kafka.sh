#!/usr/bin/env bash
# Apache Kafka's own command-line tools, from the jars start-env.sh uses, the way
# bin/kafka-TOOL.sh runs them: setup/kafka.sh TOOL ARGS...
# --bootstrap-server defaults to the local cluster.
set -euo pipefail
source "$(dirname "$(readlink -f "$0")")/lib.sh"

# tool name (bin/kafka-NAME.sh) → main class
declare -A CLASSES=(
  [acls]=org.apache.kafka.tools.AclCommand
  [broker-api-versions]=org.apache.kafka.tools.BrokerApiVersionsCommand
  [client-metrics]=org.apache.kafka.tools.ClientMetricsCommand
  [configs]=org.apache.kafka.tools.ConfigCommand
  [console-consumer]=org.apache.kafka.tools.consumer.ConsoleConsumer
  [console-producer]=org.apache.kafka.tools.ConsoleProducer
  [console-share-consumer]=org.apache.kafka.tools.consumer.ConsoleShareConsumer
  [consumer-groups]=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
  [consumer-perf-test]=org.apache.kafka.tools.ConsumerPerformance
  [delete-records]=org.apache.kafka.tools.DeleteRecordsCommand
  [dump-log]=org.apache.kafka.tools.DumpLogSegments
  [e2e-latency]=org.apache.kafka.tools.EndToEndLatency
  [features]=org.apache.kafka.tools.FeatureCommand
  [get-offsets]=org.apache.kafka.tools.GetOffsetShell
  [groups]=org.apache.kafka.tools.GroupsCommand
  [leader-election]=org.apache.kafka.tools.LeaderElectionCommand
  [log-dirs]=org.apache.kafka.tools.LogDirsCommand
  [metadata-quorum]=org.apache.kafka.tools.MetadataQuorumCommand
  [producer-perf-test]=org.apache.kafka.tools.ProducerPerformance
  [reassign-partitions]=org.apache.kafka.tools.reassign.ReassignPartitionsCommand
  [share-groups]=org.apache.kafka.tools.consumer.group.ShareGroupCommand
  [storage]=kafka.tools.StorageTool
  [streams-groups]=org.apache.kafka.tools.streams.StreamsGroupCommand
  [topics]=org.apache.kafka.tools.TopicCommand
  [transactions]=org.apache.kafka.tools.TransactionsCommand
)
# Tools that take no --bootstrap-server.
NO_BOOTSTRAP=" dump-log storage e2e-latency "

usage() {
  cat <<USAGE
Usage: setup/kafka.sh TOOL [ARGS...]

Runs Apache Kafka $KAFKA_VERSION's tool TOOL (bin/kafka-TOOL.sh) from the jars of
setup/start-env.sh --backend kafka (fetched from Maven Central on first use). Without
--bootstrap-server (or --bootstrap-controller), it talks to the local cluster at $BOOTSTRAP.
e2e-latency takes its positional arguments without the broker: TOPIC NUM-RECORDS ACKS SIZE.

Tools: $(printf '%s\n' "${!CLASSES[@]}" | sort | tr '\n' ' ')

Examples:
  setup/kafka.sh topics --list
  setup/kafka.sh console-consumer --topic website-out --from-beginning --formatter-property print.key=true
  setup/kafka.sh consumer-groups --describe --group kafka-io
  setup/kafka.sh producer-perf-test --topic perf --num-records 1000000 --record-size 480 --throughput -1
  setup/kafka.sh e2e-latency perf-latency 10000 all 480
USAGE
}

[ "$#" -ge 1 ] || { usage >&2; exit 1; }
case $1 in -h|--help) usage; exit 0 ;; esac
tool=${1#kafka-}
tool=${tool%.sh}
shift
class=${CLASSES[$tool]:-}
[ -n "$class" ] || { echo "Unknown tool: $tool" >&2; usage >&2; exit 1; }
missing=$(kafka_missing)
[ -z "$missing" ] || die "$missing"
ensure_kafka_jars >&2

args=("$@")
if [[ "$NO_BOOTSTRAP" != *" $tool "* ]]; then
  explicit=false
  for arg in "${args[@]}"; do
    case $arg in --bootstrap-server|--bootstrap-server=*|--bootstrap-controller|--bootstrap-controller=*|-h|--help|--version) explicit=true ;; esac
  done
  [ "$explicit" = true ] || args=(--bootstrap-server "$BOOTSTRAP" "${args[@]}")
elif [ "$tool" = e2e-latency ] && { [ "${#args[@]}" -eq 4 ] || [ "${#args[@]}" -eq 5 ]; }; then
  args=("$BOOTSTRAP" "${args[@]}")
fi
kafka_run_class "$class" "${args[@]}"
