//! The settings of every kind of client this crate builds, each non-default one commented
//! where it is set; `-X` properties last.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use super::{KafkaConfig, apply_properties};

/// Batch compression for the producer (librdkafka's `compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Producer configuration tuned for load generation.
pub fn throughput_producer_config(
    kafka: &KafkaConfig,
    client_id: &str,
    compression: Compression,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        // Named in broker logs and metrics instead of the default "rdkafka".
        .set("client.id", client_id)
        // No duplicates or reordering on retries; implies acks=all and bounded in-flight.
        .set("enable.idempotence", "true")
        // A key goes to the partition the Java producer (and kafka-python) would pick
        // (default consistent_random, a CRC32 of the key), as the pipeline's output does.
        .set("partitioner", "murmur2_random")
        // Stated explicitly: an event counts as delivered once every in-sync replica has it.
        .set("acks", "all")
        // Wait up to 20 ms (default 5) to fill batches: fewer, larger requests.
        .set("linger.ms", "20")
        // batch.size stays at its default (1 MB): larger batches exceed the broker's default
        // message.max.bytes and would be rejected.
        // Room for 1M queued messages (default 100k) so generation rarely waits on the network.
        .set("queue.buffering.max.messages", "1000000")
        // Up to 1 GiB queued (default 1 GiB as well, stated because the two limits work together).
        .set("queue.buffering.max.kbytes", "1048576")
        // Optional batch compression (default none).
        .set("compression.type", compression.as_librdkafka())
        // A missing topic is reported, not created with the broker's defaults (the
        // producer's default is true).
        .set("allow.auto.create.topics", "false")
        // Fail a connection attempt after 5 s (default 30 s) so an unreachable broker is reported fast.
        .set("socket.connection.setup.timeout.ms", "5000");
    apply_properties(&mut config, kafka);
    config
}

/// How the pipeline's workers take part in the job's consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub protocol: GroupProtocol,
    /// Static membership (KIP-345): the process joins as this `group.instance.id`.
    pub instance_id: Option<String>,
}

/// The consumer-group protocol (librdkafka's `group.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The classic protocol: members assign partitions among themselves, here with the
    /// `cooperative-sticky` strategy, so a rebalance moves only the partitions it must.
    /// `session_timeout` is librdkafka's `session.timeout.ms` (default 45 s).
    Classic {
        session_timeout: Option<std::time::Duration>,
    },
    /// KIP-848 (Kafka 4+): the broker assigns, incrementally; timeouts are set broker side.
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic { .. } => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            protocol: GroupProtocol::Classic {
                session_timeout: None,
            },
            instance_id: None,
        }
    }
}

/// How often a pipeline process heartbeats to its group under the classic protocol.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Consumer configuration of a pipeline process: one member of the consumer group named
/// after the job. `prefetch_kbytes` is its share of the job's prefetch budget.
pub fn pipeline_consumer_config(
    kafka: &KafkaConfig,
    job_name: &str,
    group: &GroupConfig,
    prefetch_kbytes: usize,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        // Every process of the job is a member of this group, which is also where
        // positions are committed (as the original's group "kafka-io").
        .set("group.id", job_name)
        // Named in `kafka-consumer-groups --describe` and broker logs: the job.
        .set("client.id", format!("streamkit-pipeline-{job_name}"))
        // The group protocol, stated even when it is the default (classic): KIP-848
        // ("consumer") rules out the classic-only settings below.
        .set("group.protocol", group.protocol.as_str())
        // Never commit on a timer: only positions whose output was delivered are committed.
        .set("enable.auto.commit", "false")
        // Likewise, no implicit offset store on read.
        .set("enable.auto.offset.store", "false")
        // Start from the beginning when the job has no committed position, as the original.
        .set("auto.offset.reset", "earliest")
        // Report the end of each partition: --bounded stops on it.
        .set("enable.partition.eof", "true")
        // Look for new partitions every 10 s (default 5 min), so partitions added to the
        // input topic are assigned and read while the job runs.
        .set("topic.metadata.refresh.interval.ms", "10000")
        // Prefetch at most the job's budget (default 64 MiB): memory stays bounded on
        // backlogs, whatever the parallelism.
        .set("queued.max.messages.kbytes", prefetch_kbytes.to_string())
        // When that prefetch queue is full, retry fetching after 10 ms (default 1000 ms,
        // which stalls a busy job for a second at a time and halved its throughput).
        .set("fetch.queue.backoff.ms", "10")
        // A broker holds a fetch for at most 50 ms when it has nothing new (default 500).
        // librdkafka sends one fetch per broker at a time, leaving out partitions whose
        // queue is full: a fetch of only caught-up partitions then held back every
        // backlogged one for half a second (a 1,000,000-record backlog took 6 s instead of
        // 2.6 at --parallelism 2). An idle job pays 20 fetches a second per broker.
        .set("fetch.wait.max.ms", "50")
        // Fail a connection attempt after 5 s (default 30 s) so an unreachable broker is reported fast.
        .set("socket.connection.setup.timeout.ms", "5000");
    if let GroupProtocol::Classic { session_timeout } = group.protocol {
        // Incremental rebalances (default: range, then roundrobin, both eager): a member
        // joining or leaving moves only the partitions that must move; the others flow on.
        config.set("partition.assignment.strategy", "cooperative-sticky");
        // Heartbeat every 500 ms (default 3 s): a member learns of a rebalance from its
        // heartbeat's answer, so a process that joins a running job (or starts beside
        // others) gets its share within half a second instead of three. Two requests a
        // second per process.
        let mut heartbeat = HEARTBEAT_INTERVAL;
        if let Some(timeout) = session_timeout {
            // How long the group waits for a silent member before reassigning its
            // partitions (default 45 s).
            config.set("session.timeout.ms", timeout.as_millis().to_string());
            // Never more than a third of it, as Kafka advises, so a short session still
            // has room for two missed heartbeats.
            heartbeat = heartbeat.min(timeout / 3);
        }
        config.set("heartbeat.interval.ms", heartbeat.as_millis().to_string());
    }
    if let Some(id) = &group.instance_id {
        // Static membership: a restart within the session timeout gets its partitions
        // back without a rebalance.
        config.set("group.instance.id", id);
    }
    apply_properties(&mut config, kafka);
    config
}

/// Consumer configuration of `datagen --verify-topic`'s reader: it assigns itself the
/// topics' partitions (no group, nothing committed) and reads from their ends.
pub fn verify_consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", "streamkit-datagen-verifier")
        // librdkafka wants a group id for a consumer, even one that only assigns itself
        // partitions and never commits.
        .set("group.id", "streamkit-datagen-verifier")
        // Nothing is committed: every run reads from the ends it found at its start.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Only committed records count, as a downstream consumer of an exactly-once job
        // must read (librdkafka's default, stated: an aborted transaction is not an arrival).
        .set("isolation.level", "read_committed")
        // Answer within 100 ms (default 500) when the output is quiet, so that the last
        // arrivals are seen soon after they land.
        .set("fetch.wait.max.ms", "100")
        // Fail a connection attempt after 5 s (default 30 s) so an unreachable broker is reported fast.
        .set("socket.connection.setup.timeout.ms", "5000");
    apply_properties(&mut config, kafka);
    config
}

/// Consumer configuration of the dashboard's topic browser: it assigns itself one
/// partition at a time (no group, nothing committed) and reads a bounded tail of it.
pub fn browser_consumer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        // librdkafka wants a group id for a consumer, even one that only assigns itself
        // partitions and never commits.
        .set("group.id", client_id)
        // Nothing is committed: the browser only looks.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Report the end of the partition (default off), so a read stops there at once.
        .set("enable.partition.eof", "true")
        // Prefetch at most 4 MB (default 64 MB) and 1 MB per fetch (default 50 MB): a
        // request shows at most a few MB.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", "1048576")
        // Answer within 100 ms (default 500) when the partition is quiet.
        .set("fetch.wait.max.ms", "100")
        // Fail a connection attempt after 5 s (default 30 s), the browser's own deadline.
        .set("socket.connection.setup.timeout.ms", "5000");
    apply_properties(&mut config, kafka);
    // Transactions: show only what a read_committed consumer sees (librdkafka's default,
    // kept whatever -X says for the job).
    config.set("isolation.level", "read_committed");
    // Not a group member, whatever -X says for the workers.
    config.remove("group.instance.id");
    config
}

/// Configuration of the client that watches the input's end offsets for the dashboard: no
/// group, it only asks for metadata and watermarks.
pub fn watermark_client_config(kafka: &KafkaConfig, job_name: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set(
            "client.id",
            format!("streamkit-pipeline-{job_name}-watermarks"),
        )
        // Fail a connection attempt after 5 s (default 30 s) so an unreachable broker is reported fast.
        .set("socket.connection.setup.timeout.ms", "5000");
    apply_properties(&mut config, kafka);
    // Not a group member, whatever -X says for the workers.
    config.remove("group.id");
    config.remove("group.instance.id");
    config
}

/// Configuration of the client that reads a group's committed positions without joining
/// it (a grouped job's purge of its repartition topic): the watermark client's, with the
/// group to ask about.
pub fn committed_reader_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = watermark_client_config(kafka, group);
    // Committed offsets are asked for by group id; the client never subscribes, so it
    // never joins.
    config.set("group.id", group);
    config
}

/// Configuration of an admin client: the checks before a job starts, the creation of a
/// grouped job's repartition topic and its purge.
pub fn admin_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        // Fail a connection attempt after 5 s (default 30 s), as every client here.
        .set("socket.connection.setup.timeout.ms", "5000")
        // Asking for a missing topic's metadata must not create it (an admin client is a
        // producer inside librdkafka, whose default is true).
        .set("allow.auto.create.topics", "false");
    apply_properties(&mut config, kafka);
    config.remove("group.id");
    config.remove("group.instance.id");
    config
}

/// Producer configuration for the pipeline's output and dead-letter topics.
pub fn pipeline_producer_config(
    kafka: &KafkaConfig,
    job_name: &str,
    max_message_bytes: Option<usize>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    if let Some(limit) = max_message_bytes {
        // The largest record the topics written take (default 1,000,000, below Kafka's
        // default of 1,048,588): a record over it is refused at `send`, one by one, so the
        // job dead-letters it; a batch never exceeds it, so the broker never refuses a whole
        // batch of good records. (librdkafka's own bounds are 1,000..=1,000,000,000.)
        let limit = limit.clamp(1_000, 1_000_000_000).to_string();
        config
            .set("message.max.bytes", &limit)
            // Batches stay within the limit too (default 1,000,000).
            .set("batch.size", &limit);
    }
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", format!("streamkit-pipeline-{job_name}"))
        // No duplicates or reordering from the producer's own retries.
        .set("enable.idempotence", "true")
        // A key goes to the partition the Java producer would pick (default
        // consistent_random, a CRC32 of the key): the original's Beam job writes with the
        // Java client, and Kafka Streams reads with its partitioning. Murmur2 also costs
        // less than librdkafka's CRC32, which took 3% of the job's CPU.
        .set("partitioner", "murmur2_random")
        // Stated explicitly: delivered means every in-sync replica has it.
        .set("acks", "all")
        // Never give up on a record (default 300 s): through a broker outage deliveries are
        // retried until the broker is back, so nothing read is ever dropped.
        .set("message.timeout.ms", "0")
        // A missing output topic is reported, not created with the broker's defaults (the
        // producer's default is true).
        .set("allow.auto.create.topics", "false")
        // Fail a connection attempt after 5 s (default 30 s) so an unreachable broker is reported fast.
        .set("socket.connection.setup.timeout.ms", "5000");
    apply_properties(&mut config, kafka);
    config
}

/// Producer configuration of an exactly-once worker: the pipeline's, made transactional.
pub fn transactional_producer_config(
    kafka: &KafkaConfig,
    job_name: &str,
    transactional_id: &str,
    max_message_bytes: Option<usize>,
    transaction_timeout: Duration,
) -> ClientConfig {
    let mut config = pipeline_producer_config(kafka, job_name, max_message_bytes);
    let timeout_ms = transaction_timeout.as_millis().to_string();
    config
        // Stable per worker slot of a process instance: a restart fences its predecessor
        // and aborts the predecessor's open transaction at once.
        .set("transactional.id", transactional_id)
        // The broker aborts a silent producer's open transaction after 10 s (default 60 s):
        // the longest a read_committed reader stalls on a process that is not restarted.
        .set("transaction.timeout.ms", &timeout_ms)
        // A transactional producer's records must be delivered within its transaction
        // (librdkafka requires message.timeout.ms <= transaction.timeout.ms; the pipeline's
        // default is infinite).
        .set("message.timeout.ms", &timeout_ms)
        // Batches wait up to 20 ms to fill (default 5 ms). Each worker has a producer of its
        // own, with its share of the traffic: at 5 ms its batches left about half full
        // (librdkafka's statistics: 410 to 460 kB of 1 MB on average, against 790 to 850 kB
        // at 20 ms). It costs no latency a reader sees: read_committed readers see records
        // at the commit, and the commit's flush sends what lingers at once.
        .set("linger.ms", "20");
    // -X may still override any of these, last, as everywhere.
    apply_properties(&mut config, kafka);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: "localhost:29092".into(),
            properties: properties
                .iter()
                .map(|&(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    #[test]
    fn an_exactly_once_producer_lingers_longer_than_the_shared_one_and_x_still_wins() {
        let timeout = Duration::from_secs(10);
        let shared = pipeline_producer_config(&kafka(&[]), "job", None);
        assert_eq!(shared.get("linger.ms"), None, "librdkafka's 5 ms");
        let transactional =
            transactional_producer_config(&kafka(&[]), "job", "job-a-0", None, timeout);
        assert_eq!(transactional.get("linger.ms"), Some("20"));
        assert_eq!(transactional.get("transactional.id"), Some("job-a-0"));
        assert_eq!(transactional.get("message.timeout.ms"), Some("10000"));
        let overridden = transactional_producer_config(
            &kafka(&[("linger.ms", "2")]),
            "job",
            "job-a-0",
            None,
            timeout,
        );
        assert_eq!(overridden.get("linger.ms"), Some("2"), "-X goes last");
    }
}
