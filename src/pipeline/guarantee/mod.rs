//! The processing guarantee: a commit strategy of the one runner, not an engine of its own
//! (as rust-rdkafka's `at_least_once.rs` and `transactions.rs` run one loop and differ in
//! how they commit; as Kafka Streams' `processing.guarantee` applies to every topology).
//!
//! - [`AtLeastOnce`](at_least_once): commit the contiguous acknowledged prefix of each
//!   partition (and, for a stateful job, only at a moment when every output sent has been
//!   acknowledged), with the job's saved state as the commit's metadata.
//! - [`ExactlyOnce`](exactly_once): one transaction per commit interval holding the
//!   outputs, the dead letters, the input positions and the job's saved state.
//!
//! Every job runs under both.

pub(super) mod at_least_once;
pub(super) mod exactly_once;
pub mod instance;

pub use exactly_once::ExactlyOnce;

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Committed {
    /// Done, or nothing to commit.
    Yes,
    /// The cluster refused it (say, during a rebalance): try again.
    Failed,
    /// No answer in time; it may still complete in the background.
    TimedOut,
    /// Exactly once: the transaction was aborted instead; what it read is read again.
    Aborted,
}
