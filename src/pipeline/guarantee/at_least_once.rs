//! At-least-once: a worker commits, with its consumer, every position whose records'
//! outputs have all been acknowledged (the [`OffsetTracker`]'s contiguous prefix, held back
//! by the job's state), with the job's saved state as each position's metadata.
//!
//! Guarantee: a crash at any moment loses nothing; what was in flight is read and written
//! again on restart (duplicates are possible, loss is not).
//!
//! [`OffsetTracker`]: crate::pipeline::runner::offsets::OffsetTracker

use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio::time::Instant;

use super::Committed;
use crate::pipeline::runner::group::Member;

/// Longest wait for a periodic commit. librdkafka's synchronous commit has no timeout of
/// its own and waits for a group coordinator that may be down; past this the worker goes
/// on, and the commit is tried again at the next checkpoint.
pub(crate) const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits `list` (positions with metadata), waiting for the answer until `deadline`
/// (`None`: as long as librdkafka takes). The commit runs on a blocking thread, so a
/// coordinator that never answers delays the worker no longer.
pub(crate) async fn commit(
    worker: usize,
    consumer: &Arc<StreamConsumer<Member>>,
    list: TopicPartitionList,
    deadline: Option<Instant>,
) -> Committed {
    let consumer = Arc::clone(consumer);
    let commit = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
    let result = match deadline {
        None => commit.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, commit).await {
            Ok(result) => result,
            Err(_) => {
                log::debug!("worker {worker}: commit timed out");
                return Committed::TimedOut;
            }
        },
    };
    match result {
        Ok(Ok(())) => Committed::Yes,
        Ok(Err(e)) => {
            log::warn!("worker {worker}: commit failed ({e}); trying again");
            Committed::Failed
        }
        Err(e) => {
            log::warn!("worker {worker}: commit task failed ({e}); trying again");
            Committed::Failed
        }
    }
}
