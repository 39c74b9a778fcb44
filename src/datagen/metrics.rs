//! `datagen --metrics-addr`: Prometheus metrics of a running load, kept in
//! `prometheus-client` counters and rendered by it, and a small page at `/` with charts of
//! the last 15 minutes (one point a second, in a bounded [`History`], served at
//! `/api/job/history`): the target and achieved rates, deliveries and delivery errors per
//! second and, in Kafka, the delivery latency (p50, p99, max). `/api/job` has the totals.
//!
//! Guarantee: the `destination` label (and the page) show the topic or file only, never
//! the cluster's address or any client property.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::history::{History, Point};
use crate::latency::DeliveryLatency;
use crate::pacing::Pace;

/// Live counters of a run, updated by the run loop and read by scrapes.
#[derive(Debug, Clone, Default)]
pub struct LiveCounts {
    /// Events generated and handed to the destination.
    pub generated: Counter,
    /// Their bytes (key and value in Kafka, lines in files).
    pub bytes: Counter,
    /// Events acknowledged by the broker (or written to the file).
    pub delivered: Counter,
    /// Events the producer could not deliver.
    pub delivery_errors: Counter,
}

impl LiveCounts {
    /// Sets the delivery counts the sink reports (both only grow).
    pub fn set_deliveries(&self, delivered: u64, failed: u64) {
        self.delivered.inner().store(delivered, Ordering::Relaxed);
        self.delivery_errors
            .inner()
            .store(failed, Ordering::Relaxed);
    }
}

/// `/metrics` of a datagen run.
pub(super) struct MetricsView {
    live: LiveCounts,
    registry: Registry,
    /// Events per second over the last second.
    rate: Gauge<f64, AtomicU64>,
    /// (when, events generated, delivered and failed then), the previous sample.
    sample: Mutex<(Instant, [u64; 3])>,
    destination: String,
    started: Instant,
    pace: Pace,
    latency: Option<Arc<DeliveryLatency>>,
    history: History,
}

impl MetricsView {
    pub(super) fn new(
        live: &LiveCounts,
        destination: &str,
        latency: Option<Arc<DeliveryLatency>>,
        pace: Pace,
        started: Instant,
    ) -> Self {
        let rate = Gauge::<f64, AtomicU64>::default();
        let mut registry = crate::web::metrics_registry();
        let labelled = registry
            .sub_registry_with_label(("destination".into(), destination.to_string().into()));
        for (name, help, counter) in [
            (
                "streamkit_datagen_events_generated",
                "Events generated and handed to the destination",
                &live.generated,
            ),
            (
                "streamkit_datagen_bytes_generated",
                "Bytes of the events generated (key and value in Kafka)",
                &live.bytes,
            ),
            (
                "streamkit_datagen_events_delivered",
                "Events acknowledged by the broker (or written to the file)",
                &live.delivered,
            ),
            (
                "streamkit_datagen_delivery_errors",
                "Events the producer could not deliver",
                &live.delivery_errors,
            ),
        ] {
            labelled.register(name, help, counter.clone());
        }
        if let Some(latency) = &latency {
            labelled.register(
                "streamkit_datagen_delivery_latency_seconds",
                "From handing an event to the producer to its acknowledgement",
                latency.prometheus(),
            );
        }
        labelled.register(
            "streamkit_datagen_events_per_second",
            "Events generated per second, over the last second",
            rate.clone(),
        );
        MetricsView {
            live: live.clone(),
            registry,
            rate,
            sample: Mutex::new((started, [0; 3])),
            destination: destination.to_string(),
            started,
            pace,
            latency,
            history: History::default(),
        }
    }
}

/// `/api/job` of a datagen run.
#[derive(Debug, serde::Serialize)]
struct LoadSnapshot<'a> {
    destination: &'a str,
    uptime_seconds: f64,
    target_rate: Option<f64>,
    generated: u64,
    bytes: u64,
    delivered: u64,
    delivery_errors: u64,
}

impl crate::web::View for MetricsView {
    fn page(&self) -> Option<&'static str> {
        Some(include_str!("metrics.html"))
    }

    fn api(&self) -> Option<String> {
        let elapsed = self.started.elapsed();
        serde_json::to_string(&LoadSnapshot {
            destination: &self.destination,
            uptime_seconds: elapsed.as_secs_f64(),
            target_rate: super::report::target_rate(&self.pace, elapsed),
            generated: self.live.generated.get(),
            bytes: self.live.bytes.get(),
            delivered: self.live.delivered.get(),
            delivery_errors: self.live.delivery_errors.get(),
        })
        .ok()
    }

    fn history(&self) -> Option<String> {
        serde_json::to_string(&self.history.columns()).ok()
    }

    fn tick(&self) {
        let counts = [
            self.live.generated.get(),
            self.live.delivered.get(),
            self.live.delivery_errors.get(),
        ];
        let Ok(mut sample) = self.sample.lock() else {
            return;
        };
        let now = Instant::now();
        let seconds = now.duration_since(sample.0).as_secs_f64();
        let [generated, delivered, failed] =
            [0, 1, 2].map(|i| crate::history::rate(counts[i], sample.1[i], seconds));
        let span = now.duration_since(sample.0);
        *sample = (now, counts);
        drop(sample);
        self.rate.set(generated);
        let elapsed = now.duration_since(self.started);
        let latency = self
            .latency
            .as_ref()
            .map(|l| l.take_live())
            .unwrap_or_default();
        self.history.push(Point {
            t_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            values: vec![
                // The target in the middle of the second the achieved rate averages over.
                (
                    "target_rate",
                    super::report::target_rate(&self.pace, elapsed.saturating_sub(span / 2)),
                ),
                ("achieved_rate", Some(generated)),
                ("delivered_per_second", Some(delivered)),
                ("delivery_errors_per_second", Some(failed)),
                ("delivery_latency_p50_ms", latency.ms(|l| l.p50)),
                ("delivery_latency_p99_ms", latency.ms(|l| l.p99)),
                ("delivery_latency_max_ms", latency.ms(|l| l.max)),
            ],
            partitions: Vec::new(),
        });
    }

    fn metrics(&self) -> String {
        crate::web::render_metrics(&self.registry)
    }
}
