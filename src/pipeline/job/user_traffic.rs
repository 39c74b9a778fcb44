//! `user-traffic` (`user_traffic.py`): page views and bytes per user, one line per user in
//! user order, written when the input ends. A batch job over files: its totals live in
//! memory only and are never saved, so it has no Kafka mode (the CLI says so).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Emitter, Job, Outcome, Record, visit_stages};
use crate::pipeline::Stats;
use crate::windows::Now;

pub(super) struct UserTraffic {
    stats: Arc<Stats>,
    users: crate::windows::UserTraffic,
    lines: Vec<u8>,
}

impl UserTraffic {
    pub(super) fn new(stats: Arc<Stats>) -> Self {
        UserTraffic {
            stats,
            users: crate::windows::UserTraffic::default(),
            lines: Vec::new(),
        }
    }
}

impl Job for UserTraffic {
    fn process(&mut self, record: &Record<'_>, _now: Now, _out: &mut Emitter) -> Outcome {
        match visit_stages(record.payload, &self.stats) {
            Ok(event) => {
                self.users.add(&event.id, event.file_size_bytes);
                Outcome::Counted
            }
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    fn forwards_headers(&self) -> bool {
        false
    }

    fn finish(&mut self, out: &mut Emitter) {
        self.lines.clear();
        self.users.write_lines(&mut self.lines);
        self.stats
            .created
            .fetch_add(self.users.len() as u64, Ordering::Relaxed);
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
