//! `user-traffic` (`user_traffic.py`): page views and bytes per user, one line per user in
//! user order, written when the input ends. A batch job over files: its totals live in
//! memory only and are never saved, so it has no Kafka mode (the CLI says so).

use super::{BEAM_OPERATORS, Emitter, Job, Now, Operator, Outcome, Record};

/// Decode and Parse as the article's job, then the totals.
const OPERATORS: [Operator; 3] = [
    BEAM_OPERATORS[0],
    BEAM_OPERATORS[1],
    Operator::new("Total per user", "total"),
];

#[derive(Debug, Default)]
pub(super) struct UserTraffic {
    users: crate::windows::UserTraffic,
    lines: Vec<u8>,
}

impl Job for UserTraffic {
    fn process(&mut self, record: &Record<'_>, _now: Now, _out: &mut Emitter) -> Outcome {
        match crate::transform::visit(record.value) {
            Ok(event) => {
                self.users.add(&event.id, event.file_size_bytes);
                Outcome::Counted
            }
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    fn operators(&self) -> &'static [Operator] {
        &OPERATORS
    }

    fn forwards_headers(&self) -> bool {
        false
    }

    fn aggregates(&self) -> bool {
        true
    }

    fn finish(&mut self, out: &mut Emitter) {
        self.lines.clear();
        self.users.write_lines(&mut self.lines);
        for line in self.lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let (key, value) = out.record();
            if let Some(id) = line
                .strip_prefix(b"{\"id\": ")
                .and_then(|rest| rest.split(|&b| b == b',').next())
            {
                key.extend_from_slice(id);
            }
            value.extend_from_slice(line);
        }
        self.users = crate::windows::UserTraffic::default();
    }
}
