//! The fixtures are exactly what their documented command regenerates.

mod common;

use std::path::Path;

use common::{datagen, stderr};
use streamkit::EventLog;

/// The datagen arguments of the regeneration command for `file` in fixtures/README.md.
fn documented_args(file: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/README.md"))
            .unwrap();
    let line = readme
        .lines()
        .find(|l| {
            l.starts_with("cargo run --release --bin datagen -- ")
                && l.contains(&format!("--output fixtures/{file}"))
        })
        .unwrap_or_else(|| panic!("fixtures/README.md has no command for {file}"));
    line.split_whitespace()
        .skip_while(|w| *w != "--")
        .skip(1)
        .map(String::from)
        .collect()
}

#[test]
fn website_visit_fixture_regenerates_byte_for_byte() {
    let args = documented_args("website-visit.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let output = datagen()
        .current_dir(dir.path())
        .args(&args)
        .arg("-q")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let regenerated = std::fs::read(dir.path().join("fixtures/website-visit.jsonl")).unwrap();
    let committed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/website-visit.jsonl"))
            .unwrap();
    assert!(
        regenerated == committed,
        "fixtures/website-visit.jsonl differs from what its command generates"
    );
}

#[test]
fn website_visit_fixture_has_about_1000_events_with_missing_geo_users() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/website-visit.jsonl"),
    )
    .unwrap();
    let events: Vec<EventLog> = text
        .lines()
        .map(|l| EventLog::from_json(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(events.len(), 1000);
    let missing = events.iter().filter(|e| !e.lat.is_truthy()).count();
    assert!(
        missing > 50 && missing < 500,
        "{missing} events from missing-geo users"
    );
}

/// The pipeline arguments of the documented command that writes `file`.
fn documented_pipeline_args(file: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/README.md"))
            .unwrap();
    let line = readme
        .lines()
        .find(|l| {
            l.starts_with("cargo run --release --bin pipeline -- ")
                && l.contains(&format!("> fixtures/expected/{file}"))
        })
        .unwrap_or_else(|| panic!("fixtures/README.md has no command for {file}"));
    line.split_whitespace()
        .skip_while(|w| *w != "--")
        .skip(1)
        .take_while(|w| *w != ">")
        .map(String::from)
        .collect()
}

#[test]
fn traffic_agg_input_regenerates_byte_for_byte() {
    let args = documented_args("traffic-agg-input.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let output = datagen()
        .current_dir(dir.path())
        .args(&args)
        .arg("-q")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let regenerated = std::fs::read(dir.path().join("fixtures/traffic-agg-input.jsonl")).unwrap();
    let checked_in = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/traffic-agg-input.jsonl"),
    )
    .unwrap();
    assert!(
        regenerated == checked_in,
        "the fixture differs from its command's output"
    );
}

#[test]
fn the_aggregation_jobs_replay_their_fixture_to_the_expected_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, dead_letters) in [
        ("traffic-agg.jsonl", Some("traffic-agg-dlq.jsonl")),
        ("user-traffic.jsonl", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = documented_pipeline_args(file);
        // The dead letters go to a temporary file, to compare.
        if let Some(position) = args.iter().position(|a| a == "--dead-letter-file") {
            args[position + 1] = dir.path().join("dlq.jsonl").display().to_string();
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .env_remove("BOOTSTRAP_SERVERS")
            .current_dir(root)
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let expected = std::fs::read_to_string(root.join("fixtures/expected").join(file)).unwrap();
        assert!(
            common::stdout(&output) == expected,
            "{file}: the replay differs from the checked-in output"
        );
        if let Some(dlq) = dead_letters {
            let written = std::fs::read_to_string(dir.path().join("dlq.jsonl")).unwrap();
            let expected =
                std::fs::read_to_string(root.join("fixtures/expected").join(dlq)).unwrap();
            assert!(written == expected, "{dlq} differs");
            assert_eq!(written.lines().count(), 64);
            assert!(written.lines().all(|l| l.contains("\"kind\":\"late\"")));
            assert!(
                stderr(&output).contains("counted 2,936 + dead-lettered 64"),
                "{}",
                stderr(&output)
            );
        }
    }
    // The original's own user-traffic test: sizes 207, 446 and 318.
    let expected =
        std::fs::read_to_string(root.join("fixtures/expected/user-traffic.jsonl")).unwrap();
    let mut sizes: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for line in std::fs::read_to_string(root.join("fixtures/traffic-agg-input.jsonl"))
        .unwrap()
        .lines()
    {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        sizes
            .entry(event["id"].as_str().unwrap().to_string())
            .or_default()
            .push(event["file_size_bytes"].as_i64().unwrap());
    }
    for line in expected.lines() {
        let user: serde_json::Value = serde_json::from_str(line).unwrap();
        let mine = &sizes[user["id"].as_str().unwrap()];
        assert_eq!(user["page_views"], mine.len());
        assert_eq!(user["total_bytes"], mine.iter().sum::<i64>());
        assert_eq!(user["max_bytes"], *mine.iter().max().unwrap());
        assert_eq!(user["min_bytes"], *mine.iter().min().unwrap());
    }
}
