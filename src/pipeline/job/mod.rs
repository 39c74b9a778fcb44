//! Jobs: what the pipeline does with each record, behind one trait that every runner
//! drives (the Kafka runner under either guarantee, and the file runner).
//!
//! A [`Job`] is pure: it never touches Kafka, a file or a clock. The runner hands it one
//! [`Record`] at a time and sends what it [emits](Emitter); the job answers with an
//! [`Outcome`]: its outputs were emitted, the record was counted into its state, or the
//! record is rejected (the runner dead-letters it, with the reason). A stateful job also
//! gets the hooks of Kafka Streams' `Processor` and Arroyo's operators:
//! - [`Job::tick`]: time passes (event-time windows fire);
//! - [`Job::hold`] and [`Job::save`]: the state to commit with the input positions (the
//!   position a commit may reach, and the commit's metadata);
//! - [`Job::assign`] and [`Job::revoke`]: a partition arrives with the state saved at its
//!   last commit, or leaves (after a rebalance, a restart or an aborted transaction);
//! - [`Job::finish`]: the end of a bounded input.
//!
//! Guarantee: a job is the same code in every mode; a record's outcome depends on the
//! record, the job's state and the `Now` it is given, nothing else.
//!
//! Adding a job means one file here and one arm in [`build`] (and a `--job` value).

mod kafka_io;
mod traffic_agg;
mod user_traffic;

use std::sync::Arc;
use std::time::Duration;

use super::Stats;
use crate::transform::{self, RejectKind, Rejection};
use crate::windows::Now;

/// One input record, as the runner read it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// What became of a record.
#[derive(Debug)]
pub enum Outcome {
    /// Its outputs are in the emitter (one per record for a transform).
    Emitted,
    /// Counted into the job's state: nothing to send for it now.
    Counted,
    /// It cannot be processed: the runner dead-letters it with this reason.
    Rejected(Rejection),
}

/// The records a job emits, as (key, value) pairs. The record being written has buffers of
/// its own; earlier ones are packed into one buffer. So a transform's one record is never
/// copied, a burst of window results costs a copy of their bytes and no allocation per
/// record, and nothing is allocated once warm.
#[derive(Debug, Default)]
pub struct Emitter {
    key: Vec<u8>,
    value: Vec<u8>,
    /// Earlier records' bytes: each key, then its value.
    packed: Vec<u8>,
    /// Where each packed record's key and value end.
    ends: Vec<(usize, usize)>,
    len: usize,
}

/// Packed bytes kept between rounds; a larger burst's buffer is given back (kept, a
/// burst's buffer would be faulted in again at every round).
const PACKED_KEPT: usize = 64 << 20;

impl Emitter {
    /// Empty buffers for the next record: write its key and value into them.
    pub fn record(&mut self) -> (&mut Vec<u8>, &mut Vec<u8>) {
        if self.len > 0 {
            self.packed.extend_from_slice(&self.key);
            let key_end = self.packed.len();
            self.packed.extend_from_slice(&self.value);
            self.ends.push((key_end, self.packed.len()));
        }
        self.len += 1;
        self.key.clear();
        self.value.clear();
        (&mut self.key, &mut self.value)
    }

    /// The records emitted since the last [`clear`](Self::clear), in order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        let packed = self.ends.iter().map(move |&(key_end, value_end)| {
            let record = (
                &self.packed[start..key_end],
                &self.packed[key_end..value_end],
            );
            start = value_end;
            record
        });
        let last = (self.len > 0).then_some((self.key.as_slice(), self.value.as_slice()));
        packed.chain(last)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.ends.clear();
        self.packed.clear();
        if self.packed.capacity() > PACKED_KEPT {
            self.packed.shrink_to(PACKED_KEPT);
        }
    }
}

/// A job: see the module doc. Every hook but `process` has a stateless default.
pub trait Job: Send {
    /// One record: emit its outputs, count it, or reject it.
    fn process(&mut self, record: &Record<'_>, now: Now, out: &mut Emitter) -> Outcome;

    /// Whether the outputs of `process` carry the input record's headers (a transform's
    /// do, as Kafka Streams forwards them; an aggregate's results have none).
    fn forwards_headers(&self) -> bool {
        true
    }

    /// How often the runner calls [`tick`](Self::tick); `None`: never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Time passes: emit what is due (window results).
    fn tick(&mut self, _now: Now, _out: &mut Emitter) {}

    /// The end of a bounded input: emit everything held.
    fn finish(&mut self, _out: &mut Emitter) {}

    /// Refreshes the job's part of the dashboard.
    fn publish(&self, _now: Now) {}

    /// A stateful job's state must be committed with the positions: the runner then takes
    /// a checkpoint only when every output sent has been acknowledged.
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
}

/// The jobs of the seed repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// `kafka_io.py`: parse each event and republish it (the default).
    KafkaIo,
    /// `traffic_agg.py`: page views per user in event-time windows.
    TrafficAgg(crate::windows::WindowConfig),
    /// `user_traffic.py`: page views and bytes per user, written at the end of the input.
    UserTraffic,
}

impl JobKind {
    /// The name the original gives the job (the default `--job-name`).
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::KafkaIo => "kafka-io",
            JobKind::TrafficAgg(_) => "traffic-agg",
            JobKind::UserTraffic => "user-traffic",
        }
    }

    /// Whether a record is done once counted (then `written` counts results).
    pub fn aggregates(&self) -> bool {
        !matches!(self, JobKind::KafkaIo)
    }
}

/// A fresh instance of `kind` (one per worker), counting its operators in `stats`.
pub fn build(kind: &JobKind, stats: &Arc<Stats>) -> Box<dyn Job> {
    if kind.aggregates() {
        stats.set_aggregating();
    }
    match kind {
        JobKind::KafkaIo => Box::new(kafka_io::KafkaIo::new(Arc::clone(stats))),
        JobKind::TrafficAgg(windows) => {
            Box::new(traffic_agg::TrafficAgg::new(windows, Arc::clone(stats)))
        }
        JobKind::UserTraffic => Box::new(user_traffic::UserTraffic::new(Arc::clone(stats))),
    }
}

/// Decode → Parse → Create messages, counting each operator's output in `stats`: the
/// article's transform, the same code in every mode.
pub(super) fn run_stages(
    payload: Option<&[u8]>,
    stats: &Stats,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) -> Result<(), Rejection> {
    if let Some(bytes) = payload
        && transform::pass_through(bytes, key, value)
    {
        // The fast path: the record went through all three operators.
        for counter in [&stats.decoded, &stats.parsed, &stats.created] {
            Stats::add(counter);
        }
        return Ok(());
    }
    key.clear();
    value.clear();
    transform::decode(payload)
        .inspect(|_| Stats::add(&stats.decoded))
        .and_then(transform::parse)
        .inspect(|_| Stats::add(&stats.parsed))
        .and_then(|event| transform::create_message(&event, key, value))
        .inspect(|()| Stats::add(&stats.created))
}

/// Decode → Parse for the aggregation jobs ([`transform::visit`]), counting each
/// operator's output in `stats`.
pub(super) fn visit_stages<'a>(
    payload: Option<&'a [u8]>,
    stats: &Stats,
) -> Result<transform::Visit<'a>, Rejection> {
    match transform::visit(payload) {
        Ok(visit) => {
            Stats::add(&stats.decoded);
            Stats::add(&stats.parsed);
            Ok(visit)
        }
        Err(rejection) => {
            if !matches!(rejection.kind, RejectKind::Empty | RejectKind::NotUtf8) {
                Stats::add(&stats.decoded);
            }
            Err(rejection)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emitter_gives_back_every_record_in_order_and_forgets_them_on_clear() {
        let mut out = Emitter::default();
        assert_eq!(out.records().count(), 0);
        for i in 0..3u8 {
            let (key, value) = out.record();
            key.extend_from_slice(&[b'k', i]);
            value.extend_from_slice(&[b'v', i, i]);
        }
        let records: Vec<(Vec<u8>, Vec<u8>)> = out
            .records()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(
            records,
            (0..3u8)
                .map(|i| (vec![b'k', i], vec![b'v', i, i]))
                .collect::<Vec<_>>()
        );
        assert_eq!(out.len(), 3);
        out.clear();
        assert!(out.is_empty());
        assert_eq!(out.records().count(), 0);
        let (key, _) = out.record();
        key.push(b'x');
        assert_eq!(
            out.records().collect::<Vec<_>>(),
            vec![(&b"x"[..], &b""[..])]
        );
    }
}
