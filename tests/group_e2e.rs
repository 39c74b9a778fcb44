//! Several `pipeline` processes sharing one job through the broker's consumer-group
//! protocol, against the real broker of `setup/start-env.sh` (any backend with a group
//! coordinator; CI runs it on Apache Kafka). Every input record has a unique key, so each
//! can be traced: lost ones are missing from the output, duplicates appear twice.
//! Run with `cargo test --features e2e --test group_e2e -- --test-threads=1`.

mod common;

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use common::broker::{BOOTSTRAP, ever_assigned, finished, job, keys_in, loss_and_duplicates};
use common::{datagen, signal, stderr, wait_with_timeout};

/// datagen streaming into the job's input at `rate` for `duration`, on a thread: unique
/// keys (a 1 ms simulated clock from `start`).
fn feed_in_background(
    job: &common::broker::Job,
    seed: u64,
    start: &str,
    rate: &str,
    duration: &str,
) -> std::thread::JoinHandle<Output> {
    let mut command = datagen();
    command
        .args(["-s", "streaming", "-q", "--topic", &job.input])
        .args(["--seed", &seed.to_string(), "--start-time", start])
        .args([
            "--time-step-ms",
            "1",
            "--rate",
            rate,
            "--duration",
            duration,
        ]);
    std::thread::spawn(move || command.output().unwrap())
}

fn processes_drain_one_backlog_together(processes: usize) {
    let job = job(&format!("drain{processes}"), 6);
    let keys = job.feed(60_000, 11);
    let children: Vec<Child> = (0..processes).map(|_| job.spawn(&["--bounded"])).collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .enumerate()
        .map(|(i, child)| finished(child, &format!("process {i}")))
        .collect();
    let counts = job.output_counts();
    assert_eq!(
        loss_and_duplicates(&keys, &counts),
        (0, 0),
        "{processes} --bounded processes write each record exactly once"
    );
    // The summaries add up to the input: no process read what another had written.
    let reads: Vec<u64> = outputs
        .iter()
        .map(|o| {
            let err = stderr(o);
            let line = err
                .lines()
                .find(|l| l.contains(": read ") && l.contains(" = written "))
                .unwrap_or_else(|| panic!("{err}"));
            line.split(": read ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .replace(',', "")
                .parse::<u64>()
                .unwrap()
        })
        .collect();
    eprintln!("{processes} processes read {reads:?}");
    assert_eq!(reads.iter().sum::<u64>(), 60_000);
}

#[test]
fn two_processes_drain_one_backlog_exactly_once() {
    processes_drain_one_backlog_together(2);
}

#[test]
fn three_processes_drain_one_backlog_exactly_once() {
    processes_drain_one_backlog_together(3);
}

#[test]
fn a_process_joins_and_another_leaves_on_sigterm_losing_and_duplicating_nothing() {
    let job = job("scale", 6);
    let mut keys = job.feed(40_000, 21);
    let first = job.spawn(&["--checkpointing-interval", "500"]);
    // More input keeps arriving while the group changes.
    let feeder = feed_in_background(&job, 22, "2025-01-01T00:00:00Z", "5000", "9s");
    std::thread::sleep(Duration::from_secs(3));
    let second = job.spawn(&["--checkpointing-interval", "500"]);
    std::thread::sleep(Duration::from_secs(4));
    signal(&first, "TERM");
    let first = finished(first, "the first process, stopped with SIGTERM");
    let fed = feeder.join().unwrap();
    assert!(fed.status.success(), "{}", stderr(&fed));
    keys = keys.union(&keys_in(&job.input).1).cloned().collect();
    let counts = job.wait_for_all(&keys, Duration::from_secs(90));
    signal(&second, "TERM");
    let second = finished(second, "the second process");
    assert_eq!(
        loss_and_duplicates(&keys, &job.output_counts()),
        (0, 0),
        "a clean scale-up and scale-down loses and duplicates nothing ({} records); the first process: {}; the second: {}",
        counts.len(),
        stderr(&first),
        stderr(&second)
    );
    assert!(!ever_assigned(&first).is_empty(), "{}", stderr(&first));
    assert!(
        !ever_assigned(&second).is_empty(),
        "the joining process got partitions: {}",
        stderr(&second)
    );
}

#[test]
fn a_killed_process_loses_nothing_and_its_duplicates_stay_within_its_in_flight_bound() {
    let job = job("crash", 6);
    // A short session, so that the survivors take the killed process's partitions soon.
    let flags = [
        "--checkpointing-interval",
        "200",
        "--session-timeout",
        "6000",
    ];
    let processes: Vec<Child> = (0..3).map(|_| job.spawn(&flags)).collect();
    let feeder = feed_in_background(&job, 31, "2025-02-01T00:00:00Z", "10000", "10s");
    std::thread::sleep(Duration::from_secs(5));
    let mut processes = processes.into_iter();
    let victim = processes.next().unwrap();
    signal(&victim, "KILL");
    let _ = wait_with_timeout(victim, Duration::from_secs(5));
    let fed = feeder.join().unwrap();
    assert!(fed.status.success(), "{}", stderr(&fed));
    let keys = keys_in(&job.input).1;
    job.wait_for_all(&keys, Duration::from_secs(120));
    for (i, survivor) in processes.enumerate() {
        signal(&survivor, "TERM");
        finished(survivor, &format!("survivor {i}"));
    }
    let (lost, duplicated) = loss_and_duplicates(&keys, &job.output_counts());
    eprintln!(
        "kill -9 of one of three processes: {} records, {lost} lost, {duplicated} duplicated",
        keys.len()
    );
    assert_eq!(lost, 0, "a kill -9 loses nothing");
    // What the killed process had in flight (at most the job's budget) or delivered since
    // its last commit (200 ms at a third of 10,000 records/s).
    let bound = streamkit::pipeline::IN_FLIGHT_BUDGET + 2_000;
    assert!(
        duplicated <= bound,
        "{duplicated} duplicates, more than the killed process could have had in flight ({bound})"
    );
}

#[test]
fn partitions_added_while_the_job_runs_are_read() {
    let job = job("grow", 2);
    let keys = job.feed(2_000, 41);
    // Metadata every second instead of every 10 s, to keep the test short.
    let child = job.spawn(&["-X", "topic.metadata.refresh.interval.ms=1000"]);
    job.wait_for_all(&keys, Duration::from_secs(60));

    let (admin, runtime) = common::broker::admin();
    common::broker::admin_ok(
        "add partitions to",
        runtime.block_on(admin.create_partitions(
            &[rdkafka::admin::NewPartitions::new(&job.input, 4)],
            &rdkafka::admin::AdminOptions::new(),
        )),
    );
    // Records written straight into the new partitions 2 and 3.
    let mut records = Vec::new();
    for i in 0..200 {
        records.push((
            Some(format!("new-{i}").into_bytes()),
            Some(
                std::fs::read_to_string(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("fixtures/website-visit.jsonl"),
                )
                .unwrap()
                .lines()
                .nth(i)
                .unwrap()
                .as_bytes()
                .to_vec(),
            ),
        ));
    }
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()
        .unwrap();
    for (i, (key, value)) in records.iter().enumerate() {
        let record = rdkafka::producer::BaseRecord::to(&job.input)
            .partition(2 + (i % 2) as i32)
            .key(key.as_deref().unwrap())
            .payload(value.as_deref().unwrap());
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    let started = Instant::now();
    loop {
        let records = common::read_topic(BOOTSTRAP, &job.output, 2);
        // The output topic has 2 partitions; the values of the new records carry the
        // fixture's first 200 ids.
        let written = records.len();
        if written >= keys.len() + 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "records of the added partitions not written after 60 s ({written} of {})",
            keys.len() + 200
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    signal(&child, "TERM");
    let output = finished(child, "the job");
    let assigned = ever_assigned(&output);
    assert!(
        assigned.contains("2") && assigned.contains("3"),
        "the new partitions were assigned: {}",
        stderr(&output)
    );
}
