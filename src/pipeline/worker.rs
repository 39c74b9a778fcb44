//! The Kafka side of the job: `parallelism` workers, each with its own consumer on a fixed
//! share of the input partitions (partition p to worker p mod n), sharing one producer.
//!
//! Each worker is one task running one `select!` loop. It never spawns a task per record:
//! deliveries in flight are futures in a bounded `FuturesUnordered`, and the job reads at
//! most [`IN_FLIGHT_BUDGET`] records ahead of their acknowledgements, and prefetches at
//! most [`PREFETCH_BUDGET_KBYTES`], whatever its parallelism. Acknowledgements are
//! handled before new input, so commits keep up under load. Positions are committed from
//! an [`OffsetTracker`], which only releases the contiguous delivered prefix of each partition.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
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
const LAG_INTERVAL: Duration = Duration::from_secs(5);

type OutputProducer = FutureProducer<ErrorLog>;

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
    let producer: Arc<OutputProducer> = Arc::new(kafka::create(
        &kafka::pipeline_producer_config(kafka, &config.job_name),
        ErrorLog::new(&kafka.bootstrap_servers),
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
    let parallelism = config.parallelism.max(1);
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
    for id in 0..parallelism {
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
    first_error.map_or(Ok(()), Err)
}

/// Where a record's output went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Output,
    DeadLetter,
}

/// A delivery in flight, with the input position it stands for.
struct Tracked {
    partition: i32,
    offset: i64,
    destination: Destination,
    delivery: DeliveryFuture,
}

impl Future for Tracked {
    type Output = (
        i32,
        i64,
        Destination,
        Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    );

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        Pin::new(&mut this.delivery)
            .poll(cx)
            .map(|result| (this.partition, this.offset, this.destination, result))
    }
}

struct Worker {
    id: usize,
    consumer: StreamConsumer<ErrorLog>,
    producer: Arc<OutputProducer>,
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
    async fn run(self, cancel: &CancellationToken) -> Result<()> {
        if self.partitions.is_empty() {
            // More workers than partitions: this one idles, like an idle Flink subtask.
            if !self.bounded {
                cancel.cancelled().await;
            }
            return Ok(());
        }
        let mut tracker = OffsetTracker::default();
        let mut in_flight: FuturesUnordered<Tracked> = FuturesUnordered::new();
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
            if !reading && in_flight.is_empty() {
                break;
            }
            if reading
                && self.bounded
                && in_flight.is_empty()
                && at_end.len() == self.partitions.len()
            {
                break;
            }
            tokio::select! {
                biased;
                Some(first) = in_flight.next() => {
                    // Take every acknowledgement that is ready, not just one per pass.
                    let mut done = Some(first);
                    let mut taken = 0;
                    while let Some((partition, offset, destination, delivery)) = done {
                        if let Err(e) = self.acknowledge(&mut tracker, partition, offset, destination, delivery) {
                            failure.get_or_insert(e);
                            drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                        }
                        taken += 1;
                        done = if taken < BATCH { in_flight.next().now_or_never().flatten() } else { None };
                    }
                }
                _ = cancel.cancelled(), if reading => {
                    drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                    if !in_flight.is_empty() {
                        log::info!("worker {}: stopped reading; draining {} deliveries", self.id, in_flight.len());
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    log::warn!(
                        "worker {}: {} deliveries still in flight after {} s; their records will be read again on restart",
                        self.id,
                        in_flight.len(),
                        DRAIN_TIMEOUT.as_secs()
                    );
                    break;
                }
                _ = checkpoint.tick() => self.commit(&mut tracker),
                _ = lag_tick.tick() => self.measure_lag(&tracker),
                message = self.consumer.recv(), if reading && in_flight.len() < self.max_in_flight => {
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
                                match self.process(&message, &mut key, &mut value) {
                                    Ok(tracked) => in_flight.push(tracked),
                                    Err(e) => {
                                        failure.get_or_insert(e);
                                        drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                                        break;
                                    }
                                }
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
                        next = if taken < BATCH && in_flight.len() < self.max_in_flight { self.consumer.recv().now_or_never() } else { None };
                    }
                }
            }
        }
        self.commit(&mut tracker);
        failure.map_or(Ok(()), Err)
    }

    /// Records one delivery report: the record's position may now be committed.
    fn acknowledge(
        &self,
        tracker: &mut OffsetTracker,
        partition: i32,
        offset: i64,
        destination: Destination,
        delivery: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    ) -> Result<()> {
        match delivery {
            Ok(Ok(_)) => {
                tracker.ack(partition, offset);
                Stats::add(match destination {
                    Destination::Output => &self.stats.written,
                    Destination::DeadLetter => &self.stats.dead_lettered,
                });
                Ok(())
            }
            Ok(Err((error, _))) => Err(Error::Kafka(format!(
                "cannot deliver to {}: {error}",
                record_topic(destination, &self.topics)
            ))),
            Err(_) => Err(Error::Kafka("the producer went away".into())),
        }
    }

    /// Transforms one record and sends its output, or its dead letter.
    fn process(
        &self,
        message: &BorrowedMessage<'_>,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<Tracked> {
        let (partition, offset) = (message.partition(), message.offset());
        key.clear();
        value.clear();
        match run_stages(message.payload(), &self.stats, key, value) {
            Ok(()) => {
                if self.print_keys {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(key).and_then(|()| stdout.write_all(b"\n"));
                }
                let record = FutureRecord::to(&self.topics.output)
                    .key(key.as_slice())
                    .payload(value.as_slice());
                self.send(record, partition, offset, Destination::Output)
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
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.topics.dead_letter).headers(headers);
                if let Some(original_key) = message.key() {
                    record = record.key(original_key);
                }
                if let Some(original_value) = message.payload() {
                    record = record.payload(original_value);
                }
                self.send(record, partition, offset, Destination::DeadLetter)
            }
        }
    }

    fn send(
        &self,
        mut record: FutureRecord<'_, [u8], [u8]>,
        partition: i32,
        offset: i64,
        destination: Destination,
    ) -> Result<Tracked> {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    return Ok(Tracked {
                        partition,
                        offset,
                        destination,
                        delivery,
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Cannot happen while in-flight caps stay under the queue size; wait if it does.
                    record = returned;
                    block_in_place(|| std::thread::sleep(Duration::from_millis(1)));
                }
                Err((error, _)) => {
                    return Err(Error::Kafka(format!(
                        "cannot send to {}: {error}",
                        record_topic(destination, &self.topics)
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

    /// Measures end offsets and lag of this worker's partitions (for status, not for --bounded).
    fn measure_lag(&self, tracker: &OffsetTracker) {
        let positions = self.consumer.position().ok();
        for &partition in &self.partitions {
            let end = block_in_place(|| {
                self.consumer.fetch_watermarks(
                    &self.topics.input,
                    partition,
                    Duration::from_secs(1),
                )
            })
            .ok()
            .map(|(_, high)| high);
            let position = positions
                .as_ref()
                .and_then(|list| list.find_partition(&self.topics.input, partition))
                .and_then(|element| match element.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .or(tracker.last_committed(partition));
            self.stats.record_partition(
                partition,
                tracker.last_committed(partition),
                end,
                position,
            );
        }
    }
}

fn record_topic(destination: Destination, topics: &Topics) -> &str {
    match destination {
        Destination::Output => &topics.output,
        Destination::DeadLetter => &topics.dead_letter,
    }
}
