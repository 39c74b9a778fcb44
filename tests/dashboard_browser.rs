//! The dashboard in a real browser: Debian's headless Chromium loads the page of a job
//! running on the embedded cluster, shows the job and its operator chain, its counters
//! rise, and a screenshot is saved as a test artifact.
//! Run: `cargo test --features browser --test dashboard_browser` (needs `apt-get install chromium`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{pipeline, signal, spawn_with_address, wait_with_timeout};

fn chromium() -> PathBuf {
    let path = std::env::var_os("STREAMKIT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium (apt-get install chromium)",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `args`, letting the page's script run for 3 s.
fn headless(url: &str, args: &[&str]) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=3000", "--window-size=1280,900"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The text of the element with `id` in a dumped DOM.
fn element_text(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let after = &dom[start..];
    let text = &after[after.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

fn read_total(dom: &str) -> u64 {
    element_text(dom, "read-total")
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", element_text(dom, "read-total")))
}

#[test]
fn the_page_shows_the_job_and_its_rising_counters_in_a_real_browser() {
    let mut command = pipeline();
    command.args(["--demo-rate", "30", "--checkpointing-interval", "1000"]);
    let (child, addr) = spawn_with_address(command, "dashboard at");
    let url = format!("http://{addr}/");
    // The workers join the job's consumer group (3 s on the embedded cluster), then read.
    let started = std::time::Instant::now();
    loop {
        let (_, body) = common::http("GET", &addr, "/api/job");
        let job: serde_json::Value = serde_json::from_str(&body).unwrap();
        if job["totals"]["read"].as_u64() > Some(0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing read: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let first = String::from_utf8(headless(&url, &["--dump-dom"])).unwrap();
    assert_eq!(element_text(&first, "job-name"), "kafka-io");
    assert_eq!(element_text(&first, "job-state"), "RUNNING");
    let chain: Vec<&str> = first
        .split("data-name=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(
        chain,
        [
            "Read from Kafka",
            "Decode messages",
            "Parse elements",
            "Create messages",
            "Write to Kafka",
            "Dead letters"
        ]
    );
    let before = read_total(&first);
    assert!(before > 0, "the page shows records read");

    std::thread::sleep(Duration::from_secs(3));
    let second = String::from_utf8(headless(&url, &["--dump-dom"])).unwrap();
    let after = read_total(&second);
    assert!(
        after > before,
        "the counter rises while events flow: {before} then {after}"
    );

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    headless(&url, &[&format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot saved: {}", screenshot.display());

    signal(&child, "INT");
    let output = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(0));
}
