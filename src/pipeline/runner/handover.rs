//! The hand-over of partitions: what a worker does with what the group tells it (through
//! the one rebalance callback, [`super::group`]).
//!
//! Guarantee: a revoked partition is released only once its records in flight are
//! acknowledged (all of them, for a stateful job, whose results stand for every partition)
//! and committed, or at [`REVOKE_TIMEOUT`]; a lost one is released at once, uncommitted
//! (exactly once, its open transaction aborts). An assigned partition reaches the job
//! with the state saved at its last commit before any of its records does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use tokio::task::block_in_place;
use tokio::time::Instant;

use super::REVOKE_TIMEOUT;
use super::group::{GroupConsumer, RebalanceEvent};
use super::worker::{COMMIT_RETRY, LEAVE_TIMEOUT, Progress, Worker};
use crate::pipeline::guarantee::Committed;
use crate::pipeline::guarantee::at_least_once::COMMIT_TIMEOUT;
use crate::pipeline::{MemberStatus, RebalanceRecord};
use crate::windows::Now;

/// Partitions being handed over: no longer read, released once their records in flight
/// are acknowledged and committed, or at `deadline`.
pub(super) struct Revocation {
    pub(super) partitions: BTreeSet<i32>,
    pub(super) started: std::time::Instant,
    pub(super) deadline: Instant,
    /// After a failed commit of the hand-over: when to try it again.
    pub(super) retry_at: Option<Instant>,
}

impl Worker {
    /// Applies what the group said since the last pass.
    pub(super) fn handle_rebalances(&mut self, progress: &mut Progress) {
        for event in self.consumer.context().take_events(self.id) {
            match event {
                RebalanceEvent::Assigned(share) => {
                    progress.joined = true;
                    let mut assigned = Vec::with_capacity(share.len());
                    for (partition, queue) in share {
                        assigned.push(partition);
                        match queue {
                            Some(queue) => progress.new_queues.push((partition, queue)),
                            None => log::warn!(
                                "worker {}: no queue of its own for partition {partition}",
                                self.id
                            ),
                        }
                    }
                    if assigned.is_empty() {
                        self.changed(progress, &[], &[], false, Duration::ZERO);
                        continue;
                    }
                    progress.partitions.extend(assigned.iter().copied());
                    self.assign_to_job(&assigned);
                    self.stats.add_partitions(&assigned);
                    self.changed(progress, &assigned, &[], false, Duration::ZERO);
                }
                RebalanceEvent::RevokeRequested(partitions) => {
                    let mut revoked: BTreeSet<i32> = partitions.into_iter().collect();
                    log::debug!("worker {}: handing over partitions {revoked:?}", self.id);
                    // A second request before the first was released: one hand-over.
                    if let Some(earlier) = progress.revoking.take() {
                        revoked.extend(earlier.partitions);
                    }
                    progress.revoking = Some(Revocation {
                        partitions: revoked,
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
                    if lost && let Err(e) = self.abort_and_rewind(progress, "partitions lost") {
                        // The open transaction holds positions of partitions no longer
                        // ours: it cannot commit.
                        progress.failure.get_or_insert(e);
                        progress.drain_deadline = Some(Instant::now());
                    }
                    self.changed(progress, &[], &partitions, lost, Duration::ZERO);
                }
                RebalanceEvent::Failed(reason) => {
                    log::warn!("worker {}: consumer group {}: {reason}", self.id, self.name);
                }
            }
        }
    }

    /// Gives the job the state saved with the committed positions of `partitions`.
    pub(super) fn assign_to_job(&mut self, partitions: &[i32]) {
        if !self.job.stateful() {
            // Nothing saved to read: the job only hears of its partitions.
            let now = Now::current();
            for &partition in partitions {
                self.job.assign(partition, None, now);
            }
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

    /// Releases the partitions being handed over once none of their records is in flight
    /// (none at all, for a stateful job: its results stand for every partition), or at the
    /// deadline.
    pub(super) async fn finish_revocation_if_done(&mut self, progress: &mut Progress) {
        let Some(revocation) = &progress.revoking else {
            return;
        };
        let pending: usize = if self.job.stateful() {
            progress.in_flight + self.counted_in_flight()
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
                let why = format!(
                    "handing over without a commit (the group coordinator refused it until the hand-over's deadline); their next owner reads (and writes) these records of {} again",
                    self.sender.topics.input
                );
                let released = &revocation.partitions;
                self.warn_uncommitted(&progress.tracker, |p| released.contains(&p), &why);
            }
            self.release(revocation, progress);
        }
    }

    /// Releases revoked partitions to the group (once every worker of the process has
    /// released its share) and forgets them.
    pub(super) fn release(&mut self, revocation: Revocation, progress: &mut Progress) {
        if let Err(e) = self.consumer.context().released(self.id, &self.consumer) {
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
    pub(super) fn forget(&mut self, partitions: &[i32], progress: &mut Progress) {
        for &partition in partitions {
            progress.partitions.remove(&partition);
            progress.at_end.remove(&partition);
            progress.tracker.forget(partition);
            self.job.revoke(partition);
        }
        self.stats.remove_partitions(partitions);
    }

    /// Records an assignment change: the dashboard, the history and the log.
    pub(super) fn changed(
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

    /// Leaves: its partitions are released at once when the group asks (all delivered
    /// records were committed), and its transactional producer, if any, closes on a
    /// blocking thread. The runner waits for every close together ([`Closing::wait`]), the
    /// process's consumer's among them.
    pub(super) fn leave_group(self) -> Closing {
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
        Closing {
            what: format!("worker {id}"),
            close,
        }
    }
}

/// A worker's transactional producer, or the process's consumer, being closed.
pub(super) struct Closing {
    /// What closes, for the warning.
    what: String,
    close: tokio::task::JoinHandle<()>,
}

impl Closing {
    /// Closes the process's consumer (librdkafka's close leaves the group) on a blocking
    /// thread, once every other handle of it is gone.
    pub(super) fn consumer(consumer: Arc<GroupConsumer>) -> Closing {
        Closing {
            what: "the consumer".into(),
            close: tokio::task::spawn_blocking(move || drop(consumer)),
        }
    }

    /// Waits for the close until `deadline`: with the coordinator down, the close is left to
    /// finish (or not) in the background; the group notices the member's absence by itself.
    pub(super) async fn wait(self, deadline: tokio::time::Instant) {
        if tokio::time::timeout_at(deadline, self.close).await.is_err() {
            log::warn!(
                "{} did not close within {} s (is the cluster down?); leaving anyway",
                self.what,
                LEAVE_TIMEOUT.as_secs()
            );
        }
    }
}
