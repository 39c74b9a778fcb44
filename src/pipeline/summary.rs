//! What a run did: the [`Summary`] a program prints on stderr when its job ends.
//!
//! Guarantee: it reconciles, as the stats do: `read = written (or counted) [+ dropped] +
//! dead-lettered + unfinished`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::stats::{RejectionStats, Stats};
use crate::datagen::group_thousands;
use crate::transform::RejectKind;

/// What a run did, printed on stderr at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub read: u64,
    pub written: u64,
    /// Aggregation jobs: events counted (`written` then counts results).
    pub counted: Option<u64>,
    /// Records dropped on purpose (a filter), when any.
    pub dropped: Option<u64>,
    pub dead_lettered: u64,
    /// Read but not acknowledged when the job stopped: read again on restart.
    pub unfinished: u64,
    /// A grouped job's dead letters after the repartition topic (see
    /// [`Totals`](super::stats::Totals)).
    pub dead_lettered_downstream: Option<u64>,
    pub elapsed: Duration,
    pub rejections: BTreeMap<RejectKind, RejectionStats>,
}

impl Summary {
    pub(crate) fn from_stats(stats: &Stats, elapsed: Duration) -> Self {
        let totals = stats.totals();
        Summary {
            read: totals.read,
            written: totals.written,
            counted: totals.counted,
            dropped: totals.dropped,
            dead_lettered: totals.dead_lettered,
            unfinished: totals.in_flight,
            dead_lettered_downstream: totals.dead_lettered_downstream,
            elapsed,
            rejections: stats.rejections(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let (done, counted_or_written) = match self.counted {
            Some(counted) => ("counted", counted),
            None => ("written", self.written),
        };
        write!(
            f,
            "read {} = {done} {}",
            group_thousands(self.read),
            group_thousands(counted_or_written),
        )?;
        if let Some(dropped) = self.dropped {
            write!(f, " + dropped {}", group_thousands(dropped))?;
        }
        write!(
            f,
            " + dead-lettered {}",
            group_thousands(self.dead_lettered)
        )?;
        if self.unfinished > 0 {
            write!(
                f,
                " + unfinished {} (read again on restart)",
                group_thousands(self.unfinished)
            )?;
        }
        write!(
            f,
            " in {:.2} s ({} records/s)",
            secs,
            group_thousands((self.read as f64 / secs).round() as u64)
        )?;
        if self.counted.is_some() {
            write!(f, "; {} results written", group_thousands(self.written))?;
        }
        if let Some(downstream) = self.dead_lettered_downstream {
            write!(
                f,
                " (through the repartition topic; {} dead-lettered after it)",
                group_thousands(downstream)
            )?;
        }
        for (kind, rejected) in &self.rejections {
            write!(
                f,
                "\n  dead letters {}: {} (latest: {})",
                kind.as_str(),
                rejected.count,
                rejected.last_reason
            )?;
        }
        Ok(())
    }
}
