//! The workers of one run of the runner in this process, as one: they leave the group
//! together (no worker's leaving starts a rebalance while a sibling still commits), and,
//! `--bounded`, they share the input's ends and whether the whole job has drained them.
//!
//! Guarantee: a change of any worker's readiness, or ends given later, wakes every worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The workers of this process, so that they leave the group together.
pub(crate) struct Siblings {
    /// Bit `w`: worker `w` is ready to leave (or has left).
    ready: AtomicU64,
    all: u64,
    pub(super) changed: Notify,
    /// `--bounded`: the input's end offsets when the job started (the second stage of a
    /// grouped job: once the first has drained the input).
    pub(super) ends: OnceLock<BTreeMap<i32, i64>>,
    /// The ends came later: a worker is done with a partition only once it has read up to
    /// its end (an end of partition seen before then says nothing).
    pub(super) late_ends: AtomicBool,
    /// `--bounded`: the job's committed positions reached `ends`.
    pub(super) drained: AtomicBool,
}

impl Siblings {
    pub(super) fn new(workers: usize) -> Self {
        Siblings {
            ready: AtomicU64::new(0),
            all: if workers >= 64 {
                u64::MAX
            } else {
                (1u64 << workers) - 1
            },
            changed: Notify::new(),
            ends: OnceLock::new(),
            late_ends: AtomicBool::new(false),
            drained: AtomicBool::new(false),
        }
    }

    pub(super) fn report(&self, worker: usize, ready: bool) {
        let bit = 1u64 << worker;
        let before = if ready {
            self.ready.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.ready.fetch_and(!bit, Ordering::AcqRel)
        };
        if (before & bit != 0) != ready {
            self.changed.notify_waiters();
        }
    }

    pub(super) fn all_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) == self.all
    }

    /// `--bounded`: the input's ends, known at the start.
    pub(super) fn set_ends(&self, ends: BTreeMap<i32, i64>) {
        let _ = self.ends.set(ends);
    }

    /// `--bounded`: the input's ends, when `later` gives them (the second stage of a
    /// grouped job); the workers are woken to look.
    pub(super) fn set_ends_later(
        siblings: &Arc<Siblings>,
        later: tokio::sync::oneshot::Receiver<BTreeMap<i32, i64>>,
    ) {
        let siblings = Arc::clone(siblings);
        tokio::spawn(async move {
            if let Ok(ends) = later.await {
                let _ = siblings.ends.set(ends);
                siblings.late_ends.store(true, Ordering::Release);
                siblings.changed.notify_waiters();
            }
        });
    }
}
