//! Delivery latency of a load: from the moment an event is handed to the producer to the
//! moment the broker's acknowledgement is served, in an HDR histogram (the `hdrhistogram`
//! crate), as Kafka's `kafka-producer-perf-test` measures it.
//!
//! Guarantees:
//! - Every acknowledged delivery is recorded once, in the run's histogram, in each of three
//!   windows (reset by [`DeliveryLatency::take_window`], [`DeliveryLatency::take_tick`]
//!   and [`DeliveryLatency::take_live`]) and in a Prometheus histogram.
//! - Values are microseconds, from 1 µs to one hour, with 3 significant digits: a
//!   percentile is exact to 0.1%. A latency beyond an hour is recorded as an hour.
//! - Recording never blocks on a reader for long: the locks are held for one `record`.
//!
//! Limit: the time is that of the thread serving delivery reports; a client that polls
//! rarely adds its polling interval to every latency (datagen polls at least every 1,024
//! events and while it waits).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prometheus_client::metrics::histogram::Histogram as PrometheusHistogram;

/// Longest latency recorded as itself, in microseconds (one hour).
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Bucket bounds of the Prometheus histogram, in seconds: 0.25 ms doubling to 65 s.
fn prometheus_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 19)
}

/// Delivery latencies of one producer.
#[derive(Debug)]
pub struct DeliveryLatency {
    /// The instant send stamps count from.
    epoch: Instant,
    /// The run's, the window's, the tick's (a second window: the report's points) and the
    /// live one (a third: the dashboards' charts), under one lock, taken once per delivery.
    histograms: Mutex<[Histogram<u64>; 4]>,
    prometheus: PrometheusHistogram,
}

const RUN: usize = 0;
const WINDOW: usize = 1;
const TICK: usize = 2;
const LIVE: usize = 3;

impl Default for DeliveryLatency {
    fn default() -> Self {
        DeliveryLatency::new()
    }
}

impl DeliveryLatency {
    pub fn new() -> Self {
        let empty = || {
            // Constant bounds, not input: 1..=HIGHEST_MICROS with 3 significant digits.
            Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid constant bounds")
        };
        DeliveryLatency {
            epoch: Instant::now(),
            histograms: Mutex::new([empty(), empty(), empty(), empty()]),
            prometheus: PrometheusHistogram::new(prometheus_buckets()),
        }
    }

    /// The stamp of a send now: microseconds since this recorder's epoch (it travels with
    /// the message as its delivery opaque).
    pub fn stamp(&self) -> usize {
        usize::try_from(self.epoch.elapsed().as_micros()).unwrap_or(usize::MAX)
    }

    /// Records the delivery of a message stamped `sent` (by [`stamp`](Self::stamp)).
    pub fn record(&self, sent: usize) {
        let micros = self.stamp().saturating_sub(sent) as u64;
        self.record_micros(micros);
    }

    /// Records the latency from `from` to `to`, both in microseconds on one clock.
    pub fn record_between(&self, from: u64, to: u64) {
        self.record_micros(to.saturating_sub(from));
    }

    fn record_micros(&self, micros: u64) {
        let micros = micros.clamp(1, HIGHEST_MICROS);
        if let Ok(mut histograms) = self.histograms.lock() {
            for histogram in histograms.iter_mut() {
                histogram.saturating_record(micros);
            }
        }
        self.prometheus.observe(micros as f64 / 1e6);
    }

    /// The Prometheus histogram (seconds), to register with a registry.
    pub fn prometheus(&self) -> PrometheusHistogram {
        self.prometheus.clone()
    }

    /// The latencies since the last call, and a fresh window.
    pub fn take_window(&self) -> LatencySummary {
        self.take(WINDOW)
    }

    /// As [`take_window`](Self::take_window), for a second window of its own (the
    /// report's points), independent of the first.
    pub fn take_tick(&self) -> LatencySummary {
        self.take(TICK)
    }

    /// As [`take_window`](Self::take_window), for a third window (the dashboards' charts).
    pub fn take_live(&self) -> LatencySummary {
        self.take(LIVE)
    }

    fn take(&self, which: usize) -> LatencySummary {
        match self.histograms.lock() {
            Ok(mut histograms) => {
                let summary = LatencySummary::of(&histograms[which]);
                histograms[which].reset();
                summary
            }
            Err(_) => LatencySummary::default(),
        }
    }

    /// The latencies of the whole run.
    pub fn run_summary(&self) -> LatencySummary {
        self.histograms
            .lock()
            .map(|histograms| LatencySummary::of(&histograms[RUN]))
            .unwrap_or_default()
    }
}

/// Figures of a set of latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl LatencySummary {
    /// One figure (`pick`) in milliseconds; `None` when nothing was recorded.
    pub fn ms(&self, pick: fn(&LatencySummary) -> Duration) -> Option<f64> {
        (self.count > 0).then(|| pick(self).as_secs_f64() * 1e3)
    }

    fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let at = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
        LatencySummary {
            count: histogram.len(),
            mean: Duration::from_secs_f64(histogram.mean() / 1e6),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(histogram.max()),
        }
    }
}

/// Milliseconds with one decimal, as Kafka's perf tool prints them.
pub fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact_to_a_tenth_of_a_percent_and_ordered() {
        let latency = DeliveryLatency::new();
        for micros in 1..=10_000u64 {
            latency.record_micros(micros * 100); // 0.1 ms to 1 s, evenly
        }
        let run = latency.run_summary();
        assert_eq!(run.count, 10_000);
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1e3 - ms).abs() <= ms * 0.002;
        assert!(near(run.p50, 500.0), "{run:?}");
        assert!(near(run.p95, 950.0), "{run:?}");
        assert!(near(run.p99, 990.0), "{run:?}");
        assert!(near(run.p999, 999.0), "{run:?}");
        assert!(near(run.max, 1000.0), "{run:?}");
        assert!(near(run.mean, 500.05), "{run:?}");
        assert!(run.p50 <= run.p95 && run.p95 <= run.p99 && run.p99 <= run.p999);
        assert!(run.p999 <= run.max);
    }

    #[test]
    fn a_window_holds_what_came_since_the_last_one_and_the_run_holds_everything() {
        let latency = DeliveryLatency::new();
        latency.record_micros(2_000);
        latency.record_micros(4_000);
        // Within the histogram's precision (3 significant digits).
        let about = |d: Duration, micros: u64| d.as_micros().abs_diff(u128::from(micros)) <= 5;
        let first = latency.take_window();
        assert_eq!(first.count, 2);
        assert!(about(first.max, 4_000), "{first:?}");
        latency.record_micros(1_000);
        let second = latency.take_window();
        assert_eq!(second.count, 1);
        assert!(about(second.max, 1_000), "{second:?}");
        assert_eq!(latency.take_window(), LatencySummary::default());
        assert_eq!(latency.run_summary().count, 3);
    }

    #[test]
    fn a_stamp_measures_the_time_to_its_record_and_extremes_are_clamped() {
        let latency = DeliveryLatency::new();
        let sent = latency.stamp();
        std::thread::sleep(Duration::from_millis(20));
        latency.record(sent);
        let run = latency.run_summary();
        assert!(run.max >= Duration::from_millis(20), "{run:?}");
        assert!(run.max < Duration::from_secs(5), "{run:?}");
        latency.record(usize::MAX); // a stamp from the future: 0, recorded as 1 µs
        latency.record_micros(u64::MAX);
        let run = latency.run_summary();
        assert_eq!(run.count, 3);
        assert!(run.max <= Duration::from_secs(3_601), "{run:?}");
        assert_eq!(millis(Duration::from_micros(12_345)), "12.3 ms");
    }
}
