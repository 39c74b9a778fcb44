//! The [`Emitter`]: where a job writes its output records, and where the runner counts how
//! far each record went through the job's operators (the dashboard's chain).
//!
//! Guarantee: once warm, emitting allocates nothing; the records come back in the order
//! they were emitted.

use super::{MAX_OPERATORS, Outcome};

/// What the emitter counted since the runner last took it: per record, how many of the
/// job's operators it went through, and the records emitted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// `reached[n]`: records that went through the first `n` operators.
    pub reached: [u64; MAX_OPERATORS + 1],
    pub emitted: u64,
}

impl Tally {
    pub(crate) fn is_empty(&self) -> bool {
        self.emitted == 0 && self.reached.iter().all(|&n| n == 0)
    }
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
    /// Each packed record's timestamp, if the job gave one.
    times: Vec<Option<i64>>,
    /// The timestamp of the record being written, if the job gave one.
    time: Option<i64>,
    len: usize,
    /// How many operators the record being processed went through, if the job said.
    reached: Option<usize>,
    /// How many operators the job has (read once, not per record).
    operators: usize,
    tally: Tally,
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
            self.times.push(self.time);
        }
        self.time = None;
        self.len += 1;
        self.key.clear();
        self.value.clear();
        (&mut self.key, &mut self.value)
    }

    /// The record being written gets `ms` (epoch milliseconds) as its timestamp, rather
    /// than the time it is sent: a shuffled job's first stage stamps each record with its
    /// event time.
    pub fn timestamp(&mut self, ms: i64) {
        self.time = Some(ms);
    }

    /// The record being processed went through the first `operators` of the job's
    /// [operators](super::Job::operators) (the dashboard counts it there). Without this call, an
    /// emitted or counted record went through all of them, a dropped one through all but
    /// the last, a rejected one through none.
    pub fn passed(&mut self, operators: usize) {
        self.reached = Some(operators.min(MAX_OPERATORS));
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

    /// The records emitted since the last [`clear`](Self::clear), in order, each with the
    /// timestamp the job gave it.
    pub fn timed_records(&self) -> impl Iterator<Item = (&[u8], &[u8], Option<i64>)> {
        let last = (self.len > 0).then_some(self.time);
        self.records()
            .zip(self.times.iter().copied().chain(last))
            .map(|((key, value), time)| (key, value, time))
    }

    /// How many records were emitted since the last [`clear`](Self::clear).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was emitted since the last [`clear`](Self::clear).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the records emitted (a job that rejects a record after emitting for it).
    pub fn clear(&mut self) {
        self.len = 0;
        self.ends.clear();
        self.times.clear();
        self.time = None;
        self.packed.clear();
        if self.packed.capacity() > PACKED_KEPT {
            self.packed.shrink_to(PACKED_KEPT);
        }
    }

    /// An emitter for `job`, counting records through its operators.
    pub(crate) fn for_job(job: &dyn super::Job) -> Self {
        Emitter {
            operators: job.operators().len().min(MAX_OPERATORS),
            ..Emitter::default()
        }
    }

    /// Before the runner hands the job a record (or a tick).
    pub(crate) fn begin(&mut self) {
        self.clear();
        self.reached = None;
    }

    /// Counts the record just processed: how far it went through the job's operators, and
    /// what it emitted.
    pub(crate) fn tally_record(&mut self, outcome: &Outcome) {
        let operators = self.operators;
        let reached = self.reached.take().unwrap_or(match outcome {
            Outcome::Emitted | Outcome::Counted => operators,
            Outcome::Dropped => operators.saturating_sub(1),
            Outcome::Rejected(_) => 0,
        });
        self.tally.reached[reached.min(MAX_OPERATORS)] += 1;
        if matches!(outcome, Outcome::Emitted) {
            self.tally.emitted += self.len as u64;
        }
    }

    /// Counts what a tick or the end of the input emitted.
    pub(crate) fn tally_results(&mut self) {
        self.tally.emitted += self.len as u64;
    }

    /// What was counted since the last call.
    pub(crate) fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
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
        out.timestamp(7);
        out.record();
        assert_eq!(
            out.timed_records().map(|(_, _, t)| t).collect::<Vec<_>>(),
            vec![Some(7), None]
        );
        out.clear();
        let (key, _) = out.record();
        key.push(b'x');
        assert_eq!(
            out.records().collect::<Vec<_>>(),
            vec![(&b"x"[..], &b""[..])]
        );
    }
}
