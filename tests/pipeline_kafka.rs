//! The pipeline binary end to end on librdkafka's mock cluster: fixture replay, dead
//! letters, restarts, signals and outages.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{
    RawRecord, Record, datagen, pipeline, produce, read_topic, signal, stderr, wait_with_timeout,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const INPUT: &str = "website-visit";
const OUTPUT: &str = "website-out";
const DLQ: &str = "website-visit-dlq";

fn fixture(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(path),
    )
    .unwrap()
}

/// A mock cluster with the job's topics. The mock keeps only about 5 MB per partition
/// (older segments are dropped), so tests with more data use more partitions.
fn cluster_with(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [INPUT, OUTPUT, DLQ] {
        cluster.create_topic(topic, partitions, 1).expect("topic");
    }
    cluster
}

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    cluster_with(3)
}

/// Partitions for tests that move up to ~150,000 events (about 70 MB).
const BIG: i32 = 24;

/// The bad records of fixtures/bad-records.json as (key, value).
fn bad_records() -> Vec<RawRecord> {
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&fixture("bad-records.json")).unwrap();
    records
        .iter()
        .map(|r| {
            let value = match (&r["value"], &r["value_base64"]) {
                (serde_json::Value::String(text), _) => Some(text.as_bytes().to_vec()),
                (_, serde_json::Value::String(b64)) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap(),
                ),
                _ => None,
            };
            (Some(r["key"].as_str().unwrap().as_bytes().to_vec()), value)
        })
        .collect()
}

/// fixtures/expected/website-out.tsv as (key, value) lines.
fn expected_output() -> Vec<(String, String)> {
    fixture("expected/website-out.tsv")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn key_value(record: &Record) -> (String, String) {
    (
        String::from_utf8(record.key.clone()).unwrap(),
        String::from_utf8(record.value.clone()).unwrap(),
    )
}

fn summary_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("pipeline: read "))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"))
        .to_string()
}

#[test]
fn fixture_replay_writes_the_expected_output_and_dead_letters() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    // The 1,000 fixture events keyed as the original generator keys them, with the 13 bad
    // records spread among them.
    let good: Vec<_> = fixture("website-visit.jsonl")
        .lines()
        .zip(expected_output())
        .map(|(line, (key, _))| (Some(key.into_bytes()), Some(line.as_bytes().to_vec())))
        .collect();
    let bad = bad_records();
    let mut input = Vec::new();
    let mut bad_iter = bad.iter();
    for (i, record) in good.iter().enumerate() {
        input.push(record.clone());
        if i % 75 == 0
            && let Some(b) = bad_iter.next()
        {
            input.push(b.clone());
        }
    }
    input.extend(bad_iter.cloned());
    let positions = produce(&bootstrap, INPUT, &input);

    let output = pipeline()
        .args(["--bootstrap-servers", &bootstrap, "--bounded"])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(
        summary_line(&err).contains("read 1,013 = written 1,000 + dead-lettered 13 in"),
        "{err}"
    );
    assert!(
        output.stdout.is_empty(),
        "keys are printed only in the demo or with --print-keys"
    );

    // website-out: byte for byte what the original job writes, as a multiset.
    let mut written: Vec<_> = read_topic(&bootstrap, OUTPUT, 3)
        .iter()
        .map(key_value)
        .collect();
    let mut expected = expected_output();
    written.sort();
    expected.sort();
    assert_eq!(written.len(), 1000);
    assert!(
        written == expected,
        "website-out differs from fixtures/expected/website-out.tsv"
    );

    // The dead-letter topic: original key and bytes, headers naming error and source.
    let expected_dlq: Vec<serde_json::Value> =
        serde_json::from_str(&fixture("expected/website-visit-dlq.json")).unwrap();
    let dead: BTreeMap<String, Record> = read_topic(&bootstrap, DLQ, 3)
        .into_iter()
        .map(|r| (String::from_utf8(r.key.clone()).unwrap(), r))
        .collect();
    assert_eq!(dead.len(), expected_dlq.len());
    for expected in &expected_dlq {
        let key = expected["key"].as_str().unwrap();
        let record = &dead[key];
        let (index, (_, original_value)) = input
            .iter()
            .enumerate()
            .find(|(_, (k, _))| k.as_deref() == Some(key.as_bytes()))
            .unwrap();
        assert_eq!(record.value_is_null, original_value.is_none(), "{key}");
        assert_eq!(
            Some(&record.value),
            original_value.as_ref().or(Some(&Vec::new())),
            "{key}: original bytes"
        );
        for (header, value) in expected["headers"].as_object().unwrap() {
            assert_eq!(
                record.headers.get(header).map(String::as_str),
                value.as_str(),
                "{key}: header {header}"
            );
        }
        let (partition, offset) = positions[index];
        assert_eq!(
            record.headers["source.partition"],
            partition.to_string(),
            "{key}"
        );
        assert_eq!(record.headers["source.offset"], offset.to_string(), "{key}");
    }
}

#[test]
fn file_mode_gives_the_same_values_as_the_original_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/website-visit.jsonl");
    let output = pipeline()
        .args([
            "--input".as_ref(),
            fixtures.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let values: Vec<String> = expected_output().into_iter().map(|(_, v)| v).collect();
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(
        written.lines().eq(values.iter().map(String::as_str)),
        "file mode output differs from the original job's values"
    );
}

#[test]
fn file_mode_dead_letters_bad_lines_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, dlq) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("dlq.jsonl"),
    );
    let good = fixture("website-visit.jsonl");
    let mut bytes = Vec::new();
    let mut expected_bad = Vec::new();
    let mut line = 0;
    for (i, good_line) in good.lines().take(20).enumerate() {
        bytes.extend_from_slice(good_line.as_bytes());
        bytes.push(b'\n');
        line += 1;
        // Every representable bad record (a line cannot hold a null value).
        if let Some((_, Some(value))) = bad_records().get(i)
            && !value.contains(&b'\n')
        {
            bytes.extend_from_slice(value);
            bytes.push(b'\n');
            line += 1;
            expected_bad.push(line);
        }
    }
    std::fs::write(&input, &bytes).unwrap();
    let output = pipeline()
        .args([
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            "--dead-letter-file".as_ref(),
            dlq.as_os_str(),
        ])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 20);
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dlq)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = dead.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, expected_bad);
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().is_some_and(|e| !e.is_empty())
                && d["kind"].is_string()
                && d["raw"].is_string())
    );
    assert!(
        dead.iter()
            .any(|d| d["kind"] == "not_utf8" && d["raw_base64"].is_string())
    );
    assert!(
        summary_line(&err).contains(&format!(
            "read {} = written 20 + dead-lettered {}",
            20 + expected_bad.len(),
            expected_bad.len()
        )),
        "{err}"
    );
}

/// Puts `n` seeded events in the input topic through datagen; returns their keys.
fn feed(bootstrap: &str, n: u64) -> BTreeSet<String> {
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-q",
            "--seed",
            "11",
            "--start-time",
            "2024-04-18T09:00:00Z",
            "--missing-geo-ratio",
            "0.2",
        ])
        .args([
            "--bootstrap-servers",
            bootstrap,
            "--num-events",
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let keys: BTreeSet<String> = read_topic(bootstrap, INPUT, BIG)
        .iter()
        .map(|r| String::from_utf8(r.key.clone()).unwrap())
        .collect();
    assert_eq!(keys.len() as u64, n, "seeded keys are unique");
    keys
}

fn output_keys(bootstrap: &str) -> (usize, BTreeSet<String>) {
    let records = read_topic(bootstrap, OUTPUT, BIG);
    (
        records.len(),
        records
            .iter()
            .map(|r| String::from_utf8(r.key.clone()).unwrap())
            .collect(),
    )
}

/// Waits until the job has written something to the output topic.
fn wait_for_output(bootstrap: &str) {
    let started = Instant::now();
    while output_keys(bootstrap).0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no output after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_job_restarted_with_the_same_name_loses_nothing() {
    let cluster = cluster_with(BIG);
    let bootstrap = cluster.bootstrap_servers();
    let n = 150_000;
    let keys = feed(&bootstrap, n);
    let child = pipeline()
        .args([
            "--bootstrap-servers",
            &bootstrap,
            "--checkpointing-interval",
            "100",
            "--parallelism",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill -9 once some output is out, before the job is done.
    wait_for_output(&bootstrap);
    signal(&child, "KILL");
    let _ = wait_with_timeout(child, Duration::from_secs(5));
    let (first_run, _) = output_keys(&bootstrap);
    assert!(
        (first_run as u64) < n,
        "the first run finished before it was killed: {first_run}"
    );

    let output = pipeline()
        .args([
            "--bootstrap-servers",
            &bootstrap,
            "--bounded",
            "--parallelism",
            "2",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let (total, written) = output_keys(&bootstrap);
    let missing: Vec<_> = keys.difference(&written).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} input ids never reached website-out, e.g. {missing:?}",
        keys.len() - written.len()
    );
    assert!(total as u64 >= n, "duplicates are allowed, loss is not");
}

#[test]
fn sigterm_drains_commits_and_a_restart_continues_without_duplicates() {
    let cluster = cluster_with(BIG);
    let bootstrap = cluster.bootstrap_servers();
    let n = 100_000;
    let keys = feed(&bootstrap, n);
    let child = pipeline()
        .args(["--bootstrap-servers", &bootstrap, "--parallelism", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&bootstrap);
    signal(&child, "TERM");
    let stopping = Instant::now();
    let output = wait_with_timeout(child, Duration::from_secs(15));
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        stopping.elapsed()
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    let summary = summary_line(&err);
    assert!(
        !summary.contains("unfinished"),
        "a clean stop drains everything: {summary}"
    );

    let restart = pipeline()
        .args(["--bootstrap-servers", &bootstrap, "--bounded"])
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", stderr(&restart));
    let (total, written) = output_keys(&bootstrap);
    assert_eq!(written, keys, "every input id reaches website-out");
    assert_eq!(
        total as u64, n,
        "after a drained stop and commit, the restart writes each record once"
    );
}

#[test]
fn a_broker_outage_is_ridden_out_without_loss() {
    let cluster = cluster_with(BIG);
    let bootstrap = cluster.bootstrap_servers();
    let n = 60_000;
    let keys = feed(&bootstrap, n);
    let child = pipeline()
        .args([
            "--bootstrap-servers",
            &bootstrap,
            "--checkpointing-interval",
            "200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&bootstrap);
    cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    cluster.broker_up(1).unwrap();
    // It resumes by itself and finishes the backlog.
    let resumed = Instant::now();
    while output_keys(&bootstrap).1.len() < keys.len() {
        assert!(
            resumed.elapsed() < Duration::from_secs(60),
            "the job did not finish after the broker came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&child, "TERM");
    let output = wait_with_timeout(child, Duration::from_secs(15));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: Kafka at"),
        "the outage should be reported: {err}"
    );
    assert_eq!(output_keys(&bootstrap).1, keys);
}

#[test]
fn the_embedded_demo_runs_without_setup_and_stops_on_ctrl_c() {
    let mut child = pipeline()
        .args(["--demo-rate", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut keys = Vec::new();
    let started = Instant::now();
    while keys.len() < 5 {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "stdout closed early"
        );
        let key: serde_json::Value =
            serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            key["event_id"].is_string() && key["event_ts"].is_i64(),
            "{line}"
        );
        keys.push(key);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    signal(&child, "INT");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let output = wait_with_timeout(child, Duration::from_secs(10));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(err.contains("embedded Kafka cluster at "), "{err}");
    assert!(
        err.contains("datagen --source streaming --bootstrap-servers "),
        "{err}"
    );
    assert!(summary_line(&err).contains("read "), "{err}");
}

#[test]
fn an_unreachable_broker_fails_fast_naming_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let output = pipeline()
        .args(["--bootstrap-servers", &address, "--bounded"])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach Kafka at {address}")),
        "{err}"
    );
}

#[test]
fn invalid_arguments_are_usage_errors_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--parallelism", "0"], "--parallelism"),
        (&["--parallelism", "-2"], "--parallelism"),
        (
            &["--checkpointing-interval", "0"],
            "--checkpointing-interval",
        ),
        (&["--bounded"], "--bounded needs a cluster"),
        (&["--output", "x.jsonl"], "--input"),
        (&["--use-own", "--input", "x.jsonl"], "--use-own"),
        (&["--demo-rate", "0"], "--demo-rate"),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (args, expected) in cases {
        let output = pipeline().args(*args).output().unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn use_own_targets_the_local_cluster_and_an_explicit_address_wins() {
    // Whether or not a broker listens on localhost:29092, --use-own must go there: the
    // error names it (unreachable, or the made-up topic is missing there).
    let topic = format!("absent-{}", uuid::Uuid::new_v4().simple());
    let output = pipeline()
        .args(["--use-own", "--bounded", "--input-topic", &topic])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("localhost:29092"), "{err}");

    // An explicit address (flag or BOOTSTRAP_SERVERS) wins over --use-own and the embedded cluster.
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, INPUT, &bad_records()[..2]);
    for with_flag in [true, false] {
        let mut command = pipeline();
        command.args([
            "--use-own",
            "--bounded",
            "--job-name",
            if with_flag { "flag" } else { "env" },
        ]);
        if with_flag {
            command.args(["--bootstrap-servers", &bootstrap]);
        } else {
            command.env("BOOTSTRAP_SERVERS", &bootstrap);
        }
        let output = command.output().unwrap();
        let err = stderr(&output);
        assert!(output.status.success(), "{err}");
        assert!(
            summary_line(&err).contains("read 2 = written 0 + dead-lettered 2"),
            "{err}"
        );
    }
}
