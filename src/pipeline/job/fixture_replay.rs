//! The built-in jobs replay the recorded fixtures on the test driver, with no broker and
//! no file: kafka-io gives `fixtures/expected/website-out.tsv` and dead-letters each bad
//! record as `website-visit-dlq.json` says; traffic-agg and user-traffic give their
//! `fixtures/expected/` outputs. (`tests/fixtures.rs` replays the same through the
//! `pipeline` binary in file mode.)

use base64::Engine as _;

use super::{JobKind, JobSpec, WindowConfig};
use crate::pipeline::Stats;
use crate::testing::{Input, TestDriver};

fn driver(kind: JobKind) -> TestDriver<Box<dyn super::Job>> {
    TestDriver::new(JobSpec::builtin(kind).build(&Stats::default()))
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.is_empty())
}

#[test]
fn kafka_io_replays_the_fixture_to_the_expected_keys_and_values() {
    let mut driver = driver(JobKind::KafkaIo);
    for line in lines(include_str!("../../../fixtures/website-visit.jsonl")) {
        driver.pipe(Input::value(line));
    }
    let output: Vec<String> = driver
        .read_key_values()
        .iter()
        .map(|(key, value)| format!("{key}	{value}"))
        .collect();
    let expected: Vec<&str> =
        lines(include_str!("../../../fixtures/expected/website-out.tsv")).collect();
    assert_eq!(output.len(), 1000);
    assert_eq!(output, expected);
    assert!(driver.read_dead_letters().is_empty());
}

#[test]
fn kafka_io_dead_letters_each_bad_record_with_its_kind_and_reason() {
    let bad: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../../../fixtures/bad-records.json")).unwrap();
    let expected: Vec<serde_json::Value> = serde_json::from_str(include_str!(
        "../../../fixtures/expected/website-visit-dlq.json"
    ))
    .unwrap();
    let mut driver = driver(JobKind::KafkaIo);
    for record in &bad {
        let text = record.get("value").and_then(|v| v.as_str());
        let input = match (text, record.get("value_base64")) {
            (Some(text), _) => Input::value(text),
            (None, Some(encoded)) => Input::value(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.as_str().unwrap())
                    .unwrap(),
            ),
            (None, None) => Input::null(),
        };
        driver.pipe(input.key(record["key"].as_str().unwrap()));
    }
    assert!(driver.read_output().is_empty());
    let dead = driver.read_dead_letters();
    assert_eq!(dead.len(), expected.len());
    for (letter, expected) in dead.iter().zip(&expected) {
        assert_eq!(
            letter.key.as_deref(),
            expected["key"].as_str().map(str::as_bytes)
        );
        assert_eq!(letter.kind, expected["headers"]["error.kind"]);
        assert_eq!(letter.reason, expected["headers"]["error"]);
    }
}

#[test]
fn traffic_agg_replays_the_fixture_to_the_expected_windows_and_late_events() {
    let mut driver = driver(JobKind::TrafficAgg(WindowConfig::default()));
    for line in lines(include_str!("../../../fixtures/traffic-agg-input.jsonl")) {
        driver.pipe(Input::value(line));
    }
    driver.finish();
    let output = driver.read_values();
    let expected: Vec<&str> =
        lines(include_str!("../../../fixtures/expected/traffic-agg.jsonl")).collect();
    assert_eq!(output, expected);
    let late = driver.read_dead_letters();
    assert_eq!(late.len(), 64);
    assert!(late.iter().all(|d| d.kind == "late"), "{late:?}");
}

#[test]
fn user_traffic_replays_the_fixture_to_the_expected_totals() {
    let mut driver = driver(JobKind::UserTraffic);
    for line in lines(include_str!("../../../fixtures/traffic-agg-input.jsonl")) {
        driver.pipe(Input::value(line));
    }
    assert!(driver.read_output().is_empty(), "written at the end only");
    driver.finish();
    let output = driver.read_values();
    let expected: Vec<&str> = lines(include_str!(
        "../../../fixtures/expected/user-traffic.jsonl"
    ))
    .collect();
    assert_eq!(output, expected);
}
