//! The Kafka side of the job: `parallelism` workers in this process, each a member of the
//! job's consumer group (named after `--job-name`), sharing one producer.
//!
//! **Partitions.** The group coordinator balances the input's partitions over every worker
//! of every process of the job: `subscribe`, with `cooperative-sticky` assignment (or the
//! broker's, under KIP-848), so a member joining or leaving moves only the partitions that
//! must move. Partitions added to the input topic are picked up while the job runs.
//!
//! **Hand-over.** When a partition is revoked, its worker stops reading it, waits (at most
//! [`REVOKE_TIMEOUT`]) for the acknowledgements of its records in flight, commits their
//! contiguous delivered prefix, and only then releases it (see `group`). A partition that
//! was *lost* (session timeout, fencing) is dropped without a commit.
//!
//! **Guarantees.** A clean scale-up or scale-down (a process started, or stopped with
//! SIGTERM) loses nothing and duplicates nothing: every partition changes hands at a
//! committed position that covers exactly what was written. A `kill -9` of one process
//! loses nothing: once its session times out, the others re-read its uncommitted records,
//! so duplicates are bounded by what it had in flight and had not yet committed.
//!
//! **Bounded work.** Each worker is one task running one `select!` loop and never spawns a
//! task per record: the producer's delivery reports come back on the worker's own channel.
//! The job reads at most [`IN_FLIGHT_BUDGET`] records ahead of their acknowledgements and
//! prefetches at most [`PREFETCH_BUDGET_KBYTES`], whatever its parallelism.
//! Acknowledgements are handled before new input, so commits keep up under load. Positions
//! are committed from an [`OffsetTracker`], which only releases the contiguous delivered
//! prefix of each partition.
//!
//! **No record stops a partition.** A record the output cannot take because of the record
//! itself (larger than the topic's `max.message.bytes`, or refused as invalid) goes to the
//! dead-letter topic with kind `too_large` (or `output_rejected`) and the reason. When the
//! dead-letter topic cannot take it either, the dead letter carries the headers and a
//! reference (`{"omitted_payload": {topic, partition, offset, size}}`) instead of the
//! payload: the record itself stays in the input topic at that offset. The producer's
//! `message.max.bytes` is the smaller `max.message.bytes` of the two topics, so that
//! oversized records are caught one by one at `send`. Errors of the cluster (authorization,
//! a missing topic) still stop the job.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::block_in_place;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::group::{self, Member, RebalanceEvent};
use super::{
    DRAIN_TIMEOUT, MemberStatus, PipelineConfig, RebalanceRecord, STATUS_INTERVAL, Stats,
    StatusLine, Topics, run_stages,
};
use crate::error::{Error, Result};
use crate::kafka::{self, ErrorLog, KafkaConfig};
use crate::offsets::OffsetTracker;
use crate::transform::{RejectKind, Rejection};

/// Most records the job reads ahead of their acknowledgements, shared among its workers.
pub const IN_FLIGHT_BUDGET: usize = 15_000;

/// Kilobytes of fetched but unprocessed records the job may hold, shared among its workers.
pub const PREFETCH_BUDGET_KBYTES: usize = 16 * 1024;

/// Most messages, or acknowledgements, handled in one pass of the loop.
const BATCH: usize = 512;

/// How often each worker measures its partitions' lag.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait for the acknowledgements of a revoked partition's records before it is
/// released anyway (its new owner then writes them again).
pub const REVOKE_TIMEOUT: Duration = DRAIN_TIMEOUT;

/// How long a worker waits for its first assignment before it warns.
const JOIN_WARNING: Duration = Duration::from_secs(30);

/// How soon a failed final commit is tried again.
const COMMIT_RETRY: Duration = Duration::from_millis(200);

/// Longest wait for a periodic commit. librdkafka's synchronous commit has no timeout of
/// its own and waits for a group coordinator that may be down; past this the worker goes
/// on, and the commit is tried again at the next checkpoint.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for librdkafka's consumer close when the worker leaves the group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// Done, or nothing to commit.
    Yes,
    /// The cluster refused it (say, during a rebalance): try again.
    Failed,
    /// No answer in time; it may still complete in the background.
    TimedOut,
}

/// Longest key kept on a dead letter by reference.
const REFERENCE_KEY_BYTES: usize = 1024;

/// The dead-letter kind for an error that is about one record, not the cluster: the record
/// goes to the dead-letter topic and the job goes on.
pub(super) fn record_refusal(code: RDKafkaErrorCode) -> Option<RejectKind> {
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge => Some(RejectKind::TooLarge),
        RDKafkaErrorCode::InvalidRecord => Some(RejectKind::OutputRejected),
        _ => None,
    }
}

/// `--bounded`: how often a worker that is done asks whether the whole job is.
const DRAINED_CHECK_INTERVAL: Duration = Duration::from_millis(500);

type OutputProducer = ThreadedProducer<AckRouter>;

/// A record on its way to the output or dead-letter topic.
type Outgoing<'a> = BaseRecord<'a, [u8], [u8], Box<Ticket>>;

/// Where a record's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Output,
    DeadLetter,
    /// A dead letter without its payload: a reference to the input record.
    Reference,
}

/// Which worker sent a record, and the input position it stands for: the delivery opaque.
#[derive(Debug)]
struct Ticket {
    worker: usize,
    partition: i32,
    offset: i64,
    destination: Destination,
    /// The input record's timestamp (ms since the epoch) when its end-to-end latency is
    /// sampled (one output record in [`LATENCY_SAMPLE`]); 0 otherwise.
    source_ms: i64,
}

/// One output record in this many has its end-to-end latency measured: from the input
/// record's timestamp to the output's acknowledgement (a clock read and a histogram
/// record each).
const LATENCY_SAMPLE: i64 = 8;

/// A delivery report, routed back to the worker that sent the record.
#[derive(Debug)]
struct Ack {
    partition: i32,
    offset: i64,
    destination: Destination,
    /// Why the broker refused the record for good, if it did.
    error: Option<(Option<RDKafkaErrorCode>, String)>,
    /// Key and value bytes of the record sent.
    size: usize,
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

/// The output producer's context: each delivery report goes straight to the channel of
/// the worker that sent the record, with no future or task per record.
struct AckRouter {
    errors: ErrorLog,
    workers: Vec<UnboundedSender<Ack>>,
    stats: Arc<Stats>,
}

impl ClientContext for AckRouter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ProducerContext for AckRouter {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let (error, size) = match result {
            Ok(_) => {
                if ticket.source_ms > 0 {
                    self.stats.record_end_to_end(ticket.source_ms);
                }
                (None, 0)
            }
            Err((error, message)) => (
                Some((error.rdkafka_error_code(), error.to_string())),
                message.payload_len() + message.key_len(),
            ),
        };
        if let Some(worker) = self.workers.get(ticket.worker) {
            // A worker that has stopped no longer listens: its uncommitted records are read
            // again on restart.
            let _ = worker.send(Ack {
                partition: ticket.partition,
                offset: ticket.offset,
                destination: ticket.destination,
                error,
                size,
            });
        }
    }
}

/// A dead letter's headers: the error, its kind and the source position (and, for a
/// reference, the size of the record left out). The input record's own headers
/// (`inherited`) come first, then these.
pub(super) fn dead_letter_headers(
    inherited: Option<OwnedHeaders>,
    input_topic: &str,
    partition: i32,
    offset: i64,
    rejection: &Rejection,
    omitted_size: Option<usize>,
) -> OwnedHeaders {
    let partition_text = partition.to_string();
    let offset_text = offset.to_string();
    let headers = inherited
        .unwrap_or_default()
        .insert(Header {
            key: "error",
            value: Some(rejection.reason.as_str()),
        })
        .insert(Header {
            key: "error.kind",
            value: Some(rejection.kind.as_str()),
        })
        .insert(Header {
            key: "source.topic",
            value: Some(input_topic),
        })
        .insert(Header {
            key: "source.partition",
            value: Some(partition_text.as_str()),
        })
        .insert(Header {
            key: "source.offset",
            value: Some(offset_text.as_str()),
        });
    match omitted_size {
        None => headers,
        Some(size) => headers.insert(Header {
            key: "payload.omitted.size",
            value: Some(size.to_string().as_str()),
        }),
    }
}

/// Runs the job's workers on `runtime` until the input ends (`bounded`) or `cancel` fires.
pub(super) fn run(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    runtime.block_on(run_workers(
        config, kafka, topics, print_keys, stats, cancel,
    ))
}

async fn run_workers(
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    let parallelism = config.parallelism.max(1);
    let (ack_senders, ack_receivers): (Vec<_>, Vec<_>) =
        (0..parallelism).map(|_| unbounded_channel::<Ack>()).unzip();
    let router = AckRouter {
        errors: ErrorLog::new(&kafka.bootstrap_servers),
        workers: ack_senders,
        stats: Arc::clone(stats),
    };
    // Fail fast, naming the address, before reading anything.
    let facts =
        kafka::inspect_topics(kafka, &topics.input, &[&topics.output, &topics.dead_letter]).await?;
    let partitions = facts.input_partitions;
    if let Some(limit) = facts.max_record_bytes {
        log::debug!(
            "records of up to {limit} bytes go to {} and {}",
            topics.output,
            topics.dead_letter
        );
    }
    let producer: Arc<OutputProducer> = Arc::new(kafka::create(
        &kafka::pipeline_producer_config(kafka, &config.job_name, facts.max_record_bytes),
        router,
        kafka,
    )?);
    if partitions == 0 {
        return Err(Error::Kafka(format!(
            "topic {} has no partitions",
            topics.input
        )));
    }
    let max_in_flight = (IN_FLIGHT_BUDGET / parallelism).max(1_000);
    let prefetch_kbytes = (PREFETCH_BUDGET_KBYTES / parallelism).max(1_024);
    log::info!(
        "job {}: {} ({partitions} partitions) → {}, dead letters → {}; {parallelism} workers in consumer group {} ({} protocol), at-least-once, checkpoint every {} ms, at {}",
        config.job_name,
        topics.input,
        topics.output,
        topics.dead_letter,
        config.job_name,
        config.group.protocol.as_str(),
        config.checkpointing_interval.as_millis(),
        kafka.bootstrap_servers
    );

    // A failing worker stops the others: they drain and commit what was delivered.
    let job = cancel.child_token();
    // --bounded drains the backlog as it is now: its ends, per partition.
    let mut ends = BTreeMap::new();
    if config.bounded {
        for partition in 0..partitions {
            let (_, high) = block_in_place(|| {
                producer.client().fetch_watermarks(
                    &topics.input,
                    partition,
                    kafka::REACHABILITY_TIMEOUT,
                )
            })
            .map_err(|e| Error::Kafka(format!("end offsets of {}: {e}", topics.input)))?;
            ends.insert(partition, high);
        }
    }
    let siblings = Arc::new(Siblings::new(parallelism, ends));
    let mut handles = Vec::new();
    for (id, acks) in ack_receivers.into_iter().enumerate() {
        let consumer: Arc<StreamConsumer<Member>> = Arc::new(kafka::create(
            &kafka::pipeline_consumer_config(
                kafka,
                &config.job_name,
                id,
                &config.group,
                prefetch_kbytes,
            ),
            Member::new(&kafka.bootstrap_servers),
            kafka,
        )?);
        consumer
            .subscribe(&[topics.input.as_str()])
            .map_err(|e| Error::Kafka(kafka::redact(&e.to_string(), kafka)))?;
        let name = format!("streamkit-pipeline-{}-{id}", config.job_name);
        stats.set_member(
            id,
            MemberStatus {
                name: name.clone(),
                partitions: BTreeSet::new(),
            },
        );
        let worker = Worker {
            id,
            name,
            consumer,
            producer: Arc::clone(&producer),
            acks,
            topics: topics.clone(),
            print_keys,
            forward_headers: !config.drop_input_headers,
            bounded: config.bounded,
            checkpointing_interval: config.checkpointing_interval,
            max_in_flight,
            stats: Arc::clone(stats),
            siblings: Arc::clone(&siblings),
        };
        let job = job.clone();
        handles.push(tokio::spawn(async move {
            let result = worker.run(&job).await;
            if result.is_err() {
                job.cancel();
            }
            result
        }));
    }

    let status_stop = CancellationToken::new();
    let watcher = watch_end_offsets(
        kafka,
        &config.job_name,
        &topics.input,
        Arc::clone(stats),
        status_stop.clone(),
    )?;
    let status = {
        let (stats, stop) = (Arc::clone(stats), status_stop.clone());
        tokio::spawn(async move {
            let mut line = StatusLine::new();
            let mut tick = tokio::time::interval(STATUS_INTERVAL / 10);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => line.maybe_print(&stats),
                }
            }
        })
    };

    let mut first_error = None;
    for handle in handles {
        let result = handle
            .await
            .map_err(|e| Error::Kafka(format!("a worker panicked: {e}")))?;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    status_stop.cancel();
    let _ = status.await;
    let _ = block_in_place(|| watcher.join());
    // Deliveries abandoned after the drain timeout are dropped rather than retried forever
    // on exit: their records were not committed, so they are read again on restart.
    if producer.in_flight_count() > 0 {
        producer.purge(PurgeConfig::default().queue().inflight());
    }
    first_error.map_or(Ok(()), Err)
}

/// Every [`LAG_INTERVAL`], asks the cluster for the end offset of each input partition this
/// process owns, on a thread and client of its own, so that the workers never wait on the
/// network for status. The partition count is read again each time: partitions come and go.
fn watch_end_offsets(
    kafka: &KafkaConfig,
    job_name: &str,
    topic: &str,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>> {
    let client: rdkafka::consumer::BaseConsumer<ErrorLog> = kafka::create(
        &kafka::watermark_client_config(kafka, job_name),
        ErrorLog::new(&kafka.bootstrap_servers),
        kafka,
    )?;
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name("end-offsets".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                for partition in stats.partitions().into_keys() {
                    if stop.is_cancelled() {
                        break;
                    }
                    if let Ok((_, high)) =
                        client.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                    {
                        stats.record_end(partition, high);
                    }
                }
                let next = std::time::Instant::now() + LAG_INTERVAL;
                while !stop.is_cancelled() && std::time::Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
        .map_err(|e| Error::Kafka(format!("cannot start the end-offset watcher: {e}")))
}

/// The workers of this process, so that they leave the group together.
pub(super) struct Siblings {
    /// Bit `w`: worker `w` is ready to leave (or has left).
    ready: AtomicU64,
    all: u64,
    changed: Notify,
    /// `--bounded`: the input's end offsets when the job started.
    ends: BTreeMap<i32, i64>,
    /// `--bounded`: the job's committed positions reached `ends`.
    drained: AtomicBool,
}

impl Siblings {
    fn new(workers: usize, ends: BTreeMap<i32, i64>) -> Self {
        Siblings {
            ready: AtomicU64::new(0),
            all: if workers >= 64 {
                u64::MAX
            } else {
                (1u64 << workers) - 1
            },
            changed: Notify::new(),
            ends,
            drained: AtomicBool::new(false),
        }
    }

    fn report(&self, worker: usize, ready: bool) {
        let bit = 1u64 << worker;
        let before = if ready {
            self.ready.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.ready.fetch_and(!bit, Ordering::AcqRel)
        };
        if (before & bit != 0) != ready {
            self.changed.notify_waiters();
        }
    }

    fn all_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) == self.all
    }
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

struct Worker {
    id: usize,
    /// Its client id: the member's name in the group.
    name: String,
    /// Shared only with a commit or close running on a blocking thread.
    consumer: Arc<StreamConsumer<Member>>,
    producer: Arc<OutputProducer>,
    /// Delivery reports of the records this worker sent.
    acks: UnboundedReceiver<Ack>,
    topics: Topics,
    print_keys: bool,
    /// Forward the input's headers to the output and the dead letters.
    forward_headers: bool,
    bounded: bool,
    checkpointing_interval: Duration,
    /// This worker's share of [`IN_FLIGHT_BUDGET`].
    max_in_flight: usize,
    stats: Arc<Stats>,
    siblings: Arc<Siblings>,
}

/// The state of a worker's loop.
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
}

impl Worker {
    async fn run(mut self, cancel: &CancellationToken) -> Result<()> {
        let mut progress = Progress {
            partitions: BTreeSet::new(),
            tracker: OffsetTracker::default(),
            in_flight: 0,
            at_end: BTreeSet::new(),
            revoking: None,
            joined: false,
        };
        let mut acks = Vec::with_capacity(BATCH);
        let mut checkpoint = tokio::time::interval_at(
            Instant::now() + self.checkpointing_interval,
            self.checkpointing_interval,
        );
        checkpoint.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        lag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drain_deadline: Option<Instant> = None;
        let mut failure: Option<Error> = None;
        let mut last_read_error: Option<std::time::Instant> = None;
        let (mut key, mut value) = (Vec::with_capacity(128), Vec::with_capacity(1024));

        let mut retry_commit_at: Option<Instant> = None;
        let mut next_drained_check: Option<Instant> = None;
        let mut warned_undrained = false;
        let mut commit_abandoned = false;
        let mut warned_unjoined = false;
        let mut redelivered: u64 = 0;
        let started = Instant::now();
        let siblings = Arc::clone(&self.siblings);
        loop {
            // Listen for siblings before looking at them, so no change goes unnoticed.
            let siblings_changed = siblings.changed.notified();
            tokio::pin!(siblings_changed);
            siblings_changed.as_mut().enable();
            self.handle_rebalances(&mut progress);
            self.finish_revocation_if_done(&mut progress).await;
            let reading = drain_deadline.is_none();
            // Ready to leave the group: drained after a stop (or out of time), or, with
            // --bounded, every assigned partition read to its end.
            let drain_over = drain_deadline.is_some_and(|d| Instant::now() >= d);
            let mut ready = if reading {
                self.bounded && self.bounded_done(&progress)
            } else {
                progress.in_flight == 0 || drain_over
            };
            if drain_over && progress.in_flight > 0 && !warned_undrained {
                warned_undrained = true;
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
                if retry_commit_at.is_some() {
                    ready = false;
                } else {
                    match self.commit(&mut progress.tracker, drain_deadline).await {
                        Committed::Yes => {}
                        Committed::Failed => {
                            ready = false;
                            retry_commit_at = Some(Instant::now() + COMMIT_RETRY);
                        }
                        Committed::TimedOut if drain_deadline.is_some() => {
                            self.abandon_commit(&progress.tracker);
                            commit_abandoned = true;
                            drain_deadline = Some(Instant::now());
                        }
                        Committed::TimedOut => ready = false,
                    }
                }
            } else if ready && !commit_abandoned {
                // Out of time: one last try, then leave whatever happens.
                commit_abandoned = true;
                let last_try = Instant::now() + COMMIT_RETRY;
                if self.commit(&mut progress.tracker, Some(last_try)).await != Committed::Yes {
                    self.abandon_commit(&progress.tracker);
                }
            }
            // --bounded: done here, and committed; the process still serves the group (and
            // takes over partitions) until the whole job's backlog is written and committed,
            // so that no partition is left without an owner while records remain.
            if !(ready && reading) {
                next_drained_check = None;
            } else if !siblings.drained.load(Ordering::Acquire) {
                ready = false;
                if next_drained_check.is_none_or(|at| Instant::now() >= at) {
                    if self.job_drained() {
                        siblings.drained.store(true, Ordering::Release);
                        siblings.changed.notify_waiters();
                        ready = true;
                        next_drained_check = None;
                    } else {
                        next_drained_check = Some(Instant::now() + DRAINED_CHECK_INTERVAL);
                    }
                }
            }
            // The process leaves the group only when all its workers are ready, so that no
            // worker's leaving starts a rebalance while a sibling still commits.
            siblings.report(self.id, ready);
            if siblings.all_ready() {
                break;
            }
            let revoke_deadline = progress
                .revoking
                .as_ref()
                .map(|r| r.retry_at.unwrap_or(r.deadline));
            tokio::select! {
                biased;
                // Every acknowledgement that is ready, up to a batch, before any new input.
                received = self.acks.recv_many(&mut acks, BATCH), if progress.in_flight > 0 => {
                    progress.in_flight = progress.in_flight.saturating_sub(received);
                    for ack in acks.drain(..) {
                        let resent = self.acknowledge(&mut progress.tracker, ack);
                        if let Ok(true) = resent {
                            progress.in_flight += 1;
                        }
                        if let Err(e) = resent {
                            failure.get_or_insert(e);
                            // The whole job stops: its other workers drain and commit too.
                            cancel.cancel();
                            drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                        }
                    }
                }
                _ = cancel.cancelled(), if reading => {
                    self.stats.set_phase(super::Phase::Draining);
                    drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                    if progress.in_flight > 0 {
                        log::info!("worker {}: stopped reading; draining {} deliveries", self.id, progress.in_flight);
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() && !drain_over => {
                    // The drain is over: the top of the loop says so.
                }
                _ = tokio::time::sleep_until(retry_commit_at.unwrap_or_else(Instant::now)), if retry_commit_at.is_some() => {
                    retry_commit_at = None;
                }
                _ = &mut siblings_changed => {}
                _ = tokio::time::sleep_until(revoke_deadline.unwrap_or_else(Instant::now)), if revoke_deadline.is_some() => {
                    // finish_revocation_if_done sees the deadline at the top of the loop.
                }
                _ = tokio::time::sleep_until(next_drained_check.unwrap_or_else(Instant::now)), if next_drained_check.is_some() && reading => {}
                _ = self.consumer.context().notify.notified() => {
                    // A rebalance: handled at the top of the loop.
                }
                _ = checkpoint.tick() => {
                    let limit = drain_deadline.unwrap_or_else(|| Instant::now() + COMMIT_TIMEOUT);
                    self.commit(&mut progress.tracker, Some(limit)).await;
                }
                _ = lag_tick.tick() => {
                    self.measure_lag(&progress);
                    if !progress.joined && !warned_unjoined && started.elapsed() >= JOIN_WARNING {
                        warned_unjoined = true;
                        log::warn!(
                            "worker {}: no partitions from the group coordinator after {} s; is the group protocol right for this broker? (--group-protocol consumer, KIP-848, needs Apache Kafka 4; tansu and older brokers need classic)",
                            self.id,
                            JOIN_WARNING.as_secs()
                        );
                    }
                }
                // After a stop, the consumer is still polled (its records are dropped, to be
                // read again by the next owner), so that rebalances are served.
                message = self.consumer.recv(), if !reading || progress.in_flight < self.max_in_flight => {
                    // Then every message already fetched, up to a batch: timers and select
                    // bookkeeping are paid per batch, not per record.
                    let mut next = Some(message);
                    let mut taken = 0;
                    while let Some(message) = next {
                        match message {
                            Ok(message) => {
                                let partition = message.partition();
                                if !progress.partitions.contains(&partition) {
                                    // Assigned by the callback inside this recv(): take the
                                    // news before deciding, or the records would be skipped
                                    // and a later commit would pass over them.
                                    self.handle_rebalances(&mut progress);
                                }
                                if !reading
                                    || progress.revoking.as_ref().is_some_and(|r| r.partitions.contains(&partition))
                                    || !progress.partitions.contains(&partition)
                                {
                                    // Being handed over (or no longer ours): its new owner reads
                                    // it from the committed position.
                                } else if !progress.tracker.read(partition, message.offset()) {
                                    // Delivered again (a fetch restarted from a stale
                                    // position): already processed, not written twice.
                                    redelivered += 1;
                                    if redelivered == 1 || redelivered.is_power_of_two() {
                                        log::info!(
                                            "worker {}: {} partition {partition} offset {} was delivered again by the consumer; skipped ({redelivered} so far)",
                                            self.id,
                                            self.topics.input,
                                            message.offset()
                                        );
                                    }
                                } else {
                                    Stats::add(&self.stats.read);
                                    progress.at_end.remove(&partition);
                                    if let Err(e) = self.process(&message, &mut key, &mut value) {
                                        failure.get_or_insert(e);
                                        cancel.cancel();
                                        drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                                        break;
                                    }
                                    progress.in_flight += 1;
                                }
                            }
                            Err(KafkaError::PartitionEOF(partition)) => {
                                if !progress.partitions.contains(&partition) {
                                    self.handle_rebalances(&mut progress);
                                }
                                // The end of a partition this worker no longer owns says
                                // nothing about a later assignment of it.
                                if progress.partitions.contains(&partition) {
                                    progress.at_end.insert(partition);
                                }
                            }
                            Err(error) => {
                                if last_read_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                                    log::warn!("worker {}: reading {}: {error}; retrying", self.id, self.topics.input);
                                    last_read_error = Some(std::time::Instant::now());
                                }
                                break;
                            }
                        }
                        taken += 1;
                        next = if taken < BATCH && (!reading || progress.in_flight < self.max_in_flight) {
                            self.consumer.recv().now_or_never()
                        } else {
                            None
                        };
                    }
                }
            }
        }
        // Hand over what is left at once: everything delivered is committed.
        if let Some(revocation) = progress.revoking.take() {
            self.release(revocation, &mut progress);
        }
        self.consumer.context().set_closing();
        self.leave_group().await;
        failure.map_or(Ok(()), Err)
    }

    /// `--bounded`: this worker is done with its own share once it has joined the group,
    /// hands nothing over, and has every assigned partition read to its end and nothing
    /// in flight. (The process stops when the whole job is done: see [`Siblings::drained`].)
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
        let mut list = TopicPartitionList::new();
        for &partition in self.siblings.ends.keys() {
            let _ = list.add_partition(&self.topics.input, partition);
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
                    .find_partition(&self.topics.input, partition)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= end))
        })
    }

    /// Applies what the group said since the last pass.
    fn handle_rebalances(&self, progress: &mut Progress) {
        for event in self.consumer.context().take_events() {
            match event {
                RebalanceEvent::Assigned(assigned) => {
                    progress.joined = true;
                    progress.partitions.extend(assigned.iter().copied());
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
                    self.changed(progress, &[], &partitions, lost, Duration::ZERO);
                }
                RebalanceEvent::Failed(reason) => {
                    log::warn!("worker {}: consumer group {}: {reason}", self.id, self.name);
                }
            }
        }
    }

    /// Releases the partitions being handed over once none of their records is in flight,
    /// or at the deadline.
    async fn finish_revocation_if_done(&self, progress: &mut Progress) {
        let Some(revocation) = &progress.revoking else {
            return;
        };
        let pending: usize = revocation
            .partitions
            .iter()
            .map(|&p| progress.tracker.in_flight_of(p))
            .sum();
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
            .commit(
                &mut progress.tracker,
                Some(deadline.min(now + COMMIT_TIMEOUT)),
            )
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
                self.topics.input,
                uncommitted.join(", ")
            );
        }
    }

    /// Releases revoked partitions to the group and forgets them.
    fn release(&self, revocation: Revocation, progress: &mut Progress) {
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

    /// Drops every trace of `partitions` (revoked or lost).
    fn forget(&self, partitions: &[i32], progress: &mut Progress) {
        for partition in partitions {
            progress.partitions.remove(partition);
            progress.at_end.remove(partition);
            progress.tracker.forget(*partition);
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
        log::info!(
            "worker {}: {}{}; now reads partitions {:?} of {}",
            self.id,
            if assigned.is_empty() {
                String::new()
            } else {
                format!("assigned {assigned:?}")
            },
            if revoked.is_empty() {
                String::new()
            } else {
                format!(
                    "{}{} {revoked:?} in {} ms",
                    if assigned.is_empty() { "" } else { ", " },
                    if lost { "lost" } else { "handed over" },
                    duration.as_millis()
                )
            },
            progress.partitions,
            self.topics.input
        );
    }

    /// Leaves the group: the remaining partitions are released at once (all delivered
    /// records were committed), and librdkafka's close is served on a blocking thread, for
    /// at most [`LEAVE_TIMEOUT`]: with the coordinator down, the close is left to finish
    /// (or not) in the background; the group notices the member's absence by itself.
    async fn leave_group(self) {
        let Worker { id, consumer, .. } = self;
        let close = tokio::task::spawn_blocking(move || drop(consumer));
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
                self.topics.input,
                uncommitted.join(", ")
            );
        }
    }
    /// Records one delivery report: the record's position may now be committed. A record
    /// the broker refused because of the record itself is dead-lettered by reference
    /// instead: then `Ok(true)`, one more record in flight for the same position.
    fn acknowledge(&self, tracker: &mut OffsetTracker, ack: Ack) -> Result<bool> {
        if let Some((code, error)) = ack.error {
            let topic = match ack.destination {
                Destination::Output => &self.topics.output,
                Destination::DeadLetter | Destination::Reference => &self.topics.dead_letter,
            };
            let kind = code.and_then(record_refusal);
            return match kind {
                Some(kind) if ack.destination != Destination::Reference => {
                    let reason = format!("{topic} refused the record: {error}");
                    log::warn!(
                        "worker {}: {} partition {} offset {}: {reason}; dead-lettered by reference",
                        self.id,
                        self.topics.input,
                        ack.partition,
                        ack.offset
                    );
                    if ack.destination == Destination::Output {
                        self.stats.reject(kind, &reason);
                    }
                    let rejection = Rejection { kind, reason };
                    // The input record is no longer in memory: its headers stay with it.
                    self.send_reference(
                        None,
                        ack.partition,
                        ack.offset,
                        ack.size,
                        None,
                        &rejection,
                    )?;
                    Ok(true)
                }
                _ => Err(Error::Kafka(format!("cannot deliver to {topic}: {error}"))),
            };
        }
        tracker.ack(ack.partition, ack.offset);
        Stats::add(match ack.destination {
            Destination::Output => &self.stats.written,
            Destination::DeadLetter | Destination::Reference => &self.stats.dead_lettered,
        });
        Ok(false)
    }

    /// Transforms one record and sends its output, or its dead letter.
    fn process(
        &self,
        message: &BorrowedMessage<'_>,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        key.clear();
        value.clear();
        let rejection = match run_stages(message.payload(), &self.stats, key, value) {
            Ok(()) => {
                let mut ticket = self.ticket(partition, offset, Destination::Output);
                if offset % LATENCY_SAMPLE == 0 {
                    ticket.source_ms = message.timestamp().to_millis().unwrap_or(0);
                }
                let mut record = BaseRecord::with_opaque_to(&self.topics.output, ticket)
                    .key(key.as_slice())
                    .payload(value.as_slice());
                // The input's headers go along, as Kafka Streams forwards them.
                if let Some(headers) = self.inherited(message) {
                    record = record.headers(headers);
                }
                match self.send(record)? {
                    None => {
                        if self.print_keys {
                            let mut stdout = std::io::stdout().lock();
                            let _ = stdout.write_all(key).and_then(|()| stdout.write_all(b"\n"));
                        }
                        return Ok(());
                    }
                    Some((kind, error)) => {
                        let reason = format!(
                            "the output record ({} bytes) cannot go to {}: {error}",
                            key.len() + value.len(),
                            self.topics.output
                        );
                        self.stats.reject(kind, &reason);
                        Rejection { kind, reason }
                    }
                }
            }
            Err(rejection) => rejection,
        };
        // The original key and bytes, untouched (a null key or value stays null).
        let ticket = self.ticket(partition, offset, Destination::DeadLetter);
        let inherited = self.inherited(message);
        let headers = self.dead_letter_headers(inherited, partition, offset, &rejection, None);
        let mut record: Outgoing<'_> =
            BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket).headers(headers);
        if let Some(original_key) = message.key() {
            record = record.key(original_key);
        }
        if let Some(original_value) = message.payload() {
            record = record.payload(original_value);
        }
        match self.send(record)? {
            None => Ok(()),
            Some((_, error)) => {
                let size = message.payload_len() + message.key().map_or(0, <[u8]>::len);
                let why = format!("{}; the dead letter too: {error}", rejection.reason);
                self.send_reference(
                    self.inherited(message),
                    partition,
                    offset,
                    size,
                    message.key(),
                    &Rejection {
                        kind: rejection.kind,
                        reason: why,
                    },
                )
            }
        }
    }

    /// The input record's headers, to go along with what it becomes (none when the job
    /// drops them).
    fn inherited(&self, message: &BorrowedMessage<'_>) -> Option<OwnedHeaders> {
        message
            .headers()
            .filter(|_| self.forward_headers)
            .map(|h| h.detach())
    }

    fn dead_letter_headers(
        &self,
        inherited: Option<OwnedHeaders>,
        partition: i32,
        offset: i64,
        rejection: &Rejection,
        omitted_size: Option<usize>,
    ) -> OwnedHeaders {
        dead_letter_headers(
            inherited,
            &self.topics.input,
            partition,
            offset,
            rejection,
            omitted_size,
        )
    }

    /// Dead-letters a record by reference: its headers, and a small JSON value naming where
    /// the record is and how big it was, in place of the payload.
    fn send_reference(
        &self,
        inherited: Option<OwnedHeaders>,
        partition: i32,
        offset: i64,
        size: usize,
        key: Option<&[u8]>,
        rejection: &Rejection,
    ) -> Result<()> {
        let reference = serde_json::json!({
            "omitted_payload": {
                "topic": self.topics.input,
                "partition": partition,
                "offset": offset,
                "size": size,
            }
        })
        .to_string();
        let ticket = self.ticket(partition, offset, Destination::Reference);
        let headers = self.dead_letter_headers(inherited, partition, offset, rejection, Some(size));
        let mut record: Outgoing<'_> = BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket)
            .headers(headers)
            .payload(reference.as_bytes());
        // The key stays, unless it is what made the record too large.
        if let Some(key) = key.filter(|k| k.len() <= REFERENCE_KEY_BYTES) {
            record = record.key(key);
        }
        match self.send(record)? {
            None => Ok(()),
            Some((_, error)) => Err(Error::Kafka(format!(
                "cannot dead-letter {} partition {partition} offset {offset} even by reference: {error}",
                self.topics.input
            ))),
        }
    }

    fn ticket(&self, partition: i32, offset: i64, destination: Destination) -> Box<Ticket> {
        Box::new(Ticket {
            worker: self.id,
            partition,
            offset,
            destination,
            source_ms: 0,
        })
    }

    /// Sends a record: `Ok(None)` once queued, `Ok(Some(..))` when the record itself was
    /// refused (too large, say), an error when the producer cannot send at all.
    fn send(&self, mut record: Outgoing<'_>) -> Result<Option<(RejectKind, String)>> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(None),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Cannot happen while the in-flight budget stays under the queue size;
                    // wait if it does.
                    record = returned;
                    block_in_place(|| std::thread::sleep(Duration::from_millis(1)));
                }
                Err((error, returned)) => {
                    if let Some(kind) = error.rdkafka_error_code().and_then(record_refusal) {
                        return Ok(Some((kind, error.to_string())));
                    }
                    return Err(Error::Kafka(format!(
                        "cannot send to {}: {error}",
                        returned.topic
                    )));
                }
            }
        }
    }

    /// Commits every position whose records have all been delivered, waiting for the
    /// answer until `deadline` (`None`: as long as librdkafka takes). The commit runs on a
    /// blocking thread, so a coordinator that never answers delays the worker no longer.
    async fn commit(&self, tracker: &mut OffsetTracker, deadline: Option<Instant>) -> Committed {
        let positions = tracker.to_commit();
        if positions.is_empty() {
            return Committed::Yes;
        }
        let mut list = TopicPartitionList::new();
        for &(partition, next) in &positions {
            let _ = list.add_partition_offset(&self.topics.input, partition, Offset::Offset(next));
        }
        let started = std::time::Instant::now();
        let consumer = Arc::clone(&self.consumer);
        let commit = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
        let result = match deadline {
            None => commit.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, commit).await {
                Ok(result) => result,
                Err(_) => {
                    log::debug!("worker {}: commit of {positions:?} timed out", self.id);
                    return Committed::TimedOut;
                }
            },
        };
        match result {
            Ok(Ok(())) => {
                tracker.committed(&positions);
                self.stats.record_checkpoint(started.elapsed(), &positions);
                log::debug!(
                    "worker {}: committed {positions:?} in {:?}",
                    self.id,
                    started.elapsed()
                );
                Committed::Yes
            }
            Ok(Err(e)) => {
                log::warn!("worker {}: commit failed ({e}); trying again", self.id);
                Committed::Failed
            }
            Err(e) => {
                log::warn!("worker {}: commit task failed ({e}); trying again", self.id);
                Committed::Failed
            }
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
                .and_then(|list| list.find_partition(&self.topics.input, partition))
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
