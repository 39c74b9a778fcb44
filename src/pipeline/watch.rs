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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::{Stats, Topics};
use crate::error::Result;
use crate::kafka::{self, ErrorLog, KafkaConfig};

/// How often the cluster's topics are listed.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Answers in a row that must miss a topic before the job stops.
pub const CONFIRMATIONS: u32 = 2;

/// The watch's thread; dropping it stops the thread.
pub(super) struct TopicWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TopicWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching `topics` on `kafka`; a deleted one records its failure in `stats` and
/// fires `cancel`.
pub(super) fn start(
    kafka: &KafkaConfig,
    job_name: &str,
    topics: &Topics,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<TopicWatch> {
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
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("topic-watch".into())
            .spawn(move || watch(&client, &watched, &stats, &cancel, &stop))
            .map_err(|e| crate::error::Error::Kafka(format!("cannot start the topic watch: {e}")))?
    };
    Ok(TopicWatch {
        stop,
        thread: Some(thread),
    })
}

fn watch(
    client: &BaseConsumer<ErrorLog>,
    watched: &[(&'static str, String)],
    stats: &Stats,
    cancel: &CancellationToken,
    stop: &AtomicBool,
) {
    let mut misses = vec![0u32; watched.len()];
    let mut next = Instant::now() + WATCH_INTERVAL;
    while !stop.load(Ordering::Relaxed) && !cancel.is_cancelled() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + WATCH_INTERVAL;
        // Every topic's metadata: asking for one by name could create it again on a
        // broker that creates topics on demand.
        let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(5)) else {
            continue;
        };
        for ((role, topic), missed) in watched.iter().zip(&mut misses) {
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
                return;
            }
        }
    }
}
