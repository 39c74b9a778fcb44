//! Benchmark: the pipeline's transform alone (parse and re-serialise), on one thread,
//! next to a bare serde_json parse-and-serialise loop over the same records.
//! Run: `taskset -c 0 cargo run --release --features bench --bin bench -- transform [RECORDS [--ours-only]]`

use std::time::Instant;

pub(super) fn main() {
    let records: usize = super::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000_000);
    let fixture = include_str!("../../fixtures/website-visit.jsonl");
    let lines: Vec<&[u8]> = fixture.lines().map(str::as_bytes).collect();

    let (mut key, mut value) = (Vec::with_capacity(128), Vec::with_capacity(1024));
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..records {
        key.clear();
        value.clear();
        crate::transform::transform(Some(lines[i % lines.len()]), &mut key, &mut value)
            .expect("valid fixture");
        bytes += key.len() + value.len();
    }
    let ours = records as f64 / started.elapsed().as_secs_f64();
    if super::args().nth(2).as_deref() == Some("--ours-only") {
        // For `perf record`: the transform alone.
        eprintln!("transform: {ours:>9.0} records/s");
        return;
    }

    let started = Instant::now();
    let mut out = Vec::with_capacity(1024);
    for i in 0..records {
        out.clear();
        let parsed: serde_json::Value =
            serde_json::from_slice(lines[i % lines.len()]).expect("valid JSON");
        serde_json::to_writer(&mut out, &parsed).expect("serialise");
        bytes += out.len();
    }
    let bare = records as f64 / started.elapsed().as_secs_f64();

    eprintln!(
        "transform (decode, parse into EventLog, key + value JSON): {:>9.0} records/s",
        ours
    );
    eprintln!(
        "bare serde_json parse + serialise (Value, value only):     {:>9.0} records/s",
        bare
    );
    eprintln!("({records} records each; {bytes} bytes written in total)");
}
