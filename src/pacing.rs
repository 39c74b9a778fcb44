//! Pacing: when the next events may be emitted.
//!
//! - `Pace::Rate(r)`: event `k` (from 0) is due at `start + k / r`. Due times come from
//!   the start instant, never from the previous event, so the average rate is exact over
//!   any run and errors do not accumulate. At high rates the caller emits every due event
//!   in one batch: there is no sleep per event.
//! - `Pace::Delay(d)`: the original's `--delay-seconds`, a pause of `d` after each event.
//! - `Pace::Unlimited`: as fast as the sink takes them.
//!
//! The pacer is pure: callers pass the current instant. It never panics or overflows: a
//! count or an instant beyond what the types hold saturates (an instant too far to
//! represent becomes "in a day", asked again then).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    Unlimited,
    /// Events per second.
    Rate(f64),
    /// Pause after each event.
    Delay(Duration),
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
}
