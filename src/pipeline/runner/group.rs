//! Consumer-group membership of one process: one consumer, the one rebalance callback, and
//! what it tells each worker.
//!
//! The process is one member of the job's group, whatever its parallelism: one join, one
//! heartbeat and one fetcher per broker, and the group assigns partitions to processes.
//! [`Member::rebalance`] shares each assignment among the process's workers (a partition
//! goes back to the worker that read it last, if it is still here, or else to the worker
//! with the fewest) and gives every assigned partition its own queue
//! (`split_partition_queue`), split *before* the partition is first assigned, so none of
//! its records reaches the consumer's main queue: only its worker reads it. A partition
//! keeps its one queue for the consumer's life (until [`Member::close`]): rdkafka's queue
//! handle, when dropped, stops the wake-ups of every other handle of the same partition.
//!
//! Revoked partitions are *not* released in the callback: it hands each worker its share
//! of the revocation and returns, and librdkafka pauses them until `incremental_unassign`
//! is called (its documented "wait for the unassign call" state). Each worker stops
//! reading its share, waits for the acknowledgements of its records in flight, commits
//! their delivered prefix and says so ([`Member::released`]); the last one's word releases
//! the whole revocation, in one call, as librdkafka expects.
//!
//! Exceptions, released at once: partitions that were *lost* (session timeout, fencing),
//! which must not be committed, and the shares of workers that have left (they committed
//! before they left).
//!
//! The main queue carries only the group's events and errors; [`serve`] polls it for the
//! whole life of the job, so that rebalances are served while the workers drain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
    stream_consumer::StreamPartitionQueue,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::ErrorLog;

/// The process's consumer.
pub(crate) type GroupConsumer = StreamConsumer<Member>;

/// The records of one partition, read only by the worker that owns it.
pub(crate) type PartitionQueue = StreamPartitionQueue<Member>;

/// What the group told a worker.
pub(crate) enum RebalanceEvent {
    /// These partitions are now this worker's (already assigned), each with its queue.
    /// Empty when the process joined with nothing for this worker.
    Assigned(Vec<(i32, Option<Arc<PartitionQueue>>)>),
    /// These partitions must be handed over; the worker releases them with
    /// [`Member::released`] once their delivered records are committed.
    RevokeRequested(Vec<i32>),
    /// These partitions were taken away and already released: lost, or while closing.
    Released { partitions: Vec<i32>, lost: bool },
    /// The group reported an error; the worker logs it.
    Failed(String),
}

/// One worker's mailbox.
#[derive(Default)]
struct Inbox {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Wakes the worker's loop: the callback runs on the task that serves the group.
    notify: Notify,
}

/// Who owns which partition, and which revocation waits for whom.
#[derive(Default)]
struct Owners {
    /// Partition → the worker reading it.
    of: BTreeMap<i32, usize>,
    /// Partition → the worker that read it last: it gets it back.
    last: BTreeMap<i32, usize>,
    /// Partition → its queue, split once.
    queues: BTreeMap<i32, Arc<PartitionQueue>>,
    /// Workers that have left: they read nothing more, and their revocations are released
    /// at once.
    gone: BTreeSet<usize>,
    /// The revocation being handed over, and the workers it still waits for.
    pending: Option<Pending>,
}

struct Pending {
    list: TopicPartitionList,
    incremental: bool,
    waiting: BTreeSet<usize>,
}

/// The process's consumer context: logs like [`ErrorLog`], receives rebalances and shares
/// them among the workers.
pub(crate) struct Member {
    errors: ErrorLog,
    topic: String,
    inboxes: Vec<Inbox>,
    owners: Mutex<Owners>,
    /// The consumer, to split partition queues from inside the callback (weak: the context
    /// lives inside the consumer).
    consumer: OnceLock<Weak<GroupConsumer>>,
    /// Every worker has left: revocations are released at once.
    closing: AtomicBool,
}

impl Member {
    pub(crate) fn new(servers: &str, topic: &str, workers: usize) -> Self {
        Member {
            errors: ErrorLog::new(servers),
            topic: topic.to_string(),
            inboxes: (0..workers.max(1)).map(|_| Inbox::default()).collect(),
            owners: Mutex::new(Owners::default()),
            consumer: OnceLock::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// Logs a warning, at most one every few seconds for the whole process (its client's
    /// errors included): one outage, one line at a time.
    pub(crate) fn warn(&self, message: std::fmt::Arguments<'_>) {
        self.errors.warn(message);
    }

    /// Lets the callback split partition queues: called once, before `subscribe`.
    pub(crate) fn attach(consumer: &Arc<GroupConsumer>) {
        let _ = consumer.context().consumer.set(Arc::downgrade(consumer));
    }

    /// Worker `worker`'s events since its last call, oldest first.
    pub(crate) fn take_events(&self, worker: usize) -> Vec<RebalanceEvent> {
        self.inboxes
            .get(worker)
            .and_then(|inbox| inbox.events.lock().ok())
            .map(|mut events| std::mem::take(&mut *events))
            .unwrap_or_default()
    }

    /// What wakes worker `worker` when the group has news for it.
    pub(crate) fn notify(&self, worker: usize) -> &Notify {
        // There is always one inbox at least (see `new`).
        &self.inboxes[worker % self.inboxes.len()].notify
    }

    /// Worker `worker` has committed its share of the revocation: the last share releases
    /// the whole of it.
    pub(crate) fn released(&self, worker: usize, consumer: &GroupConsumer) -> Result<()> {
        release_pending(self.settle(worker), consumer)
    }

    /// Worker `worker`'s share of the revocation is settled: the revocation, once no
    /// worker's share is left.
    fn settle(&self, worker: usize) -> Option<Pending> {
        let mut owners = self.owners();
        if let Some(pending) = &mut owners.pending {
            pending.waiting.remove(&worker);
        }
        due(&mut owners)
    }

    /// Worker `worker` has left (it committed first): what it held is released as soon as
    /// the group asks, and once every worker has left, so is everything.
    pub(crate) fn left(&self, worker: usize, consumer: &GroupConsumer) -> Result<()> {
        // Queues still in its mailbox hold the consumer: dropped now.
        drop(self.take_events(worker));
        let (due, all_gone) = {
            let mut owners = self.owners();
            owners.gone.insert(worker);
            owners.of.retain(|_, owner| *owner != worker);
            if let Some(pending) = &mut owners.pending {
                pending.waiting.remove(&worker);
            }
            (due(&mut owners), owners.gone.len() >= self.inboxes.len())
        };
        if all_gone {
            self.close();
        }
        release_pending(due, consumer)
    }

    /// From now on revocations are released at once; drops every queue and pending event:
    /// they hold the consumer, which cannot close while they live. Once the workers are
    /// done (the last to leave calls it, and the runner does).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let queues = std::mem::take(&mut self.owners().queues);
        drop(queues);
        for worker in 0..self.inboxes.len() {
            drop(self.take_events(worker));
        }
    }

    fn owners(&self) -> MutexGuard<'_, Owners> {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, worker: usize, event: RebalanceEvent) {
        if let Some(inbox) = self.inboxes.get(worker) {
            if let Ok(mut events) = inbox.events.lock() {
                events.push(event);
            }
            inbox.notify.notify_one();
        }
    }

    fn push_all(&self, event: impl Fn() -> RebalanceEvent) {
        for worker in 0..self.inboxes.len() {
            self.push(worker, event());
        }
    }

    /// Shares `partitions` among the workers still here, with their queues.
    fn assign(
        &self,
        partitions: &TopicPartitionList,
    ) -> Vec<Vec<(i32, Option<Arc<PartitionQueue>>)>> {
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        let mut owners = self.owners();
        let mut shares: Vec<Vec<(i32, Option<Arc<PartitionQueue>>)>> =
            (0..self.inboxes.len()).map(|_| Vec::new()).collect();
        for partition in partitions_of(partitions) {
            let last = owners
                .last
                .get(&partition)
                .copied()
                .filter(|w| !owners.gone.contains(w));
            let Some(worker) = last.or_else(|| self.least_loaded(&owners)) else {
                // Every worker has left: the consumer is closing.
                continue;
            };
            owners.of.insert(partition, worker);
            owners.last.insert(partition, worker);
            let queue = match owners.queues.get(&partition) {
                Some(queue) => Some(Arc::clone(queue)),
                None => consumer
                    .as_ref()
                    .and_then(|c| c.split_partition_queue(&self.topic, partition))
                    .map(Arc::new),
            };
            if let Some(queue) = &queue {
                owners.queues.insert(partition, Arc::clone(queue));
            }
            shares[worker].push((partition, queue));
        }
        shares
    }

    /// The worker still here with the fewest partitions (the lowest id among equals).
    fn least_loaded(&self, owners: &Owners) -> Option<usize> {
        let mut load: BTreeMap<usize, usize> = (0..self.inboxes.len())
            .filter(|w| !owners.gone.contains(w))
            .map(|w| (w, 0))
            .collect();
        for owner in owners.of.values() {
            if let Some(count) = load.get_mut(owner) {
                *count += 1;
            }
        }
        load.iter()
            .min_by_key(|&(&w, &count)| (count, w))
            .map(|(&w, _)| w)
    }

    /// Hands each owner its share of a revocation; true when no worker has to act (the
    /// partitions may be released at once).
    fn revoke(&self, partitions: &TopicPartitionList, incremental: bool) -> bool {
        let mut owners = self.owners();
        let mut shares: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        // Owned until released: a partition lost meanwhile is still its owner's to forget.
        for partition in partitions_of(partitions) {
            if let Some(&owner) = owners.of.get(&partition)
                && !owners.gone.contains(&owner)
            {
                shares.entry(owner).or_default().push(partition);
            }
        }
        if shares.is_empty() {
            for partition in partitions_of(partitions) {
                owners.of.remove(&partition);
            }
            return true;
        }
        let waiting = shares.keys().copied().collect();
        match &mut owners.pending {
            // librdkafka waits for the last revocation's unassign before the next: merged
            // all the same, should it not.
            Some(pending) => {
                for element in partitions.elements() {
                    let _ = pending
                        .list
                        .add_partition(element.topic(), element.partition());
                }
                pending.waiting.extend(shares.keys().copied());
            }
            None => {
                owners.pending = Some(Pending {
                    list: partitions.clone(),
                    incremental,
                    waiting,
                });
            }
        }
        drop(owners);
        for (worker, share) in shares {
            self.push(worker, RebalanceEvent::RevokeRequested(share));
        }
        false
    }

    /// Forgets the owners of partitions released without a hand-over and tells them.
    fn released_at_once(&self, partitions: &TopicPartitionList, lost: bool) {
        let mut shares: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        {
            let mut owners = self.owners();
            for partition in partitions_of(partitions) {
                if let Some(owner) = owners.of.remove(&partition) {
                    shares.entry(owner).or_default().push(partition);
                }
            }
            if let Some(pending) = &mut owners.pending
                && partitions_of(&pending.list)
                    .iter()
                    .all(|p| partitions_of(partitions).contains(p))
            {
                owners.pending = None;
            }
        }
        for (worker, partitions) in shares {
            self.push(worker, RebalanceEvent::Released { partitions, lost });
        }
    }
}

/// The pending revocation, taken (and its partitions forgotten) once no worker is waited
/// for.
fn due(owners: &mut Owners) -> Option<Pending> {
    if !owners
        .pending
        .as_ref()
        .is_some_and(|p| p.waiting.is_empty())
    {
        return None;
    }
    let pending = owners.pending.take()?;
    for partition in partitions_of(&pending.list) {
        owners.of.remove(&partition);
    }
    Some(pending)
}

/// Releases a revocation that no worker holds any longer (outside the owners' lock:
/// librdkafka answers the call from its own thread).
fn release_pending(pending: Option<Pending>, consumer: &GroupConsumer) -> Result<()> {
    match pending {
        Some(pending) => release(consumer, &pending.list, pending.incremental)
            .map_err(|e| Error::Kafka(format!("releasing partitions: {e}"))),
        None => Ok(()),
    }
}

/// The partition numbers of `list`.
pub(crate) fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// Releases revoked partitions: `incremental_unassign` (cooperative) or `unassign` (eager).
fn release<C: Consumer<M>, M: ConsumerContext>(
    consumer: &C,
    partitions: &TopicPartitionList,
    incremental: bool,
) -> std::result::Result<(), KafkaError> {
    if incremental {
        consumer.incremental_unassign(partitions)
    } else {
        consumer.unassign()
    }
}

impl ClientContext for Member {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ConsumerContext for Member {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let incremental = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Queues first: once assigned, a partition is fetched at once.
                let shares = self.assign(partitions);
                // Start from the committed positions (the list carries no offsets).
                let assigned = if incremental {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                match assigned {
                    Ok(()) => {
                        for (worker, share) in shares.into_iter().enumerate() {
                            self.push(worker, RebalanceEvent::Assigned(share));
                        }
                    }
                    Err(e) => {
                        self.push_all(|| RebalanceEvent::Failed(format!("assign: {e}")));
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if lost || self.closing.load(Ordering::Relaxed) {
                    if let Err(e) = release(consumer, partitions, incremental) {
                        self.push_all(|| RebalanceEvent::Failed(format!("unassign: {e}")));
                    }
                    self.released_at_once(partitions, lost);
                } else if self.revoke(partitions, incremental)
                    && let Err(e) = release(consumer, partitions, incremental)
                {
                    self.push_all(|| RebalanceEvent::Failed(format!("unassign: {e}")));
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                // As librdkafka's default handler does: release what the error concerns.
                let _ = release(consumer, partitions, incremental);
                self.released_at_once(partitions, false);
                self.push_all(|| RebalanceEvent::Failed(format!("rebalance: {code}")));
            }
        }
    }
}

/// Serves the group until `stop`: polls the consumer's main queue, which runs the rebalance
/// callback and carries the consumer's errors. Fails the job when the group fences this
/// process (another one runs under its group instance id), and when a record arrives there
/// (a partition whose queue could not be split: reading it here would skip its worker's
/// bookkeeping).
pub(crate) async fn serve(
    consumer: Arc<GroupConsumer>,
    instance: Option<String>,
    stop: CancellationToken,
) -> Result<()> {
    let mut events = consumer.stream();
    let topic = consumer.context().topic.clone();
    loop {
        // A poll at least every second, whatever happens: librdkafka counts the time since
        // the application last polled against `max.poll.interval.ms`, and a process whose
        // workers have no partitions polls nothing else.
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = tokio::time::timeout(Duration::from_secs(1), events.next()) => match next {
                Ok(next) => next,
                Err(_) => continue,
            },
        };
        match next {
            None => return Ok(()),
            // Assigned after every worker left: not read, nor committed, so its next owner
            // reads it.
            Some(Ok(_)) if consumer.context().closing.load(Ordering::Relaxed) => {}
            Some(Ok(message)) => {
                return Err(Error::Kafka(format!(
                    "{topic} partition {} offset {} reached the group's queue, not its worker's (its queue was not split); stopping rather than skip it",
                    message.partition(),
                    message.offset()
                )));
            }
            // Static membership: another member joined under this process's group instance
            // id, so another process runs under the same instance id.
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                return Err(Error::Kafka(format!(
                    "the consumer group fenced this process ({code}): another process runs under group instance id {}; this one stops. Give each process its own --instance-id, or none: processes on one host then take distinct ones",
                    instance.as_deref().unwrap_or("?")
                )));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(error)) => consumer
                .context()
                .warn(format_args!("reading {topic}: {error}; retrying")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition("in", partition);
        }
        list
    }

    fn shares(member: &Member, partitions: &[i32]) -> Vec<Vec<i32>> {
        member
            .assign(&list(partitions))
            .into_iter()
            .map(|share| share.into_iter().map(|(p, _)| p).collect())
            .collect()
    }

    fn revoked(member: &Member, worker: usize) -> Vec<i32> {
        member
            .take_events(worker)
            .into_iter()
            .flat_map(|event| match event {
                RebalanceEvent::RevokeRequested(partitions) => partitions,
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn partitions_go_to_the_least_loaded_worker_and_back_to_their_last_one() {
        let member = Member::new("b:9092", "in", 3);
        assert_eq!(
            shares(&member, &[0, 1, 2, 3]),
            [vec![0, 3], vec![1], vec![2]]
        );
        // Partitions 1 and 3 move away, then come back: each to the worker that read it.
        assert!(!member.revoke(&list(&[1, 3]), true));
        assert_eq!(revoked(&member, 0), [3]);
        assert_eq!(revoked(&member, 1), [1]);
        assert!(member.settle(0).is_none(), "worker 1 still hands over");
        assert!(
            member.settle(1).is_some(),
            "the last share releases the whole"
        );
        assert_eq!(shares(&member, &[3, 1, 4]), [vec![3], vec![1, 4], vec![]]);
    }

    #[test]
    fn a_worker_that_left_gets_nothing_and_is_not_waited_for() {
        let member = Member::new("b:9092", "in", 2);
        assert_eq!(shares(&member, &[0, 1]), [vec![0], vec![1]]);
        {
            let mut owners = member.owners();
            owners.gone.insert(1);
            owners.of.remove(&1);
        }
        // Its partition is released at once when revoked: nobody has to hand it over.
        assert!(member.revoke(&list(&[1]), true));
        // Assigned again, it goes to a worker still here.
        assert_eq!(shares(&member, &[1, 2]), [vec![1, 2], vec![]]);
        member.owners().gone.insert(0);
        assert_eq!(shares(&member, &[5]), [Vec::<i32>::new(), vec![]]);
    }

    #[test]
    fn a_lost_partition_is_forgotten_with_its_pending_hand_over() {
        let member = Member::new("b:9092", "in", 2);
        shares(&member, &[0, 1]);
        assert!(!member.revoke(&list(&[0, 1]), true));
        member.released_at_once(&list(&[0, 1]), true);
        assert!(member.owners().pending.is_none());
        let lost: Vec<bool> = member
            .take_events(0)
            .into_iter()
            .filter_map(|event| match event {
                RebalanceEvent::Released { lost, .. } => Some(lost),
                _ => None,
            })
            .collect();
        assert_eq!(lost, [true]);
    }
}
