//! `pipeline`: the streaming job, from `website-visit` to `website-out`, losing nothing.
//!
//! It runs the original Beam job's operators (Read from Kafka → Decode → Parse → Create
//! messages → Write to Kafka) with a dead-letter branch for records that fail to decode or
//! parse, on Kafka (an embedded mock cluster, the local cluster, or any address) or on files.
//!
//! Guarantee: **at-least-once.** An input position is committed only after the output (or
//! dead letter) of every record before it in its partition has been acknowledged by the
//! broker. A crash at any moment loses nothing; records in flight at that moment are read
//! and written again on restart (duplicates are possible, loss is not). Every record read
//! is either written, dead-lettered, or still in flight: the summary reconciles the three.
//! No record stops its partition: one the output cannot take goes to the dead letters.
//!
//! **Bounded shutdown.** After cancellation the job drains for at most [`DRAIN_TIMEOUT`];
//! a final commit that gets no answer by then is abandoned with a line naming what is read
//! again, so the process exits within the drain timeout plus a second or two.
//!
//! **Scale-out** comes from Kafka's consumer-group protocol: every worker of every process
//! with the same job name is a member of one group, and partitions move between them with
//! a safe hand-over (see `worker` and `group`). A clean scale-up or scale-down loses and
//! duplicates nothing; a `kill -9` of one process loses nothing. Partitions added to the
//! input are picked up while the job runs.

mod dashboard;
mod files;
mod group;
pub mod instance;
mod transactional;
mod watch;
mod windowed;
mod worker;

pub use instance::InstanceId;
pub use transactional::{ExactlyOnce, TRANSACTION_TIMEOUT, TransactionStats};

pub use files::{MAX_LINE_BYTES, check_distinct as check_files};
pub use worker::{IN_FLIGHT_BUDGET, PREFETCH_BUDGET_KBYTES, REVOKE_TIMEOUT};

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::datagen::group_thousands;
use crate::error::{Error, Result};
use crate::kafka::KafkaConfig;
use crate::transform::{self, RejectKind, Rejection};

/// After cancellation, how long in-flight deliveries may take before the job exits anyway
/// (their records are then read again on restart).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// How long the job's runtime waits for its last tasks when the job ends.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// How often the status line is printed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The job's settings, named like the original's options.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Which job: the article's, or one of the seed repository's aggregations.
    pub job: Job,
    /// At-least-once (the default), or exactly-once with transactions.
    pub guarantee: Guarantee,
    /// Also the consumer group under which positions are committed.
    pub job_name: String,
    /// Workers in this process; each is a member of the job's consumer group.
    pub parallelism: usize,
    /// How the workers join the job's consumer group.
    pub group: crate::kafka::GroupConfig,
    /// How often delivered positions are committed.
    pub checkpointing_interval: Duration,
    /// Stop once every input partition has been read to its end.
    pub bounded: bool,
    pub source: Source,
    /// Serve the dashboard, the JSON and /metrics here (the next free port if taken).
    pub ui: Option<std::net::SocketAddr>,
    /// The dashboard's topic browser: on, off, or (`None`) on only when the dashboard
    /// listens on a loopback address, since it shows every topic's data unauthenticated.
    pub topic_browser: Option<bool>,
    /// The topic browser shows the cluster's internal topics (`__consumer_offsets`, ...).
    pub browse_internal_topics: bool,
    /// Test hook: kafka-io at least once writes no input header to its output and dead
    /// letters, as Flink's and Beam's Kafka sinks do (for `datagen --verify-topic`'s
    /// matching by content).
    pub drop_input_headers: bool,
}

/// `--processing-guarantee`, named as in Kafka Streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Guarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce(ExactlyOnce),
}

impl Guarantee {
    pub fn as_str(&self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce(_) => "exactly-once",
        }
    }
}

/// The jobs of the seed repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `kafka_io.py`: parse each event and republish it (the default).
    KafkaIo,
    /// `traffic_agg.py`: page views per user in event-time windows.
    TrafficAgg(crate::windows::WindowConfig),
    /// `user_traffic.py`: page views and bytes per user, over files (batch).
    UserTraffic,
}

impl Job {
    /// The name the original gives the job (the default `--job-name`).
    pub fn name(&self) -> &'static str {
        match self {
            Job::KafkaIo => "kafka-io",
            Job::TrafficAgg(_) => "traffic-agg",
            Job::UserTraffic => "user-traffic",
        }
    }
}

/// Where records come from and go to.
#[derive(Debug, Clone)]
pub enum Source {
    Kafka {
        cluster: Cluster,
        topics: Topics,
        print_keys: bool,
    },
    Files(FileConfig),
}

/// Which Kafka cluster.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// An in-process mock cluster fed by an in-process generator: the article's demo.
    Embedded(DemoConfig),
    /// A real cluster (the local one with `--use-own`, or any address).
    External(KafkaConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    pub users: u32,
    /// Events per second fed into the input topic.
    pub rate: f64,
    /// `-X` properties, applied to the job's clients.
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
}

/// File mode: JSON lines in, value JSON lines out, bad lines to a dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// `None` reads stdin.
    pub input: Option<PathBuf>,
    /// `None` writes stdout.
    pub output: Option<PathBuf>,
    pub dead_letter: PathBuf,
}

/// Counters of the running job, shared by its workers (and, later, its UI).
#[derive(Debug, Default)]
pub struct Stats {
    /// Read from Kafka (or the input file).
    pub read: AtomicU64,
    /// Decoded as UTF-8.
    pub decoded: AtomicU64,
    /// Parsed into an `EventLog`.
    pub parsed: AtomicU64,
    /// Output messages created and handed to the writer.
    pub created: AtomicU64,
    /// Output messages acknowledged by the broker (or written to the output file).
    pub written: AtomicU64,
    /// Dead letters acknowledged (or written to the dead-letter file).
    pub dead_lettered: AtomicU64,
    rejections: Mutex<BTreeMap<RejectKind, RejectionStats>>,
    partitions: Mutex<BTreeMap<i32, PartitionStatus>>,
    checkpoints: Mutex<VecDeque<Checkpoint>>,
    checkpoint_durations: CheckpointDurations,
    phase: std::sync::atomic::AtomicU8,
    /// This process's members of the job's group (its workers), by worker number.
    members: Mutex<BTreeMap<usize, MemberStatus>>,
    rebalances: Mutex<VecDeque<RebalanceRecord>>,
    rebalance_count: AtomicU64,
    /// From an input record's timestamp to its output's acknowledgement (Kafka modes; one
    /// record in eight is measured).
    end_to_end: crate::latency::DeliveryLatency,
    /// Aggregation jobs: events counted into a window or a user's totals.
    pub counted: AtomicU64,
    /// Set by an aggregation job: a record is done once counted, not once written.
    aggregating: std::sync::atomic::AtomicBool,
    /// Aggregation jobs: the windows' state, for the dashboard.
    windows: Mutex<Option<crate::windows::WindowStatus>>,
    /// Exactly-once: transactions committed and aborted, and their durations.
    transactions: TransactionStats,
    /// Why the job is stopping, when something outside it stops it (a deleted topic).
    failure: Mutex<Option<String>>,
    /// Exactly-once: records read into open transactions (counted in `read` only when
    /// their transaction commits).
    pub in_transaction: AtomicU64,
}

/// One member of the job's consumer group in this process: a worker, and what it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its client id, as `kafka-consumer-groups --describe` shows it.
    pub name: String,
    pub partitions: std::collections::BTreeSet<i32>,
}

/// A change of a worker's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceRecord {
    pub at: std::time::SystemTime,
    pub member: String,
    pub assigned: Vec<i32>,
    pub revoked: Vec<i32>,
    /// The revoked partitions were lost (session timeout, fencing): not committed.
    pub lost: bool,
    /// From the revocation to the release of the partitions (0 for an assignment).
    pub duration: Duration,
}

/// How many recent rebalances are kept.
const REBALANCES_KEPT: usize = 20;

/// Where the job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting,
    Running,
    /// Stopped reading; finishing the deliveries in flight.
    Draining,
    Finished,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "STARTING",
            Phase::Running => "RUNNING",
            Phase::Draining => "DRAINING",
            Phase::Finished => "FINISHED",
            Phase::Failed => "FAILED",
        }
    }
}

/// Upper bounds, in seconds, of the checkpoint-duration histogram's buckets.
pub const CHECKPOINT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Commit durations: a `prometheus-client` histogram over [`CHECKPOINT_BUCKETS`].
#[derive(Debug, Clone)]
pub struct CheckpointDurations(pub prometheus_client::metrics::histogram::Histogram);

impl Default for CheckpointDurations {
    fn default() -> Self {
        CheckpointDurations(prometheus_client::metrics::histogram::Histogram::new(
            CHECKPOINT_BUCKETS,
        ))
    }
}

/// One input partition, as last measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Next offset the job resumes from (its last commit).
    pub committed: Option<i64>,
    /// The partition's end (high watermark).
    pub end: Option<i64>,
    /// Next offset the job reads.
    pub position: Option<i64>,
}

impl PartitionStatus {
    /// Records between the job's read position (or its last commit) and the end.
    /// Clamped at 0: a broker may under-report its end (tansu 0.6 does).
    pub fn lag(&self) -> Option<i64> {
        self.end
            .zip(self.position.or(self.committed))
            .map(|(end, position)| (end - position).max(0))
    }
}

/// One commit of delivered positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub at: std::time::SystemTime,
    pub duration: Duration,
    /// (partition, next offset) committed.
    pub positions: Vec<(i32, i64)>,
}

/// How many recent checkpoints are kept.
const CHECKPOINTS_KEPT: usize = 20;

/// The job's record counts; `read = written + dead_lettered + in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub read: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Aggregation jobs: events counted (then `read = counted + dead_lettered + in_flight`,
    /// and `written` counts results); `null` otherwise.
    pub counted: Option<u64>,
    /// Read and neither written nor dead-lettered yet: deliveries in flight (or stuck)
    /// and, under exactly-once, the records of open transactions (which count in `read`
    /// once their transaction commits).
    pub in_flight: u64,
}

/// Dead letters of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectionStats {
    pub count: u64,
    pub last_reason: String,
}

impl Stats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn reject(&self, kind: RejectKind, reason: &str) {
        if let Ok(mut map) = self.rejections.lock() {
            let entry = map.entry(kind).or_default();
            entry.count += 1;
            if entry.last_reason != reason {
                entry.last_reason = reason.to_string();
            }
        }
    }

    /// Records read, written, dead-lettered, and read but not yet acknowledged.
    pub fn totals(&self) -> Totals {
        let (read, written, dead_lettered) = (
            Self::get(&self.read),
            Self::get(&self.written),
            Self::get(&self.dead_lettered),
        );
        let counted = self
            .aggregating
            .load(Ordering::Relaxed)
            .then(|| Self::get(&self.counted));
        Totals {
            read,
            written,
            dead_lettered,
            counted,
            in_flight: read.saturating_sub(counted.unwrap_or(written) + dead_lettered)
                + Self::get(&self.in_transaction),
        }
    }

    /// Marks the job as an aggregation: a record is done once counted.
    pub fn set_aggregating(&self) {
        self.aggregating.store(true, Ordering::Relaxed);
    }

    /// Dead letters per kind, with the latest reason of each.
    pub fn rejections(&self) -> BTreeMap<RejectKind, RejectionStats> {
        self.rejections
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Running,
            2 => Phase::Draining,
            3 => Phase::Finished,
            4 => Phase::Failed,
            _ => Phase::Starting,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Every commit's duration so far (shares its data with the stats).
    pub fn checkpoint_durations(&self) -> CheckpointDurations {
        self.checkpoint_durations.clone()
    }

    /// (records in, records out) of each operator, in chain order, the dead-letter branch
    /// last: Read, Decode, Parse, Create messages, Write, Dead letters.
    pub fn operator_counts(&self) -> [(u64, u64); 6] {
        let (read, decoded, parsed, created) = (
            Self::get(&self.read),
            Self::get(&self.decoded),
            Self::get(&self.parsed),
            Self::get(&self.created),
        );
        let rejected: u64 = self.rejections().values().map(|r| r.count).sum();
        [
            (read, read),
            (read, decoded),
            (decoded, parsed),
            (parsed, created),
            (created, Self::get(&self.written)),
            (rejected, Self::get(&self.dead_lettered)),
        ]
    }

    fn record_checkpoint(&self, duration: Duration, positions: &[(i32, i64)]) {
        self.checkpoint_durations.0.observe(duration.as_secs_f64());
        if let Ok(mut partitions) = self.partitions.lock() {
            for &(partition, next) in positions {
                partitions.entry(partition).or_default().committed = Some(next);
            }
        }
        if let Ok(mut log) = self.checkpoints.lock() {
            if log.len() == CHECKPOINTS_KEPT {
                log.pop_front();
            }
            log.push_back(Checkpoint {
                at: std::time::SystemTime::now(),
                duration,
                positions: positions.to_vec(),
            });
        }
    }

    /// Records a partition's end offset (from the watermark watcher), if this process
    /// owns the partition.
    fn record_end(&self, partition: i32, end: i64) {
        if let Ok(mut partitions) = self.partitions.lock()
            && let Some(status) = partitions.get_mut(&partition)
        {
            status.end = Some(end);
        }
    }

    /// Partitions this process starts to own (their status appears on the dashboard).
    fn add_partitions(&self, owned: &[i32]) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for &partition in owned {
                partitions.entry(partition).or_default();
            }
        }
    }

    /// Partitions this process no longer owns.
    fn remove_partitions(&self, released: &[i32]) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for partition in released {
                partitions.remove(partition);
            }
        }
    }

    /// Sets what worker `worker` owns.
    fn set_member(&self, worker: usize, status: MemberStatus) {
        if let Ok(mut members) = self.members.lock() {
            members.insert(worker, status);
        }
    }

    fn record_rebalance(&self, record: RebalanceRecord) {
        self.rebalance_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut log) = self.rebalances.lock() {
            if log.len() == REBALANCES_KEPT {
                log.pop_front();
            }
            log.push_back(record);
        }
    }

    /// This process's members of the group, by worker number.
    pub fn members(&self) -> BTreeMap<usize, MemberStatus> {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The most recent rebalances, oldest first.
    pub fn rebalances(&self) -> Vec<RebalanceRecord> {
        self.rebalances
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Assignments and revocations seen by this process's workers.
    pub fn rebalance_count(&self) -> u64 {
        Self::get(&self.rebalance_count)
    }

    /// Partitions owned by this process's workers.
    pub fn assigned_partitions(&self) -> usize {
        self.members().values().map(|m| m.partitions.len()).sum()
    }

    /// Records where the job reads a partition, and its last commit (from its worker).
    fn record_position(&self, partition: i32, committed: Option<i64>, position: Option<i64>) {
        if let Ok(mut partitions) = self.partitions.lock() {
            let status = partitions.entry(partition).or_default();
            status.committed = committed.or(status.committed);
            status.position = position.or(status.position);
        }
    }

    /// Every known input partition, by number.
    pub fn partitions(&self) -> BTreeMap<i32, PartitionStatus> {
        self.partitions
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The most recent commits, oldest first.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.checkpoints
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records the end-to-end latency of an output acknowledged now, whose input record
    /// has the timestamp `source_ms` (ms since the epoch).
    fn record_end_to_end(&self, source_ms: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.end_to_end
            .record_between(u64::try_from(source_ms).unwrap_or(0) * 1000, now);
    }

    /// End-to-end latencies: from an input record's timestamp to its output's
    /// acknowledgement.
    pub fn end_to_end(&self) -> &crate::latency::DeliveryLatency {
        &self.end_to_end
    }

    /// Records why the job must stop (the first reason stays).
    pub fn fail(&self, reason: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
    }

    /// Why the job is stopping, if something outside it stops it.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Exactly-once: the job's transactions.
    pub fn transactions(&self) -> &TransactionStats {
        &self.transactions
    }

    /// Aggregation jobs: the windows' state now.
    pub fn set_windows(&self, status: crate::windows::WindowStatus) {
        if let Ok(mut windows) = self.windows.lock() {
            *windows = Some(status);
        }
    }

    /// The windows' state (traffic-agg only).
    pub fn windows(&self) -> Option<crate::windows::WindowStatus> {
        self.windows.lock().ok().and_then(|w| w.clone())
    }

    /// Total lag, when every partition's lag is known.
    pub fn lag(&self) -> Option<i64> {
        let partitions = self.partitions();
        if partitions.is_empty() {
            return None;
        }
        partitions.values().map(PartitionStatus::lag).sum()
    }

    fn status_line(&self, rate: f64) -> String {
        let lag = self
            .lag()
            .map_or_else(|| "unknown".to_string(), |lag| group_thousands(lag as u64));
        let totals = self.totals();
        format!(
            "read {}, written {}, dead-lettered {}, undelivered {}, {} records/s, lag {}",
            group_thousands(totals.read),
            group_thousands(totals.written),
            group_thousands(totals.dead_lettered),
            group_thousands(totals.in_flight),
            group_thousands(rate.round() as u64),
            lag,
        )
    }
}

/// Prints the status line every [`STATUS_INTERVAL`].
struct StatusLine {
    last: Instant,
    last_read: u64,
}

impl StatusLine {
    fn new() -> Self {
        StatusLine {
            last: Instant::now(),
            last_read: 0,
        }
    }

    fn maybe_print(&mut self, stats: &Stats) {
        let now = Instant::now();
        if now.duration_since(self.last) >= STATUS_INTERVAL {
            let read = Stats::get(&stats.read);
            let rate = (read - self.last_read) as f64 / now.duration_since(self.last).as_secs_f64();
            log::info!("{}", stats.status_line(rate));
            self.last = now;
            self.last_read = read;
        }
    }
}

/// What a run did, printed on stderr at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub read: u64,
    pub written: u64,
    /// Aggregation jobs: events counted (`written` then counts results).
    pub counted: Option<u64>,
    pub dead_lettered: u64,
    /// Read but not acknowledged when the job stopped: read again on restart.
    pub unfinished: u64,
    pub elapsed: Duration,
    pub rejections: BTreeMap<RejectKind, RejectionStats>,
}

impl Summary {
    fn from_stats(stats: &Stats, elapsed: Duration) -> Self {
        let totals = stats.totals();
        Summary {
            read: totals.read,
            written: totals.written,
            counted: totals.counted,
            dead_lettered: totals.dead_lettered,
            unfinished: totals.in_flight,
            elapsed,
            rejections: stats.rejections(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let (done, counted_or_written) = match self.counted {
            Some(counted) => ("counted", counted),
            None => ("written", self.written),
        };
        write!(
            f,
            "read {} = {done} {} + dead-lettered {}",
            group_thousands(self.read),
            group_thousands(counted_or_written),
            group_thousands(self.dead_lettered)
        )?;
        if self.unfinished > 0 {
            write!(
                f,
                " + unfinished {} (read again on restart)",
                group_thousands(self.unfinished)
            )?;
        }
        write!(
            f,
            " in {:.2} s ({} records/s)",
            secs,
            group_thousands((self.read as f64 / secs).round() as u64)
        )?;
        if self.counted.is_some() {
            write!(f, "; {} results written", group_thousands(self.written))?;
        }
        for (kind, rejected) in &self.rejections {
            write!(
                f,
                "\n  dead letters {}: {} (latest: {})",
                kind.as_str(),
                rejected.count,
                rejected.last_reason
            )?;
        }
        Ok(())
    }
}

/// Runs the job until its input ends (`bounded`, files) or `cancel` fires.
pub fn run(config: &PipelineConfig, cancel: &CancellationToken) -> Result<Summary> {
    run_with_stats(config, &Arc::new(Stats::default()), cancel)
}

/// [`run`], updating `stats` as it goes (for a caller that watches the job).
pub fn run_with_stats(
    config: &PipelineConfig,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<Summary> {
    let started = Instant::now();
    // One runtime for the job: its workers (in Kafka modes) and its dashboard (in every mode).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pipeline")
        .build()
        .map_err(|e| Error::Kafka(format!("cannot start the runtime: {e}")))?;
    // The topic browser reads the job's cluster; the embedded one is known once it runs.
    let browser = Arc::new(crate::browse::TopicBrowser::new(
        &format!("streamkit-pipeline-{}-browser", config.job_name),
        config.browse_internal_topics,
    ));
    if let Source::Kafka {
        cluster: Cluster::External(kafka),
        ..
    } = &config.source
    {
        browser.connect(kafka.clone());
    }
    // The dashboard lives as long as the job: dropping it stops the server.
    let dashboard = match config.ui {
        Some(addr) => {
            let browsing = config
                .topic_browser
                .unwrap_or_else(|| addr.ip().is_loopback());
            let server = crate::web::serve(
                "dashboard",
                addr,
                Arc::new(dashboard::JobView::new(
                    config,
                    Arc::clone(stats),
                    browsing.then(|| Arc::clone(&browser)),
                )),
                runtime.handle(),
            )?;
            let topics = if browsing {
                "topics at /topics"
            } else if config.topic_browser.is_none() {
                "topic browser off: it shows every topic's data unauthenticated, and this address is not loopback (--topic-browser turns it on)"
            } else {
                "topic browser off"
            };
            log::info!(
                "dashboard at http://{}/ ({topics}; JSON at /api/job, Prometheus at /metrics)",
                server.addr()
            );
            Some(server)
        }
        None => None,
    };
    stats.set_phase(Phase::Running);
    let result = match &config.source {
        Source::Files(files) => files::run(files, &config.job, stats, cancel),
        Source::Kafka {
            cluster: Cluster::External(kafka),
            topics,
            print_keys,
        } => run_kafka(&runtime, config, kafka, topics, *print_keys, stats, cancel),
        Source::Kafka {
            cluster: Cluster::Embedded(demo),
            topics,
            print_keys,
        } => run_embedded(
            &runtime,
            config,
            demo,
            topics,
            *print_keys,
            stats,
            &browser,
            cancel,
        ),
    };
    stats.set_phase(if result.is_ok() {
        Phase::Finished
    } else {
        Phase::Failed
    });
    drop(dashboard);
    // Whatever is still stuck (a client waiting on a broker that is gone) does not hold the
    // exit back.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result?;
    Ok(Summary::from_stats(stats, started.elapsed()))
}

/// Runs the job on a Kafka cluster, its topics watched (see [`watch`]): the one place that
/// picks the engine for a job and a guarantee.
#[allow(clippy::too_many_arguments)] // the job's parts, each used once
fn run_kafka(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    let cancel = cancel.child_token();
    let watch = watch::start(
        kafka,
        &config.job_name,
        topics,
        Arc::clone(stats),
        cancel.clone(),
    )?;
    let result = match (&config.job, &config.guarantee) {
        (Job::TrafficAgg(windows), _) => {
            windowed::run(runtime, config, windows, kafka, topics, stats, &cancel)
        }
        (_, Guarantee::ExactlyOnce(eos)) => {
            transactional::run(runtime, config, eos, kafka, topics, stats, &cancel)
        }
        _ => worker::run(runtime, config, kafka, topics, print_keys, stats, &cancel),
    };
    drop(watch);
    // A deleted topic is the reason, whatever the engine made of the stop.
    match stats.failure() {
        Some(reason) => Err(Error::Kafka(reason)),
        None => result,
    }
}

/// Decode → Parse → Create messages, counting each operator's output in `stats`.
/// Both modes call this: the transform is the same code everywhere.
fn run_stages(
    payload: Option<&[u8]>,
    stats: &Stats,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) -> Result<(), Rejection> {
    if let Some(bytes) = payload
        && transform::pass_through(bytes, key, value)
    {
        // The fast path: the record went through all three operators.
        for counter in [&stats.decoded, &stats.parsed, &stats.created] {
            Stats::add(counter);
        }
        return Ok(());
    }
    let staged = transform::decode(payload)
        .inspect(|_| Stats::add(&stats.decoded))
        .and_then(transform::parse)
        .inspect(|_| Stats::add(&stats.parsed))
        .and_then(|event| transform::create_message(&event, key, value));
    match &staged {
        Ok(()) => Stats::add(&stats.created),
        Err(rejection) => stats.reject(rejection.kind, &rejection.reason),
    }
    staged
}

/// Decode → Parse for the aggregation jobs ([`transform::visit`]), counting each
/// operator's output in `stats` and each rejection.
fn visit_stages<'a>(
    payload: Option<&'a [u8]>,
    stats: &Stats,
) -> Result<transform::Visit<'a>, transform::Rejection> {
    match transform::visit(payload) {
        Ok(visit) => {
            Stats::add(&stats.decoded);
            Stats::add(&stats.parsed);
            Ok(visit)
        }
        Err(rejection) => {
            if !matches!(rejection.kind, RejectKind::Empty | RejectKind::NotUtf8) {
                Stats::add(&stats.decoded);
            }
            stats.reject(rejection.kind, &rejection.reason);
            Err(rejection)
        }
    }
}

/// The article's demo without any setup: a mock cluster and a generator, in process.
#[allow(clippy::too_many_arguments)] // the job's parts, each used once
fn run_embedded(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    demo: &DemoConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    browser: &crate::browse::TopicBrowser,
    cancel: &CancellationToken,
) -> Result<()> {
    let mock_error = |e: rdkafka::error::KafkaError| Error::Kafka(format!("embedded cluster: {e}"));
    let cluster = rdkafka::mocking::MockCluster::new(1).map_err(mock_error)?;
    for topic in [&topics.input, &topics.output, &topics.dead_letter] {
        cluster.create_topic(topic, 3, 1).map_err(mock_error)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    log::info!(
        "embedded Kafka cluster at {bootstrap}: topics {}, {}, {} (3 partitions each)",
        topics.input,
        topics.output,
        topics.dead_letter
    );
    log::info!("feed it more with: datagen --source streaming --bootstrap-servers {bootstrap}");
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        properties: demo.properties.clone(),
    };
    browser.connect(kafka.clone());
    let feed_config = crate::datagen::DatagenConfig {
        generator: crate::generator::GeneratorConfig {
            num_users: demo.users,
            missing_geo_ratio: 0.2,
            max_lag_ms: 0,
            seed: uuid::Uuid::new_v4().as_u64_pair().0,
            user_skew: None,
        },
        clock: crate::generator::Clock::Wall,
        num_events: None,
        duration: None,
        pace: crate::pacing::Pace::Rate(demo.rate),
        threads: 1,
        output: crate::datagen::Output::Kafka {
            kafka: KafkaConfig {
                bootstrap_servers: bootstrap,
                properties: Vec::new(),
            },
            topic: topics.input.clone(),
            compression: crate::kafka::Compression::None,
        },
        progress: crate::progress::ProgressMode::Quiet,
        metrics_addr: None,
        dirt: None,
        verify: None,
        report: None,
    };
    let feed_stop = cancel.child_token();
    std::thread::scope(|scope| {
        let feed = scope.spawn(|| crate::datagen::run(&feed_config, &feed_stop));
        if matches!(config.guarantee, Guarantee::ExactlyOnce(_)) {
            log::warn!(
                "exactly-once on the embedded cluster: transactions run, but the in-process cluster does not enforce read_committed, so its output cannot prove the guarantee (use --use-own with Apache Kafka)"
            );
        }
        let job = run_kafka(runtime, config, &kafka, topics, print_keys, stats, cancel);
        feed_stop.cancel();
        let fed = feed
            .join()
            .map_err(|_| Error::Kafka("the demo generator panicked".into()))?;
        if let Ok(summary) = &fed {
            log::info!("demo generator: {summary}");
        }
        job.and(fed.map(|_| ()))
    })
}
