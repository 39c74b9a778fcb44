//! Event-time windows for any job: a [`WindowedJob`] says, per record, its grouping key,
//! its event time and its value, and how a fired window's result is written;
//! [`Windowed`] runs it as a [`Job`] with everything else: fixed windows aligned to the
//! epoch, per-partition watermarks with bounded out-of-orderness, idleness, allowed
//! lateness, the far-future bound, and the state saved with each commit (see
//! [`WindowConfig`] for the settings, and the README's "Event-time windows").
//!
//! **State saved with a commit.** A partition's position never passes the first offset an
//! open window still needs ([`Job::hold`]), and each commit's metadata says how far windows
//! had fired (`fired_through`) and where reading was (`read`). When the partition is
//! assigned again (a restart, a hand-over, an aborted transaction), events before `read`
//! whose window had fired are skipped (already counted); the others rebuild the open
//! windows, which then fire with the same values. So a window result written again carries
//! the same key and value: at least once, a compacted output ends up exact; exactly once,
//! a `read_committed` reader sees each result once.
//!
//! Limits: an event that was late in one run may be counted in a replay (or the reverse)
//! when it was out of order beyond the out-of-orderness bound, since lateness depends on
//! how the partitions interleave, as in Flink. A window's result covers the partitions one
//! instance owns: a windowed job runs one worker per process.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use super::{Emitter, Job, Now, Operator, Outcome, Record, Rejection};
use crate::pipeline::dead_letter;
use crate::windows::{Aggregate, Aggregator, Verdict, WindowConfig, WindowResult, WindowStatus};

/// How often windows are looked at (fired) on Kafka.
const FIRE_INTERVAL: Duration = Duration::from_millis(100);

/// The prefix of the commit metadata.
const METADATA_PREFIX: &str = "streamkit-windows:v1";

/// A windowed job's operators when it names none.
const KEY_AND_WINDOW: [Operator; 2] = [
    Operator::new("Key by", "key"),
    Operator::new("Window", "window"),
];

/// One record, read for its window: the key it is grouped by, its event time, and what it
/// adds to its key's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<'r, V> {
    /// The grouping key (traffic-agg: the user's `id`).
    pub key: Cow<'r, str>,
    /// The event time, epoch milliseconds: it picks the window and moves the watermark.
    pub event_ms: i64,
    /// The record's value, merged into its key's aggregate in the window.
    pub value: V,
}

/// A job over event-time windows: see the module doc.
///
/// ```
/// use std::borrow::Cow;
/// use streamkit::pipeline::job::{Keyed, Record, Rejection, WindowResult, WindowedJob};
///
/// /// Records per key in each window: the key is the record's key, the time its timestamp.
/// struct CountByKey;
///
/// impl WindowedJob for CountByKey {
///     type Value = u64;
///
///     fn key<'r>(&mut self, record: &Record<'r>) -> Result<Keyed<'r, u64>, Rejection> {
///         let key = std::str::from_utf8(record.key.unwrap_or_default())
///             .map_err(|_| Rejection::new("bad_key", "the key is not UTF-8"))?;
///         let event_ms = record
///             .timestamp
///             .ok_or_else(|| Rejection::new("no_time", "the record has no timestamp"))?;
///         Ok(Keyed { key: Cow::Borrowed(key), event_ms, value: 1 })
///     }
///
///     fn write(&self, result: &WindowResult<u64>, key: &mut Vec<u8>, value: &mut Vec<u8>) {
///         key.extend_from_slice(result.key.as_bytes());
///         value.extend_from_slice(format!("{}", result.value).as_bytes());
///     }
/// }
/// ```
pub trait WindowedJob: Send + 'static {
    /// What is aggregated per key and window (a count, totals, ...).
    type Value: Aggregate;

    /// The record's key, event time and value, or why it cannot be windowed (the runner
    /// dead-letters it with the reason).
    fn key<'r>(&mut self, record: &Record<'r>) -> Result<Keyed<'r, Self::Value>, Rejection>;

    /// Writes one fired window's result as an output record.
    fn write(&self, result: &WindowResult<Self::Value>, key: &mut Vec<u8>, value: &mut Vec<u8>);

    /// The job's operators for the dashboard, the last one the window (a record rejected
    /// by [`key`](Self::key) went through none, a late one through all but the last).
    fn operators(&self) -> &'static [Operator] {
        &KEY_AND_WINDOW
    }
}

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

/// A [`WindowedJob`] run as a [`Job`]: see the module doc.
pub struct Windowed<W: WindowedJob> {
    job: W,
    aggregator: Aggregator<W::Value>,
    /// What the committed metadata said, per owned partition.
    restored: BTreeMap<i32, Restored>,
}

impl<W: WindowedJob> Windowed<W> {
    /// `job` over the windows `config` describes.
    pub fn new(job: W, config: &WindowConfig) -> Self {
        Windowed {
            job,
            aggregator: Aggregator::new(config),
            restored: BTreeMap::new(),
        }
    }

    fn emit(&self, results: Vec<WindowResult<W::Value>>, out: &mut Emitter) {
        for result in results {
            let (key, value) = out.record();
            self.job.write(&result, key, value);
        }
    }
}

impl<W: WindowedJob> Job for Windowed<W> {
    fn process(&mut self, record: &Record<'_>, now: Now, out: &mut Emitter) -> Outcome {
        let keyed = match self.job.key(record) {
            Ok(keyed) => keyed,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        let replayed = self.restored.get(&record.partition).is_some_and(|r| {
            record.offset < r.read && self.aggregator.expiry(keyed.event_ms) <= r.fired_through
        });
        if replayed {
            // Counted (or dead-lettered) before the last commit, and its window has fired.
            return Outcome::Counted;
        }
        let verdict = self.aggregator.add_value(
            record.partition,
            record.offset,
            &keyed.key,
            keyed.event_ms,
            keyed.value,
            now,
        );
        match verdict {
            Verdict::Counted => Outcome::Counted,
            other => match dead_letter::verdict(other) {
                Some(rejection) => {
                    out.passed(self.job.operators().len().saturating_sub(1));
                    Outcome::Rejected(rejection)
                }
                None => Outcome::Counted,
            },
        }
    }

    fn operators(&self) -> &'static [Operator] {
        self.job.operators()
    }

    fn forwards_headers(&self) -> bool {
        false
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(FIRE_INTERVAL)
    }

    fn tick(&mut self, now: Now, out: &mut Emitter) {
        let results = self.aggregator.fire(now);
        self.emit(results, out);
    }

    fn finish(&mut self, out: &mut Emitter) {
        let results = self.aggregator.fire_all();
        self.emit(results, out);
    }

    fn watermarks(&self, now: Now) -> Option<WindowStatus> {
        Some(self.aggregator.status(now))
    }

    fn stateful(&self) -> bool {
        true
    }

    fn hold(&self, partition: i32) -> Option<i64> {
        self.aggregator.hold(partition)
    }

    fn save(&self, _partition: i32, read: i64) -> Option<String> {
        Some(metadata(self.aggregator.fired_through(), read))
    }

    fn assign(&mut self, partition: i32, saved: Option<&str>, now: Now) {
        self.aggregator.assign(partition, now.instant);
        if let Some(restored) = saved.and_then(parse_metadata) {
            self.aggregator.restore(restored.fired_through, now.wall_ms);
            self.restored.insert(partition, restored);
        }
    }

    fn revoke(&mut self, partition: i32) {
        self.aggregator.revoke(partition);
        self.restored.remove(&partition);
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
