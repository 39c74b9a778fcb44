//! `traffic-agg` (`traffic_agg.py`): page views per user in event-time windows, keyed by
//! `{"event_id", "window_start"}`, run as a [`Windowed`] job (watermarks, lateness and the
//! state saved with each commit are its). Malformed events and events without a valid
//! time are rejected with the reason; `late` and `future` ones by the windows.

use super::{
    BEAM_OPERATORS, Keyed, Operator, Record, Rejection, WindowConfig, Windowed, WindowedJob,
};
use crate::pipeline::dead_letter;
use crate::schema::write_python_str;
use crate::windows::{WindowResult, event_time_ms, format_time};

/// Decode and Parse as the article's job, then the windows.
const OPERATORS: [Operator; 3] = [
    BEAM_OPERATORS[0],
    BEAM_OPERATORS[1],
    Operator::new("Count in windows", "window"),
];

#[derive(Debug, Default)]
pub(super) struct TrafficAgg;

/// traffic-agg over `windows`.
pub(super) fn traffic_agg(windows: &WindowConfig) -> Windowed<TrafficAgg> {
    Windowed::new(TrafficAgg, windows)
}

impl WindowedJob for TrafficAgg {
    type Value = u64;

    fn key<'r>(&mut self, record: &Record<'r>) -> Result<Keyed<'r, u64>, Rejection> {
        let event = crate::transform::visit(record.value)?;
        let Some(event_ms) = event_time_ms(&event.event_datetime) else {
            return Err(dead_letter::invalid_event_time(&event.event_datetime));
        };
        Ok(Keyed {
            key: event.id,
            event_ms,
            value: 1,
        })
    }

    /// The key `{"event_id": <id>, "window_start": "<start>"}`, and the value `{"id",
    /// "window_start", "window_end", "page_views"}` in that order, with Python's
    /// `json.dumps` spacing, as the original writes them.
    fn write(&self, result: &WindowResult<u64>, key: &mut Vec<u8>, value: &mut Vec<u8>) {
        key.extend_from_slice(b"{\"event_id\": ");
        write_python_str(key, &result.key);
        key.extend_from_slice(b", \"window_start\": \"");
        key.extend_from_slice(format_time(result.start_ms).as_bytes());
        key.extend_from_slice(b"\"}");

        value.extend_from_slice(b"{\"id\": ");
        write_python_str(value, &result.key);
        value.extend_from_slice(b", \"window_start\": \"");
        value.extend_from_slice(format_time(result.start_ms).as_bytes());
        value.extend_from_slice(b"\", \"window_end\": \"");
        value.extend_from_slice(format_time(result.end_ms).as_bytes());
        value.extend_from_slice(b"\", \"page_views\": ");
        value.extend_from_slice(itoa::Buffer::new().format(result.value).as_bytes());
        value.push(b'}');
    }

    fn operators(&self) -> &'static [Operator] {
        &OPERATORS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Input, TestDriver};

    #[test]
    fn the_original_test_three_events_give_two_windows_written_as_the_original_writes_them() {
        // traffic_agg's test: one id at 05:51:22.083, 05:51:32.083 and 05:51:52.083.
        let mut driver = TestDriver::new(traffic_agg(&WindowConfig::default()));
        for at in ["22.083", "32.083", "52.083"] {
            driver.pipe(Input::value(format!(
                r#"{{"ip": "1.2.3.4", "id": "id-1", "lat": 1.5, "lng": 2.5, "user_agent": "u", "age_bracket": "26-40", "opted_into_marketing": false, "http_request": "GET a.html HTTP/1.0", "http_response": 200, "file_size_bytes": 100, "event_datetime": "2024-04-28T05:51:{at}", "event_ts": 1714283482083}}"#
            )));
        }
        driver.finish();
        let fired = driver.read_key_values();
        assert_eq!(
            fired,
            [
                (
                    r#"{"event_id": "id-1", "window_start": "2024-04-28T05:51:20"}"#,
                    r#"{"id": "id-1", "window_start": "2024-04-28T05:51:20", "window_end": "2024-04-28T05:51:40", "page_views": 2}"#
                ),
                (
                    r#"{"event_id": "id-1", "window_start": "2024-04-28T05:51:40"}"#,
                    r#"{"id": "id-1", "window_start": "2024-04-28T05:51:40", "window_end": "2024-04-28T05:52:00", "page_views": 1}"#
                ),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
