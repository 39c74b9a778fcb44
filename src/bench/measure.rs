//! Shared by the Kafka benchmarks : the wall time and CPU time of
//! one phase of a benchmark, from this process's own accounting.

use std::time::Instant;

/// Wall time and CPU time (user + sys of every thread of this process) of one phase.
pub struct Measure {
    started: Instant,
    cpu: f64,
}

/// What [`Measure::finish`] found.
pub struct Measured {
    pub records: u64,
    pub seconds: f64,
    pub cpu: f64,
}

impl Measure {
    pub fn start() -> Self {
        Measure {
            started: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    pub fn finish(self, records: u64) -> Measured {
        Measured {
            records,
            seconds: self.started.elapsed().as_secs_f64(),
            cpu: process_cpu_seconds() - self.cpu,
        }
    }
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn cpu_per_million(&self) -> f64 {
        self.cpu * 1e6 / self.records.max(1) as f64
    }
}

/// utime + stime of this process, in seconds, from /proc/self/stat (in clock ticks of 10 ms).
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}
