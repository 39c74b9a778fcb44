//! Benchmark: event generation and encoding on one thread, and the cost of formatting
//! `event_datetime` with chrono for every event against `DatetimeFormatter`, which reuses
//! chrono's text within a second.
//! Run: `taskset -c 0 cargo run --release --features bench --bin bench -- generator [EVENTS]`

use std::hint::black_box;
use std::time::Instant;

use crate::datagen::{EncodedBatch, encode};
use crate::generator::{
    Clock, DatetimeFormatter, EventSource, GeneratorConfig, format_event_datetime,
};

fn rate(events: u64, started: Instant) -> f64 {
    events as f64 / started.elapsed().as_secs_f64()
}

pub(super) fn main() {
    let events: u64 = super::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000_000);
    let source = EventSource::new(&GeneratorConfig {
        num_users: 50,
        missing_geo_ratio: 0.2,
        max_lag_ms: 0,
        seed: 1,
        user_skew: None,
    })
    .expect("a valid generator configuration");

    // Timestamps as a 1 ms simulated clock gives them (datagen's batch default).
    let start_ms = 1_713_430_800_000i64;
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..events as i64 {
        bytes += black_box(format_event_datetime(start_ms + i)).len();
    }
    let chrono_each = rate(events, started);

    let mut formatter = DatetimeFormatter::default();
    let started = Instant::now();
    for i in 0..events as i64 {
        bytes += black_box(formatter.format(start_ms + i)).len();
    }
    let cached = rate(events, started);

    // Whole events, keys and values, as datagen's batch mode encodes them.
    let clock = Clock::Simulated {
        start_ms,
        step_us: 1_000,
    };
    let mut stream = source.stream(0);
    let mut batch = EncodedBatch::default();
    let started = Instant::now();
    let mut left = events;
    while left > 0 {
        let n = left.min(4096);
        batch.clear();
        encode(&mut stream, clock, n, &mut batch);
        bytes += batch.lines().len();
        left -= n;
    }
    let generation = rate(events, started);

    eprintln!("event_datetime by chrono, every event:            {chrono_each:>11.0} /s");
    eprintln!("event_datetime by DatetimeFormatter (cached day): {cached:>11.0} /s");
    eprintln!("events generated and encoded (key + value JSON):  {generation:>11.0} /s");
    // The same, had every event paid chrono's full cost instead of the cached one.
    let with_chrono_each = 1.0 / (1.0 / generation + 1.0 / chrono_each - 1.0 / cached);
    eprintln!("  the same with chrono for every event (derived): {with_chrono_each:>11.0} /s");
    eprintln!("({events} each; {bytes} bytes in total)");
}
