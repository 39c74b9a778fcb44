//! `--processing-guarantee exactly-once` on Apache Kafka (`setup/start-env.sh --backend
//! kafka`): every count is taken by a `read_committed` consumer, by key, against the input
//! fed. Run with `cargo test --features e2e --test exactly_once_e2e -- --test-threads=1`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{BOOTSTRAP, Job, job, loss_and_duplicates, partition_count, script};
use common::{
    Reaper, output_within, produce, read_topic, read_topic_as, signal, stderr, wait_with_timeout,
};
use streamkit::pipeline::dead_letter;

const PARTITIONS: i32 = 6;

fn eos(job: &Job, instance: &str, extra: &[&str]) -> Child {
    // One worker per process (`Job::process`), each with its own transactional producer.
    let mut command: Command = job.process(&[
        "--processing-guarantee",
        "exactly-once",
        "--instance-id",
        instance,
    ]);
    command
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(child: Child, what: &str) -> String {
    signal(&child, "TERM");
    let output = wait_with_timeout(child, Duration::from_secs(60));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{what}: {err}");
    err
}

/// Output records (read_committed) so far.
fn committed_count(job: &Job) -> usize {
    read_topic(BOOTSTRAP, &job.output, partition_count(&job.output)).len()
}

#[test]
fn a_process_killed_mid_run_and_restarted_loses_and_duplicates_nothing() {
    let reaper = Reaper::default();
    let job = job("eos-crash", PARTITIONS);
    let expected = job.feed(300_000, 11);
    let a = reaper.watch(eos(&job, "a", &[]));
    let b = reaper.watch(eos(&job, "b", &[]));
    let started = Instant::now();
    while committed_count(&job) < 30_000 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&a, "KILL");
    let killed = Instant::now();
    let _ = wait_with_timeout(a, Duration::from_secs(10));
    let at_kill = committed_count(&job);
    // Restarted under the same instance id: it fences its predecessor's producers and
    // aborts their open transactions at once.
    let a = reaper.watch(eos(&job, "a", &[]));
    assert!(
        at_kill < expected.len(),
        "the kill came after the end: make the backlog larger"
    );
    let stall = loop {
        if committed_count(&job) > at_kill {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(60) {
            signal(&a, "TERM");
            signal(&b, "TERM");
            let a = wait_with_timeout(a, Duration::from_secs(30));
            let b = wait_with_timeout(b, Duration::from_secs(30));
            panic!(
                "read_committed output stalled for 60 s after the kill ({at_kill} records then)\nrestarted: {}\nother: {}",
                stderr(&a),
                stderr(&b)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("read_committed output grew again {stall:?} after the kill -9");
    assert!(stall < Duration::from_secs(15), "stalled {stall:?}");
    let counts = job.wait_for_all(&expected, Duration::from_secs(240));
    stop(a, "restarted process");
    stop(b, "other process");
    let counts_after = job.output_counts();
    assert_eq!(counts_after, counts, "nothing more after the stop");
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0));
}

#[test]
fn a_zombie_process_is_fenced_and_nothing_is_lost_or_duplicated() {
    let reaper = Reaper::default();
    let job = job("eos-zombie", PARTITIONS);
    let expected = job.feed(150_000, 12);
    let session = ["--session-timeout", "6000"];
    let a = reaper.watch(eos(&job, "a", &session));
    let b = reaper.watch(eos(&job, "b", &session));
    let started = Instant::now();
    while committed_count(&job) < 10_000 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Frozen past its session: the group moves its partitions to b.
    signal(&a, "STOP");
    std::thread::sleep(Duration::from_secs(15));
    signal(&a, "CONT");
    let counts = job.wait_for_all(&expected, Duration::from_secs(240));
    // The zombie's late transaction is fenced: it either stops with that message or goes
    // on as a new member; nothing it wrote after losing its partitions is visible.
    signal(&a, "TERM");
    let zombie = wait_with_timeout(a, Duration::from_secs(60));
    let zombie_log = stderr(&zombie);
    stop(b, "the live process");
    assert_eq!(
        loss_and_duplicates(&expected, &job.output_counts()),
        (0, 0),
        "zombie: {zombie_log}"
    );
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0));
    assert!(
        zombie_log.contains("lost")
            || zombie_log.contains("fenced")
            || zombie_log.contains("zombie"),
        "the zombie noticed: {zombie_log}"
    );
}

#[test]
fn a_broker_killed_and_restarted_mid_run_loses_and_duplicates_nothing() {
    let reaper = Reaper::default();
    let job = job("eos-broker", PARTITIONS);
    let expected = job.feed(100_000, 13);
    let a = reaper.watch(eos(&job, "a", &[]));
    let started = Instant::now();
    while committed_count(&job) < 5_000 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/kafka/broker.pid"),
    )
    .expect("the broker's pid");
    assert!(
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_secs(3));
    script("start-env.sh", &["-k"]);
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job.wait_for_all(&expected, Duration::from_secs(240))
    }));
    let counts = match waited {
        Ok(counts) => counts,
        Err(_) => {
            signal(&a, "KILL");
            let output = wait_with_timeout(a, Duration::from_secs(10));
            panic!(
                "the job did not finish after the broker came back; its log:\n{}",
                stderr(&output)
            );
        }
    };
    let err = stop(a, "the job");
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0), "{err}");
}

#[test]
fn each_bad_record_is_dead_lettered_exactly_once_with_its_reason() {
    let reaper = Reaper::default();
    let job = job("eos-bad", PARTITIONS);
    let expected = job.feed(20_000, 14);
    let bad: Vec<common::RawRecord> = (0..200)
        .map(|i| {
            (
                Some(format!("bad-{i}").into_bytes()),
                Some(if i % 2 == 0 {
                    b"not json".to_vec()
                } else {
                    b"[1, 2]".to_vec()
                }),
            )
        })
        .collect();
    produce(BOOTSTRAP, &job.input, &bad);
    let a = reaper.watch(eos(&job, "a", &[]));
    let counts = job.wait_for_all(&expected, Duration::from_secs(120));
    let started = Instant::now();
    let dead = loop {
        let dead = read_topic(BOOTSTRAP, &job.dead, PARTITIONS);
        if dead.len() >= 200 || started.elapsed() > Duration::from_secs(60) {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    stop(a, "the job");
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0));
    let keys: BTreeSet<String> = dead
        .iter()
        .map(|r| String::from_utf8(r.key.clone()).unwrap())
        .collect();
    assert_eq!(dead.len(), 200, "each bad record once");
    assert_eq!(keys.len(), 200);
    for record in &dead {
        let kind = record.headers.get(dead_letter::KIND).map(String::as_str);
        assert!(
            matches!(kind, Some("not_json") | Some("not_object")),
            "{kind:?}"
        );
        assert!(!record.headers[dead_letter::ERROR].is_empty());
    }
}

#[test]
fn an_aborted_transaction_is_invisible_to_read_committed_and_visible_to_read_uncommitted() {
    let reaper = Reaper::default();
    let job = job("eos-abort", PARTITIONS);
    let expected = job.feed(20_000, 15);
    // One worker, and a commit interval long enough for 2,000 records in one transaction.
    let mut command = job.process(&[
        "--processing-guarantee",
        "exactly-once",
        "--instance-id",
        "a",
        "--commit-interval",
        "5000",
        "--inject-abort-after",
        "2000",
    ]);
    let a = reaper.watch(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let counts = job.wait_for_all(&expected, Duration::from_secs(120));
    let err = stop(a, "the job");
    assert!(
        err.contains("aborted a transaction of 2000 records"),
        "{err}"
    );
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0), "{err}");
    let uncommitted = read_topic_as(BOOTSTRAP, &job.output, PARTITIONS, "read_uncommitted");
    assert!(
        uncommitted.len() >= expected.len() + 2000,
        "the aborted records are in the log: {} records for {} keys",
        uncommitted.len(),
        expected.len()
    );
}

#[test]
fn a_record_too_large_for_the_output_is_dead_lettered_by_reference_and_the_job_goes_on() {
    let reaper = Reaper::default();
    let job = job("eos-poison", PARTITIONS);
    common::broker::allow_records_of(&job.input, 10 << 20);
    let too_large = common::padded_event(1_500_000, "too-large");
    let key = b"oversized".to_vec();
    let positions = produce(
        BOOTSTRAP,
        &job.input,
        &[(Some(key.clone()), Some(too_large.clone()))],
    );
    let expected = job.feed(10_000, 16);
    let a = reaper.watch(eos(&job, "a", &[]));
    let counts = job.wait_for_all(&expected, Duration::from_secs(120));
    let started = Instant::now();
    let dead = loop {
        let dead = read_topic(BOOTSTRAP, &job.dead, PARTITIONS);
        if !dead.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let err = stop(a, "the job");
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0), "{err}");
    assert_eq!(dead.len(), 1, "{err}");
    common::assert_dead_letter_reference(
        &dead[0],
        &job.input,
        "too_large",
        positions[0],
        too_large.len() + key.len(),
    );
}

/// The window results of `topic` as a `read_committed` reader sees them: (key, value),
/// sorted.
fn window_results(topic: &str) -> Vec<(String, String)> {
    let mut results: Vec<(String, String)> = read_topic(BOOTSTRAP, topic, partition_count(topic))
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key).unwrap(),
                String::from_utf8(r.value).unwrap(),
            )
        })
        .collect();
    results.sort();
    results
}

/// traffic-agg exactly once, committing every 200 ms.
fn traffic_agg_eos(job: &Job, instance: &str, extra: &[&str]) -> Command {
    let mut command = job.process(&[
        "--job",
        "traffic-agg",
        "--window",
        "2s",
        "--max-out-of-orderness",
        "5s",
        "--processing-guarantee",
        "exactly-once",
        "--instance-id",
        instance,
        "--commit-interval",
        "200",
    ]);
    command.args(extra);
    command
}

#[test]
fn traffic_agg_killed_mid_window_and_restarted_writes_each_window_result_exactly_once() {
    let reaper = Reaper::default();
    // The same events (same seed and clock) into two jobs' inputs: one runs through, the
    // other is killed mid-run and restarted.
    let reference = job("eos-agg-reference", PARTITIONS);
    let job = job("eos-agg", PARTITIONS);
    reference.feed(400_000, 21);
    job.feed(400_000, 21);
    let through = output_within(
        &mut traffic_agg_eos(&reference, "r", &["--bounded"]),
        Duration::from_secs(240),
    );
    assert_eq!(through.status.code(), Some(0), "{}", stderr(&through));
    let expected = window_results(&reference.output);
    assert!(expected.len() > 200, "{} results", expected.len());
    let a = reaper.watch(
        traffic_agg_eos(&job, "a", &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while committed_count(&job) < expected.len() / 5 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&a, "KILL");
    let _ = wait_with_timeout(a, Duration::from_secs(10));
    let at_kill = committed_count(&job);
    assert!(
        at_kill < expected.len(),
        "the kill came after the end: make the backlog larger"
    );
    // Restarted under the same instance id, it reads the state committed with the
    // positions and runs to the end of the input.
    let restarted = output_within(
        &mut traffic_agg_eos(&job, "a", &["--bounded"]),
        Duration::from_secs(240),
    );
    let log = stderr(&restarted);
    assert_eq!(restarted.status.code(), Some(0), "{log}");
    let results = window_results(&job.output);
    let keys: BTreeSet<&String> = results.iter().map(|(key, _)| key).collect();
    assert_eq!(keys.len(), results.len(), "a window result twice");
    assert_eq!(
        results.len(),
        expected.len(),
        "{at_kill} results at the kill\n{log}"
    );
    assert!(
        results == expected,
        "the results differ from a run without a kill"
    );
}

/// Resumes the broker it froze, whatever happens to the test.
struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[test]
fn exactly_once_shows_its_lag_and_its_draining_phase_on_the_dashboard() {
    let reaper = Reaper::default();
    let job = job("eos-dashboard", PARTITIONS);
    let expected = job.feed(100_000, 22);
    // `job.process` serves the dashboard on a loopback port of its own.
    let command = job.process(&[
        "--processing-guarantee",
        "exactly-once",
        "--instance-id",
        "a",
    ]);
    let (child, addr, log) = common::spawn_with_address_and_stderr(command, "dashboard at");
    let child = reaper.watch(child);
    let api = |what: &str| -> serde_json::Value {
        let (status, body) = common::http("GET", &addr, "/api/job");
        assert_eq!(status, 200, "{what}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let counts = job.wait_for_all(&expected, Duration::from_secs(120));
    assert_eq!(loss_and_duplicates(&expected, &counts), (0, 0));
    // The lag of every partition, measured and drained.
    let started = Instant::now();
    let lags = loop {
        let lags: Vec<Option<i64>> = api("lag")["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["lag"].as_i64())
            .collect();
        if lags.len() == PARTITIONS as usize && lags.iter().all(|l| *l == Some(0)) {
            break lags;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the lag did not drain: {lags:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(lags.len(), PARTITIONS as usize);
    // More input, then the broker frozen while records are in flight: a stop drains.
    let more = std::thread::spawn({
        let input = job.input.clone();
        move || {
            common::datagen()
                .args(["-s", "streaming", "-q", "--topic", &input])
                .args(["--num-events", "200000"])
                .output()
                .unwrap()
        }
    });
    let before = committed_count(&job);
    let started = Instant::now();
    while committed_count(&job) == before {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/kafka/broker.pid"),
    )
    .expect("the broker's pid");
    let frozen = Frozen(pid.trim().to_string());
    assert!(
        Command::new("kill")
            .args(["-STOP", &frozen.0])
            .status()
            .unwrap()
            .success()
    );
    signal(&child, "TERM");
    let started = Instant::now();
    let state = loop {
        let state = api("phase")["job"]["state"].as_str().unwrap().to_string();
        if state == "DRAINING" || started.elapsed() > Duration::from_secs(5) {
            break state;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(frozen);
    let _ = more.join();
    let (output, log) = common::wait_with_log(child, Duration::from_secs(90), log);
    assert_eq!(state, "DRAINING", "{log}");
    assert_eq!(output.status.code(), Some(0), "{log}");
}

#[test]
fn records_larger_than_the_output_takes_are_dead_lettered_once_at_start_and_at_run_time() {
    let reaper = Reaper::default();
    let job = job("eos-refused", PARTITIONS);
    // Below librdkafka's smallest message.max.bytes (1,000): the job's own check, from the
    // topic's limit, refuses each output at send.
    common::broker::allow_records_of(&job.output, 100);
    let expected = job.feed(5_000, 24);
    let output = output_within(
        &mut job.process(&[
            "--processing-guarantee",
            "exactly-once",
            "--instance-id",
            "a",
            "--bounded",
        ]),
        Duration::from_secs(180),
    );
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert_eq!(committed_count(&job), 0, "{log}");
    assert_eq!(
        loss_and_duplicates(&expected, &dead_letter_counts(&job)),
        (0, 0),
        "{log}"
    );
    // The limit lowered while the job runs: the broker refuses outputs on delivery, which
    // fails their transactions; read again, they go to the dead letters.
    let job = common::broker::job("eos-refused-later", PARTITIONS);
    let first = job.feed(2_000, 25);
    let a = reaper.watch(eos(&job, "a", &[]));
    let counts = job.wait_for_all(&first, Duration::from_secs(60));
    assert_eq!(loss_and_duplicates(&first, &counts), (0, 0));
    common::broker::allow_records_of(&job.output, 100);
    let later = job.feed(2_000, 26);
    let started = Instant::now();
    let dead = loop {
        let dead = dead_letter_counts(&job);
        if dead.len() >= later.len() || started.elapsed() > Duration::from_secs(120) {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = stop(a, "the job");
    assert_eq!(loss_and_duplicates(&later, &dead), (0, 0), "{log}");
    assert_eq!(job.output_counts(), counts, "{log}");
}

/// The dead letters of `job` (read_committed), counted by key.
fn dead_letter_counts(job: &Job) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for record in read_topic(BOOTSTRAP, &job.dead, PARTITIONS) {
        assert_eq!(record.headers[dead_letter::KIND], "too_large");
        *counts
            .entry(String::from_utf8(record.key.clone()).unwrap())
            .or_insert(0) += 1;
    }
    counts
}
