//! Which input positions may be committed: the runner's bookkeeping of reads and
//! acknowledgements, per worker.
//!
//! Records are registered as they are read and released when everything sent for them
//! (any number of outputs or dead letters; none when a job only counts a record) is
//! delivered, in any order: the worker says so once per read batch
//! ([`super::batches`]). For each partition the committable position is one past the last
//! offset of the *contiguous* released prefix, so a commit never covers a record whose
//! output is still in flight. Pure: no Kafka here.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
struct PartitionTrack {
    /// Offsets read and not yet released, ascending, with whether everything sent for
    /// them is delivered.
    pending: VecDeque<(i64, bool)>,
    /// Next offset to commit (one past the last released record).
    committable: Option<i64>,
    /// What the last commit stored.
    committed: Option<i64>,
    /// The highest offset read.
    last_read: Option<i64>,
    /// Where the consumer said the partition ends (past a transaction marker, say): the
    /// committable position once nothing before it is in flight.
    end: Option<i64>,
}

impl PartitionTrack {
    /// Releases the front records with nothing in flight.
    fn release(&mut self) {
        while let Some(&(offset, true)) = self.pending.front() {
            self.pending.pop_front();
            self.committable = Some(offset + 1);
        }
        if self.pending.is_empty()
            && let Some(end) = self.end
            && self.committable.is_none_or(|c| c < end)
        {
            self.committable = Some(end);
        }
    }
}

/// Tracks reads and deliveries per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, PartitionTrack>,
}

impl OffsetTracker {
    /// Registers a record read from `partition` at `offset`, and says whether to process
    /// it: `false` when the consumer delivers again a record already read, at or after
    /// the last committed position (a fetch restarted from a stale position; processing
    /// it again would write it twice). An offset below the committed position is a reset
    /// of the partition (the topic was recreated, say): the partition starts afresh.
    pub fn read(&mut self, partition: i32, offset: i64) -> bool {
        let track = self.partitions.entry(partition).or_default();
        if track.last_read.is_some_and(|last| offset <= last) {
            if track.committed.is_none_or(|committed| offset >= committed) {
                return false;
            }
            track.pending.clear();
            track.committable = None;
            track.committed = None;
            track.end = None;
        }
        track.last_read = Some(offset);
        track.pending.push_back((offset, false));
        true
    }

    /// A partition read to its end at `next` (past a transaction marker, say): its
    /// committable position moves there once nothing before it is in flight.
    pub fn skip_to(&mut self, partition: i32, next: i64) {
        let track = self.partitions.entry(partition).or_default();
        if track.last_read.is_some_and(|last| last >= next) {
            return;
        }
        track.last_read = Some(next - 1);
        track.end = Some(next);
        track.release();
    }

    /// Marks the record delivered: everything sent for it (or nothing was). Unknown records
    /// are ignored.
    pub fn delivered(&mut self, partition: i32, offset: i64) {
        let Some(track) = self.partitions.get_mut(&partition) else {
            return;
        };
        // Offsets read are mostly consecutive (gaps come only from transaction markers and
        // compaction): the record is then where its distance from the first says, and the
        // search is for the rest.
        let guess = track
            .pending
            .front()
            .and_then(|&(first, _)| usize::try_from(offset.checked_sub(first)?).ok())
            .filter(|&i| track.pending.get(i).is_some_and(|&(o, _)| o == offset));
        if let Some(index) = guess.or_else(|| {
            track
                .pending
                .binary_search_by_key(&offset, |&(o, _)| o)
                .ok()
        }) {
            track.pending[index].1 = true;
        }
        track.release();
    }

    /// Records read but not yet released, over all partitions.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|t| t.pending.len()).sum()
    }

    /// Records of `partition` read but not yet released: 0 once every one of them is
    /// acknowledged (then its delivered prefix reaches its last record read).
    pub fn in_flight_of(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |t| t.pending.len())
    }

    /// Drops `partition` (revoked or lost): nothing of it is committed any more, and its
    /// late acknowledgements are ignored.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Positions that advanced since the last [`committed`](Self::committed) call.
    pub fn to_commit(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(&p, t)| match t.committable {
                Some(next) if t.committed != Some(next) => Some((p, next)),
                _ => None,
            })
            .collect()
    }

    /// Exactly-once: one past the last record read, per partition whose reads moved since
    /// the last commit (everything read is in the transaction that commits them).
    pub fn read_positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(&p, t)| {
                let next = t.last_read? + 1;
                (t.committed != Some(next)).then_some((p, next))
            })
            .collect()
    }

    /// Records that `positions` were committed.
    pub fn committed(&mut self, positions: &[(i32, i64)]) {
        for &(partition, next) in positions {
            if let Some(track) = self.partitions.get_mut(&partition) {
                track.committed = Some(next);
            }
        }
    }

    /// How far `partition` has been read: one past the last record read, or where the
    /// consumer said it ends, whichever is further.
    pub fn reached(&self, partition: i32) -> Option<i64> {
        let track = self.partitions.get(&partition)?;
        [track.last_read.map(|o| o + 1), track.end, track.committed]
            .into_iter()
            .flatten()
            .max()
    }

    /// The next offset to read per partition, as far as this tracker knows.
    pub fn last_committed(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|t| t.committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_delivered_prefix_is_committable() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            assert!(t.read(0, o));
        }
        t.delivered(0, 12);
        t.delivered(0, 11);
        assert!(t.to_commit().is_empty(), "10 is still in flight");
        t.delivered(0, 10);
        assert_eq!(t.to_commit(), vec![(0, 13)]);
        assert_eq!(t.in_flight(), 2);
        t.committed(&[(0, 13)]);
        assert!(t.to_commit().is_empty());
        t.delivered(0, 14);
        assert!(t.to_commit().is_empty(), "13 is still in flight");
        t.delivered(0, 13);
        assert_eq!(t.to_commit(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_record_is_released_once_delivered_and_the_end_past_a_marker_is_committable() {
        let mut t = OffsetTracker::default();
        t.read(0, 1);
        t.delivered(0, 1);
        assert_eq!(t.to_commit(), vec![(0, 2)], "counted, nothing to send");
        t.read(0, 2);
        t.read(0, 3);
        t.delivered(0, 3);
        assert_eq!(t.to_commit(), vec![(0, 2)], "2 in flight");
        assert_eq!(t.read_positions(), vec![(0, 4)]);
        t.delivered(0, 2);
        assert_eq!(t.to_commit(), vec![(0, 4)]);
        t.committed(&[(0, 4)]);
        assert!(t.read_positions().is_empty());
        t.skip_to(0, 6);
        assert_eq!(t.to_commit(), vec![(0, 6)], "a transaction marker at 4..6");
        assert!(!t.read(0, 5));
    }

    #[test]
    fn partitions_are_independent_and_gaps_in_offsets_are_fine() {
        let mut t = OffsetTracker::default();
        t.read(0, 5);
        t.read(1, 100);
        t.read(1, 107); // compacted or transactional gap
        t.delivered(1, 107);
        t.delivered(1, 100);
        assert_eq!(t.to_commit(), vec![(1, 108)]);
        t.delivered(0, 5);
        assert_eq!(t.to_commit(), vec![(0, 6), (1, 108)]);
        // After a gap, the slot an offset's distance points at holds another record.
        for o in [200, 202, 203, 204] {
            t.read(2, o);
        }
        t.delivered(2, 202);
        t.delivered(2, 200);
        assert_eq!(t.to_commit(), vec![(0, 6), (1, 108), (2, 203)]);
        t.delivered(2, 204);
        t.delivered(2, 203);
        assert_eq!(t.to_commit(), vec![(0, 6), (1, 108), (2, 205)]);
    }

    #[test]
    fn a_forgotten_partition_commits_nothing_and_ignores_late_acks() {
        let mut t = OffsetTracker::default();
        t.read(0, 1);
        t.read(0, 2);
        t.read(1, 7);
        assert_eq!((t.in_flight_of(0), t.in_flight_of(1)), (2, 1));
        t.delivered(0, 1);
        assert_eq!(t.in_flight_of(0), 1);
        t.forget(0);
        t.delivered(0, 2);
        assert_eq!(t.in_flight_of(0), 0);
        assert!(t.to_commit().is_empty(), "{:?}", t.to_commit());
        t.delivered(1, 7);
        assert_eq!(t.to_commit(), vec![(1, 8)]);
    }

    #[test]
    fn a_record_delivered_again_is_not_processed_again() {
        let mut t = OffsetTracker::default();
        assert!(t.read(0, 50));
        assert!(t.read(0, 51));
        assert!(!t.read(0, 51), "in flight, delivered again");
        t.delivered(0, 50);
        t.delivered(0, 51);
        assert!(
            !t.read(0, 50),
            "delivered and not yet committed, delivered again"
        );
        assert_eq!(t.to_commit(), vec![(0, 52)]);
        t.committed(&[(0, 52)]);
        assert!(t.read(0, 52));
        assert_eq!(t.in_flight_of(0), 1);
        t.forget(0);
        assert!(t.read(0, 40), "a partition assigned anew starts afresh");
    }

    #[test]
    fn unknown_acks_are_ignored_and_a_reset_below_the_commit_restarts_a_partition() {
        let mut t = OffsetTracker::default();
        t.delivered(3, 1);
        assert!(t.read(0, 50));
        t.delivered(0, 50);
        t.committed(&[(0, 51)]);
        assert!(t.read(0, 51));
        assert!(t.read(0, 3), "the topic was recreated: offsets start over");
        t.delivered(0, 51);
        assert!(t.to_commit().is_empty(), "{:?}", t.to_commit());
        t.delivered(0, 3);
        assert_eq!(t.to_commit(), vec![(0, 4)]);
    }
}
