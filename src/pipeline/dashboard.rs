//! The job's dashboard, in the manner of the Flink UI: the page at `/`, the same data as
//! JSON at `/api/job` (field names documented in the README and kept stable), and
//! Prometheus metrics at `/metrics`.
//!
//! It shows what the job does, never how it connects: no librdkafka property value, not
//! even the bootstrap address, appears anywhere.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{CHECKPOINT_BUCKETS, Cluster, PartitionStatus, PipelineConfig, Source, Stats, Totals};
use crate::web::{Exposition, View};

/// The operators, in order, as the original Beam job names them.
const OPERATORS: [&str; 6] = [
    "Read from Kafka",
    "Decode messages",
    "Parse elements",
    "Create messages",
    "Write to Kafka",
    "Dead letters",
];
/// The same, as Prometheus label values.
const OPERATOR_LABELS: [&str; 6] = [
    "read",
    "decode",
    "parse",
    "create_messages",
    "write",
    "dead_letter",
];

pub(super) struct JobView {
    name: String,
    mode: &'static str,
    parallelism: usize,
    topics: Option<(String, String, String)>,
    started: Instant,
    started_at: SystemTime,
    stats: Arc<Stats>,
    /// Last sample of records out per operator, for rates.
    sample: Mutex<(Instant, [u64; 6], [f64; 6])>,
}

impl JobView {
    pub(super) fn new(config: &PipelineConfig, stats: Arc<Stats>) -> Self {
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
        JobView {
            name: config.job_name.clone(),
            mode,
            parallelism,
            topics,
            started: Instant::now(),
            started_at: SystemTime::now(),
            stats,
            sample: Mutex::new((Instant::now(), [0; 6], [0.0; 6])),
        }
    }

    /// (records in, records out) per operator.
    fn operator_counts(&self) -> [(u64, u64); 6] {
        let s = &self.stats;
        let (read, decoded, parsed, created) = (
            Stats::get(&s.read),
            Stats::get(&s.decoded),
            Stats::get(&s.parsed),
            Stats::get(&s.created),
        );
        let rejected: u64 = s.rejections().values().map(|r| r.count).sum();
        [
            (read, read),
            (read, decoded),
            (decoded, parsed),
            (parsed, created),
            (created, Stats::get(&s.written)),
            (rejected, Stats::get(&s.dead_lettered)),
        ]
    }

    fn snapshot(&self) -> JobSnapshot {
        let counts = self.operator_counts();
        let rates = self.sample.lock().map(|s| s.2).unwrap_or_default();
        let files = self.topics.is_none();
        let operators = OPERATORS
            .iter()
            .zip(counts)
            .zip(rates)
            .map(|((name, (records_in, records_out)), rate)| {
                let name = match (*name, files) {
                    ("Read from Kafka", true) => "Read from file",
                    ("Write to Kafka", true) => "Write to file",
                    (name, _) => name,
                };
                OperatorSnapshot {
                    name,
                    records_in,
                    records_out,
                    rate_per_second: rate,
                }
            })
            .collect();
        let partitions = self
            .stats
            .partitions()
            .into_iter()
            .map(|(partition, p)| PartitionSnapshot {
                partition,
                committed_offset: p.committed,
                end_offset: p.end,
                lag: p.lag(),
            })
            .collect();
        let checkpoints = self
            .stats
            .checkpoints()
            .into_iter()
            .rev()
            .map(|c| CheckpointSnapshot {
                completed_at_ms: c
                    .at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
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
        JobSnapshot {
            job: JobInfo {
                name: self.name.clone(),
                state: self.stats.phase().as_str(),
                mode: self.mode,
                parallelism: self.parallelism,
                delivery_guarantee: "at-least-once",
                started_at_ms: self
                    .started_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
                input: self.topics.as_ref().map(|t| t.0.clone()),
                output: self.topics.as_ref().map(|t| t.1.clone()),
                dead_letter: self.topics.as_ref().map(|t| t.2.clone()),
            },
            operators,
            partitions,
            checkpoints,
            dead_letters,
            totals: self.stats.totals(),
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

    fn tick(&self) {
        let counts = self.operator_counts();
        if let Ok(mut sample) = self.sample.lock() {
            let now = Instant::now();
            let seconds = now.duration_since(sample.0).as_secs_f64().max(1e-3);
            let mut rates = [0.0; 6];
            for (i, (_, out)) in counts.iter().enumerate() {
                rates[i] = out.saturating_sub(sample.1[i]) as f64 / seconds;
            }
            *sample = (now, counts.map(|(_, out)| out), rates);
        }
    }

    fn metrics(&self) -> String {
        let mut e = Exposition::default();
        let counts = self.operator_counts();
        let job = self.name.as_str();
        let mut records: Vec<(Vec<(&str, &str)>, f64)> = Vec::new();
        for (label, (records_in, records_out)) in OPERATOR_LABELS.iter().zip(counts) {
            records.push((
                vec![("job", job), ("operator", label), ("direction", "in")],
                records_in as f64,
            ));
            records.push((
                vec![("job", job), ("operator", label), ("direction", "out")],
                records_out as f64,
            ));
        }
        let samples: Vec<_> = records.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        e.counter(
            "streamkit_pipeline_records_total",
            "Records into and out of each operator.",
            &samples,
        );

        let rejections = self.stats.rejections();
        let kinds: Vec<(Vec<(&str, &str)>, f64)> = rejections
            .iter()
            .map(|(kind, r)| (vec![("job", job), ("kind", kind.as_str())], r.count as f64))
            .collect();
        let samples: Vec<_> = kinds.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        e.counter(
            "streamkit_pipeline_dead_letters_total",
            "Records sent to the dead-letter destination, by kind.",
            &samples,
        );

        let input = self.topics.as_ref().map_or("file", |t| t.0.as_str());
        let partitions = self.stats.partitions();
        let numbers: Vec<String> = partitions.keys().map(i32::to_string).collect();
        let gauges =
            |pick: fn(&super::PartitionStatus) -> Option<i64>| -> Vec<(Vec<(&str, &str)>, f64)> {
                partitions
                    .values()
                    .zip(&numbers)
                    .filter_map(|(p, n)| {
                        pick(p).map(|v| {
                            (
                                vec![("job", job), ("topic", input), ("partition", n.as_str())],
                                v as f64,
                            )
                        })
                    })
                    .collect()
            };
        for (name, help, values) in [
            (
                "streamkit_pipeline_partition_lag_records",
                "Records between the job's position and the partition's end.",
                gauges(PartitionStatus::lag),
            ),
            (
                "streamkit_pipeline_partition_committed_offset",
                "Next offset the job resumes from, per input partition.",
                gauges(|p| p.committed),
            ),
            (
                "streamkit_pipeline_partition_end_offset",
                "End offset (high watermark) per input partition.",
                gauges(|p| p.end),
            ),
        ] {
            let samples: Vec<_> = values.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            e.gauge(name, help, &samples);
        }

        let histogram = self.stats.checkpoint_durations();
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = CHECKPOINT_BUCKETS
            .iter()
            .zip(histogram.counts)
            .map(|(&le, n)| {
                cumulative += n;
                (le, cumulative)
            })
            .collect();
        e.histogram(
            "streamkit_pipeline_checkpoint_duration_seconds",
            "Duration of commits of delivered positions.",
            &buckets,
            histogram.sum_seconds,
            histogram.count,
        );
        e.gauge(
            "streamkit_pipeline_uptime_seconds",
            "Seconds since the job started.",
            &[(&[("job", job)], self.started.elapsed().as_secs_f64())],
        );
        e.build_info();
        e.finish()
    }
}

/// `/api/job`. Field names are part of the interface (see the README).
#[derive(Debug, Serialize)]
struct JobSnapshot {
    job: JobInfo,
    operators: Vec<OperatorSnapshot>,
    partitions: Vec<PartitionSnapshot>,
    checkpoints: Vec<CheckpointSnapshot>,
    dead_letters: Vec<DeadLetterSnapshot>,
    totals: Totals,
}

#[derive(Debug, Serialize)]
struct JobInfo {
    name: String,
    state: &'static str,
    mode: &'static str,
    parallelism: usize,
    delivery_guarantee: &'static str,
    started_at_ms: u64,
    uptime_seconds: f64,
    input: Option<String>,
    output: Option<String>,
    dead_letter: Option<String>,
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
