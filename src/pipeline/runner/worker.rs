//! One worker of the runner: one consumer, one `select!` loop, one job instance.
//!
//! The loop reads a batch of records, hands each to the job, sends what it emits (or its
//! dead letter) through the [`Sender`], and tracks every record until its outputs are
//! acknowledged ([`OffsetTracker`]). It commits through its [`Commit`] strategy: at
//! least once, the acknowledged prefix; exactly once, a transaction per interval. A job
//! that keeps state has it saved with each commit ([`Job::save`]) and given back when a
//! partition is assigned ([`Job::assign`]).
//!
//! Guarantees: no record stops a partition (a refused record becomes a dead letter); a
//! partition is released only after its records are committed (or at [`REVOKE_TIMEOUT`]);
//! after cancellation the worker drains for at most [`DRAIN_TIMEOUT`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::block_in_place;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::group::{self, Member, RebalanceEvent};
use super::offsets::OffsetTracker;
use super::send::{Ack, Destination, Input, Sender};
use super::{REVOKE_TIMEOUT, Siblings};
use crate::error::{Error, Result};
use crate::pipeline::guarantee::Committed;
use crate::pipeline::guarantee::at_least_once::{self, COMMIT_TIMEOUT};
use crate::pipeline::guarantee::exactly_once::Transactions;
use crate::pipeline::job::{Emitter, Job, Outcome, Record};
use crate::pipeline::{DRAIN_TIMEOUT, MemberStatus, Phase, RebalanceRecord, Stats, dead_letter};
use crate::windows::Now;

/// Most messages, or acknowledgements, handled in one pass of the loop.
const BATCH: usize = 512;

/// How often each worker measures its partitions' read positions.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// How long a worker waits for its first assignment before it warns.
const JOIN_WARNING: Duration = Duration::from_secs(30);

/// How soon a failed final commit is tried again.
const COMMIT_RETRY: Duration = Duration::from_millis(200);

/// Longest wait for librdkafka's consumer close when the worker leaves the group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// `--bounded`: how often a worker that is done asks whether the whole job is.
const DRAINED_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How a worker commits: the guarantee.
pub(crate) enum Commit {
    AtLeastOnce,
    ExactlyOnce(Box<Transactions>),
}

pub(crate) struct Worker {
    pub id: usize,
    /// Its client id: the member's name in the group.
    pub name: String,
    /// Shared only with a commit or close running on a blocking thread.
    pub consumer: Arc<StreamConsumer<Member>>,
    pub sender: Sender,
    /// Delivery reports of the records this worker sent.
    pub acks: UnboundedReceiver<Ack>,
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
    /// The group instance id (static membership), if any.
    pub group_instance: Option<String>,
}

/// Partitions being handed over: no longer read, released once their records in flight
/// are acknowledged and committed, or at `deadline`.
struct Revocation {
    list: TopicPartitionList,
    partitions: BTreeSet<i32>,
    incremental: bool,
    started: std::time::Instant,
    deadline: Instant,
    /// After a failed commit of the hand-over: when to try it again.
    retry_at: Option<Instant>,
}

/// The state of a worker's loop.
#[derive(Default)]
struct Progress {
    /// Partitions the group assigned to this worker.
    partitions: BTreeSet<i32>,
    tracker: OffsetTracker,
    /// Records sent and not yet acknowledged.
    in_flight: usize,
    /// Assigned partitions read to their end (for `--bounded`).
    at_end: BTreeSet<i32>,
    revoking: Option<Revocation>,
    /// Whether the group has given this worker its first assignment.
    joined: bool,
    /// `--bounded`: the job has emitted what it held at the end of its input.
    finished: bool,
    /// A stateful job's checkpoint waits for every output sent to be acknowledged; no
    /// record is read meanwhile.
    barrier: bool,
    /// After a stop: when the drain ends.
    drain_deadline: Option<Instant>,
    retry_commit_at: Option<Instant>,
    next_drained_check: Option<Instant>,
    warned_undrained: bool,
    commit_abandoned: bool,
    warned_unjoined: bool,
    failure: Option<Error>,
    last_read_error: Option<std::time::Instant>,
    redelivered: u64,
}

impl Progress {
    fn reading(&self) -> bool {
        self.drain_deadline.is_none()
    }
}

impl Worker {
    pub(crate) async fn run(mut self, cancel: &CancellationToken) -> Result<()> {
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
        loop {
            // Listen for siblings before looking at them, so no change goes unnoticed.
            let siblings_changed = siblings.changed.notified();
            tokio::pin!(siblings_changed);
            siblings_changed.as_mut().enable();
            self.handle_rebalances(&mut progress);
            self.finish_revocation_if_done(&mut progress).await;
            if progress.barrier && progress.in_flight == 0 {
                progress.barrier = false;
                let limit = Instant::now() + COMMIT_TIMEOUT;
                self.checkpoint(&mut progress, Some(limit)).await;
            }
            if self.ready_to_leave(&mut progress).await {
                break;
            }
            let revoke_deadline = progress
                .revoking
                .as_ref()
                .map(|r| r.retry_at.unwrap_or(r.deadline));
            let reading = progress.reading();
            let drain_over = progress.drain_deadline.is_some_and(|d| Instant::now() >= d);
            let may_read =
                !reading || (progress.in_flight < self.max_in_flight && !progress.barrier);
            tokio::select! {
                biased;
                // Every acknowledgement that is ready, up to a batch, before any new input.
                received = self.acks.recv_many(&mut acks, BATCH), if progress.in_flight > 0 => {
                    progress.in_flight = progress.in_flight.saturating_sub(received);
                    for ack in acks.drain(..) {
                        if let Err(e) = self.acknowledge(&mut progress, ack) {
                            self.fail(&mut progress, e, cancel);
                        }
                    }
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
                _ = consumer.context().notify.notified() => {
                    // A rebalance: handled at the top of the loop.
                }
                _ = checkpoint.tick() => {
                    if self.job.stateful() && matches!(self.commit, Commit::AtLeastOnce) && progress.in_flight > 0 {
                        // Taken once every output sent is acknowledged (top of the loop).
                        progress.barrier = true;
                    } else {
                        let limit = progress.drain_deadline.unwrap_or_else(|| Instant::now() + COMMIT_TIMEOUT);
                        self.checkpoint(&mut progress, Some(limit)).await;
                    }
                }
                _ = job_tick.tick(), if tick_every.is_some() && reading => {
                    let now = Now::current();
                    self.emitter.clear();
                    self.job.tick(now, &mut self.emitter);
                    self.job.publish(now);
                    if let Err(e) = self.send_results(&mut progress) {
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
                // After a stop, the consumer is still polled (its records are dropped, to be
                // read again by the next owner), so that rebalances are served.
                message = consumer.recv(), if may_read => {
                    self.read_batch(&consumer, message, &mut progress, cancel).await;
                }
            }
        }
        // Hand over what is left at once: everything delivered is committed.
        if let Some(revocation) = progress.revoking.take() {
            self.release(revocation, &mut progress);
        }
        self.consumer.context().set_closing();
        let failure = progress.failure.take();
        self.leave_group().await;
        failure.map_or(Ok(()), Err)
    }

    /// Records the first error and stops the whole job: its workers drain and commit.
    fn fail(&self, progress: &mut Progress, error: Error, cancel: &CancellationToken) {
        progress.failure.get_or_insert(error);
        cancel.cancel();
        progress
            .drain_deadline
            .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
    }

    /// Whether this worker may leave the group now: drained after a stop (or out of
    /// time), or, `--bounded`, the whole job done; commits first. Reports to its siblings,
    /// and says yes only when every worker of the process is ready.
    async fn ready_to_leave(&mut self, progress: &mut Progress) -> bool {
        let reading = progress.reading();
        let drain_over = progress.drain_deadline.is_some_and(|d| Instant::now() >= d);
        if reading && self.bounded && !progress.finished && self.bounded_done(progress) {
            // The end of the input: the job emits what it holds, once.
            progress.finished = true;
            self.emitter.clear();
            self.job.finish(&mut self.emitter);
            if let Err(e) = self.send_results(progress) {
                progress.failure.get_or_insert(e);
                progress.drain_deadline = Some(Instant::now());
            }
        }
        let mut ready = if reading {
            self.bounded && progress.finished && self.bounded_done(progress)
        } else {
            progress.in_flight == 0 || drain_over
        };
        if drain_over && progress.in_flight > 0 && !progress.warned_undrained {
            progress.warned_undrained = true;
            log::warn!(
                "worker {}: {} deliveries still in flight after {} s; their records will be read again on restart",
                self.id,
                progress.in_flight,
                DRAIN_TIMEOUT.as_secs()
            );
        }
        // Commit before saying so; a failed commit (say, during a rebalance) is tried
        // again shortly, until the drain deadline. A commit that gets no answer by then
        // (the coordinator is down) is abandoned, with one line naming what is re-read.
        if ready && !drain_over {
            if progress.retry_commit_at.is_some() {
                ready = false;
            } else {
                let deadline = progress.drain_deadline;
                match self.checkpoint(progress, deadline).await {
                    Committed::Yes => {}
                    Committed::Failed | Committed::Aborted => {
                        ready = false;
                        progress.retry_commit_at = Some(Instant::now() + COMMIT_RETRY);
                    }
                    Committed::TimedOut if progress.drain_deadline.is_some() => {
                        self.abandon_commit(&progress.tracker);
                        progress.commit_abandoned = true;
                        progress.drain_deadline = Some(Instant::now());
                    }
                    Committed::TimedOut => ready = false,
                }
            }
        } else if ready && !progress.commit_abandoned {
            // Out of time: one last try, then leave whatever happens.
            progress.commit_abandoned = true;
            let last_try = Instant::now() + COMMIT_RETRY;
            if self.checkpoint(progress, Some(last_try)).await != Committed::Yes {
                self.abandon_commit(&progress.tracker);
            }
        }
        // --bounded: done here, and committed; the process still serves the group (and
        // takes over partitions) until the whole job's backlog is written and committed,
        // so that no partition is left without an owner while records remain.
        if !(ready && reading) {
            progress.next_drained_check = None;
        } else if !self.siblings.drained.load(Ordering::Acquire) {
            ready = false;
            if progress
                .next_drained_check
                .is_none_or(|at| Instant::now() >= at)
            {
                if self.job_drained() {
                    self.siblings.drained.store(true, Ordering::Release);
                    self.siblings.changed.notify_waiters();
                    ready = true;
                    progress.next_drained_check = None;
                } else {
                    progress.next_drained_check = Some(Instant::now() + DRAINED_CHECK_INTERVAL);
                }
            }
        }
        // The process leaves the group only when all its workers are ready, so that no
        // worker's leaving starts a rebalance while a sibling still commits.
        self.siblings.report(self.id, ready);
        self.siblings.all_ready()
    }

    /// The first record of a batch, then every one already fetched, up to a batch: timers
    /// and select bookkeeping are paid per batch, not per record.
    async fn read_batch<'a>(
        &mut self,
        consumer: &'a StreamConsumer<Member>,
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
        let now = Now::current();
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
                        if let Some(end) = self.position_of(partition) {
                            progress.tracker.skip_to(partition, end);
                        }
                    }
                }
                // Static membership: another member joined under this worker's group
                // instance id, so another process runs under the same instance id.
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    let error = Error::Kafka(format!(
                        "worker {}: the consumer group fenced this member ({code}): another process runs under group instance id {}; this one stops. Give each process its own --instance-id, or none: processes on one host then take distinct ones",
                        self.id,
                        self.group_instance.as_deref().unwrap_or("?")
                    ));
                    self.fail(progress, error, cancel);
                    break;
                }
                Err(error) => {
                    if progress
                        .last_read_error
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                    {
                        log::warn!(
                            "worker {}: reading {}: {error}; retrying",
                            self.id,
                            self.sender.topics.input
                        );
                        progress.last_read_error = Some(std::time::Instant::now());
                    }
                    break;
                }
            }
            taken += 1;
            let room = !progress.reading()
                || (progress.in_flight < self.max_in_flight && !progress.barrier);
            next = if taken < BATCH && room {
                consumer.recv().now_or_never()
            } else {
                None
            };
        }
    }

    /// One record read: processed, or skipped when it is not this worker's to process.
    fn take(
        &mut self,
        message: &BorrowedMessage<'_>,
        now: Now,
        progress: &mut Progress,
    ) -> Result<()> {
        let partition = message.partition();
        if !progress.partitions.contains(&partition) {
            // Assigned by the callback inside this recv(): take the news before deciding,
            // or the records would be skipped and a later commit would pass over them.
            self.handle_rebalances(progress);
        }
        if !progress.reading()
            || progress
                .revoking
                .as_ref()
                .is_some_and(|r| r.partitions.contains(&partition))
            || !progress.partitions.contains(&partition)
        {
            // Being handed over (or no longer ours): its new owner reads it from the
            // committed position.
            return Ok(());
        }
        if !progress.tracker.read(partition, message.offset()) {
            // Delivered again (a fetch restarted from a stale position): already
            // processed, not written twice.
            progress.redelivered += 1;
            if progress.redelivered == 1 || progress.redelivered.is_power_of_two() {
                log::info!(
                    "worker {}: {} partition {partition} offset {} was delivered again by the consumer; skipped ({} so far)",
                    self.id,
                    self.sender.topics.input,
                    message.offset(),
                    progress.redelivered
                );
            }
            return Ok(());
        }
        progress.at_end.remove(&partition);
        progress.finished = false;
        let inject_abort = match &mut self.commit {
            Commit::AtLeastOnce => {
                Stats::add(&self.stats.read);
                false
            }
            Commit::ExactlyOnce(tx) => tx.read_one(),
        };
        self.process(message, now, progress)?;
        if inject_abort && let Commit::ExactlyOnce(tx) = &mut self.commit {
            block_in_place(|| tx.inject_abort())?;
            self.rewind(progress)?;
        }
        Ok(())
    }

    /// Hands one record to the job and sends what it emits, or its dead letter.
    fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        now: Now,
        progress: &mut Progress,
    ) -> Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        let record = Record {
            partition,
            offset,
            key: message.key(),
            payload: message.payload(),
        };
        self.emitter.clear();
        let outcome = self.job.process(&record, now, &mut self.emitter);
        let forward = self.forward_headers
            && (self.job.forwards_headers() || !matches!(outcome, Outcome::Emitted));
        let input = Input {
            partition,
            offset,
            key: record.key,
            payload: record.payload,
            headers: message.headers().filter(|_| forward).map(|h| h.detach()),
            timestamp_ms: message.timestamp().to_millis(),
        };
        let mut sent = 0u32;
        match outcome {
            Outcome::Emitted => {
                for (key, value) in self.emitter.records() {
                    let destination = self
                        .sender
                        .output(&input, key, value, &self.stats)
                        .map_err(|e| self.send_error(&e))?;
                    queued(&mut self.commit, destination);
                    sent += 1;
                }
            }
            Outcome::Counted => match &mut self.commit {
                Commit::AtLeastOnce => Stats::add(&self.stats.counted),
                Commit::ExactlyOnce(tx) => tx.open.counted += 1,
            },
            Outcome::Rejected(rejection) => {
                self.stats.reject(rejection.kind, &rejection.reason);
                let destination = self
                    .sender
                    .dead_letter(&input, &rejection)
                    .map_err(|e| self.send_error(&e))?;
                queued(&mut self.commit, destination);
                sent += 1;
            }
        }
        if sent != 1 {
            progress.tracker.settle(partition, offset, sent);
        }
        progress.in_flight += sent as usize;
        Ok(())
    }

    /// Sends what the job emitted on its own (window results): tied to no input position.
    fn send_results(&mut self, progress: &mut Progress) -> Result<()> {
        if self.emitter.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for (key, value) in self.emitter.records() {
            let destination = self
                .sender
                .result(key, value, &self.stats)
                .map_err(|e| self.send_error(&e))?;
            queued(&mut self.commit, destination);
            progress.in_flight += 1;
        }
        Ok(())
    }

    /// Why the producer cannot send.
    fn send_error(&self, error: &KafkaError) -> Error {
        match &self.commit {
            Commit::ExactlyOnce(tx) => tx.send_failed(error),
            Commit::AtLeastOnce => Error::Kafka(format!(
                "cannot send to {} or {}: {error}",
                self.sender.topics.output, self.sender.topics.dead_letter
            )),
        }
    }

    /// Exactly once: opens a transaction if none is open.
    fn begin(&mut self) -> Result<()> {
        match &mut self.commit {
            Commit::ExactlyOnce(tx) => tx.begin(),
            Commit::AtLeastOnce => Ok(()),
        }
    }

    /// Records one delivery report. At least once, a record the broker refused because of
    /// the record itself is dead-lettered instead (by reference: the input record is no
    /// longer in memory), one more record in flight for the same position. Exactly once,
    /// a failed delivery fails the transaction's commit, which aborts and replays it.
    fn acknowledge(&mut self, progress: &mut Progress, mut ack: Ack) -> Result<()> {
        if ack.generation != self.sender.generation {
            // A report of an aborted transaction's record: it moves nothing.
            return Ok(());
        }
        let exactly_once = matches!(self.commit, Commit::ExactlyOnce(_));
        if let Some((code, error)) = ack.error.take() {
            if exactly_once {
                log::debug!(
                    "worker {}: a delivery failed ({error}); the transaction will abort",
                    self.id
                );
                return Ok(());
            }
            return self.refused_on_delivery(progress, ack, code, &error);
        }
        if ack.destination.has_position() {
            progress.tracker.ack(ack.partition, ack.offset);
        }
        if !exactly_once {
            Stats::add(if ack.destination.is_output() {
                &self.stats.written
            } else {
                &self.stats.dead_lettered
            });
        }
        Ok(())
    }

    /// At least once: a record the broker refused on delivery.
    fn refused_on_delivery(
        &mut self,
        progress: &mut Progress,
        ack: Ack,
        code: Option<rdkafka::types::RDKafkaErrorCode>,
        error: &str,
    ) -> Result<()> {
        let topics = &self.sender.topics;
        let topic = if ack.destination.is_output() {
            &topics.output
        } else {
            &topics.dead_letter
        };
        let kind = code.and_then(dead_letter::record_refusal);
        let Some(kind) = kind.filter(|_| {
            !matches!(
                ack.destination,
                Destination::Reference | Destination::ResultDeadLetter
            )
        }) else {
            return Err(Error::Kafka(format!("cannot deliver to {topic}: {error}")));
        };
        let rejection = dead_letter::refused_on_delivery(topic, kind, error);
        if ack.destination.is_output() {
            self.stats.reject(kind, &rejection.reason);
        }
        let destination = match (ack.destination, ack.refused_result) {
            (Destination::Result, Some((key, value))) => {
                log::warn!(
                    "worker {}: a result: {}; dead-lettered",
                    self.id,
                    rejection.reason
                );
                self.sender.result_dead_letter(&key, &value, &rejection)
            }
            _ => {
                log::warn!(
                    "worker {}: {} partition {} offset {}: {}; dead-lettered by reference",
                    self.id,
                    topics.input,
                    ack.partition,
                    ack.offset,
                    rejection.reason
                );
                // The input record is no longer in memory: its headers stay with it.
                self.sender
                    .reference(None, ack.partition, ack.offset, ack.size, None, &rejection)
            }
        }
        .map_err(|e| Error::Kafka(format!("cannot dead-letter a refused record: {e}")))?;
        queued(&mut self.commit, destination);
        progress.in_flight += 1;
        Ok(())
    }

    /// Commits what the guarantee allows, with the job's state, waiting until `deadline`
    /// (at least once; `None`: as long as librdkafka takes).
    async fn checkpoint(
        &mut self,
        progress: &mut Progress,
        deadline: Option<Instant>,
    ) -> Committed {
        let input = self.sender.topics.input.clone();
        let positions = match self.commit {
            Commit::AtLeastOnce => progress.tracker.to_commit(),
            Commit::ExactlyOnce(_) => progress.tracker.read_positions(),
        };
        let mut list = TopicPartitionList::new();
        let mut committing = Vec::with_capacity(positions.len());
        for (partition, next) in positions {
            let at = self.job.hold(partition).map_or(next, |hold| hold.min(next));
            let _ = list.add_partition_offset(&input, partition, Offset::Offset(at));
            if let Some(saved) = self.job.save(partition, next)
                && let Some(mut element) = list.find_partition(&input, partition)
            {
                element.set_metadata(saved);
            }
            committing.push((partition, at));
        }
        let started = std::time::Instant::now();
        let committed = match &mut self.commit {
            Commit::AtLeastOnce if committing.is_empty() => return Committed::Yes,
            Commit::AtLeastOnce => {
                at_least_once::commit(self.id, &self.consumer, list, deadline).await
            }
            Commit::ExactlyOnce(tx) => match block_in_place(|| tx.commit(&self.consumer, &list)) {
                Ok(Committed::Aborted) => {
                    self.sender.producer = tx.producer();
                    if let Err(e) = self.rewind(progress) {
                        progress.failure.get_or_insert(e);
                        progress.drain_deadline = Some(Instant::now());
                    }
                    return Committed::Aborted;
                }
                Ok(committed) => committed,
                Err(e) => {
                    progress.failure.get_or_insert(e);
                    progress.drain_deadline = Some(Instant::now());
                    return Committed::Failed;
                }
            },
        };
        if committed == Committed::Yes && !committing.is_empty() {
            progress.tracker.committed(&committing);
            self.stats.record_checkpoint(started.elapsed(), &committing);
            log::debug!(
                "worker {}: committed {committing:?} in {:?}",
                self.id,
                started.elapsed()
            );
        }
        committed
    }

    /// Exactly once, after an abort: every owned partition goes back to its committed
    /// position, and the job to the state saved there; reports of what was sent before
    /// no longer count.
    fn rewind(&mut self, progress: &mut Progress) -> Result<()> {
        self.sender.generation = self.sender.generation.wrapping_add(1);
        let owned: Vec<i32> = progress.partitions.iter().copied().collect();
        for &partition in &owned {
            progress.tracker.forget(partition);
            self.job.revoke(partition);
        }
        progress.at_end.clear();
        progress.finished = false;
        let input = &self.sender.topics.input;
        let mut list = TopicPartitionList::new();
        for &partition in &owned {
            let _ = list.add_partition(input, partition);
        }
        let committed = block_in_place(|| {
            self.consumer
                .committed_offsets(list, Duration::from_secs(30))
        })
        .map_err(|e| Error::Kafka(format!("cannot read the committed positions: {e}")))?;
        let now = Now::current();
        for element in committed.elements() {
            let to = match element.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            block_in_place(|| {
                self.consumer
                    .seek(input, element.partition(), to, Duration::from_secs(30))
            })
            .map_err(|e| {
                Error::Kafka(format!(
                    "cannot rewind partition {}: {e}",
                    element.partition()
                ))
            })?;
            let saved = Some(element.metadata()).filter(|m| !m.is_empty());
            self.job.assign(element.partition(), saved, now);
        }
        Ok(())
    }

    /// Gives the job the state saved with the committed positions of `partitions`.
    fn assign_to_job(&mut self, partitions: &[i32]) {
        if !self.job.stateful() {
            return;
        }
        let input = &self.sender.topics.input;
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            let _ = list.add_partition(input, partition);
        }
        let committed = block_in_place(|| {
            self.consumer
                .committed_offsets(list, Duration::from_secs(10))
        });
        let now = Now::current();
        match committed {
            Ok(committed) => {
                for element in committed.elements() {
                    let saved = Some(element.metadata()).filter(|m| !m.is_empty());
                    self.job.assign(element.partition(), saved, now);
                }
            }
            Err(e) => {
                log::warn!(
                    "worker {}: cannot read the committed positions of {partitions:?} ({e}); their state starts empty",
                    self.id
                );
                for &partition in partitions {
                    self.job.assign(partition, None, now);
                }
            }
        }
    }

    /// `--bounded`: this worker is done with its own share once it has joined the group,
    /// hands nothing over, and has every assigned partition read to its end and nothing
    /// in flight. (The process stops when the whole job is done: see [`Siblings`].)
    fn bounded_done(&self, progress: &Progress) -> bool {
        progress.joined
            && progress.revoking.is_none()
            && progress.in_flight == 0
            && progress
                .partitions
                .iter()
                .all(|p| progress.at_end.contains(p))
    }

    /// Whether the job's committed positions reach the input's ends as they were when it
    /// started, on every partition: then every record of the backlog was written and
    /// committed, by whichever process of the group. False if it cannot be told now.
    fn job_drained(&self) -> bool {
        let input = &self.sender.topics.input;
        let mut list = TopicPartitionList::new();
        for &partition in self.siblings.ends.keys() {
            let _ = list.add_partition(input, partition);
        }
        let Ok(committed) = block_in_place(|| {
            self.consumer
                .committed_offsets(list, Duration::from_secs(5))
        }) else {
            return false;
        };
        self.siblings.ends.iter().all(|(&partition, &end)| {
            end <= 0
                || committed
                    .find_partition(input, partition)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= end))
        })
    }

    /// The consumer's read position of `partition` (past any transaction marker).
    fn position_of(&self, partition: i32) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        match positions
            .find_partition(&self.sender.topics.input, partition)?
            .offset()
        {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// Applies what the group said since the last pass.
    fn handle_rebalances(&mut self, progress: &mut Progress) {
        for event in self.consumer.context().take_events() {
            match event {
                RebalanceEvent::Assigned(assigned) => {
                    progress.joined = true;
                    progress.partitions.extend(assigned.iter().copied());
                    self.assign_to_job(&assigned);
                    self.stats.add_partitions(&assigned);
                    self.changed(progress, &assigned, &[], false, Duration::ZERO);
                }
                RebalanceEvent::RevokeRequested {
                    partitions,
                    incremental,
                } => {
                    let revoked: BTreeSet<i32> =
                        group::partitions_of(&partitions).into_iter().collect();
                    log::debug!("worker {}: handing over partitions {revoked:?}", self.id);
                    progress.revoking = Some(Revocation {
                        list: partitions,
                        partitions: revoked,
                        incremental,
                        started: std::time::Instant::now(),
                        deadline: Instant::now() + REVOKE_TIMEOUT,
                        retry_at: None,
                    });
                }
                RebalanceEvent::Released { partitions, lost } => {
                    if lost {
                        log::warn!(
                            "worker {}: partitions {partitions:?} were lost (session timeout or fenced): not committed; their new owner reads them from the last commit",
                            self.id
                        );
                    }
                    self.forget(&partitions, progress);
                    if lost && let Commit::ExactlyOnce(tx) = &mut self.commit {
                        // The open transaction holds positions of partitions no longer
                        // ours: it cannot commit.
                        let aborted = block_in_place(|| tx.abort("partitions lost"));
                        self.sender.producer = tx.producer();
                        if let Err(e) = aborted.and_then(|()| self.rewind(progress)) {
                            progress.failure.get_or_insert(e);
                            progress.drain_deadline = Some(Instant::now());
                        }
                    }
                    self.changed(progress, &[], &partitions, lost, Duration::ZERO);
                }
                RebalanceEvent::Failed(reason) => {
                    log::warn!("worker {}: consumer group {}: {reason}", self.id, self.name);
                }
            }
        }
    }

    /// Releases the partitions being handed over once none of their records is in flight
    /// (none at all, for a stateful job: its results stand for every partition), or at the
    /// deadline.
    async fn finish_revocation_if_done(&mut self, progress: &mut Progress) {
        let Some(revocation) = &progress.revoking else {
            return;
        };
        let pending: usize = if self.job.stateful() {
            progress.in_flight
        } else {
            revocation
                .partitions
                .iter()
                .map(|&p| progress.tracker.in_flight_of(p))
                .sum()
        };
        let now = Instant::now();
        if (pending > 0 || revocation.retry_at.is_some_and(|at| now < at))
            && now < revocation.deadline
        {
            return;
        }
        if pending > 0 {
            log::warn!(
                "worker {}: {pending} records of partitions {:?} still in flight after {} s; releasing them anyway, their new owner writes them again",
                self.id,
                revocation.partitions,
                REVOKE_TIMEOUT.as_secs()
            );
        }
        let deadline = revocation.deadline.max(now + COMMIT_RETRY);
        let committed = self
            .checkpoint(progress, Some(deadline.min(now + COMMIT_TIMEOUT)))
            .await;
        if let Some(mut revocation) = progress.revoking.take() {
            // A commit refused during a rebalance (say, by a generation that has just
            // moved on) is tried again until the hand-over's deadline: releasing the
            // partitions uncommitted would make their new owner write again what this
            // worker wrote.
            if committed == Committed::Failed && Instant::now() + COMMIT_RETRY < revocation.deadline
            {
                revocation.retry_at = Some(Instant::now() + COMMIT_RETRY);
                progress.revoking = Some(revocation);
                return;
            }
            if committed != Committed::Yes {
                self.warn_uncommitted(&progress.tracker, &revocation.partitions);
            }
            self.release(revocation, progress);
        }
    }

    /// Says which records of the `partitions` being released will be written again by
    /// their next owner, because their positions could not be committed.
    fn warn_uncommitted(&self, tracker: &OffsetTracker, partitions: &BTreeSet<i32>) {
        let uncommitted = uncommitted_ranges(tracker, |p| partitions.contains(&p));
        if !uncommitted.is_empty() {
            log::warn!(
                "worker {}: handing over without a commit (the group coordinator refused it until the hand-over's deadline); their next owner reads (and writes) these records of {} again: {}",
                self.id,
                self.sender.topics.input,
                uncommitted.join(", ")
            );
        }
    }

    /// Releases revoked partitions to the group and forgets them.
    fn release(&mut self, revocation: Revocation, progress: &mut Progress) {
        if let Err(e) = group::release(&*self.consumer, &revocation.list, revocation.incremental) {
            log::warn!(
                "worker {}: releasing partitions {:?}: {e}",
                self.id,
                revocation.partitions
            );
        }
        let released: Vec<i32> = revocation.partitions.into_iter().collect();
        self.forget(&released, progress);
        self.changed(
            progress,
            &[],
            &released,
            false,
            revocation.started.elapsed(),
        );
    }

    /// Drops every trace of `partitions` (revoked or lost), the job's state included.
    fn forget(&mut self, partitions: &[i32], progress: &mut Progress) {
        for &partition in partitions {
            progress.partitions.remove(&partition);
            progress.at_end.remove(&partition);
            progress.tracker.forget(partition);
            self.job.revoke(partition);
        }
        self.stats.remove_partitions(partitions);
    }

    /// Records an assignment change: the dashboard, the history and the log.
    fn changed(
        &self,
        progress: &Progress,
        assigned: &[i32],
        revoked: &[i32],
        lost: bool,
        duration: Duration,
    ) {
        self.stats.set_member(
            self.id,
            MemberStatus {
                name: self.name.clone(),
                partitions: progress.partitions.clone(),
            },
        );
        if assigned.is_empty() && revoked.is_empty() {
            return;
        }
        self.stats.record_rebalance(RebalanceRecord {
            at: std::time::SystemTime::now(),
            member: self.name.clone(),
            assigned: assigned.to_vec(),
            revoked: revoked.to_vec(),
            lost,
            duration,
        });
        let revoked_text = if revoked.is_empty() {
            String::new()
        } else {
            format!(
                "{}{} {revoked:?} in {} ms",
                if assigned.is_empty() { "" } else { ", " },
                if lost { "lost" } else { "handed over" },
                duration.as_millis()
            )
        };
        let assigned_text = if assigned.is_empty() {
            String::new()
        } else {
            format!("assigned {assigned:?}")
        };
        log::info!(
            "worker {}: {assigned_text}{revoked_text}; now reads partitions {:?} of {}",
            self.id,
            progress.partitions,
            self.sender.topics.input
        );
    }

    /// Leaves the group: the remaining partitions are released at once (all delivered
    /// records were committed), and librdkafka's close is served on a blocking thread, for
    /// at most [`LEAVE_TIMEOUT`]: with the coordinator down, the close is left to finish
    /// (or not) in the background; the group notices the member's absence by itself.
    async fn leave_group(self) {
        let Worker {
            id,
            consumer,
            commit,
            ..
        } = self;
        let close = tokio::task::spawn_blocking(move || {
            drop(consumer);
            drop(commit);
        });
        if tokio::time::timeout(LEAVE_TIMEOUT, close).await.is_err() {
            log::warn!(
                "worker {id}: the consumer did not close within {} s (is the cluster down?); leaving anyway",
                LEAVE_TIMEOUT.as_secs()
            );
        }
    }

    /// Says, in one line, which records will be read again because their positions could
    /// not be committed.
    fn abandon_commit(&self, tracker: &OffsetTracker) {
        let uncommitted = uncommitted_ranges(tracker, |_| true);
        if !uncommitted.is_empty() {
            log::warn!(
                "worker {}: the final commit got no answer from the group coordinator in time; abandoned. These records of {} were written and will be read (and written) again on restart: {}",
                self.id,
                self.sender.topics.input,
                uncommitted.join(", ")
            );
        }
    }

    /// Records this worker's read positions (local: no network call in the loop). The
    /// end offsets come from the watermark watcher; together they give the lag.
    fn measure_lag(&self, progress: &Progress) {
        let tracker = &progress.tracker;
        let positions = self.consumer.position().ok();
        for &partition in &progress.partitions {
            let position = positions
                .as_ref()
                .and_then(|list| list.find_partition(&self.sender.topics.input, partition))
                .and_then(|element| match element.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .or(tracker.last_committed(partition));
            self.stats
                .record_position(partition, tracker.last_committed(partition), position);
        }
    }
}

/// A record was queued: exactly once, it counts with its transaction.
fn queued(commit: &mut Commit, destination: Destination) {
    if let Commit::ExactlyOnce(tx) = commit {
        if destination.is_output() {
            tx.open.written += 1;
        } else {
            tx.open.dead_lettered += 1;
        }
    }
}

/// The records of the partitions `wanted` accepts that were written but whose positions
/// are not committed, as `partition P offsets FROM..NEXT`.
fn uncommitted_ranges(tracker: &OffsetTracker, wanted: impl Fn(i32) -> bool) -> Vec<String> {
    tracker
        .to_commit()
        .iter()
        .filter(|&&(partition, _)| wanted(partition))
        .map(
            |&(partition, next)| match tracker.last_committed(partition) {
                Some(from) => format!("partition {partition} offsets {from}..{next}"),
                None => format!("partition {partition} up to offset {next}"),
            },
        )
        .collect()
}
