//! How a worker reads the queues of its partitions ([`super::group`] splits one per
//! partition): the first record of a batch from whichever queue has one, then the rest of
//! the batch with the queues taking turns.
//!
//! Guarantee: within a batch each queue gives at most its share before the next one's turn,
//! so no partition is read to its end while the others wait in full queues (librdkafka then
//! fetches only the partition being read, one fetch at a time). Records of a partition the
//! worker no longer owns are left in their queue for its next owner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Poll;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::MessageStream;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

use super::group::{Member, PartitionQueue};

type Read<'a> = std::result::Result<BorrowedMessage<'a>, KafkaError>;

/// The first record (or event) of any of `queues`, asked from partition `from` on;
/// pending while they are all empty, or there are none. Each call registers with every
/// queue once, not per record.
pub(super) async fn first_message(
    queues: &BTreeMap<i32, Arc<PartitionQueue>>,
    from: i32,
) -> Read<'_> {
    let mut streams = streams_from(queues, from);
    std::future::poll_fn(|cx| {
        for (_, stream) in &mut streams {
            if let Poll::Ready(Some(message)) = stream.poll_next_unpin(cx) {
                return Poll::Ready(message);
            }
        }
        Poll::Pending
    })
    .await
}

/// A stream of each of `queues`, with its partition, in partition order from `from` on,
/// wrapping around.
fn streams_from(
    queues: &BTreeMap<i32, Arc<PartitionQueue>>,
    from: i32,
) -> Vec<(i32, MessageStream<'_, Member>)> {
    queues
        .range(from..)
        .chain(queues.range(..from))
        .map(|(&partition, queue)| (partition, queue.stream()))
        .collect()
}

/// The rest of a batch: the queues in turn, from partition `start` on, each giving at most
/// its share of `batch` records before the next.
pub(super) struct Turns<'a> {
    streams: Vec<(i32, MessageStream<'a, Member>)>,
    share: usize,
    turn: usize,
    /// Records taken from the queue whose turn it is.
    from_turn: usize,
}

impl<'a> Turns<'a> {
    pub(super) fn new(
        queues: &'a BTreeMap<i32, Arc<PartitionQueue>>,
        start: i32,
        batch: usize,
    ) -> Self {
        let streams = streams_from(queues, start);
        Turns {
            share: (batch / streams.len().max(1)).max(1),
            streams,
            turn: 0,
            from_turn: 0,
        }
    }

    /// Counts a record taken from the queue whose turn it is.
    pub(super) fn taken(&mut self) {
        self.from_turn += 1;
    }

    /// The next record already fetched for one of the partitions `owned`, if any queue has
    /// one.
    pub(super) fn next(&mut self, owned: &BTreeSet<i32>) -> Option<Read<'a>> {
        let mut empty_in_a_row = 0;
        while empty_in_a_row < self.streams.len() {
            if self.from_turn >= self.share {
                self.pass();
            }
            let (partition, stream) = &mut self.streams[self.turn];
            if owned.contains(partition)
                && let Some(Some(message)) = stream.next().now_or_never()
            {
                return Some(message);
            }
            // Empty for now (or no longer owned): the next one's turn.
            empty_in_a_row += 1;
            self.pass();
        }
        None
    }

    fn pass(&mut self) {
        self.turn = (self.turn + 1) % self.streams.len();
        self.from_turn = 0;
    }
}
