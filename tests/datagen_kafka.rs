//! datagen streaming into librdkafka's mock cluster, read back with a real consumer.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    datagen, http, metric, read_topic, signal, spawn_with_address_and_stderr, stderr,
    summary_counts, wait_with_timeout,
};
use rdkafka::mocking::MockCluster;
use streamkit::EventLog;
use streamkit::schema::EventKey;

const TOPIC: &str = "website-visit";

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    cluster
}

#[test]
fn streaming_events_arrive_keyed_valid_and_spread_over_partitions() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let output = datagen()
        .args([
            "--source",
            "streaming",
            "--num-events",
            "3000",
            "--seed",
            "5",
            "--missing-geo-ratio",
            "0.2",
            "-q",
        ])
        .env("BOOTSTRAP_SERVERS", &bootstrap)
        .env("TOPIC_NAME", TOPIC)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summary_counts(&stderr(&output)), (3000, 0));

    let records = read_topic(&bootstrap, TOPIC, 3);
    assert_eq!(records.len(), 3000);
    let mut partitions = HashSet::new();
    for record in &records {
        let event = EventLog::from_json(&record.value)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&record.value)));
        let key: EventKey = serde_json::from_slice(&record.key).unwrap();
        assert_eq!(key.event_id, event.id);
        assert_eq!(key.event_ts, event.event_ts);
        // The key is the original's JSON exactly, fields in order, Python separators.
        assert_eq!(
            record.key,
            format!(
                r#"{{"event_id": "{}", "event_ts": {}}}"#,
                event.id, event.event_ts
            )
            .into_bytes()
        );
        partitions.insert(record.partition);
    }
    assert_eq!(
        partitions.len(),
        3,
        "events should spread over all partitions"
    );
    for p in 0..3 {
        let share = records.iter().filter(|r| r.partition == p).count();
        assert!(share > 300, "partition {p} got only {share} of 3000");
    }
}

/// The milliseconds after `label` in `text` (`label 12.3 ms`).
fn millis_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label} in {text}"))
        + label.len();
    text[at..]
        .trim_start()
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label} in {text}"))
}

#[test]
fn delivery_latency_is_reported_every_5_s_at_the_end_and_on_metrics() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let mut command = datagen();
    command
        .args([
            "--source",
            "streaming",
            "--rate",
            "2000",
            "--duration",
            "7s",
        ])
        .args(["--bootstrap-servers", &bootstrap, "--topic", TOPIC])
        .args(["--metrics-addr", "127.0.0.1:0"]);
    let (child, addr, rest) = spawn_with_address_and_stderr(command, "metrics at");
    std::thread::sleep(Duration::from_secs(3));
    let (status, page) = http("GET", &addr, "/metrics");
    assert_eq!(status, 200);
    let count = metric(
        &page,
        "streamkit_datagen_delivery_latency_seconds_count",
        &[],
    );
    let sum = metric(&page, "streamkit_datagen_delivery_latency_seconds_sum", &[]);
    let delivered = metric(&page, "streamkit_datagen_events_delivered_total", &[]);
    assert!(count > 1000.0 && sum > 0.0, "{page}");
    assert!(count <= delivered + 2000.0, "{page}");
    let output = wait_with_timeout(child, Duration::from_secs(30));
    let err = rest.join().unwrap();
    assert!(output.status.success(), "{err}");
    // kafka-producer-perf-test's periodic line, once after 5 s.
    let window = err
        .lines()
        .find(|l| l.contains("events acknowledged in"))
        .unwrap_or_else(|| panic!("no 5-s line: {err}"));
    assert!(millis_after(window, "latency avg") > 0.0, "{window}");
    // The summary's percentiles: positive and ordered.
    let summary = err
        .lines()
        .find(|l| l.contains("delivery latency of"))
        .unwrap_or_else(|| panic!("no latency in the summary: {err}"));
    let figures: Vec<f64> = ["p50", "p95", "p99", "p99.9", "max"]
        .iter()
        .map(|label| millis_after(summary, &format!("{label} ")))
        .collect();
    assert!(figures[0] > 0.0, "{summary}");
    assert!(figures.windows(2).all(|w| w[0] <= w[1]), "{summary}");
    let (events, failures) = summary_counts(&err);
    assert_eq!(failures, 0);
    assert!(
        summary.contains(&format!(
            "delivery latency of {} acknowledged",
            group(events)
        )),
        "{summary}"
    );
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    common::group_thousands(n)
}

#[test]
fn flag_overrides_env_for_address_and_topic() {
    let cluster = cluster();
    cluster.create_topic("other-topic", 1, 1).unwrap();
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "10",
            "-q",
            "--bootstrap-servers",
            &cluster.bootstrap_servers(),
            "--topic",
            "other-topic",
        ])
        .env("BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("TOPIC_NAME", TOPIC)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        read_topic(&cluster.bootstrap_servers(), "other-topic", 1).len(),
        10
    );
}

#[test]
fn sigterm_flushes_and_every_event_is_accounted_for() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let child = datagen()
        .args([
            "-s",
            "streaming",
            "--rate",
            "2000",
            "--bootstrap-servers",
            &bootstrap,
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "TERM");
    let output = wait_with_timeout(child, Duration::from_secs(10));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    let (events, failures) = summary_counts(&err);
    assert_eq!(failures, 0, "{err}");
    assert!(events > 500, "{events} events in 1.5 s at 2000/s: {err}");
    assert_eq!(read_topic(&bootstrap, TOPIC, 3).len() as u64, events);
    assert!(output.stdout.is_empty());
}

#[test]
fn undeliverable_events_are_counted_as_failed_and_exit_non_zero() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let child = datagen()
        .args([
            "-s",
            "streaming",
            "--rate",
            "500",
            "--bootstrap-servers",
            &bootstrap,
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for broker in 1..=3 {
        cluster.broker_down(broker).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    signal(&child, "INT");
    // Drain timeout (8 s) plus margin.
    let output = wait_with_timeout(child, Duration::from_secs(15));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let (events, failures) = summary_counts(&err);
    assert!(failures > 0, "{err}");
    assert!(err.contains("were not delivered"), "{err}");
    for broker in 1..=3 {
        cluster.broker_up(broker).unwrap();
    }
    let stored = read_topic(&bootstrap, TOPIC, 3).len() as u64;
    // Every event is delivered or counted failed (a failed one may still have landed).
    assert!(
        stored <= events && stored + failures >= events,
        "stored {stored}, events {events}, failed {failures}"
    );
}

#[test]
fn an_unreachable_broker_fails_fast_naming_the_address() {
    // A port with nothing listening: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "10",
            "--bootstrap-servers",
            &address,
        ])
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach Kafka at {address}")),
        "{err}"
    );
    assert!(err.contains("setup/start-env.sh -k"), "hint missing: {err}");
    assert!(err.contains("nothing listening"), "{err}");
}

#[test]
fn a_host_that_does_not_resolve_is_named_as_such() {
    let address = "no-such-host.invalid:9092";
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "10",
            "--bootstrap-servers",
            address,
        ])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach Kafka at {address}: the host name does not resolve: {address}"
        )),
        "{err}"
    );
    assert!(!err.contains("nothing listening"), "{err}");
}

#[test]
fn a_missing_topic_is_reported_before_generating() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .topic_error(
            "absent",
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let started = Instant::now();
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "10",
            "--bootstrap-servers",
            &cluster.bootstrap_servers(),
            "--topic",
            "absent",
        ])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("topic 'absent' does not exist"), "{err}");
    assert!(!err.contains("events,"), "nothing may be generated: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn secret_properties_never_appear_in_output() {
    let cluster = cluster();
    // A real run with librdkafka's configuration dump on: every property is printed.
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "5",
            "-q",
            "--bootstrap-servers",
            &cluster.bootstrap_servers(),
        ])
        .args([
            "-X",
            "sasl.username=alice",
            "-X",
            "sasl.password=hunter2-secret",
            "-X",
            "debug=conf",
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let all = format!("{}{}", stderr(&output), common::stdout(&output));
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains("sasl.password = [redacted]"),
        "the configuration dump should be logged: {all}"
    );
    assert!(!all.contains("hunter2-secret"), "{all}");

    // And in our own errors: an invalid value for a secret property is not echoed.
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "1",
            "--bootstrap-servers",
            &cluster.bootstrap_servers(),
        ])
        .args([
            "-X",
            "ssl.key.password=hunter2-secret",
            "-X",
            "ssl.key.pem=hunter2-secret",
        ])
        .output()
        .unwrap();
    let all = format!("{}{}", stderr(&output), common::stdout(&output));
    assert!(!all.contains("hunter2-secret"), "{all}");
}

/// A bounded run whose brokers die and stay dead ends by itself within
/// `message.timeout.ms` plus a few seconds, counting exactly: every event is delivered or
/// counted failed, and the "waiting" lines count events, not librdkafka's requests.
#[test]
fn with_the_brokers_down_a_bounded_run_ends_within_the_message_timeout_with_exact_counts() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let child = datagen()
        .args([
            "-s",
            "streaming",
            "--rate",
            "1000",
            "--num-events",
            "3000",
            "--bootstrap-servers",
            &bootstrap,
            "-X",
            "message.timeout.ms=4000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for broker in 1..=3 {
        cluster.broker_down(broker).unwrap();
    }
    let started = Instant::now();
    // 2 s of generation left, then 4 s of message timeout and 5 s of grace, plus margin.
    let output = wait_with_timeout(child, Duration::from_secs(20));
    let took = started.elapsed();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(16), "{took:?}\n{err}");
    let (events, failures) = summary_counts(&err);
    assert_eq!(events, 3000, "{err}");
    assert!(failures > 0 && failures <= events, "{err}");
    for line in err.lines().filter(|l| l.contains("waiting for ")) {
        let pending: u64 = line
            .split("waiting for ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            pending <= failures,
            "{line}: more pending than ever failed\n{err}"
        );
    }
    for broker in 1..=3 {
        cluster.broker_up(broker).unwrap();
    }
    let stored = read_topic(&bootstrap, TOPIC, 3).len() as u64;
    assert!(
        stored <= events && stored + failures >= events,
        "stored {stored}, events {events}, failed {failures}"
    );
}
