//! `datagen --metrics-addr`: Prometheus metrics of a running load, kept in
//! `prometheus-client` counters and rendered by it.
//!
//! Guarantee: the `destination` label is the topic or file only, never the cluster's
//! address or any client property.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    /// (when, events generated then), the previous sample.
    sample: Mutex<(Instant, u64)>,
}

impl MetricsView {
    pub(super) fn new(
        live: &LiveCounts,
        destination: &str,
        latency: Option<Histogram>,
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
        if let Some(latency) = latency {
            labelled.register(
                "streamkit_datagen_delivery_latency_seconds",
                "From handing an event to the producer to its acknowledgement",
                latency,
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
            sample: Mutex::new((started, 0)),
        }
    }
}

impl crate::web::View for MetricsView {
    fn tick(&self) {
        let generated = self.live.generated.get();
        if let Ok(mut sample) = self.sample.lock() {
            let now = Instant::now();
            let seconds = now.duration_since(sample.0).as_secs_f64().max(1e-3);
            self.rate
                .set(generated.saturating_sub(sample.1) as f64 / seconds);
            *sample = (now, generated);
        }
    }

    fn metrics(&self) -> String {
        crate::web::render_metrics(&self.registry)
    }
}
