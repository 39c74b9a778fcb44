//! A grouped job ([`Job::grouped`](super::job::Job::grouped): every windowed job) on Kafka,
//! in two stages through a repartition topic, as Kafka Streams runs a `groupBy`: Kafka is
//! the shuffle, with no network layer of our own.
//!
//! - **Stage 1** reads the input as the consumer group `<job-name>`, parses each record,
//!   and writes it to `<job-name>-repartition`, keyed by its grouping key (so each key
//!   lands in one partition) and stamped with its event time. It tells every repartition
//!   partition how far its input partitions have got (the watermark marks of
//!   [`Windowed`](super::job::Windowed)).
//! - **Stage 2** reads `<job-name>-repartition` as the consumer group
//!   `<job-name>-aggregate`, keeps the windows, and writes the results.
//!
//! Both stages run in every process, each on the one runner with the process's
//! `--parallelism` workers and its guarantee, so more workers and more processes both add
//! capacity, and each key's windows still live in exactly one place.
//!
//! **The repartition topic belongs to the job.** It is created at start when missing, with
//! the input's partition count unless `--repartition-partitions` says otherwise; when it
//! exists, its partition count is used as it is (and must match `--repartition-partitions`
//! if given). Its records below the second stage's committed positions are deleted
//! ([`PURGE_INTERVAL`], `DeleteRecords`), as Kafka Streams purges its repartition topics,
//! so it keeps no more than the records still to be counted. The job's principal must be
//! allowed to create topics and delete records named `<job-name>-*`.
//!
//! **Guarantees.** At least once, stage 1 commits an input position once its records are
//! acknowledged by the repartition topic; stage 2 commits a repartition position as a
//! single-stage windowed job commits its input. A crash loses nothing; a record written
//! twice by stage 1 may be counted twice while its window is open (see
//! [`Windowed`](super::job::Windowed)). Exactly once, stage 1's repartition writes and its
//! input positions commit in one transaction, and stage 2's results, its repartition
//! positions and its window state in another: a `read_committed` reader sees each window
//! result once after any crash.
//!
//! **`--bounded`.** Stage 1 drains the input as a single-stage job does (every process
//! stays until the whole group's positions reach the input's ends). Then the repartition
//! topic holds every record it ever will: its ends are read, and stage 2 drains up to
//! them, fires every window, and the process exits once the whole second group has
//! committed those ends.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::job::Stage;
use super::periodic::Periodic;
use super::runner::{self, Plan};
use super::{Downstream, Phase, PipelineConfig, Stats, Topics};
use crate::error::{Error, Result};
use crate::kafka::{self, ErrorLog, KafkaConfig};

/// How often records the second stage has committed are deleted from the repartition
/// topic (Kafka Streams' `repartition.purge.interval.ms`).
pub const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// The repartition topic of the job named `job_name`.
pub(crate) fn repartition_topic(job_name: &str) -> String {
    format!("{job_name}-repartition")
}

/// The consumer group of the second stage of the job named `job_name`.
pub(crate) fn aggregate_group(job_name: &str) -> String {
    format!("{job_name}-aggregate")
}

/// Runs `config`'s grouped job in two stages until the input ends (`bounded`) or `cancel`
/// fires; `stats` are the first stage's, and show the second's too (their totals, the
/// windows, the dead letters).
pub(super) async fn run(
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    // Each stage checks its own topics when it starts; this only needs the input's size.
    let input_partitions = kafka::partition_count(kafka, &topics.input)?;
    let repartition = repartition_topic(&config.job_name);
    let wanted = config
        .repartition_partitions
        .unwrap_or(input_partitions)
        .max(1);
    let partitions = kafka::ensure_topic(
        kafka,
        &repartition,
        wanted,
        // Deleted as the second stage commits (PURGE_INTERVAL), not by age: a record
        // waiting to be counted is never lost to retention.
        &[("cleanup.policy", "delete"), ("retention.ms", "-1")],
    )
    .await?;
    if let Some(asked) = config.repartition_partitions
        && asked != partitions
    {
        return Err(Error::Kafka(format!(
            "{repartition} has {partitions} partitions, and --repartition-partitions says {asked}: delete the topic (with the job stopped) or drop the flag"
        )));
    }
    let second_group = aggregate_group(&config.job_name);
    log::info!(
        "job {} grouped by key through {repartition} ({partitions} partitions): stage 1 reads {} as group {}, stage 2 reads {repartition} as group {second_group}",
        config.job_name,
        topics.input,
        config.job_name,
    );
    let first_topics = Topics {
        input: topics.input.clone(),
        output: repartition.clone(),
        dead_letter: topics.dead_letter.clone(),
    };
    let second_topics = Topics {
        input: repartition.clone(),
        output: topics.output.clone(),
        dead_letter: topics.dead_letter.clone(),
    };
    let second_config = PipelineConfig {
        job_name: second_group.clone(),
        ..config.clone()
    };
    let second_stats = Arc::new(Stats::default());
    second_stats.set_phase(Phase::Running);
    stats.set_downstream(Downstream {
        stats: Arc::clone(&second_stats),
        topic: repartition.clone(),
        group: second_group.clone(),
    });
    let (ends_tx, ends_rx) = tokio::sync::oneshot::channel();
    let first_plan = Plan {
        stage: Stage::Repartition,
        broadcast_partitions: partitions,
        ends_later: None,
        status_line: true,
    };
    let second_plan = Plan {
        stage: Stage::Aggregate {
            upstream: input_partitions,
        },
        broadcast_partitions: 0,
        ends_later: config.bounded.then_some(ends_rx),
        status_line: false,
    };
    let purge = Arc::new(Purge::new(kafka, &second_group, &repartition, partitions)?);
    let mut purging = start_purge(Arc::clone(&purge))?;
    let first = async {
        let result = runner::run(
            config,
            kafka,
            &first_topics,
            false,
            stats,
            cancel,
            first_plan,
        )
        .await;
        match &result {
            Ok(()) if config.bounded && !cancel.is_cancelled() => {
                // The whole input is written to the repartition topic and committed: its
                // ends now are the second stage's.
                match runner::input_ends(kafka, &second_group, &repartition, partitions) {
                    Ok(ends) => {
                        let _ = ends_tx.send(ends);
                    }
                    Err(e) => {
                        cancel.cancel();
                        return Err(e);
                    }
                }
            }
            Ok(()) => {}
            Err(_) => cancel.cancel(),
        }
        result
    };
    let second = async {
        let result = runner::run(
            &second_config,
            kafka,
            &second_topics,
            false,
            &second_stats,
            cancel,
            second_plan,
        )
        .await;
        if result.is_err() {
            cancel.cancel();
        }
        result
    };
    let (first, second) = tokio::join!(first, second);
    tokio::task::block_in_place(|| purging.stop());
    // What the second stage committed last is deleted before the process exits.
    if second.is_ok()
        && let Some(committed) = tokio::task::block_in_place(|| purge.committed())
    {
        purge.delete(&committed).await;
    }
    second_stats.set_phase(if second.is_ok() {
        Phase::Finished
    } else {
        Phase::Failed
    });
    first.and(second)
}

/// Deletes the repartition topic's records below the second stage's committed positions.
struct Purge {
    reader: BaseConsumer<ErrorLog>,
    admin: AdminClient<ErrorLog>,
    topic: String,
    partitions: i32,
}

impl Purge {
    fn new(kafka: &KafkaConfig, group: &str, topic: &str, partitions: i32) -> Result<Self> {
        Ok(Purge {
            reader: kafka::create(
                &kafka::committed_reader_config(kafka, group),
                ErrorLog::new(&kafka.bootstrap_servers),
                kafka,
            )?,
            admin: kafka::create(
                &kafka::admin_config(kafka),
                ErrorLog::new(&kafka.bootstrap_servers),
                kafka,
            )?,
            topic: topic.to_string(),
            partitions,
        })
    }

    /// The second stage's committed positions (blocking: asks the group coordinator);
    /// `None` when there are none yet, or no answer.
    fn committed(&self) -> Option<TopicPartitionList> {
        let mut asked = TopicPartitionList::new();
        for partition in 0..self.partitions {
            let _ = asked.add_partition(&self.topic, partition);
        }
        let committed = self
            .reader
            .committed_offsets(asked, Duration::from_secs(5))
            .ok()?;
        let mut below = TopicPartitionList::new();
        for element in committed.elements() {
            if let rdkafka::Offset::Offset(offset) = element.offset()
                && offset > 0
            {
                let _ = below.add_partition_offset(
                    &self.topic,
                    element.partition(),
                    rdkafka::Offset::Offset(offset),
                );
            }
        }
        (below.count() > 0).then_some(below)
    }

    /// Deletes the records below `committed`.
    async fn delete(&self, committed: &TopicPartitionList) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        if let Err(e) = self.admin.delete_records(committed, &options).await {
            log::debug!("purging {}: {e}", self.topic);
        }
    }
}

/// Every [`PURGE_INTERVAL`], [`Purge`]s on a thread of its own (stopped when dropped).
fn start_purge(purge: Arc<Purge>) -> Result<Periodic> {
    // The thread is no runtime's: it waits on the admin client's answer through the job's.
    let runtime = tokio::runtime::Handle::current();
    Periodic::start("purge", PURGE_INTERVAL, PURGE_INTERVAL, move |stop| {
        if stop.requested() {
            return std::ops::ControlFlow::Break(());
        }
        if let Some(committed) = purge.committed() {
            runtime.block_on(purge.delete(&committed));
        }
        std::ops::ControlFlow::Continue(())
    })
}
