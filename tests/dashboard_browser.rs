//! The dashboard in a real browser: Debian's headless Chromium loads the page of a job
//! running on the embedded cluster, shows the job and its operator chain, its counters
//! rise, its charts draw lines whose points grow, the Topics page shows a message the job
//! wrote (key and pretty JSON), and screenshots of both pages are saved as test artifacts.
//! Run: `cargo test --features browser --test dashboard_browser` (needs `apt-get install chromium`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{pipeline, signal};

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

/// The text of the element with `id` (or class) in a dumped DOM.
fn element_text(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .or_else(|| dom.find(&format!("class=\"{id}\"")))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let after = &dom[start..];
    let text = &after[after.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

/// The charts' lines in a dumped DOM: (series, points drawn, path length).
fn chart_lines(dom: &str) -> Vec<(String, u64, usize)> {
    dom.split("<path ")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            let attr = |name: &str| {
                let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
                Some(tag[start..start + tag[start..].find('"')?].to_string())
            };
            if !tag.contains("class=\"series\"") {
                return None;
            }
            Some((
                attr("data-series")?,
                attr("data-points")?.parse().ok()?,
                attr("d")?.len(),
            ))
        })
        .collect()
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
    let (child, addr, log) = common::spawn_with_address_and_stderr(command, "dashboard at");
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
    let lines_before = chart_lines(&first);
    let records_in = |lines: &[(String, u64, usize)]| {
        lines
            .iter()
            .find(|(name, _, _)| name == "in")
            .map(|&(_, points, path)| (points, path))
            .unwrap_or_else(|| panic!("no records-in line: {lines:?}"))
    };
    let (points_before, path_before) = records_in(&lines_before);
    assert!(
        points_before >= 1 && path_before > 4,
        "the records chart draws a line: {lines_before:?}"
    );
    for series in ["out", "dead letters", "total", "p50", "p99", "commit"] {
        assert!(
            lines_before.iter().any(|(name, _, _)| name == series),
            "no {series} line: {lines_before:?}"
        );
    }

    std::thread::sleep(Duration::from_secs(3));
    let second = String::from_utf8(headless(&url, &["--dump-dom"])).unwrap();
    let after = read_total(&second);
    assert!(
        after > before,
        "the counter rises while events flow: {before} then {after}"
    );
    let (points_after, path_after) = records_in(&chart_lines(&second));
    assert!(
        points_after > points_before && path_after > path_before,
        "the chart's points grow: {points_before} then {points_after}"
    );
    let lag = chart_lines(&second);
    assert!(
        lag.iter()
            .any(|(name, points, _)| name.starts_with("partition ") && *points > 0),
        "per-partition lag is drawn: {lag:?}"
    );

    // The Topics page: the output topic, and a message the job wrote in it.
    let (_, body) = common::http("GET", &addr, "/api/topics");
    let topics: serde_json::Value = serde_json::from_str(&body).unwrap();
    let out = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "website-out")
        .unwrap_or_else(|| panic!("no website-out: {topics}"));
    let partition = out["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["messages"].as_i64() > Some(0))
        .unwrap_or_else(|| panic!("nothing written yet: {out}"))["partition"]
        .as_i64()
        .unwrap();
    let topics_url =
        format!("http://{addr}/topics#topic=website-out&partition={partition}&limit=20");
    let page = String::from_utf8(headless(&topics_url, &["--dump-dom"])).unwrap();
    assert!(page.contains("data-topic=\"website-out\""), "{page}");
    assert!(page.contains("data-topic=\"website-visit-dlq\""), "{page}");
    let message = page
        .split("<tr class=\"message\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no message row: {page}"));
    let key = element_text(message, "key").replace("&quot;", "\"");
    assert!(key.starts_with("{\"event_id\": \""), "{key}");
    let value_start = message.find("<pre class=\"value\">").unwrap() + 19;
    let value = &message[value_start..value_start + message[value_start..].find("</pre>").unwrap()];
    assert!(
        value.starts_with("{\n  \"ip\": \"") && value.contains("\n  \"event_ts\": "),
        "pretty JSON, in the record's field order: {value}"
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
    let topics_shot = artifacts.join("topics.png");
    let _ = std::fs::remove_file(&topics_shot);
    headless(
        &topics_url,
        &[&format!("--screenshot={}", topics_shot.display())],
    );
    let png = std::fs::read(&topics_shot).expect("a screenshot of the Topics page");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000);
    eprintln!("screenshot saved: {}", topics_shot.display());

    signal(&child, "INT");
    let (output, log) = common::wait_with_log(child, Duration::from_secs(10), log);
    assert_eq!(output.status.code(), Some(0), "{log}");
}

#[test]
fn datagens_page_charts_its_rate_and_deliveries_in_a_real_browser() {
    let mut command = common::datagen();
    command.args([
        "--rate",
        "300",
        "--duration",
        "20s",
        "-o",
        "/dev/null",
        "-q",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let (child, addr, log) = common::spawn_with_address_and_stderr(command, "metrics at");
    std::thread::sleep(Duration::from_secs(3));
    let url = format!("http://{addr}/");
    let first = String::from_utf8(headless(&url, &["--dump-dom"])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let second = String::from_utf8(headless(&url, &["--dump-dom"])).unwrap();
    let points = |dom: &str, series: &str| {
        chart_lines(dom)
            .into_iter()
            .find(|(name, _, _)| name == series)
            .unwrap_or_else(|| panic!("no {series} line: {dom}"))
            .1
    };
    for series in ["achieved", "target", "delivered", "errors"] {
        assert!(points(&first, series) >= 1, "{series}");
    }
    assert!(points(&second, "achieved") > points(&first, "achieved"));
    assert_eq!(element_text(&second, "destination"), "→ /dev/null");
    signal(&child, "INT");
    let (output, log) = common::wait_with_log(child, Duration::from_secs(10), log);
    assert!(output.status.success(), "{log}");
}

#[test]
fn the_topics_page_marks_a_cut_key_header_name_and_header_value() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in ["website-visit", "website-out", "website-visit-dlq"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    // Each past the 1 KB that the browser shows of a key or a header.
    let (name, value) = ("h".repeat(2_000), "v".repeat(2_000));
    common::produce_with_headers(
        &bootstrap,
        "website-visit",
        &[(Some(vec![b'k'; 2_000]), Some(b"{}".to_vec()))],
        &[(name.as_str(), value.as_str())],
    );
    let mut command = pipeline();
    command.args(["--bootstrap-servers", &bootstrap]);
    let (child, addr, log) = common::spawn_with_address_and_stderr(command, "dashboard at");
    let url = format!("http://{addr}/topics#topic=website-visit&partition=0&limit=5");
    let page = String::from_utf8(headless(&url, &["--dump-dom"])).unwrap();
    for mark in ["cut: key longer than shown", "[name cut]", "[value cut]"] {
        assert!(page.contains(mark), "no {mark:?} on the page: {page}");
    }
    signal(&child, "INT");
    let (output, log) = common::wait_with_log(child, Duration::from_secs(10), log);
    assert_eq!(output.status.code(), Some(0), "{log}");
}
