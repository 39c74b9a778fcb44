//! Deliveries: what is in flight, and what the runner does with each report of the
//! producer. At least once, the deliveries of a read batch's records are awaited (the
//! job's results, standing for no position, are only counted); exactly once, every
//! delivery is only counted, since the transaction's commit awaits them. At least once, a
//! batch delivered moves the positions of its records ([`super::batches`]); a record
//! refused on delivery for what it is becomes a dead letter (by reference: the input
//! record is no longer in memory), in the same batch.
//! Exactly once, a refusal fails the open transaction: it aborts, and the refused record
//! is dead-lettered when it is read again.
//!
//! Guarantee: a refused record stops no job; only a dead letter refused even by reference
//! does, saying so.

use std::collections::BTreeMap;

use rdkafka::error::KafkaError;
use tokio::task::block_in_place;

use super::batches::At;
use super::send::{Destination, Failure, Report};
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

    /// Whether deliveries are awaited, a read batch at a time (at least once); exactly
    /// once, the transaction's commit awaits them all.
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

    /// Takes one report of the producer's context: a read batch delivered, or a failure.
    pub(super) fn report(&mut self, progress: &mut Progress, report: Report) -> Result<()> {
        match report {
            Report::Delivered(slot) => {
                self.delivered_batch(progress, slot);
                Ok(())
            }
            Report::Failed(failure) => {
                let at = failure.ticket.at;
                self.failed(progress, failure)?;
                // Counted down once dealt with (any dead letter in its place is queued in
                // the same batch by now), so the batch is not complete before. One that
                // could not be dealt with holds its batch, and its position, for good.
                if let Some(at) = at
                    && self.delivered.batches.done(at.slot)
                {
                    self.delivered_batch(progress, at.slot);
                }
                Ok(())
            }
        }
    }

    /// Every record sent for the batch in `slot` is delivered: at least once, its records'
    /// positions move on and its deliveries are counted; the latencies it samples are
    /// measured.
    pub(super) fn delivered_batch(&mut self, progress: &mut Progress, slot: u16) {
        let at_least_once = self.awaits_deliveries();
        let (stats, uncounted) = (&self.stats, &mut self.uncounted);
        self.batches.complete(slot, |batch| {
            if at_least_once {
                for &(partition, offset) in &batch.positions {
                    progress.tracker.delivered(partition, offset);
                }
                progress.in_flight = progress.in_flight.saturating_sub(batch.sent as usize);
                uncounted.delivered(batch.outputs, batch.sent - batch.outputs);
            }
            if !batch.sampled.is_empty() {
                stats.record_end_to_end(&batch.sampled);
            }
        });
    }

    /// A delivery failed. At least once, a record the broker refused because of the record
    /// itself is dead-lettered instead (by reference: the input record is no longer in
    /// memory), in the same batch. Exactly once, a failed delivery fails the transaction's
    /// commit, which aborts and replays it.
    fn failed(&mut self, progress: &mut Progress, failure: Failure) -> Result<()> {
        if failure.ticket.destination == Destination::Mark {
            // A later mark says the same (exactly once, the commit fails and aborts).
            log::debug!(
                "worker {}: a watermark mark was not delivered: {}",
                self.id,
                failure.error
            );
            return Ok(());
        }
        if matches!(self.commit, Commit::ExactlyOnce(_)) {
            // Reported after its transaction aborted, maybe: the refusal still holds when
            // the record is read again.
            return self.refused_in_transaction(progress, failure);
        }
        self.refused_on_delivery(progress, failure)
    }

    /// Exactly once: a record the broker refused on delivery fails its transaction, which
    /// aborts; noted here, it goes to the dead letters when it is read again.
    pub(super) fn refused_in_transaction(
        &mut self,
        progress: &mut Progress,
        failure: Failure,
    ) -> Result<()> {
        let error = &failure.error;
        log::debug!(
            "worker {}: a delivery failed ({error}); the transaction will abort",
            self.id
        );
        let Some(kind) = failure.code.and_then(dead_letter::record_refusal) else {
            return Ok(());
        };
        let topics = &self.sender.topics;
        let destination = failure.ticket.destination;
        match destination {
            // Its output refused: its dead letter next time; its dead letter refused: a
            // dead letter by reference.
            Destination::Output | Destination::DeadLetter => {
                let Some(position) = self.position_of_ticket(failure.ticket.at) else {
                    return Ok(());
                };
                let topic = self.sender.topic_of(destination);
                let rejection = dead_letter::refused_on_delivery(topic, kind, error);
                let replay = if destination == Destination::Output {
                    Replay::DeadLetter(rejection)
                } else {
                    Replay::Reference(rejection)
                };
                progress.refused.records.insert(position, replay);
            }
            Destination::Result => {
                if let Some((key, _)) = failure.refused_result {
                    let topic = self.sender.topic_of(destination);
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

    /// The input position a ticket's record stands for.
    fn position_of_ticket(&self, at: Option<At>) -> Option<(i32, i64)> {
        at.and_then(|at| self.batches.position(at))
    }

    /// At least once: a record the broker refused on delivery.
    pub(super) fn refused_on_delivery(
        &mut self,
        progress: &mut Progress,
        failure: Failure,
    ) -> Result<()> {
        let (destination, error) = (failure.ticket.destination, &failure.error);
        let topics = &self.sender.topics;
        let topic = self.sender.topic_of(destination);
        let kind = failure.code.and_then(dead_letter::record_refusal);
        let Some(kind) = kind.filter(|_| {
            !matches!(
                destination,
                Destination::Reference | Destination::ResultDeadLetter
            )
        }) else {
            return Err(Error::Kafka(format!("cannot deliver to {topic}: {error}")));
        };
        let rejection = dead_letter::refused_on_delivery(topic, kind, error);
        if destination.is_output() {
            self.stats.reject(kind, &rejection.reason);
        }
        let at = failure.ticket.at;
        let resent = match (destination, failure.refused_result, at) {
            (Destination::Result, Some((key, value)), _) => {
                log::warn!(
                    "worker {}: a result: {}; dead-lettered",
                    self.id,
                    rejection.reason
                );
                self.sender.result_dead_letter(&key, &value, &rejection)
            }
            (_, _, Some(at)) => {
                let Some((partition, offset)) = self.batches.position(at) else {
                    return Err(Error::Kafka(format!(
                        "a refused delivery to {topic} names no record read ({error})"
                    )));
                };
                log::warn!(
                    "worker {}: {} partition {partition} offset {offset}: {}; dead-lettered by reference",
                    self.id,
                    topics.input,
                    rejection.reason
                );
                // The input record is no longer in memory: its headers stay with it.
                self.sender.reference(
                    None,
                    Some(at),
                    (partition, offset),
                    failure.size,
                    None,
                    &rejection,
                )
            }
            _ => return Err(Error::Kafka(format!("cannot deliver to {topic}: {error}"))),
        };
        let mut sent = Sends::default();
        queue(&mut self.commit, resent, &mut sent)
            .map_err(|e| Error::Kafka(format!("cannot dead-letter a refused record: {e}")))?;
        match at {
            Some(at) => {
                self.batches
                    .replaced(&self.delivered.batches, at.slot, destination, sent.records);
                progress.in_flight += sent.records as usize;
            }
            None => self.sent += u64::from(sent.records),
        }
        Ok(())
    }
}

/// Records queued for one input record (or one batch of results).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sends {
    pub records: u32,
    /// Of them, outputs (the rest are dead letters or marks).
    pub outputs: u32,
}

/// A send's result: a queued record counts in `sent` and, exactly once, with its
/// transaction.
pub(super) fn queue(
    commit: &mut Commit,
    result: std::result::Result<Destination, KafkaError>,
    sent: &mut Sends,
) -> std::result::Result<(), KafkaError> {
    let destination = result?;
    sent.records += 1;
    if destination.is_output() {
        sent.outputs += 1;
    }
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
