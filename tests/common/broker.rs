//! Helpers for the tests against the real broker of `setup/start-env.sh`: the scripts,
//! fresh topics per test, feeding and reading them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{datagen, pipeline, read_topic, stderr, wait_with_timeout};

pub const BOOTSTRAP: &str = "localhost:29092";

/// The backend `setup/start-env.sh` recorded: `kafka`, `tansu` or `docker`.
pub fn backend() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".state/kafka/backend"))
        .map(|b| b.trim().to_string())
        .unwrap_or_default()
}

/// tansu holds every fetch for fetch.wait.max.ms, so its consumers get a low value, as the
/// scripts' hints say; Apache Kafka keeps librdkafka's default.
pub fn fetch_args() -> Vec<&'static str> {
    if backend() == "tansu" {
        vec!["-X", "fetch.wait.max.ms=5"]
    } else {
        Vec::new()
    }
}

pub fn script(name: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("setup")
        .join(name);
    let output = Command::new("bash").arg(path).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "setup/{name} {args:?} failed:\n{}{}",
        super::stdout(&output),
        stderr(&output)
    );
    output
}

/// The local cluster, started if needed, and three fresh topics: (input, output, dead letters).
pub fn cluster_and_topics(test: &str) -> (String, String, String) {
    script("start-env.sh", &["-k"]);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names = [
        format!("{test}-{id}-in"),
        format!("{test}-{id}-out"),
        format!("{test}-{id}-dlq"),
    ];
    create_topics(&names, 3);
    let [input, output, dead] = names;
    (input, output, dead)
}

/// An admin client of the local cluster, and a runtime to wait for its answers on.
pub fn admin() -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (admin, runtime)
}

/// Fails the test, saying it could not `what`, if the admin request or any item of its
/// answer was refused.
pub fn admin_ok<T, N: std::fmt::Debug>(
    what: &str,
    answer: rdkafka::error::KafkaResult<Vec<Result<T, (N, rdkafka::types::RDKafkaErrorCode)>>>,
) {
    for result in answer.unwrap_or_else(|e| panic!("cannot {what}: {e}")) {
        if let Err((item, code)) = result {
            panic!("cannot {what} {item:?}: {code}");
        }
    }
}

/// Creates `names` with `partitions` partitions each on the local cluster.
pub fn create_topics(names: &[String], partitions: i32) {
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let (admin, runtime) = admin();
    admin_ok(
        "create",
        runtime.block_on(admin.create_topics(&topics, &AdminOptions::new())),
    );
}

/// Deletes the topic `name` from the local cluster.
pub fn delete_topic(name: &str) {
    let (admin, runtime) = admin();
    admin_ok(
        "delete",
        runtime.block_on(admin.delete_topics(&[name], &AdminOptions::new())),
    );
}

pub fn topic_args<'a>(input: &'a str, output: &'a str, dead: &'a str) -> [&'a str; 6] {
    [
        "--input-topic",
        input,
        "--output-topic",
        output,
        "--dead-letter-topic",
        dead,
    ]
}

/// Runs `pipeline --use-own --bounded` over a test's topics, its job named after the input.
pub fn drain(input: &str, output: &str, dead: &str) -> Output {
    pipeline()
        .args(["--use-own", "--bounded", "--job-name", input])
        .args(topic_args(input, output, dead))
        .args(fetch_args())
        .output()
        .unwrap()
}

pub const SEEDED: [&str; 6] = [
    "--seed",
    "4",
    "--start-time",
    "2024-04-18T09:00:00Z",
    "--missing-geo-ratio",
    "0.2",
];

/// The number of partitions of `topic` on the local cluster.
pub fn partition_count(topic: &str) -> i32 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len() as i32
}

pub fn feed(topic: &str, n: u64) -> BTreeSet<String> {
    let output = datagen()
        .args([
            "-s",
            "streaming",
            "-q",
            "--topic",
            topic,
            "--num-events",
            &n.to_string(),
        ])
        .args(SEEDED)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let (total, keys) = keys_in(topic);
    assert_eq!(keys.len() as u64, n);
    assert_eq!(total as u64, n);
    keys
}

/// (records, distinct keys) in `topic`, all partitions.
pub fn keys_in(topic: &str) -> (usize, BTreeSet<String>) {
    let records = read_topic(BOOTSTRAP, topic, partition_count(topic));
    (
        records.len(),
        records
            .iter()
            .map(|r| String::from_utf8(r.key.clone()).unwrap())
            .collect(),
    )
}

pub fn wait_for_output(topic: &str) {
    let started = Instant::now();
    while keys_in(topic).0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no output in {topic} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job's topics, with `partitions` partitions each.
pub struct Job {
    pub name: String,
    pub input: String,
    pub output: String,
    pub dead: String,
}

pub fn job(test: &str, partitions: i32) -> Job {
    script("start-env.sh", &["-k"]);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let job = Job {
        name: format!("{test}-{id}"),
        input: format!("{test}-{id}-in"),
        output: format!("{test}-{id}-out"),
        dead: format!("{test}-{id}-dlq"),
    };
    create_topics(
        &[job.input.clone(), job.output.clone(), job.dead.clone()],
        partitions,
    );
    job
}

impl Job {
    /// `pipeline --use-own` in this job, with one worker, plus `extra` flags.
    pub fn process(&self, extra: &[&str]) -> Command {
        let mut command = pipeline();
        command
            .args(["--use-own", "--job-name", &self.name, "--parallelism", "1"])
            .args(topic_args(&self.input, &self.output, &self.dead))
            .args(fetch_args())
            .args(extra);
        command
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.process(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Writes `n` seeded events with unique keys (a 1 ms simulated clock): their keys.
    pub fn feed(&self, n: u64, seed: u64) -> BTreeSet<String> {
        let before = keys_in(&self.input).1;
        let output = datagen()
            .args(["-s", "streaming", "-q", "--topic", &self.input])
            .args(["--num-events", &n.to_string(), "--seed", &seed.to_string()])
            .args([
                "--start-time",
                &format!("2024-0{}-01T00:00:00Z", seed % 9 + 1),
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let after = keys_in(&self.input).1;
        let fed: BTreeSet<String> = after.difference(&before).cloned().collect();
        assert_eq!(fed.len() as u64, n, "unique keys");
        fed
    }

    /// Every output key with how often it was written.
    pub fn output_counts(&self) -> BTreeMap<String, usize> {
        let records = super::read_topic(BOOTSTRAP, &self.output, partition_count(&self.output));
        let mut counts = BTreeMap::new();
        for record in records {
            *counts
                .entry(String::from_utf8(record.key).unwrap())
                .or_insert(0) += 1;
        }
        counts
    }

    /// Waits until every key of `expected` is in the output.
    pub fn wait_for_all(
        &self,
        expected: &BTreeSet<String>,
        limit: Duration,
    ) -> BTreeMap<String, usize> {
        let started = Instant::now();
        loop {
            let counts = self.output_counts();
            let missing = expected.iter().filter(|k| !counts.contains_key(*k)).count();
            if missing == 0 {
                return counts;
            }
            assert!(
                started.elapsed() < limit,
                "{missing} of {} records still missing from the output after {limit:?}",
                expected.len()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// (lost, duplicated) of `expected` in the output counts.
pub fn loss_and_duplicates(
    expected: &BTreeSet<String>,
    counts: &BTreeMap<String, usize>,
) -> (usize, usize) {
    let lost = expected.iter().filter(|k| !counts.contains_key(*k)).count();
    let duplicated = counts.values().map(|&n| n.saturating_sub(1)).sum();
    assert!(
        counts.keys().all(|k| expected.contains(k)),
        "the output holds keys that were never fed"
    );
    (lost, duplicated)
}

pub fn finished(child: Child, what: &str) -> Output {
    let output = wait_with_timeout(child, Duration::from_secs(120));
    assert_eq!(output.status.code(), Some(0), "{what}: {}", stderr(&output));
    output
}

/// The partitions a process was assigned at some point, from its log lines.
pub fn ever_assigned(output: &Output) -> BTreeSet<String> {
    stderr(output)
        .lines()
        .filter_map(|l| l.split("assigned [").nth(1))
        .flat_map(|rest| {
            rest[..rest.find(']').unwrap_or(0)]
                .split(", ")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// Lets `topic` take records of up to `bytes`.
pub fn allow_records_of(topic: &str, bytes: usize) {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let limit = bytes.to_string();
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &limit);
    let (admin, runtime) = admin();
    admin_ok(
        "alter the config of",
        runtime.block_on(admin.alter_configs(&[change], &AdminOptions::new())),
    );
}

/// The folder of Apache Kafka's jars that `setup/start-env.sh -k` fetched.
pub fn kafka_libs() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pom = std::fs::read_to_string(root.join("setup/kafka/pom.xml")).unwrap();
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .unwrap();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join(format!("streamkit/kafka-{version}/libs"))
}

/// The java that runs Kafka: `$JAVA_HOME`'s, else the one on PATH.
pub fn java() -> std::path::PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| Path::new(&home).join("bin/java"))
        .filter(|java| java.exists())
        .unwrap_or_else(|| "java".into())
}

/// `group`'s committed position per partition of `topic` (partitions without one left out).
pub fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}
