//! `--verify-topic`: end-to-end verification of a pipeline under load. While `datagen`
//! produces, a consumer of its own reads the pipeline's output (and, optionally, its
//! dead-letter topic) and accounts for every event.
//!
//! How events are told apart:
//! - **By headers**, when the job forwards them (`pipeline`, Kafka Streams): each record
//!   `datagen` sends carries `datagen.run` (an id of this run), `datagen.seq` (its event's
//!   number; a duplicate shares its original's) and `datagen.sent` (when it was handed to
//!   the producer, in microseconds since the Unix epoch), so each output record names the
//!   event it came from.
//! - **By content**, when it does not (Flink's `KafkaSink`, Beam's `WriteToKafka`, Kafka
//!   Connect, most hand-written consumers): each event's identity (`id`, `event_ts`) is
//!   kept as it is sent, and a record without this run's headers is matched by the
//!   identity it holds, as a multiset (see [`super::identity`]). Its latency runs from the
//!   earliest send of that identity.
//!
//! The report says which was used: by headers when every record of this run arrived with
//! them, else by content for all.
//!
//! Guarantees:
//! - Only records of this run count: the reader starts at the topics' ends as they were
//!   before the first event was sent, and skips records of other runs.
//! - Every event is accounted for: `arrived` (at least once in the output), `lost` (never
//!   in the output nor, when expected there, in the dead-letter topic), `duplicated`
//!   (arrivals beyond those expected: one per event, two for an event `--duplicate-ratio`
//!   sent twice), and dead letters, expected (`--bad-record-ratio`) and unexpected.
//! - Latencies are from `datagen.sent` to the output record's timestamp (set by the
//!   pipeline's producer) and to its arrival here, in HDR histograms.
//!
//! Limit: the clocks are this machine's wall clock and the pipeline's; on one machine they
//! agree, across machines their skew adds to the end-to-end latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::dirt::Dirt;
use super::identity::{self, IdentityTable, MatchSpec};
use crate::error::{Error, Result};
use crate::kafka::{self, KafkaConfig};
use crate::latency::{DeliveryLatency, LatencySummary};

/// Header naming the run.
pub const RUN_HEADER: &str = "datagen.run";
/// Header holding the event's number.
pub const SEQ_HEADER: &str = "datagen.seq";
/// Header holding the send time, microseconds since the Unix epoch.
pub const SENT_HEADER: &str = "datagen.sent";

/// What to verify.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// The pipeline's output topic.
    pub topic: String,
    /// Its dead-letter topic, to account for the records it rejects.
    pub dead_letter_topic: Option<String>,
    /// How long to wait for stragglers once every event was sent and acknowledged.
    pub grace: Duration,
    /// Where a record without this run's headers holds its identity.
    pub matching: MatchSpec,
}

/// What the sending side keeps for the verification: the run's id (for the headers) and
/// each event's identity (for matching by content).
#[derive(Debug, Clone)]
pub(super) struct Tagging {
    pub run_id: String,
    pub identities: Arc<Mutex<IdentityTable>>,
    pub dirt: Option<Dirt>,
}

impl Tagging {
    /// Records the identities of `records` (`(key, event number)`) as sent now.
    pub(super) fn sent<'a>(&self, records: impl Iterator<Item = (&'a [u8], u64)>) {
        let now = Instant::now();
        let Ok(mut table) = self.identities.lock() else {
            return;
        };
        for (key, index) in records {
            if let Some(id) = identity::identity(&MatchSpec::KeyOrValue, Some(key), None) {
                let bad = self.dirt.is_some_and(|d| d.fate(index).bad.is_some());
                table.sent(id, bad, now);
            }
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the reader saw of one event.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    output: u32,
    dead_letters: u32,
}

/// The reader's tallies, shared with the run.
#[derive(Debug, Default)]
struct Tally {
    seen: HashMap<u64, Seen>,
    other_runs: u64,
    /// This run's records that came with its headers.
    by_headers: u64,
    /// Records without them, matched (or not) by content.
    by_content: u64,
    /// Records without headers and without an identity to read.
    unidentified: u64,
}

/// What a running verification has seen so far, for the report's points.
#[derive(Debug, Clone)]
pub(super) struct VerifyLive {
    /// Events seen in the output at least once.
    pub distinct: Arc<AtomicU64>,
    /// Output records of an event already seen.
    pub repeated: Arc<AtomicU64>,
    /// From the send to the arrival.
    pub to_arrival: Arc<DeliveryLatency>,
}

/// A running verification: its reader thread.
pub(super) struct Verifier {
    stop: Arc<AtomicBool>,
    /// Events seen in the output at least once, so far.
    distinct: Arc<AtomicU64>,
    repeated: Arc<AtomicU64>,
    reader: Option<JoinHandle<Result<Tally>>>,
    to_output: Arc<DeliveryLatency>,
    to_arrival: Arc<DeliveryLatency>,
    grace: Duration,
    dead_letters_read: bool,
    identities: Arc<Mutex<IdentityTable>>,
    matching: MatchSpec,
}

/// The verification's findings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    /// Events generated (each counted once, duplicates or not).
    pub events: u64,
    pub arrived: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub dead_lettered_expected: u64,
    pub dead_lettered_unexpected: u64,
    /// Bad events (`--bad-record-ratio`) neither dead-lettered nor, without a dead-letter
    /// topic to read, looked for.
    pub bad_unaccounted: u64,
    /// From the send to the output record's timestamp.
    pub to_output: LatencySummary,
    /// From the send to the arrival at this reader.
    pub to_arrival: LatencySummary,
    /// How records were matched to events: `headers` or `content (...)`.
    pub matching: String,
    /// Matched by content: identities that more than one event was sent under.
    pub shared_identities: u64,
    /// Matched by content: records of no event of this run, and records with no identity.
    pub unmatched: u64,
    pub unidentified: u64,
    /// The identity table's bytes at the end, and per event sent.
    pub identity_bytes: u64,
}

impl Verifier {
    /// Starts reading `config`'s topics from their current ends; `identities` is the
    /// table the sending side fills.
    pub(super) fn start(
        kafka: &KafkaConfig,
        config: &VerifyConfig,
        run_id: &str,
        identities: &Arc<Mutex<IdentityTable>>,
    ) -> Result<Self> {
        let run_id = run_id.to_string();
        let consumer: BaseConsumer<kafka::ErrorLog> = kafka::create(
            &kafka::verify_consumer_config(kafka),
            kafka::ErrorLog::new(&kafka.bootstrap_servers),
            kafka,
        )?;
        let mut assignment = TopicPartitionList::new();
        let topics: Vec<&String> = std::iter::once(&config.topic)
            .chain(config.dead_letter_topic.as_ref())
            .collect();
        for topic in &topics {
            let partitions = kafka::check_topic_reachable(consumer.client(), kafka, topic)?;
            for partition in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition, kafka::REACHABILITY_TIMEOUT)
                    .map_err(|e| Error::Kafka(format!("end offsets of {topic}: {e}")))?;
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(high))
                    .map_err(|e| Error::Kafka(e.to_string()))?;
            }
        }
        consumer
            .assign(&assignment)
            .map_err(|e| Error::Kafka(format!("cannot read {}: {e}", config.topic)))?;
        log::info!(
            "verifying run {run_id}: reading {} from its end",
            topics
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let distinct = Arc::new(AtomicU64::new(0));
        let repeated = Arc::new(AtomicU64::new(0));
        let to_output = Arc::new(DeliveryLatency::new());
        let to_arrival = Arc::new(DeliveryLatency::new());
        let reader = {
            let (stop, counts, to_output, to_arrival) = (
                Arc::clone(&stop),
                (Arc::clone(&distinct), Arc::clone(&repeated)),
                Arc::clone(&to_output),
                Arc::clone(&to_arrival),
            );
            let (run_id, output_topic) = (run_id.clone(), config.topic.clone());
            let matching = (Arc::clone(identities), config.matching.clone());
            std::thread::Builder::new()
                .name("verifier".into())
                .spawn(move || {
                    let latencies = (&*to_output, &*to_arrival);
                    let counts = (&*counts.0, &*counts.1);
                    let matching = (&*matching.0, &matching.1);
                    read(
                        &consumer,
                        &run_id,
                        &output_topic,
                        &stop,
                        counts,
                        latencies,
                        matching,
                    )
                })
                .map_err(|e| Error::io("verifier thread", e))?
        };
        Ok(Verifier {
            stop,
            distinct,
            repeated,
            reader: Some(reader),
            to_output,
            to_arrival,
            grace: config.grace,
            dead_letters_read: config.dead_letter_topic.is_some(),
            identities: Arc::clone(identities),
            matching: config.matching.clone(),
        })
    }

    /// Live counts, for the report.
    pub(super) fn live(&self) -> VerifyLive {
        VerifyLive {
            distinct: Arc::clone(&self.distinct),
            repeated: Arc::clone(&self.repeated),
            to_arrival: Arc::clone(&self.to_arrival),
        }
    }

    /// After the last event was sent and acknowledged: waits up to the grace period for
    /// `events` events to arrive, then stops reading and reports.
    pub(super) fn finish(mut self, events: u64, dirt: Option<Dirt>) -> Result<VerifyReport> {
        let deadline = Instant::now() + self.grace;
        // The reader holds its tallies until it stops; it is told to stop at the deadline,
        // or earlier once every good event has arrived (and a moment more, for duplicates
        // right behind them).
        let good = good_events(events, dirt);
        let all_by_content = || self.identities.lock().is_ok_and(|t| t.all_arrived());
        while Instant::now() < deadline {
            if self.distinct.load(Ordering::Relaxed) >= good || all_by_content() {
                std::thread::sleep(Duration::from_millis(500).min(self.grace));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::Relaxed);
        let tally = match self.reader.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            _ => return Err(Error::Kafka("the verification reader stopped".into())),
        };
        if tally.other_runs > 0 {
            log::debug!("{} records of other runs skipped", tally.other_runs);
        }
        let mut report = VerifyReport {
            events,
            to_output: self.to_output.run_summary(),
            to_arrival: self.to_arrival.run_summary(),
            matching: "headers".into(),
            unidentified: tally.unidentified,
            ..VerifyReport::default()
        };
        if let Ok(table) = self.identities.lock() {
            report.identity_bytes = table.bytes() as u64;
            if tally.by_content > 0 || tally.unidentified > 0 {
                // Some records came without headers: every record is matched by content.
                report.matching = format!("content: {}", self.matching.describe());
                table.account(self.dead_letters_read, &mut report);
                return Ok(report);
            }
        }
        for seq in 0..events {
            let fate = dirt.map(|d| d.fate(seq)).unwrap_or_default();
            let seen = tally.seen.get(&seq).copied().unwrap_or_default();
            let expected_outputs: u32 = match (fate.bad, fate.duplicate) {
                (Some(_), _) => 0,
                (None, true) => 2,
                (None, false) => 1,
            };
            if seen.output > 0 {
                report.arrived += 1;
            }
            report.duplicated += u64::from(seen.output.saturating_sub(expected_outputs.max(1)));
            match fate.bad {
                Some(_) if seen.dead_letters > 0 => report.dead_lettered_expected += 1,
                Some(_) if !self.dead_letters_read => report.bad_unaccounted += 1,
                Some(_) => report.lost += 1,
                None => {
                    if seen.dead_letters > 0 {
                        report.dead_lettered_unexpected += 1;
                    } else if seen.output == 0 {
                        report.lost += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}

/// Events of `events` that the output should receive: all but the bad ones.
fn good_events(events: u64, dirt: Option<Dirt>) -> u64 {
    match dirt {
        None => events,
        Some(dirt) => (0..events)
            .filter(|&seq| dirt.fate(seq).bad.is_none())
            .count() as u64,
    }
}

/// The reader's loop: tallies this run's records until told to stop.
fn read(
    consumer: &BaseConsumer<kafka::ErrorLog>,
    run_id: &str,
    output_topic: &str,
    stop: &AtomicBool,
    (distinct, repeated): (&AtomicU64, &AtomicU64),
    (to_output, to_arrival): (&DeliveryLatency, &DeliveryLatency),
    (identities, spec): (&Mutex<IdentityTable>, &MatchSpec),
) -> Result<Tally> {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = result else {
            continue;
        };
        let dead = message.topic() != output_topic;
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
            })
        };
        let run = header(RUN_HEADER);
        if run.is_some_and(|run| run != run_id) {
            tally.other_runs += 1;
            continue;
        }
        // Its identity, whatever the headers say: a run whose records come partly without
        // headers is matched by content throughout.
        let found = identity::identity(spec, message.key(), message.payload());
        let arrival = found.and_then(|id| identities.lock().ok()?.arrived(id, dead));
        let stamped = message
            .timestamp()
            .to_millis()
            .map(|ms| u64::try_from(ms).unwrap_or(0).saturating_mul(1000));
        let seq = header(SEQ_HEADER).and_then(|s| s.parse::<u64>().ok());
        let Some(seq) = seq.filter(|_| run.is_some()) else {
            // No headers of this run: matched by content.
            tally.by_content += 1;
            if found.is_none() {
                tally.unidentified += 1;
            }
            if let Some(arrival) = arrival {
                let counter = if arrival.repeated { repeated } else { distinct };
                counter.fetch_add(1, Ordering::Relaxed);
                to_arrival.record_between(arrival.first_sent_micros, now_micros());
                if let Some(stamped) = stamped {
                    to_output.record_between(arrival.first_sent_micros, stamped);
                }
            }
            continue;
        };
        tally.by_headers += 1;
        let seen = tally.seen.entry(seq).or_default();
        if dead {
            seen.dead_letters += 1;
            continue;
        }
        seen.output += 1;
        if seen.output == 1 {
            distinct.fetch_add(1, Ordering::Relaxed);
        } else {
            repeated.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sent) = header(SENT_HEADER).and_then(|s| s.parse::<u64>().ok()) {
            to_arrival.record_between(sent, now_micros());
            if let Some(stamped) = stamped {
                to_output.record_between(sent, stamped);
            }
        }
    }
    Ok(tally)
}
