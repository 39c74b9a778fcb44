//! The two example jobs (`examples/marketing_optins.rs`, `examples/bytes_by_age.rs`) on
//! Apache Kafka (`setup/start-env.sh --backend kafka`) and on files, against an
//! independent computation of their rules over the same `datagen` input; and exactly once
//! through a `kill -9`. The examples are built by the test (`cargo build --examples`).
//! Run with `cargo test --features e2e --test examples_e2e -- --test-threads=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::broker::{BOOTSTRAP, Job, fetch_args, job, partition_count, topic_args};
use common::{
    Reaper, datagen, end_offsets, http, output_within, read_topic, signal, spawn_with_address,
    stderr, wait_with_timeout,
};
use serde_json::{Value, json};

const PARTITIONS: i32 = 3;

/// The example `name`, built once by this test run (same profile and target directory as
/// the test itself).
fn example(name: &str) -> Command {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--examples", "--features", "e2e"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --examples failed");
    });
    let path: PathBuf = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"))
        .with_file_name("examples")
        .join(name);
    assert!(path.exists(), "{} was not built", path.display());
    let mut command = Command::new(path);
    command
        .env_remove("BOOTSTRAP_SERVERS")
        .env_remove("RUST_LOG");
    command
}

/// `example` on `job`'s topics, one worker, plus `extra`.
fn on_kafka(name: &str, job: &Job, extra: &[&str]) -> Command {
    let mut command = example(name);
    command
        .args([
            "--no-ui",
            "--use-own",
            "--job-name",
            &job.name,
            "--parallelism",
            "1",
        ])
        .args(topic_args(&job.input, &job.output, &job.dead))
        .args(fetch_args())
        .args(extra);
    command
}

/// `n` seeded events, 20 ms apart in simulated time from `start` (so a 60 s window holds
/// about 3,000), as datagen writes them: to `topic`, or as JSON lines (returned).
fn events(n: u64, seed: u64, topic: Option<&str>) -> Vec<u8> {
    let mut command = datagen();
    command
        .args([
            "-q",
            "--num-events",
            &n.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args([
            "--start-time",
            "2024-03-01T05:50:17Z",
            "--time-step-ms",
            "20",
        ]);
    match topic {
        Some(topic) => command.args(["-s", "streaming", "--topic", topic]),
        None => command.args(["--output", "-"]),
    };
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    output.stdout
}

/// Every value of `topic`, as JSON, with its key as JSON (read_committed).
fn records(topic: &str) -> Vec<(Value, Value)> {
    read_topic(BOOTSTRAP, topic, partition_count(topic))
        .into_iter()
        .map(|r| {
            (
                serde_json::from_slice(&r.key).unwrap(),
                serde_json::from_slice(&r.value).unwrap(),
            )
        })
        .collect()
}

/// Python's truthiness of a coordinate: `""` and `0` are false.
fn truthy(coordinate: &Value) -> bool {
    match coordinate {
        Value::String(text) => !text.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}

/// marketing_optins' rule, computed here: the opted-in events, keyed `{"event_id",
/// "event_ts"}`, without `ip` and `user_agent`, an empty `lat`/`lng` read as -1. Sorted.
fn expected_opt_ins(inputs: &[Value]) -> Vec<(Value, Value)> {
    let expected = inputs
        .iter()
        .filter(|event| event["opted_into_marketing"] == json!(true))
        .map(|event| {
            let mut value = event.as_object().unwrap().clone();
            value.remove("ip");
            value.remove("user_agent");
            if !truthy(&event["lat"]) || !truthy(&event["lng"]) {
                value.insert("lat".into(), json!(-1));
                value.insert("lng".into(), json!(-1));
            }
            let key = json!({"event_id": event["id"], "event_ts": event["event_ts"]});
            (key, Value::Object(value))
        })
        .collect();
    sorted(expected)
}

/// bytes_by_age's rule, computed here: events and bytes per age bracket and window of
/// `size_ms` over `event_ts`, as (key, value). Sorted.
fn expected_windows(inputs: &[Value], size_ms: i64) -> Vec<(Value, Value)> {
    let mut totals: BTreeMap<(String, i64), (u64, i64)> = BTreeMap::new();
    for event in inputs {
        let start = event["event_ts"].as_i64().unwrap().div_euclid(size_ms) * size_ms;
        let total = totals
            .entry((event["age_bracket"].as_str().unwrap().to_string(), start))
            .or_default();
        total.0 += 1;
        total.1 += event["file_size_bytes"].as_i64().unwrap();
    }
    sorted(
        totals
            .into_iter()
            .map(|((age, start), (events, bytes))| {
                (
                    json!({"age_bracket": age, "window_start": start}),
                    json!({"age_bracket": age, "window_start": start, "window_end": start + size_ms, "events": events, "bytes": bytes}),
                )
            })
            .collect(),
    )
}

fn sorted(mut records: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    records.sort_by_key(|(key, value)| (key.to_string(), value.to_string()));
    records
}

/// The input topic's events, as JSON.
fn inputs_of(topic: &str) -> Vec<Value> {
    records(topic).into_iter().map(|(_, value)| value).collect()
}

#[test]
fn both_examples_on_kafka_write_what_their_rules_give_on_the_same_input() {
    let optins = job("example-optins", PARTITIONS);
    let by_age = job("example-by-age", PARTITIONS);
    for job in [&optins, &by_age] {
        events(20_000, 7, Some(&job.input));
    }
    for (name, job) in [("marketing_optins", &optins), ("bytes_by_age", &by_age)] {
        let run = output_within(
            &mut on_kafka(name, job, &["--bounded"]),
            Duration::from_secs(120),
        );
        assert_eq!(run.status.code(), Some(0), "{name}: {}", stderr(&run));
        assert!(records(&job.dead).is_empty(), "{name}: dead letters");
    }
    let inputs = inputs_of(&optins.input);
    assert_eq!(inputs.len(), 20_000);
    let expected = expected_opt_ins(&inputs);
    assert!(
        expected.len() > 5_000 && expected.len() < 15_000,
        "{}",
        expected.len()
    );
    assert!(
        sorted(records(&optins.output)) == expected,
        "marketing_optins differs"
    );

    let expected = expected_windows(&inputs_of(&by_age.input), 60_000);
    // 400 s of events: 7 or 8 windows, each with every bracket.
    assert!(expected.len() >= 20, "{} windows", expected.len());
    assert!(
        sorted(records(&by_age.output)) == expected,
        "bytes_by_age differs"
    );
}

#[test]
fn both_examples_in_file_mode_write_what_their_rules_give_on_the_same_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let lines = events(20_000, 8, None);
    std::fs::write(&input, &lines).unwrap();
    let inputs: Vec<Value> = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    for (name, expected) in [
        ("marketing_optins", expected_opt_ins(&inputs)),
        ("bytes_by_age", expected_windows(&inputs, 60_000)),
    ] {
        let dead = dir.path().join(format!("{name}-dlq.jsonl"));
        let output = example(name)
            .arg("--no-ui")
            .arg("--input")
            .arg(&input)
            .arg("--dead-letter-file")
            .arg(&dead)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{name}: {}", stderr(&output));
        assert!(!dead.exists(), "{name}: dead letters");
        // File mode writes values only: the key is checked on Kafka.
        let values: BTreeSet<String> = output
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).unwrap().to_string())
            .collect();
        let expected: BTreeSet<String> = expected.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(
            values.len(),
            expected.len(),
            "{name}: a result twice, or one missing"
        );
        assert!(values == expected, "{name} differs");
    }
}

/// Runs `name` exactly once on `job` (committing every 200 ms), `kill -9`s it once its
/// output reaches `at_least` records (of `total`; its end offsets, cheap to ask every
/// 50 ms, so the kill lands early), restarts it bounded under the same instance id, and
/// returns what a read_committed reader sees.
fn killed_and_restarted(
    name: &str,
    job: &Job,
    extra: &[&str],
    at_least: usize,
    total: usize,
) -> Vec<(Value, Value)> {
    let reaper = Reaper::default();
    let eos = |more: &[&str]| {
        let mut command = on_kafka(
            name,
            job,
            &[
                "--processing-guarantee",
                "exactly-once",
                "--instance-id",
                "a",
                "--commit-interval",
                "200",
            ],
        );
        command.args(extra).args(more);
        command
    };
    let first = reaper.watch(
        eos(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while end_offsets(BOOTSTRAP, &job.output, PARTITIONS) < at_least as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name}: no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&first, "KILL");
    let _ = wait_with_timeout(first, Duration::from_secs(10));
    let at_kill = read_topic(BOOTSTRAP, &job.output, PARTITIONS).len();
    assert!(
        at_kill < total,
        "{name}: the kill came after the end ({at_kill} of {total}): make the input larger"
    );
    let restarted = output_within(&mut eos(&["--bounded"]), Duration::from_secs(240));
    assert_eq!(
        restarted.status.code(),
        Some(0),
        "{name}: {}",
        stderr(&restarted)
    );
    records(&job.output)
}

#[test]
fn marketing_optins_exactly_once_survives_a_kill_with_each_opt_in_once() {
    let job = job("example-optins-eos", PARTITIONS);
    events(200_000, 9, Some(&job.input));
    let expected = expected_opt_ins(&inputs_of(&job.input));
    let results = killed_and_restarted(
        "marketing_optins",
        &job,
        &[],
        expected.len() / 5,
        expected.len(),
    );
    assert_each_once(results, &expected, "an opt-in");
}

#[test]
fn bytes_by_age_exactly_once_survives_a_kill_with_each_window_result_once() {
    let job = job("example-by-age-eos", PARTITIONS);
    // 2 s windows: about 2,000 results over 400 s of events.
    events(200_000, 10, Some(&job.input));
    // The rule, with 2 s windows.
    let expected = expected_windows(&inputs_of(&job.input), 2_000);
    let results = killed_and_restarted(
        "bytes_by_age",
        &job,
        &["--window", "2s"],
        expected.len() / 5,
        expected.len(),
    );
    assert_each_once(results, &expected, "a window result");
}

/// Each of `results` has a key of its own (none written twice), none is missing, and
/// they equal `expected` (the rule's, sorted); `what` names one result.
fn assert_each_once(results: Vec<(Value, Value)>, expected: &[(Value, Value)], what: &str) {
    let keys: BTreeSet<String> = results.iter().map(|(key, _)| key.to_string()).collect();
    assert_eq!(keys.len(), results.len(), "{what} written twice");
    assert_eq!(results.len(), expected.len(), "{what} lost");
    assert!(
        sorted(results) == expected,
        "the results differ from the rule's"
    );
}

/// `name` on the embedded demo (no broker: a generator feeds its input), until its
/// dashboard shows operator `until` with records in: what `/api/job` says then, and the
/// operators as (name, records in, records out).
fn dashboard_of(name: &str, extra: &[&str], until: usize) -> (Value, Vec<(String, u64, u64)>) {
    let reaper = Reaper::default();
    let mut command = example(name);
    command.args(["--demo-rate", "200"]).args(extra);
    let (child, addr) = spawn_with_address(command, "dashboard at");
    let child = reaper.watch(child);
    let started = Instant::now();
    let job = loop {
        let (status, body) = http("GET", &addr, "/api/job");
        assert_eq!(status, 200, "{body}");
        let job: Value = serde_json::from_str(&body).unwrap();
        if job["operators"][until]["records_in"].as_u64() > Some(0) {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{name}: nothing into operator {until} after 90 s: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    signal(&child, "TERM");
    let _ = wait_with_timeout(child, Duration::from_secs(30));
    let operators = job["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["records_in"].as_u64().unwrap(),
                o["records_out"].as_u64().unwrap(),
            )
        })
        .collect();
    (job, operators)
}

fn names(operators: &[(String, u64, u64)]) -> Vec<&str> {
    operators.iter().map(|o| o.0.as_str()).collect()
}

#[test]
fn both_examples_show_their_operators_counts_and_watermarks_on_the_dashboard() {
    // Until results reach the write (operator 4, past the repartition topic and the window).
    let (job, operators) = dashboard_of(
        "bytes_by_age",
        &["--window", "1s", "--max-out-of-orderness", "0s"],
        4,
    );
    assert_eq!(job["job"]["name"], "bytes-by-age");
    assert_eq!(job["job"]["parallelism"], 1);
    assert_eq!(
        names(&operators),
        [
            "Read from Kafka",
            "Parse events",
            "Repartition by key",
            "Sum per age bracket",
            "Write to Kafka",
            "Dead letters"
        ]
    );
    // Every event read was parsed and written to the repartition topic by age bracket;
    // the second stage windows what it reads there (which it may see before the first
    // stage has its acknowledgement, so the two counts are not compared).
    let (read, parsed, repartitioned, windowed) = (
        operators[0].2,
        operators[1].2,
        operators[2].2,
        operators[3].2,
    );
    assert!(
        read > 0 && parsed <= read && repartitioned <= parsed,
        "{operators:?}"
    );
    assert!(windowed <= operators[3].1, "{operators:?}");
    assert!(windowed > 0, "{operators:?}");
    assert!(job["windows"]["watermark_ms"].as_i64().is_some(), "{job}");
    assert!(job["windows"]["fired"].as_u64() > Some(0), "{job}");

    let (job, operators) = dashboard_of("marketing_optins", &["--demo-users", "200"], 3);
    assert_eq!(job["job"]["name"], "marketing-optins");
    assert_eq!(
        names(&operators),
        [
            "Read from Kafka",
            "Parse events",
            "Keep opted-in",
            "Write to Kafka",
            "Dead letters"
        ]
    );
    // The filter keeps some of what it is given, and drops the rest.
    let (parsed, kept) = (operators[1].2, operators[2].2);
    assert!(kept > 0 && kept < parsed, "{operators:?}");
    assert!(job["totals"]["dropped"].as_u64() > Some(0), "{job}");
}
