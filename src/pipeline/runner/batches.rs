//! Delivery tickets per read batch: what a record sent carries to its delivery report, and
//! how a worker learns that every record sent for a batch of reads is delivered.
//!
//! Each record sent carries a [`Ticket`] packed into librdkafka's delivery opaque (a
//! `usize`: no allocation per record). It names the worker and what the record is, and,
//! for a record that stands for an input position, the slot of the read batch it belongs
//! to and the index of its input record there. The producer's context counts each
//! successful delivery down on its slot ([`Outstanding`]) and tells the worker once, when
//! the slot reaches zero: one message per batch, not one per record. A failed delivery is
//! reported on its own, with its ticket; the worker counts it down itself once it has dealt
//! with it (after queueing any dead letter in its place, in the same slot).
//!
//! Guarantees:
//! - A slot is complete exactly once: when every record sent for it (replacements
//!   included) is delivered or dealt with. Whoever brings its count to zero (the producer's
//!   context, or the worker when it closes the batch or deals with a failure) completes it.
//! - A slot is reused only after the worker has taken its completion, so a report never
//!   names a position of another batch. The worker reads only while a slot is free.

use std::sync::atomic::{AtomicU32, Ordering};

use super::send::Destination;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("delivery tickets are packed into a 64-bit delivery opaque");

/// Read batches a worker may have in flight. Under load a batch holds hundreds of records;
/// at a trickle, one each: the in-flight budget binds long before the slots run out.
pub(crate) const SLOTS: usize = 16_384;

/// Added to a slot's count while its batch is still being sent: no delivery can bring it to
/// zero before the worker has counted every send.
const OPEN: u32 = 1 << 31;

/// Where in a worker's read batches a record sent belongs: for a record standing for an
/// input position, its batch's slot and the index of its input record in that batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub slot: u16,
    pub index: u16,
}

/// What a record sent carries to its delivery report, packed into one `usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub worker: u16,
    pub destination: Destination,
    pub at: Option<At>,
}

const DESTINATIONS: [Destination; 6] = [
    Destination::Output,
    Destination::DeadLetter,
    Destination::Reference,
    Destination::Result,
    Destination::ResultDeadLetter,
    Destination::Mark,
];

impl Ticket {
    /// Bits 0–2: the destination; bit 3: whether it has a position; 4–19: the index;
    /// 20–35: the slot; 36–51: the worker.
    pub(crate) fn pack(self) -> usize {
        let destination = DESTINATIONS
            .iter()
            .position(|&d| d == self.destination)
            .unwrap_or(0);
        let at = self.at.map_or(0, |at| {
            1 << 3 | usize::from(at.index) << 4 | usize::from(at.slot) << 20
        });
        destination | at | usize::from(self.worker) << 36
    }

    /// The ticket [`Ticket::pack`] made; `None` for any other value.
    pub(crate) fn unpack(packed: usize) -> Option<Ticket> {
        let destination = *DESTINATIONS.get(packed & 0b111)?;
        let field = |shift: u32| (packed >> shift & 0xFFFF) as u16;
        let at = (packed & 1 << 3 != 0).then(|| At {
            index: field(4),
            slot: field(20),
        });
        Some(Ticket {
            worker: field(36),
            destination,
            at,
        })
    }
}

/// Per worker, shared with the producer's context: each slot's records sent and not yet
/// delivered (plus [`OPEN`] while its batch is being sent).
#[derive(Debug)]
pub(crate) struct Outstanding {
    slots: Box<[AtomicU32]>,
}

impl Default for Outstanding {
    fn default() -> Self {
        Outstanding {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Outstanding {
    fn slot(&self, slot: u16) -> Option<&AtomicU32> {
        self.slots.get(usize::from(slot))
    }

    /// One record of `slot` delivered, or dealt with: whether that completed the slot.
    pub(crate) fn done(&self, slot: u16) -> bool {
        self.slot(slot)
            .is_some_and(|count| count.fetch_sub(1, Ordering::AcqRel) == 1)
    }
}

/// What a worker keeps of one read batch until every record sent for it is delivered.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// By index: the input position of each record with something sent for it.
    pub positions: Vec<(i32, i64)>,
    /// Timestamps (ms since the epoch) of the input records whose end-to-end latency is
    /// measured once the batch is delivered.
    pub sampled: Vec<i64>,
    /// Records sent for the batch's positions, replacements included.
    pub sent: u32,
    /// Of them, outputs (the rest are dead letters).
    pub outputs: u32,
}

/// A worker's read batches in flight, by slot.
#[derive(Debug)]
pub(crate) struct BatchTable {
    batches: Vec<Batch>,
    free: Vec<u16>,
    /// The batch being read, if any.
    open: Option<u16>,
}

impl Default for BatchTable {
    fn default() -> Self {
        BatchTable {
            batches: (0..SLOTS).map(|_| Batch::default()).collect(),
            // Popped from the end: slot 0 first.
            free: (0..SLOTS as u16).rev().collect(),
            open: None,
        }
    }
}

impl BatchTable {
    /// Whether a batch can be opened.
    pub(crate) fn has_free(&self) -> bool {
        self.open.is_some() || !self.free.is_empty()
    }

    /// Opens a batch (the one still open, if any): false when every slot is in flight.
    pub(crate) fn open(&mut self, outstanding: &Outstanding) -> bool {
        if self.open.is_some() {
            return true;
        }
        let Some(slot) = self.free.pop() else {
            return false;
        };
        if let Some(count) = outstanding.slot(slot) {
            count.store(OPEN, Ordering::Release);
        }
        self.open = Some(slot);
        true
    }

    /// Where the next record with something to send belongs in the open batch.
    pub(crate) fn next(&self) -> Option<At> {
        let slot = self.open?;
        let index = u16::try_from(self.batches.get(usize::from(slot))?.positions.len()).ok()?;
        Some(At { slot, index })
    }

    /// The record at `at` (its input `position`) had `sent` records queued, `outputs` of
    /// them outputs; `sample` is its timestamp when its latency is measured.
    pub(crate) fn sent(
        &mut self,
        at: At,
        position: (i32, i64),
        (sent, outputs): (u32, u32),
        sample: Option<i64>,
    ) {
        if let Some(batch) = self.batches.get_mut(usize::from(at.slot))
            && usize::from(at.index) == batch.positions.len()
        {
            batch.positions.push(position);
            batch.sent += sent;
            batch.outputs += outputs;
            batch.sampled.extend(sample);
        }
    }

    /// Closes the open batch: every record sent for it is counted. Returns its slot when
    /// that completed it (everything was delivered already, or nothing was sent).
    pub(crate) fn close(&mut self, outstanding: &Outstanding) -> Option<u16> {
        let slot = self.open.take()?;
        let sent = self.batches.get(usize::from(slot)).map_or(0, |b| b.sent);
        let count = outstanding.slot(slot)?;
        let lift = OPEN - sent;
        (count.fetch_sub(lift, Ordering::AcqRel) == lift).then_some(slot)
    }

    /// The input position of the record at `at`.
    pub(crate) fn position(&self, at: At) -> Option<(i32, i64)> {
        self.batches
            .get(usize::from(at.slot))?
            .positions
            .get(usize::from(at.index))
            .copied()
    }

    /// A failed record of `slot` has `sent` dead letters queued in its place (not yet
    /// counted down: the failure still holds the slot open).
    pub(crate) fn replaced(
        &mut self,
        outstanding: &Outstanding,
        slot: u16,
        failed: Destination,
        sent: u32,
    ) {
        if let Some(batch) = self.batches.get_mut(usize::from(slot)) {
            batch.sent += sent;
            if failed.is_output() {
                batch.outputs = batch.outputs.saturating_sub(1);
            }
        }
        if let Some(count) = outstanding.slot(slot) {
            count.fetch_add(sent, Ordering::AcqRel);
        }
    }

    /// Takes a complete batch out of its slot, which is free again.
    pub(crate) fn complete(&mut self, slot: u16, done: impl FnOnce(&Batch)) {
        let Some(batch) = self.batches.get_mut(usize::from(slot)) else {
            return;
        };
        done(batch);
        batch.positions.clear();
        batch.sampled.clear();
        batch.sent = 0;
        batch.outputs = 0;
        // Completed exactly once (see the module's guarantee): freed exactly once.
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_comes_back_as_it_was_packed() {
        for destination in DESTINATIONS {
            for at in [
                None,
                Some(At { slot: 0, index: 0 }),
                Some(At {
                    slot: (SLOTS - 1) as u16,
                    index: 511,
                }),
                Some(At {
                    slot: u16::MAX,
                    index: u16::MAX,
                }),
            ] {
                for worker in [0, 2, u16::MAX] {
                    let ticket = Ticket {
                        worker,
                        destination,
                        at,
                    };
                    assert_eq!(Ticket::unpack(ticket.pack()), Some(ticket));
                }
            }
        }
        assert_eq!(Ticket::unpack(0b111), None, "no such destination");
    }

    /// Opens a batch, records `n` sends for one record each, and closes it.
    fn batch_of(table: &mut BatchTable, outstanding: &Outstanding, n: u32) -> (u16, Option<u16>) {
        assert!(table.open(outstanding));
        let slot = table.next().map(|at| at.slot).unwrap_or(u16::MAX);
        for offset in 0..n {
            let at = table.next().unwrap_or(At { slot, index: 0 });
            table.sent(at, (0, i64::from(offset)), (1, 1), None);
        }
        (slot, table.close(outstanding))
    }

    #[test]
    fn a_batch_completes_once_when_its_last_delivery_comes_after_it_closed() {
        let (mut table, outstanding) = (BatchTable::default(), Outstanding::default());
        assert!(table.open(&outstanding));
        let slot = table.next().map(|at| at.slot).unwrap_or(u16::MAX);
        for offset in 0..3 {
            let at = table.next().unwrap_or(At { slot, index: 0 });
            table.sent(at, (0, offset), (1, 1), None);
        }
        // One delivered while the batch is still being read: not complete.
        assert!(!outstanding.done(slot));
        assert_eq!(table.close(&outstanding), None, "two still in flight");
        assert!(!outstanding.done(slot));
        assert!(outstanding.done(slot), "the last delivery completes it");
        let mut seen = Vec::new();
        table.complete(slot, |batch| seen.clone_from(&batch.positions));
        assert_eq!(seen, [(0, 0), (0, 1), (0, 2)]);
    }

    #[test]
    fn a_batch_delivered_before_it_closes_is_completed_by_the_close() {
        let (mut table, outstanding) = (BatchTable::default(), Outstanding::default());
        assert!(table.open(&outstanding));
        let at = table.next().unwrap_or(At { slot: 0, index: 9 });
        table.sent(at, (1, 7), (2, 2), Some(1_000));
        assert!(!outstanding.done(at.slot));
        assert!(
            !outstanding.done(at.slot),
            "open: the close has not counted"
        );
        assert_eq!(table.close(&outstanding), Some(at.slot));
        let (_, nothing_sent) = batch_of(&mut table, &outstanding, 0);
        assert!(
            nothing_sent.is_some(),
            "a batch with nothing sent is complete"
        );
    }

    #[test]
    fn a_failure_holds_its_batch_until_its_dead_letter_is_delivered() {
        let (mut table, outstanding) = (BatchTable::default(), Outstanding::default());
        let (slot, complete) = batch_of(&mut table, &outstanding, 2);
        assert_eq!(complete, None);
        // The first record is delivered; the second fails (not counted down by the
        // context), and the worker queues its dead letter in the same slot.
        assert!(!outstanding.done(slot));
        let failed = At { slot, index: 1 };
        assert_eq!(table.position(failed), Some((0, 1)));
        table.replaced(&outstanding, slot, Destination::Output, 1);
        assert!(!outstanding.done(slot), "the failure dealt with");
        assert!(outstanding.done(slot), "the dead letter delivered");
        let mut counts = (0, 0);
        table.complete(slot, |batch| counts = (batch.sent, batch.outputs));
        assert_eq!(counts, (3, 1), "two sent, one replaced; one output left");
    }

    #[test]
    fn a_slot_is_reused_only_once_its_batch_is_complete() {
        let (mut table, outstanding) = (BatchTable::default(), Outstanding::default());
        let mut held = Vec::new();
        for _ in 0..SLOTS {
            let (slot, complete) = batch_of(&mut table, &outstanding, 1);
            assert_eq!(complete, None);
            held.push(slot);
        }
        assert!(!table.has_free());
        assert!(!table.open(&outstanding), "every slot in flight");
        let first = held[0];
        assert!(outstanding.done(first));
        table.complete(first, |_| {});
        assert!(table.has_free());
        let (again, _) = batch_of(&mut table, &outstanding, 1);
        assert_eq!(again, first);
        held.sort_unstable();
        held.dedup();
        assert_eq!(held.len(), SLOTS, "no slot handed out twice");
    }
}
