//! The job's counters and its record of commits, rebalances and phase: what the status
//! line, the summary, the dashboard and `/metrics` show.
//!
//! Guarantee: the counters reconcile, `read = written (or counted) + dead-lettered +
//! in flight`, at any moment; under exactly-once, a transaction's records count once it
//! commits (until then they are `in_transaction`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::job::{MAX_OPERATORS, Operator, Tally};
use crate::datagen::group_thousands;
use crate::transform::RejectKind;

use super::STATUS_INTERVAL;

/// Counters of the running job, shared by its workers (and, later, its UI).
#[derive(Debug, Default)]
pub struct Stats {
    /// Read from Kafka (or the input file).
    pub read: AtomicU64,
    /// The job's operators between the read and the write (set when its first instance
    /// is built).
    operators: Mutex<&'static [Operator]>,
    /// Records out of each of the job's operators.
    passed: [AtomicU64; MAX_OPERATORS],
    /// Output records the job emitted (handed to the writer).
    pub emitted: AtomicU64,
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
    /// Events counted into a window or a user's totals (aggregation jobs), or dropped on
    /// purpose (others).
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
    /// A grouped job's second stage (these stats are its first's): it counts, keeps the
    /// windows and writes the results.
    downstream: std::sync::OnceLock<Downstream>,
}

/// A grouped job's second stage, as its first stage's stats show it.
#[derive(Debug)]
pub struct Downstream {
    pub stats: Arc<Stats>,
    /// The repartition topic it reads.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
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
pub const REBALANCES_KEPT: usize = 20;

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
pub const CHECKPOINTS_KEPT: usize = 20;

/// The job's record counts; `read = written + dead_lettered + in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub read: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Aggregation jobs: events counted (then `read = counted + dead_lettered + in_flight`,
    /// and `written` counts results); `null` otherwise.
    pub counted: Option<u64>,
    /// Other jobs: records dropped on purpose (then `read = written + dropped +
    /// dead_lettered + in_flight`); `null` when none.
    pub dropped: Option<u64>,
    /// Read and neither written nor dead-lettered yet: deliveries in flight (or stuck)
    /// and, under exactly-once, the records of open transactions (which count in `read`
    /// once their transaction commits).
    pub in_flight: u64,
    /// A grouped job's dead letters after the repartition topic (events late for their
    /// window, results the output refused), apart from the reconciliation; `null` for a
    /// job in one stage.
    pub dead_lettered_downstream: Option<u64>,
}

/// One operator's counts, as the dashboard and `/metrics` show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorCount {
    pub name: &'static str,
    /// The `operator` label in `/metrics`.
    pub label: &'static str,
    pub records_in: u64,
    pub records_out: u64,
}

/// Dead letters of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectionStats {
    pub count: u64,
    pub last_reason: String,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`: once per batch, where a worker counts its records itself.
    pub(crate) fn add_n(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn reject(&self, kind: RejectKind, reason: &str) {
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
        if let Some(Downstream { stats: down, .. }) = self.downstream.get() {
            // Two stages: an event is done once handed to the windows through the
            // repartition topic (written there); the results are the second stage's.
            return Totals {
                read,
                written: Self::get(&down.written),
                dead_lettered,
                counted: Some(written),
                dropped: None,
                in_flight: read.saturating_sub(written + dead_lettered)
                    + Self::get(&self.in_transaction),
                dead_lettered_downstream: Some(Self::get(&down.dead_lettered)),
            };
        }
        let aggregating = self.aggregating.load(Ordering::Relaxed);
        let counted = Self::get(&self.counted);
        // An aggregation's records are done once counted (what it writes are results); a
        // transform's once written, or dropped.
        let done = if aggregating {
            counted
        } else {
            written + counted
        };
        Totals {
            read,
            written,
            dead_lettered,
            counted: aggregating.then_some(counted),
            dropped: (!aggregating && counted > 0).then_some(counted),
            in_flight: read.saturating_sub(done + dead_lettered) + Self::get(&self.in_transaction),
            dead_lettered_downstream: None,
        }
    }

    /// These are a grouped job's first stage's stats; `second` its second's.
    pub(crate) fn set_downstream(&self, second: Downstream) {
        let _ = self.downstream.set(second);
    }

    /// A grouped job's second stage, if these are its first's.
    pub fn downstream(&self) -> Option<&Downstream> {
        self.downstream.get()
    }

    /// The job's operators, and whether it aggregates (a record is done once counted).
    pub(crate) fn set_operators(&self, operators: &'static [Operator], aggregating: bool) {
        if let Ok(mut named) = self.operators.lock() {
            *named = &operators[..operators.len().min(MAX_OPERATORS)];
        }
        self.aggregating.store(aggregating, Ordering::Relaxed);
    }

    /// Adds what a worker's job counted: records through each operator, and emitted.
    pub(crate) fn add_tally(&self, tally: &Tally) {
        // `reached[n]` records went through operators 0..n.
        let mut through = 0;
        for i in (0..MAX_OPERATORS).rev() {
            through += tally.reached[i + 1];
            if through > 0 {
                self.passed[i].fetch_add(through, Ordering::Relaxed);
            }
        }
        if tally.emitted > 0 {
            self.emitted.fetch_add(tally.emitted, Ordering::Relaxed);
        }
    }

    /// Dead letters per kind, with the latest reason of each.
    pub fn rejections(&self) -> BTreeMap<RejectKind, RejectionStats> {
        let mut rejections = self
            .rejections
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        if let Some(down) = self.downstream.get() {
            for (kind, theirs) in down.stats.rejections() {
                let ours = rejections.entry(kind).or_default();
                ours.count += theirs.count;
                ours.last_reason = theirs.last_reason;
            }
        }
        rejections
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

    /// Records into and out of each operator, in chain order, the dead-letter branch
    /// last: Read, the job's operators, Write, Dead letters. `files` names the read and
    /// the write for file mode.
    pub fn operator_counts(&self, files: bool) -> Vec<OperatorCount> {
        let read = Self::get(&self.read);
        let named: &'static [Operator] = self.operators.lock().map_or(&[], |named| *named);
        let (read_name, write_name) = if files {
            ("Read from file", "Write to file")
        } else {
            ("Read from Kafka", "Write to Kafka")
        };
        let count = |name, label, records_in, records_out| OperatorCount {
            name,
            label,
            records_in,
            records_out,
        };
        let mut counts = vec![count(read_name, "read", read, read)];
        let mut last = read;
        let down = self.downstream.get().map(|d| &d.stats);
        // Two stages: the first runs the operators up to the window, the second the window.
        let first = match down {
            Some(_) => named.len().saturating_sub(1),
            None => named.len(),
        };
        for (i, operator) in named.iter().enumerate().take(first) {
            let out = Self::get(&self.passed[i]);
            counts.push(count(operator.name, operator.label, last, out));
            last = out;
        }
        let rejected: u64 = self.rejections().values().map(|r| r.count).sum();
        let mut dead_lettered = Self::get(&self.dead_lettered);
        // The results are the second stage's writes, when there is one.
        let written_from = match (down, named.last()) {
            (Some(down), Some(window)) => {
                counts.push(count(
                    "Repartition by key",
                    "repartition",
                    Self::get(&self.emitted),
                    Self::get(&self.written),
                ));
                // The second stage's records that reached its window (its marks reach no
                // operator).
                let reached = match first.checked_sub(1) {
                    Some(i) => Self::get(&down.passed[i]),
                    None => Self::get(&down.read),
                };
                counts.push(count(
                    window.name,
                    window.label,
                    reached,
                    Self::get(&down.passed[first.min(MAX_OPERATORS - 1)]),
                ));
                dead_lettered += Self::get(&down.dead_lettered);
                down.as_ref()
            }
            _ => self,
        };
        counts.push(count(
            write_name,
            "write",
            Self::get(&written_from.emitted),
            Self::get(&written_from.written),
        ));
        counts.push(count(
            "Dead letters",
            "dead_letter",
            rejected,
            dead_lettered,
        ));
        counts
    }

    pub(crate) fn record_checkpoint(&self, duration: Duration, positions: &[(i32, i64)]) {
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
    pub(crate) fn record_end(&self, partition: i32, end: i64) {
        if let Ok(mut partitions) = self.partitions.lock()
            && let Some(status) = partitions.get_mut(&partition)
        {
            status.end = Some(end);
        }
    }

    /// Partitions this process starts to own (their status appears on the dashboard).
    pub(crate) fn add_partitions(&self, owned: &[i32]) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for &partition in owned {
                partitions.entry(partition).or_default();
            }
        }
    }

    /// Partitions this process no longer owns.
    pub(crate) fn remove_partitions(&self, released: &[i32]) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for partition in released {
                partitions.remove(partition);
            }
        }
    }

    /// Sets what worker `worker` owns.
    pub(crate) fn set_member(&self, worker: usize, status: MemberStatus) {
        if let Ok(mut members) = self.members.lock() {
            members.insert(worker, status);
        }
    }

    pub(crate) fn record_rebalance(&self, record: RebalanceRecord) {
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
    pub(crate) fn record_position(
        &self,
        partition: i32,
        committed: Option<i64>,
        position: Option<i64>,
    ) {
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

    /// Records the end-to-end latencies of outputs acknowledged now, whose input records
    /// have the timestamps `sources_ms` (ms since the epoch): one clock read for them all.
    pub(crate) fn record_end_to_end(&self, sources_ms: &[i64]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for &source_ms in sources_ms {
            self.end_to_end
                .record_between(u64::try_from(source_ms).unwrap_or(0) * 1000, now);
        }
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
        if let Some(down) = self.downstream.get() {
            return down.stats.windows();
        }
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

    pub(crate) fn status_line(&self, rate: f64) -> String {
        let lag = self
            .lag()
            .map_or_else(|| "unknown".to_string(), |lag| group_thousands(lag as u64));
        let totals = self.totals();
        let done = match totals.counted {
            Some(counted) => format!(
                "counted {}, results written {}",
                group_thousands(counted),
                group_thousands(totals.written)
            ),
            None => match totals.dropped {
                Some(dropped) => format!(
                    "written {}, dropped {}",
                    group_thousands(totals.written),
                    group_thousands(dropped)
                ),
                None => format!("written {}", group_thousands(totals.written)),
            },
        };
        format!(
            "read {}, {done}, dead-lettered {}, undelivered {}, {} records/s, lag {}",
            group_thousands(totals.read),
            group_thousands(totals.dead_lettered),
            group_thousands(totals.in_flight),
            group_thousands(rate.round() as u64),
            lag,
        )
    }
}

/// Prints the status line every [`STATUS_INTERVAL`].
pub(crate) struct StatusLine {
    last: Instant,
    last_read: u64,
}

impl StatusLine {
    pub(crate) fn new() -> Self {
        StatusLine {
            last: Instant::now(),
            last_read: 0,
        }
    }

    pub(crate) fn maybe_print(&mut self, stats: &Stats) {
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

/// Transactions of the job, for the dashboard and `/metrics`.
#[derive(Debug, Default)]
pub struct TransactionStats {
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    durations: Mutex<Option<prometheus_client::metrics::histogram::Histogram>>,
}

impl TransactionStats {
    /// The duration histogram (seconds), created on first use.
    pub fn durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        let mut slot = match self.durations.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        slot.get_or_insert_with(|| {
            prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_5, 2.0, 16),
            )
        })
        .clone()
    }
}
