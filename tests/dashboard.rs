//! The dashboard, its JSON, its history and /metrics, against a job running on the
//! embedded cluster; its topic browser against librdkafka's mock cluster; and datagen's
//! /metrics and page.

mod common;

use std::time::Duration;

use common::{
    datagen, http, metric, pipeline, produce_with_headers, signal, spawn_with_address,
    wait_with_timeout,
};
use streamkit::pipeline::dead_letter;

fn api(addr: &str) -> serde_json::Value {
    let (status, body) = http("GET", addr, "/api/job");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The value of the first sample of `metric` whose line contains every label in `labels`.

#[test]
fn the_dashboard_reports_the_records_actually_processed_and_they_grow() {
    let mut command = pipeline();
    command.args([
        "--demo-rate",
        "40",
        "--checkpointing-interval",
        "500",
        "-X",
        "sasl.password=hunter2-secret",
    ]);
    let (child, addr) = spawn_with_address(command, "dashboard at");
    // The workers join the job's consumer group first (the embedded cluster, like Kafka,
    // waits 3 s for a new group's members), then read. Under load, the mock cluster can
    // take 45 s to let the last member in.
    let started = std::time::Instant::now();
    let first = loop {
        let job = api(&addr);
        if job["partitions"].as_array().unwrap().len() == 3
            && job["totals"]["read"].as_u64() > Some(0)
        {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no assignment or no records after 90 s: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first["job"]["name"], "kafka-io");
    assert_eq!(first["job"]["state"], "RUNNING");
    assert_eq!(first["job"]["mode"], "embedded cluster");
    assert_eq!(first["job"]["parallelism"], 3);
    assert_eq!(first["job"]["delivery_guarantee"], "at-least-once");
    let names: Vec<&str> = first["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Read from Kafka",
            "Decode messages",
            "Parse elements",
            "Create messages",
            "Write to Kafka",
            "Dead letters"
        ]
    );
    let read_before = first["totals"]["read"].as_u64().unwrap();
    assert!(read_before > 0, "{first}");
    assert_eq!(first["partitions"].as_array().unwrap().len(), 3, "{first}");

    std::thread::sleep(Duration::from_secs(2));
    let (status, metrics) = http("GET", &addr, "/metrics");
    assert_eq!(status, 200);
    let second = api(&addr);
    let read_after = second["totals"]["read"].as_u64().unwrap();
    assert!(
        read_after > read_before,
        "counts grow while events flow: {read_before} then {read_after}"
    );
    let scraped = metric(
        &metrics,
        "streamkit_pipeline_records_total",
        &["operator=\"read\"", "direction=\"out\""],
    );
    assert!(
        scraped as u64 >= read_before && scraped as u64 <= read_after,
        "{scraped} not within {read_before}..{read_after}"
    );
    let written = metric(
        &metrics,
        "streamkit_pipeline_records_total",
        &["operator=\"write\"", "direction=\"out\""],
    );
    assert!(written > 0.0 && written <= scraped);
    assert!(
        second["operators"][0]["rate_per_second"].as_f64().unwrap() > 0.0,
        "{second}"
    );
    assert!(
        !second["checkpoints"].as_array().unwrap().is_empty(),
        "commits every 500 ms: {second}"
    );
    assert!(
        metric(
            &metrics,
            "streamkit_pipeline_checkpoint_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(metrics.contains("# TYPE streamkit_pipeline_checkpoint_duration_seconds histogram"));
    assert!(metrics.contains("# TYPE streamkit_pipeline_partition_lag_records gauge"));
    assert!(
        metrics.contains("streamkit_build_info{version=\""),
        "{metrics}"
    );

    // Read-only, and nothing about how it connects.
    let (page_status, page) = http("GET", &addr, "/");
    assert_eq!(page_status, 200);
    assert!(
        page.contains("<title>streamkit pipeline</title>")
            && !page.contains("http://")
            && !page.contains("https://")
    );
    assert_eq!(http("POST", &addr, "/api/job").0, 405);
    assert_eq!(http("DELETE", &addr, "/metrics").0, 405);
    let everything = format!("{page}{metrics}{second}");
    assert!(!everything.contains("hunter2-secret"));
    assert!(
        !everything.contains("127.0.0.1:"),
        "no cluster address may appear"
    );

    signal(&child, "INT");
    let output = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(0));
}

fn json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http("GET", addr, path);
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {path}: {body}"));
    (status, value)
}

/// True when `series` is an array with a value above 0 (an empty history has no series).
fn any_positive(series: &serde_json::Value) -> bool {
    series
        .as_array()
        .is_some_and(|values| values.iter().any(|v| v.as_f64() > Some(0.0)))
}

#[test]
fn the_history_grows_a_point_a_second_with_every_series_the_same_length() {
    let mut command = pipeline();
    command.args(["--demo-rate", "100", "--checkpointing-interval", "500"]);
    let (child, addr) = spawn_with_address(command, "dashboard at");
    let started = std::time::Instant::now();
    let first = loop {
        let (status, history) = json(&addr, "/api/job/history");
        assert_eq!(status, 200);
        let read = any_positive(&history["series"]["records_in_per_second"]);
        let latency = any_positive(&history["series"]["end_to_end_latency_p50_ms"]);
        let commits = any_positive(&history["series"]["commit_duration_ms"]);
        if read && latency && commits && !history["partition_lag"]["0"].is_null() {
            break history;
        }
        // Under parallel load the mock cluster can take 45 s to let every member in.
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "no rate, latency, commit or per-partition lag yet: {history}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(first["interval_seconds"], 1);
    assert_eq!(first["capacity"], 900);
    std::thread::sleep(Duration::from_millis(2500));
    let (_, second) = json(&addr, "/api/job/history");
    let points = |h: &serde_json::Value| h["t_ms"].as_array().unwrap().len();
    assert!(
        points(&second) >= points(&first) + 2,
        "{} then {}",
        points(&first),
        points(&second)
    );
    let times: Vec<u64> = second["t_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    for name in [
        "records_in_per_second",
        "records_out_per_second",
        "dead_letters_per_second",
        "lag_records",
        "commit_duration_ms",
        "end_to_end_latency_p50_ms",
        "end_to_end_latency_p99_ms",
    ] {
        assert_eq!(
            second["series"][name].as_array().map(Vec::len),
            Some(times.len()),
            "{name}"
        );
    }
    for lag in second["partition_lag"].as_object().unwrap().values() {
        assert_eq!(lag.as_array().unwrap().len(), times.len());
    }
    // The rate charted is the rate of the demo feed (100/s), once the backlog is read.
    let last_in = second["series"]["records_in_per_second"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(last_in > 20.0 && last_in < 1000.0, "{last_in}");
    let (_, metrics) = http("GET", &addr, "/metrics");
    assert!(
        metric(
            &metrics,
            "streamkit_pipeline_end_to_end_latency_seconds_count",
            &[]
        ) > 0.0
    );
    signal(&child, "INT");
    let output = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(0));
}

/// A valid input event (the fixture's first).
fn good_event() -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/website-visit.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[test]
fn the_topic_browser_lists_topics_shows_messages_and_holds_to_its_caps() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in ["website-visit", "website-out", "website-visit-dlq"] {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    let mut records: Vec<common::RawRecord> = (0..6).map(|_| (None, Some(good_event()))).collect();
    // Not JSON, and larger than the browser shows of a value.
    records.push((Some(b"big".to_vec()), Some(vec![b'x'; 100_000])));
    produce_with_headers(&bootstrap, "website-visit", &records, &[("trace", "t-1")]);
    let mut command = pipeline();
    command.args([
        "--bootstrap-servers",
        &bootstrap,
        "--checkpointing-interval",
        "500",
    ]);
    let (child, addr, log) = common::spawn_with_address_and_stderr(command, "dashboard at");
    let started = std::time::Instant::now();
    loop {
        let job = api(&addr);
        if job["totals"]["written"].as_u64() == Some(6)
            && job["totals"]["dead_lettered"].as_u64() == Some(1)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "the job did not handle the 7 records: {job}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let (status, list) = json(&addr, "/api/topics");
    assert_eq!(status, 200, "{list}");
    let topics = list["topics"].as_array().unwrap();
    let names: Vec<&str> = topics.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["website-out", "website-visit", "website-visit-dlq"]);
    let messages = |name: &str| {
        topics.iter().find(|t| t["name"] == name).unwrap()["messages"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(messages("website-visit"), 7);
    assert_eq!(messages("website-out"), 6);
    assert_eq!(messages("website-visit-dlq"), 1);
    let out = &topics[0]["partitions"];
    assert_eq!(out.as_array().unwrap().len(), 2);
    assert_eq!(out[0]["start_offset"], 0);

    // Every output record, with its key, its value and the input's headers.
    let mut shown = 0;
    for partition in 0..2 {
        let (status, page) = json(
            &addr,
            &format!("/api/topics/website-out/partitions/{partition}/messages?limit=500"),
        );
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap();
        assert_eq!(
            messages.len() as i64,
            page["end_offset"].as_i64().unwrap() - page["start_offset"].as_i64().unwrap()
        );
        for m in messages {
            let key: serde_json::Value = serde_json::from_str(m["key"].as_str().unwrap()).unwrap();
            assert!(
                key["event_id"].is_string() && key["event_ts"].is_i64(),
                "{m}"
            );
            let value: serde_json::Value =
                serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
            assert_eq!(value.as_object().unwrap().len(), 12, "{m}");
            assert_eq!(m["headers"][0]["key"], "trace");
            assert_eq!(m["headers"][0]["value"], "t-1");
            assert_eq!(m["timestamp_type"], "create_time");
        }
        shown += messages.len();
    }
    assert_eq!(shown, 6);

    // The last N, newest last.
    let busiest = if out[0]["messages"].as_i64() >= out[1]["messages"].as_i64() {
        0
    } else {
        1
    };
    let (_, all) = json(
        &addr,
        &format!("/api/topics/website-out/partitions/{busiest}/messages"),
    );
    let (_, two) = json(
        &addr,
        &format!("/api/topics/website-out/partitions/{busiest}/messages?limit=2"),
    );
    let offsets = |page: &serde_json::Value| -> Vec<i64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_i64().unwrap())
            .collect()
    };
    let every = offsets(&all);
    assert!(every.len() >= 3, "{all}");
    assert_eq!(offsets(&two), every[every.len() - 2..]);
    assert_eq!(two["limit"], 2);

    // The dead letter (in the partition its key hashes to): its reason in the `error`
    // header, its value cut at the cap.
    let pages: Vec<serde_json::Value> = (0..2)
        .map(|partition| {
            json(
                &addr,
                &format!("/api/topics/website-visit-dlq/partitions/{partition}/messages"),
            )
            .1
        })
        .collect();
    let letters: Vec<&serde_json::Value> = pages
        .iter()
        .flat_map(|page| page["messages"].as_array().unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{pages:?}");
    let letter = letters[0];
    assert_eq!(letter["key"], "big");
    assert_eq!(letter["value_bytes"], 100_000);
    assert_eq!(letter["value_truncated"], true);
    assert_eq!(letter["value"].as_str().unwrap().len(), 16 * 1024);
    let headers = letter["headers"].as_array().unwrap();
    let error = headers.iter().find(|h| h["key"] == "error").unwrap();
    assert!(
        error["value"].as_str().unwrap().contains("JSON"),
        "{letter}"
    );
    assert!(headers.iter().any(|h| h["key"] == dead_letter::KIND));

    // Bad requests get a clear 4xx, with the reason.
    for (path, expected, says) in [
        (
            "/api/topics/bad%20name/partitions/0/messages",
            400,
            "not a topic name",
        ),
        (
            "/api/topics/a..b%2Fc/partitions/0/messages",
            400,
            "not a topic name",
        ),
        (
            "/api/topics/website-out/partitions/-1/messages",
            400,
            "not a partition",
        ),
        (
            "/api/topics/website-out/partitions/x/messages",
            400,
            "not a partition",
        ),
        (
            "/api/topics/website-out/partitions/2/messages",
            404,
            "has no partition 2",
        ),
        (
            "/api/topics/nope/partitions/0/messages",
            404,
            "no topic nope",
        ),
        (
            "/api/topics/website-out/partitions/0/messages?limit=0",
            400,
            "limit",
        ),
        (
            "/api/topics/website-out/partitions/0/messages?limit=501",
            400,
            "1 to 500",
        ),
        (
            "/api/topics/website-out/partitions/0/messages?limit=big",
            400,
            "limit",
        ),
    ] {
        let (status, body) = http("GET", &addr, path);
        assert_eq!(status, expected, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
    assert_eq!(http("POST", &addr, "/api/topics").0, 405);
    let (page_status, page) = http("GET", &addr, "/topics");
    assert_eq!(page_status, 200);
    assert!(page.contains("<title>streamkit topics</title>"));
    let everything = format!("{list}{all}{pages:?}{page}");
    assert!(
        !everything.contains(&bootstrap),
        "no cluster address may appear"
    );

    signal(&child, "INT");
    let output = wait_with_timeout(child, Duration::from_secs(10));
    let log = log.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{log}");
}

#[test]
fn in_file_mode_the_topic_browser_says_there_are_no_topics() {
    let (child, addr) = idle_job("");
    let (status, list) = json(&addr, "/api/topics");
    assert_eq!(status, 200);
    assert_eq!(list["topics"], serde_json::json!([]));
    assert!(list["note"].as_str().unwrap().contains("files"), "{list}");
    assert_eq!(http("GET", &addr, "/topics").0, 200);
    let (status, body) = http(
        "GET",
        &addr,
        "/api/topics/website-out/partitions/0/messages",
    );
    assert_eq!(status, 404, "{body}");
    let (status, history) = json(&addr, "/api/job/history");
    assert_eq!(status, 200);
    assert!(history["series"].is_object());
    signal(&child, "KILL");
    let _ = wait_with_timeout(child, Duration::from_secs(10));
}

#[test]
fn a_taken_ui_port_falls_back_to_the_next_free_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // The embedded demo, with the taken port asked for explicitly.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
    command
        .env_remove("BOOTSTRAP_SERVERS")
        .args(["--ui-addr", &format!("127.0.0.1:{port}")]);
    let (child, addr) = spawn_with_address(command, "dashboard at");
    assert_ne!(addr, format!("127.0.0.1:{port}"));
    assert_eq!(http("GET", &addr, "/api/job").0, 200);
    signal(&child, "INT");
    let _ = wait_with_timeout(child, Duration::from_secs(10));
}

#[test]
fn an_address_that_cannot_be_bound_is_named_in_the_error() {
    // Not an address of this machine: binding fails, and no other port is tried.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["--input", "-", "--ui-addr", "192.0.2.1:8081"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot serve the dashboard on 192.0.2.1:8081:"),
        "{err}"
    );
    let output = datagen()
        .args([
            "-e",
            "1",
            "-o",
            "/dev/null",
            "--metrics-addr",
            "192.0.2.1:9100",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot serve the metrics on 192.0.2.1:9100:"),
        "{err}"
    );
    assert!(!err.contains("dashboard"), "{err}");
}

#[test]
fn datagen_serves_its_load_test_metrics() {
    let mut command = datagen();
    command.args([
        "--rate",
        "400",
        "--duration",
        "6s",
        "-o",
        "/dev/null",
        "-q",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let (child, addr) = spawn_with_address(command, "metrics at");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, first) = http("GET", &addr, "/metrics");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, second) = http("GET", &addr, "/metrics");
    let generated = |text: &str| metric(text, "streamkit_datagen_events_generated_total", &[]);
    assert!(
        generated(&first) > 0.0 && generated(&second) > generated(&first),
        "{first}\n{second}"
    );
    assert!(metric(&second, "streamkit_datagen_events_delivered_total", &[]) > 0.0);
    assert_eq!(
        metric(&second, "streamkit_datagen_delivery_errors_total", &[]),
        0.0
    );
    let rate = metric(&second, "streamkit_datagen_events_per_second", &[]);
    assert!(rate > 100.0 && rate < 800.0, "about 400/s: {rate}");
    assert!(second.contains("streamkit_build_info"));
    // The page and its charts' data.
    let (status, page) = http("GET", &addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>streamkit datagen</title>"));
    let (status, load) = json(&addr, "/api/job");
    assert_eq!(status, 200);
    assert_eq!(load["destination"], "/dev/null");
    assert_eq!(load["target_rate"], 400.0);
    assert!(load["delivered"].as_u64() > Some(0), "{load}");
    let (_, history) = json(&addr, "/api/job/history");
    let achieved = history["series"]["achieved_rate"].as_array().unwrap();
    assert!(achieved.len() >= 2, "{history}");
    assert!(
        achieved.iter().any(|v| v.as_f64() > Some(100.0)),
        "{history}"
    );
    assert_eq!(history["series"]["target_rate"][0], 400.0);
    let output = wait_with_timeout(child, Duration::from_secs(15));
    assert!(output.status.success());
}

/// A pipeline in file mode reading a stdin that stays open and quiet (the pipe is held by
/// the returned child): a job that runs, with a dashboard, and no Kafka. `shell_prefix`
/// runs first in the shell (say, to lower `ulimit -n`).
fn idle_job(shell_prefix: &str) -> (std::process::Child, String) {
    let mut command = std::process::Command::new("bash");
    command
        .args([
            "-c",
            &format!(
                "{shell_prefix} exec {} --input - --output /dev/null --ui-addr 127.0.0.1:0",
                env!("CARGO_BIN_EXE_pipeline")
            ),
        ])
        .stdin(std::process::Stdio::piped());
    spawn_with_address(command, "dashboard at")
}

/// GET `path`, retrying for up to `limit`: (status, how long it took).
fn get_eventually(addr: &str, path: &str, limit: Duration) -> (u16, Duration) {
    let started = std::time::Instant::now();
    loop {
        let attempt = std::panic::catch_unwind(|| http("GET", addr, path).0);
        if let Ok(status) = attempt {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "no answer from {addr}{path} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_thousand_idle_connections_under_a_low_descriptor_limit_do_not_take_the_server_down() {
    let (child, addr) = idle_job("ulimit -n 200;");
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let target: std::net::SocketAddr = addr.parse().unwrap();
        if let Ok(stream) =
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200))
        {
            idle.push(stream);
        }
    }
    assert!(idle.len() > 200, "{} connections opened", idle.len());
    // The server runs out of descriptors, keeps its listener, closes idle connections
    // after its header timeout, and answers again.
    let (status, took) = get_eventually(&addr, "/api/job", Duration::from_secs(40));
    assert_eq!(status, 200);
    eprintln!(
        "{} idle connections; a fresh GET answered after {took:?}",
        idle.len()
    );
    drop(idle);
    let (status, _) = get_eventually(&addr, "/metrics", Duration::from_secs(5));
    assert_eq!(status, 200);
    signal(&child, "TERM");
    let _ = wait_with_timeout(child, Duration::from_secs(15));
}

#[test]
fn a_huge_request_header_gets_431_and_a_pipelining_client_delays_nobody() {
    use std::io::{Read, Write};
    let (child, addr) = idle_job("");
    // 1 MB of header: refused once 16 KB are read, with 431.
    let mut huge = std::net::TcpStream::connect(&addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = write!(huge, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..16 {
        if huge.write_all(&chunk).is_err() {
            break; // the server closed the connection: fine.
        }
    }
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // A client pipelines 200 requests and reads nothing; another is served at once.
    let mut greedy = std::net::TcpStream::connect(&addr).unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    let _ = greedy.write_all(requests.as_bytes());
    let started = std::time::Instant::now();
    assert_eq!(http("GET", &addr, "/api/job").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a normal client waited {:?}",
        started.elapsed()
    );
    drop(greedy);
    signal(&child, "TERM");
    let _ = wait_with_timeout(child, Duration::from_secs(15));
}

#[test]
fn traffic_agg_shows_its_watermarks_open_windows_and_late_events() {
    let mut command = pipeline();
    command.args([
        "--job",
        "traffic-agg",
        "--window",
        "2s",
        "--max-out-of-orderness",
        "0s",
        "--demo-rate",
        "50",
    ]);
    let (child, addr) = spawn_with_address(command, "dashboard at");
    let started = std::time::Instant::now();
    let job = loop {
        let job = api(&addr);
        if job["windows"]["fired"].as_u64() > Some(0) {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "no window fired: {job}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(job["job"]["name"], "traffic-agg");
    assert_eq!(job["job"]["output"], "traffic-agg");
    let windows = &job["windows"];
    assert!(
        windows["watermark_ms"].as_i64() > Some(1_700_000_000_000),
        "{windows}"
    );
    assert!(!windows["partitions"].as_array().unwrap().is_empty());
    assert!(job["totals"]["counted"].as_u64() > Some(0), "{job}");
    // Both stages (issue 27): the chain runs through the repartition topic, and the second
    // stage's partitions and lag are shown.
    let chain: Vec<&str> = job["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        chain,
        [
            "Read from Kafka",
            "Decode messages",
            "Parse elements",
            "Repartition by key",
            "Count in windows",
            "Write to Kafka",
            "Dead letters"
        ],
        "{job}"
    );
    let repartition = &job["repartition"];
    assert_eq!(repartition["topic"], "traffic-agg-repartition", "{job}");
    assert_eq!(repartition["group"], "traffic-agg-aggregate");
    assert!(
        !repartition["partitions"].as_array().unwrap().is_empty(),
        "{job}"
    );
    // Its end offsets are read every 2 s once it has partitions.
    let metrics = loop {
        let (_, metrics) = http("GET", &addr, "/metrics");
        if metrics.contains("topic=\"traffic-agg-repartition\"") {
            break metrics;
        }
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "the second stage's partitions are not in /metrics: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        metric(
            &metrics,
            "streamkit_pipeline_watermark_seconds",
            &["job=\"traffic-agg\""]
        ) > 1.7e9
    );
    assert!(metrics.contains("streamkit_pipeline_open_windows{job=\"traffic-agg\"}"));
    assert!(metrics.contains("streamkit_pipeline_late_events_total{job=\"traffic-agg\"}"));
    // The results in the output topic, as the original writes them.
    let (_, list) = json(&addr, "/api/topics");
    let out = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "traffic-agg")
        .unwrap_or_else(|| panic!("{list}"));
    let partition = out["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["messages"].as_i64() > Some(0))
        .unwrap()["partition"]
        .as_i64()
        .unwrap();
    let (_, page) = json(
        &addr,
        &format!("/api/topics/traffic-agg/partitions/{partition}/messages?limit=1"),
    );
    let value: serde_json::Value =
        serde_json::from_str(page["messages"][0]["value"].as_str().unwrap()).unwrap();
    let fields: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(fields.len(), 4, "{value}");
    assert!(value["page_views"].as_u64() > Some(0));
    signal(&child, "INT");
    let output = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(0));
}
