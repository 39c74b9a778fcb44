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
//! **Two stages on Kafka** ([`Stage`]), as Kafka Streams' `groupBy` runs: the first stage
//! reads the input and writes each record, keyed by its grouping key and stamped with its
//! event time, to the repartition topic; the second reads that topic and keeps the windows.
//! Each key hashes to one repartition partition, so its windows live in one instance,
//! whatever the number of workers and processes.
//!
//! **Watermarks through the shuffle**, as Flink carries them, in records: a repartition
//! partition receives events from every input partition, so its own records cannot say
//! how far the input has got. Each first-stage instance tracks each input partition it
//! reads as a single-stage job would (its latest event time less the out-of-orderness, and
//! how long it has been quiet; a `future` event is dead-lettered there and moves nothing),
//! and writes that, per partition, as a *mark* (a null-keyed record, [`MARK_PREFIX`]) to
//! every repartition partition: at each tick while records come, every [`MARK_REPEAT`]
//! when none do. A mark follows, in its partition, every record the same instance wrote
//! before it. A second-stage instance keeps, per repartition partition it reads, the latest
//! mark of each input partition, and combines them exactly as one instance reading the
//! whole input would (the minimum over the partitions not idle, idleness, the clock
//! ceiling), taking the lowest over its repartition partitions. Nothing fires until every
//! input partition has been heard of. A mark's silence counts as it was sent: an input
//! partition is idle only when its reader said so, and one whose reader dies or stalls
//! holds the watermark where its last mark left it until its next reader says more (as
//! Flink's idleness is declared by the source, never guessed downstream). So a window
//! fires only when no input partition can still send it an event within the bound,
//! whichever instance reads it, and a partition that changes hands carries no other
//! partition's progress with it.
//!
//! Limits: an event that was late in one run may be counted in a replay (or the reverse)
//! when it was out of order beyond the out-of-orderness bound, since lateness depends on
//! how the partitions interleave, as in Flink. In one stage ([`Stage::Whole`]), a window's
//! result covers the partitions one instance owns, so it runs one worker per process.
//! Across the shuffle at least once, a record that the first stage writes again after a
//! crash is known by its input position ([`SOURCE_HEADER`]) and dropped; only when the
//! positions saved with a commit outgrow the 3,000 bytes kept (about 200 input
//! partitions) is a copy of a fired window's record dead-lettered as `late` instead.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{Emitter, Job, Now, Operator, Outcome, Record, Rejection, Stage};
use crate::pipeline::dead_letter;
use crate::windows::{
    Aggregate, Aggregator, SourceMark, Verdict, WindowConfig, WindowResult, WindowStatus,
};

/// How often windows are looked at (fired) on Kafka.
const FIRE_INTERVAL: Duration = Duration::from_millis(100);

/// The prefix of the commit metadata.
const METADATA_PREFIX: &str = "streamkit-windows:v1";

/// The value of a watermark mark starts so; then, comma-separated, one entry per input
/// partition: `<partition>:<watermark ms, or - before its first event>:<ms quiet>` (see the
/// module doc). Its key is null.
pub const MARK_PREFIX: &str = "streamkit-watermark:v1:";

/// A first-stage instance writes its mark at every tick while records come, and this often
/// when none do, so that a second stage that starts over from its committed position learns
/// it soon.
pub const MARK_REPEAT: Duration = Duration::from_secs(1);

/// Most input partitions a mark may name (a hostile record cannot make a large map).
const MARK_MAX_PARTITIONS: usize = 100_000;

fn write_mark(marks: &[(i32, SourceMark)]) -> Vec<u8> {
    let mut text = String::from(MARK_PREFIX);
    for (i, (partition, mark)) in marks.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(itoa::Buffer::new().format(*partition));
        text.push(':');
        match mark.watermark_ms {
            Some(ms) => text.push_str(itoa::Buffer::new().format(ms)),
            None => text.push('-'),
        }
        text.push(':');
        let quiet = u64::try_from(mark.quiet.as_millis()).unwrap_or(u64::MAX);
        text.push_str(itoa::Buffer::new().format(quiet));
    }
    text.into_bytes()
}

/// A mark's entries, or `None` when `value` is not one (or names a partition outside
/// `0..upstream`).
fn parse_mark(value: &[u8], upstream: i32) -> Option<Vec<(i32, SourceMark)>> {
    let text = std::str::from_utf8(value).ok()?.strip_prefix(MARK_PREFIX)?;
    text.split(',')
        .take(MARK_MAX_PARTITIONS)
        .map(|entry| {
            let mut fields = entry.split(':');
            let partition = fields
                .next()?
                .parse::<i32>()
                .ok()
                .filter(|p| (0..upstream).contains(p))?;
            let watermark_ms = match fields.next()? {
                "-" => None,
                ms => Some(ms.parse::<i64>().ok()?),
            };
            let quiet = Duration::from_millis(fields.next()?.parse::<u64>().ok()?);
            fields.next().is_none().then_some((
                partition,
                SourceMark {
                    watermark_ms,
                    quiet,
                },
            ))
        })
        .collect()
}

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
/// `read` had been processed; [`Stage::Aggregate`]: the furthest input position counted
/// from each input partition (see [`SOURCE_HEADER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Restored {
    fired_through: i64,
    read: i64,
    sources: BTreeMap<i32, i64>,
}

/// Longest commit metadata written: Kafka's `offset.metadata.max.bytes` defaults to 4,096.
/// Past it, the input positions counted are left out (a replay after a crash then
/// dead-letters duplicates of fired windows as `late` rather than knowing them).
const METADATA_MAX_BYTES: usize = 3_000;

/// `<prefix>:<fired_through>:<read>`, then `:<partition>.<offset>,...` when `sources` has
/// any (older versions read the first three fields and ignore the rest).
fn metadata(fired_through: i64, read: i64, sources: &BTreeMap<i32, i64>) -> String {
    let mut text = format!("{METADATA_PREFIX}:{fired_through}:{read}");
    if !sources.is_empty() {
        let mut list = String::new();
        for (i, (partition, offset)) in sources.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(&format!("{partition}.{offset}"));
        }
        if text.len() + 1 + list.len() <= METADATA_MAX_BYTES {
            text.push(':');
            text.push_str(&list);
        }
    }
    text
}

fn parse_metadata(text: &str) -> Option<Restored> {
    let mut parts = text
        .strip_prefix(METADATA_PREFIX)?
        .strip_prefix(':')?
        .split(':');
    let fired_through = parts.next()?.parse().ok()?;
    let read = parts.next()?.parse().ok()?;
    // A list that does not parse is ignored (the fields before it still hold).
    let sources = parts
        .next()
        .and_then(|list| {
            list.split(',')
                .map(|entry| {
                    let (partition, offset) = entry.split_once('.')?;
                    Some((partition.parse().ok()?, offset.parse().ok()?))
                })
                .collect::<Option<BTreeMap<i32, i64>>>()
        })
        .unwrap_or_default();
    Some(Restored {
        fired_through,
        read,
        sources,
    })
}

/// The header a first-stage record carries: the input partition and offset it came from,
/// big-endian (4 and 8 bytes). The second stage counts each input position once: a record
/// the first stage writes again after a crash (at least once) comes from a position at or
/// before one already counted from that partition, and is dropped as a duplicate.
pub const SOURCE_HEADER: &str = "streamkit-source";

/// A [`SOURCE_HEADER`] value.
pub(crate) fn source_header(partition: i32, offset: i64) -> [u8; 12] {
    let mut bytes = [0; 12];
    bytes[..4].copy_from_slice(&partition.to_be_bytes());
    bytes[4..].copy_from_slice(&offset.to_be_bytes());
    bytes
}

fn parse_source(bytes: &[u8]) -> Option<(i32, i64)> {
    let partition = i32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let offset = i64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
    (bytes.len() == 12).then_some((partition, offset))
}

/// [`Stage::Aggregate`]: per repartition partition, the furthest input position counted
/// from each input partition: as the last commit saved it, and as read since.
#[derive(Debug, Default)]
struct Sources {
    restored: BTreeMap<i32, i64>,
    seen: BTreeMap<i32, i64>,
}

impl Sources {
    /// Whether input position `(partition, offset)` was counted before. A record of the
    /// replay before the committed `read` is checked only against the replay itself (the
    /// saved positions cover it); a later one against both.
    fn counted(&self, (partition, offset): (i32, i64), replaying: bool) -> bool {
        let seen = self.seen.get(&partition).copied();
        let restored = if replaying {
            None
        } else {
            self.restored.get(&partition).copied()
        };
        seen.max(restored).is_some_and(|max| offset <= max)
    }

    fn note(&mut self, (partition, offset): (i32, i64)) {
        let max = self.seen.entry(partition).or_insert(offset);
        *max = (*max).max(offset);
    }

    /// What a commit saves.
    fn furthest(&self) -> BTreeMap<i32, i64> {
        let mut all = self.restored.clone();
        for (&partition, &offset) in &self.seen {
            let max = all.entry(partition).or_insert(offset);
            *max = (*max).max(offset);
        }
        all
    }
}

/// A [`WindowedJob`] run as a [`Job`]: see the module doc.
pub struct Windowed<W: WindowedJob> {
    job: W,
    aggregator: Aggregator<W::Value>,
    /// What the committed metadata said, per owned partition.
    restored: BTreeMap<i32, Restored>,
    stage: Stage,
    /// [`Stage::Repartition`]: the input partitions this instance reads.
    owned: BTreeSet<i32>,
    /// [`Stage::Repartition`]: a record came (or a partition came or went) since the last
    /// mark.
    moved: bool,
    /// [`Stage::Repartition`]: when the last mark was made.
    said_at: Option<Instant>,
    /// [`Stage::Aggregate`]: per repartition partition read, each input partition's latest
    /// mark.
    marks: BTreeMap<i32, BTreeMap<i32, SourceMark>>,
    /// [`Stage::Aggregate`]: per repartition partition read, the input positions counted.
    sources: BTreeMap<i32, Sources>,
}

impl<W: WindowedJob> Windowed<W> {
    /// `job` over the windows `config` describes.
    pub fn new(job: W, config: &WindowConfig) -> Self {
        Windowed {
            job,
            aggregator: Aggregator::new(config),
            restored: BTreeMap::new(),
            stage: Stage::Whole,
            owned: BTreeSet::new(),
            moved: false,
            said_at: None,
            marks: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }

    /// [`Stage::Repartition`]: the record, keyed by its grouping key and stamped with its
    /// event time, for the repartition topic; its value as it came.
    fn repartition(&mut self, record: &Record<'_>, now: Now, out: &mut Emitter) -> Outcome {
        let keyed = match self.job.key(record) {
            Ok(keyed) => keyed,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        if let Err(verdict) = self
            .aggregator
            .observe(record.partition, keyed.event_ms, now)
            && let Some(rejection) = dead_letter::verdict(verdict)
        {
            out.passed(self.job.operators().len().saturating_sub(1));
            return Outcome::Rejected(rejection);
        }
        self.moved = true;
        let (key, value) = out.record();
        key.extend_from_slice(keyed.key.as_bytes());
        value.extend_from_slice(record.value.unwrap_or_default());
        out.timestamp(keyed.event_ms);
        Outcome::Emitted
    }

    fn emit(&self, results: Vec<WindowResult<W::Value>>, out: &mut Emitter) {
        for result in results {
            let (key, value) = out.record();
            self.job.write(&result, key, value);
        }
    }

    /// [`Stage::Aggregate`]: per repartition partition read, the watermark of the whole
    /// input as the marks on that partition say (combined as one instance reading every
    /// input partition would combine them); a partition whose marks do not yet cover every
    /// input partition has none. A mark's silence counts as it was sent, never grown by the
    /// mark's age: marks that stop coming (their first-stage instance killed or stalled)
    /// say nothing of the input, and hold the watermark where they left it.
    fn upstream_watermarks(&self, upstream: i32) -> Vec<(i32, i64)> {
        self.marks
            .iter()
            .filter_map(|(&partition, marks)| {
                let heard = (0..upstream)
                    .map(|input| marks.get(&input).copied())
                    .collect::<Option<Vec<SourceMark>>>()?;
                Some((partition, self.aggregator.combine(heard)?))
            })
            .collect()
    }
}

impl<W: WindowedJob> Job for Windowed<W> {
    fn process(&mut self, record: &Record<'_>, now: Now, out: &mut Emitter) -> Outcome {
        match self.stage {
            Stage::Repartition => return self.repartition(record, now, out),
            Stage::Aggregate { upstream } if record.key.is_none() => {
                if let Some(entries) = record.value.and_then(|v| parse_mark(v, upstream)) {
                    let marks = self.marks.entry(record.partition).or_default();
                    marks.extend(entries);
                    // A mark is no event: it goes through no operator.
                    out.passed(0);
                    return Outcome::Dropped;
                }
            }
            Stage::Aggregate { .. } => {
                let source = record
                    .headers
                    .get(SOURCE_HEADER)
                    .flatten()
                    .and_then(parse_source);
                if let Some(source) = source {
                    let replaying = self
                        .restored
                        .get(&record.partition)
                        .is_some_and(|r| record.offset < r.read);
                    let sources = self.sources.entry(record.partition).or_default();
                    if sources.counted(source, replaying) {
                        // Written again by the first stage after a crash: counted once.
                        out.passed(0);
                        return Outcome::Dropped;
                    }
                    sources.note(source);
                }
            }
            Stage::Whole => {}
        }
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
        let results = match self.stage {
            Stage::Whole => self.aggregator.fire(now),
            Stage::Repartition => return,
            Stage::Aggregate { upstream } => {
                // Each repartition partition fires at its own watermark: a key lives in one.
                let mut results = Vec::new();
                for (partition, watermark) in self.upstream_watermarks(upstream) {
                    results.extend(self.aggregator.fire_partition_at(partition, watermark, now));
                }
                results
            }
        };
        self.emit(results, out);
    }

    fn finish(&mut self, out: &mut Emitter) {
        if self.stage == Stage::Repartition {
            return;
        }
        let results = self.aggregator.fire_all();
        self.emit(results, out);
    }

    fn watermarks(&self, now: Now) -> Option<WindowStatus> {
        Some(self.aggregator.status(now))
    }

    fn stateful(&self) -> bool {
        self.stage != Stage::Repartition
    }

    fn hold(&self, partition: i32) -> Option<i64> {
        self.aggregator.hold(partition)
    }

    fn save(&self, partition: i32, read: i64) -> Option<String> {
        let sources = self
            .sources
            .get(&partition)
            .map(Sources::furthest)
            .unwrap_or_default();
        let fired_through = match self.stage {
            Stage::Whole => self.aggregator.fired_through(),
            Stage::Aggregate { .. } => self.aggregator.fired_through_of(partition),
            Stage::Repartition => return None,
        };
        Some(metadata(fired_through, read, &sources))
    }

    fn assign(&mut self, partition: i32, saved: Option<&str>, now: Now) {
        self.aggregator.assign(partition, now.instant);
        match self.stage {
            Stage::Repartition => {
                self.owned.insert(partition);
                self.moved = true;
                return;
            }
            Stage::Aggregate { .. } => {
                self.marks.entry(partition).or_default();
            }
            Stage::Whole => {}
        }
        if let Some(restored) = saved.and_then(parse_metadata) {
            if let Stage::Aggregate { .. } = self.stage {
                self.aggregator
                    .restore_partition(partition, restored.fired_through, now);
                self.sources.insert(
                    partition,
                    Sources {
                        restored: restored.sources.clone(),
                        seen: BTreeMap::new(),
                    },
                );
            } else {
                self.aggregator.restore(restored.fired_through, now.wall_ms);
            }
            self.restored.insert(partition, restored);
        }
    }

    fn revoke(&mut self, partition: i32) {
        self.aggregator.revoke(partition);
        self.restored.remove(&partition);
        if self.owned.remove(&partition) {
            self.moved = true;
        }
        self.marks.remove(&partition);
        self.sources.remove(&partition);
    }

    fn grouped(&self) -> bool {
        true
    }

    fn set_stage(&mut self, stage: Stage) {
        self.stage = stage;
        if let Stage::Aggregate { .. } = stage {
            self.aggregator.per_partition();
        }
    }

    fn broadcast(&mut self, now: Now) -> Option<Vec<u8>> {
        if self.stage != Stage::Repartition || self.owned.is_empty() {
            return None;
        }
        let due = self.moved
            || self
                .said_at
                .is_none_or(|at| now.instant.saturating_duration_since(at) >= MARK_REPEAT);
        if !due {
            return None;
        }
        self.moved = false;
        self.said_at = Some(now.instant);
        Some(write_mark(&self.aggregator.partition_marks(now.instant)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips_and_foreign_metadata_is_ignored() {
        let none = BTreeMap::new();
        assert_eq!(
            parse_metadata(&metadata(1_714_283_480_000, 42, &none)),
            Some(Restored {
                fired_through: 1_714_283_480_000,
                read: 42,
                sources: none.clone(),
            })
        );
        assert_eq!(
            parse_metadata(&metadata(i64::MIN, 0, &none)).map(|r| r.fired_through),
            Some(i64::MIN)
        );
        // The second stage's input positions ride along; older metadata has none, and a
        // list that does not parse is dropped without the rest.
        let sources = BTreeMap::from([(0, 17), (5, 1_000_000)]);
        let text = metadata(7, 9, &sources);
        assert_eq!(text, "streamkit-windows:v1:7:9:0.17,5.1000000");
        assert_eq!(parse_metadata(&text).map(|r| r.sources), Some(sources));
        assert_eq!(
            parse_metadata("streamkit-windows:v1:7:9:0.x").map(|r| (r.read, r.sources)),
            Some((9, none.clone()))
        );
        // Too many to fit Kafka's metadata limit: left out.
        let many: BTreeMap<i32, i64> = (0..1_000).map(|p| (p, i64::MAX)).collect();
        assert!(metadata(7, 9, &many).len() <= METADATA_MAX_BYTES);
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

/// A windowed job for the tests: records per key, the key being the record's key and the
/// time its timestamp.
#[cfg(test)]
pub(crate) mod test_job {
    use super::*;

    pub(crate) struct CountByKey;

    impl WindowedJob for CountByKey {
        type Value = u64;

        fn key<'r>(&mut self, record: &Record<'r>) -> Result<Keyed<'r, u64>, Rejection> {
            let key = record
                .key
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(|| Rejection::new("no_key", "a record needs a UTF-8 key"))?;
            let event_ms = record
                .timestamp
                .ok_or_else(|| Rejection::new("no_time", "no timestamp"))?;
            Ok(Keyed {
                key: Cow::Borrowed(key),
                event_ms,
                value: 1,
            })
        }

        fn write(&self, result: &WindowResult<u64>, key: &mut Vec<u8>, value: &mut Vec<u8>) {
            key.extend_from_slice(format!("{}@{}", result.key, result.start_ms).as_bytes());
            value.extend_from_slice(result.value.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
mod stage_tests {
    use super::super::Headers;
    use super::*;

    use super::test_job::CountByKey;

    fn config() -> WindowConfig {
        WindowConfig {
            size: Duration::from_secs(10),
            max_out_of_orderness: Duration::from_secs(1),
            ..WindowConfig::default()
        }
    }

    /// The start of the window (of `config`'s 10 s) a minute before `now`: events there are
    /// behind the clock, so no bound on event time touches them.
    fn a_minute_ago(now: Now) -> i64 {
        now.wall_ms - now.wall_ms.rem_euclid(10_000) - 60_000
    }

    fn staged(stage: Stage) -> Windowed<CountByKey> {
        let mut job = Windowed::new(CountByKey, &config());
        job.set_stage(stage);
        job
    }

    fn record<'a>(
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        value: &'a [u8],
        ms: i64,
    ) -> Record<'a> {
        Record {
            partition,
            offset,
            key,
            value: Some(value),
            timestamp: Some(ms),
            headers: Headers::none(),
        }
    }

    type Written = Vec<(Vec<u8>, Vec<u8>, Option<i64>)>;

    fn taken(out: &Emitter) -> Written {
        out.timed_records()
            .map(|(k, v, t)| (k.to_vec(), v.to_vec(), t))
            .collect()
    }

    #[test]
    fn marks_round_trip_and_a_hostile_one_is_no_mark() {
        let entries = vec![
            (
                0,
                SourceMark {
                    watermark_ms: Some(1_700_000_000_000),
                    quiet: Duration::from_millis(250),
                },
            ),
            (
                5,
                SourceMark {
                    watermark_ms: None,
                    quiet: Duration::ZERO,
                },
            ),
        ];
        let mark = write_mark(&entries);
        assert_eq!(parse_mark(&mark, 6), Some(entries));
        // A partition the input does not have, or anything else, is no mark.
        assert_eq!(parse_mark(&mark, 5), None);
        for other in [
            &b""[..],
            b"streamkit-watermark:v1:",
            b"streamkit-watermark:v1:0:x:1",
            b"streamkit-watermark:v1:-1:5:0",
            b"streamkit-watermark:v1:0:5:0:9",
            b"streamkit-watermark:v1:0:5",
            b"{}",
        ] {
            assert_eq!(
                parse_mark(other, 6),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn two_stages_give_the_results_of_one_and_fire_only_once_every_input_partition_has_passed() {
        let start = Now::current();
        let base = a_minute_ago(start);
        // Two input partitions; user "a" on both, "b" on partition 1 only.
        let events: [(i32, &str, i64); 6] = [
            (0, "a", base + 1_000),
            (1, "a", base + 2_000),
            (1, "b", base + 3_000),
            (0, "a", base + 12_000),
            (1, "b", base + 11_000),
            (0, "a", base + 25_000),
        ];
        // One stage, for reference.
        let mut whole = staged(Stage::Whole);
        let mut out = Emitter::default();
        for p in [0, 1] {
            whole.assign(p, None, start);
        }
        for (offset, (p, key, ms)) in events.iter().enumerate() {
            out.begin();
            let outcome = whole.process(
                &record(*p, offset as i64, Some(key.as_bytes()), b"v", *ms),
                start,
                &mut out,
            );
            assert!(matches!(outcome, Outcome::Counted), "{outcome:?}");
        }
        out.begin();
        whole.finish(&mut out);
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            taken(&out).into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!(expected.len(), 5, "{expected:?}");

        // Stage 1: two instances, one input partition each; each record is written keyed
        // by its grouping key and stamped with its event time.
        let mut firsts = [staged(Stage::Repartition), staged(Stage::Repartition)];
        for (p, first) in firsts.iter_mut().enumerate() {
            first.assign(p as i32, None, start);
            assert!(!first.stateful(), "stage 1 keeps no state to commit");
        }
        let mut shuffled: Vec<(Vec<u8>, Vec<u8>, Option<i64>)> = Vec::new();
        for (offset, (p, key, ms)) in events.iter().enumerate() {
            out.begin();
            let input = record(*p, offset as i64, Some(key.as_bytes()), b"v", *ms);
            let outcome = firsts[*p as usize].process(&input, start, &mut out);
            assert!(matches!(outcome, Outcome::Emitted), "{outcome:?}");
            let written = taken(&out);
            assert_eq!(
                written,
                vec![(key.as_bytes().to_vec(), b"v".to_vec(), Some(*ms))]
            );
            shuffled.extend(written);
        }
        // A far-future event is dead-lettered in stage 1 and moves no mark.
        out.begin();
        let poison = record(0, 99, Some(b"a"), b"v", start.wall_ms + 10 * 3_600_000);
        assert!(matches!(
            firsts[0].process(&poison, start, &mut out),
            Outcome::Rejected(_)
        ));

        // Stage 2 (one repartition partition here, upstream 2): the data, then only
        // partition 0's mark: nothing fires, partition 1 has not said.
        let mut second = staged(Stage::Aggregate { upstream: 2 });
        second.assign(0, None, start);
        let mut offset = 0;
        let mut feed =
            |second: &mut Windowed<CountByKey>, key: Option<&[u8]>, value: &[u8], ms: i64| {
                let mut out = Emitter::default();
                out.begin();
                let outcome = second.process(&record(0, offset, key, value, ms), start, &mut out);
                offset += 1;
                outcome
            };
        for (key, value, ms) in &shuffled {
            assert!(matches!(
                feed(&mut second, Some(key), value, ms.unwrap()),
                Outcome::Counted
            ));
        }
        let mark0 = firsts[0].broadcast(start).expect("a mark");
        assert_eq!(
            parse_mark(&mark0, 2),
            Some(vec![(
                0,
                SourceMark {
                    watermark_ms: Some(base + 24_000),
                    quiet: Duration::ZERO
                }
            )])
        );
        assert!(
            firsts[0].broadcast(start).is_none(),
            "nothing new: said once"
        );
        assert!(matches!(
            feed(&mut second, None, &mark0, 0),
            Outcome::Dropped
        ));
        out.begin();
        second.tick(start, &mut out);
        assert!(out.is_empty(), "partition 1 has not said how far it got");
        // Partition 1's mark (base + 10 s): the first window (ending at base + 10 s) fires.
        let mark1 = firsts[1].broadcast(start).expect("a mark");
        assert!(matches!(
            feed(&mut second, None, &mark1, 0),
            Outcome::Dropped
        ));
        out.begin();
        second.tick(start, &mut out);
        let fired: Vec<(Vec<u8>, Vec<u8>)> =
            taken(&out).into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!(fired, expected[..2].to_vec());
        // The rest at the end of the input: together, the results of one stage.
        out.begin();
        second.finish(&mut out);
        let rest: Vec<(Vec<u8>, Vec<u8>)> =
            taken(&out).into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!([fired, rest].concat(), expected);
        // The same mark again after MARK_REPEAT.
        assert!(firsts[1].broadcast(start.after(MARK_REPEAT)).is_some());
    }

    #[test]
    fn marks_that_stop_coming_hold_the_watermark_and_only_a_mark_says_idle() {
        let start = Now::current();
        let base = a_minute_ago(start);
        let mut second = staged(Stage::Aggregate { upstream: 2 });
        second.assign(0, None, start);
        let mut offset = 0;
        let mut feed = |second: &mut Windowed<CountByKey>, key: Option<&[u8]>, value: &[u8]| {
            let mut out = Emitter::default();
            out.begin();
            second.process(
                &record(0, offset, key, value, base + 1_000),
                start,
                &mut out,
            );
            offset += 1;
        };
        let mark = |partition: i32, watermark_ms: i64, quiet: Duration| {
            write_mark(&[(
                partition,
                SourceMark {
                    watermark_ms: Some(watermark_ms),
                    quiet,
                },
            )])
        };
        let fired = |second: &mut Windowed<CountByKey>, now: Now| {
            let mut out = Emitter::default();
            out.begin();
            second.tick(now, &mut out);
            taken(&out).len()
        };
        feed(&mut second, Some(b"a"), b"v");
        // Partition 0 is far ahead; partition 1's reader is busy at base + 2 s, then dies.
        feed(&mut second, None, &mark(0, base + 30_000, Duration::ZERO));
        feed(&mut second, None, &mark(1, base + 2_000, Duration::ZERO));
        assert_eq!(fired(&mut second, start), 0);
        // Long past the idle timeout, its last mark still says busy: nothing fires.
        let later = start.after(config().idle_timeout * 3);
        assert_eq!(
            fired(&mut second, later),
            0,
            "a silent reader is no idle input"
        );
        // Its next reader says the partition has been quiet past the timeout: it is idle.
        let idle = config().idle_timeout + Duration::from_secs(1);
        feed(&mut second, None, &mark(1, base + 2_000, idle));
        assert_eq!(fired(&mut second, later), 1);
    }

    fn sourced<'a>(
        offset: i64,
        key: &'a [u8],
        ms: i64,
        source: &'a [(String, Option<Vec<u8>>)],
    ) -> Record<'a> {
        Record {
            partition: 0,
            offset,
            key: Some(key),
            value: Some(b"v"),
            timestamp: Some(ms),
            headers: Headers::from_list(source),
        }
    }

    fn source(partition: i32, offset: i64) -> Vec<(String, Option<Vec<u8>>)> {
        vec![(
            SOURCE_HEADER.to_string(),
            Some(source_header(partition, offset).to_vec()),
        )]
    }

    #[test]
    fn the_second_stage_counts_each_input_position_once_across_a_crash_of_either_stage() {
        let now = Now::current();
        let base = a_minute_ago(now);
        let mut second = staged(Stage::Aggregate { upstream: 1 });
        second.assign(0, None, now);
        let mut out = Emitter::default();
        let mut feed = |job: &mut Windowed<CountByKey>, offset: i64, input: i64| {
            let header = source(3, input);
            out.begin();
            job.process(&sourced(offset, b"a", base + 1_000, &header), now, &mut out)
        };
        for (offset, input) in [(0, 10), (1, 11), (2, 12)] {
            assert!(matches!(feed(&mut second, offset, input), Outcome::Counted));
        }
        // The first stage crashed and wrote input 11 and 12 again: dropped.
        for (offset, input) in [(3, 11), (4, 12)] {
            assert!(matches!(feed(&mut second, offset, input), Outcome::Dropped));
        }
        assert!(matches!(feed(&mut second, 5, 13), Outcome::Counted));
        // A commit saves how far each input partition was counted; the window is open, so
        // the commit is held at its first offset.
        assert_eq!(second.hold(0), Some(0));
        let saved = second.save(0, 6).unwrap();
        // The second stage crashed too: its replay from offset 0 counts the window again,
        // the first stage's copies still once, and a copy written after the commit too.
        let mut again = staged(Stage::Aggregate { upstream: 1 });
        again.assign(0, Some(&saved), now);
        let outcomes: Vec<bool> = [
            (0, 10),
            (1, 11),
            (2, 12),
            (3, 11),
            (4, 12),
            (5, 13),
            (6, 12),
            (7, 14),
        ]
        .into_iter()
        .map(|(offset, input)| matches!(feed(&mut again, offset, input), Outcome::Counted))
        .collect();
        assert_eq!(
            outcomes,
            [true, true, true, false, false, true, false, true]
        );
        out.begin();
        again.finish(&mut out);
        assert_eq!(
            taken(&out)
                .into_iter()
                .map(|(_, v, _)| v)
                .collect::<Vec<_>>(),
            vec![b"5".to_vec()],
            "inputs 10 to 14, once each"
        );
    }
}
