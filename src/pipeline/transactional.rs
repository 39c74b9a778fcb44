//! `--processing-guarantee exactly-once`: transactional read-process-write, as Kafka
//! Streams' `exactly_once_v2` (KIP-447).
//!
//! Each of the process's `parallelism` workers is a thread with its own consumer (a member
//! of the job's group) and its own transactional producer. Every commit interval (100 ms by
//! default) a worker commits one transaction holding the output records, the dead letters
//! and the input positions (`send_offsets_to_transaction` with the consumer's group
//! metadata): all of them become visible to `read_committed` readers together, or none.
//!
//! **Fencing.** A worker's `transactional.id` is `<job>-<instance>-<worker>`: stable per
//! worker slot of a process instance (`--instance-id`). A restarted process fences its
//! predecessor and aborts its open transaction at once (`init_transactions`); a process
//! that is not restarted has its open transaction aborted by the broker after
//! [`TRANSACTION_TIMEOUT`]. Partitions move freely between processes: the group metadata
//! sent with the offsets fences a member that lost its partitions (a zombie), whose commit
//! then fails as fenced.
//!
//! **Rebalances.** Before partitions are revoked, the open transaction commits, so the new
//! owner starts from a consistent position.
//!
//! **No record stops the job.** A record the output refuses for what it is (too large,
//! invalid) is dead-lettered in the same transaction, by reference when the dead-letter
//! topic refuses it too, as in at-least-once mode.
//!
//! **Errors.** An abortable error aborts the transaction, rewinds every owned partition to
//! its last committed position and goes on; nothing of the aborted transaction is ever
//! visible to a `read_committed` reader. A fatal one (fenced, unauthorized) stops the
//! worker with a message saying why.
//!
//! **Broker outages.** A transaction that outlives `transaction.timeout.ms` (a broker
//! outage, say) is aborted by the broker, which bumps the producer's epoch: the worker
//! then replaces its producer with a fresh one under the same id, rewinds and goes on,
//! as Kafka Streams does, up to [`MAX_RENEWALS`] times in a row without a commit.
//!
//! Limits: `--bounded` assumes one process owns every partition. Readers downstream must
//! read with `isolation.level=read_committed`, or they also see aborted records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaError};

use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::instance::{self, InstanceId};
use super::{MemberStatus, PipelineConfig, RebalanceRecord, Stats, Topics, run_stages};
use crate::error::{Error, Result};
use crate::kafka::{self, ErrorLog, KafkaConfig};
use crate::transform::Rejection;

/// How long the broker keeps an open transaction of a producer that went silent before it
/// aborts it: the longest a `read_committed` reader can stall on a killed process that is
/// not restarted.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a worker looks at its callback's errors, its transaction's age and (bounded)
/// its ends.
const LOOK_INTERVAL: Duration = Duration::from_millis(5);

/// Producers renewed in a row without a commit before a fencing is taken as final.
const MAX_RENEWALS: u64 = 5;

/// Longest wait for a transactional call (init, commit, abort, offsets).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The exactly-once settings of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// Names this process's transactional ids; stable across restarts of the instance,
    /// unique among the live processes of a host (see [`super::instance`]).
    pub instance: InstanceId,
    /// Where instance ids are held under locks.
    pub state_dir: std::path::PathBuf,
    /// Test hook: abort the first transaction that holds this many records, once.
    pub inject_abort_after: Option<u64>,
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

/// A transactional producer's context: delivery failures inside a transaction make its
/// commit fail (and the transaction abort), so only logging is needed here.
struct TxProducer {
    errors: ErrorLog,
}

impl ClientContext for TxProducer {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ProducerContext for TxProducer {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// What the worker holds between polls; shared with its rebalance callback, which
/// librdkafka calls on the worker's own thread inside `poll`.
#[derive(Default)]
struct Open {
    /// Next offset per partition read in the open transaction.
    positions: BTreeMap<i32, i64>,
    /// Records of the open transaction, by outcome.
    read: u64,
    written: u64,
    dead_lettered: u64,
    started: Option<Instant>,
}

struct Member {
    errors: ErrorLog,
    name: String,
    worker: usize,
    input: String,
    stats: Arc<Stats>,
    /// The worker's transactional producer; replaced by a fresh one with the same id when
    /// the broker bumps its epoch (see [`Member::renew`]).
    producer: Mutex<Arc<ThreadedProducer<TxProducer>>>,
    /// How to build another.
    producer_config: rdkafka::ClientConfig,
    kafka: KafkaConfig,
    /// Renewals since the last commit; past [`MAX_RENEWALS`], fencing is fatal.
    renewals: AtomicU64,
    open: Mutex<Open>,
    /// A fatal error met inside the callback.
    failure: Mutex<Option<String>>,
    /// This worker's transactional id, and the instance id it is made of.
    transactional_id: String,
    instance: String,
    /// Per owned partition: where reading starts (its committed position, or the log's
    /// start) and its end offset when it was assigned; kept for bounded runs only.
    ends: Mutex<BTreeMap<i32, (i64, i64)>>,
    bounded: bool,
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
        let started = Instant::now();
        let incremental = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let numbers: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let lost = consumer.assignment_lost();
        let (mut assigned, mut revoked) = (Vec::new(), Vec::new());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let result = if incremental {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                if let Err(e) = result {
                    self.fail(format!("cannot take partitions {numbers:?}: {e}"));
                    return;
                }
                // Bounded: where each partition starts (a partition already read to its end
                // has no position until a record arrives, and none will) and ends.
                let committed = if self.bounded {
                    consumer
                        .committed_offsets(partitions.clone(), Duration::from_secs(10))
                        .unwrap_or_default()
                } else {
                    TopicPartitionList::new()
                };
                if self.bounded
                    && let Ok(mut ends) = self.ends.lock()
                {
                    for &p in &numbers {
                        if let Ok((low, high)) =
                            consumer.fetch_watermarks(&self.input, p, Duration::from_secs(10))
                        {
                            let start = match committed
                                .find_partition(&self.input, p)
                                .map(|e| e.offset())
                            {
                                Some(Offset::Offset(o)) => o.max(low),
                                _ => low,
                            };
                            ends.insert(p, (start, high));
                        }
                    }
                }
                self.stats.add_partitions(&numbers);
                assigned = numbers.clone();
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // The open transaction commits first: the next owner starts where it ends.
                // A lost assignment cannot commit (the group has moved on): it aborts.
                let outcome = if lost {
                    self.abort(consumer, "partitions lost")
                } else {
                    self.commit(consumer)
                };
                if let Err(e) = outcome {
                    self.fail(e.to_string());
                }
                if let Ok(mut ends) = self.ends.lock() {
                    for p in &numbers {
                        ends.remove(p);
                    }
                }
                let result = if incremental {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    self.fail(format!("cannot release partitions {numbers:?}: {e}"));
                }
                self.stats.remove_partitions(&numbers);
                revoked = numbers.clone();
            }
            other => {
                log::warn!("worker {}: rebalance error: {other:?}", self.worker);
                let _ = consumer.unassign();
            }
        }
        let owned: std::collections::BTreeSet<i32> = consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        log::info!(
            "worker {}: assigned {assigned:?}, revoked {revoked:?}{}; now reads partitions {owned:?} of {}",
            self.worker,
            if lost { " (lost)" } else { "" },
            self.input
        );
        self.stats.set_member(
            self.worker,
            MemberStatus {
                name: self.name.clone(),
                partitions: owned,
            },
        );
        self.stats.record_rebalance(RebalanceRecord {
            at: std::time::SystemTime::now(),
            member: self.name.clone(),
            assigned,
            revoked,
            lost,
            duration: started.elapsed(),
        });
    }
}

/// Fatal: this producer can do nothing more (fenced, unauthorized, misconfigured).
fn fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal() || !e.txn_requires_abort() && !e.is_retriable(),
        _ => false,
    }
}

/// Worth a fresh producer under the same id: fenced by its own epoch rather than by
/// another owner (the broker aborted a transaction that outlived `transaction.timeout.ms`,
/// say through a broker outage, and bumped the epoch), or any other fatal producer state
/// after such an outage (`INVALID_TXN_STATE`), but never an authorization failure. A real
/// zombie is still stopped by the group generation when it commits offsets, and
/// [`MAX_RENEWALS`] bounds the retries.
fn renewable(error: &KafkaError) -> bool {
    let code = error.rdkafka_error_code();
    let unauthorized = matches!(
        code,
        Some(
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    );
    let fenced = matches!(
        code,
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidTransactionalState
        )
    );
    !unauthorized && (fenced || fatal(error))
}

/// Fenced: librdkafka reports `PRODUCER_FENCED` (another producer took the transactional
/// id) and `INVALID_PRODUCER_EPOCH` (the broker bumped the epoch of a transaction that
/// outlived its timeout) alike, as `_FENCED`.
fn fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

fn describe(error: &KafkaError) -> String {
    match error {
        KafkaError::Transaction(e) => transaction_error(e),
        other => other.to_string(),
    }
}

fn transaction_error(error: &RDKafkaError) -> String {
    let code = error.code();
    let why = match code {
        RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch => {
            " (another process now owns this worker's transactional id or partitions: this one was a zombie)"
        }
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed => " (not authorized)",
        _ => "",
    };
    format!("{}{why}", error.string())
}

impl Member {
    /// Ends the open transaction's bookkeeping (committed, aborted or dropped).
    fn clear(&self, open: &mut Open) {
        self.stats
            .in_transaction
            .fetch_sub(open.read, Ordering::Relaxed);
        *open = Open::default();
    }

    fn fail(&self, message: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(message);
        }
    }

    /// Fenced while the transaction (opened at `started`) was younger than the
    /// transaction timeout: the broker did not abort it, so another producer took this
    /// worker's transactional id. Renewing would fence that one in turn; this process
    /// stops instead.
    fn fenced_by_another(&self, error: &KafkaError, started: Instant) -> Option<Error> {
        (fenced(error) && started.elapsed() < TRANSACTION_TIMEOUT).then(|| {
            Error::Kafka(format!(
                "worker {}: fenced by another producer with transactional id {} ({}): another process runs under instance id {}; this one stops. Give each process its own --instance-id, or none: processes on one host then take distinct ones",
                self.worker,
                self.transactional_id,
                describe(error),
                self.instance
            ))
        })
    }

    /// Commits the open transaction (if any) with its input positions, and opens the next.
    fn commit(&self, consumer: &BaseConsumer<Self>) -> Result<()> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| Error::Kafka("transaction state poisoned".into()))?;
        let Some(started) = open.started else {
            return Ok(());
        };
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in &open.positions {
            let _ = offsets.add_partition_offset(&self.input, partition, Offset::Offset(next));
        }
        let metadata = match consumer.group_metadata() {
            Some(metadata) => metadata,
            None if offsets.count() == 0 => {
                return self
                    .producer()
                    .commit_transaction(CALL_TIMEOUT)
                    .map(|()| self.clear(&mut open))
                    .map_err(|e| Error::Kafka(describe(&e)));
            }
            None => {
                return Err(Error::Kafka(format!(
                    "worker {}: no consumer-group metadata to commit positions with",
                    self.worker
                )));
            }
        };
        let producer = self.producer();
        let result = if offsets.count() == 0 {
            producer.commit_transaction(CALL_TIMEOUT)
        } else {
            producer
                .send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)
                .and_then(|()| producer.commit_transaction(CALL_TIMEOUT))
        };
        match result {
            Ok(()) => {
                let tx = self.stats.transactions();
                tx.committed.fetch_add(1, Ordering::Relaxed);
                tx.durations().observe(started.elapsed().as_secs_f64());
                self.stats.read.fetch_add(open.read, Ordering::Relaxed);
                self.stats
                    .written
                    .fetch_add(open.written, Ordering::Relaxed);
                self.stats
                    .dead_lettered
                    .fetch_add(open.dead_lettered, Ordering::Relaxed);
                let positions: Vec<(i32, i64)> =
                    open.positions.iter().map(|(&p, &o)| (p, o)).collect();
                if !positions.is_empty() {
                    self.stats.record_checkpoint(started.elapsed(), &positions);
                }
                self.clear(&mut open);
                self.renewals.store(0, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if let Some(error) = self.fenced_by_another(&e, started) => Err(error),
            Err(e) if renewable(&e) && self.renewals.load(Ordering::Relaxed) < MAX_RENEWALS => {
                drop(open);
                self.renew(consumer, &describe(&e))
            }
            Err(e) if fatal(&e) => Err(Error::Kafka(format!(
                "worker {}: the transaction cannot commit: {}",
                self.worker,
                describe(&e)
            ))),
            Err(e) => {
                drop(open);
                log::warn!(
                    "worker {}: the transaction failed ({}); aborting it and rewinding to the last commit",
                    self.worker,
                    describe(&e)
                );
                self.abort(consumer, "commit failed")
            }
        }
    }

    /// Aborts the open transaction and rewinds every owned partition to its committed
    /// position: what the transaction read is read again.
    fn abort(&self, consumer: &BaseConsumer<Self>, why: &str) -> Result<()> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| Error::Kafka("transaction state poisoned".into()))?;
        let Some(started) = open.started else {
            return Ok(());
        };
        if let Err(e) = self.producer().abort_transaction(CALL_TIMEOUT) {
            if let Some(error) = self.fenced_by_another(&e, started) {
                return Err(error);
            }
            if renewable(&e) && self.renewals.load(Ordering::Relaxed) < MAX_RENEWALS {
                drop(open);
                return self.renew(consumer, &describe(&e));
            }
            return Err(Error::Kafka(format!(
                "worker {}: cannot abort the transaction ({why}): {}",
                self.worker,
                describe(&e)
            )));
        }
        self.stats
            .transactions()
            .aborted
            .fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "worker {}: aborted a transaction of {} records ({why}); rewinding",
            self.worker,
            open.read
        );
        self.clear(&mut open);
        drop(open);
        self.rewind(consumer)
    }

    /// Seeks every owned partition back to its committed position.
    fn rewind(&self, consumer: &BaseConsumer<Self>) -> Result<()> {
        let assignment = consumer.assignment().unwrap_or_default();
        let committed = consumer
            .committed_offsets(assignment, CALL_TIMEOUT)
            .map_err(|e| Error::Kafka(format!("cannot read the committed positions: {e}")))?;
        for element in committed.elements() {
            let to = match element.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            consumer
                .seek(&self.input, element.partition(), to, CALL_TIMEOUT)
                .map_err(|e| {
                    Error::Kafka(format!(
                        "cannot rewind partition {}: {e}",
                        element.partition()
                    ))
                })?;
        }
        Ok(())
    }

    /// The worker's producer now.
    fn producer(&self) -> Arc<ThreadedProducer<TxProducer>> {
        match self.producer.lock() {
            Ok(producer) => Arc::clone(&producer),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces a producer whose epoch the broker bumped with a fresh one under the same
    /// transactional id (`init_transactions` fences the old one), drops the open
    /// transaction's bookkeeping, and rewinds to the committed positions.
    fn renew(&self, consumer: &BaseConsumer<Self>, why: &str) -> Result<()> {
        self.renewals.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "worker {}: the producer was fenced ({why}); a new one with the same transactional id takes over, and the open transaction's records are read again",
            self.worker
        );
        let fresh: ThreadedProducer<TxProducer> = kafka::create(
            &self.producer_config,
            TxProducer {
                errors: ErrorLog::new(&self.kafka.bootstrap_servers),
            },
            &self.kafka,
        )?;
        fresh.init_transactions(CALL_TIMEOUT).map_err(|e| {
            Error::Kafka(format!(
                "worker {}: cannot initialise a new producer: {}",
                self.worker,
                describe(&e)
            ))
        })?;
        if let Ok(mut slot) = self.producer.lock() {
            *slot = Arc::new(fresh);
        }
        if let Ok(mut open) = self.open.lock() {
            if open.started.is_some() {
                self.stats
                    .transactions()
                    .aborted
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.clear(&mut open);
        }
        self.rewind(consumer)
    }

    /// Opens a transaction if none is open.
    fn begin(&self) -> Result<()> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| Error::Kafka("transaction state poisoned".into()))?;
        if open.started.is_none() {
            self.producer().begin_transaction().map_err(|e| {
                Error::Kafka(format!(
                    "worker {}: cannot begin a transaction: {}",
                    self.worker,
                    describe(&e)
                ))
            })?;
            open.started = Some(Instant::now());
        }
        Ok(())
    }
}

/// Runs the job's workers, exactly once, until the input ends (`bounded`) or `cancel`.
pub(super) fn run(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    eos: &ExactlyOnce,
    kafka: &KafkaConfig,
    topics: &Topics,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    let facts = runtime.block_on(kafka::inspect_topics(
        kafka,
        &topics.input,
        &[&topics.output, &topics.dead_letter],
    ))?;
    let parallelism = config.parallelism.max(1);
    // Held until the job ends: no other live process of this host takes the same id.
    let lock = instance::claim(&eos.state_dir, &config.job_name, &eos.instance)?;
    let instance = lock.id.as_str();
    // Static membership under the instance id unless told otherwise, so a restarted
    // process takes its members' places (and partitions) at once instead of waiting out
    // its predecessor's session, while its transactional ids fence the predecessor's
    // producers.
    let mut config = config.clone();
    config
        .group
        .instance_id
        .get_or_insert_with(|| format!("{}-{instance}", config.job_name));
    let config = &config;
    log::info!(
        "job {}: {} ({} partitions) → {}, dead letters → {}; {parallelism} workers in consumer group {}, exactly-once (transactions every {} ms, transactional ids {}-{}-N)",
        config.job_name,
        topics.input,
        facts.input_partitions,
        topics.output,
        topics.dead_letter,
        config.job_name,
        config.checkpointing_interval.as_millis(),
        config.job_name,
        instance
    );
    let stop = cancel.child_token();
    let done_partitions = Arc::new(AtomicUsize::new(0));
    let injected = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..parallelism)
            .map(|worker| {
                let stop = stop.clone();
                let injected = Arc::clone(&injected);
                let done_partitions = Arc::clone(&done_partitions);
                scope.spawn(move || {
                    let result = run_worker(
                        worker,
                        config,
                        eos,
                        instance,
                        kafka,
                        topics,
                        stats,
                        facts,
                        &stop,
                        &injected,
                        &done_partitions,
                    );
                    if result.is_err() {
                        // One failing worker stops the others: they commit and leave.
                        stop.cancel();
                    }
                    result
                })
            })
            .collect();
        let mut first_error = None;
        for handle in handles {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(Error::Kafka("a worker panicked".into())));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

#[allow(clippy::too_many_arguments)] // a worker's share of the job, each used once
fn run_worker(
    worker: usize,
    config: &PipelineConfig,
    eos: &ExactlyOnce,
    instance: &str,
    kafka: &KafkaConfig,
    topics: &Topics,
    stats: &Arc<Stats>,
    facts: kafka::TopicFacts,
    stop: &CancellationToken,
    injected: &AtomicBool,
    done_partitions: &AtomicUsize,
) -> Result<()> {
    let transactional_id = format!("{}-{instance}-{worker}", config.job_name);
    let producer_config = kafka::transactional_producer_config(
        kafka,
        &config.job_name,
        &transactional_id,
        facts.max_record_bytes,
        TRANSACTION_TIMEOUT,
    );
    let producer: Arc<ThreadedProducer<TxProducer>> = Arc::new(kafka::create(
        &producer_config,
        TxProducer {
            errors: ErrorLog::new(&kafka.bootstrap_servers),
        },
        kafka,
    )?);
    // Fences an earlier producer with this id, and aborts its open transaction.
    producer.init_transactions(CALL_TIMEOUT).map_err(|e| {
        Error::Kafka(format!(
            "worker {worker}: cannot initialise transactions for {transactional_id}: {}",
            describe(&e)
        ))
    })?;
    let prefetch_kbytes = (super::PREFETCH_BUDGET_KBYTES / config.parallelism.max(1)).max(1_024);
    let mut consumer_config = kafka::pipeline_consumer_config(
        kafka,
        &config.job_name,
        worker,
        &config.group,
        prefetch_kbytes,
    );
    // Read only committed input: an upstream transactional writer's aborted records are
    // never processed (librdkafka's default, stated).
    consumer_config.set("isolation.level", "read_committed");
    let member = Member {
        errors: ErrorLog::new(&kafka.bootstrap_servers),
        name: format!("streamkit-pipeline-{}-{worker}", config.job_name),
        worker,
        input: topics.input.clone(),
        stats: Arc::clone(stats),
        producer: Mutex::new(producer),
        producer_config,
        transactional_id: transactional_id.clone(),
        instance: instance.to_string(),
        kafka: kafka.clone(),
        renewals: AtomicU64::new(0),
        open: Mutex::new(Open::default()),
        failure: Mutex::new(None),
        ends: Mutex::new(BTreeMap::new()),
        bounded: config.bounded,
    };
    let consumer: BaseConsumer<Member> = kafka::create(&consumer_config, member, kafka)?;
    consumer
        .subscribe(&[&topics.input])
        .map_err(|e| Error::Kafka(format!("cannot subscribe to {}: {e}", topics.input)))?;
    let mut worker_loop = Worker {
        consumer: &consumer,
        topics,
        stats,
        key: Vec::new(),
        value: Vec::new(),
        inject_abort_after: eos.inject_abort_after,
        injected,
        worker,
        eof: std::collections::BTreeSet::new(),
    };
    let mut counted_done = false;
    let mut last_look = Instant::now();
    let result = (|| -> Result<()> {
        while !stop.is_cancelled() {
            // The callback's errors, the transaction's age and (bounded) the ends are looked
            // at every few milliseconds, not per record: `position` is a round trip to
            // librdkafka's main thread, and a perf profile showed it at a third of the time.
            if last_look.elapsed() < LOOK_INTERVAL {
                worker_loop.poll()?;
                continue;
            }
            last_look = Instant::now();
            if let Some(failure) = consumer
                .context()
                .failure
                .lock()
                .ok()
                .and_then(|f| f.clone())
            {
                return Err(Error::Kafka(failure));
            }
            worker_loop.poll()?;
            let due = consumer
                .context()
                .open
                .lock()
                .ok()
                .and_then(|o| o.started)
                .is_some_and(|s| s.elapsed() >= config.checkpointing_interval);
            if due {
                consumer.context().commit(&consumer)?;
            }
            if config.bounded && !counted_done && worker_loop.at_ends() {
                consumer.context().commit(&consumer)?;
                counted_done = true;
                let owned = consumer.context().ends.lock().map_or(0, |e| e.len());
                done_partitions.fetch_add(owned, Ordering::Relaxed);
            }
            if config.bounded
                && done_partitions.load(Ordering::Relaxed) >= facts.input_partitions as usize
            {
                break;
            }
        }
        Ok(())
    })();
    // Stop: commit what is open (abort it if the worker failed), then leave the group.
    // A topic deleted under the job (see `watch`): the open transaction cannot commit.
    let failure = stats.failure();
    let finished = match (&result, failure) {
        (Ok(()), None) => consumer.context().commit(&consumer),
        (Ok(()), Some(why)) => consumer.context().abort(&consumer, &why),
        (Err(_), _) => consumer.context().abort(&consumer, "the worker failed"),
    };
    // Leaving the group revokes the partitions through the rebalance callback, which runs
    // inside `poll`: serve it (briefly) before the consumer closes, or the close waits for
    // it forever. Records delivered meanwhile are not processed: their positions were not
    // committed, so they are read again by the next owner.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && consumer
            .assignment()
            .is_ok_and(|assignment| assignment.count() > 0)
    {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    result.and(finished)
}

struct Worker<'a> {
    worker: usize,
    /// Partitions whose last poll said end of partition (and no record since).
    eof: std::collections::BTreeSet<i32>,
    consumer: &'a BaseConsumer<Member>,
    topics: &'a Topics,
    stats: &'a Arc<Stats>,
    key: Vec<u8>,
    value: Vec<u8>,
    inject_abort_after: Option<u64>,
    injected: &'a AtomicBool,
}

impl Worker<'_> {
    /// One poll: a record into the open transaction, or an end of partition noted.
    fn poll(&mut self) -> Result<()> {
        match self.consumer.poll(Duration::from_millis(20)) {
            None => {}
            Some(Ok(message)) => {
                if !self.eof.is_empty() {
                    self.eof.remove(&message.partition());
                }
                self.record(&message)?;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.eof.insert(partition);
            }
            // Static membership: another member joined under this worker's group instance
            // id, so another process runs under this instance id.
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                let member = self.consumer.context();
                return Err(Error::Kafka(format!(
                    "worker {}: the consumer group fenced this member ({code}): another process runs under instance id {}; this one stops. Give each process its own --instance-id, or none: processes on one host then take distinct ones",
                    self.worker, member.instance
                )));
            }
            Some(Err(e)) => log::debug!("worker {}: {e}", self.worker),
        }
        Ok(())
    }

    /// Every owned partition is read to the end it had when it was assigned.
    fn at_ends(&self) -> bool {
        let ends = match self.consumer.context().ends.lock() {
            Ok(ends) => ends.clone(),
            Err(_) => return false,
        };
        if ends.is_empty() {
            return false;
        }
        let positions = self.consumer.position().unwrap_or_default();
        ends.iter().all(|(&p, &(start, end))| {
            // An end of partition (after a transaction marker, say) is an end too.
            if self.eof.contains(&p) {
                return true;
            }
            match positions
                .find_partition(&self.topics.input, p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(at)) => at >= end,
                // Nothing read yet: done if it starts at its end.
                _ => start >= end,
            }
        })
    }

    /// One input record, into the open transaction.
    fn record(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let context = self.consumer.context();
        context.begin()?;
        let (partition, offset) = (message.partition(), message.offset());
        self.key.clear();
        self.value.clear();
        let outcome = match run_stages(
            message.payload(),
            self.stats,
            &mut self.key,
            &mut self.value,
        ) {
            Ok(()) => {
                let mut record = BaseRecord::to(&self.topics.output)
                    .key(self.key.as_slice())
                    .payload(self.value.as_slice());
                if let Some(headers) = message.headers() {
                    record = record.headers(headers.detach());
                }
                match self.send(record)? {
                    None => true,
                    // Refused for what it is (too large, say): dead-lettered, as at least once.
                    Some((kind, error)) => {
                        let reason = format!(
                            "the output record ({} bytes) cannot go to {}: {error}",
                            self.key.len() + self.value.len(),
                            self.topics.output
                        );
                        self.stats.reject(kind, &reason);
                        self.dead_letter(message, &Rejection { kind, reason })?;
                        false
                    }
                }
            }
            Err(rejection) => {
                self.dead_letter(message, &rejection)?;
                false
            }
        };
        let abort_now = {
            let mut open = context
                .open
                .lock()
                .map_err(|_| Error::Kafka("transaction state poisoned".into()))?;
            open.positions.insert(partition, offset + 1);
            open.read += 1;
            self.stats.in_transaction.fetch_add(1, Ordering::Relaxed);
            if outcome {
                open.written += 1;
            } else {
                open.dead_lettered += 1;
            }
            self.inject_abort_after.is_some_and(|n| open.read >= n)
                && !self.injected.swap(true, Ordering::Relaxed)
        };
        if abort_now {
            // Let the transaction's records reach the broker first, so that a
            // read_uncommitted reader can see what the abort hides.
            let _ = context.producer().flush(CALL_TIMEOUT);
            context.abort(self.consumer, "injected failure (--inject-abort-after)")?;
        }
        Ok(())
    }

    /// Dead-letters `message`; when the dead-letter topic refuses it too (too large), by
    /// reference: its headers and where it is, in place of its payload.
    fn dead_letter(&self, message: &BorrowedMessage<'_>, rejection: &Rejection) -> Result<()> {
        let headers = super::worker::dead_letter_headers(
            message.headers().map(|h| h.detach()),
            &self.topics.input,
            message.partition(),
            message.offset(),
            rejection,
            None,
        );
        let mut record = BaseRecord::to(&self.topics.dead_letter).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        let Some((_, error)) = self.send(record)? else {
            return Ok(());
        };
        let size = message.payload_len() + message.key().map_or(0, <[u8]>::len);
        let reference = serde_json::json!({
            "omitted_payload": {
                "topic": self.topics.input,
                "partition": message.partition(),
                "offset": message.offset(),
                "size": size,
            }
        })
        .to_string();
        let why = Rejection {
            kind: rejection.kind,
            reason: format!("{}; the dead letter too: {error}", rejection.reason),
        };
        let headers = super::worker::dead_letter_headers(
            message.headers().map(|h| h.detach()),
            &self.topics.input,
            message.partition(),
            message.offset(),
            &why,
            Some(size),
        );
        let record = BaseRecord::to(&self.topics.dead_letter)
            .headers(headers)
            .payload(reference.as_bytes());
        match self.send(record)? {
            None => Ok(()),
            Some((_, error)) => Err(Error::Kafka(format!(
                "cannot dead-letter {} partition {} offset {} even by reference: {error}",
                self.topics.input,
                message.partition(),
                message.offset()
            ))),
        }
    }

    /// Sends a record into the open transaction: `Ok(None)` once queued, `Ok(Some(..))`
    /// when the record itself was refused (too large, invalid), an error otherwise.
    fn send(
        &self,
        mut record: BaseRecord<'_, [u8], [u8], ()>,
    ) -> Result<Option<(crate::transform::RejectKind, String)>> {
        let producer = self.consumer.context().producer();
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(None),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), _)) => {
                    // The producer's fatal error says why: fenced by another producer?
                    let context = self.consumer.context();
                    let started = context
                        .open
                        .lock()
                        .ok()
                        .and_then(|o| o.started)
                        .unwrap_or_else(Instant::now);
                    let (code, reason) = producer
                        .client()
                        .fatal_error()
                        .unwrap_or((RDKafkaErrorCode::Fatal, "fatal producer error".into()));
                    let fatal = KafkaError::MessageProduction(code);
                    return Err(context
                        .fenced_by_another(&fatal, started)
                        .unwrap_or_else(|| Error::Kafka(format!("cannot send: {reason}"))));
                }
                Err((e, _)) => {
                    return match e
                        .rdkafka_error_code()
                        .and_then(super::worker::record_refusal)
                    {
                        Some(kind) => Ok(Some((kind, e.to_string()))),
                        None => Err(Error::Kafka(format!("cannot send: {e}"))),
                    };
                }
            }
        }
    }
}
