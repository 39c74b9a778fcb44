//! Events into a Kafka topic, through the throughput-tuned idempotent producer of
//! `crate::kafka`.
//!
//! Guarantees: the topic and cluster are checked before anything is generated; a full
//! local queue is waited out (serving delivery reports), never dropped; at the end every
//! event is counted delivered or failed, from the delivery reports themselves.
//!
//! The end is bounded. Outstanding deliveries get [`DRAIN_TIMEOUT`](super::DRAIN_TIMEOUT)
//! after a cancellation; otherwise librdkafka's own `message.timeout.ms` (default 300 s)
//! plus [`REPORT_GRACE`] from the last event handed over. Then they are purged and counted
//! as failed. (The count of unconfirmed events is `enqueued − delivered − failed`, never
//! librdkafka's out-queue length: that one also counts requests, such as the metadata and
//! connection attempts that pile up while a broker is down, and may never reach zero.)
//!
//! Limit: delivery is at-least-once per event from the producer's point of view; an event
//! reported failed may still have reached the broker (its acknowledgement was lost).

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use super::DRAIN_TIMEOUT;
use super::batch::EncodedBatch;
use super::sink::{Delivery, Sent, Sink};
use super::verify::Tagging;
use crate::error::Result;
use crate::kafka::{self, Compression, CountingProducer, DeliveryCounter, KafkaConfig};

/// After `message.timeout.ms`, how long the last delivery reports may take to arrive.
pub const REPORT_GRACE: Duration = Duration::from_secs(5);

pub(super) struct KafkaSink {
    producer: CountingProducer,
    topic: String,
    servers: String,
    enqueued: u64,
    rejected: u64,
    first_rejection: Option<String>,
    since_poll: u32,
    /// librdkafka's `message.timeout.ms`; `None` when it is 0 (no limit).
    message_timeout: Option<Duration>,
    last_enqueued: Option<Instant>,
    /// With `--verify-topic`: each record carries this run's id, its event's number and
    /// its send time, and its identity is kept for matching by content (see `verify`).
    tagging: Option<Tagging>,
}

impl KafkaSink {
    pub(super) fn open(
        kafka_config: &KafkaConfig,
        topic: &str,
        compression: Compression,
        tagging: Option<Tagging>,
    ) -> Result<Self> {
        let client_config =
            kafka::throughput_producer_config(kafka_config, "streamkit-datagen", compression);
        let producer: CountingProducer = kafka::create(
            &client_config,
            DeliveryCounter::new(&kafka_config.bootstrap_servers),
            kafka_config,
        )?;
        kafka::check_topic_reachable(producer.client(), kafka_config, topic)?;
        log::info!(
            "producing to topic {topic} at {}",
            kafka_config.bootstrap_servers
        );
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            servers: kafka_config.bootstrap_servers.clone(),
            enqueued: 0,
            rejected: 0,
            first_rejection: None,
            since_poll: 0,
            message_timeout: kafka::message_timeout(&client_config),
            last_enqueued: None,
            tagging,
        })
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, batch: &EncodedBatch, cancel: &CancellationToken) -> Result<Sent> {
        let mut sent = Sent::default();
        // One send stamp per batch (a batch is generated in well under a millisecond), taken
        // again after a wait for room in the queue.
        let mut stamp = self.producer.context().latency().stamp();
        if let Some(tagging) = &self.tagging {
            // Kept before they are sent: no output can arrive before its event is known.
            tagging.sent(
                batch
                    .records()
                    .map(|(key, _)| key)
                    .zip(batch.indices().iter().copied()),
            );
        }
        for ((key, value), index) in batch.records().zip(batch.indices()) {
            loop {
                let mut record = BaseRecord::with_opaque_to(&self.topic, stamp)
                    .key(key)
                    .payload(value);
                if let Some(tagging) = &self.tagging {
                    record = record.headers(verification_headers(&tagging.run_id, *index));
                }
                match self.producer.send(record) {
                    Ok(()) => {
                        self.enqueued += 1;
                        self.last_enqueued = Some(Instant::now());
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if cancel.is_cancelled() {
                            return Ok(sent);
                        }
                        // The local queue is full: serve delivery reports while it drains.
                        self.producer.poll(Duration::from_millis(5));
                        stamp = self.producer.context().latency().stamp();
                    }
                    Err((error, _)) => {
                        // Refused before queueing (say, too large): count it as failed.
                        self.rejected += 1;
                        self.first_rejection
                            .get_or_insert_with(|| error.to_string());
                        break;
                    }
                }
            }
            sent.add(Sent {
                events: 1,
                bytes: (key.len() + value.len()) as u64,
            });
            self.since_poll += 1;
            if self.since_poll >= 1024 {
                self.producer.poll(Duration::ZERO);
                self.since_poll = 0;
            }
        }
        Ok(sent)
    }

    fn idle(&mut self, wait: Duration) -> Result<()> {
        // Serve the delivery reports that are ready, then sleep. (`poll(wait)` would spin
        // through the last sub-millisecond of every wait: rust-rdkafka polls with whole
        // milliseconds and loops until its deadline, which cost a core at high rates.)
        self.producer.poll(Duration::ZERO);
        std::thread::sleep(wait);
        Ok(())
    }

    fn closed(&self) -> bool {
        false
    }

    fn delivery_counts(&self) -> (u64, u64) {
        let counter = self.producer.context();
        (counter.delivered(), counter.failed() + self.rejected)
    }

    fn latency(&self) -> Option<std::sync::Arc<crate::latency::DeliveryLatency>> {
        Some(std::sync::Arc::clone(self.producer.context().latency()))
    }

    fn finish(&mut self, cancel: &CancellationToken) -> Result<Delivery> {
        // Every event handed over gets exactly one delivery report, within message.timeout.ms.
        let unconfirmed = |producer: &CountingProducer, enqueued: u64| {
            let counter = producer.context();
            enqueued.saturating_sub(counter.delivered() + counter.failed())
        };
        let timeout_ends = self
            .message_timeout
            .zip(self.last_enqueued)
            .and_then(|(timeout, last)| last.checked_add(timeout + REPORT_GRACE));
        let mut drain_started: Option<Instant> = None;
        let mut last_report = Instant::now();
        loop {
            let pending = unconfirmed(&self.producer, self.enqueued);
            if pending == 0 {
                break;
            }
            let now = Instant::now();
            let give_up = if cancel.is_cancelled()
                && now.duration_since(*drain_started.get_or_insert(now)) >= DRAIN_TIMEOUT
            {
                Some(format!("stopping, after {} s", DRAIN_TIMEOUT.as_secs()))
            } else if timeout_ends.is_some_and(|end| now >= end) {
                Some(format!(
                    "message.timeout.ms ({} s) and {} s more have passed",
                    self.message_timeout.unwrap_or_default().as_secs(),
                    REPORT_GRACE.as_secs()
                ))
            } else {
                None
            };
            if let Some(why) = give_up {
                log::warn!(
                    "{pending} events still unconfirmed by {} ({why}): purging them and counting them as failed",
                    self.servers
                );
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                // Serve the purged messages' reports, briefly.
                let purge_end = Instant::now() + Duration::from_secs(1);
                while unconfirmed(&self.producer, self.enqueued) > 0 && Instant::now() < purge_end {
                    self.producer.poll(Duration::from_millis(50));
                }
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                log::info!("waiting for {pending} deliveries to {}...", self.servers);
                last_report = Instant::now();
            }
            // Serves delivery reports; sleeps up to 100 ms when none arrive (no busy loop:
            // `flush` returns at once once no message is queued, requests or not).
            self.producer.poll(Duration::from_millis(100));
        }
        // Anything neither reported delivered nor failed (no report after a purge) failed too.
        let unreported = unconfirmed(&self.producer, self.enqueued);
        let counter = self.producer.context();
        let failed = counter.failed();
        Ok(Delivery {
            failures: failed + unreported + self.rejected,
            first_failure: counter
                .first_failure()
                .or_else(|| self.first_rejection.clone()),
        })
    }
}

/// The headers that identify a record to `--verify-topic` (see `verify`).
fn verification_headers(run_id: &str, index: u64) -> OwnedHeaders {
    let sent = super::verify::now_micros().to_string();
    let seq = index.to_string();
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: super::verify::RUN_HEADER,
            value: Some(run_id),
        })
        .insert(Header {
            key: super::verify::SEQ_HEADER,
            value: Some(seq.as_str()),
        })
        .insert(Header {
            key: super::verify::SENT_HEADER,
            value: Some(sent.as_str()),
        })
}
