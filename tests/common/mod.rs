//! Helpers shared by the integration tests: running the binaries and reading topics back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

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
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Reads every partition of `topic` from the beginning to its end.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "streamkit-tests")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
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
                at_end.insert(message.partition(), false);
                records.push(Record {
                    partition: message.partition(),
                    key: message.key().unwrap_or_default().to_vec(),
                    value: message.payload().unwrap_or_default().to_vec(),
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
    let number = |text: &str| text.replace(',', "").parse::<u64>().unwrap();
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
