//! Events encoded for a sink: JSON lines for files, `(key, value)` pairs for Kafka.
//!
//! Guarantee: the bytes are exactly what `schema::write_value` and `schema::write_key`
//! write for the same events (tested in `crate::generator` and below).

use super::dirt::{Dirt, DirtCounts};
use crate::generator::{Clock, DatetimeFormatter, EventStream, GeneratedEvent};

/// Encoded events: values as newline-terminated JSON lines, keys alongside.
#[derive(Debug, Default, Clone)]
pub struct EncodedBatch {
    lines: Vec<u8>,
    keys: Vec<u8>,
    /// Per event: end of its key in `keys`, end of its value (before `\n`) in `lines`.
    ends: Vec<(usize, usize)>,
    /// Per record: the number of its event (a duplicate shares its original's).
    indices: Vec<u64>,
    /// Formats `event_datetime`, reusing chrono's text within a second.
    datetimes: DatetimeFormatter,
    /// Spoils or doubles some events (`--bad-record-ratio`, `--duplicate-ratio`).
    dirt: Option<Dirt>,
    /// What `dirt` did to the events of this batch.
    dirt_counts: DirtCounts,
}

impl EncodedBatch {
    /// A batch whose events `dirt` spoils or doubles.
    pub fn with_dirt(dirt: Option<Dirt>) -> Self {
        EncodedBatch {
            dirt,
            ..EncodedBatch::default()
        }
    }

    pub fn clear(&mut self) {
        self.lines.clear();
        self.keys.clear();
        self.ends.clear();
        self.indices.clear();
        self.dirt_counts = DirtCounts::default();
    }

    /// Events generated into the batch: its records less the duplicates.
    pub fn generated_events(&self) -> u64 {
        (self.ends.len() as u64).saturating_sub(self.dirt_counts.duplicates)
    }

    /// What the dirt did to this batch's events since it was cleared.
    pub fn dirt_counts(&self) -> &DirtCounts {
        &self.dirt_counts
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The values as JSON lines, ready for a file.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// `(key, value)` of each event, in order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut previous = (0, 0);
        self.ends.iter().map(move |&(key_end, value_end)| {
            let record = (
                &self.keys[previous.0..key_end],
                &self.lines[previous.1..value_end],
            );
            previous = (key_end, value_end + 1);
            record
        })
    }

    /// The number of each record's event, in order (a duplicate shares its original's).
    pub fn indices(&self) -> &[u64] {
        &self.indices
    }

    /// The last value, for progress samples.
    pub fn last_value(&self) -> &[u8] {
        let start = match self.ends.len() {
            0 | 1 => 0,
            n => self.ends[n - 2].1 + 1,
        };
        let end = self.ends.last().map_or(0, |&(_, v)| v);
        &self.lines[start..end]
    }

    /// Appends event number `index`.
    fn push(&mut self, event: &GeneratedEvent<'_>, index: u64) {
        let (key_start, value_start) = (self.keys.len(), self.lines.len());
        event.write_key(&mut self.keys);
        event.write_value(&mut self.lines, &mut self.datetimes);
        let fate = self.dirt.map(|dirt| dirt.fate(index)).unwrap_or_default();
        if fate.bad.is_some() {
            let good = self.lines.split_off(value_start);
            Dirt::write_value(fate, &good, &mut self.lines);
        }
        self.dirt_counts.record(fate);
        self.ends.push((self.keys.len(), self.lines.len()));
        self.indices.push(index);
        self.lines.push(b'\n');
        if fate.duplicate {
            self.keys.extend_from_within(key_start..);
            self.lines.extend_from_within(value_start..);
            // The copy ends with the original's newline.
            self.ends.push((self.keys.len(), self.lines.len() - 1));
            self.indices.push(index);
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Appends the next `count` events of `stream` to `batch`. The wall clock is read once
/// per call: a batch is generated within a fraction of a millisecond.
pub fn encode(stream: &mut EventStream<'_>, clock: Clock, count: u64, batch: &mut EncodedBatch) {
    let mut now = None;
    for _ in 0..count {
        let index = stream.next_index();
        let base = clock.base_ms(index, || *now.get_or_insert_with(now_ms));
        batch.push(&stream.next_event(base), index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{EventSource, GeneratorConfig};
    use crate::schema;

    #[test]
    fn batch_records_split_keys_and_values() {
        let source = EventSource::new(&GeneratorConfig {
            num_users: 3,
            missing_geo_ratio: 0.5,
            max_lag_ms: 0,
            seed: 1,
            user_skew: None,
        })
        .unwrap();
        let mut batch = EncodedBatch::default();
        encode(
            &mut source.stream(0),
            Clock::Simulated {
                start_ms: 0,
                step_us: 1000,
            },
            5,
            &mut batch,
        );
        let lines: Vec<&[u8]> = batch
            .lines()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let records: Vec<_> = batch.records().collect();
        assert_eq!(records.len(), 5);
        for ((key, value), line) in records.iter().zip(&lines) {
            assert_eq!(value, line);
            let event = schema::EventLog::from_json(value).unwrap();
            let mut expected_key = Vec::new();
            schema::write_key(&event, &mut expected_key).unwrap();
            assert_eq!(*key, expected_key.as_slice());
        }
        assert_eq!(batch.last_value(), *lines.last().unwrap());
    }
}
