//! `user-traffic` (`user_traffic.py`): page views and bytes per user, one line per user in
//! user order, written when the input ends. A batch job over files: its totals live in
//! memory only and are never saved, so it has no Kafka mode (the CLI says so).

use std::collections::BTreeMap;

use super::{BEAM_OPERATORS, Emitter, Job, Now, Operator, Outcome, Record};
use crate::schema::write_python_str;

/// Decode and Parse as the article's job, then the totals.
const OPERATORS: [Operator; 3] = [
    BEAM_OPERATORS[0],
    BEAM_OPERATORS[1],
    Operator::new("Total per user", "total"),
];

#[derive(Debug, Default)]
pub(super) struct UserTraffic {
    users: Users,
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
        self.users = Users::default();
    }
}

/// One user's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserTotals {
    page_views: u64,
    total_bytes: i64,
    max_bytes: i64,
    min_bytes: i64,
}

/// Page views and bytes per user (`user_traffic.py`), in user order.
#[derive(Debug, Default)]
struct Users {
    users: BTreeMap<Box<str>, UserTotals>,
}

impl Users {
    fn add(&mut self, id: &str, file_size_bytes: i64) {
        match self.users.get_mut(id) {
            Some(t) => {
                t.page_views += 1;
                t.total_bytes = t.total_bytes.saturating_add(file_size_bytes);
                t.max_bytes = t.max_bytes.max(file_size_bytes);
                t.min_bytes = t.min_bytes.min(file_size_bytes);
            }
            None => {
                self.users.insert(
                    id.into(),
                    UserTotals {
                        page_views: 1,
                        total_bytes: file_size_bytes,
                        max_bytes: file_size_bytes,
                        min_bytes: file_size_bytes,
                    },
                );
            }
        }
    }

    /// One JSON line per user, as the original's `json.dumps(UserTraffic._asdict())`.
    fn write_lines(&self, out: &mut Vec<u8>) {
        for (id, t) in &self.users {
            out.extend_from_slice(b"{\"id\": ");
            write_python_str(out, id);
            let mut number = itoa::Buffer::new();
            for (name, value) in [
                ("page_views", t.page_views as i64),
                ("total_bytes", t.total_bytes),
                ("max_bytes", t.max_bytes),
                ("min_bytes", t.min_bytes),
            ] {
                out.extend_from_slice(b", \"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\": ");
                out.extend_from_slice(number.format(value).as_bytes());
            }
            out.extend_from_slice(b"}\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_user_traffic_test() {
        let mut users = Users::default();
        for size in [207, 446, 318] {
            users.add("u", size);
        }
        users.add("v\"é", 5);
        let mut out = Vec::new();
        users.write_lines(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\": \"u\", \"page_views\": 3, \"total_bytes\": 971, \"max_bytes\": 446, \"min_bytes\": 207}\n\
             {\"id\": \"v\\\"\\u00e9\", \"page_views\": 1, \"total_bytes\": 5, \"max_bytes\": 5, \"min_bytes\": 5}\n"
        );
    }
}
