//! `pipeline`: the streaming job, from `website-visit` to `website-out`, losing nothing.
//!
//! A [job] (the article's `kafka-io`, the seed repository's `traffic-agg` and
//! `user-traffic`, or one of your own through [`main_with`]) runs on Kafka (an embedded
//! mock cluster, the local cluster, or any address) or on files, with a dead-letter branch
//! ([`dead_letter`]) for records it cannot process. On Kafka, every job runs on one runner
//! (`runner`) whose commit strategy is the guarantee (`guarantee`):
//! - **at-least-once** (the default): an input position is committed only after the
//!   output (or dead letter) of every record before it in its partition has been
//!   acknowledged by the broker. A crash at any moment loses nothing; records in flight
//!   are read and written again on restart (duplicates are possible, loss is not);
//! - **exactly-once**: a transaction per interval holds the outputs, the dead letters, the
//!   input positions and the job's state.
//!
//! Every record read is either written (or counted), dead-lettered, or still in flight:
//! the summary reconciles them. No record stops its partition: one the output cannot take
//! goes to the dead letters.
//!
//! **Bounded shutdown.** After cancellation the job drains for at most [`DRAIN_TIMEOUT`];
//! a final commit that gets no answer by then is abandoned with a line naming what is read
//! again, so the process exits within the drain timeout plus a second or two.
//!
//! **Scale-out** comes from Kafka's consumer-group protocol: every process with the same
//! job name is a member of one group, its workers share the process's partitions, and
//! partitions move between processes with a safe hand-over (see `runner`). A clean scale-up or scale-down loses and duplicates
//! nothing; a `kill -9` of one process loses nothing. Partitions added to the input are
//! picked up while the job runs.

mod cli;
mod dashboard;
pub mod dead_letter;
pub(crate) mod guarantee;
mod io;
pub mod job;
mod periodic;
mod program;
mod runner;
pub(crate) mod shuffle;
mod stats;
mod summary;
mod watch;

pub use cli::main;
pub(crate) use guarantee::ExactlyOnce;
pub(crate) use guarantee::instance::InstanceId;
pub use io::files::MAX_LINE_BYTES;
pub(crate) use io::files::check_distinct as check_files;
pub use program::{JobConfig, Program, main_with};
pub use runner::IN_FLIGHT_BUDGET;
pub(crate) use stats::*;
pub(crate) use summary::Summary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::KafkaConfig;

/// After cancellation, how long in-flight deliveries may take before the job exits anyway
/// (their records are then read again on restart).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// How long the job's runtime waits for its last tasks when the job ends.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// How often the status line is printed.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The job's settings, named like the original's options.
#[derive(Debug, Clone)]
pub(crate) struct PipelineConfig {
    /// Which job: the article's, one of the seed repository's aggregations, or yours.
    pub job: job::JobSpec,
    /// At-least-once (the default), or exactly-once with transactions.
    pub guarantee: Guarantee,
    /// Also the consumer group under which positions are committed.
    pub job_name: String,
    /// Workers in this process; they share its one membership of the job's consumer group.
    pub parallelism: usize,
    /// How the workers join the job's consumer group.
    pub group: crate::kafka::GroupConfig,
    /// How often delivered positions are committed.
    pub checkpointing_interval: Duration,
    /// Stop once every input partition has been read to its end.
    pub bounded: bool,
    pub source: Source,
    /// Serve the dashboard, the JSON and /metrics here (the next free port if taken).
    pub ui: Option<std::net::SocketAddr>,
    /// The dashboard's topic browser: on, off, or (`None`) on only when the dashboard
    /// listens on a loopback address, since it shows every topic's data unauthenticated.
    pub topic_browser: Option<bool>,
    /// The topic browser shows the cluster's internal topics (`__consumer_offsets`, ...).
    pub browse_internal_topics: bool,
    /// Test hook: kafka-io at least once writes no input header to its output and dead
    /// letters, as Flink's and Beam's Kafka sinks do (for `datagen --verify-topic`'s
    /// matching by content).
    pub drop_input_headers: bool,
    /// A grouped job on Kafka runs in two stages through `<job-name>-repartition` (see
    /// [`shuffle`]); `false`: in one, its input being keyed by the grouping key already.
    pub repartition: bool,
    /// Partitions of the repartition topic when the job creates it (`None`: the input's).
    pub repartition_partitions: Option<i32>,
}

/// `--processing-guarantee`, named as in Kafka Streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Guarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce(ExactlyOnce),
}

impl Guarantee {
    pub fn as_str(&self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce(_) => "exactly-once",
        }
    }
}

/// Where records come from and go to.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Kafka {
        cluster: Cluster,
        topics: Topics,
        print_keys: bool,
    },
    Files(FileConfig),
}

/// Which Kafka cluster.
#[derive(Debug, Clone)]
pub(crate) enum Cluster {
    /// An in-process mock cluster fed by an in-process generator: the article's demo.
    Embedded(DemoConfig),
    /// A real cluster (the local one with `--use-own`, or any address).
    External(KafkaConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DemoConfig {
    pub users: u32,
    /// Events per second fed into the input topic.
    pub rate: f64,
    /// `-X` properties, applied to the job's clients.
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topics {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
}

/// File mode: JSON lines in, value JSON lines out, bad lines to a dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileConfig {
    /// `None` reads stdin.
    pub input: Option<PathBuf>,
    /// `None` writes stdout.
    pub output: Option<PathBuf>,
    pub dead_letter: PathBuf,
}

/// Runs the job until its input ends (`bounded`, files) or `cancel` fires.
pub(crate) fn run(config: &PipelineConfig, cancel: &CancellationToken) -> Result<Summary> {
    run_with_stats(config, &Arc::new(Stats::default()), cancel)
}

/// [`run`], updating `stats` as it goes (for a caller that watches the job).
pub(crate) fn run_with_stats(
    config: &PipelineConfig,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<Summary> {
    let started = Instant::now();
    // One runtime for the job: its workers (in Kafka modes) and its dashboard (in every mode).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pipeline")
        .build()
        .map_err(|e| Error::Kafka(format!("cannot start the runtime: {e}")))?;
    // The topic browser reads the job's cluster; the embedded one is known once it runs.
    let browser = Arc::new(crate::browse::TopicBrowser::new(
        &format!("streamkit-pipeline-{}-browser", config.job_name),
        config.browse_internal_topics,
    ));
    if let Source::Kafka {
        cluster: Cluster::External(kafka),
        ..
    } = &config.source
    {
        browser.connect(kafka.clone());
    }
    // The dashboard lives as long as the job: dropping it stops the server.
    let dashboard = match config.ui {
        Some(addr) => {
            let browsing = config
                .topic_browser
                .unwrap_or_else(|| addr.ip().is_loopback());
            let server = crate::web::serve(
                "dashboard",
                addr,
                Arc::new(dashboard::JobView::new(
                    config,
                    Arc::clone(stats),
                    browsing.then(|| Arc::clone(&browser)),
                )),
                runtime.handle(),
            )?;
            let topics = if browsing {
                "topics at /topics"
            } else if config.topic_browser.is_none() {
                "topic browser off: it shows every topic's data unauthenticated, and this address is not loopback (--topic-browser turns it on)"
            } else {
                "topic browser off"
            };
            log::info!(
                "dashboard at http://{}/ ({topics}; JSON at /api/job, Prometheus at /metrics)",
                server.addr()
            );
            Some(server)
        }
        None => None,
    };
    stats.set_phase(Phase::Running);
    let result = match &config.source {
        Source::Files(files) => io::files::run(files, &config.job, stats, cancel),
        Source::Kafka {
            cluster: Cluster::External(kafka),
            topics,
            print_keys,
        } => run_kafka(&runtime, config, kafka, topics, *print_keys, stats, cancel),
        Source::Kafka {
            cluster: Cluster::Embedded(demo),
            topics,
            print_keys,
        } => io::embedded::run(
            &runtime,
            config,
            demo,
            topics,
            *print_keys,
            stats,
            &browser,
            cancel,
        ),
    };
    stats.set_phase(if result.is_ok() {
        Phase::Finished
    } else {
        Phase::Failed
    });
    drop(dashboard);
    // Whatever is still stuck (a client waiting on a broker that is gone) does not hold the
    // exit back.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result?;
    Ok(Summary::from_stats(stats, started.elapsed()))
}

/// Runs the job on a Kafka cluster (the one runner, whatever the job and the guarantee),
/// its topics watched (see [`watch`]).
#[allow(clippy::too_many_arguments)] // the job's parts, each used once
pub(crate) fn run_kafka(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    kafka: &KafkaConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    let cancel = cancel.child_token();
    let watch = watch::start(
        kafka,
        &config.job_name,
        topics,
        Arc::clone(stats),
        cancel.clone(),
    )?;
    let result = if config.job.grouped && config.repartition {
        runtime.block_on(shuffle::run(config, kafka, topics, stats, &cancel))
    } else {
        runtime.block_on(runner::run(
            config,
            kafka,
            topics,
            print_keys,
            stats,
            &cancel,
            runner::Plan::whole(),
        ))
    };
    drop(watch);
    // A deleted topic is the reason, whatever the engine made of the stop.
    match stats.failure() {
        Some(reason) => Err(Error::Kafka(reason)),
        None => result,
    }
}
