//! Benchmark: Kafka to Kafka on one machine, against the broker at BOOTSTRAP_SERVERS
//! (default localhost:29092). It loads N seeded events into a fresh 3-partition topic,
//! then times, in this one process and on the same broker:
//! 1. a plain copy of that topic, tuned as a Kafka expert would tune it and idempotent like
//!    the pipeline: one librdkafka consumer and one `ThreadedProducer`
//!    (`enable.idempotence=true`, `partitioner=murmur2_random` as the pipeline's,
//!    `linger.ms=5`, `batch.size=1000000`, no poll per message;
//!    `fetch.queue.backoff.ms=10` on the consumer, as the pipeline has it), doing no
//!    parsing: the I/O limit. It runs first, in the middle and last (the machine's speed
//!    drifts within a run): the highest rate of the three is the rate baseline, the least
//!    CPU per record (of any run) the CPU baseline;
//! 2. the pipeline at its default --parallelism 3 (right after the first copy), then at
//!    1 and 2, each into its own output topic. Its rate is given for the whole run and,
//!    since joining the consumer group is a fixed cost of each start that the copy (which
//!    assigns its partitions itself) does not pay, also from the moment the group had
//!    assigned every partition;
//! 3. where the pipeline's extra cost lies, at the default --parallelism 3: kafka-io
//!    forwarding no input header (librdkafka parses each record's headers to forward
//!    them, even none), and the runner alone ([`Forward`]: each key and value written
//!    unchanged, no header, no transform).
//!
//! For each: records/s, and CPU seconds (user + sys, all threads, from /proc/self/stat)
//! per million records. Figures go to stderr; stdout gets the names of the input topic and
//! of a spare output and dead-letter topic, for a follow-up run.
//! Run: `cargo run --release --features bench --bin bench -- kafka [EVENTS] [-X key=value ...]`
//! (for tansu 0.6, pass `-X fetch.wait.max.ms=5`).

use std::collections::HashSet;
use std::time::Duration;

use crate::kafka::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::measure::Measure;
use crate::pipeline::job::{Emitter, Job, JobSpec, Now, Operator, Outcome, Record};

/// The runner alone, for the benchmark: each record's key and value written unchanged,
/// its headers not forwarded. Against the copy, it shows what the runner costs; against
/// kafka-io, what the transform does.
struct Forward;

const FORWARD: [Operator; 1] = [Operator::new("Forward unchanged", "forward")];

impl Job for Forward {
    fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
        let (key, value) = out.record();
        key.extend_from_slice(record.key.unwrap_or_default());
        value.extend_from_slice(record.value.unwrap_or_default());
        Outcome::Emitted
    }

    fn operators(&self) -> &'static [Operator] {
        &FORWARD
    }

    fn forwards_headers(&self) -> bool {
        false
    }
}

pub(super) fn main() {
    let mut args = super::args().skip(1);
    let mut events: u64 = 1_000_000;
    let mut properties = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "-X" {
            properties.push(
                crate::cli::parse_property(&args.next().expect("-X needs KEY=VALUE"))
                    .expect("KEY=VALUE"),
            );
        } else {
            events = arg.parse().expect("EVENTS is a number");
        }
    }
    let kafka = KafkaConfig {
        bootstrap_servers: std::env::var("BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| "localhost:29092".into()),
        properties,
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let topic = |name: &str| format!("bench-{run_id}-{name}");
    let names: Vec<String> = [
        "in", "copy", "copy2", "copy3", "out1", "out2", "out3", "out4", "out5", "dlq", "rss",
    ]
    .iter()
    .map(|n| topic(n))
    .collect();
    create_topics(&kafka, &names);

    let load = crate::datagen::DatagenConfig {
        generator: crate::generator::GeneratorConfig {
            num_users: 50,
            missing_geo_ratio: 0.2,
            max_lag_ms: 0,
            seed: 1,
            user_skew: None,
        },
        clock: crate::generator::Clock::Simulated {
            start_ms: 1_713_430_800_000,
            step_us: 1000,
        },
        num_events: Some(events),
        duration: None,
        pace: crate::pacing::Pace::Unlimited,
        threads: 1,
        output: crate::datagen::Output::Kafka {
            kafka: kafka.clone(),
            topic: topic("in"),
            compression: crate::kafka::Compression::None,
        },
        progress: crate::progress::ProgressMode::Quiet,
        metrics_addr: None,
        dirt: None,
        verify: None,
        report: None,
    };
    let loaded =
        crate::datagen::run(&load, &CancellationToken::new()).expect("load the input topic");
    eprintln!("loaded: {loaded}");

    // The copy runs first, in the middle and last, and its best runs are the baseline: the
    // broker's state (caches, segments) and the machine's drift must not favour either
    // side.
    let copy_once = |name: &str| {
        let measured = Measure::start();
        let copied = plain_copy(&kafka, &topic("in"), &topic(name));
        let copy = measured.finish(copied);
        eprintln!(
            "plain copy (consumer + idempotent ThreadedProducer, no parsing): {copied} records in {:.2} s = {:.0} records/s, {:.2} CPU-s per million records",
            copy.seconds,
            copy.rate(),
            copy.cpu_per_million()
        );
        copy
    };
    let mut copies = vec![copy_once("copy")];
    let kafka_io = || JobSpec::builtin(crate::pipeline::job::JobKind::KafkaIo);
    let mut runs = Vec::new();
    for (n, parallelism, job, drop_input_headers, what) in [
        (3, 3, Some(kafka_io()), false, " (the default)"),
        (1, 1, Some(kafka_io()), false, ""),
        (2, 2, Some(kafka_io()), false, ""),
        (0, 0, None, false, "copy2"),
        (
            4,
            3,
            Some(kafka_io()),
            true,
            " (input headers not forwarded)",
        ),
        (
            5,
            3,
            Some(JobSpec::new("forward", None, || Forward)),
            true,
            " (the runner alone: key and value forwarded, no transform, no header)",
        ),
    ] {
        let Some(job) = job else {
            copies.push(copy_once(what));
            continue;
        };
        let config = crate::pipeline::PipelineConfig {
            job,
            guarantee: crate::pipeline::Guarantee::AtLeastOnce,
            job_name: format!("bench-{run_id}-p{parallelism}-{n}"),
            parallelism,
            group: Default::default(),
            checkpointing_interval: Duration::from_secs(60),
            bounded: true,
            source: crate::pipeline::Source::Kafka {
                cluster: crate::pipeline::Cluster::External(kafka.clone()),
                topics: crate::pipeline::Topics {
                    input: topic("in"),
                    output: topic(&format!("out{n}")),
                    dead_letter: topic("dlq"),
                },
                print_keys: false,
            },
            ui: None,
            topic_browser: None,
            browse_internal_topics: false,
            drop_input_headers,
            repartition: false,
            repartition_partitions: None,
        };
        let stats = std::sync::Arc::new(crate::pipeline::Stats::default());
        let started = std::time::SystemTime::now();
        let measured = Measure::start();
        let summary = crate::pipeline::run_with_stats(&config, &stats, &CancellationToken::new())
            .expect("pipeline run");
        let run = measured.finish(summary.written);
        let joined = every_partition_assigned(&stats.rebalances(), 3)
            .and_then(|at| at.duration_since(started).ok())
            .map(|d| d.as_secs_f64());
        runs.push((parallelism, what, run, joined));
    }
    copies.push(copy_once("copy3"));
    let best_rate = copies.iter().map(|c| c.rate()).fold(0.0, f64::max);
    let least_cpu = copies
        .iter()
        .map(|c| c.cpu_per_million())
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "the copy at its best: {best_rate:.0} records/s, {least_cpu:.2} CPU-s per million records"
    );
    for (parallelism, what, run, joined) in runs {
        // The group join is a fixed cost of each start, which the copy (no group) does not
        // pay: the rate after it is printed too, next to the whole run's.
        let after_join = joined
            .filter(|&j| j < run.seconds)
            .map(|j| {
                let rate = run.records as f64 / (run.seconds - j);
                format!(
                    " (the group assigned every partition after {j:.2} s; from then on {rate:.0} records/s = {:.2} of the copy)",
                    rate / best_rate
                )
            })
            .unwrap_or_default();
        eprintln!(
            "pipeline --parallelism {parallelism}{what}: {} written in {:.2} s = {:.0} records/s = {:.2} of the copy's best{after_join}; {:.2} CPU-s per million records = {:.2}x the copy's least",
            run.records,
            run.seconds,
            run.rate(),
            run.rate() / best_rate,
            run.cpu_per_million(),
            run.cpu_per_million() / least_cpu
        );
    }
    // For a follow-up run (bench/pipeline.sh measures memory with them): input, output, dead letters.
    println!("{} {} {}", topic("in"), topic("rss"), topic("dlq"));
}

/// When the job's workers first owned all `partitions` partitions between them.
fn every_partition_assigned(
    rebalances: &[crate::pipeline::RebalanceRecord],
    partitions: usize,
) -> Option<std::time::SystemTime> {
    let mut owned = HashSet::new();
    rebalances.iter().find_map(|record| {
        owned.extend(record.assigned.iter().copied());
        for partition in &record.revoked {
            owned.remove(partition);
        }
        (owned.len() == partitions).then_some(record.at)
    })
}

fn create_topics(kafka: &KafkaConfig, names: &[String]) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 3, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for result in runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics")
    {
        result.unwrap_or_else(|(name, code)| panic!("cannot create {name}: {code}"));
    }
}

/// Copies every record of `from` to `to`, unparsed, and returns how many: the baseline,
/// tuned for throughput as the pipeline's producer is idempotent.
fn plain_copy(kafka: &KafkaConfig, from: &str, to: &str) -> u64 {
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", format!("{from}-copy"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // librdkafka backs off fetching for 1 s (fetch.queue.backoff.ms) whenever its
        // prefetch queue is full, which stalls a fast reader: an expert lowers it, as the
        // pipeline does.
        .set("fetch.queue.backoff.ms", "10")
        // And it does not let a fetch of caught-up partitions hold back the others for
        // 500 ms (fetch.wait.max.ms), as the pipeline does not.
        .set("fetch.wait.max.ms", "50");
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        // The pipeline's partitioner (Java's murmur2, cheaper than librdkafka's default
        // CRC32), so that neither pays for hashing keys more than the other.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &kafka.properties {
        consumer_config.set(k, v);
        producer_config.set(k, v);
    }
    consumer_config.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    producer_config.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    let consumer: BaseConsumer = consumer_config.create().expect("consumer");
    // Serves its delivery reports on a thread of its own: no poll per message here.
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config.create().expect("producer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..3 {
        assignment
            .add_partition_offset(from, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = HashSet::new();
    let mut copied = 0u64;
    while at_end.len() < 3 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(to);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                while let Err((
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    returned,
                )) = producer.send(record)
                {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                copied += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => eprintln!("copy: {e}"),
            None => {}
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush the copy");
    copied
}
