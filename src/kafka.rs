//! Every Kafka client of this crate is configured and built here, and only here.
//!
//! Settings this crate changes from librdkafka's defaults are commented where they are
//! set. User `-X key=value` properties are applied last, so they override anything.
//! The values of secret properties (passwords, keys, tokens) are never logged or shown in
//! errors: [`KafkaConfig`]'s `Debug` and [`redact`] replace them with `***`.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};

/// Where a local cluster is expected, and how to get one (printed with connection errors).
pub const LOCAL_BOOTSTRAP_SERVERS: &str = "localhost:29092";
pub const LOCAL_CLUSTER_HINT: &str = "Is a broker running there? Start a local one with setup/start-env.sh -k, or pass --bootstrap-servers (env BOOTSTRAP_SERVERS).";

/// How long a client may try to reach the cluster before we report it unreachable.
pub const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(6);

/// Connection settings shared by every client: plain data, built by the binaries.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// `-X key=value` properties, applied last, in order.
    pub properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &shown)
            .finish()
    }
}

/// True for librdkafka properties whose values are credentials.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "key",
        "credentials",
        ".pem",
    ]
    .iter()
    .any(|marker| key.contains(marker))
        && !key.ends_with(".location")
        && key != "ssl.key.location"
}

/// `text` with every secret property value of `config` replaced by `***`.
pub fn redact(text: &str, config: &KafkaConfig) -> String {
    config
        .properties
        .iter()
        .filter(|(k, v)| is_secret_property(k) && !v.is_empty())
        .fold(text.to_string(), |acc, (_, v)| {
            acc.replace(v.as_str(), "***")
        })
}

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
        .set("message.timeout.ms", &timeout_ms);
    // -X may still override any of these, last, as everywhere.
    apply_properties(&mut config, kafka);
    config
}

/// Room left for a record batch's own framing under a topic's `max.message.bytes`.
pub const BATCH_FRAMING_BYTES: usize = 512;

/// What the job needs to know of its topics before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFacts {
    /// Partitions of the input topic.
    pub input_partitions: i32,
    /// The largest record every output topic takes, from their `max.message.bytes`, less
    /// room for the batch framing; `None` when the cluster does not say (then librdkafka's
    /// default applies).
    pub max_record_bytes: Option<usize>,
    /// The same per output topic, in the order asked.
    pub record_limits: Vec<Option<usize>>,
}

/// Fails fast, naming the address, if the cluster cannot be reached or a topic is missing;
/// then reads the output topics' record size limit.
pub async fn inspect_topics(
    kafka: &KafkaConfig,
    input: &str,
    outputs: &[&str],
) -> Result<TopicFacts> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        // Fail a connection attempt after 5 s (default 30 s), as every client here.
        .set("socket.connection.setup.timeout.ms", "5000")
        // Asking for a missing topic's metadata must not create it (an admin client is a
        // producer inside librdkafka, whose default is true).
        .set("allow.auto.create.topics", "false");
    apply_properties(&mut config, kafka);
    let admin: AdminClient<ErrorLog> =
        create(&config, ErrorLog::new(&kafka.bootstrap_servers), kafka)?;
    let input_partitions =
        tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, input))?;
    for topic in outputs {
        tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, topic))?;
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = outputs
        .iter()
        .map(|t| ResourceSpecifier::Topic(t))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(REACHABILITY_TIMEOUT));
    // Each output topic's largest record, less room for the batch framing.
    let record_limits: Vec<Option<usize>> =
        match admin.describe_configs(&specifiers, &options).await {
            Ok(results) => results
                .into_iter()
                .map(|result| {
                    result
                        .ok()?
                        .get("max.message.bytes")?
                        .value
                        .as_deref()?
                        .parse::<usize>()
                        .ok()
                        .map(|limit| limit.saturating_sub(BATCH_FRAMING_BYTES))
                })
                .collect(),
            Err(e) => {
                log::debug!("cannot read the topics' max.message.bytes: {e}");
                vec![None; outputs.len()]
            }
        };
    let max_record_bytes = record_limits
        .iter()
        .copied()
        .collect::<Option<Vec<usize>>>()
        .and_then(|limits| limits.into_iter().min());
    // The admin client's polling thread takes up to a tenth of a second to stop: it stops
    // in the background while the job starts.
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    Ok(TopicFacts {
        input_partitions,
        max_record_bytes,
        record_limits,
    })
}

/// librdkafka's `message.timeout.ms` (alias `delivery.timeout.ms`) in `config`: how long a
/// message may wait for its acknowledgement before it is reported failed. `None` for 0,
/// which means no limit.
pub fn message_timeout(config: &ClientConfig) -> Option<Duration> {
    let millis = match config.create_native_config() {
        Ok(native) => native
            .get("message.timeout.ms")
            .ok()
            .and_then(|v| v.parse::<u64>().ok()),
        Err(_) => None,
    }
    .unwrap_or(300_000);
    (millis > 0).then(|| Duration::from_millis(millis))
}

/// Checks `-X` properties against librdkafka before any client exists: an unknown name or
/// a value librdkafka refuses is an error naming the property (a secret value is not shown).
pub fn check_properties(properties: &[(String, String)]) -> Result<()> {
    let kafka = KafkaConfig {
        bootstrap_servers: String::new(),
        properties: properties.to_vec(),
    };
    for (key, value) in properties {
        let mut config = ClientConfig::new();
        config.set(key, value);
        config.create_native_config().map_err(|e| {
            Error::KafkaConfig(format!("-X {key}: {}", redact(&e.to_string(), &kafka)))
        })?;
    }
    Ok(())
}

fn apply_properties(config: &mut ClientConfig, kafka: &KafkaConfig) {
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
}

/// Builds a client of type `T` (a producer or consumer) from `config` and `context`.
pub fn create<T, C>(config: &ClientConfig, context: C, kafka: &KafkaConfig) -> Result<T>
where
    C: ClientContext,
    T: FromClientConfigAndContext<C>,
{
    T::from_config_and_context(config, context)
        .map_err(|e| Error::KafkaConfig(redact(&e.to_string(), kafka)))
}

/// Fails fast, naming the address, if the cluster cannot be reached or `topic` is
/// missing; returns the topic's partition count.
pub fn check_topic_reachable<C: ClientContext>(
    client: &Client<C>,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<i32> {
    let metadata = client
        .fetch_metadata(Some(topic), REACHABILITY_TIMEOUT)
        .map_err(|e| Error::BrokerUnreachable {
            servers: kafka.bootstrap_servers.clone(),
            reason: describe_unreachable(&e, &kafka.bootstrap_servers),
            hint: LOCAL_CLUSTER_HINT,
        })?;
    let topic_metadata = metadata.topics().iter().find(|t| t.name() == topic);
    let partitions = topic_metadata.map_or(0, |t| t.partitions().len() as i32);
    let topic_error = topic_metadata
        .and_then(|t| t.error())
        .map(RDKafkaErrorCode::from);
    match topic_error {
        Some(code @ RDKafkaErrorCode::UnknownTopicOrPartition)
        | Some(code @ RDKafkaErrorCode::UnknownTopic) => Err(Error::TopicMissing {
            topic: topic.to_string(),
            servers: kafka.bootstrap_servers.clone(),
            reason: code.to_string(),
        }),
        // Anything else (say, a leader election under way) is transient: the client retries.
        _ => Ok(partitions),
    }
}

/// Why the cluster could not be reached. librdkafka reports a name that does not resolve
/// as "all brokers down", so the names are resolved here to tell the two apart.
fn describe_unreachable(error: &KafkaError, servers: &str) -> String {
    let unresolved = unresolved_hosts(servers);
    if !unresolved.is_empty() {
        return format!("the host name does not resolve: {}", unresolved.join(", "));
    }
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::OperationTimedOut) => format!(
            "no answer to a metadata request within {} s",
            REACHABILITY_TIMEOUT.as_secs()
        ),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
            "could not connect (nothing listening, or the connection was refused)".to_string()
        }
        Some(RDKafkaErrorCode::Resolve) => "the host name does not resolve".to_string(),
        _ => error.to_string(),
    }
}

/// The `host:port` entries of a bootstrap list whose host does not resolve.
fn unresolved_hosts(servers: &str) -> Vec<String> {
    use std::net::ToSocketAddrs;
    servers
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| {
            // Strip a protocol prefix such as PLAINTEXT:// .
            server.rsplit("://").next().unwrap_or(server)
        })
        .filter(|server| {
            let with_port = if server
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                server.to_string()
            } else {
                format!("{server}:9092")
            };
            with_port.to_socket_addrs().is_err()
        })
        .map(str::to_string)
        .collect()
}

/// How often repeated client errors (say, "connection refused") are logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A client context that logs librdkafka's errors as warnings naming the cluster, at
/// most once every few seconds, so an outage is reported clearly without flooding.
#[derive(Debug)]
pub struct ErrorLog {
    servers: String,
    last_error_log: Mutex<Option<Instant>>,
}

impl ErrorLog {
    pub fn new(servers: &str) -> Self {
        ErrorLog {
            servers: servers.to_string(),
            last_error_log: Mutex::new(None),
        }
    }

    /// Logs `message` as a warning unless this client logged one in the last few seconds
    /// (a read error repeats on every poll while a broker is down).
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        if self.should_log_now() {
            log::warn!("{message}");
        }
    }

    fn should_log_now(&self) -> bool {
        let Ok(mut last) = self.last_error_log.lock() else {
            return true;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl ClientContext for ErrorLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // Connection failures also arrive through `error` below, rate-limited. `-X` goes to
        // every client of a binary, so a consumer property reaching a producer (or the
        // reverse) is expected. Both stay visible with RUST_LOG=librdkafka=debug.
        let expected_warning =
            fac == "CONFWARN" && message.contains(" property and will be ignored by this ");
        if fac == "FAIL" || expected_warning {
            log::debug!(target: "librdkafka", "{fac} {message}");
        } else {
            rdkafka::client::DefaultClientContext.log(level, fac, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news, not an error: the consumer reports it separately.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        if self.should_log_now() {
            log::warn!("Kafka at {}: {reason} ({error}); retrying", self.servers);
        }
    }
}

impl ConsumerContext for ErrorLog {}

/// A producer context that counts delivery reports and measures the latency of each
/// acknowledged one (and logs like [`ErrorLog`]). Send each record with
/// `BaseRecord::with_opaque_to(topic, counter.latency().stamp())`.
#[derive(Debug)]
pub struct DeliveryCounter {
    errors: ErrorLog,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    latency: std::sync::Arc<crate::latency::DeliveryLatency>,
}

impl DeliveryCounter {
    pub fn new(servers: &str) -> Self {
        DeliveryCounter {
            errors: ErrorLog::new(servers),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            latency: std::sync::Arc::new(crate::latency::DeliveryLatency::new()),
        }
    }

    /// Send stamps and delivery latencies.
    pub fn latency(&self) -> &std::sync::Arc<crate::latency::DeliveryLatency> {
        &self.latency
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The reason of the first failed delivery, if any.
    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.lock().ok().and_then(|g| g.clone())
    }
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ProducerContext for DeliveryCounter {
    /// The send stamp of `DeliveryLatency::stamp`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: usize) {
        match result {
            Ok(_) => {
                self.latency.record(sent);
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// A producer that counts its deliveries.
pub type CountingProducer = BaseProducer<DeliveryCounter>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.jaas.config",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in [
            "bootstrap.servers",
            "sasl.username",
            "ssl.key.location",
            "linger.ms",
            "security.protocol",
        ] {
            assert!(!is_secret_property(key), "{key}");
        }
    }

    #[test]
    fn debug_and_redact_hide_secret_values() {
        let config = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            properties: vec![
                ("sasl.password".into(), "hunter2".into()),
                ("sasl.username".into(), "alice".into()),
            ],
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("alice") && shown.contains("***"),
            "{shown}"
        );
        assert_eq!(
            redact("bad value hunter2 for x", &config),
            "bad value *** for x"
        );
    }

    #[test]
    fn the_consumer_protocol_leaves_out_what_only_the_classic_one_takes() {
        let kafka = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            properties: Vec::new(),
        };
        let classic = GroupConfig {
            protocol: GroupProtocol::Classic {
                session_timeout: Some(std::time::Duration::from_secs(6)),
            },
            instance_id: Some("node".into()),
        };
        let config = pipeline_consumer_config(&kafka, "job", &classic, 1024);
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        // Every 500 ms, well within a third of the 6 s session.
        assert_eq!(config.get("heartbeat.interval.ms"), Some("500"));
        assert_eq!(config.get("group.instance.id"), Some("node"));
        assert_eq!(config.get("group.id"), Some("job"));
        let consumer = GroupConfig {
            protocol: GroupProtocol::Consumer,
            instance_id: None,
        };
        let config = pipeline_consumer_config(&kafka, "job", &consumer, 1024);
        assert_eq!(config.get("group.protocol"), Some("consumer"));
        // librdkafka refuses either of these with group.protocol=consumer.
        assert_eq!(config.get("partition.assignment.strategy"), None);
        assert_eq!(config.get("session.timeout.ms"), None);
    }

    #[test]
    fn the_message_timeout_is_librdkafkas_own() {
        let mut config = ClientConfig::new();
        assert_eq!(message_timeout(&config), Some(Duration::from_secs(300)));
        config.set("delivery.timeout.ms", "4000");
        assert_eq!(message_timeout(&config), Some(Duration::from_secs(4)));
        let mut unlimited = ClientConfig::new();
        unlimited.set("message.timeout.ms", "0");
        assert_eq!(message_timeout(&unlimited), None);
    }

    #[test]
    fn unresolvable_hosts_are_named() {
        assert_eq!(
            unresolved_hosts("localhost:9092, no-such-host.invalid:9092,127.0.0.1:1"),
            vec!["no-such-host.invalid:9092"]
        );
        assert!(unresolved_hosts("PLAINTEXT://localhost:29092").is_empty());
    }

    #[test]
    fn properties_are_checked_against_librdkafka() {
        let property = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(check_properties(&property("linger.ms", "5")).is_ok());
        assert!(check_properties(&property("sasl.password", "hunter2")).is_ok());
        let unknown = check_properties(&property("bogus.property", "1")).unwrap_err();
        assert!(unknown.to_string().contains("bogus.property"), "{unknown}");
        let bad_value = check_properties(&property("linger.ms", "soon")).unwrap_err();
        assert!(bad_value.to_string().contains("linger.ms"), "{bad_value}");
    }

    #[test]
    fn user_properties_override_defaults() {
        let config = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            properties: vec![
                ("linger.ms".into(), "0".into()),
                ("acks".into(), "1".into()),
            ],
        };
        let client = throughput_producer_config(&config, "test", Compression::Lz4);
        assert_eq!(client.get("linger.ms"), Some("0"));
        assert_eq!(client.get("acks"), Some("1"));
        assert_eq!(client.get("compression.type"), Some("lz4"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
    }
}
