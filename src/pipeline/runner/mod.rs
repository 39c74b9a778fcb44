//! The one Kafka runner: every job, under either guarantee, runs as `parallelism` workers in
//! this process, which is one member of the job's consumer group (named after `--job-name`).
//! A grouped job (a windowed one) runs as two runs of it, one per stage, joined through the
//! repartition topic ([`Plan`], [`crate::pipeline::shuffle`]).
//!
//! **Partitions.** The group coordinator balances the input's partitions over every process
//! of the job: `subscribe`, with `cooperative-sticky` assignment (or the broker's, under
//! KIP-848), so a member joining or leaving moves only the partitions that must move. The
//! process's one consumer gives each of its partitions a queue of its own, read by one
//! worker ([`group`]): one join, one heartbeat and one fetcher per process, whatever its
//! parallelism. Partitions added to the input topic are picked up while the job runs.
//!
//! **Hand-over.** When a partition is revoked, its worker stops reading it, waits (at most
//! [`REVOKE_TIMEOUT`]) for the acknowledgements of its records in flight, commits (see
//! [`crate::pipeline::guarantee`]), and only then releases it ([`group`], the one rebalance
//! callback). A partition that was *lost* (session timeout, fencing) is dropped without a
//! commit.
//!
//! **Guarantees.** A clean scale-up or scale-down (a process started, or stopped with
//! SIGTERM) loses nothing and duplicates nothing: every partition changes hands at a
//! committed position that covers exactly what was written. A `kill -9` of one process
//! loses nothing: at least once, its uncommitted records are read again (duplicates bounded
//! by what it had not committed); exactly once, its open transaction is aborted and read
//! again.
//!
//! **Bounded work.** Each worker is one task running one `select!` loop and never spawns a
//! task per record: the producer's delivery reports come back on the worker's own channel,
//! one message per read batch delivered and one per failure ([`send`], [`batches`]). The job reads at most [`IN_FLIGHT_BUDGET`] records ahead of their
//! acknowledgements and prefetches at most [`PREFETCH_BUDGET_KBYTES`], whatever its
//! parallelism. Acknowledgements are handled before new input, so commits keep up.

mod batches;
mod checkpoint;
mod deliveries;
pub(crate) mod group;
mod handover;
pub(crate) mod offsets;
mod process;
mod queues;
pub(crate) mod send;
mod siblings;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::{Producer, PurgeConfig};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::block_in_place;
use tokio_util::sync::CancellationToken;

use super::guarantee::exactly_once::Transactions;
use super::guarantee::instance;
use super::periodic::Periodic;
use super::{
    DRAIN_TIMEOUT, Guarantee, MemberStatus, Phase, PipelineConfig, STATUS_INTERVAL, Stats,
    StatusLine, Topics, job,
};
use crate::error::{Error, Result};
use crate::kafka::{self, ErrorLog, KafkaConfig};
use group::{GroupConsumer, Member};
use send::{AckRouter, OutputProducer, Sender};
pub(super) use siblings::Siblings;

/// Most records the job reads ahead of their acknowledgements, shared among its workers.
pub const IN_FLIGHT_BUDGET: usize = 15_000;

/// Kilobytes of fetched but unprocessed records the job may hold, shared among the input's
/// partitions.
pub const PREFETCH_BUDGET_KBYTES: usize = 16 * 1024;

/// Longest wait for the acknowledgements of a revoked partition's records before it is
/// released anyway (its new owner then writes them again).
pub const REVOKE_TIMEOUT: Duration = DRAIN_TIMEOUT;

/// How often the input's end offsets are read, for the lag.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// How one run of the runner fits its job: all of it, or one of the two stages of a
/// grouped job (see [`crate::pipeline::shuffle`]).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The stage its workers' job plays.
    pub stage: job::Stage,
    /// Partitions of the output topic that each of the job's broadcasts goes to (the first
    /// stage: the repartition topic's); 0: none.
    pub broadcast_partitions: i32,
    /// `--bounded` with ends given later (the second stage: the repartition topic's, once
    /// the first stage has drained the input); `None`: the input's ends when it starts.
    pub ends_later: Option<tokio::sync::oneshot::Receiver<BTreeMap<i32, i64>>>,
    /// Print the status line (one stage of two prints none).
    pub status_line: bool,
}

impl Plan {
    /// The whole job in one stage.
    pub(crate) fn whole() -> Self {
        Plan {
            status_line: true,
            ..Plan::default()
        }
    }
}

/// Runs `config`'s job on `kafka` until the input ends (`bounded`) or `cancel` fires.
#[allow(clippy::too_many_arguments)] // the job's parts, each used once
pub(super) async fn run(
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
    plan: Plan,
) -> Result<()> {
    let parallelism = config.parallelism.max(1);
    // Fail fast, naming the address, before reading anything.
    let facts =
        kafka::inspect_topics(kafka, &topics.input, &[&topics.output, &topics.dead_letter]).await?;
    if facts.input_partitions == 0 {
        return Err(Error::Kafka(format!(
            "topic {} has no partitions",
            topics.input
        )));
    }
    let (ack_senders, ack_receivers): (Vec<_>, Vec<_>) =
        (0..parallelism).map(|_| unbounded_channel()).unzip();
    // Deliveries counted per worker rather than reported one by one (see `send`).
    let delivered: Vec<Arc<send::Delivered>> = (0..parallelism).map(|_| Arc::default()).collect();
    let exactly_once = matches!(config.guarantee, Guarantee::ExactlyOnce(_));
    let router: Router = {
        let (servers, stats, senders) = (
            kafka.bootstrap_servers.clone(),
            Arc::clone(stats),
            ack_senders.clone(),
        );
        let counted = delivered.clone();
        Arc::new(move || {
            AckRouter::new(
                &servers,
                senders.clone(),
                Arc::clone(&stats),
                counted.clone(),
                exactly_once,
            )
        })
    };
    let (config, claim) = claim_instance(config)?;
    let config = &config;
    // At least once, the workers share one idempotent producer.
    let shared: Option<Arc<OutputProducer>> = match config.guarantee {
        Guarantee::AtLeastOnce => Some(Arc::new(kafka::create(
            &kafka::pipeline_producer_config(kafka, &config.job_name, facts.max_record_bytes),
            router(),
            kafka,
        )?)),
        Guarantee::ExactlyOnce(_) => None,
    };
    log_start(
        config,
        kafka,
        topics,
        facts.input_partitions,
        claim.as_ref(),
    );
    let ends = if config.bounded && plan.ends_later.is_none() {
        input_ends(
            kafka,
            &config.job_name,
            &topics.input,
            facts.input_partitions,
        )?
    } else {
        BTreeMap::new()
    };
    let siblings = Arc::new(Siblings::new(parallelism));
    if config.bounded {
        match plan.ends_later {
            None => siblings.set_ends(ends),
            Some(later) => Siblings::set_ends_later(&siblings, later),
        }
    }
    // librdkafka bounds each split partition queue on its own.
    let prefetch_kbytes =
        (PREFETCH_BUDGET_KBYTES / facts.input_partitions.max(1) as usize).max(1_024);
    // A failing worker stops the others: they drain and commit what was delivered.
    let job_cancel = cancel.child_token();
    let injected = Arc::new(AtomicBool::new(false));
    let parts = Parts {
        config,
        kafka,
        topics,
        print_keys,
        stats,
        siblings: &siblings,
        max_record_bytes: facts.max_record_bytes,
        limits: (
            facts.record_limits.first().copied().flatten(),
            facts.record_limits.get(1).copied().flatten(),
        ),
        instance: claim.as_ref().map(|lock| lock.id.as_str()),
        shared: shared.as_ref(),
        router: &router,
        delivered: &delivered,
        injected: &injected,
        prefetch_kbytes,
        stage: plan.stage,
        broadcast_partitions: plan.broadcast_partitions,
    };
    // Every worker's producer first, then the process's consumer. Exactly once, each
    // producer's `init_transactions` fences its predecessor and takes a while (one after
    // another: side by side, they took longer); joining before they are done would hold
    // partitions that no worker can yet write for.
    let commits = (0..parallelism)
        .map(|id| parts.commit(id))
        .collect::<Result<Vec<_>>>()?;
    let consumer = parts.consumer()?;
    let workers = ack_receivers
        .into_iter()
        .zip(commits)
        .enumerate()
        .map(|(id, (acks, commit))| parts.worker(id, &consumer, acks, commit))
        .collect::<Result<Vec<_>>>()?;
    drop(ack_senders);
    // The group is served from now on: the first poll joins it.
    let group_stop = CancellationToken::new();
    let group = {
        let (consumer, stop, job_cancel) = (
            Arc::clone(&consumer),
            group_stop.clone(),
            job_cancel.clone(),
        );
        let instance = config.group.instance_id.clone();
        tokio::spawn(async move {
            let served = group::serve(consumer, instance, stop).await;
            if served.is_err() {
                job_cancel.cancel();
            }
            served
        })
    };
    let mut handles = Vec::new();
    for worker in workers {
        let job_cancel = job_cancel.clone();
        handles.push(tokio::spawn(async move {
            let (result, closing) = worker.run(&job_cancel).await;
            if result.is_err() {
                job_cancel.cancel();
            }
            (result, closing)
        }));
    }

    let status_stop = CancellationToken::new();
    let mut watcher = watch_end_offsets(kafka, &config.job_name, &topics.input, Arc::clone(stats))?;
    let status = plan
        .status_line
        .then(|| tokio::spawn(print_status(Arc::clone(stats), status_stop.clone())));
    // Stopped: the job drains from now on, whatever its workers are busy with (a commit
    // waiting on the broker, say).
    let draining = {
        let (stats, cancel) = (Arc::clone(stats), cancel.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            if stats.phase() == Phase::Running {
                stats.set_phase(Phase::Draining);
            }
        })
    };

    let mut first_error = None;
    let mut closings = Vec::with_capacity(handles.len());
    for handle in handles {
        let (result, closing) = handle
            .await
            .map_err(|e| Error::Kafka(format!("a worker panicked: {e}")))?;
        closings.push(closing);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    group_stop.cancel();
    match group.await {
        Ok(Err(e)) => {
            // The group's error (fenced, say) is why the workers stopped.
            first_error = Some(e);
        }
        Ok(Ok(())) => {}
        Err(e) => {
            first_error.get_or_insert(Error::Kafka(format!("the group task panicked: {e}")));
        }
    }
    // The consumer closes (librdkafka's close takes a tenth of a second) while the rest of
    // the job is taken down.
    consumer.context().close();
    closings.push(handover::Closing::consumer(consumer));
    let closed_by = tokio::time::Instant::now() + worker::LEAVE_TIMEOUT;
    status_stop.cancel();
    draining.abort();
    // Deliveries abandoned after the drain timeout are dropped rather than retried forever
    // on exit: their records were not committed, so they are read again on restart.
    let producer_closed = shared.map(|producer| {
        tokio::task::spawn_blocking(move || {
            if producer.in_flight_count() > 0 {
                producer.purge(PurgeConfig::default().queue().inflight());
            }
        })
    });
    block_in_place(|| watcher.stop());
    if let Some(status) = status {
        let _ = status.await;
    }
    for closing in closings {
        closing.wait(closed_by).await;
    }
    if let Some(closed) = producer_closed {
        let _ = tokio::time::timeout_at(closed_by, closed).await;
    }
    drop(claim);
    first_error.map_or(Ok(()), Err)
}

/// Makes the context of a producer whose reports go to the workers' channels.
type Router = Arc<dyn Fn() -> AckRouter + Send + Sync>;

/// What every worker of the process is made of.
struct Parts<'a> {
    config: &'a PipelineConfig,
    kafka: &'a KafkaConfig,
    topics: &'a Topics,
    print_keys: bool,
    stats: &'a Arc<Stats>,
    siblings: &'a Arc<Siblings>,
    max_record_bytes: Option<usize>,
    /// The output's and the dead-letter topic's largest records.
    limits: (Option<usize>, Option<usize>),
    /// Exactly once: this process's instance id.
    instance: Option<&'a str>,
    /// At least once: the producer the workers share.
    shared: Option<&'a Arc<OutputProducer>>,
    router: &'a Router,
    /// Each worker's deliveries counted rather than reported.
    delivered: &'a [Arc<send::Delivered>],
    /// Exactly once: the test hook's abort has happened (once per job).
    injected: &'a Arc<AtomicBool>,
    prefetch_kbytes: usize,
    stage: job::Stage,
    broadcast_partitions: i32,
}

impl Parts<'_> {
    /// Worker `id`'s commit strategy and the producer it sends with.
    fn commit(&self, id: usize) -> Result<(worker::Commit, Arc<OutputProducer>)> {
        let (config, kafka) = (self.config, self.kafka);
        match (&config.guarantee, self.shared) {
            (Guarantee::ExactlyOnce(eos), _) => {
                let router = Arc::clone(self.router);
                let tx = Transactions::start(
                    id,
                    eos,
                    &config.job_name,
                    self.instance.unwrap_or_default(),
                    kafka,
                    self.max_record_bytes,
                    Box::new(move || router()),
                    self.stats,
                    Arc::clone(self.injected),
                )?;
                let producer = tx.producer();
                Ok((worker::Commit::ExactlyOnce(Box::new(tx)), producer))
            }
            (Guarantee::AtLeastOnce, Some(shared)) => {
                Ok((worker::Commit::AtLeastOnce, Arc::clone(shared)))
            }
            (Guarantee::AtLeastOnce, None) => {
                Err(Error::Kafka("no producer for the workers".into()))
            }
        }
    }

    /// The process's consumer, subscribed: one member of the group for all its workers.
    fn consumer(&self) -> Result<Arc<GroupConsumer>> {
        let (config, kafka) = (self.config, self.kafka);
        let mut consumer_config = kafka::pipeline_consumer_config(
            kafka,
            &config.job_name,
            &config.group,
            self.prefetch_kbytes,
        );
        if let Guarantee::ExactlyOnce(_) = config.guarantee {
            // Read only committed input: an upstream transactional writer's aborted
            // records are never processed (librdkafka's default, stated).
            consumer_config.set("isolation.level", "read_committed");
        }
        let consumer: Arc<GroupConsumer> = Arc::new(kafka::create(
            &consumer_config,
            Member::new(
                &kafka.bootstrap_servers,
                &self.topics.input,
                config.parallelism.max(1),
            ),
            kafka,
        )?);
        Member::attach(&consumer);
        consumer
            .subscribe(&[self.topics.input.as_str()])
            .map_err(|e| Error::Kafka(kafka::redact(&e.to_string(), kafka)))?;
        Ok(consumer)
    }

    /// Worker `id`: its share of the consumer, with its commit strategy and producer, and
    /// its job.
    fn worker(
        &self,
        id: usize,
        consumer: &Arc<GroupConsumer>,
        acks: UnboundedReceiver<send::Report>,
        (commit, producer): (worker::Commit, Arc<OutputProducer>),
    ) -> Result<worker::Worker> {
        let config = self.config;
        let consumer = Arc::clone(consumer);
        let name = format!("streamkit-pipeline-{}-{id}", config.job_name);
        self.stats.set_member(
            id,
            MemberStatus {
                name: name.clone(),
                partitions: BTreeSet::new(),
            },
        );
        let mut job = config.job.build(self.stats);
        job.set_stage(self.stage);
        Ok(worker::Worker {
            id,
            name,
            consumer,
            sender: Sender {
                producer,
                topics: self.topics.clone(),
                limits: self.limits,
                worker: u16::try_from(id)
                    .map_err(|_| Error::Kafka(format!("worker {id}: too many workers")))?,
                print_keys: self.print_keys,
                broadcast_partitions: self.broadcast_partitions,
                source_header: self.stage == job::Stage::Repartition,
            },
            acks,
            batches: batches::BatchTable::default(),
            emitter: job::Emitter::for_job(job.as_ref()),
            job,
            commit,
            forward_headers: !config.drop_input_headers,
            bounded: config.bounded,
            checkpointing_interval: config.checkpointing_interval,
            max_in_flight: (IN_FLIGHT_BUDGET / config.parallelism.max(1)).max(1_000),
            stats: Arc::clone(self.stats),
            siblings: Arc::clone(self.siblings),
            delivered: self.delivered.get(id).map(Arc::clone).unwrap_or_default(),
            sent: 0,
            uncounted: Default::default(),
        })
    }
}

/// The job's first line: what it reads and writes, how, and where.
fn log_start(
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    partitions: i32,
    claim: Option<&instance::InstanceLock>,
) {
    let guarantee = match claim {
        Some(lock) => format!(
            "exactly-once (transactions every {} ms, transactional ids {}-{}-N)",
            config.checkpointing_interval.as_millis(),
            config.job_name,
            lock.id
        ),
        None => format!(
            "at-least-once, checkpoint every {} ms",
            config.checkpointing_interval.as_millis()
        ),
    };
    let windows = match &config.job.windows {
        Some(w) => format!(
            " ({} windows, out-of-orderness {}, allowed lateness {}, idle timeout {})",
            humantime::format_duration(w.size),
            humantime::format_duration(w.max_out_of_orderness),
            humantime::format_duration(w.allowed_lateness),
            humantime::format_duration(w.idle_timeout),
        ),
        None => String::new(),
    };
    log::info!(
        "job {} ({}): {} ({partitions} partitions) → {}{windows}, dead letters → {}; {} workers in consumer group {} ({} protocol), {guarantee}, at {}",
        config.job_name,
        config.job.name,
        topics.input,
        topics.output,
        topics.dead_letter,
        config.parallelism.max(1),
        config.job_name,
        config.group.protocol.as_str(),
        kafka.bootstrap_servers
    );
}

/// Exactly once: this process's instance id, held under a lock until the job ends, and
/// static membership under it unless told otherwise, so a restarted process takes its
/// members' places (and partitions) at once while its transactional ids fence its
/// predecessor's producers. The config, with the group instance id set.
fn claim_instance(
    config: &PipelineConfig,
) -> Result<(PipelineConfig, Option<instance::InstanceLock>)> {
    let mut config = config.clone();
    let claim = match &config.guarantee {
        Guarantee::ExactlyOnce(eos) => {
            let lock = instance::claim(&eos.state_dir, &config.job_name, &eos.instance)?;
            config
                .group
                .instance_id
                .get_or_insert_with(|| format!("{}-{}", config.job_name, lock.id));
            Some(lock)
        }
        Guarantee::AtLeastOnce => None,
    };
    Ok((config, claim))
}

/// `--bounded` drains the backlog as it is now: its ends, per partition.
pub(crate) fn input_ends(
    kafka: &KafkaConfig,
    job_name: &str,
    input: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, i64>> {
    let client = watermark_client(kafka, job_name)?;
    let mut ends = BTreeMap::new();
    for partition in 0..partitions {
        let (_, high) = block_in_place(|| {
            client.fetch_watermarks(input, partition, kafka::REACHABILITY_TIMEOUT)
        })
        .map_err(|e| Error::Kafka(format!("end offsets of {input}: {e}")))?;
        ends.insert(partition, high);
    }
    Ok(ends)
}

/// Prints the status line every [`STATUS_INTERVAL`] until `stop`.
async fn print_status(stats: Arc<Stats>, stop: CancellationToken) {
    let mut line = StatusLine::new();
    let mut tick = tokio::time::interval(STATUS_INTERVAL / 10);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => line.maybe_print(&stats),
        }
    }
}

/// A client that only asks for metadata and watermarks.
fn watermark_client(
    kafka: &KafkaConfig,
    job_name: &str,
) -> Result<rdkafka::consumer::BaseConsumer<ErrorLog>> {
    kafka::create(
        &kafka::watermark_client_config(kafka, job_name),
        ErrorLog::new(&kafka.bootstrap_servers),
        kafka,
    )
}

/// Every [`LAG_INTERVAL`], asks the cluster for the end offset of each input partition this
/// process owns, on a thread and client of its own (stopped when dropped), so that the
/// workers never wait on the network for status. The partitions are read again each time:
/// they come and go.
fn watch_end_offsets(
    kafka: &KafkaConfig,
    job_name: &str,
    topic: &str,
    stats: Arc<Stats>,
) -> Result<Periodic> {
    let client = watermark_client(kafka, job_name)?;
    let topic = topic.to_string();
    Periodic::start("end-offsets", Duration::ZERO, LAG_INTERVAL, move |stop| {
        for partition in stats.partitions().into_keys() {
            // Each read may wait a second on a cluster that is down.
            if stop.requested() {
                break;
            }
            if let Ok((_, high)) =
                client.fetch_watermarks(&topic, partition, Duration::from_secs(1))
            {
                stats.record_end(partition, high);
            }
        }
        std::ops::ControlFlow::Continue(())
    })
}
