//! Events encoded for a sink: JSON lines for files, `(key, value)` pairs for Kafka.
//!
//! Guarantee: the bytes are exactly what `schema::write_value` and `schema::write_key`
//! write for the same events (tested in `crate::generator` and below).

use crate::generator::{Clock, DatetimeFormatter, EventStream, GeneratedEvent};

/// Encoded events: values as newline-terminated JSON lines, keys alongside.
#[derive(Debug, Default, Clone)]
pub struct EncodedBatch {
    lines: Vec<u8>,
    keys: Vec<u8>,
    /// Per event: end of its key in `keys`, end of its value (before `\n`) in `lines`.
    ends: Vec<(usize, usize)>,
    /// Formats `event_datetime`, reusing chrono's text within a second.
    datetimes: DatetimeFormatter,
}

impl EncodedBatch {
    pub fn clear(&mut self) {
        self.lines.clear();
        self.keys.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
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

    /// The last value, for progress samples.
    pub fn last_value(&self) -> &[u8] {
        let start = match self.ends.len() {
            0 | 1 => 0,
            n => self.ends[n - 2].1 + 1,
        };
        let end = self.ends.last().map_or(0, |&(_, v)| v);
        &self.lines[start..end]
    }

    fn push(&mut self, event: &GeneratedEvent<'_>) {
        event.write_key(&mut self.keys);
        event.write_value(&mut self.lines, &mut self.datetimes);
        self.ends.push((self.keys.len(), self.lines.len()));
        self.lines.push(b'\n');
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
        let base = clock.base_ms(stream.next_index(), || *now.get_or_insert_with(now_ms));
        batch.push(&stream.next_event(base));
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
