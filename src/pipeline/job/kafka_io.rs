//! `kafka-io` (the article's job): each event parsed into an `EventLog` and republished,
//! keyed by `{"event_id", "event_ts"}`; a record that does not parse is rejected with the
//! reason. Stateless: one output per record, nothing to save with a commit.

use super::{BEAM_OPERATORS, Emitter, Job, Now, Operator, Outcome, Record, run_stages};

#[derive(Debug, Default)]
pub(super) struct KafkaIo;

impl Job for KafkaIo {
    fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
        run_stages(record.value, out)
    }

    fn operators(&self) -> &'static [Operator] {
        &BEAM_OPERATORS
    }
}
