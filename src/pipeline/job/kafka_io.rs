//! `kafka-io` (the article's job): each event parsed into an `EventLog` and republished,
//! keyed by `{"event_id", "event_ts"}`; a record that does not parse is rejected with the
//! reason. Stateless: one output per record, nothing to save with a commit.

use std::sync::Arc;

use super::{Emitter, Job, Outcome, Record, run_stages};
use crate::pipeline::Stats;
use crate::windows::Now;

pub(super) struct KafkaIo {
    stats: Arc<Stats>,
}

impl KafkaIo {
    pub(super) fn new(stats: Arc<Stats>) -> Self {
        KafkaIo { stats }
    }
}

impl Job for KafkaIo {
    fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
        let (key, value) = out.record();
        match run_stages(record.payload, &self.stats, key, value) {
            Ok(()) => Outcome::Emitted,
            Err(rejection) => {
                out.clear();
                Outcome::Rejected(rejection)
            }
        }
    }
}
