//! Event time as text: an `event_datetime` read to epoch milliseconds, and window bounds
//! written as the original writes them. Both hand-written: `event_time_ms` splits the
//! fixed `YYYY-MM-DDTHH:MM:SS.fff` text itself and lets chrono validate and build the date
//! (chrono's `parse_from_str` takes several times longer; `cargo run --release --features
//! bench --bin bench -- window` prints both), and `format_time` writes chrono's date parts
//! without parsing a format string.
//!
//! Guarantee: `event_time_ms` accepts only that shape, read as UTC, and a real date;
//! anything else is `None`.

use chrono::{NaiveDate, NaiveDateTime};

/// Milliseconds since the epoch of an `event_datetime` (`YYYY-MM-DDTHH:MM:SS`, then
/// optionally `.` and 1 to 9 digits), read as UTC. `None` for any other text or an
/// impossible date.
pub fn event_time_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(digits(0..4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, digits(5..7)?, digits(8..10)?)?;
    let mut nanos = 0;
    if b.len() > 19 {
        let fraction = &b[20..];
        if b[19] != b'.' || fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        nanos = digits(20..b.len())? * 10u32.pow(9 - fraction.len() as u32);
    }
    let time = date.and_hms_nano_opt(digits(11..13)?, digits(14..16)?, digits(17..19)?, nanos)?;
    Some(time.and_utc().timestamp_millis())
}

/// An epoch-millisecond time as the original writes window bounds: UTC, to the second,
/// without a zone (`2024-04-28T23:12:40`). Written from chrono's date parts, not with
/// `format` (whose format-string parsing was a tenth of `bench window`'s time).
pub fn format_time(ms: i64) -> String {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.naive_utc())
        .unwrap_or(NaiveDateTime::MIN);
    if !(0..=9999).contains(&t.year()) {
        return t.format("%Y-%m-%dT%H:%M:%S").to_string();
    }
    let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let year = t.year() as u32;
    let mut out = Vec::with_capacity(19);
    out.extend_from_slice(&two(year / 100));
    out.extend_from_slice(&two(year % 100));
    out.push(b'-');
    out.extend_from_slice(&two(t.month()));
    out.push(b'-');
    out.extend_from_slice(&two(t.day()));
    out.push(b'T');
    out.extend_from_slice(&two(t.hour()));
    out.push(b':');
    out.extend_from_slice(&two(t.minute()));
    out.push(b':');
    out.extend_from_slice(&two(t.second()));
    String::from_utf8(out).unwrap_or_default()
}
