//! Benchmark: a bare idempotent producer, the baseline for datagen streaming. It sends
//! RECORDS records, cycling through the first 1,024 events of PAYLOAD_FILE (JSON lines, as
//! `datagen -o` writes them), each with the key datagen gives it, to TOPIC at
//! BOOTSTRAP_SERVERS (default localhost:29092). Keys and values are prepared before the
//! clock starts: what is timed is sending alone, with datagen's own producer settings
//! (`kafka::throughput_producer_config`: idempotent, `acks=all`, `linger.ms=20`), a
//! delivery-report poll every 1,024 sends and on a full queue, then a flush.
//!
//! Prints on stderr the records/s, MB/s (keys and values) and µs of CPU per record
//! (user + sys of every thread, sending phase only), and `RATE CPU_US` on stdout for
//! `bench/datagen.sh`. Exits non-zero if any delivery failed.
//! Run: `cargo run --release --features bench --bin bench -- producer -- TOPIC PAYLOAD_FILE RECORDS [none|lz4|...]`

use std::time::Duration;

use crate::kafka::{Compression, KafkaConfig};
use crate::schema::{EventLog, write_key};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::atomic::{AtomicU64, Ordering};

use super::measure::Measure;

/// Counts failed deliveries, and nothing else.
#[derive(Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) fn main() {
    let args: Vec<String> = super::args().skip(1).collect();
    let [topic, payload_file, records, rest @ ..] = args.as_slice() else {
        eprintln!("usage: producer_bench TOPIC PAYLOAD_FILE RECORDS [COMPRESSION]");
        std::process::exit(2);
    };
    let records: u64 = records.parse().expect("RECORDS is a number");
    let compression = match rest.first().map(String::as_str).unwrap_or("none") {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        "snappy" => Compression::Snappy,
        "gzip" => Compression::Gzip,
        other => panic!("unknown compression {other}"),
    };
    let text = std::fs::read_to_string(payload_file).expect("read PAYLOAD_FILE");
    // A working set the size of datagen's batch (1,024 events), hot in cache as datagen's
    // freshly generated batch is: the baseline does not pay for reading a cold 50 MB array.
    let events: Vec<(Vec<u8>, &[u8])> = text
        .lines()
        .take(1024)
        .map(|line| {
            let event = EventLog::from_json(line.as_bytes()).expect("an event per line");
            let mut key = Vec::new();
            write_key(&event, &mut key).expect("key");
            (key, line.as_bytes())
        })
        .collect();
    assert!(!events.is_empty(), "PAYLOAD_FILE has no events");

    let kafka = KafkaConfig {
        bootstrap_servers: std::env::var("BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| "localhost:29092".into()),
        properties: Vec::new(),
    };
    let config = crate::kafka::throughput_producer_config(&kafka, "producer-bench", compression);
    let producer: BaseProducer<Failures> = config
        .create_with_context(Failures::default())
        .expect("producer");

    let measured = Measure::start();
    let mut bytes = 0u64;
    for i in 0..records {
        let (key, value) = &events[(i % events.len() as u64) as usize];
        bytes += (key.len() + value.len()) as u64;
        let mut record = BaseRecord::to(topic).key(key.as_slice()).payload(*value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("send: {e}"),
            }
        }
        if i % 1024 == 1023 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("flush every record");
    let run = measured.finish(records);
    let failed = producer.context().0.load(Ordering::Relaxed);
    let cpu_us = run.cpu_per_million();
    eprintln!(
        "bare idempotent producer: {records} records in {:.2} s = {:.0} records/s, {:.1} MB/s (keys and values), {cpu_us:.2} µs CPU/record, {failed} failed",
        run.seconds,
        run.rate(),
        bytes as f64 / run.seconds / 1e6,
    );
    println!("{:.0} {cpu_us:.2}", run.rate());
    if failed > 0 {
        std::process::exit(1);
    }
}
