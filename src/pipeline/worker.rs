//! The Kafka side of the job: `parallelism` workers, each with its own consumer on a fixed
//! share of the input partitions (partition p to worker p mod n), sharing one producer.
//!
//! Each worker is one task running one `select!` loop, and never spawns a task per record:
//! the producer's delivery reports come back on the worker's own channel. The job reads at
//! most [`IN_FLIGHT_BUDGET`] records ahead of their acknowledgements and prefetches at most
//! [`PREFETCH_BUDGET_KBYTES`], whatever its parallelism. Acknowledgements are handled
//! before new input, so commits keep up under load. Positions are committed from an
//! [`OffsetTracker`], which only releases the contiguous delivered prefix of each partition.

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
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::block_in_place;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{
    DRAIN_TIMEOUT, PipelineConfig, STATUS_INTERVAL, Stats, StatusLine, Topics, run_stages,
};
use crate::error::{Error, Result};
use crate::kafka::{self, ErrorLog, KafkaConfig};
use crate::offsets::OffsetTracker;

/// Most records the job reads ahead of their acknowledgements, shared among its workers.
pub const IN_FLIGHT_BUDGET: usize = 15_000;

/// Kilobytes of fetched but unprocessed records the job may hold, shared among its workers.
pub const PREFETCH_BUDGET_KBYTES: usize = 16 * 1024;

/// Most messages, or acknowledgements, handled in one pass of the loop.
const BATCH: usize = 512;

/// How often each worker measures its partitions' lag.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

type OutputProducer = ThreadedProducer<AckRouter>;

/// A record on its way to the output or dead-letter topic.
type Outgoing<'a> = BaseRecord<'a, [u8], [u8], Box<Ticket>>;

/// Where a record's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Output,
    DeadLetter,
}

/// Which worker sent a record, and the input position it stands for: the delivery opaque.
#[derive(Debug)]
struct Ticket {
    worker: usize,
    partition: i32,
    offset: i64,
    destination: Destination,
}

/// A delivery report, routed back to the worker that sent the record.
#[derive(Debug)]
struct Ack {
    partition: i32,
    offset: i64,
    destination: Destination,
    /// Why the broker refused the record for good, if it did.
    error: Option<String>,
}

/// The output producer's context: each delivery report goes straight to the channel of
/// the worker that sent the record, with no future or task per record.
struct AckRouter {
    errors: ErrorLog,
    workers: Vec<UnboundedSender<Ack>>,
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
        let error = result.as_ref().err().map(|(error, _)| error.to_string());
        if let Some(worker) = self.workers.get(ticket.worker) {
            // A worker that has stopped no longer listens: its uncommitted records are read
            // again on restart.
            let _ = worker.send(Ack {
                partition: ticket.partition,
                offset: ticket.offset,
                destination: ticket.destination,
                error,
            });
        }
    }
}

pub(super) fn run(
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pipeline")
        .build()
        .map_err(|e| Error::Kafka(format!("cannot start the runtime: {e}")))?;
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
    };
    let producer: Arc<OutputProducer> = Arc::new(kafka::create(
        &kafka::pipeline_producer_config(kafka, &config.job_name),
        router,
        kafka,
    )?);
    // Fail fast, naming the address, before reading anything.
    let partitions =
        block_in_place(|| kafka::check_topic_reachable(producer.client(), kafka, &topics.input))?;
    for topic in [&topics.output, &topics.dead_letter] {
        block_in_place(|| kafka::check_topic_reachable(producer.client(), kafka, topic))?;
    }
    if partitions == 0 {
        return Err(Error::Kafka(format!(
            "topic {} has no partitions",
            topics.input
        )));
    }
    let max_in_flight = (IN_FLIGHT_BUDGET / parallelism).max(1_000);
    let prefetch_kbytes = (PREFETCH_BUDGET_KBYTES / parallelism).max(1_024);
    log::info!(
        "job {}: {} ({partitions} partitions) → {}, dead letters → {}; {parallelism} workers, at-least-once, checkpoint every {} ms, at {}",
        config.job_name,
        topics.input,
        topics.output,
        topics.dead_letter,
        config.checkpointing_interval.as_millis(),
        kafka.bootstrap_servers
    );

    // A failing worker stops the others: they drain and commit what was delivered.
    let job = cancel.child_token();
    let mut handles = Vec::new();
    for (id, acks) in ack_receivers.into_iter().enumerate() {
        let mine: Vec<i32> = (0..partitions)
            .filter(|p| *p as usize % parallelism == id)
            .collect();
        let consumer: StreamConsumer<ErrorLog> = kafka::create(
            &kafka::pipeline_consumer_config(kafka, &config.job_name, prefetch_kbytes),
            ErrorLog::new(&kafka.bootstrap_servers),
            kafka,
        )?;
        let mut assignment = TopicPartitionList::new();
        for &p in &mine {
            // Resume from the job's committed position, or from the earliest offset.
            assignment
                .add_partition_offset(&topics.input, p, Offset::Stored)
                .map_err(|e| Error::Kafka(e.to_string()))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| Error::Kafka(kafka::redact(&e.to_string(), kafka)))?;
        let worker = Worker {
            id,
            consumer,
            producer: Arc::clone(&producer),
            acks,
            partitions: mine,
            topics: topics.clone(),
            print_keys,
            bounded: config.bounded,
            checkpointing_interval: config.checkpointing_interval,
            max_in_flight,
            stats: Arc::clone(stats),
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
        partitions,
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

/// Every [`LAG_INTERVAL`], asks the cluster for each input partition's end offset, on a
/// thread and client of its own, so that the workers never wait on the network for status.
fn watch_end_offsets(
    kafka: &KafkaConfig,
    job_name: &str,
    topic: &str,
    partitions: i32,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>> {
    let client: rdkafka::consumer::BaseConsumer<ErrorLog> = kafka::create(
        &kafka::pipeline_consumer_config(kafka, job_name, 1024),
        ErrorLog::new(&kafka.bootstrap_servers),
        kafka,
    )?;
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name("end-offsets".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                for partition in 0..partitions {
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

struct Worker {
    id: usize,
    consumer: StreamConsumer<ErrorLog>,
    producer: Arc<OutputProducer>,
    /// Delivery reports of the records this worker sent.
    acks: UnboundedReceiver<Ack>,
    partitions: Vec<i32>,
    topics: Topics,
    print_keys: bool,
    bounded: bool,
    checkpointing_interval: Duration,
    /// This worker's share of [`IN_FLIGHT_BUDGET`].
    max_in_flight: usize,
    stats: Arc<Stats>,
}

impl Worker {
    async fn run(mut self, cancel: &CancellationToken) -> Result<()> {
        if self.partitions.is_empty() {
            // More workers than partitions: this one idles, like an idle Flink subtask.
            if !self.bounded {
                cancel.cancelled().await;
            }
            return Ok(());
        }
        let mut tracker = OffsetTracker::default();
        // Records sent and not yet acknowledged.
        let mut in_flight = 0usize;
        let mut acks = Vec::with_capacity(BATCH);
        let mut at_end = BTreeSet::new();
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

        loop {
            let reading = drain_deadline.is_none();
            if !reading && in_flight == 0 {
                break;
            }
            if reading && self.bounded && in_flight == 0 && at_end.len() == self.partitions.len() {
                break;
            }
            tokio::select! {
                biased;
                // Every acknowledgement that is ready, up to a batch, before any new input.
                received = self.acks.recv_many(&mut acks, BATCH), if in_flight > 0 => {
                    in_flight = in_flight.saturating_sub(received);
                    for ack in acks.drain(..) {
                        if let Err(e) = self.acknowledge(&mut tracker, ack) {
                            failure.get_or_insert(e);
                            drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                        }
                    }
                }
                _ = cancel.cancelled(), if reading => {
                    self.stats.set_phase(super::Phase::Draining);
                    drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                    if in_flight > 0 {
                        log::info!("worker {}: stopped reading; draining {in_flight} deliveries", self.id);
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    log::warn!(
                        "worker {}: {in_flight} deliveries still in flight after {} s; their records will be read again on restart",
                        self.id,
                        DRAIN_TIMEOUT.as_secs()
                    );
                    break;
                }
                _ = checkpoint.tick() => self.commit(&mut tracker),
                _ = lag_tick.tick() => self.measure_lag(&tracker),
                message = self.consumer.recv(), if reading && in_flight < self.max_in_flight => {
                    // Then every message already fetched, up to a batch: timers and select
                    // bookkeeping are paid per batch, not per record.
                    let mut next = Some(message);
                    let mut taken = 0;
                    while let Some(message) = next {
                        match message {
                            Ok(message) => {
                                Stats::add(&self.stats.read);
                                at_end.remove(&message.partition());
                                tracker.read(message.partition(), message.offset());
                                if let Err(e) = self.process(&message, &mut key, &mut value) {
                                    failure.get_or_insert(e);
                                    drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                                    break;
                                }
                                in_flight += 1;
                            }
                            Err(KafkaError::PartitionEOF(partition)) => {
                                at_end.insert(partition);
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
                        next = if taken < BATCH && in_flight < self.max_in_flight {
                            self.consumer.recv().now_or_never()
                        } else {
                            None
                        };
                    }
                }
            }
        }
        self.commit(&mut tracker);
        failure.map_or(Ok(()), Err)
    }

    /// Records one delivery report: the record's position may now be committed.
    fn acknowledge(&self, tracker: &mut OffsetTracker, ack: Ack) -> Result<()> {
        if let Some(error) = ack.error {
            let topic = match ack.destination {
                Destination::Output => &self.topics.output,
                Destination::DeadLetter => &self.topics.dead_letter,
            };
            return Err(Error::Kafka(format!("cannot deliver to {topic}: {error}")));
        }
        tracker.ack(ack.partition, ack.offset);
        Stats::add(match ack.destination {
            Destination::Output => &self.stats.written,
            Destination::DeadLetter => &self.stats.dead_lettered,
        });
        Ok(())
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
        match run_stages(message.payload(), &self.stats, key, value) {
            Ok(()) => {
                if self.print_keys {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(key).and_then(|()| stdout.write_all(b"\n"));
                }
                let ticket = self.ticket(partition, offset, Destination::Output);
                self.send(
                    BaseRecord::with_opaque_to(&self.topics.output, ticket)
                        .key(key.as_slice())
                        .payload(value.as_slice()),
                )
            }
            Err(rejection) => {
                let partition_text = partition.to_string();
                let offset_text = offset.to_string();
                let headers = OwnedHeaders::new()
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
                        value: Some(self.topics.input.as_str()),
                    })
                    .insert(Header {
                        key: "source.partition",
                        value: Some(partition_text.as_str()),
                    })
                    .insert(Header {
                        key: "source.offset",
                        value: Some(offset_text.as_str()),
                    });
                // The original key and bytes, untouched (a null key or value stays null).
                let ticket = self.ticket(partition, offset, Destination::DeadLetter);
                let mut record: Outgoing<'_> =
                    BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket).headers(headers);
                if let Some(original_key) = message.key() {
                    record = record.key(original_key);
                }
                if let Some(original_value) = message.payload() {
                    record = record.payload(original_value);
                }
                self.send(record)
            }
        }
    }

    fn ticket(&self, partition: i32, offset: i64, destination: Destination) -> Box<Ticket> {
        Box::new(Ticket {
            worker: self.id,
            partition,
            offset,
            destination,
        })
    }

    fn send(&self, mut record: Outgoing<'_>) -> Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Cannot happen while the in-flight budget stays under the queue size;
                    // wait if it does.
                    record = returned;
                    block_in_place(|| std::thread::sleep(Duration::from_millis(1)));
                }
                Err((error, returned)) => {
                    return Err(Error::Kafka(format!(
                        "cannot send to {}: {error}",
                        returned.topic
                    )));
                }
            }
        }
    }

    /// Commits every position whose records have all been delivered.
    fn commit(&self, tracker: &mut OffsetTracker) {
        let positions = tracker.to_commit();
        if positions.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for &(partition, next) in &positions {
            let _ = list.add_partition_offset(&self.topics.input, partition, Offset::Offset(next));
        }
        let started = std::time::Instant::now();
        match block_in_place(|| self.consumer.commit(&list, CommitMode::Sync)) {
            Ok(()) => {
                tracker.committed(&positions);
                self.stats.record_checkpoint(started.elapsed(), &positions);
                log::debug!(
                    "worker {}: committed {positions:?} in {:?}",
                    self.id,
                    started.elapsed()
                );
            }
            Err(e) => log::warn!(
                "worker {}: commit failed ({e}); retrying at the next checkpoint",
                self.id
            ),
        }
    }

    /// Records this worker's read positions (local: no network call in the loop). The
    /// end offsets come from the watermark watcher; together they give the lag.
    fn measure_lag(&self, tracker: &OffsetTracker) {
        let positions = self.consumer.position().ok();
        for &partition in &self.partitions {
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
