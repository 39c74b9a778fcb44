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
