//! End to end against Apache Kafka itself (`setup/start-env.sh --backend kafka`): what only
//! a real group coordinator and Kafka's own tools can answer. Run with
//! `cargo test --features e2e --test kafka_e2e -- --test-threads=1`, after the other
//! backends are stopped: each test starts Apache Kafka (idempotently) and fails if another
//! backend holds the port.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{
    BOOTSTRAP, create_topics, ever_assigned, finished, job, loss_and_duplicates, script,
};
use common::{signal, wait_with_timeout};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const PARTITIONS: i32 = 6;

fn apache_kafka() {
    script("start-env.sh", &["-k", "--backend", "kafka"]);
}

/// A member of `group` subscribed to `topic`, speaking `protocol` (`classic` or `consumer`).
fn member(group: &str, topic: &str, protocol: &str) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", BOOTSTRAP)
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("enable.auto.commit", "false");
    if protocol == "classic" {
        // With the consumer protocol the broker assigns; with the classic one, the members.
        config
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000");
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn assigned(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Polls every member until `done` holds for their assignments, or fails after 60 s.
fn poll_until(members: &[&BaseConsumer], what: &str, done: impl Fn(&[BTreeSet<i32>]) -> bool) {
    let started = Instant::now();
    loop {
        for member in members {
            // A message is not what these tests wait for: rebalances happen inside poll.
            let _ = member.poll(Duration::from_millis(50));
        }
        let assignments: Vec<_> = members.iter().map(|m| assigned(m)).collect();
        if done(&assignments) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: still {assignments:?} after 60 s"
        );
    }
}

fn members_share_the_partitions_then_one_takes_over(protocol: &str) {
    apache_kafka();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("group-{protocol}-{id}");
    create_topics(std::slice::from_ref(&topic), PARTITIONS);
    let group = format!("{topic}-group");
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();

    let first = member(&group, &topic, protocol);
    poll_until(&[&first], "the first member alone", |a| a[0] == all);
    let second = member(&group, &topic, protocol);
    poll_until(
        &[&first, &second],
        "two members sharing the partitions",
        |a| {
            !a[0].is_empty()
                && !a[1].is_empty()
                && a[0].is_disjoint(&a[1])
                && a[0].union(&a[1]).copied().collect::<BTreeSet<_>>() == all
        },
    );
    // The second member leaves the group (close sends LeaveGroup / a leave heartbeat).
    drop(second);
    poll_until(&[&first], "the remaining member taking over", |a| {
        a[0] == all
    });
}

#[test]
fn classic_group_members_share_partitions_and_rebalance_when_one_leaves() {
    members_share_the_partitions_then_one_takes_over("classic");
}

#[test]
fn kip_848_group_members_share_partitions_and_rebalance_when_one_leaves() {
    members_share_the_partitions_then_one_takes_over("consumer");
}

#[test]
fn kafka_tools_run_from_the_same_jars_against_the_local_cluster() {
    apache_kafka();
    let kafka_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("setup/kafka.sh");
    let listed = Command::new("bash")
        .arg(&kafka_sh)
        .args(["topics", "--list"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", common::stderr(&listed));
    let topics = common::stdout(&listed);
    for topic in ["website-visit", "website-out", "website-visit-dlq"] {
        assert!(topics.lines().any(|l| l == topic), "{topic} in:\n{topics}");
    }
    let unknown = Command::new("bash")
        .arg(&kafka_sh)
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(common::stderr(&unknown).contains("Unknown tool: frobnicate"));
    let status = common::stdout(&script("status-env.sh", &[]));
    assert!(status.contains("up: kafka, Apache Kafka 4."), "{status}");
}

#[test]
fn two_pipeline_processes_share_the_partitions_with_the_kip_848_protocol() {
    apache_kafka();
    let job = job("kip848", 6);
    let flags = [
        "--group-protocol",
        "consumer",
        "--checkpointing-interval",
        "500",
    ];
    let first = job.spawn(&flags);
    let second = job.spawn(&flags);
    // Both members get partitions from the broker (under KIP-848 the second one waits for
    // the first's heartbeat that gives them up, 5 s apart by default); then a backlog goes
    // through them.
    wait_for_members_with_partitions(&job.name, 2);
    let keys = job.feed(50_000, 51);
    job.wait_for_all(&keys, Duration::from_secs(90));
    signal(&first, "TERM");
    signal(&second, "TERM");
    let first = finished(first, "the first process");
    let second = finished(second, "the second process");
    assert_eq!(loss_and_duplicates(&keys, &job.output_counts()), (0, 0));
    let (a, b) = (ever_assigned(&first), ever_assigned(&second));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both processes own partitions:\n{}\n{}",
        common::stderr(&first),
        common::stderr(&second)
    );
    assert!(
        common::stderr(&first).contains("(consumer protocol)"),
        "{}",
        common::stderr(&first)
    );
}

/// Waits (up to 60 s) until `members` distinct members of `group` own partitions, as
/// Kafka's own `kafka-consumer-groups --describe` reports them.
fn wait_for_members_with_partitions(group: &str, members: usize) {
    let kafka_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("setup/kafka.sh");
    let started = Instant::now();
    loop {
        let described = Command::new("bash")
            .arg(&kafka_sh)
            .args([
                "consumer-groups",
                "--describe",
                "--members",
                "--group",
                group,
            ])
            .output()
            .unwrap();
        let text = common::stdout(&described);
        // Columns: GROUP CONSUMER-ID HOST CLIENT-ID #PARTITIONS ...
        let owning = text
            .lines()
            .filter(|line| line.starts_with(group))
            .filter(|line| {
                line.split_whitespace()
                    .nth(4)
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n > 0)
            })
            .count();
        if owning >= members {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{members} members of {group} with partitions: not after 60 s\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn x_group_protocol_consumer_means_the_same_as_the_flag() {
    apache_kafka();
    let job = job("xprotocol", 3);
    let keys = job.feed(1_000, 52);
    let run = job
        .process(&["--bounded", "-X", "group.protocol=consumer"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", common::stderr(&run));
    assert!(common::stderr(&run).contains("(consumer protocol)"));
    assert_eq!(loss_and_duplicates(&keys, &job.output_counts()), (0, 0));
}

/// The partitions the one worker of the job behind `addr` owns, once it owns some and they
/// have not changed for a second (a cooperative assignment can come in two rounds).
fn settled_partitions(addr: &str) -> Vec<serde_json::Value> {
    let owned = || {
        let (_, body) = common::http("GET", addr, "/api/job");
        let job: serde_json::Value = serde_json::from_str(&body).unwrap();
        job["members"][0]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let started = std::time::Instant::now();
    loop {
        let first = owned();
        std::thread::sleep(Duration::from_secs(1));
        if !first.is_empty() && owned() == first {
            return first;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no settled assignment after 60 s"
        );
    }
}

#[test]
fn a_static_member_restarted_within_its_session_gets_its_partitions_back() {
    apache_kafka();
    let job = job("static", 4);
    let flags = [
        "--group-instance-id",
        "node-a",
        "--session-timeout",
        "30000",
        "--checkpointing-interval",
        "300",
    ];
    // The other member joins first and leads the group: a static member that leads makes
    // Kafka rebalance when it rejoins, one that does not gets its assignment back.
    let other = job.spawn(&["--session-timeout", "30000"]);
    std::thread::sleep(Duration::from_secs(3));
    let (first, addr) = common::spawn_with_address(job.process(&flags), "dashboard at");
    let before = settled_partitions(&addr);
    signal(&first, "TERM");
    let first = wait_with_timeout(first, Duration::from_secs(30));
    assert_eq!(first.status.code(), Some(0));
    // A static member leaves no gap: its partitions wait for it (up to the session
    // timeout) instead of moving to the other member.
    let (again, addr) = common::spawn_with_address(job.process(&flags), "dashboard at");
    let after = settled_partitions(&addr);
    assert_eq!(
        after, before,
        "the same partitions, back without a rebalance"
    );
    let keys = job.feed(5_000, 53);
    job.wait_for_all(&keys, Duration::from_secs(60));
    signal(&again, "TERM");
    signal(&other, "TERM");
    let again = wait_with_timeout(again, Duration::from_secs(30));
    assert_eq!(again.status.code(), Some(0));
    let other = finished(other, "the other member");
    assert_eq!(
        common::stderr(&other).matches("assigned [").count(),
        1,
        "the other member got partitions once, when it joined, never the static member's:\n{}",
        common::stderr(&other)
    );
    assert_eq!(loss_and_duplicates(&keys, &job.output_counts()), (0, 0));
}

/// Issue 17's poison pills on the broker users run: a 1.5 MB valid record and a 5 MB
/// malformed one among 10,000 good ones. Every good record is written, both big ones are
/// dead-lettered (by reference: the dead-letter topic takes 1 MB), and the job exits 0. A
/// record of 1,020,083 bytes (the was 1,020,306), under the topics' 1,048,588, is
/// written: the producer's limit comes from the topics.
#[test]
fn big_records_are_dead_lettered_and_every_good_record_is_written() {
    apache_kafka();
    let job = job("poison", 3);
    common::broker::allow_records_of(&job.input, 10 << 20);
    let fits = common::padded_event(1_019_800, "fits");
    let too_large = common::padded_event(1_500_000, "too-large");
    let malformed = vec![b'{'; 5 << 20];
    let key = b"oversized".to_vec();
    let positions = common::produce(
        common::broker::BOOTSTRAP,
        &job.input,
        &[
            (Some(key.clone()), Some(too_large.clone())),
            (Some(key.clone()), Some(malformed.clone())),
            (Some(key.clone()), Some(fits.clone())),
        ],
    );
    let mut keys = job.feed(10_000, 17);
    let output = job.process(&["--bounded"]).output().unwrap();
    let err = common::stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    let written = job.output_counts();
    let fits_key = written
        .keys()
        .find(|k| k.contains("\"fits\""))
        .cloned()
        .unwrap_or_else(|| panic!("the 1,020,083-byte record was not written:\n{err}"));
    keys.insert(fits_key);
    assert_eq!(loss_and_duplicates(&keys, &written), (0, 0), "{err}");
    let dead = common::read_topic(common::broker::BOOTSTRAP, &job.dead, 3);
    assert_eq!(dead.len(), 2, "{err}");
    for (record, position, size, kind) in [
        (
            &dead[0],
            positions[0],
            too_large.len() + key.len(),
            "too_large",
        ),
        (
            &dead[1],
            positions[1],
            malformed.len() + key.len(),
            "not_json",
        ),
    ] {
        common::assert_dead_letter_reference(record, &job.input, kind, position, size);
    }
}

/// At least once, the output's limit lowered while the job runs: the broker refuses each
/// later output on delivery (the job's own check still holds the limit it started with).
/// Each one is dead-lettered by reference, naming its input position, in the read batch
/// of the output it replaces; the job commits past them, and stops with exit 0. Every
/// record is written or dead-lettered, once.
#[test]
fn outputs_refused_on_delivery_are_dead_lettered_by_reference_and_committed_past() {
    apache_kafka();
    let reaper = common::Reaper::default();
    let job = job("refused-later", 3);
    let first = job.feed(500, 27);
    let mut child = reaper.watch(job.spawn(&[]));
    // Drained as it runs: each refusal is a warning.
    let log = {
        let mut stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut log = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
            log
        })
    };
    let counts = job.wait_for_all(&first, Duration::from_secs(60));
    assert_eq!(loss_and_duplicates(&first, &counts), (0, 0));
    common::broker::allow_records_of(&job.output, 100);
    let later = job.feed(500, 28);
    let input = common::read_topic(BOOTSTRAP, &job.input, 3);
    let mut ends = std::collections::BTreeMap::new();
    for record in &input {
        let end = ends.entry(record.partition).or_insert(0);
        *end = (*end).max(record.offset + 1);
    }
    // Each later record's position, with the bytes of its key and value.
    let sizes: std::collections::BTreeMap<(i32, i64), usize> = input
        .into_iter()
        .filter(|r| later.contains(&String::from_utf8_lossy(&r.key).into_owned()))
        .map(|r| ((r.partition, r.offset), r.key.len() + r.value.len()))
        .collect();
    assert_eq!(sizes.len(), later.len());
    let started = Instant::now();
    while common::broker::committed(&job.name, &job.input, 3) != ends {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the group's position never reached the input's end {ends:?}: {:?}",
            common::broker::committed(&job.name, &job.input, 3)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    signal(&child, "TERM");
    let (output, log) = common::wait_with_log(child, Duration::from_secs(60), log);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert_eq!(job.output_counts(), counts, "nothing more written: {log}");
    let dead = common::read_topic(BOOTSTRAP, &job.dead, 3);
    let mut positions = BTreeSet::new();
    for record in &dead {
        let position = (
            record.headers[streamkit::pipeline::dead_letter::SOURCE_PARTITION]
                .parse()
                .expect("a partition"),
            record.headers[streamkit::pipeline::dead_letter::SOURCE_OFFSET]
                .parse()
                .expect("an offset"),
        );
        let size = *sizes
            .get(&position)
            .unwrap_or_else(|| panic!("a dead letter for {position:?}, not a later record"));
        common::assert_dead_letter_reference(record, &job.input, "too_large", position, size);
        assert!(
            positions.insert(position),
            "{position:?} dead-lettered twice"
        );
    }
    assert_eq!(
        positions.len(),
        later.len(),
        "every later record dead-lettered: {log}"
    );
}
