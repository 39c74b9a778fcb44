//! Events into a Kafka topic, through the throughput-tuned idempotent producer of
//! `crate::kafka`.
//!
//! Guarantees: the topic and cluster are checked before anything is generated; a full
//! local queue is waited out (serving delivery reports), never dropped; at the end every
//! event is counted delivered or failed. After a cancellation, outstanding deliveries get
//! [`DRAIN_TIMEOUT`](super::DRAIN_TIMEOUT), then are purged and counted as failed.
//!
//! Limit: delivery is at-least-once per event from the producer's point of view; an event
//! reported failed may still have reached the broker (its acknowledgement was lost).

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use super::DRAIN_TIMEOUT;
use super::batch::EncodedBatch;
use super::sink::{Delivery, Sent, Sink};
use crate::error::Result;
use crate::kafka::{self, Compression, CountingProducer, DeliveryCounter, KafkaConfig};

pub(super) struct KafkaSink {
    producer: CountingProducer,
    topic: String,
    servers: String,
    enqueued: u64,
    rejected: u64,
    first_rejection: Option<String>,
    since_poll: u32,
}

impl KafkaSink {
    pub(super) fn open(
        kafka_config: &KafkaConfig,
        topic: &str,
        compression: Compression,
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
        })
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, batch: &EncodedBatch, cancel: &CancellationToken) -> Result<Sent> {
        let mut sent = Sent::default();
        for (key, value) in batch.records() {
            loop {
                match self
                    .producer
                    .send(BaseRecord::to(&self.topic).key(key).payload(value))
                {
                    Ok(()) => {
                        self.enqueued += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if cancel.is_cancelled() {
                            return Ok(sent);
                        }
                        // The local queue is full: serve delivery reports while it drains.
                        self.producer.poll(Duration::from_millis(5));
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
        self.producer.poll(wait);
        Ok(())
    }

    fn closed(&self) -> bool {
        false
    }

    fn delivery_counts(&self) -> (u64, u64) {
        let counter = self.producer.context();
        (counter.delivered(), counter.failed() + self.rejected)
    }

    fn finish(&mut self, cancel: &CancellationToken) -> Result<Delivery> {
        let mut drain_started: Option<Instant> = None;
        let mut last_report = Instant::now();
        loop {
            // Flushing in short steps keeps cancellation responsive; a timeout is expected.
            let _ = self.producer.flush(Duration::from_millis(100));
            let in_flight = self.producer.in_flight_count();
            if in_flight == 0 {
                break;
            }
            if cancel.is_cancelled() {
                let started = *drain_started.get_or_insert_with(Instant::now);
                if started.elapsed() >= DRAIN_TIMEOUT {
                    log::warn!(
                        "{in_flight} events still undelivered to {} after {} s: purging them and counting them as failed",
                        self.servers,
                        DRAIN_TIMEOUT.as_secs()
                    );
                    self.producer
                        .purge(PurgeConfig::default().queue().inflight());
                    let _ = self.producer.flush(Duration::from_secs(1));
                    break;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                log::info!("waiting for {in_flight} deliveries to {}...", self.servers);
                last_report = Instant::now();
            }
        }
        let counter = self.producer.context();
        let (delivered, failed) = (counter.delivered(), counter.failed());
        // Anything neither reported delivered nor failed (no report after a purge) failed too.
        let unreported = self.enqueued.saturating_sub(delivered + failed);
        Ok(Delivery {
            failures: failed + unreported + self.rejected,
            first_failure: counter
                .first_failure()
                .or_else(|| self.first_rejection.clone()),
        })
    }
}
