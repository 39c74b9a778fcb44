//! `traffic-agg` (`traffic_agg.py`): page views per user in event-time windows (see
//! [`crate::windows`]), keyed by `{"event_id", "window_start"}`. Malformed events, events
//! without a valid time, `late` and `future` events are rejected with the reason.
//!
//! **State saved with a commit.** A partition's position never passes the first offset an
//! open window still needs ([`Job::hold`]), and each commit's metadata says how far windows
//! had fired (`fired_through`) and where reading was (`read`). When the partition is
//! assigned again (a restart, a hand-over, an aborted transaction), events before `read`
//! whose window had fired are skipped (already counted); the others rebuild the open
//! windows, which then fire with the same counts. So a window result written again carries
//! the same key and value: at least once, a compacted output ends up exact; exactly once,
//! a `read_committed` reader sees each result once.
//!
//! Limits: an event that was late in one run may be counted in a replay (or the reverse)
//! when it was out of order beyond `--max-out-of-orderness`, since lateness depends on how
//! the partitions interleave, as in Flink. Counts cover the partitions one instance owns:
//! the job runs one worker per process (see `--parallelism`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Emitter, Job, Outcome, Record, visit_stages};
use crate::pipeline::{Stats, dead_letter};
use crate::windows::{Aggregator, Now, Verdict, WindowConfig, WindowResult, event_time_ms};

/// How often windows are looked at (fired) on Kafka.
const FIRE_INTERVAL: Duration = Duration::from_millis(100);

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

pub(super) struct TrafficAgg {
    stats: Arc<Stats>,
    aggregator: Aggregator,
    /// What the committed metadata said, per owned partition.
    restored: BTreeMap<i32, Restored>,
    results: Vec<WindowResult>,
}

impl TrafficAgg {
    pub(super) fn new(windows: &WindowConfig, stats: Arc<Stats>) -> Self {
        TrafficAgg {
            stats,
            aggregator: Aggregator::new(windows),
            restored: BTreeMap::new(),
            results: Vec::new(),
        }
    }

    fn emit(results: Vec<WindowResult>, out: &mut Emitter, stats: &Stats) {
        for result in results {
            Stats::add(&stats.created);
            let (key, value) = out.record();
            result.write_key(key);
            result.write_value(value);
        }
    }
}

impl Job for TrafficAgg {
    fn process(&mut self, record: &Record<'_>, now: Now, _out: &mut Emitter) -> Outcome {
        let event = match visit_stages(record.payload, &self.stats) {
            Ok(event) => event,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        let Some(at) = event_time_ms(&event.event_datetime) else {
            return Outcome::Rejected(dead_letter::invalid_event_time(&event.event_datetime));
        };
        let replayed = self.restored.get(&record.partition).is_some_and(|r| {
            record.offset < r.read && self.aggregator.expiry(at) <= r.fired_through
        });
        if replayed {
            // Counted (or dead-lettered) before the last commit, and its window has fired.
            return Outcome::Counted;
        }
        match self
            .aggregator
            .add(record.partition, record.offset, &event.id, at, now)
        {
            Verdict::Counted => Outcome::Counted,
            other => dead_letter::verdict(other).map_or(Outcome::Counted, Outcome::Rejected),
        }
    }

    fn forwards_headers(&self) -> bool {
        false
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(FIRE_INTERVAL)
    }

    fn tick(&mut self, now: Now, out: &mut Emitter) {
        self.results = self.aggregator.fire(now);
        Self::emit(std::mem::take(&mut self.results), out, &self.stats);
    }

    fn finish(&mut self, out: &mut Emitter) {
        Self::emit(self.aggregator.fire_all(), out, &self.stats);
    }

    fn publish(&self, now: Now) {
        self.stats.set_windows(self.aggregator.status(now));
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
