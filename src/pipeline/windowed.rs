//! The `traffic-agg` job on Kafka: page views per user in event-time windows (see
//! [`crate::windows`]), read from the input topic and written to `traffic-agg`, keyed by
//! `{"event_id", "window_start"}`.
//!
//! One consumer per process, a member of the job's consumer group, reads every partition
//! it is assigned on one thread; one idempotent producer writes the window results and the
//! dead letters (malformed records as in `kafka-io`, and `late` events).
//!
//! **Guarantee: no loss after a crash, and the same results.** An input position is
//! committed only once every window its records counted towards has fired and its results
//! are acknowledged: before each commit the producer is flushed, and a partition's position
//! never passes the first offset an open window still needs. Each commit carries, in its
//! metadata, how far windows have fired (`fired_through`) and where reading was
//! (`read`). A restarted process (or a partition's next owner) replays from the committed
//! position: events of windows that fired before the commit and were read before it are
//! skipped (already counted, or already dead-lettered); the others rebuild the open
//! windows, which then fire with the same counts. So a window emitted again after a crash
//! carries the same key and value, and a compacted output topic ends up exact. Duplicates
//! of identical results are possible, loss is not.
//!
//! Limits: an event that was late in one run may be counted in a replay (or the reverse)
//! when it was out of order beyond `--max-out-of-orderness`, since lateness depends on how
//! the partitions interleave, as in Flink. Counts cover the partitions this process owns
//! (see [`crate::windows`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{MemberStatus, PipelineConfig, RebalanceRecord, STATUS_INTERVAL, Stats, Topics};
use crate::error::{Error, Result};
use crate::kafka::{self, ErrorLog, KafkaConfig};
use crate::transform::{RejectKind, Rejection};
use crate::windows::{Aggregator, Now, Verdict, WindowConfig, WindowResult, event_time_ms};

/// How often windows are looked at (fired) and the dashboard's view refreshed.
const FIRE_INTERVAL: Duration = Duration::from_millis(100);

/// How often the owned partitions' end offsets are read, for the lag.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait for the acknowledgements before a commit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of the commit metadata.
const METADATA_PREFIX: &str = "streamkit-windows:v1";

/// What a commit's metadata says: windows fired through `fired_through`; records before
/// `read` had been processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restored {
    fired_through: i64,
    read: i64,
}

fn metadata(fired_through: i64, read: i64) -> String {
    format!("{METADATA_PREFIX}:{fired_through}:{read}")
}

fn parse_metadata(text: &str) -> Option<Restored> {
    let mut parts = text
        .strip_prefix(METADATA_PREFIX)?
        .strip_prefix(':')?
        .split(':');
    let fired_through = parts.next()?.parse().ok()?;
    let read = parts.next()?.parse().ok()?;
    Some(Restored {
        fired_through,
        read,
    })
}

/// The dead letter that an event's [`Verdict`] calls for, if any: `late` or `future`, with
/// the reason (in both modes, Kafka and files).
pub(super) fn rejection(verdict: Verdict) -> Option<Rejection> {
    match verdict {
        Verdict::Counted => None,
        Verdict::Late {
            window_end_ms,
            behind_ms,
        } => Some(late(window_end_ms, behind_ms)),
        Verdict::Future {
            event_ms,
            ahead_ms,
            bound_ms,
        } => Some(future(event_ms, ahead_ms, bound_ms)),
    }
}

/// The dead letter's reason for a late event.
fn late(window_end_ms: i64, behind_ms: i64) -> Rejection {
    Rejection {
        kind: RejectKind::Late,
        reason: format!(
            "late: its window ended at {} and had fired; the event is {behind_ms} ms behind the watermark less the allowed lateness",
            crate::windows::format_time(window_end_ms)
        ),
    }
}

/// The dead letter's reason for an event too far ahead of the wall clock.
fn future(event_ms: i64, ahead_ms: i64, bound_ms: i64) -> Rejection {
    Rejection {
        kind: RejectKind::Future,
        reason: format!(
            "future: its time {} is {} ahead of the wall clock, beyond --max-event-time-ahead {}; it moves no watermark",
            crate::windows::format_time(event_ms),
            humantime::format_duration(Duration::from_millis(ahead_ms.max(0) as u64)),
            humantime::format_duration(Duration::from_millis(bound_ms.max(0) as u64)),
        ),
    }
}

/// Counts the producer's acknowledgements; the first failure stops the job.
struct Deliveries {
    errors: ErrorLog,
    stats: Arc<Stats>,
    failed: Mutex<Option<String>>,
}

/// Which topic a record went to.
#[derive(Debug, Clone, Copy)]
enum Destination {
    Output,
    DeadLetter,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Destination>;

    fn delivery(&self, result: &DeliveryResult<'_>, destination: Box<Destination>) {
        match result {
            Ok(_) => Stats::add(match *destination {
                Destination::Output => &self.stats.written,
                Destination::DeadLetter => &self.stats.dead_lettered,
            }),
            Err((error, _)) => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// The process's state, shared with the rebalance callback (which librdkafka calls on the
/// job's own thread, inside `poll`).
struct State {
    aggregator: Aggregator,
    /// Next offset to read, per owned partition.
    next_read: BTreeMap<i32, i64>,
    /// What the committed metadata said, per owned partition.
    restored: BTreeMap<i32, Restored>,
    /// Partitions that reached their end (bounded runs).
    at_end: std::collections::BTreeSet<i32>,
    /// Bounded runs: per owned partition, where reading starts and the end to read to
    /// (the end offset when it was assigned).
    bounds: BTreeMap<i32, (i64, i64)>,
}

struct Member {
    errors: ErrorLog,
    /// Its client id.
    name: String,
    input: String,
    stats: Arc<Stats>,
    state: Arc<Mutex<State>>,
    producer: Arc<ThreadedProducer<Deliveries>>,
    failure: Mutex<Option<String>>,
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
        let mut revoked = Vec::new();
        let mut assigned = Vec::new();
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
                self.restore(consumer, partitions);
                assigned = numbers.clone();
                self.stats.add_partitions(&numbers);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if !lost && let Err(e) = self.commit(consumer, Some(&numbers)) {
                    log::warn!(
                        "{}: hand-over commit of partitions {numbers:?} failed ({e}); their next owner replays from the last commit",
                        self.input
                    );
                }
                if let Ok(mut state) = self.state.lock() {
                    for &p in &numbers {
                        state.aggregator.revoke(p);
                        state.next_read.remove(&p);
                        state.restored.remove(&p);
                        state.at_end.remove(&p);
                        state.bounds.remove(&p);
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
                log::warn!("{}: rebalance error: {other:?}", self.input);
                let _ = consumer.unassign();
            }
        }
        let owned: std::collections::BTreeSet<i32> = self
            .state
            .lock()
            .map(|s| {
                consumer
                    .assignment()
                    .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_else(|_| s.next_read.keys().copied().collect())
            })
            .unwrap_or_default();
        log::info!(
            "{}: assigned {assigned:?}, revoked {revoked:?}{}; now reads partitions {owned:?}",
            self.input,
            if lost { " (lost)" } else { "" }
        );
        self.stats.set_member(
            0,
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

impl Member {
    fn fail(&self, message: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(message);
        }
    }

    /// Reads the committed positions' metadata of newly assigned partitions.
    fn restore(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let committed =
            match consumer.committed_offsets(partitions.clone(), Duration::from_secs(10)) {
                Ok(committed) => committed,
                Err(e) => {
                    log::warn!("{}: cannot read the committed positions: {e}", self.input);
                    return;
                }
            };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        for element in committed.elements() {
            let partition = element.partition();
            state.aggregator.assign(partition, now);
            if let Ok((low, high)) =
                consumer.fetch_watermarks(&self.input, partition, Duration::from_secs(10))
            {
                let start = match element.offset() {
                    Offset::Offset(o) => o.max(low),
                    _ => low,
                };
                state.bounds.insert(partition, (start, high));
            }
            if let Some(restored) = parse_metadata(element.metadata()) {
                state
                    .aggregator
                    .restore(restored.fired_through, Now::current().wall_ms);
                state.restored.insert(partition, restored);
            }
        }
    }

    /// Flushes the producer, then commits each owned partition (or `only` these) at the
    /// first offset an open window still needs, or where reading is.
    fn commit(&self, consumer: &BaseConsumer<Self>, only: Option<&[i32]>) -> Result<()> {
        let started = Instant::now();
        // In slices, so that a deleted output topic (see `watch`) does not hold it up.
        loop {
            match self.producer.flush(Duration::from_millis(500)) {
                Ok(()) => break,
                Err(e) if started.elapsed() >= FLUSH_TIMEOUT || self.stats.failure().is_some() => {
                    return Err(Error::Kafka(format!(
                        "acknowledgements did not arrive: {e}"
                    )));
                }
                Err(_) => {}
            }
        }
        if let Some(error) = self
            .producer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|f| f.clone())
        {
            return Err(Error::Kafka(format!("cannot deliver: {error}")));
        }
        let (list, positions) = {
            let state = self
                .state
                .lock()
                .map_err(|_| Error::Kafka("state lock poisoned".into()))?;
            let mut list = TopicPartitionList::new();
            let mut positions = Vec::new();
            let fired = state.aggregator.fired_through();
            for (&partition, &read) in &state.next_read {
                if only.is_some_and(|only| !only.contains(&partition)) {
                    continue;
                }
                let position = state
                    .aggregator
                    .hold(partition)
                    .map_or(read, |hold| hold.min(read));
                let _ = list.add_partition_offset(&self.input, partition, Offset::Offset(position));
                if let Some(mut element) = list.find_partition(&self.input, partition) {
                    element.set_metadata(metadata(fired, read));
                }
                positions.push((partition, position));
            }
            (list, positions)
        };
        if positions.is_empty() {
            return Ok(());
        }
        consumer
            .commit(&list, CommitMode::Sync)
            .map_err(|e| Error::Kafka(format!("commit failed: {e}")))?;
        self.stats.record_checkpoint(started.elapsed(), &positions);
        Ok(())
    }
}

/// Runs the traffic-agg job on `kafka` until `cancel` fires (or the input ends, bounded).
pub(super) fn run(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    windows: &WindowConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    stats.set_aggregating();
    let facts = runtime.block_on(kafka::inspect_topics(
        kafka,
        &topics.input,
        &[&topics.output, &topics.dead_letter],
    ))?;
    let producer: Arc<ThreadedProducer<Deliveries>> = Arc::new(kafka::create(
        &kafka::pipeline_producer_config(kafka, &config.job_name, facts.max_record_bytes),
        Deliveries {
            errors: ErrorLog::new(&kafka.bootstrap_servers),
            stats: Arc::clone(stats),
            failed: Mutex::new(None),
        },
        kafka,
    )?);
    let state = Arc::new(Mutex::new(State {
        aggregator: Aggregator::new(windows),
        next_read: BTreeMap::new(),
        restored: BTreeMap::new(),
        at_end: std::collections::BTreeSet::new(),
        bounds: BTreeMap::new(),
    }));
    let member = Member {
        errors: ErrorLog::new(&kafka.bootstrap_servers),
        name: format!("streamkit-pipeline-{}-0", config.job_name),
        input: topics.input.clone(),
        stats: Arc::clone(stats),
        state: Arc::clone(&state),
        producer: Arc::clone(&producer),
        failure: Mutex::new(None),
    };
    let consumer: BaseConsumer<Member> = kafka::create(
        &kafka::pipeline_consumer_config(
            kafka,
            &config.job_name,
            0,
            &config.group,
            super::PREFETCH_BUDGET_KBYTES,
        ),
        member,
        kafka,
    )?;
    consumer
        .subscribe(&[&topics.input])
        .map_err(|e| Error::Kafka(format!("cannot subscribe to {}: {e}", topics.input)))?;
    log::info!(
        "job {}: {} ({} partitions) → {} ({} windows, out-of-orderness {}, allowed lateness {}, idle timeout {}), dead letters → {}; consumer group {}, checkpoint every {} ms",
        config.job_name,
        topics.input,
        facts.input_partitions,
        topics.output,
        humantime::format_duration(windows.size),
        humantime::format_duration(windows.max_out_of_orderness),
        humantime::format_duration(windows.allowed_lateness),
        humantime::format_duration(windows.idle_timeout),
        topics.dead_letter,
        config.job_name,
        config.checkpointing_interval.as_millis()
    );
    let mut job = Job {
        consumer: &consumer,
        producer: &producer,
        topics,
        stats,
        state: &state,
        key: Vec::new(),
        value: Vec::new(),
    };
    let result = job.run(config, facts.input_partitions, cancel);
    // Stop: what was acknowledged is committed; open windows are rebuilt on restart. A
    // topic deleted under the job (see `watch`) leaves the last commit as it is.
    if stats.failure().is_none() {
        let committed = consumer.context().commit(&consumer, None);
        if let Err(e) = &committed {
            log::warn!("final commit: {e}; a restart replays from the last commit");
        }
    }
    result
}

struct Job<'a> {
    consumer: &'a BaseConsumer<Member>,
    producer: &'a ThreadedProducer<Deliveries>,
    topics: &'a Topics,
    stats: &'a Arc<Stats>,
    state: &'a Arc<Mutex<State>>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Job<'_> {
    fn run(
        &mut self,
        config: &PipelineConfig,
        input_partitions: i32,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut last_fire = Instant::now();
        let mut last_commit = Instant::now();
        let mut last_status = Instant::now();
        let mut last_ends = Instant::now();
        while !cancel.is_cancelled() {
            if let Some(failure) = self
                .consumer
                .context()
                .failure
                .lock()
                .ok()
                .and_then(|f| f.clone())
            {
                return Err(Error::Kafka(failure));
            }
            match self.consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Ok(message)) => self.record(&message)?,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Ok(mut state) = self.state.lock() {
                        state.at_end.insert(partition);
                    }
                }
                Some(Err(e)) => log::debug!("{}: {e}", self.topics.input),
            }
            let now = Instant::now();
            if now.duration_since(last_fire) >= FIRE_INTERVAL {
                last_fire = now;
                self.fire(false)?;
                if config.bounded && self.drained(input_partitions) {
                    self.fire(true)?;
                    return Ok(());
                }
            }
            if now.duration_since(last_commit) >= config.checkpointing_interval {
                last_commit = now;
                self.consumer.context().commit(self.consumer, None)?;
            }
            if now.duration_since(last_ends) >= LAG_INTERVAL {
                last_ends = now;
                self.record_ends();
            }
            if now.duration_since(last_status) >= STATUS_INTERVAL {
                last_status = now;
                let totals = self.stats.totals();
                log::info!(
                    "read {}, counted {}, results written {}, dead-lettered {}",
                    totals.read,
                    totals.counted.unwrap_or(0),
                    totals.written,
                    totals.dead_lettered
                );
            }
        }
        Ok(())
    }

    /// The owned partitions' end offsets, for the dashboard's lag (a short broker call
    /// each, every [`LAG_INTERVAL`]).
    fn record_ends(&self) {
        let owned: Vec<i32> = self
            .state
            .lock()
            .map(|s| s.next_read.keys().copied().collect())
            .unwrap_or_default();
        for partition in owned {
            if let Ok((_, end)) = self.consumer.fetch_watermarks(
                &self.topics.input,
                partition,
                Duration::from_millis(500),
            ) {
                self.stats.record_end(partition, end);
            }
        }
    }

    /// Every partition of the input is owned here and read to the end it had when it was
    /// assigned.
    fn drained(&self, input_partitions: i32) -> bool {
        self.state.lock().is_ok_and(|s| {
            s.bounds.len() as i32 >= input_partitions
                && s.bounds.iter().all(|(p, &(start, end))| {
                    s.next_read.get(p).copied().unwrap_or(start).max(start) >= end
                })
        })
    }

    /// One input record: counted, skipped (a replay of a fired window), or dead-lettered.
    fn record(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        Stats::add(&self.stats.read);
        let stats = &self.stats;
        let parsed = super::visit_stages(message.payload(), stats);
        let rejection = {
            let Ok(mut state) = self.state.lock() else {
                return Err(Error::Kafka("state lock poisoned".into()));
            };
            state.next_read.insert(partition, offset + 1);
            state.at_end.remove(&partition);
            match parsed {
                Err(rejection) => Some((rejection, true)),
                Ok(event) => match event_time_ms(&event.event_datetime) {
                    None => Some((
                        Rejection {
                            kind: RejectKind::InvalidField,
                            reason: format!(
                                "event_datetime {:?} is not a time of the form YYYY-MM-DDTHH:MM:SS.fff",
                                event.event_datetime
                            ),
                        },
                        false,
                    )),
                    Some(at) => {
                        let replayed = state.restored.get(&partition).is_some_and(|r| {
                            offset < r.read && state.aggregator.expiry(at) <= r.fired_through
                        });
                        if replayed {
                            // Counted (or dead-lettered) before the last commit, and its
                            // window has fired: nothing to do again.
                            Stats::add(&stats.counted);
                            None
                        } else {
                            match state.aggregator.add(
                                partition,
                                offset,
                                &event.id,
                                at,
                                Now::current(),
                            ) {
                                Verdict::Counted => {
                                    Stats::add(&stats.counted);
                                    None
                                }
                                other => rejection(other).map(|r| (r, false)),
                            }
                        }
                    }
                },
            }
        };
        if let Some((rejection, counted)) = rejection {
            if !counted {
                self.stats.reject(rejection.kind, &rejection.reason);
            }
            let headers = super::worker::dead_letter_headers(
                message.headers().map(|h| h.detach()),
                &self.topics.input,
                partition,
                offset,
                &rejection,
                None,
            );
            let mut record = BaseRecord::with_opaque_to(
                &self.topics.dead_letter,
                Box::new(Destination::DeadLetter),
            )
            .headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            self.send(record)?;
        }
        Ok(())
    }

    /// Fires what the watermark has passed (or everything, at the end of a bounded run)
    /// and writes the results; refreshes the dashboard's view.
    fn fire(&mut self, all: bool) -> Result<()> {
        let now = Now::current();
        let results: Vec<WindowResult> = {
            let Ok(mut state) = self.state.lock() else {
                return Err(Error::Kafka("state lock poisoned".into()));
            };
            let results = if all {
                state.aggregator.fire_all()
            } else {
                state.aggregator.fire(now)
            };
            self.stats.set_windows(state.aggregator.status(now));
            for (&partition, &read) in &state.next_read {
                self.stats.record_position(partition, None, Some(read));
            }
            results
        };
        for result in results {
            Stats::add(&self.stats.created);
            self.key.clear();
            self.value.clear();
            result.write_key(&mut self.key);
            result.write_value(&mut self.value);
            let key = std::mem::take(&mut self.key);
            let value = std::mem::take(&mut self.value);
            let record =
                BaseRecord::with_opaque_to(&self.topics.output, Box::new(Destination::Output))
                    .key(key.as_slice())
                    .payload(value.as_slice());
            self.send(record)?;
            self.key = key;
            self.value = value;
        }
        if all {
            self.consumer.context().commit(self.consumer, None)?;
        }
        Ok(())
    }

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], Box<Destination>>) -> Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(Error::Kafka(format!("cannot send: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips_and_foreign_metadata_is_ignored() {
        assert_eq!(
            parse_metadata(&metadata(1_714_283_480_000, 42)),
            Some(Restored {
                fired_through: 1_714_283_480_000,
                read: 42
            })
        );
        assert_eq!(
            parse_metadata(&metadata(i64::MIN, 0)).map(|r| r.fired_through),
            Some(i64::MIN)
        );
        for other in [
            "",
            "something else",
            "streamkit-windows:v1:x:1",
            "streamkit-windows:v2:1:2",
        ] {
            assert_eq!(parse_metadata(other), None, "{other}");
        }
    }
}
