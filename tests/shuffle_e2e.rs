//! Issue 27: a windowed job scaled out over processes and workers through its repartition
//! topic, on Apache Kafka (`setup/start-env.sh -k`). Three `traffic-agg` processes with
//! `--parallelism 2` each, on a 6-partition input keyed as the original keys it
//! (`{"event_id", "event_ts"}`, so every partition holds every user), must write the
//! results of one bounded file-mode run on the same events: window by window, count by
//! count, none twice. At least once on a clean run; exactly once with one process
//! `kill -9`'d mid-run and restarted past the idle timeout.
//! Run with `cargo test --features e2e --test shuffle_e2e -- --test-threads=1`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use common::broker::{BOOTSTRAP, Job, committed, job, partition_count};
use common::{
    Reaper, datagen, end_offsets, pipeline, read_topic, signal, stderr, wait_with_timeout,
};

const PARTITIONS: i32 = 6;

/// The events: 20 ms apart, at most 3 s out of order (under the 5 s bound, so none is
/// late whatever the interleaving), 300 users.
fn events(n: u64) -> Vec<String> {
    vec![
        "--num-events".into(),
        n.to_string(),
        "--num-users".into(),
        "300".into(),
        "--seed".into(),
        "27".into(),
        "--start-time".into(),
        "2024-04-28T05:00:00Z".into(),
        "--time-step-ms".into(),
        "20".into(),
        "--max-lag-seconds".into(),
        "3".into(),
    ]
}

/// The same `n` events into the job's input (keyed as the original keys them) and into a
/// file; the results of one bounded file-mode run on the file, as value lines, sorted.
fn feed_and_reference(job: &Job, n: u64, dir: &Path) -> Vec<String> {
    let fed = datagen()
        .args(["-s", "streaming", "-q", "--topic", &job.input])
        .args(events(n))
        .output()
        .unwrap();
    assert!(fed.status.success(), "{}", stderr(&fed));
    let file = dir.join("events.jsonl");
    let written = datagen()
        .args(["-s", "batch", "-q", "-o"])
        .arg(&file)
        .args(events(n))
        .output()
        .unwrap();
    assert!(written.status.success(), "{}", stderr(&written));
    let results = dir.join("results.jsonl");
    let run = pipeline()
        .args(["--job", "traffic-agg", "--input"])
        .arg(&file)
        .arg("--output")
        .arg(&results)
        .arg("--dead-letter-file")
        .arg(dir.join("dead.jsonl"))
        .output()
        .unwrap();
    let log = stderr(&run);
    assert!(run.status.success(), "{log}");
    assert!(
        log.contains(" + dead-lettered 0 "),
        "no event is late: {log}"
    );
    let mut lines: Vec<String> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// One process of the job: traffic-agg, two workers, plus `extra`.
fn process(job: &Job, extra: &[&str]) -> Command {
    let mut command = pipeline();
    command
        .args(["--use-own", "--job", "traffic-agg"])
        .args(["--job-name", &job.name, "--parallelism", "2"])
        .args(["--input-topic", &job.input, "--output-topic", &job.output])
        .args(["--dead-letter-topic", &job.dead])
        .args(common::broker::fetch_args())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The output's values (read_committed), sorted, with a check that no window result was
/// written twice.
fn results(job: &Job) -> Vec<String> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in read_topic(BOOTSTRAP, &job.output, partition_count(&job.output)) {
        by_key
            .entry(String::from_utf8(record.key).unwrap())
            .or_default()
            .push(String::from_utf8(record.value).unwrap());
    }
    let twice: Vec<&String> = by_key
        .iter()
        .filter(|(_, values)| values.len() > 1)
        .map(|(key, _)| key)
        .collect();
    assert!(twice.is_empty(), "results written twice: {twice:?}");
    let mut values: Vec<String> = by_key.into_values().flatten().collect();
    values.sort();
    values
}

/// Asserts `results == expected`, saying otherwise which windows are missing and which
/// were not expected (a few of each), with each process's summary line.
fn assert_same_results(results: &[String], expected: &[String], outputs: &[Output]) {
    if results == expected {
        return;
    }
    fn count(lines: &[String]) -> BTreeMap<&str, i64> {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for line in lines {
            *counts.entry(line.as_str()).or_default() += 1;
        }
        counts
    }
    let (got, wanted) = (count(results), count(expected));
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|(line, n)| got.get(*line).copied().unwrap_or(0) < **n)
        .map(|(line, _)| line)
        .collect();
    let unexpected: Vec<&&str> = got
        .iter()
        .filter(|(line, n)| wanted.get(*line).copied().unwrap_or(0) < **n)
        .map(|(line, _)| line)
        .collect();
    let summaries: Vec<String> = outputs
        .iter()
        .map(|output| {
            stderr(output)
                .lines()
                .filter(|l| l.contains(" results written"))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    panic!(
        "{} results, {} expected; {} missing, first {:?}; {} unexpected, first {:?}; summaries: {summaries:#?}",
        results.len(),
        expected.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)],
    );
}

/// "N results written" of a process's summary.
fn results_written(output: &Output) -> u64 {
    let log = stderr(output);
    let line = log
        .lines()
        .find(|l| l.contains(" results written"))
        .unwrap_or_else(|| panic!("no summary: {log}"));
    line.split("; ")
        .find_map(|part| part.split_once(" results written"))
        .map(|(count, _)| count.replace(',', ""))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// The repartition topic's low watermarks, and `group`'s committed positions on it.
fn purged(topic: &str, group: &str) -> (Vec<i64>, Vec<i64>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()
        .unwrap();
    let committed = committed(group, topic, PARTITIONS);
    (0..PARTITIONS)
        .map(|partition| {
            let (low, _) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            (low, committed.get(&partition).copied().unwrap_or(-1))
        })
        .unzip()
}

fn finish(child: Child, what: &str) -> Output {
    let output = wait_with_timeout(child, Duration::from_secs(180));
    assert_eq!(output.status.code(), Some(0), "{what}: {}", stderr(&output));
    output
}

#[test]
fn three_processes_of_two_workers_write_the_results_of_one_file_run() {
    let reaper = Reaper::default();
    let job = job("shuffle", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let expected = feed_and_reference(&job, 60_000, dir.path());
    assert!(expected.len() > 10_000, "{} results", expected.len());
    let children: Vec<Child> = (0..3)
        .map(|_| reaper.watch(process(&job, &["--bounded"]).spawn().unwrap()))
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .enumerate()
        .map(|(i, child)| finish(child, &format!("process {i}")))
        .collect();
    // The repartition topic is the job's, with the input's partition count, and it keeps
    // nothing below the second stage's committed positions.
    let repartition = format!("{}-repartition", job.name);
    assert_eq!(partition_count(&repartition), PARTITIONS);
    let (low, committed) = purged(&repartition, &format!("{}-aggregate", job.name));
    assert!(committed.iter().all(|&c| c > 0), "{committed:?}");
    assert_eq!(low, committed, "purged below the committed positions");
    let written: Vec<u64> = outputs.iter().map(results_written).collect();
    eprintln!("results written per process: {written:?}");
    assert_eq!(
        written.iter().sum::<u64>(),
        expected.len() as u64,
        "each result written by one process, once"
    );
    assert_same_results(&results(&job), &expected, &outputs);
}

#[test]
fn exactly_once_with_one_process_killed_and_restarted_writes_each_result_once() {
    let reaper = Reaper::default();
    let job = job("shuffle-eos", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let expected = feed_and_reference(&job, 400_000, dir.path());
    let eos = |instance: &str| {
        let mut command = process(
            &job,
            &[
                "--bounded",
                "--processing-guarantee",
                "exactly-once",
                "--instance-id",
                instance,
                "--state-dir",
            ],
        );
        command.arg(dir.path().join("state"));
        command
    };
    let mut children: Vec<Child> = ["a", "b", "c"]
        .iter()
        .map(|instance| reaper.watch(eos(instance).spawn().unwrap()))
        .collect();
    // Killed once a tenth of the results are written (asked of the output's end offsets,
    // which reading the results back would take seconds to say), well before the end.
    let started = Instant::now();
    loop {
        let written = end_offsets(BOOTSTRAP, &job.output, PARTITIONS);
        if written >= expected.len() as i64 / 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no results after 120 s ({written})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = children.remove(1);
    signal(&b, "KILL");
    let _ = wait_with_timeout(b, Duration::from_secs(10));
    // Some windows were committed before the kill, and b's share of the rest waits for it.
    let at_kill = read_topic(BOOTSTRAP, &job.output, PARTITIONS).len();
    assert!(
        at_kill > 0 && at_kill < expected.len(),
        "the kill came before any commit or after the end ({at_kill} of {})",
        expected.len()
    );
    // Down past the idle timeout (10 s): its input partitions' last marks must still hold
    // the watermark (they said they were busy, not idle), or the others would fire its
    // windows without its events and dead-letter them as late when it comes back.
    std::thread::sleep(Duration::from_secs(12));
    // Restarted under its instance id: it fences the dead one's transactions and takes
    // its place in both groups.
    children.push(reaper.watch(eos("b").spawn().unwrap()));
    let outputs: Vec<Output> = children
        .into_iter()
        .enumerate()
        .map(|(i, child)| finish(child, &format!("process {i}")))
        .collect();
    assert_same_results(&results(&job), &expected, &outputs);
}
