//! What every destination of generated events does: take batches, stay serviced while
//! idle, and account for every event at the end.
//!
//! Guarantee: after [`Sink::finish`], every event a sink accepted is counted either as
//! delivered or in [`Delivery::failures`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Output;
use super::batch::EncodedBatch;
use super::file_sink::FileSink;
use super::kafka_sink::KafkaSink;
use crate::error::Result;
use crate::latency::DeliveryLatency;
use std::sync::Arc;

/// What a sink accepted from one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    pub events: u64,
    pub bytes: u64,
}

impl Sent {
    pub fn add(&mut self, other: Sent) {
        self.events += other.events;
        self.bytes += other.bytes;
    }
}

/// The outcome of flushing a sink.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    pub failures: u64,
    pub first_failure: Option<String>,
}

pub(super) trait Sink {
    /// Takes the batch; accepts fewer events only when cancelled or closed.
    fn send(&mut self, batch: &EncodedBatch, cancel: &CancellationToken) -> Result<Sent>;
    /// Waits up to `wait` while keeping the sink serviced.
    fn idle(&mut self, wait: Duration) -> Result<()>;
    /// True once the reader went away (a closed stdout pipe): stop generating.
    fn closed(&self) -> bool;
    /// Flushes everything, within the rules of the module docs.
    fn finish(&mut self, cancel: &CancellationToken) -> Result<Delivery>;
    /// Events delivered and failed so far, as far as the sink knows yet.
    fn delivery_counts(&self) -> (u64, u64);
    /// Delivery latencies, for a sink whose deliveries are acknowledged (Kafka).
    fn latency(&self) -> Option<Arc<DeliveryLatency>> {
        None
    }
}

/// The sink for `output`: a file (or stdout) or a Kafka topic, checked and ready.
/// With `run_id`, Kafka records carry the headers `--verify-topic` reads.
pub(super) fn open_sink(
    output: &Output,
    tagging: Option<super::verify::Tagging>,
) -> Result<Box<dyn Sink>> {
    Ok(match output {
        Output::Kafka {
            kafka,
            topic,
            compression,
        } => Box::new(KafkaSink::open(kafka, topic, *compression, tagging)?),
        file_or_stdout => Box::new(FileSink::open(file_or_stdout)?),
    })
}
