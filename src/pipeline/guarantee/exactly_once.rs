//! `--processing-guarantee exactly-once`: transactional read-process-write, as Kafka
//! Streams' `exactly_once_v2` (KIP-447), for every job.
//!
//! Each worker of the runner has its own transactional producer. Every commit interval
//! (100 ms by default) a worker commits one transaction holding the output records, the
//! dead letters, the input positions and the job's saved state (as the positions'
//! metadata; `send_offsets_to_transaction` with the consumer's group metadata): all of
//! them become visible to `read_committed` readers together, or none. A stateful job's
//! position stops at the first offset its state still needs, so a window result is in
//! the transaction that commits the state it was fired from.
//!
//! **Fencing.** A worker's `transactional.id` is `<job>-<instance>-<worker>`: stable per
//! worker slot of a process instance (`--instance-id`). A restarted process fences its
//! predecessor and aborts its open transaction at once (`init_transactions`); a process
//! that is not restarted has its open transaction aborted by the broker after
//! [`TRANSACTION_TIMEOUT`]. Partitions move freely between processes: the group metadata
//! sent with the offsets fences a member that lost its partitions (a zombie), whose commit
//! then fails as fenced.
//!
//! **Rebalances.** Before partitions are released, the open transaction commits (the
//! runner's hand-over), so the new owner starts from a consistent position. Lost
//! partitions abort it.
//!
//! **Errors.** An abortable error aborts the transaction; the runner then rewinds every
//! owned partition to its last committed position and gives the job back the state saved
//! there; nothing of the aborted transaction is ever visible to a `read_committed` reader.
//! A fatal one (fenced by another process, unauthorized) stops the worker with a message
//! saying why.
//!
//! **Broker outages.** A transaction that outlives `transaction.timeout.ms` (a broker
//! outage, say) is aborted by the broker, which bumps the producer's epoch: the worker
//! then replaces its producer with a fresh one under the same id, rewinds and goes on,
//! as Kafka Streams does, up to [`MAX_RENEWALS`] times in a row without a commit.
//!
//! **Refused records.** A record the output refuses at `send` (over the topic's limit) is
//! dead-lettered in the transaction. One the broker refuses on delivery fails the
//! transaction, which aborts; the runner notes it and dead-letters it when it is read
//! again. A commit that times out is called again to resume, with nothing sent meanwhile.
//!
//! **The commit's flush** is librdkafka's own `rd_kafka_flush`, called through rdkafka's
//! bindings: rdkafka's `commit_transaction` flushes in steps of 100 ms each, which left a
//! worker idle for as long as its 100 ms transaction had been open (`bench/exactly_once.sh`
//! measured exactly-once at 0.4 of at-least-once before, 0.65 to 0.82 after).
//!
//! Limits: readers downstream must read with `isolation.level=read_committed`, or they
//! also see aborted records.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;

use super::Committed;
use super::instance::InstanceId;
use crate::error::{Error, Result};
use crate::kafka::{self, KafkaConfig};
use crate::pipeline::Stats;
use crate::pipeline::runner::group::Member;
use crate::pipeline::runner::send::{AckRouter, OutputProducer};

/// How long the broker keeps an open transaction of a producer that went silent before it
/// aborts it: the longest a `read_committed` reader can stall on a killed process that is
/// not restarted.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Producers renewed in a row without a commit before a fencing is taken as final.
const MAX_RENEWALS: u64 = 5;

/// Longest wait for a transactional call (init, commit, abort, offsets).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends every record still outstanding on `producer` at once (no `linger.ms`) and waits
/// for their delivery reports, until `timeout`.
///
/// This is librdkafka's own `rd_kafka_flush`, called directly. rdkafka's
/// `commit_transaction` flushes before committing, but its `flush` polls in steps of
/// 100 ms, each lasting the full 100 ms, whenever one message is outstanding: at the
/// default 100 ms commit interval, a transaction stood idle for as long as it had been
/// open, and exactly-once ran at 0.4 of at-least-once. With the records flushed here,
/// `commit_transaction`'s own flush finds none and returns at once. A flush that times
/// out leaves the rest to `commit_transaction`, as before.
fn flush(producer: &OutputProducer, timeout: Duration) {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live producer's, borrowed for the call;
    // `rd_kafka_flush` is thread-safe, and with delivery reports as events (rdkafka's
    // way, served by the producer's own polling thread) it only waits for them.
    let _ =
        unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), timeout_ms) };
}

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

/// The records of the open transaction, counted in the job's totals once it commits.
#[derive(Debug, Default)]
pub(crate) struct Open {
    pub read: u64,
    pub written: u64,
    pub dead_lettered: u64,
    pub counted: u64,
    started: Option<Instant>,
}

/// One worker's transactions.
pub(crate) struct Transactions {
    worker: usize,
    stats: Arc<Stats>,
    /// The worker's transactional producer; replaced by a fresh one with the same id when
    /// the broker bumps its epoch (see [`Transactions::renew`]).
    producer: Arc<OutputProducer>,
    /// How to build another.
    producer_config: rdkafka::ClientConfig,
    make_router: Box<dyn Fn() -> AckRouter + Send>,
    kafka: KafkaConfig,
    /// Renewals since the last commit; past [`MAX_RENEWALS`], fencing is fatal.
    renewals: u64,
    pub(crate) open: Open,
    /// This worker's transactional id, and the instance id it is made of.
    transactional_id: String,
    instance: String,
    /// Test hook: abort the first transaction that holds this many records, once per job.
    inject_abort_after: Option<u64>,
    injected: Arc<AtomicBool>,
    /// The step of the commit to call again after it timed out.
    resume: Option<Resume>,
}

/// A step of a transaction's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    SendOffsets,
    Commit,
}

impl Transactions {
    /// Creates worker `worker`'s transactional producer (fencing an earlier one with its id,
    /// and aborting that one's open transaction).
    #[allow(clippy::too_many_arguments)] // a worker's share of the job, each used once
    pub(crate) fn start(
        worker: usize,
        eos: &ExactlyOnce,
        job_name: &str,
        instance: &str,
        kafka: &KafkaConfig,
        max_record_bytes: Option<usize>,
        make_router: Box<dyn Fn() -> AckRouter + Send>,
        stats: &Arc<Stats>,
        injected: Arc<AtomicBool>,
    ) -> Result<Self> {
        let transactional_id = format!("{job_name}-{instance}-{worker}");
        let producer_config = kafka::transactional_producer_config(
            kafka,
            job_name,
            &transactional_id,
            max_record_bytes,
            TRANSACTION_TIMEOUT,
        );
        let producer: OutputProducer = kafka::create(&producer_config, make_router(), kafka)?;
        tokio::task::block_in_place(|| producer.init_transactions(CALL_TIMEOUT)).map_err(|e| {
            Error::Kafka(format!(
                "worker {worker}: cannot initialise transactions for {transactional_id}: {}",
                describe(&e)
            ))
        })?;
        Ok(Transactions {
            worker,
            stats: Arc::clone(stats),
            producer: Arc::new(producer),
            producer_config,
            make_router,
            kafka: kafka.clone(),
            renewals: 0,
            open: Open::default(),
            transactional_id,
            instance: instance.to_string(),
            inject_abort_after: eos.inject_abort_after,
            injected,
            resume: None,
        })
    }

    /// The worker's producer now.
    pub(crate) fn producer(&self) -> Arc<OutputProducer> {
        Arc::clone(&self.producer)
    }

    /// Opens a transaction if none is open.
    pub(crate) fn begin(&mut self) -> Result<()> {
        if self.open.started.is_none() {
            self.producer.begin_transaction().map_err(|e| {
                Error::Kafka(format!(
                    "worker {}: cannot begin a transaction: {}",
                    self.worker,
                    describe(&e)
                ))
            })?;
            self.open.started = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether a transaction is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.started.is_some()
    }

    /// A call that timed out, to be called again: then no record is sent meanwhile.
    fn note_timeout(&mut self, error: &KafkaError, step: Resume) {
        self.resume = match error {
            KafkaError::Transaction(e) if e.is_retriable() && !e.txn_requires_abort() => Some(step),
            _ => None,
        };
    }

    /// Whether a commit is under way (a call timed out and is to be called again): no
    /// record may be sent until it ends.
    pub(crate) fn committing(&self) -> bool {
        self.resume.is_some()
    }

    /// A record read into the open transaction; `true` when the test hook says to abort
    /// this transaction now.
    pub(crate) fn read_one(&mut self) -> bool {
        self.open.read += 1;
        self.stats.in_transaction.fetch_add(1, Ordering::Relaxed);
        self.inject_abort_after.is_some_and(|n| self.open.read >= n)
            && !self.injected.swap(true, Ordering::Relaxed)
    }

    /// Ends the open transaction's bookkeeping (committed, aborted or dropped).
    fn clear(&mut self) {
        self.stats
            .in_transaction
            .fetch_sub(self.open.read, Ordering::Relaxed);
        self.open = Open::default();
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

    /// Why the producer cannot send: fenced by another process, or its fatal error.
    pub(crate) fn send_failed(&self, error: &KafkaError) -> Error {
        let started = self.open.started.unwrap_or_else(Instant::now);
        if let KafkaError::MessageProduction(RDKafkaErrorCode::Fatal) = error {
            let (code, reason) = self
                .producer
                .client()
                .fatal_error()
                .unwrap_or((RDKafkaErrorCode::Fatal, "fatal producer error".into()));
            let fatal = KafkaError::MessageProduction(code);
            return self
                .fenced_by_another(&fatal, started)
                .unwrap_or_else(|| Error::Kafka(format!("cannot send: {reason}")));
        }
        Error::Kafka(format!("cannot send: {error}"))
    }

    /// Commits the open transaction (if any) with `offsets` (positions and the job's
    /// state): [`Committed::Yes`], or [`Committed::Aborted`] when it had to be aborted (the
    /// caller rewinds), or an error when this worker can go on no more.
    pub(crate) fn commit(
        &mut self,
        consumer: &StreamConsumer<Member>,
        offsets: &TopicPartitionList,
    ) -> Result<Committed> {
        let Some(started) = self.open.started else {
            return Ok(Committed::Yes);
        };
        let producer = self.producer();
        // A call that timed out is called again to resume (librdkafka's rule), never
        // followed by another: the offsets go once, then the commit.
        let sent = if self.resume == Some(Resume::Commit) || offsets.count() == 0 {
            Ok(())
        } else {
            let Some(metadata) = consumer.group_metadata() else {
                return Err(Error::Kafka(format!(
                    "worker {}: no consumer-group metadata to commit positions with",
                    self.worker
                )));
            };
            producer
                .send_offsets_to_transaction(offsets, &metadata, CALL_TIMEOUT)
                .inspect_err(|e| self.note_timeout(e, Resume::SendOffsets))
        };
        let result = sent.and_then(|()| {
            // The positions went first, while the records still travelled.
            flush(&producer, CALL_TIMEOUT);
            producer
                .commit_transaction(CALL_TIMEOUT)
                .inspect_err(|e| self.note_timeout(e, Resume::Commit))
        });
        if result.is_ok() {
            self.resume = None;
        } else if self.resume.is_some() {
            log::warn!(
                "worker {}: the transaction's commit got no answer in {} s; trying again",
                self.worker,
                CALL_TIMEOUT.as_secs()
            );
            return Ok(Committed::TimedOut);
        }
        match result {
            Ok(()) => {
                let tx = self.stats.transactions();
                tx.committed.fetch_add(1, Ordering::Relaxed);
                tx.durations().observe(started.elapsed().as_secs_f64());
                for (counter, n) in [
                    (&self.stats.read, self.open.read),
                    (&self.stats.written, self.open.written),
                    (&self.stats.dead_lettered, self.open.dead_lettered),
                    (&self.stats.counted, self.open.counted),
                ] {
                    Stats::add_n(counter, n);
                }
                self.clear();
                self.renewals = 0;
                Ok(Committed::Yes)
            }
            Err(e) if let Some(error) = self.fenced_by_another(&e, started) => Err(error),
            Err(e) if renewable(&e) && self.renewals < MAX_RENEWALS => {
                self.renew(&describe(&e))?;
                Ok(Committed::Aborted)
            }
            Err(e) if fatal(&e) => Err(Error::Kafka(format!(
                "worker {}: the transaction cannot commit: {}",
                self.worker,
                describe(&e)
            ))),
            Err(e) => {
                log::warn!(
                    "worker {}: the transaction failed ({}); aborting it and rewinding to the last commit",
                    self.worker,
                    describe(&e)
                );
                self.abort("commit failed")?;
                Ok(Committed::Aborted)
            }
        }
    }

    /// Aborts the open transaction (the caller rewinds): what it read is read again.
    pub(crate) fn abort(&mut self, why: &str) -> Result<()> {
        let Some(started) = self.open.started else {
            return Ok(());
        };
        if let Err(e) = self.producer.abort_transaction(CALL_TIMEOUT) {
            if let Some(error) = self.fenced_by_another(&e, started) {
                return Err(error);
            }
            if renewable(&e) && self.renewals < MAX_RENEWALS {
                return self.renew(&describe(&e));
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
            self.open.read
        );
        self.clear();
        Ok(())
    }

    /// Test hook: lets the transaction's records reach the broker (so that a
    /// read_uncommitted reader can see what the abort hides), then aborts it.
    pub(crate) fn inject_abort(&mut self) -> Result<()> {
        let _ = self.producer.flush(CALL_TIMEOUT);
        self.abort("injected failure (--inject-abort-after)")
    }

    /// Replaces a producer whose epoch the broker bumped with a fresh one under the same
    /// transactional id (`init_transactions` fences the old one) and drops the open
    /// transaction's bookkeeping (the caller rewinds).
    fn renew(&mut self, why: &str) -> Result<()> {
        self.renewals += 1;
        log::warn!(
            "worker {}: the producer was fenced ({why}); a new one with the same transactional id takes over, and the open transaction's records are read again",
            self.worker
        );
        let fresh: OutputProducer =
            kafka::create(&self.producer_config, (self.make_router)(), &self.kafka)?;
        fresh.init_transactions(CALL_TIMEOUT).map_err(|e| {
            Error::Kafka(format!(
                "worker {}: cannot initialise a new producer: {}",
                self.worker,
                describe(&e)
            ))
        })?;
        self.producer = Arc::new(fresh);
        if self.open.started.is_some() {
            self.stats
                .transactions()
                .aborted
                .fetch_add(1, Ordering::Relaxed);
        }
        self.clear();
        Ok(())
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
