//! The job's dashboard, in the manner of the Flink UI: the page at `/`, the same data as
//! JSON at `/api/job` (field names documented in the README and kept stable), and
//! Prometheus metrics at `/metrics`. Its charts draw the last 15 minutes, one point a
//! second, kept in a bounded [`History`] and served at `/api/job/history`: records/s in and
//! out, dead letters/s, consumer lag (total and per partition), the longest commit of each
//! second and the end-to-end latency (p50, p99). `/topics` browses the job's cluster (see
//! [`crate::browse`]); in file mode it says there are no topics.
//!
//! It shows what the job does, never how it connects: no librdkafka property value, not
//! even the bootstrap address, appears anywhere.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Cluster, PartitionStatus, PipelineConfig, Source, Stats, Totals};
use crate::browse::TopicBrowser;
use crate::history::{History, Point};
use crate::web::{Topics, View, encode_samples, metrics_registry, render_metrics};

pub(super) struct JobView {
    name: String,
    guarantee: &'static str,
    /// (consumer-group protocol) in Kafka modes.
    group: Option<&'static str>,
    mode: &'static str,
    parallelism: usize,
    topics: Option<(String, String, String)>,
    started: Instant,
    started_at: SystemTime,
    stats: Arc<Stats>,
    /// Last sample of records out per operator, for rates.
    sample: Mutex<(Instant, Vec<u64>, Vec<f64>)>,
    /// When the history's last point was taken (commits after it go in the next one).
    last_point: Mutex<SystemTime>,
    history: History,
    /// `None`: the topic browser is off.
    browser: Option<Arc<TopicBrowser>>,
    /// `/metrics`: build info, the commit-duration histogram and [`JobMetrics`].
    registry: Registry,
}

impl JobView {
    pub(super) fn new(
        config: &PipelineConfig,
        stats: Arc<Stats>,
        browser: Option<Arc<TopicBrowser>>,
    ) -> Self {
        let (mode, parallelism, topics) = match &config.source {
            Source::Files(_) => ("files", 1, None),
            Source::Kafka {
                cluster, topics, ..
            } => (
                match cluster {
                    Cluster::Embedded(_) => "embedded cluster",
                    Cluster::External(_) => "Kafka cluster",
                },
                config.parallelism,
                Some((
                    topics.input.clone(),
                    topics.output.clone(),
                    topics.dead_letter.clone(),
                )),
            ),
        };
        let started = Instant::now();
        let mut registry = metrics_registry();
        registry.register(
            "streamkit_pipeline_checkpoint_duration_seconds",
            "Duration of commits of delivered positions",
            stats.checkpoint_durations().0,
        );
        registry.register(
            "streamkit_pipeline_end_to_end_latency_seconds",
            "From an input record's timestamp to its output's acknowledgement (one record in eight)",
            stats.end_to_end().prometheus(),
        );
        registry.register_collector(Box::new(JobMetrics {
            job: config.job_name.clone(),
            guarantee: config.guarantee.as_str(),
            input: topics
                .as_ref()
                .map_or_else(|| "file".to_string(), |t| t.0.clone()),
            files: topics.is_none(),
            started,
            stats: Arc::clone(&stats),
        }));
        if matches!(config.guarantee, super::Guarantee::ExactlyOnce(_)) {
            registry.register(
                "streamkit_pipeline_transaction_duration_seconds",
                "From a transaction's first record to its commit",
                stats.transactions().durations(),
            );
        }
        JobView {
            name: config.job_name.clone(),
            guarantee: config.guarantee.as_str(),
            group: topics.as_ref().map(|_| config.group.protocol.as_str()),
            mode,
            parallelism,
            topics,
            started,
            started_at: SystemTime::now(),
            stats,
            sample: Mutex::new((started, Vec::new(), Vec::new())),
            last_point: Mutex::new(SystemTime::now()),
            history: History::default(),
            browser,
            registry,
        }
    }

    fn snapshot(&self) -> JobSnapshot {
        let counts = self.stats.operator_counts(self.topics.is_none());
        let rates = self.sample.lock().map(|s| s.2.clone()).unwrap_or_default();
        let operators = counts
            .iter()
            .enumerate()
            .map(|(i, count)| OperatorSnapshot {
                name: count.name,
                records_in: count.records_in,
                records_out: count.records_out,
                rate_per_second: rates.get(i).copied().unwrap_or(0.0),
            })
            .collect();
        let partitions = partition_snapshots(&self.stats);
        let repartition = self.stats.downstream().map(|down| RepartitionSnapshot {
            topic: down.topic.clone(),
            group: down.group.clone(),
            lag: down.stats.lag(),
            partitions: partition_snapshots(&down.stats),
        });
        let checkpoints = self
            .stats
            .checkpoints()
            .into_iter()
            .rev()
            .map(|c| CheckpointSnapshot {
                completed_at_ms: epoch_ms(c.at),
                duration_ms: c.duration.as_secs_f64() * 1000.0,
                offsets: c
                    .positions
                    .iter()
                    .map(|&(partition, offset)| OffsetSnapshot { partition, offset })
                    .collect(),
            })
            .collect();
        let dead_letters = self
            .stats
            .rejections()
            .into_iter()
            .map(|(kind, r)| DeadLetterSnapshot {
                kind: kind.as_str(),
                count: r.count,
                last_reason: r.last_reason,
            })
            .collect();
        let members = self
            .stats
            .members()
            .into_values()
            .map(|m| MemberSnapshot {
                member: m.name,
                partitions: m.partitions.into_iter().collect(),
            })
            .collect();
        let rebalances = self
            .stats
            .rebalances()
            .into_iter()
            .rev()
            .map(|r| RebalanceSnapshot {
                at_ms: epoch_ms(r.at),
                member: r.member,
                assigned: r.assigned,
                revoked: r.revoked,
                lost: r.lost,
                duration_ms: r.duration.as_secs_f64() * 1000.0,
            })
            .collect();
        JobSnapshot {
            job: JobInfo {
                name: self.name.clone(),
                state: self.stats.phase().as_str(),
                mode: self.mode,
                parallelism: self.parallelism,
                delivery_guarantee: self.guarantee,
                transactions: (self.guarantee == "exactly-once").then(|| TransactionSnapshot {
                    committed: Stats::get(&self.stats.transactions().committed),
                    aborted: Stats::get(&self.stats.transactions().aborted),
                }),
                started_at_ms: epoch_ms(self.started_at),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
                input: self.topics.as_ref().map(|t| t.0.clone()),
                output: self.topics.as_ref().map(|t| t.1.clone()),
                dead_letter: self.topics.as_ref().map(|t| t.2.clone()),
                group: self.group.map(|protocol| GroupInfo {
                    id: self.name.clone(),
                    protocol,
                    rebalances: self.stats.rebalance_count(),
                    assigned_partitions: self.stats.assigned_partitions(),
                }),
                undelivered: self.stats.totals().in_flight,
                problem: self.stats.failure(),
            },
            members,
            rebalances,
            operators,
            partitions,
            checkpoints,
            dead_letters,
            totals: self.stats.totals(),
            windows: self.stats.windows(),
            repartition,
        }
    }
}

impl JobView {
    /// The history's point for now, from this second's operator `rates`.
    fn point(&self, rates: &[f64]) -> Point {
        let now = SystemTime::now();
        let since = self
            .last_point
            .lock()
            .map(|mut last| std::mem::replace(&mut *last, now))
            .unwrap_or(now);
        // The longest commit completed since the last point.
        let commit_ms = self
            .stats
            .checkpoints()
            .iter()
            .filter(|c| c.at > since)
            .map(|c| c.duration.as_secs_f64() * 1000.0)
            .reduce(f64::max);
        let latency = self.stats.end_to_end().take_live();
        let partitions = self.stats.partitions();
        let lag = self.stats.lag();
        Point {
            t_ms: epoch_ms(now),
            values: vec![
                ("records_in_per_second", rates.first().copied()),
                // The write, then the dead letters, close the chain.
                (
                    "records_out_per_second",
                    rates.len().checked_sub(2).map(|i| rates[i]),
                ),
                ("dead_letters_per_second", rates.last().copied()),
                ("lag_records", lag.map(|l| l as f64)),
                ("commit_duration_ms", commit_ms),
                ("end_to_end_latency_p50_ms", latency.ms(|l| l.p50)),
                ("end_to_end_latency_p99_ms", latency.ms(|l| l.p99)),
            ],
            partitions: partitions
                .iter()
                .map(|(&partition, status)| (partition, status.lag().map(|l| l as f64)))
                .collect(),
        }
    }
}

impl View for JobView {
    fn page(&self) -> Option<&'static str> {
        Some(include_str!("dashboard.html"))
    }

    fn api(&self) -> Option<String> {
        serde_json::to_string(&self.snapshot()).ok()
    }

    fn history(&self) -> Option<String> {
        serde_json::to_string(&self.history.columns()).ok()
    }

    fn tick(&self) {
        let counts = self.stats.operator_counts(self.topics.is_none());
        let Ok(mut sample) = self.sample.lock() else {
            return;
        };
        let now = Instant::now();
        let seconds = now.duration_since(sample.0).as_secs_f64();
        let rates: Vec<f64> = counts
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let before = sample.1.get(i).copied().unwrap_or(0);
                crate::history::rate(count.records_out, before, seconds)
            })
            .collect();
        *sample = (
            now,
            counts.iter().map(|c| c.records_out).collect(),
            rates.clone(),
        );
        drop(sample);
        self.history.push(self.point(&rates));
    }

    fn topics(&self) -> Topics {
        match (&self.topics, &self.browser) {
            (None, _) => Topics::None("This job reads and writes files: there are no topics."),
            (Some(_), None) => Topics::Absent,
            (Some(_), Some(browser)) => Topics::Browse(Arc::clone(browser)),
        }
    }

    fn metrics(&self) -> String {
        render_metrics(&self.registry)
    }
}

/// Milliseconds since the epoch (0 before it).
fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The job's Prometheus families, read from its [`Stats`] at each scrape.
#[derive(Debug)]
struct JobMetrics {
    job: String,
    guarantee: &'static str,
    /// The input topic, or `file`.
    input: String,
    /// File mode: the read and the write are named for files.
    files: bool,
    started: Instant,
    stats: Arc<Stats>,
}

impl Collector for JobMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let job = self.job.as_str();
        let counts = self.stats.operator_counts(self.files);
        encode_samples(
            &mut encoder,
            "streamkit_pipeline_records",
            "Records into and out of each operator.",
            MetricType::Counter,
            counts.iter().flat_map(|count| {
                [("in", count.records_in), ("out", count.records_out)].map(|(direction, n)| {
                    (
                        [
                            ("job", job),
                            ("operator", count.label),
                            ("direction", direction),
                        ],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        encode_samples(
            &mut encoder,
            "streamkit_pipeline_dead_letters",
            "Records sent to the dead-letter destination, by kind.",
            MetricType::Counter,
            self.stats.rejections().iter().map(|(kind, r)| {
                (
                    [("job", job), ("kind", kind.as_str())],
                    ConstCounter::new(r.count),
                )
            }),
        )?;
        // The input's partitions, and a grouped job's repartition topic's (its second stage).
        let mut read: Vec<(String, std::collections::BTreeMap<i32, PartitionStatus>)> =
            vec![(self.input.clone(), self.stats.partitions())];
        if let Some(down) = self.stats.downstream() {
            read.push((down.topic.clone(), down.stats.partitions()));
        }
        type Pick = fn(&PartitionStatus) -> Option<i64>;
        let families: [(&str, &str, Pick); 3] = [
            (
                "streamkit_pipeline_partition_lag_records",
                "Records between the job's position and the partition's end.",
                PartitionStatus::lag,
            ),
            (
                "streamkit_pipeline_partition_committed_offset",
                "Next offset the job resumes from, per input partition.",
                |p| p.committed,
            ),
            (
                "streamkit_pipeline_partition_end_offset",
                "End offset (high watermark) per input partition.",
                |p| p.end,
            ),
        ];
        for (name, help, pick) in families {
            encode_samples(
                &mut encoder,
                name,
                help,
                MetricType::Gauge,
                read.iter().flat_map(|(topic, partitions)| {
                    partitions.iter().filter_map(move |(partition, status)| {
                        pick(status).map(|value| {
                            (
                                [
                                    ("job", job.to_string()),
                                    ("topic", topic.clone()),
                                    ("partition", partition.to_string()),
                                ],
                                ConstGauge::new(value),
                            )
                        })
                    })
                }),
            )?;
        }
        encode_samples(
            &mut encoder,
            "streamkit_pipeline_rebalances",
            "Assignments and revocations of this process's workers by the consumer group.",
            MetricType::Counter,
            [(
                [("job", job)],
                ConstCounter::new(self.stats.rebalance_count()),
            )],
        )?;
        encode_samples(
            &mut encoder,
            "streamkit_pipeline_assigned_partitions",
            "Input partitions assigned to this process's workers.",
            MetricType::Gauge,
            [(
                [("job", job)],
                ConstGauge::new(self.stats.assigned_partitions() as i64),
            )],
        )?;
        if let Some(windows) = self.stats.windows() {
            let seconds = |ms: i64| ms as f64 / 1000.0;
            encode_samples(
                &mut encoder,
                "streamkit_pipeline_watermark_seconds",
                "Event-time watermark (seconds since the epoch): the job's, and each input partition's.",
                MetricType::Gauge,
                windows
                    .watermark_ms
                    .map(|w| (String::new(), seconds(w)))
                    .into_iter()
                    .chain(windows.partitions.iter().filter_map(|p| {
                        p.watermark_ms
                            .map(|w| (p.partition.to_string(), seconds(w)))
                    }))
                    .map(|(partition, value)| {
                        let mut labels = vec![("job", job.to_string())];
                        if !partition.is_empty() {
                            labels.push(("partition", partition));
                        }
                        (labels, ConstGauge::new(value))
                    }),
            )?;
            encode_samples(
                &mut encoder,
                "streamkit_pipeline_open_windows",
                "Event-time windows not yet fired.",
                MetricType::Gauge,
                [([("job", job)], ConstGauge::new(windows.open_windows as i64))],
            )?;
            encode_samples(
                &mut encoder,
                "streamkit_pipeline_late_events",
                "Events for windows that had fired, dead-lettered as late.",
                MetricType::Counter,
                [([("job", job)], ConstCounter::new(windows.late))],
            )?;
        }
        encode_samples(
            &mut encoder,
            "streamkit_pipeline_processing_guarantee",
            "The job's processing guarantee (always 1).",
            MetricType::Gauge,
            [(
                [("job", job), ("guarantee", self.guarantee)],
                ConstGauge::new(1i64),
            )],
        )?;
        if self.guarantee == "exactly-once" {
            let tx = self.stats.transactions();
            encode_samples(
                &mut encoder,
                "streamkit_pipeline_transactions",
                "Transactions ended, by outcome.",
                MetricType::Counter,
                [
                    ("committed", Stats::get(&tx.committed)),
                    ("aborted", Stats::get(&tx.aborted)),
                ]
                .map(|(outcome, n)| ([("job", job), ("outcome", outcome)], ConstCounter::new(n))),
            )?;
        }
        encode_samples(
            &mut encoder,
            "streamkit_pipeline_uptime_seconds",
            "Seconds since the job started.",
            MetricType::Gauge,
            [(
                [("job", job)],
                ConstGauge::new(self.started.elapsed().as_secs_f64()),
            )],
        )
    }
}

/// `/api/job`. Field names are part of the interface (see the README).
#[derive(Debug, Serialize)]
struct JobSnapshot {
    job: JobInfo,
    members: Vec<MemberSnapshot>,
    rebalances: Vec<RebalanceSnapshot>,
    operators: Vec<OperatorSnapshot>,
    partitions: Vec<PartitionSnapshot>,
    checkpoints: Vec<CheckpointSnapshot>,
    dead_letters: Vec<DeadLetterSnapshot>,
    totals: Totals,
    /// traffic-agg: watermarks and open windows (`null` for the other jobs).
    windows: Option<crate::windows::WindowStatus>,
    /// A windowed job on Kafka: its second stage, reading the repartition topic (`null`
    /// for a job in one stage).
    repartition: Option<RepartitionSnapshot>,
}

/// A grouped job's second stage: the repartition topic it reads, as its group, and its lag.
#[derive(Debug, Serialize)]
struct RepartitionSnapshot {
    topic: String,
    group: String,
    lag: Option<i64>,
    partitions: Vec<PartitionSnapshot>,
}

/// The partitions `stats` reads, with their positions and lag.
fn partition_snapshots(stats: &Stats) -> Vec<PartitionSnapshot> {
    stats
        .partitions()
        .into_iter()
        .map(|(partition, p)| PartitionSnapshot {
            partition,
            committed_offset: p.committed,
            end_offset: p.end,
            lag: p.lag(),
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct JobInfo {
    name: String,
    state: &'static str,
    mode: &'static str,
    parallelism: usize,
    delivery_guarantee: &'static str,
    /// Exactly-once: transactions committed and aborted (`null` otherwise).
    transactions: Option<TransactionSnapshot>,
    started_at_ms: u64,
    uptime_seconds: f64,
    input: Option<String>,
    output: Option<String>,
    dead_letter: Option<String>,
    /// The job's consumer group, in Kafka modes.
    group: Option<GroupInfo>,
    /// Records read and neither written nor dead-lettered yet (deliveries in flight, or
    /// stuck).
    undelivered: u64,
    /// Why the job is stopping, when something outside it stops it (a deleted topic).
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct TransactionSnapshot {
    committed: u64,
    aborted: u64,
}

#[derive(Debug, Serialize)]
struct GroupInfo {
    id: String,
    protocol: &'static str,
    rebalances: u64,
    assigned_partitions: usize,
}

#[derive(Debug, Serialize)]
struct MemberSnapshot {
    member: String,
    partitions: Vec<i32>,
}

#[derive(Debug, Serialize)]
struct RebalanceSnapshot {
    at_ms: u64,
    member: String,
    assigned: Vec<i32>,
    revoked: Vec<i32>,
    lost: bool,
    duration_ms: f64,
}

#[derive(Debug, Serialize)]
struct OperatorSnapshot {
    name: &'static str,
    records_in: u64,
    records_out: u64,
    rate_per_second: f64,
}

#[derive(Debug, Serialize)]
struct PartitionSnapshot {
    partition: i32,
    committed_offset: Option<i64>,
    end_offset: Option<i64>,
    lag: Option<i64>,
}

#[derive(Debug, Serialize)]
struct CheckpointSnapshot {
    completed_at_ms: u64,
    duration_ms: f64,
    offsets: Vec<OffsetSnapshot>,
}

#[derive(Debug, Serialize)]
struct OffsetSnapshot {
    partition: i32,
    offset: i64,
}

#[derive(Debug, Serialize)]
struct DeadLetterSnapshot {
    kind: &'static str,
    count: u64,
    last_reason: String,
}
