//! `traffic-agg` (`traffic_agg.py`): page views per user in event-time windows, keyed by
//! `{"event_id", "window_start"}`, run as a [`Windowed`] job (watermarks, lateness and the
//! state saved with each commit are its). Malformed events and events without a valid
//! time are rejected with the reason; `late` and `future` ones by the windows.

use super::{
    BEAM_OPERATORS, Keyed, Operator, Record, Rejection, WindowConfig, Windowed, WindowedJob,
};
use crate::pipeline::dead_letter;
use crate::windows::{WindowResult, event_time_ms};

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

    fn write(&self, result: &WindowResult<u64>, key: &mut Vec<u8>, value: &mut Vec<u8>) {
        result.write_key(key);
        result.write_value(value);
    }

    fn operators(&self) -> &'static [Operator] {
        &OPERATORS
    }
}
