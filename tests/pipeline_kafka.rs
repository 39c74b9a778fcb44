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
    RawRecord, Record, datagen, end_offsets, pipeline, produce, read_topic, signal, stderr,
    wait_with_timeout,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use streamkit::pipeline::dead_letter;

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

/// The end-of-run summary (`read N = written W + dead-lettered D`), not a status line.
fn summary_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("pipeline: read ") && l.contains(" = written "))
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
            record.headers[dead_letter::SOURCE_PARTITION],
            partition.to_string(),
            "{key}"
        );
        assert_eq!(
            record.headers[dead_letter::SOURCE_OFFSET],
            offset.to_string(),
            "{key}"
        );
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
fn file_mode_refuses_to_write_over_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let link = dir.path().join("link.jsonl");
    std::fs::write(&input, fixture("website-visit.jsonl")).unwrap();
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for flag in ["--output", "--dead-letter-file"] {
        for target in [&input, &link] {
            let output = pipeline()
                .args([
                    "--input".as_ref(),
                    input.as_os_str(),
                    flag.as_ref(),
                    target.as_os_str(),
                ])
                .output()
                .unwrap();
            let err = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{flag} {target:?}: {err}");
            assert!(err.contains("is the input file"), "{err}");
            assert_eq!(
                std::fs::read_to_string(&input).unwrap(),
                fixture("website-visit.jsonl"),
                "the input was touched"
            );
        }
    }
}

#[test]
fn file_mode_dead_letters_an_overlong_line_by_size_without_holding_it() {
    use std::io::Write;
    let good = fixture("website-visit.jsonl");
    let first = good.lines().next().unwrap().to_string();
    let long = streamkit::pipeline::MAX_LINE_BYTES + 1000;
    let mut child = pipeline()
        .args([
            "--input",
            "-",
            "--output",
            "-",
            "--dead-letter-file",
            "/dev/stderr",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        writeln!(stdin, "{first}").unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..long / block.len() {
            stdin.write_all(&block).unwrap();
        }
        stdin.write_all(&block[..long % block.len()]).unwrap();
        writeln!(stdin).unwrap();
        writeln!(stdin, "{first}").unwrap();
    });
    feeder.join().unwrap();
    let output = common::wait_with_timeout(child, Duration::from_secs(30));
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert_eq!(common::stdout(&output).lines().count(), 2, "{err}");
    let dead = err
        .lines()
        .find(|line| line.starts_with("{\"line\":"))
        .unwrap_or_else(|| panic!("no dead letter:\n{err}"));
    let dead: serde_json::Value = serde_json::from_str(dead).unwrap();
    assert_eq!(dead["line"], 2);
    assert_eq!(dead["kind"], "too_large");
    assert_eq!(dead["size"], long);
    assert!(dead.get("raw").is_none());
    assert!(
        summary_line(&err).contains("read 3 = written 2 + dead-lettered 1"),
        "{err}"
    );
}

#[test]
fn file_mode_stops_on_sigterm_while_stdin_is_quiet_and_keeps_what_it_read() {
    use std::io::Write;
    let good = fixture("website-visit.jsonl");
    let mut child = pipeline()
        .args(["--input", "-", "--output", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in good.lines().take(5) {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    common::signal(&child, "TERM");
    let started = Instant::now();
    let output = common::wait_with_timeout(child, Duration::from_secs(10));
    drop(stdin);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(common::stdout(&output).lines().count(), 5);
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

/// The key of the oversized records some tests put in the input topic beside `feed`'s.
const OVERSIZED_KEY: &[u8] = b"oversized";

/// Puts `n` seeded events in the input topic through datagen; returns their keys (those
/// of every event in the topic, but for records keyed [`OVERSIZED_KEY`]).
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
        .filter(|r| r.key != OVERSIZED_KEY)
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
    // The output's end offsets, not its records: cheap enough to ask every 50 ms, so a
    // caller that kills the job here catches it early in its run.
    let written = || end_offsets(bootstrap, OUTPUT, BIG);
    let started = Instant::now();
    while written() == 0 {
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
    let mut command = pipeline();
    command.args(["--bootstrap-servers", &bootstrap, "--parallelism", "3"]);
    // The stop comes once the group has settled (every partition owned), not in the middle
    // of the mock cluster's slow join.
    let (child, log) = common::spawn_assigned(command, BIG as usize, Duration::from_secs(120));
    wait_for_output(&bootstrap);
    signal(&child, "TERM");
    let stopping = Instant::now();
    let (output, err) = common::wait_with_log(child, Duration::from_secs(15), log);
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        stopping.elapsed()
    );
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
        total as u64,
        n,
        "after a drained stop and commit, the restart writes each record once; the first run said:\n{err}\nthe restart:\n{}",
        stderr(&restart)
    );
}

/// Input headers reach the output and the dead letters, as Kafka Streams forwards them;
/// the dead letters add their error headers after them.
#[test]
fn input_headers_reach_the_output_and_the_dead_letters() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let event = fixture("website-visit.jsonl")
        .lines()
        .next()
        .unwrap()
        .to_string();
    let records = vec![
        (Some(b"good".to_vec()), Some(event.into_bytes())),
        (
            Some(b"bad".to_vec()),
            Some(b"GET /index.html HTTP/1.1".to_vec()),
        ),
    ];
    let headers = [("trace.id", "abc-123"), ("datagen.seq", "7")];
    common::produce_with_headers(&bootstrap, INPUT, &records, &headers);
    let output = pipeline()
        .args(["--bootstrap-servers", &bootstrap, "--bounded"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let written = read_topic(&bootstrap, OUTPUT, 3);
    assert_eq!(written.len(), 1);
    for (key, value) in headers {
        assert_eq!(
            written[0].headers.get(key).map(String::as_str),
            Some(value),
            "{written:?}"
        );
    }
    let dead = read_topic(&bootstrap, DLQ, 3);
    assert_eq!(dead.len(), 1);
    for (key, value) in headers {
        assert_eq!(
            dead[0].headers.get(key).map(String::as_str),
            Some(value),
            "{dead:?}"
        );
    }
    assert_eq!(
        dead[0].headers.get(dead_letter::KIND).map(String::as_str),
        Some("not_json")
    );
}

/// `datagen --verify-topic` with the pipeline in the loop: every event is accounted for,
/// the injected bad records are the dead letters, and the latencies are ordered.
#[test]
fn datagen_verifies_the_pipeline_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let mut command = pipeline();
    command.args([
        "--bootstrap-servers",
        &bootstrap,
        "--checkpointing-interval",
        "500",
    ]);
    // Under load the mock cluster can take 45 s to let the last worker into the group:
    // the load starts once every partition is owned, so the verification's grace measures
    // the pipeline, not the join.
    let (job, job_log) = common::spawn_assigned(command, 3, Duration::from_secs(120));
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "4000",
            "--rate",
            "2000",
            "--seed",
            "3",
            "-q",
        ])
        .args([
            "--bad-record-ratio",
            "0.01",
            "--bootstrap-servers",
            &bootstrap,
        ])
        .args(["--verify-topic", OUTPUT, "--verify-dead-letter-topic", DLQ])
        .args(["--verify-grace", "30s"])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    signal(&job, "TERM");
    let (_, job_log) = common::wait_with_log(job, Duration::from_secs(15), job_log);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}\npipeline: {job_log}");
    let verification = err
        .lines()
        .find(|l| l.starts_with("verification: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        verification.contains(" 0 lost, 0 duplicated"),
        "{verification}"
    );
    assert!(verification.contains(", 0 unexpected"), "{verification}");
    let bad: u64 = err
        .split("bad records ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(bad > 10, "{err}");
    assert!(
        verification.contains(&format!("dead letters {bad} expected")),
        "{verification}"
    );
    assert!(
        verification.contains(&format!("{} arrived", group(4000 - bad))),
        "{verification}"
    );
    for line in err.lines().filter(|l| l.starts_with("end-to-end latency")) {
        let figure = |label: &str| -> f64 {
            line.split(&format!("{label} "))
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("{label} in {line}"))
        };
        let (p50, p99, max) = (figure("p50"), figure("p99"), figure("max"));
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{line}");
    }
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("end-to-end latency"))
            .count(),
        2,
        "{err}"
    );

    // The report: a page that loads nothing, with its four charts drawn, and its JSON.
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
    assert_eq!(page.matches("<svg").count(), 4, "{page}");
    assert!(page.matches("<polyline").count() >= 6, "{page}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["verification"]["lost"], 0, "{json}");
    assert_eq!(
        json["verification"]["dead_lettered_expected"], bad,
        "{json}"
    );
    let points = json["points"].as_array().unwrap();
    assert!(points.len() >= 2, "{json}");
    assert!(points.iter().all(|p| p["target_rate"] == 2000.0), "{json}");
    assert!(
        points
            .iter()
            .any(|p| p["achieved_rate"].as_f64().unwrap() > 1000.0),
        "{json}"
    );
    assert!(
        points
            .iter()
            .any(|p| p["delivery_p99_ms"].as_f64().is_some()),
        "{json}"
    );
}

/// `datagen --verify-topic` across a `kill -9` of the pipeline and its restart: nothing is
/// lost, and the duplicates the crash causes are counted.
#[test]
fn verification_across_a_killed_pipeline_finds_nothing_lost_and_counts_duplicates() {
    // More partitions than the job's workers: the mock keeps only about 5 MB of each.
    let cluster = cluster_with(BIG);
    let bootstrap = cluster.bootstrap_servers();
    let start_job = || {
        pipeline()
            .args(["--bootstrap-servers", &bootstrap])
            .args(["--checkpointing-interval", "200"])
            // The killed process's members leave the group after 6 s, not 45.
            .args(["--session-timeout", "6000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = start_job();
    let load = datagen()
        .args([
            "-s",
            "streaming",
            "-e",
            "30000",
            "--rate",
            "6000",
            "--seed",
            "4",
            "-q",
        ])
        .args(["--bootstrap-servers", &bootstrap])
        .args(["--verify-topic", OUTPUT, "--verify-grace", "40s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&bootstrap);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&first, "KILL");
    let _ = wait_with_timeout(first, Duration::from_secs(5));
    let second = start_job();
    let load = wait_with_timeout(load, Duration::from_secs(90));
    signal(&second, "TERM");
    let second = wait_with_timeout(second, Duration::from_secs(15));
    let err = stderr(&load);
    assert!(
        load.status.success(),
        "{err}\nrestarted pipeline: {}",
        stderr(&second)
    );
    let verification = err
        .lines()
        .find(|l| l.starts_with("verification: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        verification.starts_with("verification: 30,000 events: 30,000 arrived, 0 lost, "),
        "{verification}"
    );
    // The duplicates are counted: as a number, possibly 0 if the kill fell on a commit.
    let duplicated: u64 = verification
        .split(" lost, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("{verification}"));
    // And they are the output's own count: every record beyond one per event.
    let (total, _) = output_keys(&bootstrap);
    assert_eq!(total as u64, 30_000 + duplicated, "{verification}");
    eprintln!("{duplicated} duplicates after the kill");
}

fn group(n: u64) -> String {
    common::group_thousands(n)
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

/// Poison pills: records too large for the output (and the dead-letter topic) are
/// dead-lettered, by reference when need be, and the records behind them on the same
/// partition are all written. The job ends with exit 0.
#[test]
fn records_too_large_for_the_output_are_dead_lettered_and_their_partition_goes_on() {
    let cluster = cluster_with(BIG);
    let bootstrap = cluster.bootstrap_servers();
    let big_valid = common::padded_event(1_500_000, "oversized");
    let big_invalid = vec![b'x'; 3_000_000];
    // Key them to land on one partition, ahead of good records.
    let positions = produce(
        &bootstrap,
        INPUT,
        &[
            (Some(OVERSIZED_KEY.to_vec()), Some(big_valid.clone())),
            (Some(OVERSIZED_KEY.to_vec()), Some(big_invalid.clone())),
        ],
    );
    let keys = feed(&bootstrap, 10_000);
    let output = pipeline()
        .args(["--bootstrap-servers", &bootstrap, "--bounded"])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert_eq!(
        output_keys(&bootstrap).1,
        keys,
        "every good record is written"
    );
    let dead: Vec<Record> = read_topic(&bootstrap, DLQ, BIG);
    assert_eq!(dead.len(), 2, "{err}");
    for (record, position, size, kind) in [
        (
            &dead[0],
            positions[0],
            big_valid.len() + OVERSIZED_KEY.len(),
            "too_large",
        ),
        (
            &dead[1],
            positions[1],
            big_invalid.len() + OVERSIZED_KEY.len(),
            "not_json",
        ),
    ] {
        // Neither fits the dead-letter topic either: a reference stands in for the payload.
        common::assert_dead_letter_reference(record, INPUT, kind, position, size);
        assert!(
            record.headers[dead_letter::ERROR].contains("too large")
                || record.headers[dead_letter::ERROR].contains("Too large")
                || record.headers[dead_letter::ERROR].contains("MessageSizeTooLarge"),
            "{:?}",
            record.headers
        );
    }
    assert!(summary_line(&err).contains("dead-lettered 2"), "{err}");
}

/// SIGTERM while the cluster is down: the job exits within the drain timeout plus 2 s,
/// says which records it could not commit, and a restart loses none of them.
#[test]
fn sigterm_with_the_broker_down_exits_within_the_drain_timeout_and_loses_nothing() {
    let cluster = cluster_with(BIG);
    let bootstrap = cluster.bootstrap_servers();
    let n = 60_000;
    let keys = feed(&bootstrap, n);
    let child = pipeline()
        .args([
            "--bootstrap-servers",
            &bootstrap,
            // Commits happen only at the end: the final commit meets the dead coordinator.
            "--checkpointing-interval",
            "600000",
            // The restart below waits for these members' sessions to expire.
            "--session-timeout",
            "6000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&bootstrap);
    cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "TERM");
    let signalled = Instant::now();
    let output = wait_with_timeout(child, Duration::from_secs(30));
    let took = signalled.elapsed();
    let err = stderr(&output);
    let limit = streamkit::pipeline::DRAIN_TIMEOUT + Duration::from_secs(2);
    assert!(
        took <= limit,
        "exit took {took:?} (limit {limit:?}):\n{err}"
    );
    eprintln!("SIGTERM with the broker down: exit after {took:?}");
    // Either the final commit was abandoned, or the session expired first and the
    // partitions were lost: both lines name the partitions that are read again.
    assert!(
        err.contains("will be read (and written) again on restart")
            || err.contains("were lost (session timeout or fenced): not committed"),
        "no line names the records read again:\n{err}"
    );
    cluster.broker_up(1).unwrap();
    let output = pipeline()
        .args(["--bootstrap-servers", &bootstrap, "--bounded"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
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
        (&["--job", "nope"], "--job"),
        (
            &["--processing-guarantee", "maybe"],
            "--processing-guarantee",
        ),
        (
            &[
                "--processing-guarantee",
                "exactly-once",
                "--input",
                "x.jsonl",
            ],
            "files have no transactions",
        ),
        (
            &["--inject-abort-after", "5"],
            "needs --processing-guarantee",
        ),
        (&["--commit-interval", "0"], "--commit-interval"),
        (&["--job", "user-traffic"], "give --input"),
        (&["--job", "traffic-agg", "--window", "0"], "--window"),
        (
            &[
                "--job",
                "traffic-agg",
                "--parallelism",
                "2",
                "--no-repartition",
            ],
            "partial result for the same window",
        ),
        (
            &["--job", "traffic-agg", "--repartition-partitions", "0"],
            "--repartition-partitions",
        ),
        (&["--job", "traffic-agg", "--window", "soon"], "--window"),
        (
            &["--job", "traffic-agg", "--allowed-lateness", "-1s"],
            "unexpected argument",
        ),
        // Ranges: each of these once panicked, hung or was changed silently.
        (&["--demo-rate", "1e-300"], "0.1 to 1e9"),
        (&["--demo-rate", "1e300"], "0.1 to 1e9"),
        (&["--demo-users", "4000000000"], "--demo-users"),
        (
            &["--checkpointing-interval", "18446744073709551615"],
            "--checkpointing-interval",
        ),
        // -X: checked against librdkafka, and refused where no Kafka client runs.
        (&["-X", "bogus.property=1"], "bogus.property"),
        (
            &["--use-own", "-X", "enable.idempotence=maybe"],
            "enable.idempotence",
        ),
        (
            &[
                "--input",
                "fixtures/website-visit.jsonl",
                "-X",
                "linger.ms=5",
            ],
            "uses no Kafka client",
        ),
    ];
    for (args, expected) in cases {
        let output = common::output_within(pipeline().args(*args), Duration::from_secs(10));
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

/// `datagen` events as lines: seeded, with a simulated clock.
fn seeded_events(args: &[&str]) -> Vec<Vec<u8>> {
    let output = datagen()
        .args(args)
        .args(["--output", "-", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The traffic-agg results in `cluster`'s output topic, as (key, value) pairs, with a check
/// that no key was ever written with two different values.
fn window_results(bootstrap: &str, partitions: i32) -> BTreeMap<String, String> {
    let mut results = BTreeMap::new();
    for record in read_topic(bootstrap, "traffic-agg", partitions) {
        let key = String::from_utf8(record.key).unwrap();
        let value = String::from_utf8(record.value).unwrap();
        if let Some(earlier) = results.insert(key.clone(), value.clone()) {
            assert_eq!(earlier, value, "{key} was written with two values");
        }
    }
    results
}

#[test]
fn traffic_agg_killed_mid_run_and_restarted_writes_the_same_window_results() {
    // Lag of at most 3 s, under the 5 s bound: no event is late, so the results do not
    // depend on how the partitions interleave, and both runs must agree exactly.
    let events = seeded_events(&[
        "--num-events",
        "60000",
        "--num-users",
        "300",
        "--seed",
        "5",
        "--start-time",
        "2024-04-28T05:00:00Z",
        "--time-step-ms",
        "20",
        "--max-lag-seconds",
        "3",
    ]);
    // Keyed, so the partitions fill evenly: the mock keeps only about 5 MB of each, and
    // drops the oldest records past that, read or not.
    let records: Vec<RawRecord> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (Some(i.to_string().into_bytes()), Some(e)))
        .collect();
    let partitions = 12;
    let setup = || {
        let cluster = MockCluster::new(1).expect("mock cluster");
        // The repartition topic too, as many partitions as the input (the job's default):
        // the mock takes no CreateTopics, and would auto-create 4, each past the 5 MB.
        for topic in [INPUT, DLQ, "traffic-agg-repartition"] {
            cluster.create_topic(topic, partitions, 1).expect("topic");
        }
        cluster.create_topic("traffic-agg", 3, 1).expect("topic");
        produce(&cluster.bootstrap_servers(), INPUT, &records);
        cluster
    };
    let job = |bootstrap: &str| {
        let mut command = pipeline();
        command.args([
            "--job",
            "traffic-agg",
            "--bootstrap-servers",
            bootstrap,
            "--checkpointing-interval",
            "200",
            // The killed run's members leave the group after this, not the default 45 s.
            "--session-timeout",
            "6000",
        ]);
        command
    };

    // The reference: one uninterrupted bounded run.
    let reference = setup();
    let output = job(&reference.bootstrap_servers())
        .arg("--bounded")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let expected = window_results(&reference.bootstrap_servers(), 3);
    // 60,000 events 20 ms apart: 20 minutes, 60 windows of 20 s, each with most users.
    assert!(expected.len() > 10_000, "{}", expected.len());
    let total: u64 = expected
        .values()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["page_views"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        total,
        60_000,
        "every event counted once: {}",
        stderr(&output)
    );

    // Killed once some windows have fired and been committed, then restarted.
    let crashed = setup();
    let bootstrap = crashed.bootstrap_servers();
    let mut child = job(&bootstrap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        // Cheap to ask for: the kill lands mid-run.
        let written = end_offsets(&bootstrap, "traffic-agg", 3);
        if written > 2_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no results after 90 s ({written})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, "KILL");
    let _ = child.wait();
    let before_restart = read_topic(&bootstrap, "traffic-agg", 3).len();
    let output = job(&bootstrap).arg("--bounded").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let after = window_results(&bootstrap, 3);
    assert_eq!(after.len(), expected.len());
    assert!(after == expected, "the restarted run's results differ");
    eprintln!(
        "{} window results; {before_restart} written before the kill",
        expected.len()
    );
}
