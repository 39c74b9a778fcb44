//! Deliveries: what is in flight, and what the runner does with each report of the
//! producer. At least once, a record's delivery is reported and awaited one by one (the
//! job's results, standing for no position, are only counted); exactly once, every
//! delivery is only counted, since the transaction's commit awaits them. At least once, a
//! record's acknowledgement moves its position; a record refused on delivery for what it
//! is becomes a dead letter (by reference: the input record is no longer in memory).
//! Exactly once, a refusal fails the open transaction: it aborts, and the refused record
//! is dead-lettered when it is read again.
//!
//! Guarantee: a refused record stops no job; only a dead letter refused even by reference
//! does, saying so.

use std::collections::BTreeMap;

use rdkafka::error::KafkaError;
use tokio::task::block_in_place;

use super::send::{Ack, Destination};
use super::worker::{Commit, Progress, Worker};
use crate::error::{Error, Result};
use crate::pipeline::dead_letter;
use crate::transform::Rejection;

/// Exactly once, what the broker refused on delivery (an output topic's
/// `max.message.bytes` lowered while the job runs, say): the refusal fails the transaction,
/// which aborts; when the record is read again (or the result fired again) it goes to the
/// dead letters instead. An entry is kept until a commit covers its dead letter.
#[derive(Default)]
pub(super) struct Refused {
    /// By input position: the dead letter to send in place of the record's output.
    pub(super) records: BTreeMap<(i32, i64), Replay>,
    /// By key: results to dead-letter in place of writing them, and whether the open
    /// transaction holds that dead letter.
    pub(super) results: BTreeMap<Vec<u8>, (Rejection, bool)>,
}

impl Refused {
    /// A commit covered `positions` (partition, next offset) and the open transaction's
    /// result dead letters.
    pub(super) fn committed(&mut self, positions: &[(i32, i64)]) {
        if !self.records.is_empty() {
            self.records.retain(|&(partition, offset), _| {
                positions
                    .iter()
                    .all(|&(p, next)| p != partition || offset >= next)
            });
        }
        self.results
            .retain(|_, (_, in_transaction)| !*in_transaction);
    }

    /// The open transaction aborted: its result dead letters are to be sent again.
    pub(super) fn aborted(&mut self) {
        for (_, in_transaction) in self.results.values_mut() {
            *in_transaction = false;
        }
    }
}

/// What to send when a refused record is read again.
#[derive(Clone)]
pub(super) enum Replay {
    /// Its output was refused: its dead letter, with the reason.
    DeadLetter(Rejection),
    /// Its dead letter was refused: a dead letter by reference.
    Reference(Rejection),
}

impl Worker {
    /// Sends in flight for input records: what the read-ahead budget bounds (exactly once,
    /// from the delivery count).
    pub(super) fn read_ahead(&self, progress: &Progress) -> usize {
        if self.awaits_deliveries() {
            progress.in_flight
        } else {
            self.counted_in_flight()
        }
    }

    /// Sends whose deliveries are counted, not reported (every one exactly once; the
    /// job's results at least once), and not delivered yet.
    pub(super) fn counted_in_flight(&self) -> usize {
        let delivered = self
            .delivered
            .count
            .load(std::sync::atomic::Ordering::Acquire);
        self.sent.saturating_sub(delivered) as usize
    }

    /// Everything sent is acknowledged (exactly once, the commit waits for deliveries
    /// itself).
    /// (A counted delivery's failure is reported before it is counted: while its report
    /// waits, nothing is settled.)
    pub(super) fn settled(&self, progress: &Progress) -> bool {
        progress.in_flight == 0
            && self.acks.is_empty()
            && (!self.awaits_deliveries() || self.counted_in_flight() == 0)
    }

    /// Whether the loop waits for a counted delivery to wake it: exactly once, when the
    /// read-ahead budget is spent; at least once, when only results are outstanding and the
    /// worker waits for everything to settle (a checkpoint, a drain, a hand-over, the end).
    pub(super) fn waits_for_counted(&self, progress: &Progress, room: bool) -> bool {
        if !self.awaits_deliveries() {
            return !room;
        }
        progress.in_flight == 0
            && self.counted_in_flight() > 0
            && (progress.barrier
                || !progress.reading()
                || progress.revoking.is_some()
                || (self.bounded
                    && progress
                        .partitions
                        .iter()
                        .all(|p| progress.at_end.contains(p))))
    }

    /// Whether each delivery is awaited one by one (at least once); exactly once, the
    /// transaction's commit awaits them all.
    pub(super) fn awaits_deliveries(&self) -> bool {
        matches!(self.commit, Commit::AtLeastOnce)
    }

    /// A send failed. Exactly once, a transaction that must abort (a record of it was
    /// refused on delivery, so the producer takes no more) aborts at the next
    /// [`Worker::abort_if_due`]; any other failure stops the worker, saying why.
    pub(super) fn send_failed(&self, error: &KafkaError, progress: &mut Progress) -> Result<()> {
        if matches!(self.commit, Commit::ExactlyOnce(_))
            && matches!(
                error,
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::State)
            )
        {
            progress.must_abort = true;
            return Ok(());
        }
        Err(self.send_error(error))
    }

    /// Exactly once: aborts the transaction and rewinds, when a send said it must.
    pub(super) fn abort_if_due(&mut self, progress: &mut Progress) -> Result<()> {
        if !progress.must_abort {
            return Ok(());
        }
        progress.must_abort = false;
        self.abort_and_rewind(progress, "a record of it was refused on delivery")
    }

    /// Exactly once: aborts the open transaction, then rewinds to the committed positions
    /// and the state saved there.
    pub(super) fn abort_and_rewind(&mut self, progress: &mut Progress, why: &str) -> Result<()> {
        if let Commit::ExactlyOnce(tx) = &mut self.commit {
            let aborted = block_in_place(|| tx.abort(why));
            self.sender.producer = tx.producer();
            aborted?;
            self.rewind(progress)?;
        }
        Ok(())
    }

    /// Records one delivery report. At least once, a record the broker refused because of
    /// the record itself is dead-lettered instead (by reference: the input record is no
    /// longer in memory), one more record in flight for the same position. Exactly once,
    /// a failed delivery fails the transaction's commit, which aborts and replays it.
    pub(super) fn acknowledge(&mut self, progress: &mut Progress, mut ack: Ack) -> Result<()> {
        // Only reported deliveries were counted in flight (see `send`).
        if self.awaits_deliveries() && ack.destination.has_position() {
            progress.in_flight = progress.in_flight.saturating_sub(1);
        }
        let exactly_once = matches!(self.commit, Commit::ExactlyOnce(_));
        if ack.destination == Destination::Mark {
            // A later mark says the same (exactly once, the commit fails and aborts).
            if let Some((_, error)) = ack.error {
                log::debug!(
                    "worker {}: a watermark mark was not delivered: {error}",
                    self.id
                );
            }
            return Ok(());
        }
        if exactly_once && let Some((code, error)) = ack.error.take() {
            // Reported after its transaction aborted, most likely: the refusal still holds
            // when the record is read again.
            return self.refused_in_transaction(progress, ack, code, &error);
        }
        if ack.generation != self.sender.generation {
            // A report of an aborted transaction's record: it moves nothing.
            return Ok(());
        }
        if let Some((code, error)) = ack.error.take() {
            return self.refused_on_delivery(progress, ack, code, &error);
        }
        if ack.destination.has_position() {
            progress.tracker.ack(ack.partition, ack.offset);
        }
        if !exactly_once {
            self.uncounted.acknowledged(ack.destination.is_output());
        }
        Ok(())
    }

    /// Exactly once: a record the broker refused on delivery fails its transaction, which
    /// aborts; noted here, it goes to the dead letters when it is read again.
    pub(super) fn refused_in_transaction(
        &mut self,
        progress: &mut Progress,
        ack: Ack,
        code: Option<rdkafka::types::RDKafkaErrorCode>,
        error: &str,
    ) -> Result<()> {
        log::debug!(
            "worker {}: a delivery failed ({error}); the transaction will abort",
            self.id
        );
        let Some(kind) = code.and_then(dead_letter::record_refusal) else {
            return Ok(());
        };
        let topics = &self.sender.topics;
        let position = (ack.partition, ack.offset);
        match ack.destination {
            // Its output refused: its dead letter next time; its dead letter refused: a
            // dead letter by reference.
            Destination::Output | Destination::DeadLetter => {
                let topic = self.sender.topic_of(ack.destination);
                let rejection = dead_letter::refused_on_delivery(topic, kind, error);
                let replay = if ack.destination == Destination::Output {
                    Replay::DeadLetter(rejection)
                } else {
                    Replay::Reference(rejection)
                };
                progress.refused.records.insert(position, replay);
            }
            Destination::Result => {
                if let Some((key, _)) = ack.refused_result {
                    let topic = self.sender.topic_of(ack.destination);
                    let rejection = dead_letter::refused_on_delivery(topic, kind, error);
                    progress.refused.results.insert(key, (rejection, false));
                }
            }
            Destination::Reference | Destination::ResultDeadLetter => {
                return Err(Error::Kafka(format!(
                    "cannot deliver to {} even a dead letter by reference: {error}",
                    topics.dead_letter
                )));
            }
            Destination::Mark => {}
        }
        Ok(())
    }

    /// At least once: a record the broker refused on delivery.
    pub(super) fn refused_on_delivery(
        &mut self,
        progress: &mut Progress,
        ack: Ack,
        code: Option<rdkafka::types::RDKafkaErrorCode>,
        error: &str,
    ) -> Result<()> {
        let topics = &self.sender.topics;
        let topic = self.sender.topic_of(ack.destination);
        let kind = code.and_then(dead_letter::record_refusal);
        let Some(kind) = kind.filter(|_| {
            !matches!(
                ack.destination,
                Destination::Reference | Destination::ResultDeadLetter
            )
        }) else {
            return Err(Error::Kafka(format!("cannot deliver to {topic}: {error}")));
        };
        let rejection = dead_letter::refused_on_delivery(topic, kind, error);
        if ack.destination.is_output() {
            self.stats.reject(kind, &rejection.reason);
        }
        let was_result = ack.destination == Destination::Result;
        let resent = match (ack.destination, ack.refused_result) {
            (Destination::Result, Some((key, value))) => {
                log::warn!(
                    "worker {}: a result: {}; dead-lettered",
                    self.id,
                    rejection.reason
                );
                self.sender.result_dead_letter(&key, &value, &rejection)
            }
            _ => {
                log::warn!(
                    "worker {}: {} partition {} offset {}: {}; dead-lettered by reference",
                    self.id,
                    topics.input,
                    ack.partition,
                    ack.offset,
                    rejection.reason
                );
                // The input record is no longer in memory: its headers stay with it.
                self.sender
                    .reference(None, ack.partition, ack.offset, ack.size, None, &rejection)
            }
        };
        let mut sent = 0;
        queue(&mut self.commit, resent, &mut sent)
            .map_err(|e| Error::Kafka(format!("cannot dead-letter a refused record: {e}")))?;
        if was_result {
            self.sent += u64::from(sent);
        } else {
            progress.in_flight += sent as usize;
        }
        Ok(())
    }
}

/// A send's result: a queued record counts in `sent` and, exactly once, with its
/// transaction.
pub(super) fn queue(
    commit: &mut Commit,
    result: std::result::Result<Destination, KafkaError>,
    sent: &mut u32,
) -> std::result::Result<(), KafkaError> {
    let destination = result?;
    *sent += 1;
    if let Commit::ExactlyOnce(tx) = commit
        && destination != Destination::Mark
    {
        if destination.is_output() {
            tx.open.written += 1;
        } else {
            tx.open.dead_lettered += 1;
        }
    }
    Ok(())
}
