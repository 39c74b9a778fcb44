//! Jobs: what a pipeline does with each record, behind one trait, [`Job`], that every
//! runner drives: the Kafka runner under either guarantee, the file runner, and the
//! in-memory [test driver](crate::testing::TestDriver). The built-in jobs (`kafka-io`,
//! `traffic-agg`, `user-traffic`) implement it as a job of your own does.
//!
//! A [`Job`] is pure: it never touches Kafka, a file or a clock. The runner hands it one
//! [`Record`] at a time (key, value, headers, timestamp, partition and offset) and sends
//! what it [emits](Emitter); the job answers with an [`Outcome`]: its outputs were
//! emitted, the record was counted into its state or dropped, or the record is rejected
//! (the runner dead-letters it, with the reason). A stateful job also gets the hooks of
//! Kafka Streams' `Processor` and Arroyo's operators:
//! - [`Job::tick`]: time passes (event-time windows fire);
//! - [`Job::hold`] and [`Job::save`]: the state to commit with the input positions (the
//!   position a commit may reach, and the commit's metadata);
//! - [`Job::assign`] and [`Job::revoke`]: a partition arrives with the state saved at its
//!   last commit, or leaves (after a rebalance, a restart or an aborted transaction);
//! - [`Job::finish`]: the end of a bounded input.
//!
//! Event-time windows need none of these by hand: implement [`WindowedJob`] (a grouping
//! key, an event time and a value per record; a result per key and window) and run it as
//! [`Windowed`], which brings watermarks, lateness, the far-future bound and the state
//! saved with each commit.
//!
//! Guarantee: a job is the same code in every mode; a record's outcome depends on the
//! record, the job's state and the [`Now`] it is given, nothing else. So what a job does
//! under the test driver is what it does on Kafka.
//!
//! ```
//! use streamkit::pipeline::job::{Emitter, Job, Now, Outcome, Record, Rejection};
//!
//! /// Upper-cases each value; an empty one is dead-lettered.
//! struct Shout;
//!
//! impl Job for Shout {
//!     fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
//!         match record.value {
//!             Some(value) if !value.is_empty() => {
//!                 let (key, out_value) = out.record();
//!                 key.extend_from_slice(record.key.unwrap_or_default());
//!                 out_value.extend(value.iter().map(u8::to_ascii_uppercase));
//!                 Outcome::Emitted
//!             }
//!             _ => Outcome::Rejected(Rejection::new("empty", "no value")),
//!         }
//!     }
//! }
//! ```

mod emitter;
mod kafka_io;
mod spec;
mod traffic_agg;
mod user_traffic;
mod windowed;

#[cfg(test)]
mod fixture_replay;

use std::time::Duration;

use super::Stats;
use crate::transform;

pub use crate::schema::{EventLog, write_key as write_event_key};
pub use crate::transform::{RejectKind, Rejection};
pub use crate::windows::WindowResult;
pub use crate::windows::{
    Aggregate, Now, PartitionWatermark, WindowConfig, WindowStatus, event_time_ms,
};
pub use emitter::Emitter;
pub(crate) use emitter::Tally;
pub(crate) use spec::{JobKind, JobSpec};
pub(crate) use windowed::source_header;
#[cfg(test)]
pub(crate) use windowed::test_job as windowed_test_job;
pub use windowed::{Keyed, SOURCE_HEADER, Windowed, WindowedJob};

/// One input record, as the runner read it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The input partition (0 in file mode).
    pub partition: i32,
    /// Its offset in the partition (the line number, from 1, in file mode).
    pub offset: i64,
    /// The record's key (`None`: a null key).
    pub key: Option<&'a [u8]>,
    /// The record's value (`None`: a null value, a tombstone).
    pub value: Option<&'a [u8]>,
    /// The record's timestamp, epoch milliseconds (`None` in file mode).
    pub timestamp: Option<i64>,
    /// The record's headers.
    pub headers: Headers<'a>,
}

/// A record's headers, read only when asked for (librdkafka parses them on demand).
#[derive(Clone, Copy, Default)]
pub struct Headers<'a>(HeaderSource<'a>);

#[derive(Clone, Copy, Default)]
enum HeaderSource<'a> {
    #[default]
    None,
    Kafka(&'a rdkafka::message::BorrowedMessage<'a>),
    List(&'a [(String, Option<Vec<u8>>)]),
}

impl<'a> Headers<'a> {
    /// No headers.
    pub fn none() -> Self {
        Headers(HeaderSource::None)
    }

    /// Headers held as (name, value) pairs.
    pub fn from_list(list: &'a [(String, Option<Vec<u8>>)]) -> Self {
        Headers(HeaderSource::List(list))
    }

    pub(crate) fn kafka(message: &'a rdkafka::message::BorrowedMessage<'a>) -> Self {
        Headers(HeaderSource::Kafka(message))
    }

    /// Every header, in order: its name and value (`None`: a null value).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        use rdkafka::message::{Headers as _, Message as _};
        let (kafka, list) = match self.0 {
            HeaderSource::None => (None, &[][..]),
            HeaderSource::Kafka(message) => (message.headers(), &[][..]),
            HeaderSource::List(list) => (None, list),
        };
        let kafka = kafka
            .into_iter()
            .flat_map(|headers| headers.iter().map(|h| (h.key, h.value)));
        let list = list
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref()));
        kafka.chain(list)
    }

    /// The value of the last header named `name` (`Some(None)`: a null value).
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, value)| value)
    }
}

impl std::fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What became of a record.
#[derive(Debug)]
pub enum Outcome {
    /// Its outputs are in the emitter (one per record for a transform). They are sent, and
    /// the record's position is committed once they are acknowledged.
    Emitted,
    /// Counted into the job's state (an aggregation): nothing to send for it now.
    Counted,
    /// Dropped on purpose (a filter): nothing to send, nothing kept.
    Dropped,
    /// It cannot be processed: the runner dead-letters it with this reason.
    Rejected(Rejection),
}

/// An operator of a job, as the dashboard and `/metrics` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator {
    /// Shown on the dashboard (`"Parse elements"`).
    pub name: &'static str,
    /// The `operator` label of `streamkit_pipeline_records` (`"parse"`).
    pub label: &'static str,
}

impl Operator {
    /// An operator shown as `name`, labelled `label` in `/metrics`.
    pub const fn new(name: &'static str, label: &'static str) -> Self {
        Operator { name, label }
    }
}

/// The most operators a job shows between the read and the write.
pub const MAX_OPERATORS: usize = 6;

/// A job's one operator when it names none.
const PROCESS: [Operator; 1] = [Operator::new("Process", "process")];

/// The part of a grouped job an instance plays on Kafka (see [`Job::grouped`]): Kafka
/// Streams' sub-topologies on either side of a repartition topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// All of it: every record is grouped where it is read (files, the test driver, or an
    /// input already keyed by the grouping key).
    #[default]
    Whole,
    /// Reads the input and writes each record, keyed by its grouping key and stamped with
    /// its event time, to the repartition topic; tells every repartition partition how far
    /// its input partitions have got ([`Job::broadcast`]).
    Repartition,
    /// Reads the repartition topic and groups: each key's state lives in one partition.
    Aggregate {
        /// The input's partition count: a window fires only once every one of them has
        /// said it is past it.
        upstream: i32,
    },
}

/// A job: see the module doc. Every hook but `process` has a stateless default.
pub trait Job: Send {
    /// One record: emit its outputs, count it, drop it, or reject it. `now` is the time
    /// the runner read it (the wall clock bounds event time).
    fn process(&mut self, record: &Record<'_>, now: Now, out: &mut Emitter) -> Outcome;

    /// The job's operators, in order, between the read and the write, as the dashboard
    /// shows them (at most [`MAX_OPERATORS`]; see [`Emitter::passed`]). One, `Process`,
    /// unless the job says otherwise.
    fn operators(&self) -> &'static [Operator] {
        &PROCESS
    }

    /// Whether the outputs of `process` carry the input record's headers (a transform's
    /// do, as Kafka Streams forwards them; an aggregate's results have none).
    fn forwards_headers(&self) -> bool {
        true
    }

    /// Whether outputs are results of many records (an aggregation): then a record is
    /// done once counted, and the summary counts results apart.
    fn aggregates(&self) -> bool {
        self.stateful()
    }

    /// How often the runner calls [`tick`](Self::tick); `None`: never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Time passes: emit what is due (window results).
    fn tick(&mut self, _now: Now, _out: &mut Emitter) {}

    /// The end of a bounded input: emit everything held.
    fn finish(&mut self, _out: &mut Emitter) {}

    /// Event time as the job sees it, for the dashboard; `None`: the job has none.
    fn watermarks(&self, _now: Now) -> Option<WindowStatus> {
        None
    }

    /// A stateful job's state must be committed with the positions: the runner then takes
    /// a checkpoint only when every output sent has been acknowledged. Unless it is
    /// [`grouped`](Self::grouped) (then the repartition topic puts each key in one place),
    /// it runs one worker per process.
    fn stateful(&self) -> bool {
        false
    }

    /// The first offset of `partition` the job's state still needs (a commit stops there).
    fn hold(&self, _partition: i32) -> Option<i64> {
        None
    }

    /// The state to save with a commit of `partition`, read up to `read` (exclusive).
    fn save(&self, _partition: i32, _read: i64) -> Option<String> {
        None
    }

    /// `partition` is now this job's, from its committed position, with the state saved at
    /// that commit.
    fn assign(&mut self, _partition: i32, _saved: Option<&str>, _now: Now) {}

    /// `partition` is no longer this job's: drop its state.
    fn revoke(&mut self, _partition: i32) {}

    /// Whether the job groups records by a key of its own (a [`Windowed`] job): on Kafka
    /// it then runs in two [stages](Stage) through a repartition topic, so that any number
    /// of workers and processes share it and each key's state still lives in one place.
    fn grouped(&self) -> bool {
        false
    }

    /// The stage this instance plays, said once before its first record.
    fn set_stage(&mut self, _stage: Stage) {}

    /// [`Stage::Repartition`]: a record every partition of the output must get now (a
    /// watermark mark), asked at each [`tick`](Self::tick); `None`: nothing to say.
    fn broadcast(&mut self, _now: Now) -> Option<Vec<u8>> {
        None
    }
}

impl<J: Job + ?Sized> Job for Box<J> {
    fn process(&mut self, record: &Record<'_>, now: Now, out: &mut Emitter) -> Outcome {
        (**self).process(record, now, out)
    }
    fn operators(&self) -> &'static [Operator] {
        (**self).operators()
    }
    fn forwards_headers(&self) -> bool {
        (**self).forwards_headers()
    }
    fn aggregates(&self) -> bool {
        (**self).aggregates()
    }
    fn tick_interval(&self) -> Option<Duration> {
        (**self).tick_interval()
    }
    fn tick(&mut self, now: Now, out: &mut Emitter) {
        (**self).tick(now, out)
    }
    fn finish(&mut self, out: &mut Emitter) {
        (**self).finish(out)
    }
    fn watermarks(&self, now: Now) -> Option<WindowStatus> {
        (**self).watermarks(now)
    }
    fn stateful(&self) -> bool {
        (**self).stateful()
    }
    fn hold(&self, partition: i32) -> Option<i64> {
        (**self).hold(partition)
    }
    fn save(&self, partition: i32, read: i64) -> Option<String> {
        (**self).save(partition, read)
    }
    fn assign(&mut self, partition: i32, saved: Option<&str>, now: Now) {
        (**self).assign(partition, saved, now)
    }
    fn revoke(&mut self, partition: i32) {
        (**self).revoke(partition)
    }
    fn grouped(&self) -> bool {
        (**self).grouped()
    }
    fn set_stage(&mut self, stage: Stage) {
        (**self).set_stage(stage)
    }
    fn broadcast(&mut self, now: Now) -> Option<Vec<u8>> {
        (**self).broadcast(now)
    }
}

/// Decode → Parse, with kafka-io's rejections: the value as an [`EventLog`] (empty
/// `lat`/`lng` read as -1, as the article's job does), or why it is not one.
pub fn parse_event(value: Option<&[u8]>) -> Result<EventLog<'_>, Rejection> {
    transform::decode(value).and_then(transform::parse)
}

/// Shows the job's event time on the dashboard, if it has one.
pub(crate) fn publish(job: &dyn Job, stats: &Stats, now: Now) {
    if let Some(status) = job.watermarks(now) {
        stats.set_windows(status);
    }
}

/// The operators of the article's Beam job, between its read and its write.
pub(super) const BEAM_OPERATORS: [Operator; 3] = [
    Operator::new("Decode messages", "decode"),
    Operator::new("Parse elements", "parse"),
    Operator::new("Create messages", "create_messages"),
];

/// Decode → Parse → Create messages ([`BEAM_OPERATORS`]): the article's transform, the
/// same code in every mode. A rejected record says how far it went.
pub(super) fn run_stages(value: Option<&[u8]>, out: &mut Emitter) -> Outcome {
    let (key, out_value) = out.record();
    if let Some(bytes) = value
        && transform::pass_through(bytes, key, out_value)
    {
        // The fast path: the record went through all three operators.
        return Outcome::Emitted;
    }
    key.clear();
    out_value.clear();
    let mut passed = 0;
    let created = transform::decode(value)
        .inspect(|_| passed = 1)
        .and_then(transform::parse)
        .inspect(|_| passed = 2)
        .and_then(|event| transform::create_message(&event, key, out_value));
    match created {
        Ok(()) => Outcome::Emitted,
        Err(rejection) => {
            out.clear();
            out.passed(passed);
            Outcome::Rejected(rejection)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_count_how_far_each_record_went_and_the_dashboard_chains_them() {
        let stats = Stats::default();
        let mut job = JobSpec::builtin(JobKind::KafkaIo).build(&stats);
        let mut out = Emitter::for_job(job.as_ref());
        let now = Now::current();
        let good = include_str!("../../../fixtures/website-visit.jsonl")
            .lines()
            .next()
            .unwrap();
        // Good, then not UTF-8 (no operator), then not JSON (through Decode only).
        for value in [good.as_bytes(), &[0xff, 0xfe][..], b"not json"] {
            let record = Record {
                partition: 0,
                offset: 0,
                key: None,
                value: Some(value),
                timestamp: None,
                headers: Headers::none(),
            };
            out.begin();
            let outcome = job.process(&record, now, &mut out);
            out.tally_record(&outcome);
            stats
                .read
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        stats.add_tally(&out.take_tally());
        let counts: Vec<(&str, u64, u64)> = stats
            .operator_counts(false)
            .iter()
            .map(|c| (c.label, c.records_in, c.records_out))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("read", 3, 3),
                ("decode", 3, 2),
                ("parse", 2, 1),
                ("create_messages", 1, 1),
                ("write", 1, 0),
                ("dead_letter", 0, 0),
            ]
        );
        assert!(out.take_tally().is_empty(), "taken once");
    }
}
