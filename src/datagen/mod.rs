//! `datagen`: website-visit events into a file, stdout or a Kafka topic.
//!
//! Guarantees:
//! - **Exact content.** Values and keys are byte-for-byte what the original generator
//!   writes (see [`crate::schema`]). With a seed and a simulated clock the output is
//!   byte-identical on every run, whatever `threads` is.
//! - **Accounted delivery.** In Kafka mode every event handed to the producer ends as
//!   delivered or as counted in `Summary::delivery_failures`, also after a cancellation:
//!   cancelling stops generation, waits up to `DRAIN_TIMEOUT` (8 s) for outstanding deliveries,
//!   then purges and counts whatever is left as failed. Without a cancellation, a dead
//!   broker ends the run within librdkafka's `message.timeout.ms` plus a few seconds.
//! - **Fail fast.** An unreachable broker or a missing topic is reported, naming the
//!   address, before any event is generated.
//!
//! Limit: delivery is at-least-once per event from the producer's point of view; an
//! event reported failed may still have reached the broker (for example, when its
//! acknowledgement was lost).
//!
//! The public surface is [`main`], the `datagen` program (see the README for its flags).
//!
//! Layout: `run` here; the loop in `run`, the destinations in `sink`, `file_sink` and
//! `kafka_sink`, the encoding in `batch`, dirty data in `dirt`, `/metrics` in `metrics`,
//! the summary in `summary`, `--verify-topic` in `verify`, `--report` in `report`.

mod batch;
mod cli;
mod dirt;
mod file_sink;
pub(crate) mod identity;
mod kafka_sink;
mod metrics;
mod report;
mod run;
mod sink;
mod summary;
mod verify;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

#[cfg(feature = "bench")]
pub(crate) use batch::{EncodedBatch, encode};
pub use cli::main;
pub(crate) use dirt::{Dirt, DirtCounts};
pub(crate) use metrics::LiveCounts;
pub(crate) use summary::{Summary, group_thousands};
pub(crate) use verify::VerifyConfig;
#[cfg(feature = "bench")]
pub(crate) use verify::VerifyReport;

use crate::error::Result;
use crate::generator::{Clock, EventSource, GeneratorConfig};
use crate::kafka::{Compression, KafkaConfig};
use crate::pacing::Pace;
use crate::progress::{Bound, Progress, ProgressMode};
use metrics::MetricsView;
use run::Run;
use sink::{Sent, open_sink};

/// After cancellation, how long outstanding deliveries may take before they are purged.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Where events go.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    /// JSON lines, one event per line; the file is created (with its folders) or truncated.
    File(PathBuf),
    /// JSON lines on stdout.
    Stdout,
    /// One message per event: key `{"event_id", "event_ts"}`, value the event JSON.
    Kafka {
        kafka: KafkaConfig,
        topic: String,
        compression: Compression,
    },
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::File(path) => write!(f, "{}", path.display()),
            Output::Stdout => f.write_str("stdout"),
            Output::Kafka { kafka, topic, .. } => {
                write!(f, "topic {topic} at {}", kafka.bootstrap_servers)
            }
        }
    }
}

/// Everything a run needs; built by the binary from its flags.
#[derive(Debug, Clone)]
pub(crate) struct DatagenConfig {
    pub generator: GeneratorConfig,
    pub clock: Clock,
    /// Stop after this many events.
    pub num_events: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub pace: Pace,
    /// Generator threads; used when the pace is unlimited.
    pub threads: usize,
    pub output: Output,
    pub progress: ProgressMode,
    /// Serve Prometheus metrics at `/metrics` here while running.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Spoil or double a share of the events (`--bad-record-ratio`, `--duplicate-ratio`).
    pub dirt: Option<Dirt>,
    /// Read the pipeline's output while producing, and account for every event (Kafka
    /// output only).
    pub verify: Option<VerifyConfig>,
    /// Write an HTML report here (and its JSON beside it) at the end.
    pub report: Option<PathBuf>,
}

/// Refuses, before anything is generated or written, a run whose files would overwrite
/// each other (the events file, the report and the report's JSON, compared as files) and
/// a report that cannot be written.
pub(crate) fn check_outputs(config: &DatagenConfig) -> Result<()> {
    let Some(report) = &config.report else {
        return Ok(());
    };
    let json = report::json_path(report);
    if json == *report {
        return Err(crate::error::Error::InvalidConfig(format!(
            "--report {}: its JSON goes beside it with the extension .json, which is the report itself; name the report .html",
            report.display()
        )));
    }
    let mut files: Vec<(&str, &std::path::Path)> =
        vec![("--report", report), ("the report's JSON", &json)];
    if let Output::File(path) = &config.output {
        files.insert(0, ("--output", path));
    }
    crate::paths::check_distinct(&files)?;
    crate::paths::check_writable("--report", report)?;
    crate::paths::check_writable("--report (its JSON)", &json)
}

/// Events a run is expected to send, when its count or its rate and duration say: the
/// verification's identity table is sized for them up front rather than grown by doubling
/// (which holds two copies while it grows). At most 25 million (a table of 570 MB); a
/// larger run grows it as it goes.
fn expected_events(config: &DatagenConfig) -> usize {
    let by_rate = match (&config.pace, config.duration) {
        (Pace::Rate(rate), Some(duration)) => Some((rate * duration.as_secs_f64()) as u64),
        _ => None,
    };
    config.num_events.or(by_rate).unwrap_or(0).min(25_000_000) as usize
}

/// Generates events as configured until the count, the duration or `cancel` ends the run.
pub(crate) fn run(config: &DatagenConfig, cancel: &CancellationToken) -> Result<Summary> {
    let source = EventSource::new(&config.generator)?;
    let verify = match (&config.verify, &config.output) {
        (Some(verify), Output::Kafka { kafka, .. }) => Some((kafka, verify)),
        _ => None,
    };
    // Verification: the run's id for the headers, and each event's identity for matching
    // by content, in a table sized for the events expected.
    let tagging = verify.map(|_| verify::Tagging {
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        identities: std::sync::Arc::new(std::sync::Mutex::new(
            identity::IdentityTable::with_capacity(expected_events(config)),
        )),
        dirt: config.dirt,
    });
    let mut sink = open_sink(&config.output, tagging.clone())?;
    // The reader starts at the output's ends before the first event is sent.
    let verifier = match (verify, &tagging) {
        (Some((kafka, verify)), Some(tagging)) => Some(verify::Verifier::start(
            kafka,
            verify,
            &tagging.run_id,
            &tagging.identities,
        )?),
        _ => None,
    };
    let started = Instant::now();
    let bound = match (config.num_events, config.duration) {
        (Some(n), _) => Bound::Events(n),
        (None, Some(d)) => Bound::Time(d),
        (None, None) => Bound::None,
    };
    let mut progress = Progress::new(config.progress, bound, started);
    let live = LiveCounts::default();
    // The metrics server runs on a small runtime of its own, and lives as long as the run:
    // dropping them stops it.
    let _metrics = match config.metrics_addr {
        Some(addr) => {
            // The topic or path only: never the cluster's address (a client property).
            let destination = match &config.output {
                Output::Kafka { topic, .. } => topic.clone(),
                other => other.to_string(),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .thread_name("metrics")
                .build()
                .map_err(|e| crate::error::Error::Listen {
                    what: "metrics",
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
            let view = MetricsView::new(
                &live,
                &destination,
                sink.latency(),
                config.pace.clone(),
                started,
            );
            let server =
                crate::web::serve("metrics", addr, std::sync::Arc::new(view), runtime.handle())?;
            log::info!("metrics at http://{}/metrics (charts at /)", server.addr());
            Some((server, runtime))
        }
        None => None,
    };
    // `--report`: a point a second, from the start to the end of the verification.
    let sampler = config.report.as_ref().map(|_| {
        report::Sampler::start(
            started,
            config.pace.clone(),
            live.clone(),
            sink.latency(),
            verifier.as_ref().map(verify::Verifier::live),
        )
    });
    let run = Run {
        config,
        source: &source,
        cancel,
        started,
        deadline: config.duration.and_then(|d| started.checked_add(d)),
        live: &live,
        last_report: std::sync::Mutex::new((started, 0)),
        dirt: std::sync::Mutex::new(DirtCounts::default()),
    };
    let generated = if config.threads > 1 && config.pace == Pace::Unlimited {
        run.parallel(sink.as_mut(), &mut progress)
    } else {
        run.sequential(sink.as_mut(), &mut progress)
    };
    // Flush what was handed over even when generation failed: nothing is left unaccounted.
    let delivery = sink.finish(cancel);
    run.record(sink.as_ref(), Sent::default());
    progress.finish();
    let latency = sink.latency().map(|l| l.run_summary());
    let (sent, delivery) = (generated?, delivery?);
    let dirt = run.dirt.lock().map(|d| d.clone()).unwrap_or_default();
    // The run's time, without the verification's wait for stragglers.
    let elapsed = started.elapsed();
    let verification = match verifier {
        Some(verifier) => {
            let events = sent.events.saturating_sub(dirt.duplicates);
            Some(verifier.finish(events, config.dirt)?)
        }
        None => None,
    };
    let points = sampler.map(report::Sampler::finish).unwrap_or_default();
    let summary = Summary {
        report_error: None,
        latency,
        dirt,
        verification,
        events: sent.events,
        bytes: sent.bytes,
        elapsed,
        delivery_failures: delivery.failures,
        first_failure: delivery.first_failure,
        destination: config.output.to_string(),
    };
    let mut summary = summary;
    if let Some(path) = &config.report {
        // A report that fails to write still leaves the summary to print.
        match report::write(path, &summary, &points) {
            Ok(()) => log::info!(
                "report: {} and {}",
                path.display(),
                report::json_path(path).display()
            ),
            Err(e) => summary.report_error = Some(e.to_string()),
        }
    }
    Ok(summary)
}
