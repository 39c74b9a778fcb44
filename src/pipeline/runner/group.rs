//! Consumer-group membership of one worker: the rebalance callback, and what it tells the
//! worker.
//!
//! librdkafka calls [`Member::rebalance`] from inside the worker's own `recv()`. Assigned
//! partitions are taken at once (`incremental_assign`). Revoked partitions are *not*
//! released here: the callback only records the revocation and wakes the worker, and
//! librdkafka pauses the worker's partitions until the worker calls `incremental_unassign`
//! itself (its documented "wait for the unassign call" state). That lets the worker, which
//! owns the offsets and the acknowledgements, hand a partition over safely: stop reading
//! it, wait for the acknowledgements of its records in flight, commit their delivered
//! prefix, and only then release it (see `worker`).
//!
//! Exceptions, released at once: partitions that were *lost* (session timeout, fencing),
//! which must not be committed, and every revocation once the worker is closing (it has
//! committed already).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tokio::sync::Notify;

use crate::kafka::ErrorLog;

/// What the group told a worker.
#[derive(Debug)]
pub(crate) enum RebalanceEvent {
    /// These partitions are now this worker's (already assigned).
    Assigned(Vec<i32>),
    /// These partitions must be handed over; the worker releases them with
    /// [`release`] once their delivered records are committed.
    RevokeRequested {
        partitions: TopicPartitionList,
        /// Cooperative (incremental) or eager (everything at once).
        incremental: bool,
    },
    /// These partitions were taken away and already released: lost, or while closing.
    Released { partitions: Vec<i32>, lost: bool },
    /// The group reported an error; the worker logs it.
    Failed(String),
}

/// A worker's consumer context: logs like [`ErrorLog`] and receives rebalances.
pub(crate) struct Member {
    errors: ErrorLog,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Wakes the worker's loop: the callback runs inside its `recv()`, which does not
    /// return on a rebalance.
    pub(crate) notify: Notify,
    closing: AtomicBool,
}

impl Member {
    pub(crate) fn new(servers: &str) -> Self {
        Member {
            errors: ErrorLog::new(servers),
            events: Mutex::new(Vec::new()),
            notify: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// The events since the last call, oldest first.
    pub(crate) fn take_events(&self) -> Vec<RebalanceEvent> {
        self.events
            .lock()
            .map(|mut events| std::mem::take(&mut *events))
            .unwrap_or_default()
    }

    /// From now on, revocations are released at once (the worker has stopped and committed).
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn push(&self, event: RebalanceEvent) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
        self.notify.notify_one();
    }
}

/// The partition numbers of `list`.
pub(crate) fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// Releases revoked partitions: `incremental_unassign` (cooperative) or `unassign` (eager).
pub(crate) fn release<C: Consumer<M>, M: ConsumerContext>(
    consumer: &C,
    partitions: &TopicPartitionList,
    incremental: bool,
) -> Result<(), KafkaError> {
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
                // Start from the committed positions (the list carries no offsets).
                let assigned = if incremental {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                match assigned {
                    Ok(()) => self.push(RebalanceEvent::Assigned(partitions_of(partitions))),
                    Err(e) => self.push(RebalanceEvent::Failed(format!("assign: {e}"))),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if lost || self.closing.load(Ordering::Relaxed) {
                    if let Err(e) = release(consumer, partitions, incremental) {
                        self.push(RebalanceEvent::Failed(format!("unassign: {e}")));
                    }
                    self.push(RebalanceEvent::Released {
                        partitions: partitions_of(partitions),
                        lost,
                    });
                } else {
                    self.push(RebalanceEvent::RevokeRequested {
                        partitions: partitions.clone(),
                        incremental,
                    });
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                // As librdkafka's default handler does: release what the error concerns.
                let _ = release(consumer, partitions, incremental);
                self.push(RebalanceEvent::Failed(format!("rebalance: {code}")));
            }
        }
    }
}
