//! Client contexts: errors logged as warnings naming the cluster, at most one every few
//! seconds; deliveries counted, with their latency.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// How often repeated client errors (say, "connection refused") are logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A client context that logs librdkafka's errors as warnings naming the cluster, at
/// most once every few seconds, so an outage is reported clearly without flooding.
#[derive(Debug)]
pub struct ErrorLog {
    servers: String,
    last_error_log: Mutex<Option<Instant>>,
}

impl ErrorLog {
    pub fn new(servers: &str) -> Self {
        ErrorLog {
            servers: servers.to_string(),
            last_error_log: Mutex::new(None),
        }
    }

    /// Logs `message` as a warning unless this client logged one in the last few seconds
    /// (a read error repeats on every poll while a broker is down).
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        if self.should_log_now() {
            log::warn!("{message}");
        }
    }

    fn should_log_now(&self) -> bool {
        let Ok(mut last) = self.last_error_log.lock() else {
            return true;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl ClientContext for ErrorLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // Connection failures also arrive through `error` below, rate-limited. `-X` goes to
        // every client of a binary, so a consumer property reaching a producer (or the
        // reverse) is expected. Both stay visible with RUST_LOG=librdkafka=debug.
        let expected_warning =
            fac == "CONFWARN" && message.contains(" property and will be ignored by this ");
        if fac == "FAIL" || expected_warning {
            log::debug!(target: "librdkafka", "{fac} {message}");
        } else {
            rdkafka::client::DefaultClientContext.log(level, fac, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news, not an error: the consumer reports it separately.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        if self.should_log_now() {
            log::warn!("Kafka at {}: {reason} ({error}); retrying", self.servers);
        }
    }
}

impl ConsumerContext for ErrorLog {}

/// A producer context that counts delivery reports and measures the latency of each
/// acknowledged one (and logs like [`ErrorLog`]). Send each record with
/// `BaseRecord::with_opaque_to(topic, counter.latency().stamp())`.
#[derive(Debug)]
pub struct DeliveryCounter {
    errors: ErrorLog,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    latency: std::sync::Arc<crate::latency::DeliveryLatency>,
}

impl DeliveryCounter {
    pub fn new(servers: &str) -> Self {
        DeliveryCounter {
            errors: ErrorLog::new(servers),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            latency: std::sync::Arc::new(crate::latency::DeliveryLatency::new()),
        }
    }

    /// Send stamps and delivery latencies.
    pub fn latency(&self) -> &std::sync::Arc<crate::latency::DeliveryLatency> {
        &self.latency
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The reason of the first failed delivery, if any.
    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.lock().ok().and_then(|g| g.clone())
    }
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ProducerContext for DeliveryCounter {
    /// The send stamp of `DeliveryLatency::stamp`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: usize) {
        match result {
            Ok(_) => {
                self.latency.record(sent);
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// A producer that counts its deliveries.
pub type CountingProducer = BaseProducer<DeliveryCounter>;
