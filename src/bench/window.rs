//! Benchmark: the traffic-agg aggregation alone, on one thread: decode, parse, read the
//! event time and count into 20-second windows (firing as the watermark passes), over
//! events read from a file of JSON lines; and `event_time_ms` next to chrono's
//! `parse_from_str` on the same texts.
//! Run: `datagen -e 1000000 -u 10000 --seed 1 --start-time 2024-04-28T00:00:00Z --time-step-ms 10 -l 3 -o /tmp/w.jsonl`
//! then `taskset -c 0 cargo run --release --features bench --bin bench -- window /tmp/w.jsonl`

use std::time::{Duration, Instant};

use crate::windows::{Aggregator, Now, WindowConfig, event_time_ms};

pub(super) fn main() {
    let path = super::args()
        .nth(1)
        .expect("usage: window_bench EVENTS.jsonl");
    let text = std::fs::read_to_string(&path).expect("readable events");
    let lines: Vec<&str> = text.lines().collect();

    let mut aggregator = Aggregator::new(&WindowConfig::default());
    let now = Now::current();
    let started = Instant::now();
    let mut fired = 0usize;
    for (offset, line) in lines.iter().enumerate() {
        let event = crate::transform::visit(Some(line.as_bytes())).expect("valid events");
        let at = event_time_ms(&event.event_datetime).expect("a valid time");
        aggregator.add(0, offset as i64, &event.id, at, now);
        if offset % 1024 == 0 {
            fired += aggregator.fire(now).len();
        }
    }
    fired += aggregator.fire_all().len();
    let elapsed = started.elapsed();
    let rate = lines.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "aggregation (decode, parse, event time, count, fire): {rate:>9.0} events/s, {:.0} ns per event; {} events, {fired} window results",
        elapsed.as_nanos() as f64 / lines.len() as f64,
        lines.len()
    );

    let times: Vec<&str> = lines
        .iter()
        .map(|l| {
            let start = l.find("\"event_datetime\": \"").expect("a time") + 19;
            &l[start..start + 23]
        })
        .collect();
    let time = |f: &dyn Fn(&str) -> i64| -> Duration {
        let started = Instant::now();
        let mut sum = 0i64;
        for t in &times {
            sum = sum.wrapping_add(f(t));
        }
        std::hint::black_box(sum);
        started.elapsed()
    };
    let ours = time(&|t| event_time_ms(t).unwrap_or(0));
    let chrono = time(&|t| {
        chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|d| d.and_utc().timestamp_millis())
            .unwrap_or(0)
    });
    let per = |d: Duration| d.as_nanos() as f64 / times.len() as f64;
    eprintln!(
        "event time: event_time_ms {:.0} ns, chrono parse_from_str {:.0} ns per text",
        per(ours),
        per(chrono)
    );
}
