//! The dashboard, its JSON and /metrics, against a job running on the embedded cluster;
//! and datagen's /metrics.

mod common;

use std::time::Duration;

use common::{datagen, http, metric, pipeline, signal, spawn_with_address, wait_with_timeout};

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
    // waits 3 s for a new group's members), then read.
    let started = std::time::Instant::now();
    let first = loop {
        let job = api(&addr);
        if job["partitions"].as_array().unwrap().len() == 3
            && job["totals"]["read"].as_u64() > Some(0)
        {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no assignment or no records after 20 s: {job}"
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
