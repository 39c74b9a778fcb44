//! The end-of-run summary on stderr: events, bytes, time, rate, delivery failures and, in
//! Kafka, the delivery latency percentiles.
//!
//! Guarantee: the figures are those of the run, from the sink's own accounting; a failure
//! counted here is an event that was not confirmed delivered.

use std::fmt;
use std::time::Duration;

use super::dirt::DirtCounts;
use super::verify::VerifyReport;
use crate::latency::{LatencySummary, millis};

/// What a run did; printed on stderr at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events written, or handed to the Kafka producer.
    pub events: u64,
    /// Bytes written (lines with newlines), or key and value bytes produced.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Events the producer could not deliver (0 for files).
    pub delivery_failures: u64,
    /// The reason of the first failure.
    pub first_failure: Option<String>,
    pub destination: String,
    /// Delivery latencies of the acknowledged events (Kafka only).
    pub latency: Option<LatencySummary>,
    /// What `--bad-record-ratio` and `--duplicate-ratio` injected.
    pub dirt: DirtCounts,
    /// What `--verify-topic` found.
    pub verification: Option<VerifyReport>,
    /// Why `--report` could not be written, if it could not.
    pub report_error: Option<String>,
}

impl Summary {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} events, {:.1} MB in {:.2} s: {} events/s ({:.1} MB/s) to {}; delivery failures: {}",
            group_thousands(self.events),
            self.bytes as f64 / 1e6,
            secs,
            group_thousands(self.events_per_sec().round() as u64),
            self.bytes as f64 / 1e6 / secs,
            self.destination,
            group_thousands(self.delivery_failures),
        )?;
        if let Some(reason) = &self.first_failure {
            write!(f, " (first: {reason})")?;
        }
        if !self.dirt.is_empty() {
            let kinds: Vec<String> = self
                .dirt
                .bad
                .iter()
                .map(|(kind, n)| {
                    format!(
                        "{} {} (dead-lettered as {})",
                        kind.as_str(),
                        group_thousands(*n),
                        kind.rejected_as().as_str()
                    )
                })
                .collect();
            write!(
                f,
                "; bad records {}{}{}; duplicates {}",
                group_thousands(self.dirt.bad_total()),
                if kinds.is_empty() { "" } else { ": " },
                kinds.join(", "),
                group_thousands(self.dirt.duplicates),
            )?;
        }
        if let Some(latency) = self.latency.filter(|l| l.count > 0) {
            write!(
                f,
                "; delivery latency of {} acknowledged: avg {}, p50 {}, p95 {}, p99 {}, p99.9 {}, max {}",
                group_thousands(latency.count),
                millis(latency.mean),
                millis(latency.p50),
                millis(latency.p95),
                millis(latency.p99),
                millis(latency.p999),
                millis(latency.max),
            )?;
        }
        if let Some(v) = &self.verification {
            write!(
                f,
                "\nverification: {} events: {} arrived, {} lost, {} duplicated; dead letters {} expected, {} unexpected{}",
                group_thousands(v.events),
                group_thousands(v.arrived),
                group_thousands(v.lost),
                group_thousands(v.duplicated),
                group_thousands(v.dead_lettered_expected),
                group_thousands(v.dead_lettered_unexpected),
                if v.bad_unaccounted > 0 {
                    format!(
                        " ({} bad records not looked for: no --verify-dead-letter-topic)",
                        group_thousands(v.bad_unaccounted)
                    )
                } else {
                    String::new()
                },
            )?;
            write!(f, "\nmatched by {}", v.matching)?;
            if v.matching != "headers" {
                write!(
                    f,
                    "; {} identities shared by more than one event (a loss and a duplicate of one identity cancel out); {} records of no event of this run, {} with no identity",
                    group_thousands(v.shared_identities),
                    group_thousands(v.unmatched),
                    group_thousands(v.unidentified),
                )?;
            }
            for (what, l) in [
                ("to the output's timestamp", v.to_output),
                ("to arrival", v.to_arrival),
            ] {
                if l.count > 0 {
                    write!(
                        f,
                        "\nend-to-end latency {what}: avg {}, p50 {}, p95 {}, p99 {}, p99.9 {}, max {}",
                        millis(l.mean),
                        millis(l.p50),
                        millis(l.p95),
                        millis(l.p99),
                        millis(l.p999),
                        millis(l.max),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(1234567), "1,234,567");
    }
}
