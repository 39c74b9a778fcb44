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

use common::broker::{BOOTSTRAP, Job, committed, job};
use common::{Reaper, read_topic, spawn_assigned, wait_with_log};
use streamkit::pipeline::dead_letter;

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
/// A windowed job's second stage (issue 27) drains too: its group's committed positions on
/// the repartition topic reach that topic's ends (which the first stage's watermark marks
/// keep moving, so the ends are read first).
fn wait_for_drained(job: &Job, partitions: i32, limit: Duration) {
    let started = Instant::now();
    let input_ends = ends(&job.input, partitions);
    loop {
        let at = committed(&job.name, &job.input, partitions);
        if at == input_ends {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the committed positions {at:?} did not reach the ends {input_ends:?} in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let repartition = format!("{}-repartition", job.name);
    let group = format!("{}-aggregate", job.name);
    loop {
        let ends = ends(&repartition, partitions);
        let at = committed(&group, &repartition, partitions);
        if ends
            .iter()
            .all(|(p, end)| *end == 0 || at.get(p).is_some_and(|at| at >= end))
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "the second stage's committed positions {at:?} did not reach the ends {ends:?} in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Dead letters by their `error.kind` header.
fn dead_letter_kinds(job: &Job, partitions: i32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for record in read_topic(BOOTSTRAP, &job.dead, partitions) {
        let kind = record
            .headers
            .get(dead_letter::KIND)
            .cloned()
            .unwrap_or_default();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The page views of every window result in `job`'s output.
fn page_views(job: &Job, partitions: i32) -> u64 {
    read_topic(BOOTSTRAP, &job.output, partitions)
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["page_views"]
                .as_u64()
                .unwrap()
        })
        .sum()
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
    let reason = &future[0].headers[dead_letter::ERROR];
    assert!(
        reason.contains("9999-12-31T23:59:59") && reason.contains("1h"),
        "{reason}"
    );
    let counted = page_views(&job, 1);
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
    let counted = page_views(&job, 3);
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

/// `pipeline --use-own` on `job`'s topics with `ui` as its dashboard address and `extra`
/// flags (not [`common::pipeline`], which sets a loopback `--ui-addr` of its own), and the
/// dashboard's port.
fn dashboard(reaper: &Reaper, job: &Job, ui: &str, extra: &[&str]) -> (String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    command
        .env_remove("BOOTSTRAP_SERVERS")
        .env_remove("RUST_LOG")
        .args(["--use-own", "--job-name", &job.name, "--parallelism", "1"])
        .args(common::broker::topic_args(
            &job.input,
            &job.output,
            &job.dead,
        ))
        .args(["--ui-addr", ui])
        .args(extra);
    let (child, addr, line, _rest) = common::spawn_with_address_line(command, "dashboard at");
    reaper.keep(child);
    let port = addr.rsplit(':').next().unwrap().to_string();
    (format!("127.0.0.1:{port}"), line)
}

fn status(addr: &str, path: &str) -> u16 {
    common::http("GET", addr, path).0
}

#[test]
fn the_topic_browser_hides_internal_topics_and_is_off_on_a_public_address() {
    let job = job("browser-gates", 1);
    let reaper = Reaper::default();
    let offsets = "/api/topics/__consumer_offsets/partitions/0/messages?limit=1";
    let transactions = "/api/topics/__transaction_state/partitions/0/messages?limit=1";

    // Loopback, by default: the browser is on, and internal topics do not exist for it.
    let (addr, _) = dashboard(&reaper, &job, "127.0.0.1:0", &[]);
    let (code, list) = common::http("GET", &addr, "/api/topics");
    assert_eq!(code, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&job.input.as_str()), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("__")), "{names:?}");
    assert_eq!(status(&addr, offsets), 404);
    assert_eq!(status(&addr, transactions), 404);
    let own = format!("/api/topics/{}/partitions/0/messages", job.input);
    assert_eq!(status(&addr, &own), 200);

    // --browse-internal-topics: readable.
    let (addr, _) = dashboard(&reaper, &job, "127.0.0.1:0", &["--browse-internal-topics"]);
    assert_eq!(status(&addr, offsets), 200);

    // --no-topic-browser: the browser is gone, the dashboard and /metrics stay.
    let (addr, _) = dashboard(&reaper, &job, "127.0.0.1:0", &["--no-topic-browser"]);
    assert_eq!(status(&addr, "/topics"), 404);
    assert_eq!(status(&addr, "/api/topics"), 404);
    assert_eq!(status(&addr, &own), 404);
    assert_eq!(status(&addr, "/api/job"), 200);
    assert_eq!(status(&addr, "/metrics"), 200);
    assert_eq!(status(&addr, "/"), 200);

    // Every address: off unless asked for, and the start-up line says so.
    let (addr, line) = dashboard(&reaper, &job, "0.0.0.0:0", &[]);
    assert!(
        line.contains("topic browser off") && line.contains("--topic-browser"),
        "{line}"
    );
    assert_eq!(status(&addr, "/api/topics"), 404);
    assert_eq!(status(&addr, &own), 404);
    assert_eq!(status(&addr, "/metrics"), 200);
    let (addr, line) = dashboard(&reaper, &job, "0.0.0.0:0", &["--topic-browser"]);
    assert!(line.contains("topics at /topics"), "{line}");
    assert_eq!(status(&addr, &own), 200);
}

#[test]
fn the_topic_browser_shows_the_newest_messages_under_its_time_cap_and_marks_every_cut() {
    let job = job("browser-newest", 1);
    common::broker::allow_records_of(&job.input, 10_000_000);
    let big = vec![b'x'; 9_000_000];
    let records: Vec<common::RawRecord> = (0..20).map(|_| (None, Some(big.clone()))).collect();
    common::produce(BOOTSTRAP, &job.input, &records);
    // A record whose header name (200 KB), header value and key pass the text cap.
    let name = "h".repeat(200_000);
    let value = "v".repeat(5_000);
    common::produce_with_headers(
        BOOTSTRAP,
        &job.input,
        &[(Some(vec![b'k'; 5_000]), Some(b"{}".to_vec()))],
        &[(name.as_str(), value.as_str())],
    );
    let reaper = Reaper::default();
    let (addr, _) = dashboard(&reaper, &job, "127.0.0.1:0", &[]);
    let (code, page) = common::http(
        "GET",
        &addr,
        &format!("/api/topics/{}/partitions/0/messages?limit=500", job.input),
    );
    assert_eq!(code, 200, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let offsets: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_i64().unwrap())
        .collect();
    eprintln!(
        "shown offsets {offsets:?}, stopped by {}",
        page["stopped_by"]
    );
    assert_eq!(
        offsets.last(),
        Some(&20),
        "the newest is shown: {offsets:?}"
    );
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap before the end: {offsets:?}"
    );
    if offsets.len() < 21 {
        assert_eq!(page["stopped_by"], "time cap", "{offsets:?}");
    }
    let marked = &page["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(marked["key_truncated"], true, "{marked}");
    assert_eq!(marked["key"].as_str().unwrap().len(), 1024);
    let header = &marked["headers"][0];
    assert_eq!(header["key_truncated"], true);
    assert_eq!(header["key"].as_str().unwrap().len(), 1024);
    assert_eq!(header["value_truncated"], true);
    if offsets.len() > 1 {
        let big = &page["messages"][offsets.len() - 2];
        assert_eq!(big["value_truncated"], true);
        assert_eq!(big["key_truncated"], false);
    }
}

/// `/api/job` of the dashboard at `addr`, or `None` once it is gone.
fn api_job(addr: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /api/job HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
}

/// Whether process `pid` has not exited yet (without reaping it).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|status| !status.contains("State:\tZ"))
}

fn child_running(child: &std::process::Child) -> bool {
    running(child.id())
}

/// datagen writing into `job`'s input at `rate` for `duration`, in the background.
fn load(reaper: &Reaper, job: &Job, rate: &str, duration: &str) {
    reaper.keep(
        common::datagen()
            .args(["-s", "streaming", "-q", "--topic", &job.input])
            .args(["--rate", rate, "--duration", duration])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
}

/// A job under load (datagen in the background) whose `role` topic is deleted once output
/// flows: the job must stop within 30 s with exit 1, naming the topic, showing what is
/// undelivered until then, and committing nothing past what was delivered.
fn topic_deleted_under_load(role: &str, guarantee: &str) {
    let job = job(&format!("deleted-{role}"), 3);
    let reaper = Reaper::default();
    let command = job.process(&[
        "--checkpointing-interval",
        "500",
        "--processing-guarantee",
        guarantee,
        "--instance-id",
        "deleted",
    ]);
    let (child, addr, log) = common::spawn_with_address_and_stderr(command, "dashboard at");
    let child = reaper.watch(child);
    load(&reaper, &job, "2000", "40s");
    common::broker::wait_for_output(&job.output);
    let topic = match role {
        "input" => &job.input,
        "output" => &job.output,
        _ => &job.dead,
    };
    common::broker::delete_topic(topic);
    let deleted = Instant::now();
    let mut last = None;
    let mut undelivered = 0;
    while child_running(&child) && deleted.elapsed() < Duration::from_secs(40) {
        if let Some(job) = api_job(&addr) {
            undelivered = undelivered.max(job["job"]["undelivered"].as_u64().unwrap_or(0));
            last = Some(job);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = deleted.elapsed();
    let (output, log) = wait_with_log(child, Duration::from_secs(10), log);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        took < Duration::from_secs(30),
        "stopped after {took:?}: {log}"
    );
    assert!(
        log.contains(&format!("the {role} topic {topic} was deleted")),
        "{log}"
    );
    if role == "output" {
        assert!(
            undelivered > 0,
            "/api/job showed nothing undelivered: {last:?}"
        );
        // Nothing read is committed past what was delivered.
        let last = last.unwrap();
        let done = last["totals"]["written"].as_u64().unwrap()
            + last["totals"]["dead_lettered"].as_u64().unwrap();
        let committed: i64 = committed(&job.name, &job.input, 3).values().sum();
        assert!(
            committed as u64 <= done,
            "committed {committed} positions, but only {done} records were delivered"
        );
    }
}

#[test]
fn a_deleted_output_topic_stops_the_job_naming_it() {
    topic_deleted_under_load("output", "at-least-once");
}

#[test]
fn a_deleted_dead_letter_topic_stops_the_job_naming_it() {
    topic_deleted_under_load("dead-letter", "at-least-once");
}

#[test]
fn a_deleted_input_topic_stops_the_job_naming_it() {
    topic_deleted_under_load("input", "at-least-once");
}

#[test]
fn a_deleted_output_topic_stops_an_exactly_once_job_naming_it() {
    topic_deleted_under_load("output", "exactly-once");
}

/// The instance id a process logged (`transactional ids <job>-<instance>-N`).
fn logged_instance(log: &str, job: &Job) -> String {
    let prefix = format!("transactional ids {}-", job.name);
    let rest = log.split(&prefix).nth(1).unwrap_or_else(|| panic!("{log}"));
    rest[..rest.find("-N").unwrap()].to_string()
}

#[test]
fn two_plain_exactly_once_processes_on_one_host_share_the_job() {
    let job = job("eos-slots", 6);
    let reaper = Reaper::default();
    let eos = ["--processing-guarantee", "exactly-once"];
    let (a, a_log) = spawn_assigned(job.process(&eos), 6, Duration::from_secs(100));
    let a = reaper.watch(a);
    let (b, b_log) = spawn_assigned(job.process(&eos), 1, Duration::from_secs(100));
    let b = reaper.watch(b);
    let expected = job.feed(20_000, 5);
    let counts = job.wait_for_all(&expected, Duration::from_secs(180));
    assert!(child_running(&a) && child_running(&b), "both stay up");
    common::signal(&a, "TERM");
    common::signal(&b, "TERM");
    let (a_out, a_log) = wait_with_log(a, Duration::from_secs(60), a_log);
    let (b_out, b_log) = wait_with_log(b, Duration::from_secs(60), b_log);
    assert_eq!(a_out.status.code(), Some(0), "{a_log}");
    assert_eq!(b_out.status.code(), Some(0), "{b_log}");
    let (a_id, b_id) = (logged_instance(&a_log, &job), logged_instance(&b_log, &job));
    assert_ne!(a_id, b_id, "distinct instance ids");
    let counts = {
        // Both committed their last transactions on the way out: count again.
        let _ = counts;
        job.output_counts()
    };
    assert_eq!(
        common::broker::loss_and_duplicates(&expected, &counts),
        (0, 0),
        "read_committed: lost, duplicated"
    );
    for (name, log) in [("first", &a_log), ("second", &b_log)] {
        assert!(
            log.contains("assigned [") && !log.contains("fenced"),
            "the {name} process owned partitions and was never fenced: {log}"
        );
    }
}

#[test]
fn a_named_instance_id_in_use_on_this_host_is_refused_naming_its_process() {
    let job = job("eos-named", 3);
    let reaper = Reaper::default();
    let named = [
        "--processing-guarantee",
        "exactly-once",
        "--instance-id",
        "x",
    ];
    let (a, a_log) = spawn_assigned(job.process(&named), 3, Duration::from_secs(100));
    let a = reaper.watch(a);
    let second = common::output_within(&mut job.process(&named), Duration::from_secs(30));
    assert_eq!(second.status.code(), Some(1), "{}", common::stderr(&second));
    let err = common::stderr(&second);
    assert!(
        err.contains("--instance-id x is in use by process") && err.contains(&a.id().to_string()),
        "{err}"
    );
    assert!(child_running(&a), "the first one is untouched");
    stop(a, a_log);
}

#[test]
fn two_hosts_under_one_instance_id_stop_the_fenced_process_with_a_reason() {
    // Two state folders stand for two hosts: the locks do not see each other, the broker
    // does.
    let job = job("eos-hosts", 3);
    let reaper = Reaper::default();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let process = |dir: &tempfile::TempDir| {
        job.process(&[
            "--processing-guarantee",
            "exactly-once",
            "--instance-id",
            "shared",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ])
    };
    let (a, a_log) = spawn_assigned(process(&dir_a), 3, Duration::from_secs(100));
    let a = reaper.watch(a);
    load(&reaper, &job, "500", "60s");
    common::broker::wait_for_output(&job.output);
    let b = reaper.keep(
        process(&dir_b)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (a_out, a_log) = wait_with_log(a, Duration::from_secs(60), a_log);
    assert_eq!(a_out.status.code(), Some(1), "{a_log}");
    assert!(
        a_log.contains("another process runs under instance id shared"),
        "{a_log}"
    );
    assert!(running(b), "the newer process stays up");
}

#[test]
fn traffic_agg_whose_output_refuses_every_result_dead_letters_each_and_exits_0() {
    for (name, guarantee) in [
        ("agg-refused", "at-least-once"),
        ("agg-refused-eos", "exactly-once"),
    ] {
        let job = job(name, 3);
        // Smaller than any window result: the broker refuses each one.
        common::broker::allow_records_of(&job.output, 10);
        job.feed(5_000, 23);
        let output = common::output_within(
            traffic_agg(&job).args([
                "--bounded",
                "--processing-guarantee",
                guarantee,
                "--instance-id",
                "a",
            ]),
            Duration::from_secs(120),
        );
        let log = common::stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{guarantee}: {log}");
        assert!(read_topic(BOOTSTRAP, &job.output, 3).is_empty());
        let dead = read_topic(BOOTSTRAP, &job.dead, 3);
        assert!(dead.len() > 3, "{guarantee}: {log}");
        let mut page_views = 0;
        let mut keys = std::collections::BTreeSet::new();
        for record in &dead {
            assert_eq!(
                record.headers[dead_letter::KIND],
                "too_large",
                "{guarantee}: {:?}",
                record.headers
            );
            assert!(
                record.headers[dead_letter::ERROR].contains(&job.output),
                "{guarantee}: {:?}",
                record.headers
            );
            let result: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
            page_views += result["page_views"].as_u64().unwrap();
            keys.insert(record.key.clone());
        }
        assert_eq!(
            keys.len(),
            dead.len(),
            "{guarantee}: a result dead-lettered twice"
        );
        assert_eq!(
            page_views, 5_000,
            "{guarantee}: every event counted in a dead-lettered result"
        );
    }
}
