//! `datagen`: website-visit events into a file, stdout or a Kafka topic.
//!
//! Guarantees:
//! - **Exact content.** Values and keys are byte-for-byte what the original generator
//!   writes (see [`crate::schema`]). With a seed and a simulated clock the output is
//!   byte-identical on every run, whatever `threads` is.
//! - **Accounted delivery.** In Kafka mode every event handed to the producer ends as
//!   delivered or as counted in `Summary::delivery_failures`, also after a cancellation:
//!   cancelling stops generation, waits up to [`DRAIN_TIMEOUT`] for outstanding deliveries,
//!   then purges and counts whatever is left as failed.
//! - **Fail fast.** An unreachable broker or a missing topic is reported, naming the
//!   address, before any event is generated.
//!
//! Limit: delivery is at-least-once per event from the producer's point of view; an
//! event reported failed may still have reached the broker (for example, when its
//! acknowledgement was lost).

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::generator::{
    CHUNK_EVENTS, Clock, EventSource, EventStream, GeneratedEvent, GeneratorConfig,
};
use crate::kafka::{self, Compression, CountingProducer, DeliveryCounter, KafkaConfig};
use crate::pacing::{Allowance, Pace, Pacer};
use crate::progress::{Bound, Progress, ProgressMode};

/// After cancellation, how long outstanding deliveries may take before they are purged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Longest single sleep, so cancellation and deadlines are noticed promptly.
const IDLE_SLICE: Duration = Duration::from_millis(50);

/// Most events generated and handed over in one step of the sequential loop.
const BATCH_EVENTS: u64 = 1024;

/// Where events go.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
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
pub struct DatagenConfig {
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
}

/// Live counters of a run, for its metrics endpoint.
#[derive(Debug, Default)]
pub struct LiveCounts {
    pub generated: AtomicU64,
    pub bytes: AtomicU64,
    pub delivered: AtomicU64,
    pub delivery_errors: AtomicU64,
}

/// `/metrics` of a datagen run.
struct MetricsView {
    live: Arc<LiveCounts>,
    destination: String,
    /// (when, generated then, events per second since the previous sample)
    sample: std::sync::Mutex<(Instant, u64, f64)>,
}

impl crate::web::View for MetricsView {
    fn tick(&self) {
        let generated = self.live.generated.load(Ordering::Relaxed);
        if let Ok(mut sample) = self.sample.lock() {
            let now = Instant::now();
            let seconds = now.duration_since(sample.0).as_secs_f64().max(1e-3);
            *sample = (
                now,
                generated,
                generated.saturating_sub(sample.1) as f64 / seconds,
            );
        }
    }

    fn metrics(&self) -> String {
        let mut e = crate::web::Exposition::default();
        let labels: &[(&str, &str)] = &[("destination", &self.destination)];
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        e.counter(
            "streamkit_datagen_events_generated_total",
            "Events generated and handed to the destination.",
            &[(labels, load(&self.live.generated))],
        );
        e.counter(
            "streamkit_datagen_bytes_generated_total",
            "Bytes of the events generated (key and value in Kafka).",
            &[(labels, load(&self.live.bytes))],
        );
        e.counter(
            "streamkit_datagen_events_delivered_total",
            "Events acknowledged by the broker (or written to the file).",
            &[(labels, load(&self.live.delivered))],
        );
        e.counter(
            "streamkit_datagen_delivery_errors_total",
            "Events the producer could not deliver.",
            &[(labels, load(&self.live.delivery_errors))],
        );
        let rate = self.sample.lock().map(|s| s.2).unwrap_or(0.0);
        e.gauge(
            "streamkit_datagen_events_per_second",
            "Events generated per second, over the last second.",
            &[(labels, rate)],
        );
        e.build_info();
        e.finish()
    }
}

/// What a run did; printed on stderr at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events written, or handed to the Kafka producer.
    pub events: u64,
    /// Bytes written (lines with newlines), or key and value bytes produced.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Events the producer could not deliver (0 for files).
    pub delivery_failures: u64,
    /// The reason of the first failure.
    pub first_failure: Option<String>,
    pub destination: String,
}

impl Summary {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} events, {:.1} MB in {:.2} s: {} events/s ({:.1} MB/s) to {}; delivery failures: {}",
            group_thousands(self.events),
            self.bytes as f64 / 1e6,
            secs,
            group_thousands(self.events_per_sec().round() as u64),
            self.bytes as f64 / 1e6 / secs,
            self.destination,
            group_thousands(self.delivery_failures),
        )?;
        if let Some(reason) = &self.first_failure {
            write!(f, " (first: {reason})")?;
        }
        Ok(())
    }
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Encoded events: values as newline-terminated JSON lines, keys alongside.
#[derive(Debug, Default, Clone)]
pub struct EncodedBatch {
    lines: Vec<u8>,
    keys: Vec<u8>,
    /// Per event: end of its key in `keys`, end of its value (before `\n`) in `lines`.
    ends: Vec<(usize, usize)>,
}

impl EncodedBatch {
    pub fn clear(&mut self) {
        self.lines.clear();
        self.keys.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The values as JSON lines, ready for a file.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// `(key, value)` of each event, in order.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut previous = (0, 0);
        self.ends.iter().map(move |&(key_end, value_end)| {
            let record = (
                &self.keys[previous.0..key_end],
                &self.lines[previous.1..value_end],
            );
            previous = (key_end, value_end + 1);
            record
        })
    }

    /// The last value, for progress samples.
    pub fn last_value(&self) -> &[u8] {
        let start = match self.ends.len() {
            0 | 1 => 0,
            n => self.ends[n - 2].1 + 1,
        };
        let end = self.ends.last().map_or(0, |&(_, v)| v);
        &self.lines[start..end]
    }

    fn push(&mut self, event: &GeneratedEvent<'_>) {
        event.write_key(&mut self.keys);
        event.write_value(&mut self.lines);
        self.ends.push((self.keys.len(), self.lines.len()));
        self.lines.push(b'\n');
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends the next `count` events of `stream` to `batch`.
pub fn encode(stream: &mut EventStream<'_>, clock: Clock, count: u64, batch: &mut EncodedBatch) {
    for _ in 0..count {
        let base = clock.base_ms(stream.next_index(), now_ms);
        batch.push(&stream.next_event(base));
    }
}

/// What a sink accepted from one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sent {
    events: u64,
    bytes: u64,
}

impl Sent {
    fn add(&mut self, other: Sent) {
        self.events += other.events;
        self.bytes += other.bytes;
    }
}

/// The outcome of flushing a sink.
#[derive(Debug, Default)]
struct Delivery {
    failures: u64,
    first_failure: Option<String>,
}

trait Sink {
    /// Takes the batch; accepts fewer events only when cancelled or closed.
    fn send(&mut self, batch: &EncodedBatch, cancel: &CancellationToken) -> Result<Sent>;
    /// Waits up to `wait` while keeping the sink serviced.
    fn idle(&mut self, wait: Duration) -> Result<()>;
    /// True once the reader went away (a closed stdout pipe): stop generating.
    fn closed(&self) -> bool;
    /// Flushes everything, within the rules of the module docs.
    fn finish(&mut self, cancel: &CancellationToken) -> Result<Delivery>;
    /// Events delivered and failed so far, as far as the sink knows yet.
    fn delivery_counts(&self) -> (u64, u64);
}

struct FileSink {
    writer: BufWriter<Box<dyn Write + Send>>,
    path: PathBuf,
    closed: bool,
    written: u64,
}

impl FileSink {
    fn open(output: &Output) -> Result<Self> {
        let (writer, path): (Box<dyn Write + Send>, PathBuf) = match output {
            Output::Stdout => (Box::new(io::stdout()), PathBuf::from("stdout")),
            Output::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                (
                    Box::new(File::create(path).map_err(|e| Error::io(path, e))?),
                    path.clone(),
                )
            }
            Output::Kafka { .. } => unreachable!("FileSink::open is only called for files"),
        };
        Ok(FileSink {
            writer: BufWriter::with_capacity(1 << 20, writer),
            path,
            closed: false,
            written: 0,
        })
    }

    fn check(&mut self, result: io::Result<()>) -> Result<()> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                log::info!(
                    "{}: the reader closed the pipe; stopping",
                    self.path.display()
                );
                self.closed = true;
                Ok(())
            }
            other => other.map_err(|e| Error::io(&self.path, e)),
        }
    }
}

impl Sink for FileSink {
    fn send(&mut self, batch: &EncodedBatch, _: &CancellationToken) -> Result<Sent> {
        let result = self.writer.write_all(batch.lines());
        self.check(result)?;
        if self.closed {
            return Ok(Sent::default());
        }
        self.written += batch.len() as u64;
        Ok(Sent {
            events: batch.len() as u64,
            bytes: batch.lines().len() as u64,
        })
    }

    fn idle(&mut self, wait: Duration) -> Result<()> {
        // A slow run shows each line as soon as it is written (tail -f, pipes).
        let result = self.writer.flush();
        self.check(result)?;
        std::thread::sleep(wait);
        Ok(())
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn finish(&mut self, _: &CancellationToken) -> Result<Delivery> {
        let result = self.writer.flush();
        self.check(result)?;
        Ok(Delivery::default())
    }

    fn delivery_counts(&self) -> (u64, u64) {
        (self.written, 0)
    }
}

struct KafkaSink {
    producer: CountingProducer,
    topic: String,
    servers: String,
    enqueued: u64,
    rejected: u64,
    first_rejection: Option<String>,
    since_poll: u32,
}

impl KafkaSink {
    fn open(kafka_config: &KafkaConfig, topic: &str, compression: Compression) -> Result<Self> {
        let client_config =
            kafka::throughput_producer_config(kafka_config, "streamkit-datagen", compression);
        let producer: CountingProducer = kafka::create(
            &client_config,
            DeliveryCounter::new(&kafka_config.bootstrap_servers),
            kafka_config,
        )?;
        kafka::check_topic_reachable(producer.client(), kafka_config, topic)?;
        log::info!(
            "producing to topic {topic} at {}",
            kafka_config.bootstrap_servers
        );
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            servers: kafka_config.bootstrap_servers.clone(),
            enqueued: 0,
            rejected: 0,
            first_rejection: None,
            since_poll: 0,
        })
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, batch: &EncodedBatch, cancel: &CancellationToken) -> Result<Sent> {
        let mut sent = Sent::default();
        for (key, value) in batch.records() {
            loop {
                match self
                    .producer
                    .send(BaseRecord::to(&self.topic).key(key).payload(value))
                {
                    Ok(()) => {
                        self.enqueued += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if cancel.is_cancelled() {
                            return Ok(sent);
                        }
                        // The local queue is full: serve delivery reports while it drains.
                        self.producer.poll(Duration::from_millis(5));
                    }
                    Err((error, _)) => {
                        // Refused before queueing (say, too large): count it as failed.
                        self.rejected += 1;
                        self.first_rejection
                            .get_or_insert_with(|| error.to_string());
                        break;
                    }
                }
            }
            sent.add(Sent {
                events: 1,
                bytes: (key.len() + value.len()) as u64,
            });
            self.since_poll += 1;
            if self.since_poll >= 1024 {
                self.producer.poll(Duration::ZERO);
                self.since_poll = 0;
            }
        }
        Ok(sent)
    }

    fn idle(&mut self, wait: Duration) -> Result<()> {
        self.producer.poll(wait);
        Ok(())
    }

    fn closed(&self) -> bool {
        false
    }

    fn delivery_counts(&self) -> (u64, u64) {
        let counter = self.producer.context();
        (counter.delivered(), counter.failed() + self.rejected)
    }

    fn finish(&mut self, cancel: &CancellationToken) -> Result<Delivery> {
        let mut drain_started: Option<Instant> = None;
        let mut last_report = Instant::now();
        loop {
            // Flushing in short steps keeps cancellation responsive; a timeout is expected.
            let _ = self.producer.flush(Duration::from_millis(100));
            let in_flight = self.producer.in_flight_count();
            if in_flight == 0 {
                break;
            }
            if cancel.is_cancelled() {
                let started = *drain_started.get_or_insert_with(Instant::now);
                if started.elapsed() >= DRAIN_TIMEOUT {
                    log::warn!(
                        "{in_flight} events still undelivered to {} after {} s: purging them and counting them as failed",
                        self.servers,
                        DRAIN_TIMEOUT.as_secs()
                    );
                    self.producer
                        .purge(PurgeConfig::default().queue().inflight());
                    let _ = self.producer.flush(Duration::from_secs(1));
                    break;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                log::info!("waiting for {in_flight} deliveries to {}...", self.servers);
                last_report = Instant::now();
            }
        }
        let counter = self.producer.context();
        let (delivered, failed) = (counter.delivered(), counter.failed());
        // Anything neither reported delivered nor failed (no report after a purge) failed too.
        let unreported = self.enqueued.saturating_sub(delivered + failed);
        Ok(Delivery {
            failures: failed + unreported + self.rejected,
            first_failure: counter
                .first_failure()
                .or_else(|| self.first_rejection.clone()),
        })
    }
}

fn open_sink(output: &Output) -> Result<Box<dyn Sink>> {
    Ok(match output {
        Output::Kafka {
            kafka,
            topic,
            compression,
        } => Box::new(KafkaSink::open(kafka, topic, *compression)?),
        file_or_stdout => Box::new(FileSink::open(file_or_stdout)?),
    })
}

/// Generates events as configured until the count, the duration or `cancel` ends the run.
pub fn run(config: &DatagenConfig, cancel: &CancellationToken) -> Result<Summary> {
    let source = EventSource::new(&config.generator);
    let mut sink = open_sink(&config.output)?;
    let started = Instant::now();
    let bound = match (config.num_events, config.duration) {
        (Some(n), _) => Bound::Events(n),
        (None, Some(d)) => Bound::Time(d),
        (None, None) => Bound::None,
    };
    let mut progress = Progress::new(config.progress, bound, started);
    let live = Arc::new(LiveCounts::default());
    // The metrics server lives as long as the run: dropping it stops it.
    let _metrics = match config.metrics_addr {
        Some(addr) => {
            // The topic or path only: never the cluster's address (a client property).
            let destination = match &config.output {
                Output::Kafka { topic, .. } => topic.clone(),
                other => other.to_string(),
            };
            let view = MetricsView {
                live: Arc::clone(&live),
                destination,
                sample: std::sync::Mutex::new((started, 0, 0.0)),
            };
            let server = crate::web::serve(addr, Arc::new(view))?;
            log::info!("metrics at http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    let run = Run {
        config,
        source: &source,
        cancel,
        started,
        deadline: config.duration.map(|d| started + d),
        live: &live,
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
    let (sent, delivery) = (generated?, delivery?);
    Ok(Summary {
        events: sent.events,
        bytes: sent.bytes,
        elapsed: started.elapsed(),
        delivery_failures: delivery.failures,
        first_failure: delivery.first_failure,
        destination: config.output.to_string(),
    })
}

struct Run<'a> {
    config: &'a DatagenConfig,
    source: &'a EventSource,
    cancel: &'a CancellationToken,
    started: Instant,
    deadline: Option<Instant>,
    live: &'a LiveCounts,
}

impl Run<'_> {
    /// Adds what the sink just took to the live counters, and refreshes its delivery counts.
    fn record(&self, sink: &dyn Sink, sent: Sent) {
        self.live
            .generated
            .fetch_add(sent.events, Ordering::Relaxed);
        self.live.bytes.fetch_add(sent.bytes, Ordering::Relaxed);
        let (delivered, failed) = sink.delivery_counts();
        self.live.delivered.store(delivered, Ordering::Relaxed);
        self.live.delivery_errors.store(failed, Ordering::Relaxed);
    }

    fn should_stop(&self, sink: &dyn Sink, now: Instant) -> bool {
        self.cancel.is_cancelled() || sink.closed() || self.deadline.is_some_and(|d| now >= d)
    }

    /// One thread, paced: generates each batch when it is due.
    fn sequential(&self, sink: &mut dyn Sink, progress: &mut Progress) -> Result<Sent> {
        let mut pacer = Pacer::new(self.config.pace, self.started);
        let mut stream = self.source.stream(0);
        let mut batch = EncodedBatch::default();
        let mut sent = Sent::default();
        loop {
            let now = Instant::now();
            let remaining = self.config.num_events.map_or(u64::MAX, |n| n - sent.events);
            if remaining == 0 || self.should_stop(sink, now) {
                return Ok(sent);
            }
            match pacer.allowance(sent.events, now) {
                Allowance::WaitUntil(due) => {
                    let until = self.deadline.map_or(due, |d| due.min(d));
                    sink.idle(until.saturating_duration_since(now).min(IDLE_SLICE))?;
                    self.record(sink, Sent::default());
                }
                Allowance::Emit(due) => {
                    batch.clear();
                    encode(
                        &mut stream,
                        self.config.clock,
                        due.min(remaining).min(BATCH_EVENTS),
                        &mut batch,
                    );
                    let accepted = sink.send(&batch, self.cancel)?;
                    self.record(sink, accepted);
                    sent.add(accepted);
                    let now = Instant::now();
                    pacer.emitted_at(now);
                    progress.update(sent.events, now, || {
                        String::from_utf8_lossy(batch.last_value()).into_owned()
                    });
                }
            }
        }
    }

    /// Unpaced, on `threads` workers: worker `w` encodes chunks `w, w + threads, ...`, and
    /// this thread hands them to the sink in chunk order.
    fn parallel(&self, sink: &mut dyn Sink, progress: &mut Progress) -> Result<Sent> {
        let threads = self.config.threads as u64;
        let num_events = self.config.num_events;
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let receivers: Vec<_> = (0..threads)
                .map(|worker| {
                    let (tx, rx) = mpsc::sync_channel::<EncodedBatch>(2);
                    let stop = &stop;
                    scope.spawn(move || {
                        let mut chunk = worker;
                        while !stop.load(Ordering::Relaxed) {
                            let first = chunk * CHUNK_EVENTS;
                            let count = num_events.map_or(CHUNK_EVENTS, |n| {
                                n.saturating_sub(first).min(CHUNK_EVENTS)
                            });
                            if count == 0 {
                                break;
                            }
                            let mut batch = EncodedBatch::default();
                            encode(
                                &mut self.source.stream(first),
                                self.config.clock,
                                count,
                                &mut batch,
                            );
                            if tx.send(batch).is_err() {
                                break;
                            }
                            chunk += threads;
                        }
                    });
                    rx
                })
                .collect();
            let mut sent = Sent::default();
            let mut chunk = 0u64;
            let result = loop {
                if self.should_stop(sink, Instant::now()) {
                    break Ok(sent);
                }
                // A worker hangs up only after its last chunk: then every chunk was handed over.
                let Ok(batch) = receivers[(chunk % threads) as usize].recv() else {
                    break Ok(sent);
                };
                match sink.send(&batch, self.cancel) {
                    Ok(accepted) => {
                        self.record(&*sink, accepted);
                        sent.add(accepted);
                        progress.update(sent.events, Instant::now(), || {
                            String::from_utf8_lossy(batch.last_value()).into_owned()
                        });
                    }
                    Err(e) => break Err(e),
                }
                chunk += 1;
            };
            stop.store(true, Ordering::Relaxed);
            drop(receivers);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    #[test]
    fn batch_records_split_keys_and_values() {
        let source = EventSource::new(&GeneratorConfig {
            num_users: 3,
            missing_geo_ratio: 0.5,
            max_lag_ms: 0,
            seed: 1,
        });
        let mut batch = EncodedBatch::default();
        encode(
            &mut source.stream(0),
            Clock::Simulated {
                start_ms: 0,
                step_us: 1000,
            },
            5,
            &mut batch,
        );
        let lines: Vec<&[u8]> = batch
            .lines()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let records: Vec<_> = batch.records().collect();
        assert_eq!(records.len(), 5);
        for ((key, value), line) in records.iter().zip(&lines) {
            assert_eq!(value, line);
            let event = schema::EventLog::from_json(value).unwrap();
            let mut expected_key = Vec::new();
            schema::write_key(&event, &mut expected_key).unwrap();
            assert_eq!(*key, expected_key.as_slice());
        }
        assert_eq!(batch.last_value(), *lines.last().unwrap());
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(1234567), "1,234,567");
    }
}
