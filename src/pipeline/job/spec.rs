//! What the runner starts: a [`JobSpec`] (a job's name and how to make one instance per
//! worker), for a job of one's own or one of the seed repository's ([`JobKind`]).

use std::sync::Arc;

use super::{Job, WindowConfig, kafka_io, traffic_agg, user_traffic};
use crate::pipeline::Stats;

/// A job the runner can start: its name and how to make one instance per worker.
#[derive(Clone)]
pub(crate) struct JobSpec {
    /// The default `--job-name`.
    pub name: String,
    make: Arc<dyn Fn() -> Box<dyn Job> + Send + Sync>,
    /// The job's windows, named in its first log line.
    pub windows: Option<WindowConfig>,
    /// Read from one instance: see [`Job::stateful`] and [`Job::aggregates`].
    pub stateful: bool,
    pub aggregates: bool,
    /// Groups by a key of its own: see [`Job::grouped`].
    pub grouped: bool,
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

impl JobSpec {
    /// A job made by `make`, one instance per worker.
    pub(crate) fn new<J, F>(name: &str, windows: Option<WindowConfig>, make: F) -> Self
    where
        J: Job + 'static,
        F: Fn() -> J + Send + Sync + 'static,
    {
        let probe = make();
        JobSpec {
            name: name.to_string(),
            windows: windows.filter(|_| probe.stateful()),
            stateful: probe.stateful(),
            aggregates: probe.aggregates(),
            grouped: probe.grouped(),
            make: Arc::new(move || Box::new(make()) as Box<dyn Job>),
        }
    }

    /// One of the jobs of the seed repository.
    pub(crate) fn builtin(kind: JobKind) -> Self {
        match kind {
            JobKind::KafkaIo => JobSpec::new(kind.name(), None, kafka_io::KafkaIo::default),
            JobKind::TrafficAgg(windows) => JobSpec::new(kind.name(), Some(windows), move || {
                traffic_agg::traffic_agg(&windows)
            }),
            JobKind::UserTraffic => {
                JobSpec::new(kind.name(), None, user_traffic::UserTraffic::default)
            }
        }
    }

    /// A fresh instance (one per worker); its operators are the ones `stats` shows.
    pub(crate) fn build(&self, stats: &Stats) -> Box<dyn Job> {
        let job = (self.make)();
        stats.set_operators(job.operators(), self.aggregates);
        job
    }
}

/// The jobs of the seed repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// `kafka_io.py`: parse each event and republish it (the default).
    KafkaIo,
    /// `traffic_agg.py`: page views per user in event-time windows.
    TrafficAgg(WindowConfig),
    /// `user_traffic.py`: page views and bytes per user, written at the end of the input.
    UserTraffic,
}

impl JobKind {
    /// The name the original gives the job (the default `--job-name`).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            JobKind::KafkaIo => "kafka-io",
            JobKind::TrafficAgg(_) => "traffic-agg",
            JobKind::UserTraffic => "user-traffic",
        }
    }
}
