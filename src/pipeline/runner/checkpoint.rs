//! Commits and the end of a worker: what its guarantee lets it commit, with the job's
//! state; the rewind after an aborted transaction; when it may leave the group.
//!
//! Guarantee: a commit never covers a record whose outputs are unacknowledged (at least
//! once) or outside the transaction that commits it (exactly once), nor passes the first
//! offset the job's state still needs; a `--bounded` process leaves only once the job's
//! committed positions reach the input's ends on every partition.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::block_in_place;
use tokio::time::Instant;

use super::offsets::OffsetTracker;
use super::worker::{COMMIT_RETRY, Commit, DRAINED_CHECK_INTERVAL, Progress, Worker};
use crate::error::{Error, Result};
use crate::pipeline::DRAIN_TIMEOUT;
use crate::pipeline::guarantee::Committed;
use crate::pipeline::guarantee::at_least_once;
use crate::windows::Now;

impl Worker {
    /// Whether this worker may leave the group now: drained after a stop (or out of
    /// time), or, `--bounded`, the whole job done; commits first. Reports to its siblings,
    /// and says yes only when every worker of the process is ready.
    pub(super) async fn ready_to_leave(&mut self, progress: &mut Progress) -> bool {
        let reading = progress.reading();
        let drain_over = progress.drain_deadline.is_some_and(|d| Instant::now() >= d);
        if reading && self.bounded && !progress.finished && self.bounded_done(progress) {
            // The end of the input: the job emits what it holds, once.
            progress.finished = true;
            self.emitter.begin();
            self.job.finish(&mut self.emitter);
            let sent = self.send_results(progress);
            if let Err(e) = sent.and_then(|()| self.abort_if_due(progress)) {
                progress.failure.get_or_insert(e);
                progress.drain_deadline = Some(Instant::now());
            }
        }
        let mut ready = if reading {
            self.bounded && progress.finished && self.bounded_done(progress)
        } else {
            self.settled(progress) || drain_over
        };
        if drain_over && !self.settled(progress) && !progress.warned_undrained {
            progress.warned_undrained = true;
            log::warn!(
                "worker {}: {} deliveries still in flight after {} s; their records will be read again on restart",
                self.id,
                progress.in_flight + self.counted_in_flight(),
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
                        self.abandon_commit(progress);
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
                self.abandon_commit(progress);
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

    /// Commits what the guarantee allows, with the job's state, waiting until `deadline`
    /// (at least once; `None`: as long as librdkafka takes).
    pub(super) async fn checkpoint(
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
        // Exactly once with no transaction open, a position held where it was committed
        // has nothing new to say (whatever moved the job's state sent a result, and
        // opened a transaction).
        let idle = matches!(&self.commit, Commit::ExactlyOnce(tx) if !tx.is_open());
        for (partition, next) in positions {
            let at = self.job.hold(partition).map_or(next, |hold| hold.min(next));
            if idle && progress.tracker.last_committed(partition) == Some(at) {
                continue;
            }
            let _ = list.add_partition_offset(&input, partition, Offset::Offset(at));
            if let Some(saved) = self.job.save(partition, next)
                && let Some(mut element) = list.find_partition(&input, partition)
            {
                element.set_metadata(saved);
            }
            committing.push((partition, at));
        }
        let started = std::time::Instant::now();
        let settled = self.settled(progress);
        let committed = match &mut self.commit {
            Commit::AtLeastOnce if committing.is_empty() => return Committed::Yes,
            // A stateful job's state counts results that are not acknowledged yet: saved
            // now, a crash would lose them. The next try comes once they are.
            Commit::AtLeastOnce if self.job.stateful() && !settled => {
                return Committed::Failed;
            }
            Commit::AtLeastOnce => {
                at_least_once::commit(self.id, &self.consumer, list, deadline).await
            }
            Commit::ExactlyOnce(tx) => match block_in_place(|| {
                // Positions to commit go in a transaction, even one that sent nothing (the
                // end of a partition past a transaction marker, say).
                if !committing.is_empty() {
                    tx.begin()?;
                }
                tx.commit(&self.consumer, &list)
            }) {
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
        if committed == Committed::Yes {
            progress.refused.committed(&committing);
        }
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
    /// position, and the job to the state saved there.
    pub(super) fn rewind(&mut self, progress: &mut Progress) -> Result<()> {
        progress.refused.aborted();
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
        let committed = self.committed_positions(&list)?;
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

    /// The committed positions (with their saved state) of `list`. An abort during a broker
    /// outage rewinds while the group coordinator may still be down or loading: the
    /// positions are asked for again, up to [`REWIND_ATTEMPTS`] times, before the job
    /// gives up.
    fn committed_positions(&self, list: &TopicPartitionList) -> Result<TopicPartitionList> {
        let mut attempt = 1;
        loop {
            let asked = block_in_place(|| {
                self.consumer
                    .committed_offsets(list.clone(), COMMITTED_READ_TIMEOUT)
            });
            match asked {
                Ok(committed) => return Ok(committed),
                Err(e) if attempt < REWIND_ATTEMPTS => {
                    log::warn!(
                        "worker {}: cannot read the committed positions yet ({e}); asking again",
                        self.id
                    );
                    attempt += 1;
                    block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
                }
                Err(e) => {
                    return Err(Error::Kafka(format!(
                        "cannot read the committed positions ({attempt} tries, {} s each): {e}",
                        COMMITTED_READ_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    /// `--bounded`: this worker is done with its own share once it has joined the group,
    /// hands nothing over, and has every assigned partition read to its end and nothing
    /// in flight. (The process stops when the whole job is done: see [`Siblings`].)
    pub(super) fn bounded_done(&self, progress: &Progress) -> bool {
        progress.joined
            && progress.revoking.is_none()
            && self.settled(progress)
            && progress
                .partitions
                .iter()
                .all(|p| progress.at_end.contains(p))
            && self.reached_ends(progress)
    }

    /// Whether the input's ends are known and, when they came after the start (see
    /// [`Siblings`](super::Siblings)), every partition of this worker has been read up to
    /// its end.
    fn reached_ends(&self, progress: &Progress) -> bool {
        let Some(ends) = self.siblings.ends.get() else {
            return false;
        };
        !self.siblings.late_ends.load(Ordering::Acquire)
            || progress.partitions.iter().all(|partition| {
                ends.get(partition).is_none_or(|&end| {
                    end <= 0
                        || progress
                            .tracker
                            .reached(*partition)
                            .is_some_and(|r| r >= end)
                })
            })
    }

    /// Whether the job's committed positions reach the input's ends as they were when it
    /// started, on every partition: then every record of the backlog was written and
    /// committed, by whichever process of the group. False if it cannot be told now.
    pub(super) fn job_drained(&self) -> bool {
        let input = &self.sender.topics.input;
        let Some(ends) = self.siblings.ends.get() else {
            return false;
        };
        let mut list = TopicPartitionList::new();
        for &partition in ends.keys() {
            let _ = list.add_partition(input, partition);
        }
        let Ok(committed) = block_in_place(|| {
            self.consumer
                .committed_offsets(list, Duration::from_secs(5))
        }) else {
            return false;
        };
        ends.iter().all(|(&partition, &end)| {
            end <= 0
                || committed
                    .find_partition(input, partition)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= end))
        })
    }

    /// The final commit got no answer in time: what is read again on restart.
    fn abandon_commit(&self, progress: &Progress) {
        let why = format!(
            "the final commit got no answer from the group coordinator in time; abandoned. These records of {} were written and will be read (and written) again on restart",
            self.sender.topics.input
        );
        self.warn_uncommitted(&progress.tracker, |_| true, &why);
    }

    /// Says, in one line, which records of the partitions `wanted` accepts were written
    /// but not committed, and so will be read (and written) again, and why.
    pub(super) fn warn_uncommitted(
        &self,
        tracker: &OffsetTracker,
        wanted: impl Fn(i32) -> bool,
        why: &str,
    ) {
        let uncommitted = uncommitted_ranges(tracker, wanted);
        if !uncommitted.is_empty() {
            log::warn!("worker {}: {why}: {}", self.id, uncommitted.join(", "));
        }
    }

    /// Records this worker's read positions (local: no network call in the loop). The
    /// end offsets come from the watermark watcher; together they give the lag.
    pub(super) fn measure_lag(&self, progress: &Progress) {
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

    /// Where `partition` is committed, if it is (asks the group coordinator).
    pub(super) fn committed_of(&self, partition: i32) -> Option<i64> {
        let mut list = TopicPartitionList::new();
        let _ = list.add_partition(&self.sender.topics.input, partition);
        let committed = block_in_place(|| {
            self.consumer
                .committed_offsets(list, Duration::from_secs(5))
        })
        .ok()?;
        match committed
            .find_partition(&self.sender.topics.input, partition)?
            .offset()
        {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// The consumer's read position of `partition` (past any transaction marker).
    pub(super) fn position_of(&self, partition: i32) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        match positions
            .find_partition(&self.sender.topics.input, partition)?
            .offset()
        {
            Offset::Offset(o) => Some(o),
            _ => None,
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

/// Tries at reading the committed positions for a rewind, [`COMMITTED_READ_TIMEOUT`]
/// each: a broker outage of up to about 4 minutes does not stop the job.
const REWIND_ATTEMPTS: u32 = 8;

/// Longest wait for one answer with the committed positions of a rewind.
const COMMITTED_READ_TIMEOUT: Duration = Duration::from_secs(30);
