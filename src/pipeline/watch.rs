//! Watches the job's topics while it runs: a topic deleted under a running job (its input,
//! its output or its dead letters) stops the job with an error naming the topic, as Kafka
//! Streams stops on `MissingSourceTopicException`, instead of a stall in silence (a
//! producer retries an unknown partition until its message timeout; a consumer warns for
//! ever).
//!
//! Guarantee: once a topic is missing from [`CONFIRMATIONS`] metadata answers in a row,
//! [`WATCH_INTERVAL`] apart, the job's cancellation token fires and [`Stats::failure`]
//! names the topic. The job then stops as on any stop: it commits nothing past what was
//! delivered, and the process exits 1. A cluster that does not answer is not a deleted
//! topic: the watch waits for an answer (a broker restart stops nothing).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::periodic::Periodic;
use super::{Stats, Topics};
use crate::error::Result;
use crate::kafka::{self, ErrorLog, KafkaConfig};

/// How often the cluster's topics are listed.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Answers in a row that must miss a topic before the job stops.
pub const CONFIRMATIONS: u32 = 2;

/// Starts watching `topics` on `kafka` (every [`WATCH_INTERVAL`], on a thread of its own,
/// stopped when dropped); a deleted one records its failure in `stats` and fires `cancel`.
pub(super) fn start(
    kafka: &KafkaConfig,
    job_name: &str,
    topics: &Topics,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<Periodic> {
    let client: BaseConsumer<ErrorLog> = kafka::create(
        &kafka::watermark_client_config(kafka, job_name),
        ErrorLog::new(&kafka.bootstrap_servers),
        kafka,
    )?;
    let watched = [
        ("input", topics.input.clone()),
        ("output", topics.output.clone()),
        ("dead-letter", topics.dead_letter.clone()),
    ];
    let mut misses = [0u32; 3];
    Periodic::start("topic-watch", WATCH_INTERVAL, WATCH_INTERVAL, move |_| {
        if cancel.is_cancelled() {
            return ControlFlow::Break(());
        }
        watch(&client, &watched, &mut misses, &stats, &cancel)
    })
}

/// One look at the cluster's topics.
fn watch(
    client: &BaseConsumer<ErrorLog>,
    watched: &[(&'static str, String)],
    misses: &mut [u32],
    stats: &Stats,
    cancel: &CancellationToken,
) -> ControlFlow<()> {
    // Every topic's metadata: asking for one by name could create it again on a broker
    // that creates topics on demand.
    let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(5)) else {
        return ControlFlow::Continue(());
    };
    for ((role, topic), missed) in watched.iter().zip(misses) {
        let present = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        *missed = if present { 0 } else { *missed + 1 };
        if *missed >= CONFIRMATIONS {
            let reason = format!(
                "the {role} topic {topic} was deleted while the job ran; the job stops (nothing undelivered is committed)"
            );
            log::error!("{reason}");
            stats.fail(reason);
            cancel.cancel();
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}
