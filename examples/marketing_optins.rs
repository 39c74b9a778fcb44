//! `marketing_optins`: a stateless job of one's own on streamkit's runner. It keeps the
//! website visits whose `opted_into_marketing` is `true` and writes them without `ip` and
//! `user_agent`: a JSON object of the other 10 `EventLog` fields, in `EventLog`'s order,
//! with their values as the parsed event has them (an empty `lat`/`lng` reads as -1, as
//! kafka-io writes it), keyed as kafka-io keys it (`{"event_id": ..., "event_ts": ...}`).
//! A record that is not an event is dead-lettered with kafka-io's reasons.
//!
//! It takes every flag `pipeline` takes, on Kafka or on files:
//!
//! ```text
//! cargo run --release --example marketing_optins -- --use-own --bounded
//! cargo run --release --example marketing_optins -- --input fixtures/website-visit.jsonl
//! ```

use std::process::ExitCode;

use serde::Serialize;
use streamkit::pipeline::Program;
use streamkit::pipeline::job::{
    Emitter, EventLog, Job, Now, Operator, Outcome, Record, Rejection, parse_event, write_event_key,
};
use streamkit::schema::{Coordinate, PythonFormatter};

/// Parse, then the filter: an opted-out visit goes through the first only.
const OPERATORS: [Operator; 2] = [
    Operator::new("Parse events", "parse"),
    Operator::new("Keep opted-in", "keep_opted_in"),
];

/// The job: see the file's doc.
pub struct MarketingOptins;

/// An opted-in visit as written: `EventLog` without `ip` and `user_agent`.
#[derive(Serialize)]
struct OptIn<'a> {
    id: &'a str,
    lat: Coordinate,
    lng: Coordinate,
    age_bracket: &'a str,
    opted_into_marketing: bool,
    http_request: &'a str,
    http_response: i64,
    file_size_bytes: i64,
    event_datetime: &'a str,
    event_ts: i64,
}

impl<'a> From<&'a EventLog<'a>> for OptIn<'a> {
    fn from(event: &'a EventLog<'a>) -> Self {
        OptIn {
            id: &event.id,
            lat: event.lat,
            lng: event.lng,
            age_bracket: &event.age_bracket,
            opted_into_marketing: event.opted_into_marketing,
            http_request: &event.http_request,
            http_response: event.http_response,
            file_size_bytes: event.file_size_bytes,
            event_datetime: &event.event_datetime,
            event_ts: event.event_ts,
        }
    }
}

impl Job for MarketingOptins {
    fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
        let event = match parse_event(record.value) {
            Ok(event) => event,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        if !event.opted_into_marketing {
            return Outcome::Dropped;
        }
        let (key, value) = out.record();
        let mut json = serde_json::Serializer::with_formatter(value, PythonFormatter);
        let written =
            write_event_key(&event, key).and_then(|()| OptIn::from(&event).serialize(&mut json));
        match written {
            Ok(()) => Outcome::Emitted,
            Err(e) => {
                out.clear();
                Outcome::Rejected(Rejection::new(
                    "invalid_field",
                    format!("cannot encode: {e}"),
                ))
            }
        }
    }

    fn operators(&self) -> &'static [Operator] {
        &OPERATORS
    }
}

fn main() -> ExitCode {
    Program::new("marketing-optins")
        .about("Website visits of users who opted into marketing, without ip and user_agent")
        .run(|_config| MarketingOptins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamkit::testing::{Input, TestDriver};

    const OPTED_IN: &str = r#"{"ip": "10.0.0.1", "id": "u1", "lat": "", "lng": "", "user_agent": "curl", "age_bracket": "26-40", "opted_into_marketing": true, "http_request": "GET a.html HTTP/1.0", "http_response": 200, "file_size_bytes": 512, "event_datetime": "2024-03-01T05:51:00.000", "event_ts": 1709272260000}"#;

    #[test]
    fn an_opted_in_visit_is_written_without_ip_and_user_agent_keyed_as_kafka_io() {
        let mut driver = TestDriver::new(MarketingOptins);
        driver.pipe(Input::value(OPTED_IN).header("trace", "t1"));
        let output = driver.read_output();
        assert_eq!(output.len(), 1);
        assert_eq!(
            output[0].key_str(),
            r#"{"event_id": "u1", "event_ts": 1709272260000}"#
        );
        assert_eq!(
            output[0].value_str(),
            r#"{"id": "u1", "lat": -1, "lng": -1, "age_bracket": "26-40", "opted_into_marketing": true, "http_request": "GET a.html HTTP/1.0", "http_response": 200, "file_size_bytes": 512, "event_datetime": "2024-03-01T05:51:00.000", "event_ts": 1709272260000}"#
        );
        assert_eq!(output[0].headers.len(), 1, "headers are passed on");
    }

    #[test]
    fn an_opted_out_visit_is_dropped_and_a_bad_record_dead_lettered() {
        let mut driver = TestDriver::new(MarketingOptins);
        driver.pipe(Input::value(OPTED_IN.replace(
            "\"opted_into_marketing\": true",
            "\"opted_into_marketing\": false",
        )));
        driver.pipe(Input::value("not json").key("k"));
        driver.pipe(Input::null());
        assert!(driver.read_output().is_empty());
        let dead: Vec<(&str, i64)> = driver
            .read_dead_letters()
            .iter()
            .map(|d| (d.kind, d.offset))
            .collect();
        assert_eq!(dead, [("not_json", 1), ("empty", 2)]);
    }
}
