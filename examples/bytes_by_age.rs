//! `bytes_by_age`: a stateful job of one's own on streamkit's runner. Visits and bytes per
//! `age_bracket` in 60-second tumbling event-time windows, the event time taken from
//! `event_ts`. Each window's result is keyed `{"age_bracket": "26-40", "window_start":
//! 1709272260000}` and reads `{"age_bracket": "26-40", "window_start": 1709272260000,
//! "window_end": 1709272320000, "events": 17, "bytes": 5123}` (bounds in epoch
//! milliseconds). Watermarks, lateness, the far-future bound and the state saved with each
//! commit are traffic-agg's ([`Windowed`]); a bounded run fires every window at the end of
//! its input, as Beam does.
//!
//! It takes every flag `pipeline` takes (`--window` changes the 60 s), on Kafka or on
//! files:
//!
//! ```text
//! cargo run --release --example bytes_by_age -- --use-own --bounded
//! cargo run --release --example bytes_by_age -- --input fixtures/traffic-agg-input.jsonl
//! ```

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use streamkit::pipeline::Program;
use streamkit::pipeline::job::{
    Aggregate, Keyed, Operator, Record, Rejection, WindowResult, Windowed, WindowedJob, parse_event,
};

/// Parse, then the windows.
const OPERATORS: [Operator; 2] = [
    Operator::new("Parse events", "parse"),
    Operator::new("Sum per age bracket", "window"),
];

/// The job: see the file's doc.
pub struct BytesByAge;

/// What one window holds for one age bracket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    events: u64,
    bytes: i64,
}

impl Aggregate for Totals {
    fn merge(&mut self, other: Self) {
        self.events += other.events;
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

impl WindowedJob for BytesByAge {
    type Value = Totals;

    fn key<'r>(&mut self, record: &Record<'r>) -> Result<Keyed<'r, Totals>, Rejection> {
        let event = parse_event(record.value)?;
        Ok(Keyed {
            key: event.age_bracket,
            event_ms: event.event_ts,
            value: Totals {
                events: 1,
                bytes: event.file_size_bytes,
            },
        })
    }

    fn write(&self, result: &WindowResult<Totals>, key: &mut Vec<u8>, value: &mut Vec<u8>) {
        // A JSON string of the bracket; writing into a Vec cannot fail.
        let bracket = serde_json::to_string(&result.key).unwrap_or_default();
        let _ = write!(
            key,
            r#"{{"age_bracket": {bracket}, "window_start": {}}}"#,
            result.start_ms
        );
        let _ = write!(
            value,
            r#"{{"age_bracket": {bracket}, "window_start": {}, "window_end": {}, "events": {}, "bytes": {}}}"#,
            result.start_ms, result.end_ms, result.value.events, result.value.bytes
        );
    }

    fn operators(&self) -> &'static [Operator] {
        &OPERATORS
    }
}

fn main() -> ExitCode {
    Program::new("bytes-by-age")
        .about("Visits and bytes per age bracket in 60-second event-time windows")
        .window(Duration::from_secs(60))
        .run(|config| Windowed::new(BytesByAge, &config.windows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamkit::pipeline::job::WindowConfig;
    use streamkit::testing::{Input, TestDriver};

    fn visit(age: &str, event_ts: i64, bytes: i64) -> Input {
        Input::value(format!(
            r#"{{"ip": "10.0.0.1", "id": "u1", "lat": 1.5, "lng": 2.5, "user_agent": "curl", "age_bracket": "{age}", "opted_into_marketing": false, "http_request": "GET a.html HTTP/1.0", "http_response": 200, "file_size_bytes": {bytes}, "event_datetime": "2024-03-01T05:51:00.000", "event_ts": {event_ts}}}"#
        ))
    }

    fn driver() -> TestDriver<Windowed<BytesByAge>> {
        let windows = WindowConfig {
            size: Duration::from_secs(60),
            ..WindowConfig::default()
        };
        TestDriver::new(Windowed::new(BytesByAge, &windows))
    }

    const MINUTE: i64 = 1_709_272_260_000; // 2024-03-01T05:51:00Z, a window's start

    #[test]
    fn a_window_fires_once_the_watermark_passes_it_with_events_and_bytes_per_bracket() {
        let mut driver = driver();
        driver.pipe(visit("26-40", MINUTE + 1_000, 100));
        driver.pipe(visit("55+", MINUTE + 2_000, 7));
        driver.pipe(visit("26-40", MINUTE + 59_999, 23));
        // The watermark (latest event time less 5 s) has not passed the window's end.
        driver.pipe(visit("26-40", MINUTE + 64_999, 1));
        assert!(driver.read_output().is_empty());
        driver.pipe(visit("18-25", MINUTE + 65_000, 2));
        let fired = driver.read_key_values();
        assert_eq!(
            fired,
            vec![
                (
                    r#"{"age_bracket": "26-40", "window_start": 1709272260000}"#.to_string(),
                    r#"{"age_bracket": "26-40", "window_start": 1709272260000, "window_end": 1709272320000, "events": 2, "bytes": 123}"#.to_string()
                ),
                (
                    r#"{"age_bracket": "55+", "window_start": 1709272260000}"#.to_string(),
                    r#"{"age_bracket": "55+", "window_start": 1709272260000, "window_end": 1709272320000, "events": 1, "bytes": 7}"#.to_string()
                ),
            ]
        );
        // The end of a bounded input fires the open window.
        driver.finish();
        let last = driver.read_values();
        assert_eq!(last.len(), 2, "{last:?}");
        assert!(
            last[0].contains(r#""age_bracket": "18-25""#) && last[0].contains(r#""events": 1"#)
        );
    }

    #[test]
    fn late_and_malformed_events_are_dead_lettered_with_their_reason() {
        let mut driver = driver();
        driver.pipe(visit("26-40", MINUTE + 1_000, 1));
        driver.pipe(visit("26-40", MINUTE + 70_000, 1)); // the first window fires
        driver.pipe(visit("26-40", MINUTE + 2_000, 1)); // late
        driver.pipe(Input::value("{}"));
        let dead: Vec<&str> = driver.read_dead_letters().iter().map(|d| d.kind).collect();
        assert_eq!(dead, ["late", "invalid_field"]);
    }
}
