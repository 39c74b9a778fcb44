//! Pacing: when the next events may be emitted.
//!
//! - `Pace::Rate(r)`: event `k` (from 0) is due at `start + k / r`. Due times come from
//!   the start instant, never from the previous event, so the average rate is exact over
//!   any run and errors do not accumulate. At high rates the caller emits every due event
//!   in one batch: there is no sleep per event.
//! - `Pace::Schedule(s)`: a rate that changes over time, as a [`RateSchedule`]: a linear
//!   ramp, or steps. Event `k` is due when the integral of the rate since the start reaches
//!   `k`: the same exactness as a fixed rate, with no sleep per event.
//! - `Pace::Delay(d)`: the original's `--delay-seconds`, a pause of `d` after each event.
//! - `Pace::Unlimited`: as fast as the sink takes them.
//!
//! The pacer is pure: callers pass the current instant. It never panics or overflows: a
//! count or an instant beyond what the types hold saturates (an instant too far to
//! represent becomes "in a day", asked again then).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum Pace {
    Unlimited,
    /// Events per second.
    Rate(f64),
    /// Events per second, changing over time.
    Schedule(RateSchedule),
    /// Pause after each event.
    Delay(Duration),
}

/// A rate over time: consecutive segments from the start, each linear from one rate to
/// another (constant when both are equal); after the last, its final rate holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSchedule {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    /// Seconds from the start.
    start: f64,
    /// Seconds.
    length: f64,
    /// Events per second at the segment's start and end.
    from: f64,
    to: f64,
    /// Events due before the segment starts.
    before: f64,
}

impl Segment {
    /// Events due in the first `t` seconds of the segment (`0 <= t <= length`).
    fn due_within(&self, t: f64) -> f64 {
        self.from * t + (self.to - self.from) * t * t / (2.0 * self.length)
    }

    /// The time into the segment at which `events` of its own are due, if within it.
    fn time_of(&self, events: f64) -> Option<f64> {
        if events > self.due_within(self.length) {
            return None;
        }
        let slope = (self.to - self.from) / self.length;
        let t = if slope.abs() < 1e-12 {
            events / self.from
        } else {
            // slope/2 t² + from t - events = 0, the root with t >= 0.
            (-self.from
                + (self.from * self.from + 2.0 * slope * events)
                    .max(0.0)
                    .sqrt())
                / slope
        };
        Some(t.clamp(0.0, self.length))
    }
}

impl RateSchedule {
    /// From `from` to `to` events per second, linearly over `over`; then `to`.
    pub fn ramp(from: f64, to: f64, over: Duration) -> Self {
        Self::from_steps(&[(from, to, over)])
    }

    /// Each rate for its duration, in order; then the last rate.
    pub fn steps(steps: &[(f64, Duration)]) -> Self {
        let segments: Vec<(f64, f64, Duration)> = steps
            .iter()
            .map(|&(rate, length)| (rate, rate, length))
            .collect();
        Self::from_steps(&segments)
    }

    fn from_steps(steps: &[(f64, f64, Duration)]) -> Self {
        let mut segments = Vec::with_capacity(steps.len());
        let (mut start, mut before) = (0.0, 0.0);
        for &(from, to, length) in steps {
            let length = length.as_secs_f64().max(1e-9);
            let segment = Segment {
                start,
                length,
                from,
                to,
                before,
            };
            before += segment.due_within(length);
            start += length;
            segments.push(segment);
        }
        RateSchedule { segments }
    }

    /// How long the segments last together (the last rate holds after it).
    #[cfg(test)]
    pub fn length(&self) -> Duration {
        let seconds = self.segments.last().map_or(0.0, |s| s.start + s.length);
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    }

    /// The target rate `elapsed` after the start.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        let t = elapsed.as_secs_f64();
        match self.segment_at(t) {
            Some(s) if t < s.start + s.length => {
                s.from + (s.to - s.from) * (t - s.start) / s.length
            }
            Some(s) => s.to,
            None => 0.0,
        }
    }

    fn segment_at(&self, t: f64) -> Option<&Segment> {
        self.segments
            .iter()
            .rev()
            .find(|s| s.start <= t)
            .or(self.segments.first())
    }

    /// Events due in the first `t` seconds.
    fn due(&self, t: f64) -> f64 {
        let Some(s) = self.segment_at(t) else {
            return 0.0;
        };
        let within = (t - s.start).max(0.0);
        if within <= s.length {
            s.before + s.due_within(within)
        } else {
            s.before + s.due_within(s.length) + s.to * (within - s.length)
        }
    }

    /// When (seconds from the start) `events` in total are due.
    fn time_of(&self, events: f64) -> Option<f64> {
        for s in &self.segments {
            if let Some(t) = s.time_of(events - s.before) {
                return Some(s.start + t);
            }
        }
        let last = self.segments.last()?;
        let after = events - last.before - last.due_within(last.length);
        Some(last.start + last.length + after / last.to)
    }
}

/// What the caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Emit up to this many events now.
    Emit(u64),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
}

#[derive(Debug, Clone)]
pub struct Pacer {
    pace: Pace,
    start: Instant,
    last_emit: Option<Instant>,
}

impl Pacer {
    pub fn new(pace: Pace, start: Instant) -> Self {
        Pacer {
            pace,
            start,
            last_emit: None,
        }
    }

    /// The allowance at `now`, after `emitted` events so far.
    pub fn allowance(&self, emitted: u64, now: Instant) -> Allowance {
        match self.pace {
            Pace::Unlimited => Allowance::Emit(u64::MAX),
            Pace::Rate(rate) => {
                let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
                // Events 0..=floor(elapsed * rate) are due by now (`as` saturates).
                let due = ((elapsed * rate).floor() as u64).saturating_add(1);
                if due > emitted {
                    Allowance::Emit(due - emitted)
                } else {
                    Allowance::WaitUntil(later(
                        self.start,
                        Duration::try_from_secs_f64(emitted as f64 / rate).ok(),
                        now,
                    ))
                }
            }
            Pace::Schedule(ref schedule) => {
                let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
                let due = (schedule.due(elapsed).floor() as u64).saturating_add(1);
                if due > emitted {
                    Allowance::Emit(due - emitted)
                } else {
                    let at = schedule
                        .time_of(emitted as f64)
                        .and_then(|t| Duration::try_from_secs_f64(t).ok());
                    Allowance::WaitUntil(later(self.start, at, now))
                }
            }
            Pace::Delay(delay) => match self.last_emit.map(|last| later(last, Some(delay), now)) {
                Some(until) if now < until => Allowance::WaitUntil(until),
                _ => Allowance::Emit(1),
            },
        }
    }

    /// Records that events were emitted at `now` (the delay counts from here).
    pub fn emitted_at(&mut self, now: Instant) {
        self.last_emit = Some(now);
    }
}

/// `from + by`, or a day after `now` when that is not representable.
fn later(from: Instant, by: Option<Duration>, now: Instant) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400);
    by.and_then(|by| from.checked_add(by))
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_releases_exactly_the_due_events() {
        let t0 = Instant::now();
        let pacer = Pacer::new(Pace::Rate(1000.0), t0);
        assert_eq!(pacer.allowance(0, t0), Allowance::Emit(1));
        assert_eq!(
            pacer.allowance(1, t0),
            Allowance::WaitUntil(t0 + Duration::from_millis(1))
        );
        // After 2.5 s, events 0..=2500 are due: 2501 in total.
        assert_eq!(
            pacer.allowance(1, t0 + Duration::from_millis(2500)),
            Allowance::Emit(2500)
        );
        assert_eq!(
            pacer.allowance(2501, t0 + Duration::from_millis(2500)),
            Allowance::WaitUntil(t0 + Duration::from_millis(2501))
        );
    }

    #[test]
    fn slow_rates_wait_between_events() {
        let t0 = Instant::now();
        let pacer = Pacer::new(Pace::Rate(0.1), t0);
        assert_eq!(
            pacer.allowance(1, t0 + Duration::from_secs(9)),
            Allowance::WaitUntil(t0 + Duration::from_secs(10))
        );
        assert_eq!(
            pacer.allowance(1, t0 + Duration::from_secs(10)),
            Allowance::Emit(1)
        );
    }

    #[test]
    fn a_late_pacer_catches_up_without_drift() {
        let t0 = Instant::now();
        let pacer = Pacer::new(Pace::Rate(3.0), t0);
        // One hour at 3/s is 10,800 intervals: 10,801 events due, whatever happened before.
        assert_eq!(
            pacer.allowance(5, t0 + Duration::from_secs(3600)),
            Allowance::Emit(10_796)
        );
    }

    #[test]
    fn extreme_rates_neither_overflow_nor_stall() {
        let t0 = Instant::now();
        // Every event is due at once, however many were emitted.
        let fast = Pacer::new(Pace::Rate(1e300), t0);
        let later = t0 + Duration::from_millis(1);
        assert_eq!(fast.allowance(0, later), Allowance::Emit(u64::MAX));
        assert!(matches!(fast.allowance(3, later), Allowance::Emit(n) if n > 1_000_000));
        // The next event is further away than an Instant reaches: wait, without a panic.
        let slow = Pacer::new(Pace::Rate(1e-300), t0);
        assert!(matches!(slow.allowance(1, t0), Allowance::WaitUntil(at) if at > t0));
        let mut pause = Pacer::new(Pace::Delay(Duration::MAX), t0);
        pause.emitted_at(t0);
        assert!(matches!(pause.allowance(1, t0), Allowance::WaitUntil(at) if at > t0));
    }

    #[test]
    fn delay_pauses_after_each_event() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(Pace::Delay(Duration::from_millis(500)), t0);
        assert_eq!(pacer.allowance(0, t0), Allowance::Emit(1));
        pacer.emitted_at(t0);
        assert_eq!(
            pacer.allowance(1, t0 + Duration::from_millis(100)),
            Allowance::WaitUntil(t0 + Duration::from_millis(500))
        );
        assert_eq!(
            pacer.allowance(1, t0 + Duration::from_millis(500)),
            Allowance::Emit(1)
        );
    }

    #[test]
    fn a_ramp_releases_the_integral_of_its_rate() {
        let t0 = Instant::now();
        // 1,000/s to 3,000/s over 10 s: 20,000 events in the ramp, then 3,000/s.
        let schedule = RateSchedule::ramp(1_000.0, 3_000.0, Duration::from_secs(10));
        assert_eq!(schedule.length(), Duration::from_secs(10));
        assert_eq!(schedule.rate_at(Duration::from_secs(5)), 2_000.0);
        assert_eq!(schedule.rate_at(Duration::from_secs(60)), 3_000.0);
        let pacer = Pacer::new(Pace::Schedule(schedule), t0);
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // By 5 s: 1,000 × 5 + 2,000 × 25 / 20 = 7,500 events (plus event 0).
        assert_eq!(pacer.allowance(0, at(5.0)), Allowance::Emit(7_501));
        assert_eq!(pacer.allowance(0, at(10.0)), Allowance::Emit(20_001));
        assert_eq!(pacer.allowance(20_001, at(12.0)), Allowance::Emit(6_000));
        // The next event after 7,501 is due when the integral reaches 7,501.
        match pacer.allowance(7_501, at(5.0)) {
            Allowance::WaitUntil(due) => {
                let wait = due.duration_since(at(5.0)).as_secs_f64();
                assert!((wait - 1.0 / 2_000.0).abs() < 1e-5, "{wait}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn steps_hold_each_rate_for_its_time_then_the_last() {
        let t0 = Instant::now();
        let schedule = RateSchedule::steps(&[
            (100.0, Duration::from_secs(2)),
            (1_000.0, Duration::from_secs(1)),
            (10.0, Duration::from_secs(3)),
        ]);
        assert_eq!(schedule.length(), Duration::from_secs(6));
        assert_eq!(schedule.rate_at(Duration::from_millis(2_500)), 1_000.0);
        let pacer = Pacer::new(Pace::Schedule(schedule), t0);
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        assert_eq!(pacer.allowance(0, at(2.0)), Allowance::Emit(201));
        assert_eq!(pacer.allowance(0, at(3.0)), Allowance::Emit(1_201));
        assert_eq!(pacer.allowance(0, at(6.0)), Allowance::Emit(1_231));
        assert_eq!(pacer.allowance(0, at(16.0)), Allowance::Emit(1_331));
        match pacer.allowance(1_201, at(3.0)) {
            Allowance::WaitUntil(due) => {
                let wait = due.duration_since(at(3.0)).as_secs_f64();
                assert!((wait - 0.1).abs() < 1e-6, "{wait}");
            }
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        /// Whatever the schedule, the events due never decrease over time, and the time
        /// given for the next event is when it becomes due.
        #[test]
        fn schedules_are_monotonic_and_their_waits_exact(
            steps in proptest::collection::vec((0.1f64..100_000.0, 0.1f64..100_000.0, 1u64..30_000), 1..5),
            at in 0.0f64..200.0,
        ) {
            let segments: Vec<(f64, f64, Duration)> = steps
                .iter()
                .map(|&(from, to, ms)| (from, to, Duration::from_millis(ms)))
                .collect();
            let schedule = RateSchedule::from_steps(&segments);
            let (now, next) = (schedule.due(at), schedule.due(at + 0.001));
            proptest::prop_assert!(next >= now - 1e-6 * now.max(1.0), "{now} then {next}");
            let k = now.floor() + 1.0;
            let t = schedule.time_of(k).unwrap();
            proptest::prop_assert!(t >= at - 1e-6, "{t} < {at}");
            let due_then = schedule.due(t);
            proptest::prop_assert!((due_then - k).abs() <= 1e-6 * k.max(1.0), "due({t}) = {due_then}, not {k}");
        }
    }
}
