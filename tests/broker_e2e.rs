//! End to end against a real broker process: the local cluster of `setup/start-env.sh`.
//! Each test starts it (idempotently) and uses topics of its own. Run with
//! `cargo test --features e2e --test broker_e2e -- --test-threads=1`: one test restarts
//! the broker, and another stops it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{
    BOOTSTRAP, SEEDED, cluster_and_topics, drain, feed, fetch_args, keys_in, script, topic_args,
    wait_for_output,
};
use common::{datagen, pipeline, produce, read_topic, signal, stderr, wait_with_timeout};
use streamkit::pipeline::dead_letter;

/// `kill -9` of the broker that `setup/start-env.sh` started (Apache Kafka and tansu both
/// record their pid).
fn kill_broker() {
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/kafka/broker.pid");
    let pid = std::fs::read_to_string(&state).expect("a native backend records its pid");
    assert!(
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn datagen_then_pipeline_writes_exactly_what_file_mode_writes() {
    let (input, output, dead) = cluster_and_topics("loop");
    feed(&input, 10_000);
    let run = drain(&input, &output, &dead);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("read 10,000 = written 10,000 + dead-lettered 0"),
        "{err}"
    );

    // The same events through file mode.
    let dir = tempfile::tempdir().unwrap();
    let (events, values) = (
        dir.path().join("events.jsonl"),
        dir.path().join("values.jsonl"),
    );
    let generated = datagen()
        .args(["-q", "--num-events", "10000", "--output"])
        .arg(&events)
        .args(SEEDED)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let files = pipeline()
        .arg("--input")
        .arg(&events)
        .arg("--output")
        .arg(&values)
        .output()
        .unwrap();
    assert!(files.status.success(), "{}", stderr(&files));
    let mut expected: Vec<String> = std::fs::read_to_string(&values)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();

    let records = read_topic(BOOTSTRAP, &output, 3);
    let mut written: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    written.sort();
    expected.sort();
    assert_eq!(written.len(), 10_000);
    assert!(
        written == expected,
        "website-out differs from the file-mode output"
    );
    for record in &records {
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let key = format!(
            r#"{{"event_id": {}, "event_ts": {}}}"#,
            value["id"], value["event_ts"]
        );
        assert_eq!(
            String::from_utf8(record.key.clone()).unwrap(),
            key,
            "keyed as the original"
        );
    }
}

#[test]
fn bad_records_reach_the_dead_letter_topic_with_their_headers() {
    let (input, output, dead) = cluster_and_topics("bad");
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/website-visit.jsonl"),
    )
    .unwrap();
    let mut records: Vec<common::RawRecord> = good
        .lines()
        .take(50)
        .map(|l| (None, Some(l.as_bytes().to_vec())))
        .collect();
    let bad: Vec<(&str, Option<&[u8]>)> = vec![
        ("not-utf8", Some(b"{\"ip\": \"\xff\"}")),
        ("not-json", Some(b"hello")),
        ("not-object", Some(b"[1, 2]")),
        ("wrong-type", Some(b"{\"ip\": 1}")),
        ("empty", Some(b"")),
        ("null", None),
    ];
    for (name, value) in &bad {
        records.push((
            Some(format!("bad-{name}").into_bytes()),
            value.map(<[u8]>::to_vec),
        ));
    }
    produce(BOOTSTRAP, &input, &records);
    let run = drain(&input, &output, &dead);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("read 56 = written 50 + dead-lettered 6"),
        "{err}"
    );
    let dead_letters = read_topic(BOOTSTRAP, &dead, 3);
    assert_eq!(dead_letters.len(), 6);
    for record in &dead_letters {
        let key = String::from_utf8(record.key.clone()).unwrap();
        let (_, original) = bad
            .iter()
            .find(|(name, _)| key == format!("bad-{name}"))
            .unwrap();
        assert_eq!(record.value_is_null, original.is_none(), "{key}");
        assert_eq!(
            record.value.as_slice(),
            original.unwrap_or_default(),
            "{key}"
        );
        assert_eq!(record.headers[dead_letter::SOURCE_TOPIC], input);
        for header in [
            dead_letter::ERROR,
            dead_letter::KIND,
            dead_letter::SOURCE_PARTITION,
            dead_letter::SOURCE_OFFSET,
        ] {
            assert!(
                record.headers.get(header).is_some_and(|v| !v.is_empty()),
                "{key}: {header}"
            );
        }
    }
}

#[test]
fn a_killed_pipeline_restarts_without_losing_records() {
    let (input, output, dead) = cluster_and_topics("kill");
    let keys = feed(&input, 50_000);
    let child = pipeline()
        .args([
            "--use-own",
            "--job-name",
            &input,
            "--checkpointing-interval",
            "100",
        ])
        .args(topic_args(&input, &output, &dead))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&output);
    signal(&child, "KILL");
    let _ = wait_with_timeout(child, Duration::from_secs(5));
    let restart = drain(&input, &output, &dead);
    assert!(restart.status.success(), "{}", stderr(&restart));
    let (total, written) = keys_in(&output);
    assert_eq!(written, keys, "every input id reaches the output");
    assert!(total >= keys.len());
}

#[test]
fn the_pipeline_rides_out_a_broker_killed_and_restarted_by_the_scripts() {
    let (input, output, dead) = cluster_and_topics("broker");
    let keys = feed(&input, 30_000);
    let child = pipeline()
        .args([
            "--use-own",
            "--job-name",
            &input,
            "--checkpointing-interval",
            "200",
        ])
        .args(topic_args(&input, &output, &dead))
        .args(fetch_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&output);
    // Apache Kafka restarts on its own data on disk.
    kill_broker();
    std::thread::sleep(Duration::from_secs(3));
    script("start-env.sh", &["-k"]);
    let started = Instant::now();
    while keys_in(&output).1.len() < keys.len() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the pipeline did not catch up after the broker came back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    signal(&child, "TERM");
    let stopped = wait_with_timeout(child, Duration::from_secs(15));
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    assert_eq!(keys_in(&output).1, keys);
}

#[test]
fn a_broker_down_at_start_fails_fast_and_loses_nothing() {
    let (input, output, dead) = cluster_and_topics("down");
    let keys = feed(&input, 1_000);
    script("stop-env.sh", &["-k", "--keep-data"]);
    for (command, name) in [
        (
            datagen()
                .args(["-s", "streaming", "-e", "10", "--topic", &input])
                .output(),
            "datagen",
        ),
        (
            pipeline()
                .args(["--use-own", "--bounded", "--job-name", &input])
                .args(topic_args(&input, &output, &dead))
                .output(),
            "pipeline",
        ),
    ] {
        let started = Instant::now();
        let ran = command.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            started.elapsed()
        );
        let err = stderr(&ran);
        assert_eq!(ran.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("cannot reach Kafka at localhost:29092"),
            "{name}: {err}"
        );
    }
    script("start-env.sh", &["-k"]);
    let run = drain(&input, &output, &dead);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(
        keys_in(&output).1,
        keys,
        "the data kept across the stop is all processed"
    );
}

#[test]
fn the_scripts_reject_unknown_flags_report_status_and_are_idempotent() {
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("setup");
    for name in ["start-env.sh", "stop-env.sh", "status-env.sh"] {
        let output = Command::new("bash")
            .arg(setup.join(name))
            .arg("--frobnicate")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{name}");
        assert!(
            stderr(&output).contains("Usage: setup/"),
            "{name}: {}",
            stderr(&output)
        );
    }
    let first = script("start-env.sh", &["-k"]);
    let again = script("start-env.sh", &["--kafka"]);
    assert!(common::stdout(&first).contains("is up at localhost:29092"));
    assert!(
        common::stdout(&again).contains("already running"),
        "{}",
        common::stdout(&again)
    );
    let status = common::stdout(&script("status-env.sh", &[]));
    let backend = common::broker::backend();
    assert!(
        status.contains(&format!("up: {backend}, ")) && status.contains("at localhost:29092"),
        "{status}"
    );
    let version = match backend.as_str() {
        "kafka" => "Apache Kafka 4.",
        "tansu" => "tansu 0.",
        _ => "Apache Kafka",
    };
    assert!(status.contains(version), "{status}");
}

/// Issue 17: datagen once spun at 100% CPU for good after its broker died (it counted
/// librdkafka's queued requests as undelivered events). Now, with the broker killed
/// mid-run, a bounded run ends within `message.timeout.ms` plus a few seconds of its last
/// event, counts every event delivered or failed, and exits 1.
#[test]
fn datagen_ends_on_time_and_counts_exactly_after_its_broker_is_killed() {
    let (input, _, _) = cluster_and_topics("datagen-kill");
    let child = common::datagen()
        .args([
            "-s",
            "streaming",
            "--topic",
            &input,
            "--rate",
            "20000",
            "--duration",
            "4s",
        ])
        .args(["-X", "message.timeout.ms=6000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    kill_broker();
    let killed = Instant::now();
    // 2 s of generation left, 6 s of message timeout, 5 s of grace, and margin.
    let output = wait_with_timeout(child, Duration::from_secs(40));
    let took = killed.elapsed();
    let err = stderr(&output);
    script("start-env.sh", &["-k"]);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}\n{err}");
    let (events, failures) = common::summary_counts(&err);
    assert!(
        events > 40_000 && failures > 0 && failures <= events,
        "{err}"
    );
    let stored = keys_in(&input).0 as u64;
    assert!(
        stored <= events && stored + failures >= events,
        "stored {stored}, events {events}, failed {failures}\n{err}"
    );
}
