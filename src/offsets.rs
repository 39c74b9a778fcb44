//! Which input positions may be committed: the at-least-once bookkeeping of a worker.
//!
//! Records are registered as they are read and acknowledged when their output (or
//! dead letter) is delivered, in any order. For each partition the committable position
//! is one past the last offset of the *contiguous* acknowledged prefix, so a commit never
//! covers a record whose output is still in flight. Pure: no Kafka here.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
struct PartitionTrack {
    /// Offsets read and not yet released, ascending, with their acknowledgement.
    pending: VecDeque<(i64, bool)>,
    /// Next offset to commit (one past the last released record).
    committable: Option<i64>,
    /// What the last commit stored.
    committed: Option<i64>,
    /// The highest offset read.
    last_read: Option<i64>,
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
        }
        track.last_read = Some(offset);
        track.pending.push_back((offset, false));
        true
    }

    /// Marks the record delivered. Unknown records are ignored.
    pub fn ack(&mut self, partition: i32, offset: i64) {
        let Some(track) = self.partitions.get_mut(&partition) else {
            return;
        };
        if let Ok(index) = track.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            track.pending[index].1 = true;
        }
        while let Some(&(offset, true)) = track.pending.front() {
            track.pending.pop_front();
            track.committable = Some(offset + 1);
        }
    }

    /// Records read but not yet released, over all partitions.
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

    /// Records that `positions` were committed.
    pub fn committed(&mut self, positions: &[(i32, i64)]) {
        for &(partition, next) in positions {
            if let Some(track) = self.partitions.get_mut(&partition) {
                track.committed = Some(next);
            }
        }
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
        t.ack(0, 12);
        t.ack(0, 11);
        assert!(t.to_commit().is_empty(), "10 is still in flight");
        t.ack(0, 10);
        assert_eq!(t.to_commit(), vec![(0, 13)]);
        assert_eq!(t.in_flight(), 2);
        t.committed(&[(0, 13)]);
        assert!(t.to_commit().is_empty());
        t.ack(0, 14);
        assert!(t.to_commit().is_empty(), "13 is still in flight");
        t.ack(0, 13);
        assert_eq!(t.to_commit(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_gaps_in_offsets_are_fine() {
        let mut t = OffsetTracker::default();
        t.read(0, 5);
        t.read(1, 100);
        t.read(1, 107); // compacted or transactional gap
        t.ack(1, 107);
        t.ack(1, 100);
        assert_eq!(t.to_commit(), vec![(1, 108)]);
        t.ack(0, 5);
        assert_eq!(t.to_commit(), vec![(0, 6), (1, 108)]);
    }

    #[test]
    fn a_forgotten_partition_commits_nothing_and_ignores_late_acks() {
        let mut t = OffsetTracker::default();
        t.read(0, 1);
        t.read(0, 2);
        t.read(1, 7);
        assert_eq!((t.in_flight_of(0), t.in_flight_of(1)), (2, 1));
        t.ack(0, 1);
        assert_eq!(t.in_flight_of(0), 1);
        t.forget(0);
        t.ack(0, 2);
        assert_eq!(t.in_flight_of(0), 0);
        assert!(t.to_commit().is_empty(), "{:?}", t.to_commit());
        t.ack(1, 7);
        assert_eq!(t.to_commit(), vec![(1, 8)]);
    }

    #[test]
    fn a_record_delivered_again_is_not_processed_again() {
        let mut t = OffsetTracker::default();
        assert!(t.read(0, 50));
        assert!(t.read(0, 51));
        assert!(!t.read(0, 51), "in flight, delivered again");
        t.ack(0, 50);
        t.ack(0, 51);
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
        t.ack(3, 1);
        assert!(t.read(0, 50));
        t.ack(0, 50);
        t.committed(&[(0, 51)]);
        assert!(t.read(0, 51));
        assert!(t.read(0, 3), "the topic was recreated: offsets start over");
        t.ack(0, 51);
        assert!(t.to_commit().is_empty(), "{:?}", t.to_commit());
        t.ack(0, 3);
        assert_eq!(t.to_commit(), vec![(0, 4)]);
    }
}
