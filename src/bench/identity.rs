//! The memory and speed of `datagen --verify-topic`'s matching by content: fills the
//! identity table as a 5-minute run at 50,000 events/s over 50 users would (15 million
//! events), then matches as many arrivals, and prints the bytes per event and the time per
//! operation. `cargo run --release --features bench --bin bench -- identity [EVENTS] [USERS]`

use std::time::Instant;

use crate::datagen::identity::{IdentityTable, MatchSpec, hash, identity};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(super) fn main() {
    let mut args = super::args().skip(1);
    let events: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(15_000_000);
    let users: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let ids: Vec<String> = (0..users)
        .map(|u| format!("{}", u * 7_919_000_000_003 + 13))
        .collect();
    let start_ms = 1_714_000_000_000i64;
    // 50,000 events/s: event n at n / 50 ms, its user by a cheap mix of n.
    let event = |n: u64| {
        let user = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % users;
        (user as usize, start_ms + (n / 50) as i64)
    };
    let rss_before = peak_rss_mb();
    let mut table = IdentityTable::with_capacity(events as usize);
    let started = Instant::now();
    let now = Instant::now();
    for n in 0..events {
        let (user, ts) = event(n);
        table.sent(hash(&ids[user], ts), false, now);
    }
    let sent = started.elapsed();
    let started = Instant::now();
    for n in 0..events {
        let (user, ts) = event(n);
        table.arrived(hash(&ids[user], ts), false);
    }
    let arrived = started.elapsed();
    let mut counts = crate::datagen::VerifyReport::default();
    table.account(true, &mut counts);
    // The reader's parse of an output key, the original job's.
    let key = br#"{"event_id": "-4315835577877225391", "event_ts": 1713430800995}"#;
    let started = Instant::now();
    let parses = 1_000_000;
    for _ in 0..parses {
        std::hint::black_box(identity(
            &MatchSpec::KeyOrValue,
            Some(std::hint::black_box(key)),
            None,
        ));
    }
    let parse = started.elapsed();
    eprintln!(
        "{events} events of {users} users: {} identities ({} shared), lost {}, duplicated {}",
        table.len(),
        counts.shared_identities,
        counts.lost,
        counts.duplicated
    );
    eprintln!(
        "table {:.0} MB = {:.1} bytes per event; peak RSS {:.0} MB (before the table {:.0} MB)",
        table.bytes() as f64 / 1e6,
        table.bytes() as f64 / events as f64,
        peak_rss_mb(),
        rss_before
    );
    eprintln!(
        "sent {:.0} ns, arrived {:.0} ns per event; a key's identity {:.0} ns",
        sent.as_nanos() as f64 / events as f64,
        arrived.as_nanos() as f64 / events as f64,
        parse.as_nanos() as f64 / parses as f64
    );
}
