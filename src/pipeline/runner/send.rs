//! The runner's one send path: every record a worker writes (an output, a job's result, a
//! dead letter, a dead letter by reference) goes through [`Sender`], and what its delivery
//! report says comes back to the worker that sent it on its own channel ([`AckRouter`]),
//! with no future, task or allocation per record: a record carries a [`Ticket`] packed in
//! its delivery opaque, and a worker hears once per read batch that it is delivered
//! ([`super::batches`]), and once per failure.
//!
//! **Back-pressure.** A full producer queue makes `send` wait a millisecond and try again;
//! it cannot happen while the job's in-flight budget stays under the queue size.
//!
//! **No record stops the job.** A record refused for what it is ([`record_refusal`]) at
//! `send` or on delivery becomes a dead letter (by reference when the dead-letter topic
//! refuses it too); see [`super::super::dead_letter`] for the format.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::block_in_place;

use crate::kafka::ErrorLog;
use crate::pipeline::dead_letter::{self, Position, record_refusal};
use crate::pipeline::job::{SOURCE_HEADER, source_header};
use crate::pipeline::{Stats, Topics};
use crate::transform::{RejectKind, Rejection};

use super::batches::{At, Outstanding, Ticket};

/// The producer of a worker's records: shared by the workers at least once, one per
/// worker (transactional) exactly once.
pub(crate) type OutputProducer = ThreadedProducer<AckRouter>;

/// A record on its way to the output or dead-letter topic, with its packed [`Ticket`].
type Outgoing<'a> = BaseRecord<'a, [u8], [u8], usize>;

/// What a record sent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// An input record's output.
    Output,
    /// An input record's dead letter.
    DeadLetter,
    /// An input record's dead letter without its payload: a reference to the record.
    Reference,
    /// A job's own result (a window's count), tied to no input record.
    Result,
    /// A result's dead letter.
    ResultDeadLetter,
    /// A watermark mark to one partition of the repartition topic: neither an output nor
    /// a dead letter, standing for no position (a later mark says the same and more).
    Mark,
}

impl Destination {
    /// Whether the record stands for an input position.
    pub(crate) fn has_position(self) -> bool {
        matches!(
            self,
            Destination::Output | Destination::DeadLetter | Destination::Reference
        )
    }

    /// Whether it counts as written (else dead-lettered) once acknowledged.
    pub(crate) fn is_output(self) -> bool {
        matches!(self, Destination::Output | Destination::Result)
    }
}

/// What a worker hears of its deliveries.
#[derive(Debug)]
pub(crate) enum Report {
    /// Every record sent for the read batch in this slot is delivered (or its failure was
    /// dealt with).
    Delivered(u16),
    /// The broker refused a record for good.
    Failed(Failure),
}

/// A delivery that failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub ticket: Ticket,
    pub code: Option<RDKafkaErrorCode>,
    pub error: String,
    /// Bytes of the key and value of the record sent.
    pub size: usize,
    /// A refused result's key and value (a result has no input record to refer to).
    pub refused_result: Option<(Vec<u8>, Vec<u8>)>,
}

/// The output producer's context: each delivery is counted down on its read batch, whose
/// completion goes to the channel of the worker that sent it, as does each failure.
pub(crate) struct AckRouter {
    errors: ErrorLog,
    workers: Vec<UnboundedSender<Report>>,
    stats: Arc<Stats>,
    /// Per worker: the deliveries only counted, not awaited (exactly once, every record's,
    /// since the transaction's commit waits for them itself; at least once, the job's
    /// results', which stand for no input position and are counted in `stats` here); and
    /// the records of each read batch not yet delivered. Failures are reported all the
    /// same.
    counted: Vec<Arc<Delivered>>,
    exactly_once: bool,
}

/// A worker's deliveries as the producer's context counts them: those counted rather
/// than awaited (successful or not), with a wake-up for a worker that waits for room in
/// its read-ahead budget; and each read batch's records not yet delivered.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    pub count: std::sync::atomic::AtomicU64,
    pub wake: tokio::sync::Notify,
    pub batches: Outstanding,
}

impl AckRouter {
    pub(crate) fn new(
        servers: &str,
        workers: Vec<UnboundedSender<Report>>,
        stats: Arc<Stats>,
        counted: Vec<Arc<Delivered>>,
        exactly_once: bool,
    ) -> Self {
        AckRouter {
            errors: ErrorLog::new(servers),
            workers,
            stats,
            counted,
            exactly_once,
        }
    }
}

impl ClientContext for AckRouter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason);
    }
}

impl ProducerContext for AckRouter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, packed: usize) {
        let Some(ticket) = Ticket::unpack(packed) else {
            return;
        };
        let worker = usize::from(ticket.worker);
        let counted = self.exactly_once || !ticket.destination.has_position();
        let count = || {
            if let Some(delivered) = self.counted.get(worker) {
                delivered
                    .count
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
                delivered.wake.notify_one();
            }
        };
        let report = |report: Report| {
            if let Some(worker) = self.workers.get(worker) {
                // A worker that has stopped no longer listens: its uncommitted records are
                // read again on restart.
                let _ = worker.send(report);
            }
        };
        match result {
            Ok(_) => {
                if counted {
                    count();
                    if !self.exactly_once && ticket.destination != Destination::Mark {
                        Stats::add(if ticket.destination.is_output() {
                            &self.stats.written
                        } else {
                            &self.stats.dead_lettered
                        });
                    }
                }
                if let Some(at) = ticket.at
                    && self
                        .counted
                        .get(worker)
                        .is_some_and(|d| d.batches.done(at.slot))
                {
                    report(Report::Delivered(at.slot));
                }
            }
            Err((error, message)) => {
                // Counted down on its batch by the worker, once dealt with.
                report(Report::Failed(Failure {
                    ticket,
                    code: error.rdkafka_error_code(),
                    error: error.to_string(),
                    size: message.payload_len() + message.key_len(),
                    refused_result: (ticket.destination == Destination::Result).then(|| {
                        (
                            message.key().unwrap_or_default().to_vec(),
                            message.payload().unwrap_or_default().to_vec(),
                        )
                    }),
                }));
                // A counted failure is counted once reported, so that the worker never finds
                // everything settled while its report waits.
                if counted {
                    count();
                }
            }
        }
    }
}

/// An input record, as the sender needs it.
pub(crate) struct Input<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Where it is in the worker's open read batch.
    pub at: Option<At>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Its headers, to go along with what it becomes (none when the job drops them);
    /// copied only into what is sent.
    pub headers: Option<&'a BorrowedHeaders>,
}

impl Input<'_> {
    /// A copy of its headers, for a record sent.
    fn owned_headers(&self) -> Option<OwnedHeaders> {
        self.headers.map(BorrowedHeaders::detach)
    }

    /// Bytes of its key and value.
    pub(crate) fn size(&self) -> usize {
        self.payload.map_or(0, <[u8]>::len) + self.key.map_or(0, <[u8]>::len)
    }
}

/// How a send ended.
pub(crate) enum Sent {
    /// Queued: one delivery report will follow.
    Queued,
    /// Refused at `send` for what the record is (too large, say): nothing was queued.
    Refused(RejectKind, String),
}

/// A worker's way out: its producer, its topics and its generation.
pub(crate) struct Sender {
    pub producer: Arc<OutputProducer>,
    pub topics: Topics,
    /// The largest key and value the output and the dead-letter topics take (their
    /// `max.message.bytes` less the batch framing), when the cluster said: a larger record
    /// is refused here, one by one, rather than by the broker, which would refuse a whole
    /// batch (and, exactly once, fail the transaction). librdkafka's own check cannot do it
    /// below its floor of 1,000 bytes.
    pub limits: (Option<usize>, Option<usize>),
    pub worker: u16,
    pub print_keys: bool,
    /// Partitions of the output topic that a job's broadcast goes to (each gets it).
    pub broadcast_partitions: i32,
    /// Each output carries the input position it came from ([`SOURCE_HEADER`]): the first
    /// stage of a grouped job.
    pub source_header: bool,
}

impl Sender {
    fn ticket(&self, at: Option<At>, destination: Destination) -> usize {
        Ticket {
            worker: self.worker,
            destination,
            at,
        }
        .pack()
    }

    /// Sends a record: an error when the producer cannot send at all (the caller says
    /// why: an exactly-once producer may have been fenced).
    fn send(&self, mut record: Outgoing<'_>) -> Result<Sent, KafkaError> {
        let limit = if record.topic == self.topics.output {
            self.limits.0
        } else {
            self.limits.1
        };
        if let Some(limit) = limit {
            let size = record.key.map_or(0, <[u8]>::len) + record.payload.map_or(0, <[u8]>::len);
            if size > limit {
                return Ok(Sent::Refused(
                    RejectKind::TooLarge,
                    format!(
                        "{size} bytes, over {}'s max.message.bytes less {} bytes of batch framing ({limit} bytes)",
                        record.topic,
                        crate::kafka::BATCH_FRAMING_BYTES
                    ),
                ));
            }
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(Sent::Queued),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    block_in_place(|| std::thread::sleep(Duration::from_millis(1)));
                }
                Err((error, _)) => {
                    return match error.rdkafka_error_code().and_then(record_refusal) {
                        Some(kind) => Ok(Sent::Refused(kind, error.to_string())),
                        None => Err(error),
                    };
                }
            }
        }
    }

    /// Sends one output of `input`; a refused one is dead-lettered in its place (the
    /// refusal counted in `stats`). Returns what was queued.
    /// The record's timestamp is `timestamp` (epoch ms) when the job gave one.
    pub(crate) fn output(
        &self,
        input: &Input<'_>,
        (key, value, timestamp): (&[u8], &[u8], Option<i64>),
        stats: &Stats,
    ) -> Result<Destination, KafkaError> {
        let ticket = self.ticket(input.at, Destination::Output);
        let mut record = BaseRecord::with_opaque_to(&self.topics.output, ticket)
            .key(key)
            .payload(value);
        if let Some(ms) = timestamp {
            record = record.timestamp(ms);
        }
        let mut headers = input.owned_headers();
        if self.source_header {
            let source = source_header(input.partition, input.offset);
            headers = Some(headers.unwrap_or_default().insert(Header {
                key: SOURCE_HEADER,
                value: Some(&source[..]),
            }));
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        match self.send(record)? {
            Sent::Queued => {
                if self.print_keys {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(key).and_then(|()| stdout.write_all(b"\n"));
                }
                Ok(Destination::Output)
            }
            Sent::Refused(kind, error) => {
                self.dead_letter(input, &self.refused(key, value, kind, &error, stats))
            }
        }
    }

    /// The reason of an output the output topic refused at `send`, counted in `stats`.
    fn refused(
        &self,
        key: &[u8],
        value: &[u8],
        kind: RejectKind,
        error: &str,
        stats: &Stats,
    ) -> Rejection {
        let rejection =
            dead_letter::output_refused(key.len() + value.len(), &self.topics.output, kind, error);
        stats.reject(rejection.kind, &rejection.reason);
        rejection
    }

    /// The topic a record of `destination` goes to.
    pub(crate) fn topic_of(&self, destination: Destination) -> &str {
        if destination.is_output() {
            &self.topics.output
        } else {
            &self.topics.dead_letter
        }
    }

    fn position(&self, partition: i32, offset: i64) -> Position<'_> {
        Position {
            topic: &self.topics.input,
            partition,
            offset,
        }
    }

    /// Dead-letters `input` as it is; by reference when the dead-letter topic refuses it
    /// too. Returns what was queued.
    pub(crate) fn dead_letter(
        &self,
        input: &Input<'_>,
        rejection: &Rejection,
    ) -> Result<Destination, KafkaError> {
        let ticket = self.ticket(input.at, Destination::DeadLetter);
        let source = self.position(input.partition, input.offset);
        let headers = dead_letter::headers(input.owned_headers(), Some(source), rejection, None);
        let mut record: Outgoing<'_> =
            BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket).headers(headers);
        if let Some(key) = input.key {
            record = record.key(key);
        }
        if let Some(value) = input.payload {
            record = record.payload(value);
        }
        match self.send(record)? {
            Sent::Queued => Ok(Destination::DeadLetter),
            Sent::Refused(_, error) => self.reference(
                input.owned_headers(),
                input.at,
                (input.partition, input.offset),
                input.size(),
                input.key,
                &dead_letter::refused_twice(rejection, &error),
            ),
        }
    }

    /// Dead-letters a record by reference: its headers, and where it is, in place of its
    /// payload. An error (the job stops) when even that is refused.
    pub(crate) fn reference(
        &self,
        inherited: Option<OwnedHeaders>,
        at: Option<At>,
        (partition, offset): (i32, i64),
        size: usize,
        key: Option<&[u8]>,
        rejection: &Rejection,
    ) -> Result<Destination, KafkaError> {
        let source = self.position(partition, offset);
        let value = dead_letter::reference(source, size);
        let ticket = self.ticket(at, Destination::Reference);
        let headers = dead_letter::headers(inherited, Some(source), rejection, Some(size));
        let mut record: Outgoing<'_> = BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket)
            .headers(headers)
            .payload(value.as_bytes());
        // The key stays, unless it is what made the record too large.
        if let Some(key) = key.filter(|k| k.len() <= dead_letter::REFERENCE_KEY_BYTES) {
            record = record.key(key);
        }
        match self.send(record)? {
            Sent::Queued => Ok(Destination::Reference),
            Sent::Refused(_, error) => Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge,
            ))
            .inspect_err(|_| {
                log::error!(
                    "cannot dead-letter {} partition {partition} offset {offset} even by reference: {error}",
                    self.topics.input
                );
            }),
        }
    }

    /// Sends a watermark mark (null key, `value`) to `partition` of the output topic.
    pub(crate) fn mark(&self, partition: i32, value: &[u8]) -> Result<Destination, KafkaError> {
        let ticket = self.ticket(None, Destination::Mark);
        let record = BaseRecord::<[u8], [u8], _>::with_opaque_to(&self.topics.output, ticket)
            .partition(partition)
            .payload(value);
        match self.send(record)? {
            Sent::Queued => Ok(Destination::Mark),
            // A later mark says the same: none is dead-lettered.
            Sent::Refused(_, error) => {
                log::warn!(
                    "a watermark mark for {} partition {partition} was refused: {error}",
                    self.topics.output
                );
                Ok(Destination::Mark)
            }
        }
    }

    /// Sends a job's result; a refused one is dead-lettered (the refusal counted).
    pub(crate) fn result(
        &self,
        key: &[u8],
        value: &[u8],
        stats: &Stats,
    ) -> Result<Destination, KafkaError> {
        let ticket = self.ticket(None, Destination::Result);
        let record = BaseRecord::with_opaque_to(&self.topics.output, ticket)
            .key(key)
            .payload(value);
        match self.send(record)? {
            Sent::Queued => Ok(Destination::Result),
            Sent::Refused(kind, error) => {
                let rejection = self.refused(key, value, kind, &error, stats);
                self.result_dead_letter(key, value, &rejection)
            }
        }
    }

    /// Dead-letters a result the output refused: its key and value, with the reason; its
    /// reason alone (and the size) when the dead-letter topic refuses it too.
    pub(crate) fn result_dead_letter(
        &self,
        key: &[u8],
        value: &[u8],
        rejection: &Rejection,
    ) -> Result<Destination, KafkaError> {
        let ticket = self.ticket(None, Destination::ResultDeadLetter);
        let headers = dead_letter::headers(None, None, rejection, None);
        let record = BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket)
            .headers(headers)
            .key(key)
            .payload(value);
        match self.send(record)? {
            Sent::Queued => Ok(Destination::ResultDeadLetter),
            Sent::Refused(_, error) => {
                let ticket = self.ticket(None, Destination::ResultDeadLetter);
                let why = dead_letter::refused_twice(rejection, &error);
                let headers = dead_letter::headers(None, None, &why, Some(key.len() + value.len()));
                let record =
                    BaseRecord::with_opaque_to(&self.topics.dead_letter, ticket).headers(headers);
                match self.send(record)? {
                    Sent::Queued => Ok(Destination::ResultDeadLetter),
                    Sent::Refused(kind, _) => Err(KafkaError::MessageProduction(match kind {
                        RejectKind::TooLarge => RDKafkaErrorCode::MessageSizeTooLarge,
                        _ => RDKafkaErrorCode::InvalidRecord,
                    })),
                }
            }
        }
    }
}
