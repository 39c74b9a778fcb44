//! `datagen --verify-topic` against a job that forwards no headers (issue 28), on Apache
//! Kafka: `pipeline` behind the tests' own `--drop-input-headers` hook does the article's
//! transform and writes its output and dead letters without `datagen`'s headers, as Flink's
//! `KafkaSink` and Beam's `WriteToKafka` do. The verification must match events by their
//! content. The same checks run against a JVM job (`tests/jvm/EventLogJob.java`, a
//! hand-written Kafka consumer and producer doing the article's transform, run from Kafka's
//! own jars), on a clean run and across a `kill -9` of the job.
//! Run with `cargo test --features e2e --test verify_e2e -- --test-threads=1`.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::broker::{BOOTSTRAP, Job, job, partition_count};
use common::wait_with_timeout;
use common::{Reaper, datagen, read_topic, spawn_assigned, stderr, wait_with_log};

/// The job under test: kafka-io, at least once, dropping the input's headers, committing
/// every `commit_ms`.
fn header_dropping(job: &Job, commit_ms: &str) -> Command {
    job.process(&[
        "--drop-input-headers",
        "--checkpointing-interval",
        commit_ms,
    ])
}

/// How often the jobs of the kill tests commit: a kill 3 s after their first output comes
/// before their first commit, so the restart surely replays (and duplicates) something.
const RARE_COMMITS: &str = "10000";

/// A figure of datagen's verification line: `verification: N events: A arrived, L lost,
/// D duplicated; dead letters E expected, U unexpected`.
fn figure(err: &str, name: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.starts_with("verification: "))
        .unwrap_or_else(|| panic!("no verification line: {err}"));
    let before = line
        .split(&format!(" {name}"))
        .next()
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let number = before.rsplit([' ', ':']).next().unwrap().replace(',', "");
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number before {name} in {line}"))
}

/// The events datagen says it sent (its summary: `datagen: N events, ...`).
fn events_sent(err: &str) -> u64 {
    err.lines()
        .filter_map(|l| l.strip_prefix("datagen: "))
        .filter_map(|rest| rest.split_once(" events, "))
        .find_map(|(n, _)| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no summary: {err}"))
}

/// A verification that ended well, matched by content: exit 0, nothing lost or
/// duplicated. Returns its stderr.
fn clean(output: &Output) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(err.contains("matched by content"), "{err}");
    assert_eq!(figure(&err, "lost"), 0, "{err}");
    assert_eq!(figure(&err, "duplicated"), 0, "{err}");
    err
}

fn verify(job: &Job, args: &[&str]) -> Command {
    let mut command = datagen();
    command
        .args(["-s", "streaming", "-q", "--topic", &job.input])
        .args(["--verify-topic", &job.output])
        .args(["--verify-dead-letter-topic", &job.dead])
        .args(args);
    command
}

fn run(mut command: Command) -> Output {
    common::output_within(&mut command, Duration::from_secs(180))
}

#[test]
fn a_job_that_drops_headers_is_verified_by_content_with_nothing_lost() {
    let job = job("verify-clean", 3);
    let reaper = Reaper::default();
    let (child, log) = spawn_assigned(header_dropping(&job, "1000"), 3, Duration::from_secs(100));
    let child = reaper.watch(child);
    let output = run(verify(
        &job,
        &[
            "--rate",
            "2000",
            "--duration",
            "8s",
            "--bad-record-ratio",
            "0.01",
            "--seed",
            "11",
        ],
    ));
    let err = clean(&output);
    assert!(events_sent(&err) >= 15_000, "{err}");
    assert!(
        figure(&err, "expected") > 50,
        "bad records matched in the dead letters: {err}"
    );
    assert_eq!(figure(&err, "unexpected"), 0, "{err}");
    assert!(
        err.contains("end-to-end latency to arrival"),
        "latency without headers: {err}"
    );
    // The job really dropped the headers.
    let records = read_topic(BOOTSTRAP, &job.output, partition_count(&job.output));
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| !r.headers.contains_key("datagen.run"))
    );
    common::signal(&child, "TERM");
    let (status, log) = wait_with_log(child, Duration::from_secs(60), log);
    assert_eq!(status.status.code(), Some(0), "{log}");
}

#[test]
fn a_header_dropping_job_killed_and_restarted_loses_nothing_and_its_duplicates_are_counted() {
    let job = job("verify-kill", 3);
    killed_and_restarted(&job, "12", &|| {
        header_dropping(&job, RARE_COMMITS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    });
}

/// The kill test, for any job that `start` starts: a 20 s load at 2,000 events/s, the job
/// `kill -9`'d 3 s after its first output and started again. Nothing may be lost, and the
/// duplicates must equal the output's records beyond the events sent, counted by reading
/// the topic.
fn killed_and_restarted(job: &Job, seed: &str, start: &dyn Fn() -> std::process::Child) {
    let reaper = Reaper::default();
    let first = reaper.watch(start());
    let load = reaper.watch(
        verify(
            job,
            &[
                "--rate",
                "2000",
                "--duration",
                "20s",
                "--verify-grace",
                "60s",
                "--seed",
                seed,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    common::broker::wait_for_output(&job.output);
    std::thread::sleep(Duration::from_secs(3));
    common::signal(&first, "KILL");
    let _ = wait_with_timeout(first, Duration::from_secs(10));
    let second = reaper.watch(start());
    let output = wait_with_timeout(load, Duration::from_secs(180));
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(err.contains("matched by content"), "{err}");
    assert_eq!(figure(&err, "lost"), 0, "{err}");
    let sent = events_sent(&err);
    let written = read_topic(BOOTSTRAP, &job.output, partition_count(&job.output)).len() as u64;
    assert!(
        written > sent,
        "the restart replayed something: {written} of {sent}: {err}"
    );
    assert_eq!(figure(&err, "duplicated"), written - sent, "{err}");
    common::signal(&second, "TERM");
    let _ = wait_with_timeout(second, Duration::from_secs(60));
}

#[test]
fn events_sharing_identities_at_a_high_rate_are_counted_exactly() {
    // 5 users at 20,000 events/s: a user's events often share a millisecond, and so an
    // identity (id, event_ts).
    let job = job("verify-shared", 3);
    let reaper = Reaper::default();
    let (child, log) = spawn_assigned(header_dropping(&job, "1000"), 3, Duration::from_secs(100));
    let child = reaper.watch(child);
    let output = run(verify(
        &job,
        &[
            "--num-users",
            "5",
            "--rate",
            "20000",
            "--duration",
            "5s",
            "--seed",
            "13",
        ],
    ));
    let err = clean(&output);
    assert_eq!(figure(&err, "arrived"), events_sent(&err), "{err}");
    // The shared identities, counted from the input's keys.
    let mut keys: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for record in read_topic(BOOTSTRAP, &job.input, partition_count(&job.input)) {
        *keys.entry(record.key).or_default() += 1;
    }
    let shared = keys.values().filter(|&&n| n > 1).count();
    assert!(shared > 100, "the load shares identities: {shared}");
    assert!(
        err.contains(&format!(
            "{} identities shared by more than one event",
            group(shared as u64)
        )),
        "{shared} shared: {err}"
    );
    common::signal(&child, "TERM");
    let (status, log) = wait_with_log(child, Duration::from_secs(60), log);
    assert_eq!(status.status.code(), Some(0), "{log}");
}

fn group(n: u64) -> String {
    common::group_thousands(n)
}

/// The JVM job on `job`'s topics, started as `java` itself (the test signals the JVM, not a
/// shell around it).
fn jvm_job(job: &Job, commit_ms: &str) -> std::process::Child {
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jvm/EventLogJob.java");
    Command::new(common::broker::java())
        .arg("-cp")
        .arg(format!("{}/*", common::broker::kafka_libs().display()))
        .arg(source)
        .args([
            BOOTSTRAP,
            &job.name,
            &job.input,
            &job.output,
            &job.dead,
            commit_ms,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_jvm_job_that_forwards_no_headers_is_verified_with_nothing_lost() {
    let job = job("verify-jvm", 3);
    let reaper = Reaper::default();
    let jvm = reaper.watch(jvm_job(&job, "1000"));
    let output = run(verify(
        &job,
        &[
            "--rate",
            "2000",
            "--duration",
            "8s",
            "--verify-grace",
            "60s",
            "--seed",
            "14",
        ],
    ));
    let err = clean(&output);
    assert_eq!(figure(&err, "arrived"), events_sent(&err), "{err}");
    let records = read_topic(BOOTSTRAP, &job.output, partition_count(&job.output));
    assert!(
        records.iter().all(|r| r.headers.is_empty()),
        "the JVM job forwards no header"
    );
    common::signal(&jvm, "TERM");
    let _ = wait_with_timeout(jvm, Duration::from_secs(30));
}

#[test]
fn a_jvm_job_killed_and_restarted_loses_nothing_and_its_duplicates_are_counted() {
    let job = job("verify-jvm-kill", 3);
    killed_and_restarted(&job, "15", &|| jvm_job(&job, RARE_COMMITS));
}
