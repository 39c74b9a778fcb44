//! Helpers shared by the integration tests: running the binaries and reading topics back.
#![allow(dead_code)]

pub mod broker;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use streamkit::pipeline::dead_letter;

pub fn datagen() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_datagen"));
    // Tests set every address explicitly; none may come from the developer's shell.
    command
        .env_remove("BOOTSTRAP_SERVERS")
        .env_remove("TOPIC_NAME")
        .env_remove("RUST_LOG");
    command
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// A null value (tombstone), as opposed to an empty one.
    pub value_is_null: bool,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Reads every partition of `topic` from the beginning to its end, as a `read_committed`
/// consumer (librdkafka's default) sees it.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Record> {
    read_topic_as(bootstrap, topic, partitions, "read_committed")
}

/// How many records `topic`'s first `partitions` partitions hold (their high watermarks,
/// summed; on a transactional topic, open transactions and their markers count too): cheap
/// enough to ask every 50 ms, where reading the records back takes seconds, so that a test
/// that kills a job once it has written enough catches it early in its run.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    (0..partitions)
        .filter_map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .ok()
        })
        .map(|(_, high)| high)
        .sum()
}

/// As [`read_topic`], with `isolation` (`read_committed` or `read_uncommitted`).
pub fn read_topic_as(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", isolation)
        .set("group.id", "streamkit-tests")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        // tansu holds each fetch for the full wait; other brokers do not mind.
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end: HashMap<i32, bool> = (0..partitions).map(|p| (p, false)).collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.values().any(|&done| !done) {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                use rdkafka::message::Headers;
                at_end.insert(message.partition(), false);
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().unwrap_or_default().to_vec(),
                    value: message.payload().unwrap_or_default().to_vec(),
                    value_is_null: message.payload().is_none(),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p, true);
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))) => {}
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
        }
    }
    records
}

/// The summary line datagen prints on stderr, parsed: (events, delivery failures).
pub fn summary_counts(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains(" events, ") && l.contains("delivery failures"))
        .unwrap_or_else(|| panic!("no summary in stderr:\n{stderr}"));
    // The digits (and thousands commas) at the start of `text`.
    let number = |text: &str| {
        let digits: String = text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().unwrap()
    };
    let events = number(
        line.trim_start_matches("datagen: ")
            .split(' ')
            .next()
            .unwrap(),
    );
    let failures = number(
        line.split("delivery failures: ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap(),
    );
    (events, failures)
}

/// A record to produce: key and value, `None` being a null.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `records` to `topic` and returns where each landed.
pub fn produce(bootstrap: &str, topic: &str, records: &[RawRecord]) -> Vec<(i32, i64)> {
    produce_with_headers(bootstrap, topic, records, &[])
}

/// As [`produce`], every record carrying `headers`.
pub fn produce_with_headers(
    bootstrap: &str,
    topic: &str,
    records: &[RawRecord],
    headers: &[(&str, &str)],
) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // Room for the tests' oversized records (default 1,000,000).
        .set("message.max.bytes", "20000000")
        .create()
        .expect("producer");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deliveries: Vec<_> = records
            .iter()
            .map(|(key, value)| {
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
                if let Some(key) = key {
                    record = record.key(key.as_slice());
                }
                if let Some(value) = value {
                    record = record.payload(value.as_slice());
                }
                if !headers.is_empty() {
                    let owned = headers
                        .iter()
                        .fold(OwnedHeaders::new(), |all, (key, value)| {
                            all.insert(Header {
                                key,
                                value: Some(*value),
                            })
                        });
                    record = record.headers(owned);
                }
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue")
            })
            .collect();
        let mut positions = Vec::new();
        for delivery in futures::future::join_all(deliveries).await {
            let delivered = delivery.expect("delivery future").expect("delivered");
            positions.push((delivered.partition, delivered.offset));
        }
        positions
    })
}

/// The pipeline binary, with no address from the developer's shell.
pub fn pipeline() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    command
        .env_remove("BOOTSTRAP_SERVERS")
        .env_remove("TOPIC_NAME")
        .env_remove("RUST_LOG");
    // Parallel tests each get a dashboard on a port of their own.
    command.args(["--ui-addr", "127.0.0.1:0"]);
    command
}

/// A plain HTTP/1.0 GET (or another method): (status, body).
pub fn http(method: &str, addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Spawns `command` with piped stderr and waits for a line containing `marker` followed by
/// `http://ADDR`; returns the child and ADDR. The rest of stderr is drained in the background.
pub fn spawn_with_address(command: Command, marker: &str) -> (std::process::Child, String) {
    let (child, addr, _rest) = spawn_with_address_and_stderr(command, marker);
    (child, addr)
}

/// As [`spawn_with_address`], and the rest of the child's stderr (from the marker line
/// on, that line included), to be joined once the child has exited.
pub fn spawn_with_address_and_stderr(
    command: Command,
    marker: &str,
) -> (std::process::Child, String, std::thread::JoinHandle<String>) {
    let (child, addr, _line, rest) = spawn_with_address_line(command, marker);
    (child, addr, rest)
}

/// As [`spawn_with_address_and_stderr`], also returning the line with the address.
pub fn spawn_with_address_line(
    mut command: Command,
    marker: &str,
) -> (
    std::process::Child,
    String,
    String,
    std::thread::JoinHandle<String>,
) {
    use std::io::{BufRead, Read};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while Instant::now() < deadline {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains(marker)
            && let Some(rest) = line.split("http://").nth(1)
        {
            let addr = rest
                .split('/')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            // Keep draining stderr so the child never blocks on a full pipe.
            let first = line.clone();
            let rest = std::thread::spawn(move || {
                let mut rest = line;
                let _ = stderr.read_to_string(&mut rest);
                rest
            });
            return (child, addr, first, rest);
        }
        seen.push_str(&line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no {marker:?} line with an address within 30 s; stderr:\n{seen}");
}

/// Spawns a `pipeline` command with piped stderr and waits (up to `limit`) until its
/// workers own `partitions` distinct input partitions, from its "assigned" lines. Returns
/// the child and a thread draining the rest of its stderr (everything, for messages).
pub fn spawn_assigned(
    mut command: Command,
    partitions: usize,
    limit: Duration,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, Read};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let mut seen = String::new();
    let mut owned = std::collections::BTreeMap::new();
    while Instant::now() < deadline {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        // "worker 1: assigned [2]; now reads partitions {2} of website-visit"
        if let Some((worker, rest)) = line.split_once(": assigned [")
            && let Some(now) = rest.split("now reads partitions {").nth(1)
        {
            let worker = worker.rsplit(' ').next().unwrap_or_default().to_string();
            let set: Vec<String> = now
                .split('}')
                .next()
                .unwrap_or_default()
                .split(", ")
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            owned.insert(worker, set);
            if owned
                .values()
                .flatten()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= partitions
            {
                let rest = std::thread::spawn(move || {
                    let mut rest = seen;
                    let _ = stderr.read_to_string(&mut rest);
                    rest
                });
                return (child, rest);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the job did not own {partitions} partitions within {limit:?}; stderr:\n{seen}");
}

/// Sends `signal` (e.g. "TERM", "KILL") to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// Runs `command` with its output captured, killing it and failing after `limit`: for
/// runs that must end by themselves (a usage error must not hang).
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_timeout(child, limit)
}

/// Waits for `child` to exit, killing it and failing after `limit`.
pub fn wait_with_timeout(child: std::process::Child, limit: Duration) -> Output {
    let started = Instant::now();
    let id = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("process {id} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

/// As [`wait_with_timeout`], for a child whose stderr `log` drains: on timeout the panic
/// shows what the child had logged. Returns the output and the log.
pub fn wait_with_log(
    child: std::process::Child,
    limit: Duration,
    log: std::thread::JoinHandle<String>,
) -> (Output, String) {
    let id = child.id();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_with_timeout(child, limit)
    }));
    let log = log.join().unwrap_or_default();
    match waited {
        Ok(output) => (output, log),
        Err(_) => panic!("process {id} did not exit within {limit:?}; its log:\n{log}"),
    }
}

/// The first fixture event with its user agent padded to `size` bytes and its id set to
/// `id`: a valid record of about `size` bytes, for the size limits.
pub fn padded_event(size: usize, id: &str) -> Vec<u8> {
    let fixture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/website-visit.jsonl"),
    )
    .unwrap();
    let mut event: serde_json::Value =
        serde_json::from_str(fixture.lines().next().unwrap()).unwrap();
    event["user_agent"] = serde_json::Value::String("a".repeat(size));
    event["id"] = serde_json::Value::String(id.into());
    serde_json::to_vec(&event).unwrap()
}

/// Asserts that `record` is a dead letter of `kind` that stands, by reference, for the
/// record of `size` bytes at `position` of `input` (its payload was too large to carry).
pub fn assert_dead_letter_reference(
    record: &Record,
    input: &str,
    kind: &str,
    (partition, offset): (i32, i64),
    size: usize,
) {
    assert_eq!(
        record.headers[dead_letter::KIND],
        kind,
        "{:?}",
        record.headers
    );
    assert_eq!(record.headers[dead_letter::SOURCE_TOPIC], input);
    assert_eq!(
        record.headers[dead_letter::SOURCE_PARTITION],
        partition.to_string()
    );
    assert_eq!(
        record.headers[dead_letter::SOURCE_OFFSET],
        offset.to_string()
    );
    assert_eq!(record.headers[dead_letter::OMITTED_SIZE], size.to_string());
    let reference: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(reference["omitted_payload"]["topic"], input);
    assert_eq!(reference["omitted_payload"]["partition"], partition);
    assert_eq!(reference["omitted_payload"]["offset"], offset);
    assert_eq!(reference["omitted_payload"]["size"], size as u64);
}

/// The value of the first sample of `metric` whose line holds every label of `labels`, in
/// a Prometheus text page.
pub fn metric(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .find(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {metric} {labels:?} in:\n{text}"))
}

/// Kills the processes it was given when dropped: a failing test leaves none behind. It
/// signals each process itself (SIGKILL by pid), never a shell around it.
#[derive(Default)]
pub struct Reaper {
    pids: std::cell::RefCell<Vec<u32>>,
    kept: std::cell::RefCell<Vec<std::process::Child>>,
}

impl Reaper {
    /// Kills `child` on drop, unless the test has waited for it by then.
    pub fn watch(&self, child: std::process::Child) -> std::process::Child {
        self.pids.borrow_mut().push(child.id());
        child
    }

    /// Takes `child` (one the test does not wait for): killed and reaped on drop. Returns
    /// its pid.
    pub fn keep(&self, child: std::process::Child) -> u32 {
        let pid = child.id();
        self.kept.borrow_mut().push(child);
        pid
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.pids.borrow().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        for child in self.kept.borrow_mut().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `1234567` as `1,234,567`, as the binaries print counts.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
