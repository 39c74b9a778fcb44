//! Event-time windows: the pure core of every windowed job (`traffic-agg`'s page views per
//! user, or a `WindowedJob` of one's own): values merged per key in fixed windows aligned
//! to the epoch, watermarks, and when windows fire. No I/O: the pipeline's runners feed
//! records in and write what comes out.
//!
//! **Time.** An event's time is its `event_datetime`, read as UTC (the original parses it
//! as local time, which is only right on a machine set to UTC).
//!
//! **Watermarks.** Each input partition's watermark is the latest event time it has shown,
//! less the bounded out-of-orderness. The job's watermark is the minimum over the
//! partitions that are not idle (no record for longer than the idle timeout). When every
//! partition is idle, event time is taken to move on with the wall clock: the watermark is
//! the maximum over the partitions of their watermark plus their silence (Beam's
//! limited-delay policy advances a caught-up reader's watermark with the clock), so a
//! quiet input closes all its windows and its committed positions reach its ends. It never
//! goes back.
//!
//! **Event time is data, and bounded.** No single event can hijack the watermark:
//! - an event more than [`WindowConfig::max_event_time_ahead`] past the wall clock is
//!   refused ([`Verdict::Future`]: the caller dead-letters it as `future`); it moves no
//!   watermark and opens no window, so it pins no committed position;
//! - the job's watermark never passes the wall clock less the out-of-orderness (as Beam's
//!   `CustomTimestampPolicyWithLimitedDelay`), idle partitions or not. An event within the
//!   bound but ahead of the clock opens a window that fires when the clock gets there;
//!   events stamped now are never made late by it;
//! - a restored `fired_through` (a commit's metadata) is capped at the wall clock.
//!
//! A replay of old data is untouched by both bounds: its event times are behind the clock.
//!
//! **Firing.** One result per window and user, when the job's watermark passes the
//! window's end plus the allowed lateness (Beam's default trigger, with the allowed
//! lateness spent waiting rather than firing again). An event for a window already fired
//! is late: the caller dead-letters it, and it is counted in [`WindowStatus::late`].
//!
//! **State** is kept per input partition, so that a revoked partition's share can be
//! dropped and rebuilt by its next owner, and merged across the partitions of this process
//! when a window fires. It grows with open windows × users, not with input. The offsets
//! that open windows still need ([`Aggregator::hold`]) bound what the caller may commit.
//!
//! A window's count covers the partitions one aggregator reads. It is exact when all of a
//! key's events are in those partitions: one aggregator reading the whole input (files,
//! `--no-repartition` with one process), or an input keyed by the grouping key, which on
//! Kafka the repartition topic makes of any input (`crate::pipeline::job::Stage`). There,
//! the watermark comes from upstream marks ([`Aggregator::partition_marks`] sent,
//! [`Aggregator::combine`] applied) rather than from the aggregator's own partitions, and
//! each partition fires at its own ([`Aggregator::per_partition`]).
//!
//! Event time read from text, and window bounds written as text, are in `time`.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

mod time;

pub use time::{event_time_ms, format_time};

/// The traffic-agg job's windows and watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Fixed window size (default 20 s, as in the original).
    pub size: Duration,
    /// How far behind the latest event time of a partition an event may be and still
    /// count (default 5 s).
    pub max_out_of_orderness: Duration,
    /// How long after a window's end (in event time) it still takes events (default 0).
    pub allowed_lateness: Duration,
    /// A partition with no record for this long does not hold the watermark back.
    pub idle_timeout: Duration,
    /// An event whose time is further than this past the wall clock is refused as
    /// `future` (default 1 h).
    pub max_event_time_ahead: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size: Duration::from_secs(20),
            max_out_of_orderness: Duration::from_secs(5),
            allowed_lateness: Duration::ZERO,
            idle_timeout: Duration::from_secs(10),
            max_event_time_ahead: Duration::from_secs(3600),
        }
    }
}

/// When something happens: a monotonic instant (idleness) and the wall clock in epoch
/// milliseconds (the bound on event time). The core reads no clock itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The monotonic clock (how long a partition has been idle).
    pub instant: Instant,
    /// The wall clock, epoch milliseconds (the bound on event time).
    pub wall_ms: i64,
}

impl Now {
    /// The clocks as they are.
    pub fn current() -> Self {
        Now {
            instant: Instant::now(),
            wall_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// `after` later on both clocks.
    pub fn after(self, after: Duration) -> Self {
        Now {
            instant: self.instant + after,
            wall_ms: self.wall_ms.saturating_add(millis(after)),
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The start of the window of `size_ms` that holds `event_ms` (windows are aligned to the
/// epoch).
pub fn window_start(event_ms: i64, size_ms: i64) -> i64 {
    event_ms.div_euclid(size_ms.max(1)) * size_ms.max(1)
}

/// What is kept per key and window: merged from one value per event, then across the
/// partitions of this process when the window fires (a commutative, associative merge).
pub trait Aggregate: Send + 'static {
    /// Folds `other` (one event's value, or another partition's aggregate) into `self`.
    fn merge(&mut self, other: Self);
}

/// A count: traffic-agg's page views.
impl Aggregate for u64 {
    fn merge(&mut self, other: Self) {
        *self = self.saturating_add(other);
    }
}

/// One fired window of one key (traffic-agg: one user's page views).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowResult<A = u64> {
    /// The window's start, in epoch milliseconds (inclusive).
    pub start_ms: i64,
    /// The grouping key.
    pub key: String,
    /// The window's end, in epoch milliseconds (exclusive).
    pub end_ms: i64,
    /// What was aggregated for the key in the window.
    pub value: A,
}

/// What became of an event given to [`Aggregator::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted in its window.
    Counted,
    /// Its window has fired: the event is late by `behind_ms` past the window's end plus
    /// the allowed lateness.
    Late { window_end_ms: i64, behind_ms: i64 },
    /// Its time is more than the allowed `bound_ms` past the wall clock (`ahead_ms`
    /// ahead): refused, untouched by the watermark and the windows.
    Future {
        event_ms: i64,
        ahead_ms: i64,
        bound_ms: i64,
    },
}

#[derive(Debug)]
struct PartitionWindow<A> {
    counts: HashMap<Box<str>, A>,
    /// The first offset of this partition counted in the window.
    first_offset: i64,
}

#[derive(Debug)]
struct PartitionState<A> {
    /// The latest event time seen (`i64::MIN` before any).
    max_event_ms: i64,
    last_active: Instant,
    windows: BTreeMap<i64, PartitionWindow<A>>,
    /// [`Aggregator::per_partition`]: this partition's windows fired through this.
    fired_through: i64,
}

impl<A> PartitionState<A> {
    fn watermark(&self, out_of_orderness_ms: i64) -> i64 {
        self.max_event_ms.saturating_sub(out_of_orderness_ms)
    }

    /// Takes the windows that `watermark` has passed: those whose end plus the allowed
    /// lateness is at or before it (their start at or before `watermark - size - lateness`).
    fn take_passed(
        &mut self,
        watermark: i64,
        size_ms: i64,
        lateness_ms: i64,
    ) -> BTreeMap<i64, PartitionWindow<A>> {
        let last_start = watermark
            .saturating_sub(size_ms)
            .saturating_sub(lateness_ms);
        let open = self.windows.split_off(&last_start.saturating_add(1));
        std::mem::replace(&mut self.windows, open)
    }
}

/// How far one input partition has got: its own watermark (`None` before its first event)
/// and how long it has been without a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceMark {
    pub watermark_ms: Option<i64>,
    pub quiet: Duration,
}

/// A partition's place in the job's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionWatermark {
    /// The input partition.
    pub partition: i32,
    /// `None` before the partition's first event.
    pub watermark_ms: Option<i64>,
    /// No record for longer than the idle timeout: it does not hold the watermark back.
    pub idle: bool,
    /// Windows of this partition not fired yet.
    pub open_windows: usize,
}

/// The windows' state, for the dashboard.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WindowStatus {
    /// `None` until there is one.
    pub watermark_ms: Option<i64>,
    /// Each owned partition's watermark.
    pub partitions: Vec<PartitionWatermark>,
    /// Distinct windows not yet fired.
    pub open_windows: usize,
    /// (window, user) counts held.
    pub open_counts: usize,
    /// Events dead-lettered as late.
    pub late: u64,
    /// Window results fired.
    pub fired: u64,
}

/// Aggregates values per key and window (traffic-agg: page views per user); see the
/// module doc.
#[derive(Debug)]
pub struct Aggregator<A = u64> {
    size_ms: i64,
    out_of_orderness_ms: i64,
    lateness_ms: i64,
    idle_timeout: Duration,
    ahead_ms: i64,
    partitions: BTreeMap<i32, PartitionState<A>>,
    /// The job's watermark (`i64::MIN` before any).
    watermark: i64,
    /// Every window whose end plus the allowed lateness is at or before this has fired.
    fired_through: i64,
    late: u64,
    fired: u64,
    /// Each partition has a watermark and windows of its own ([`Aggregator::per_partition`]).
    per_partition: bool,
}

#[cfg(any(test, feature = "bench"))]
impl Aggregator<u64> {
    /// Counts one event of `partition` at `offset` for user `id`: [`add_value`] with 1.
    ///
    /// [`add_value`]: Aggregator::add_value
    pub fn add(
        &mut self,
        partition: i32,
        offset: i64,
        id: &str,
        event_ms: i64,
        now: Now,
    ) -> Verdict {
        self.add_value(partition, offset, id, event_ms, 1, now)
    }
}

impl<A: Aggregate> Aggregator<A> {
    pub fn new(config: &WindowConfig) -> Self {
        Aggregator {
            size_ms: millis(config.size).max(1),
            out_of_orderness_ms: millis(config.max_out_of_orderness),
            lateness_ms: millis(config.allowed_lateness),
            idle_timeout: config.idle_timeout,
            ahead_ms: millis(config.max_event_time_ahead),
            partitions: BTreeMap::new(),
            watermark: i64::MIN,
            fired_through: i64::MIN,
            late: 0,
            fired: 0,
            per_partition: false,
        }
    }

    /// Each partition is a task of its own, as a Kafka Streams task: its windows fire at
    /// the watermark given for it ([`fire_partition_at`](Self::fire_partition_at)), an event
    /// is late against its own partition's fired windows, and a restored `fired_through`
    /// holds for its partition alone ([`restore_partition`](Self::restore_partition)). For
    /// the second stage of a shuffled job, where each key lives in one partition: a
    /// partition taken over from another instance brings its state, and its progress moves
    /// no other partition's windows.
    pub fn per_partition(&mut self) {
        self.per_partition = true;
    }

    /// A partition this process starts to read; its idle clock starts `now`.
    pub fn assign(&mut self, partition: i32, now: Instant) {
        self.state(partition, now);
    }

    /// A partition this process no longer reads: its share of the open windows is dropped
    /// (its next owner rebuilds it from the committed position).
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Windows up to `fired_through` have fired before (a previous run's commit says so):
    /// their events are not counted again. Capped at the wall clock: a commit cannot have
    /// fired windows the clock had not reached (one written before event time was bounded
    /// might say year 9999).
    pub fn restore(&mut self, fired_through: i64, wall_ms: i64) {
        let fired_through = fired_through.min(wall_ms);
        self.fired_through = self.fired_through.max(fired_through);
        self.watermark = self.watermark.max(fired_through);
    }

    /// [`per_partition`](Self::per_partition): windows of `partition` up to
    /// `fired_through` have fired before (capped at the wall clock, as
    /// [`restore`](Self::restore)).
    pub fn restore_partition(&mut self, partition: i32, fired_through: i64, now: Now) {
        let fired_through = fired_through.min(now.wall_ms);
        let state = self.state(partition, now.instant);
        state.fired_through = state.fired_through.max(fired_through);
    }

    fn state(&mut self, partition: i32, now: Instant) -> &mut PartitionState<A> {
        self.partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                max_event_ms: i64::MIN,
                last_active: now,
                windows: BTreeMap::new(),
                fired_through: i64::MIN,
            })
    }

    /// Merges one event's `value` of `partition` at `offset` into its key's window,
    /// unless its time is too far ahead of the wall clock ([`Verdict::Future`]) or its
    /// window has fired ([`Verdict::Late`]).
    pub fn add_value(
        &mut self,
        partition: i32,
        offset: i64,
        key: &str,
        event_ms: i64,
        value: A,
        now: Now,
    ) -> Verdict {
        if let Err(future) = self.observe(partition, event_ms, now) {
            return future;
        }
        let start = window_start(event_ms, self.size_ms);
        let end = start.saturating_add(self.size_ms);
        let expiry = end.saturating_add(self.lateness_ms);
        let Some(state) = self.partitions.get_mut(&partition) else {
            // `observe` has just made it.
            return Verdict::Counted;
        };
        let fired_through = if self.per_partition {
            state.fired_through
        } else {
            self.fired_through
        };
        if expiry <= fired_through {
            self.late += 1;
            return Verdict::Late {
                window_end_ms: end,
                behind_ms: fired_through - expiry,
            };
        }
        let window = state
            .windows
            .entry(start)
            .or_insert_with(|| PartitionWindow {
                counts: HashMap::default(),
                first_offset: offset,
            });
        window.first_offset = window.first_offset.min(offset);
        match window.counts.get_mut(key) {
            Some(held) => held.merge(value),
            None => {
                window.counts.insert(key.into(), value);
            }
        }
        Verdict::Counted
    }

    /// An event of `partition` at `event_ms` moves the partition's watermark (and its idle
    /// clock), unless it is too far ahead of the wall clock ([`Verdict::Future`]: then it
    /// moves nothing). [`add_value`](Self::add_value) does this first; the first stage of a
    /// shuffled job does only this, its windows being counted downstream.
    pub fn observe(&mut self, partition: i32, event_ms: i64, now: Now) -> Result<(), Verdict> {
        let ahead_ms = event_ms.saturating_sub(now.wall_ms);
        if ahead_ms > self.ahead_ms {
            return Err(Verdict::Future {
                event_ms,
                ahead_ms,
                bound_ms: self.ahead_ms,
            });
        }
        let now = now.instant;
        let state = self.state(partition, now);
        state.last_active = now;
        state.max_event_ms = state.max_event_ms.max(event_ms);
        Ok(())
    }

    /// The job's watermark now (see the module doc); it never goes back, and never passes
    /// the wall clock less the out-of-orderness.
    pub fn advance(&mut self, now: Now) -> i64 {
        let ceiling = now.wall_ms.saturating_sub(self.out_of_orderness_ms);
        let marks = self.partition_marks(now.instant);
        if let Some(mark) = self.combine(marks.into_iter().map(|(_, mark)| mark)) {
            self.watermark = self.watermark.max(mark.min(ceiling));
        }
        self.watermark
    }

    /// Each partition's own watermark (`None` before its first event) and how long it has
    /// been quiet: what [`advance`](Self::advance) combines, and what the first stage of a
    /// shuffled job sends downstream for its second to combine.
    pub fn partition_marks(&self, now: Instant) -> Vec<(i32, SourceMark)> {
        self.partitions
            .iter()
            .map(|(&partition, p)| {
                let mark = SourceMark {
                    watermark_ms: (p.max_event_ms != i64::MIN)
                        .then(|| p.watermark(self.out_of_orderness_ms)),
                    quiet: now.saturating_duration_since(p.last_active),
                };
                (partition, mark)
            })
            .collect()
    }

    /// The watermark that `marks`, one per partition, make together (see the module doc):
    /// the minimum over the partitions that are not idle; when all are, the maximum of
    /// their watermarks plus their silence; `None` while a partition without an event yet
    /// is not idle. Neither capped by the clock nor kept from going back: the caller does
    /// both.
    pub fn combine(&self, marks: impl IntoIterator<Item = SourceMark>) -> Option<i64> {
        let mut active_min: Option<i64> = None;
        let mut all_max: Option<i64> = None;
        for mark in marks {
            let idle = mark.quiet > self.idle_timeout;
            let Some(watermark) = mark.watermark_ms else {
                // A partition with no event yet holds the watermark until it goes idle.
                if !idle {
                    return None;
                }
                continue;
            };
            // Used only when every partition is idle: event time is taken to have moved on
            // with the wall clock since the partition's last record.
            let moved_on = watermark.saturating_add(millis(mark.quiet));
            all_max = Some(all_max.map_or(moved_on, |m: i64| m.max(moved_on)));
            if !idle {
                active_min = Some(active_min.map_or(watermark, |m: i64| m.min(watermark)));
            }
        }
        active_min.or(all_max)
    }

    /// Fires every window the watermark has passed (its end plus the allowed lateness),
    /// merged over this process's partitions, ordered by window then user.
    pub fn fire(&mut self, now: Now) -> Vec<WindowResult<A>> {
        let watermark = self.advance(now);
        self.fire_due(watermark)
    }

    /// [`per_partition`](Self::per_partition): fires the windows of `partition` that its
    /// `watermark` has passed (capped at the wall clock less the out-of-orderness; it never
    /// goes back), ordered by window then key.
    pub fn fire_partition_at(
        &mut self,
        partition: i32,
        watermark: i64,
        now: Now,
    ) -> Vec<WindowResult<A>> {
        let ceiling = now.wall_ms.saturating_sub(self.out_of_orderness_ms);
        let (size_ms, lateness_ms) = (self.size_ms, self.lateness_ms);
        let state = self.state(partition, now.instant);
        let watermark = state.fired_through.max(watermark.min(ceiling));
        state.fired_through = watermark;
        let closed = state.take_passed(watermark, size_ms, lateness_ms);
        let mut results: Vec<WindowResult<A>> = closed
            .into_iter()
            .flat_map(|(start, window)| {
                window
                    .counts
                    .into_iter()
                    .map(move |(key, value)| WindowResult {
                        start_ms: start,
                        end_ms: start + size_ms,
                        key: key.into(),
                        value,
                    })
            })
            .collect();
        results.sort_unstable_by(|a, b| (a.start_ms, &a.key).cmp(&(b.start_ms, &b.key)));
        self.fired += results.len() as u64;
        // Shown as the job's watermark: the lowest of the partitions that have one.
        self.watermark = self
            .partitions
            .values()
            .map(|p| p.fired_through)
            .filter(|&fired| fired != i64::MIN)
            .min()
            .unwrap_or(i64::MIN);
        results
    }

    /// [`per_partition`](Self::per_partition): the windows of `partition` fired through.
    pub fn fired_through_of(&self, partition: i32) -> i64 {
        self.partitions
            .get(&partition)
            .map_or(i64::MIN, |p| p.fired_through)
    }

    /// Fires every window whose end plus the allowed lateness `watermark` has passed.
    fn fire_due(&mut self, watermark: i64) -> Vec<WindowResult<A>> {
        // Cheap when nothing is due: the earliest open window's expiry, per partition.
        let due = self
            .partitions
            .values()
            .filter_map(|p| p.windows.keys().next())
            .min()
            .map(|start| start + self.size_ms + self.lateness_ms);
        if due.is_none_or(|due| due > watermark) {
            self.fired_through = self.fired_through.max(watermark);
            return Vec::new();
        }
        self.fire_through(watermark)
    }

    /// Fires every open window: the end of a bounded input, as Beam does.
    pub fn fire_all(&mut self) -> Vec<WindowResult<A>> {
        let last = self
            .partitions
            .values()
            .filter_map(|p| p.windows.keys().next_back())
            .max()
            .map(|start| start + self.size_ms + self.lateness_ms);
        match last {
            Some(through) => {
                self.watermark = self.watermark.max(through);
                self.fire_through(through)
            }
            None => Vec::new(),
        }
    }

    fn fire_through(&mut self, watermark: i64) -> Vec<WindowResult<A>> {
        let mut merged: Vec<WindowResult<A>> = Vec::new();
        let mut shared: HashMap<(i64, Box<str>), A> = HashMap::default();
        let several = self.partitions.len() > 1;
        for state in self.partitions.values_mut() {
            let closed = state.take_passed(watermark, self.size_ms, self.lateness_ms);
            for (start, window) in closed {
                for (key, value) in window.counts {
                    if several {
                        match shared.entry((start, key)) {
                            std::collections::hash_map::Entry::Occupied(mut held) => {
                                held.get_mut().merge(value);
                            }
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                slot.insert(value);
                            }
                        }
                    } else {
                        merged.push(WindowResult {
                            start_ms: start,
                            end_ms: start + self.size_ms,
                            key: key.into(),
                            value,
                        });
                    }
                }
            }
        }
        merged.extend(
            shared
                .into_iter()
                .map(|((start_ms, key), value)| WindowResult {
                    start_ms,
                    end_ms: start_ms + self.size_ms,
                    key: key.into(),
                    value,
                }),
        );
        // By window, then user: the order does not depend on hashing.
        merged.sort_unstable_by(|a, b| (a.start_ms, &a.key).cmp(&(b.start_ms, &b.key)));
        self.fired_through = self.fired_through.max(watermark);
        for state in self.partitions.values_mut() {
            state.fired_through = state.fired_through.max(watermark);
        }
        self.fired += merged.len() as u64;
        merged
    }

    /// The first offset of `partition` that an open window still needs: a commit of that
    /// partition must not pass it. `None` when no open window holds any.
    pub fn hold(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)?
            .windows
            .values()
            .map(|w| w.first_offset)
            .min()
    }

    /// The end plus the allowed lateness of the window that holds `event_ms`: the window
    /// has fired once [`fired_through`](Self::fired_through) reaches it.
    pub fn expiry(&self, event_ms: i64) -> i64 {
        window_start(event_ms, self.size_ms)
            .saturating_add(self.size_ms)
            .saturating_add(self.lateness_ms)
    }

    /// Every window at or before this (end plus lateness) has fired.
    pub fn fired_through(&self) -> i64 {
        self.fired_through
    }

    pub fn status(&self, now: Now) -> WindowStatus {
        let now = now.instant;
        let mut starts = std::collections::BTreeSet::new();
        let mut counts = 0;
        let partitions = self
            .partitions
            .iter()
            .map(|(&partition, p)| {
                starts.extend(p.windows.keys().copied());
                counts += p.windows.values().map(|w| w.counts.len()).sum::<usize>();
                PartitionWatermark {
                    partition,
                    watermark_ms: (p.max_event_ms != i64::MIN)
                        .then(|| p.watermark(self.out_of_orderness_ms)),
                    idle: now.saturating_duration_since(p.last_active) > self.idle_timeout,
                    open_windows: p.windows.len(),
                }
            })
            .collect();
        WindowStatus {
            watermark_ms: (self.watermark != i64::MIN).then_some(self.watermark),
            partitions,
            open_windows: starts.len(),
            open_counts: counts,
            late: self.late,
            fired: self.fired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        event_time_ms(text).unwrap()
    }

    fn config(size: u64, out_of_orderness: u64, lateness: u64) -> WindowConfig {
        WindowConfig {
            size: Duration::from_secs(size),
            max_out_of_orderness: Duration::from_secs(out_of_orderness),
            allowed_lateness: Duration::from_secs(lateness),
            idle_timeout: Duration::from_secs(10),
            max_event_time_ahead: Duration::from_secs(3600),
        }
    }

    fn results(fired: &[WindowResult]) -> Vec<(String, String, u64)> {
        fired
            .iter()
            .map(|r| (r.key.clone(), format_time(r.start_ms), r.value))
            .collect()
    }

    #[test]
    fn the_original_test_three_events_give_two_windows() {
        // traffic_agg's test: one id at 05:51:22.083, 05:51:32.083 and 05:51:52.083.
        let mut agg = Aggregator::new(&config(20, 0, 0));
        let now = Now::current();
        for (offset, at) in ["22.083", "32.083", "52.083"].iter().enumerate() {
            let t = ms(&format!("2024-04-28T05:51:{at}"));
            assert_eq!(agg.add(0, offset as i64, "id-1", t, now), Verdict::Counted);
        }
        let fired = agg.fire_all();
        assert_eq!(
            results(&fired),
            [
                ("id-1".into(), "2024-04-28T05:51:20".into(), 2),
                ("id-1".into(), "2024-04-28T05:51:40".into(), 1)
            ]
        );
    }

    #[test]
    fn event_times_are_utc_and_strict() {
        assert_eq!(ms("1970-01-01T00:00:00"), 0);
        assert_eq!(ms("1970-01-01T00:00:01.5"), 1500);
        assert_eq!(ms("2024-04-28T05:51:22.083"), 1_714_283_482_083);
        assert_eq!(ms("2024-02-29T23:59:59.999999999"), 1_709_251_199_999);
        for bad in [
            "",
            "2024-04-28 05:51:22",
            "2024-02-30T00:00:00",
            "2024-04-28T24:00:00",
            "2024-04-28T05:51:22.",
            "2024-04-28T05:51:22Z",
            "2024-04-28T05:51:22.0000000001",
            "２024-04-28T05:51:22",
        ] {
            assert_eq!(event_time_ms(bad), None, "{bad}");
        }
        // The same instant as chrono's own parser reads it.
        let chrono = chrono::NaiveDateTime::parse_from_str(
            "2026-11-27T00:21:12.287",
            "%Y-%m-%dT%H:%M:%S%.f",
        )
        .unwrap()
        .and_utc()
        .timestamp_millis();
        assert_eq!(ms("2026-11-27T00:21:12.287"), chrono);
        assert_eq!(format_time(1_714_283_480_000), "2024-04-28T05:51:20");
        assert_eq!(format_time(0), "1970-01-01T00:00:00");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59");
        assert_eq!(format_time(253_402_300_799_000), "9999-12-31T23:59:59");
        for ms in [1_714_283_480_999i64, 951_782_400_000, 4_102_444_800_000] {
            let chrono = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .naive_utc()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
            assert_eq!(format_time(ms), chrono);
        }
    }

    #[test]
    fn window_boundaries_at_exact_multiples_of_the_size() {
        let size = 20_000;
        assert_eq!(window_start(40_000, size), 40_000);
        assert_eq!(window_start(39_999, size), 20_000);
        assert_eq!(window_start(-1, size), -20_000);
        let mut agg = Aggregator::new(&config(20, 0, 0));
        let now = Now::current();
        agg.add(0, 0, "a", 39_999, now);
        agg.add(0, 1, "a", 40_000, now);
        // The watermark is 40,000: [20 s, 40 s) has ended, [40 s, 60 s) has not.
        let fired = agg.fire(now);
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].start_ms, fired[0].end_ms, fired[0].value),
            (20_000, 40_000, 1)
        );
        assert_eq!(agg.hold(0), Some(1), "the open window still needs offset 1");
    }

    #[test]
    fn out_of_order_events_within_the_bound_count_and_later_ones_are_late() {
        let mut agg = Aggregator::new(&config(10, 5, 0));
        let now = Now::current();
        agg.add(0, 0, "a", 12_000, now);
        agg.add(0, 1, "a", 14_000, now); // watermark 9 s: nothing fires
        assert!(agg.fire(now).is_empty());
        // 8 s is 6 s behind the latest, out of order beyond 5 s, but its window [0, 10) has
        // not fired (the watermark is 9 s): it counts.
        assert_eq!(agg.add(0, 2, "a", 8_000, now), Verdict::Counted);
        agg.add(0, 3, "a", 16_000, now); // watermark 11 s: [0, 10) fires
        let fired = agg.fire(now);
        assert_eq!(
            results(&fired),
            [("a".into(), "1970-01-01T00:00:00".into(), 1)]
        );
        // Now an event of [0, 10) is late, by 1 s past its end.
        assert_eq!(
            agg.add(0, 4, "a", 9_999, now),
            Verdict::Late {
                window_end_ms: 10_000,
                behind_ms: 1_000
            }
        );
        assert_eq!(agg.status(now).late, 1);
        assert_eq!(agg.hold(0), Some(0), "[10, 20) holds offset 0");
    }

    #[test]
    fn allowed_lateness_keeps_a_window_open_past_its_end() {
        let mut agg = Aggregator::new(&config(10, 0, 3));
        let now = Now::current();
        agg.add(0, 0, "a", 5_000, now);
        agg.add(0, 1, "b", 12_000, now); // watermark 12 s < 10 + 3
        assert!(agg.fire(now).is_empty());
        assert_eq!(agg.add(0, 2, "a", 9_000, now), Verdict::Counted);
        agg.add(0, 3, "b", 13_000, now);
        let fired = agg.fire(now);
        assert_eq!(
            results(&fired),
            [("a".into(), "1970-01-01T00:00:00".into(), 2)]
        );
        assert!(matches!(
            agg.add(0, 4, "a", 1_000, now),
            Verdict::Late { .. }
        ));
    }

    #[test]
    fn an_idle_partition_stops_holding_the_watermark_back() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let start = Now::current();
        agg.add(0, 0, "a", 1_000, start);
        agg.add(1, 0, "b", 25_000, start);
        // Partition 0 holds the watermark at 1 s.
        assert!(agg.fire(start).is_empty());
        let later = start.after(Duration::from_secs(11));
        agg.add(1, 1, "b", 26_000, later);
        // Partition 0 has been quiet for 11 s: partition 1 alone sets it (26 s).
        let fired = agg.fire(later);
        assert_eq!(
            results(&fired),
            [("a".into(), "1970-01-01T00:00:00".into(), 1),]
        );
        assert_eq!(agg.advance(later), 26_000);
        let status = agg.status(later);
        assert!(
            status.partitions[0].idle && !status.partitions[1].idle,
            "{status:?}"
        );
        // [10, 20) has fired empty; [20, 30) is open.
        assert_eq!(agg.hold(1), Some(0));
    }

    #[test]
    fn a_partition_without_events_holds_the_watermark_until_it_is_idle() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let start = Now::current();
        agg.assign(1, start.instant);
        agg.add(0, 0, "a", 25_000, start);
        assert!(agg.fire(start).is_empty());
        agg.add(0, 1, "a", 26_000, start.after(Duration::from_secs(11)));
        assert_eq!(agg.fire(start.after(Duration::from_secs(11))).len(), 0);
        assert_eq!(agg.advance(start.after(Duration::from_secs(11))), 26_000);
    }

    #[test]
    fn counts_merge_across_partitions_and_a_revoked_partition_drops_its_share() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let now = Now::current();
        agg.add(0, 7, "a", 1_000, now);
        agg.add(1, 3, "a", 2_000, now);
        agg.add(2, 9, "a", 3_000, now);
        agg.revoke(2);
        agg.add(0, 8, "z", 11_000, now);
        agg.add(1, 4, "z", 11_000, now);
        let fired = agg.fire(now);
        assert_eq!(
            results(&fired),
            [("a".into(), "1970-01-01T00:00:00".into(), 2)]
        );
        assert_eq!(
            (agg.hold(0), agg.hold(1), agg.hold(2)),
            (Some(8), Some(4), None)
        );
    }

    #[test]
    fn a_restored_run_does_not_count_fired_windows_again() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let now = Now::current();
        agg.restore(20_000, now.wall_ms);
        assert!(matches!(
            agg.add(0, 0, "a", 19_999, now),
            Verdict::Late { .. }
        ));
        assert_eq!(agg.add(0, 1, "a", 20_000, now), Verdict::Counted);
        assert_eq!(agg.fired_through(), 20_000);
    }

    #[test]
    fn memory_holds_open_windows_only() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let now = Now::current();
        for i in 0..100_000i64 {
            agg.add(0, i, &format!("user-{}", i % 100), i * 10, now);
            if i % 1000 == 0 {
                agg.fire(now);
            }
        }
        agg.fire(now);
        let status = agg.status(now);
        assert!(status.open_windows <= 2, "{status:?}");
        assert!(status.open_counts <= 200, "{status:?}");
    }

    /// The poison event of issue 23: `9999-12-31T23:59:59.999`.
    fn poison() -> i64 {
        ms("9999-12-31T23:59:59.999")
    }

    #[test]
    fn a_far_future_event_is_refused_and_stalls_nothing() {
        // One partition, 2 s windows, 1 s out-of-orderness: 10 events stamped now, the
        // poison event, then 40 more stamped now, 0.3 s apart.
        let config = WindowConfig {
            size: Duration::from_secs(2),
            max_out_of_orderness: Duration::from_secs(1),
            ..WindowConfig::default()
        };
        let mut agg = Aggregator::new(&config);
        let mut now = Now::current();
        let mut offset = 0;
        for _ in 0..10 {
            assert_eq!(agg.add(0, offset, "u", now.wall_ms, now), Verdict::Counted);
            offset += 1;
            now = now.after(Duration::from_millis(300));
            agg.fire(now);
        }
        let verdict = agg.add(0, offset, "u", poison(), now);
        assert!(
            matches!(verdict, Verdict::Future { event_ms, bound_ms: 3_600_000, .. } if event_ms == poison()),
            "{verdict:?}"
        );
        offset += 1;
        let mut late = 0;
        for _ in 0..40 {
            if matches!(
                agg.add(0, offset, "u", now.wall_ms, now),
                Verdict::Late { .. }
            ) {
                late += 1;
            }
            offset += 1;
            now = now.after(Duration::from_millis(300));
            agg.fire(now);
        }
        assert_eq!(late, 0, "no event stamped now is late");
        // Past the idle timeout every window has fired: nothing pins the position.
        now = now.after(Duration::from_secs(11));
        let fired = agg.fire(now);
        assert!(!fired.is_empty());
        assert_eq!(agg.hold(0), None, "no open window holds a commit back");
        assert!(agg.advance(now) <= now.wall_ms);
        assert_eq!(agg.status(now).late, 0);
    }

    #[test]
    fn three_partitions_a_poison_on_one_and_silence_leave_no_event_late() {
        let config = WindowConfig {
            size: Duration::from_secs(2),
            max_out_of_orderness: Duration::from_secs(1),
            ..WindowConfig::default()
        };
        let mut agg = Aggregator::new(&config);
        let mut now = Now::current();
        let mut offsets = [0i64; 3];
        let mut late = 0;
        let mut add = |agg: &mut Aggregator, partition: i32, at: i64, now: Now| {
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            agg.add(partition, offset, "u", at, now)
        };
        for round in 0..30 {
            for partition in 0..3 {
                if round == 10 && partition == 1 {
                    assert!(matches!(
                        add(&mut agg, 1, poison(), now),
                        Verdict::Future { .. }
                    ));
                }
                if matches!(
                    add(&mut agg, partition, now.wall_ms, now),
                    Verdict::Late { .. }
                ) {
                    late += 1;
                }
            }
            now = now.after(Duration::from_millis(300));
            agg.fire(now);
        }
        // 13 s of silence: every partition goes idle, and the watermark stays behind the
        // wall clock.
        now = now.after(Duration::from_secs(13));
        agg.fire(now);
        assert!(agg.advance(now) <= now.wall_ms - 1_000);
        for _ in 0..20 {
            for partition in 0..3 {
                if matches!(
                    add(&mut agg, partition, now.wall_ms, now),
                    Verdict::Late { .. }
                ) {
                    late += 1;
                }
            }
            now = now.after(Duration::from_millis(300));
            agg.fire(now);
        }
        assert_eq!(late, 0, "no normal event is late");
        now = now.after(Duration::from_secs(13));
        agg.fire(now);
        assert_eq!(
            (agg.hold(0), agg.hold(1), agg.hold(2)),
            (None, None, None),
            "every window fired: the positions drain"
        );
    }

    #[test]
    fn an_event_within_the_bound_waits_for_the_clock_and_makes_nothing_late() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let now = Now::current();
        let ahead = now.wall_ms + 30 * 60 * 1000;
        assert_eq!(agg.add(0, 0, "early", ahead, now), Verdict::Counted);
        // Idle: the idle rule would take this partition's mark, 30 min ahead; the clock
        // caps it.
        let later = now.after(Duration::from_secs(11));
        agg.fire(later);
        assert!(agg.advance(later) <= later.wall_ms);
        assert_eq!(agg.add(0, 1, "now", later.wall_ms, later), Verdict::Counted);
        assert_eq!(
            agg.hold(0),
            Some(0),
            "the early window is open, and fires in time"
        );
        // Half an hour on, both have fired.
        let after = later.after(Duration::from_secs(31 * 60));
        let fired = agg.fire(after);
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!(agg.hold(0), None);
        // Exactly at the bound still counts; a millisecond past it does not.
        let at = after.wall_ms + 3_600_000;
        assert_eq!(agg.add(0, 2, "x", at, after), Verdict::Counted);
        assert!(matches!(
            agg.add(0, 3, "x", at + 1, after),
            Verdict::Future {
                ahead_ms: 3_600_001,
                ..
            }
        ));
    }

    #[test]
    fn a_restored_position_past_the_clock_is_capped() {
        let mut agg = Aggregator::new(&config(10, 0, 0));
        let now = Now::current();
        agg.restore(poison(), now.wall_ms);
        assert_eq!(agg.fired_through(), now.wall_ms);
        assert_eq!(
            agg.add(0, 0, "a", now.wall_ms + 20_000, now),
            Verdict::Counted,
            "an event stamped after the clock is not late"
        );
    }

    #[test]
    fn per_partition_each_partition_fires_at_its_own_watermark_and_keeps_its_own_past() {
        let now = Now::current();
        let mut agg = Aggregator::new(&config(10, 0, 0));
        agg.per_partition();
        let base = now.wall_ms - now.wall_ms.rem_euclid(10_000) - 100_000;
        // Partition 1 was taken over from an instance that had fired it far ahead; that
        // says nothing of partition 0.
        agg.restore_partition(1, base + 50_000, now);
        assert_eq!(agg.add(0, 0, "a", base + 1_000, now), Verdict::Counted);
        assert!(matches!(
            agg.add(1, 0, "b", base + 1_000, now),
            Verdict::Late { .. }
        ));
        assert_eq!(agg.add(1, 1, "b", base + 61_000, now), Verdict::Counted);
        // Partition 1's watermark fires nothing of partition 0.
        assert!(agg.fire_partition_at(1, base + 30_000, now).is_empty());
        assert_eq!(agg.fired_through_of(1), base + 50_000, "never goes back");
        let fired = agg.fire_partition_at(0, base + 10_000, now);
        assert_eq!(results(&fired).len(), 1);
        assert_eq!(agg.fired_through_of(0), base + 10_000);
        assert_eq!(agg.hold(1), Some(1));
    }

    #[test]
    fn a_replay_of_old_data_is_untouched_by_the_bounds() {
        // datagen --start-time 2024-...: event times two years behind the clock.
        let mut agg = Aggregator::new(&config(20, 5, 0));
        let mut now = Now::current();
        let start = ms("2024-04-28T05:51:00");
        let mut late = 0;
        for i in 0..600i64 {
            // A minute of 2024 per real second, on three partitions, with a 15 s pause.
            if i == 300 {
                now = now.after(Duration::from_secs(15));
                agg.fire(now);
            }
            let verdict = agg.add((i % 3) as i32, i / 3, "u", start + i * 1_000, now);
            late += u64::from(matches!(verdict, Verdict::Late { .. }));
            now = now.after(Duration::from_millis(10));
            agg.fire(now);
        }
        assert_eq!(late, 0);
        let fired: u64 = agg.fire_all().iter().map(|r| r.value).sum();
        assert_eq!(agg.status(now).fired, 30);
        assert!(
            fired > 0 && fired < 600,
            "the open windows fire at the end: {fired}"
        );
    }
}
