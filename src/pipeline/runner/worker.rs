//! One worker of the runner: one `select!` loop, one job instance, and the queues of the
//! partitions the process's consumer gave it ([`super::group`]).
//!
//! The loop reads a batch of records from its partitions' queues, hands each to the job
//! and sends what it emits (or its dead letter) through the [`Sender`] ([`super::process`]),
//! and tracks every record until its batch's outputs are delivered ([`BatchTable`],
//! [`OffsetTracker`]). It commits through its [`Commit`] strategy: at
//! least once, the acknowledged prefix; exactly once, a transaction per interval. A job
//! that keeps state has it saved with each commit ([`Job::save`]) and given back when a
//! partition is assigned ([`Job::assign`]).
//!
//! Guarantees: no record stops a partition (a refused record becomes a dead letter); a
//! partition is released only after its records are committed (or at [`REVOKE_TIMEOUT`]);
//! after cancellation the worker drains for at most [`DRAIN_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Siblings;
use super::batches::BatchTable;
use super::deliveries::Refused;
use super::group::{GroupConsumer, PartitionQueue};
use super::handover::{Closing, Revocation};
use super::offsets::OffsetTracker;
use super::queues::{Turns, first_message};
use super::send::{Report, Sender};
use crate::error::{Error, Result};
use crate::pipeline::guarantee::at_least_once::COMMIT_TIMEOUT;
use crate::pipeline::guarantee::exactly_once::Transactions;
use crate::pipeline::job::{self, Emitter, Job};
use crate::pipeline::{DRAIN_TIMEOUT, Phase, Stats};
use crate::windows::Now;

/// Most messages, or acknowledgements, handled in one pass of the loop.
const BATCH: usize = 512;

/// How often each worker measures its partitions' read positions.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// How long a worker waits for its first assignment before it warns.
const JOIN_WARNING: Duration = Duration::from_secs(30);

/// How soon a failed final commit is tried again.
pub(super) const COMMIT_RETRY: Duration = Duration::from_millis(200);

/// Longest wait for librdkafka's consumer close when the worker leaves the group.
pub(super) const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// `--bounded`: how often a worker that is done asks whether the whole job is.
pub(super) const DRAINED_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How a worker commits: the guarantee.
pub(crate) enum Commit {
    AtLeastOnce,
    ExactlyOnce(Box<Transactions>),
}

pub(crate) struct Worker {
    pub id: usize,
    /// Its name on the dashboard and in the rebalance history.
    pub name: String,
    /// The process's consumer, shared by its workers.
    pub consumer: Arc<GroupConsumer>,
    pub sender: Sender,
    /// Delivery reports of the records this worker sent: its read batches delivered, and
    /// its failures.
    pub acks: UnboundedReceiver<Report>,
    /// Its read batches in flight.
    pub batches: BatchTable,
    pub job: Box<dyn Job>,
    pub emitter: Emitter,
    pub commit: Commit,
    /// Forward the input's headers to the output and the dead letters.
    pub forward_headers: bool,
    pub bounded: bool,
    pub checkpointing_interval: Duration,
    /// This worker's share of the in-flight budget.
    pub max_in_flight: usize,
    pub stats: Arc<Stats>,
    pub siblings: Arc<Siblings>,
    /// This worker's deliveries as the producer's context counts them.
    pub delivered: Arc<super::send::Delivered>,
    /// Exactly once: records this worker sent so far.
    pub sent: u64,
    /// At least once: records read and deliveries acknowledged since the stats were last
    /// told, added to them once per batch rather than per record (the workers and the
    /// dashboard share those counters: a shared add per record bounced their cache line
    /// between the cores).
    pub uncounted: Uncounted,
}

/// Counts a worker adds to the shared [`Stats`] once per batch.
#[derive(Debug, Default)]
pub(crate) struct Uncounted {
    pub(super) read: u64,
    written: u64,
    dead_lettered: u64,
}

impl Uncounted {
    /// Deliveries acknowledged: written, and dead-lettered.
    pub(super) fn delivered(&mut self, written: u32, dead_lettered: u32) {
        self.written += u64::from(written);
        self.dead_lettered += u64::from(dead_lettered);
    }

    /// Adds the counts to `stats`, and starts again from zero.
    pub(super) fn publish(&mut self, stats: &Stats) {
        Stats::add_n(&stats.read, self.read);
        Stats::add_n(&stats.written, self.written);
        Stats::add_n(&stats.dead_lettered, self.dead_lettered);
        *self = Uncounted::default();
    }
}

/// The state of a worker's loop.
#[derive(Default)]
pub(super) struct Progress {
    /// Partitions the group assigned to this worker.
    pub(super) partitions: BTreeSet<i32>,
    /// Queues of partitions assigned since the loop last took them.
    pub(super) new_queues: Vec<(i32, Arc<PartitionQueue>)>,
    /// The partition whose queue is asked first for the next batch.
    pub(super) next_turn: i32,
    pub(super) tracker: OffsetTracker,
    /// Records sent and not yet acknowledged.
    pub(super) in_flight: usize,
    /// Assigned partitions read to their end (for `--bounded`).
    pub(super) at_end: BTreeSet<i32>,
    pub(super) revoking: Option<Revocation>,
    /// Whether the group has given this worker its first assignment.
    pub(super) joined: bool,
    /// `--bounded`: the job has emitted what it held at the end of its input.
    pub(super) finished: bool,
    /// A stateful job's checkpoint waits for every output sent to be acknowledged; no
    /// record is read meanwhile.
    pub(super) barrier: bool,
    /// Exactly once: records the broker refused on delivery, whose transaction aborted.
    pub(super) refused: Refused,
    /// Exactly once: the open transaction failed (a send said so) and must abort.
    pub(super) must_abort: bool,
    /// After a stop: when the drain ends.
    pub(super) drain_deadline: Option<Instant>,
    pub(super) retry_commit_at: Option<Instant>,
    pub(super) next_drained_check: Option<Instant>,
    pub(super) warned_undrained: bool,
    pub(super) commit_abandoned: bool,
    pub(super) warned_unjoined: bool,
    pub(super) failure: Option<Error>,
    pub(super) redelivered: u64,
}

impl Progress {
    pub(super) fn reading(&self) -> bool {
        self.drain_deadline.is_none()
    }
}

impl Worker {
    /// Runs until the job ends or fails; then the worker's consumer is closing.
    pub(crate) async fn run(mut self, cancel: &CancellationToken) -> (Result<()>, Closing) {
        let mut progress = Progress::default();
        let mut acks = Vec::with_capacity(BATCH);
        let mut checkpoint = tokio::time::interval_at(
            Instant::now() + self.checkpointing_interval,
            self.checkpointing_interval,
        );
        checkpoint.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        lag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let tick_every = self.job.tick_interval();
        let mut job_tick = tokio::time::interval(tick_every.unwrap_or(Duration::from_secs(3600)));
        job_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let started = Instant::now();
        let siblings = Arc::clone(&self.siblings);
        // The loop's own handle: a record borrows it, not the worker.
        let consumer = Arc::clone(&self.consumer);
        // The queues of this worker's partitions: a record borrows them, not the progress.
        let mut queues: BTreeMap<i32, Arc<PartitionQueue>> = BTreeMap::new();
        loop {
            // Listen for siblings before looking at them, so no change goes unnoticed.
            let siblings_changed = siblings.changed.notified();
            tokio::pin!(siblings_changed);
            siblings_changed.as_mut().enable();
            self.handle_rebalances(&mut progress);
            self.finish_revocation_if_done(&mut progress).await;
            if progress.barrier && self.settled(&progress) {
                progress.barrier = false;
                let limit = Instant::now() + COMMIT_TIMEOUT;
                self.checkpoint(&mut progress, Some(limit)).await;
            }
            if self.ready_to_leave(&mut progress).await {
                break;
            }
            // Queues follow the partitions: taken when assigned, dropped once released.
            queues.extend(progress.new_queues.drain(..));
            queues.retain(|partition, _| progress.partitions.contains(partition));
            let revoke_deadline = progress
                .revoking
                .as_ref()
                .map(|r| r.retry_at.unwrap_or(r.deadline));
            let reading = progress.reading();
            let drain_over = progress.drain_deadline.is_some_and(|d| Instant::now() >= d);
            let room = self.room(&progress);
            let may_read = self.may_read(&progress);
            tokio::select! {
                biased;
                // Every acknowledgement that is ready, up to a batch, before any new input.
                // (Deliveries only counted report their failures, whenever they come.)
                _ = self.acks.recv_many(&mut acks, BATCH) => {
                    for report in acks.drain(..) {
                        if let Err(e) = self.report(&mut progress, report) {
                            self.fail(&mut progress, e, cancel);
                        }
                    }
                    self.uncounted.publish(&self.stats);
                }
                _ = cancel.cancelled(), if reading => {
                    self.stats.set_phase(Phase::Draining);
                    progress.drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                    if progress.in_flight > 0 {
                        log::info!("worker {}: stopped reading; draining {} deliveries", self.id, progress.in_flight);
                    }
                }
                _ = tokio::time::sleep_until(progress.drain_deadline.unwrap_or_else(Instant::now)), if progress.drain_deadline.is_some() && !drain_over => {
                    // The drain is over: the top of the loop says so.
                }
                _ = tokio::time::sleep_until(progress.retry_commit_at.unwrap_or_else(Instant::now)), if progress.retry_commit_at.is_some() => {
                    progress.retry_commit_at = None;
                }
                _ = &mut siblings_changed => {}
                _ = tokio::time::sleep_until(revoke_deadline.unwrap_or_else(Instant::now)), if revoke_deadline.is_some() => {
                    // finish_revocation_if_done sees the deadline at the top of the loop.
                }
                _ = tokio::time::sleep_until(progress.next_drained_check.unwrap_or_else(Instant::now)), if progress.next_drained_check.is_some() && reading => {}
                _ = self.delivered.wake.notified(), if self.waits_for_counted(&progress, room) => {
                    // Counted deliveries made room to read on, or settled what was waited for.
                }
                _ = consumer.context().notify(self.id).notified() => {
                    // A rebalance: handled at the top of the loop.
                }
                _ = checkpoint.tick() => {
                    if self.job.stateful() && matches!(self.commit, Commit::AtLeastOnce) && !self.settled(&progress) {
                        // Taken once every output sent is acknowledged (top of the loop).
                        progress.barrier = true;
                    } else {
                        let limit = progress.drain_deadline.unwrap_or_else(|| Instant::now() + COMMIT_TIMEOUT);
                        self.checkpoint(&mut progress, Some(limit)).await;
                    }
                }
                _ = job_tick.tick(), if tick_every.is_some() && reading && !self.committing() => {
                    let now = Now::current();
                    self.emitter.begin();
                    self.job.tick(now, &mut self.emitter);
                    job::publish(self.job.as_ref(), &self.stats, now);
                    let sent = self
                        .send_results(&mut progress)
                        .and_then(|()| self.send_broadcast(now, &mut progress));
                    if let Err(e) = sent.and_then(|()| self.abort_if_due(&mut progress)) {
                        self.fail(&mut progress, e, cancel);
                    }
                }
                _ = lag_tick.tick() => {
                    self.measure_lag(&progress);
                    if !progress.joined && !progress.warned_unjoined && started.elapsed() >= JOIN_WARNING {
                        progress.warned_unjoined = true;
                        log::warn!(
                            "worker {}: no partitions from the group coordinator after {} s; is the group protocol right for this broker? (--group-protocol consumer, KIP-848, needs Apache Kafka 4; tansu and older brokers need classic)",
                            self.id,
                            JOIN_WARNING.as_secs()
                        );
                    }
                }
                // After a stop, the queues are still read (their records are dropped, to be
                // read again by the next owner), so that fetching goes on for the others.
                message = first_message(&queues, progress.next_turn), if may_read => {
                    self.read_batch(&queues, message, &mut progress, cancel);
                }
            }
        }
        // Hand over what is left at once: everything delivered is committed.
        if let Some(revocation) = progress.revoking.take() {
            self.release(revocation, &mut progress);
        }
        // Queues hold the consumer: dropped before it closes.
        drop(queues);
        progress.new_queues.clear();
        if let Err(e) = self.consumer.context().left(self.id, &self.consumer) {
            log::warn!("worker {}: {e}", self.id);
        }
        let failure = progress.failure.take();
        drop(consumer);
        (failure.map_or(Ok(()), Err), self.leave_group())
    }

    /// Records the first error and stops the whole job: its workers drain and commit.
    pub(super) fn fail(&self, progress: &mut Progress, error: Error, cancel: &CancellationToken) {
        progress.failure.get_or_insert(error);
        cancel.cancel();
        progress
            .drain_deadline
            .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
    }

    /// The first record of a batch, then every one already fetched from this worker's
    /// queues, up to a batch, the queues taking turns ([`Turns`]): timers and select
    /// bookkeeping are paid per batch, not per record.
    fn read_batch<'a>(
        &mut self,
        queues: &'a BTreeMap<i32, Arc<PartitionQueue>>,
        first: std::result::Result<BorrowedMessage<'a>, KafkaError>,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) {
        if progress.reading()
            && let Err(e) = self.begin()
        {
            self.fail(progress, e, cancel);
            return;
        }
        // Read only with a slot free (the loop's `room`); after a stop nothing is sent.
        if !self.batches.open(&self.delivered.batches) && progress.reading() {
            let e = Error::Kafka(format!("worker {}: no read batch slot is free", self.id));
            self.fail(progress, e, cancel);
            return;
        }
        let now = Now::current();
        // The first record's queue first, then the others in turn.
        let start = match &first {
            Ok(message) => message.partition(),
            Err(KafkaError::PartitionEOF(partition)) => *partition,
            Err(_) => progress.next_turn,
        };
        progress.next_turn = start.saturating_add(1);
        let mut turns = Turns::new(queues, start, BATCH);
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next {
            match message {
                Ok(message) => {
                    if let Err(e) = self.take(&message, now, progress) {
                        self.fail(progress, e, cancel);
                        break;
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    if !progress.partitions.contains(&partition) {
                        self.handle_rebalances(progress);
                    }
                    // The end of a partition this worker no longer owns says nothing about
                    // a later assignment of it.
                    if progress.partitions.contains(&partition) {
                        progress.at_end.insert(partition);
                        // Every record before the end was processed (none dropped for a
                        // stop or a hand-over): the position past a transaction marker
                        // may be committed.
                        let handing_over = progress
                            .revoking
                            .as_ref()
                            .is_some_and(|r| r.partitions.contains(&partition));
                        // Nothing read since the assignment: the consumer has no position,
                        // and the end is where the partition was committed.
                        if progress.reading()
                            && !handing_over
                            && let Some(end) = self
                                .position_of(partition)
                                .or_else(|| self.committed_of(partition))
                        {
                            progress.tracker.skip_to(partition, end);
                        }
                    }
                }
                Err(error) => {
                    self.consumer.context().warn(format_args!(
                        "worker {}: reading {}: {error}; retrying",
                        self.id, self.sender.topics.input
                    ));
                    break;
                }
            }
            taken += 1;
            turns.taken();
            next = if taken < BATCH && self.may_read(progress) {
                // A partition released during the batch is left to its next owner.
                turns.next(&progress.partitions)
            } else {
                None
            };
        }
        if let Some(slot) = self.batches.close(&self.delivered.batches) {
            self.delivered_batch(progress, slot);
        }
        self.flush_tally();
    }

    /// Room to read ahead: under the in-flight budget, with a read batch slot free (the
    /// open batch's own, within a batch).
    fn room(&self, progress: &Progress) -> bool {
        self.read_ahead(progress) < self.max_in_flight && self.batches.has_free()
    }

    /// Whether the loop reads on: with room, no checkpoint barrier and, exactly once, no
    /// commit under way (nothing is read, and so sent, meanwhile). After a stop, queues
    /// are still read (their records dropped) so that fetching goes on for the others.
    fn may_read(&self, progress: &Progress) -> bool {
        !progress.reading() || (self.room(progress) && !progress.barrier && !self.committing())
    }

    /// Adds what the job counted (records through its operators, outputs) and the records
    /// read to the stats.
    pub(super) fn flush_tally(&mut self) {
        let tally = self.emitter.take_tally();
        if !tally.is_empty() {
            self.stats.add_tally(&tally);
        }
        self.uncounted.publish(&self.stats);
    }

    /// Why the producer cannot send.
    pub(super) fn send_error(&self, error: &KafkaError) -> Error {
        match &self.commit {
            Commit::ExactlyOnce(tx) => tx.send_failed(error),
            Commit::AtLeastOnce => Error::Kafka(format!(
                "cannot send to {} or {}: {error}",
                self.sender.topics.output, self.sender.topics.dead_letter
            )),
        }
    }

    /// Exactly once: a commit that timed out is to be called again before anything more
    /// is sent.
    pub(super) fn committing(&self) -> bool {
        matches!(&self.commit, Commit::ExactlyOnce(tx) if tx.committing())
    }

    /// Exactly once: opens a transaction if none is open.
    pub(super) fn begin(&mut self) -> Result<()> {
        match &mut self.commit {
            Commit::ExactlyOnce(tx) => tx.begin(),
            Commit::AtLeastOnce => Ok(()),
        }
    }
}
