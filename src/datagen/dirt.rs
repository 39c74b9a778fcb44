//! Dirty data for testing pipelines: `--bad-record-ratio` spoils a share of the events, in
//! every way the pipeline dead-letters, and `--duplicate-ratio` sends a share twice, as a
//! producer retrying without idempotence would.
//!
//! Guarantees:
//! - **Deterministic.** Whether event `n` is spoiled or doubled, and how, depends only on
//!   the seed and `n`: the same with any thread count, on every run with the same seed.
//! - **Each kind is what the pipeline calls it.** [`BadKind::rejected_as`] names the
//!   dead-letter kind the pipeline gives a record of that kind (a test runs each through
//!   the transform), so a load test can check its dead letters kind by kind.
//! - A spoiled value holds no newline, so a JSON-lines file keeps one record per line.

use std::collections::BTreeMap;

use crate::transform::RejectKind;

/// How to dirty a run: shares from 0 to 1, and the run's seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dirt {
    pub bad_record_ratio: f64,
    pub duplicate_ratio: f64,
    pub seed: u64,
}

/// The ways an event is spoiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadKind {
    NotUtf8,
    NotJson,
    TruncatedJson,
    NotObject,
    MissingField,
    MistypedField,
    EmptyValue,
}

impl BadKind {
    pub const ALL: [BadKind; 7] = [
        BadKind::NotUtf8,
        BadKind::NotJson,
        BadKind::TruncatedJson,
        BadKind::NotObject,
        BadKind::MissingField,
        BadKind::MistypedField,
        BadKind::EmptyValue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadKind::NotUtf8 => "not_utf8",
            BadKind::NotJson => "not_json",
            BadKind::TruncatedJson => "truncated_json",
            BadKind::NotObject => "not_object",
            BadKind::MissingField => "missing_field",
            BadKind::MistypedField => "mistyped_field",
            BadKind::EmptyValue => "empty_value",
        }
    }

    /// The pipeline's dead-letter kind for a record spoiled this way.
    pub fn rejected_as(self) -> RejectKind {
        match self {
            BadKind::NotUtf8 => RejectKind::NotUtf8,
            BadKind::NotJson | BadKind::TruncatedJson => RejectKind::NotJson,
            BadKind::NotObject => RejectKind::NotObject,
            BadKind::MissingField | BadKind::MistypedField => RejectKind::InvalidField,
            BadKind::EmptyValue => RejectKind::Empty,
        }
    }

    /// Appends `value` (an event's JSON) spoiled this way to `out`.
    fn spoil(self, value: &[u8], out: &mut Vec<u8>) {
        match self {
            BadKind::NotUtf8 => {
                out.extend_from_slice(value);
                if let Some(middle) = out.len().checked_sub(value.len() / 2 + 1) {
                    out[middle] = 0xff;
                }
            }
            BadKind::NotJson => out.extend_from_slice(b"GET /index.html HTTP/1.1"),
            BadKind::TruncatedJson => out.extend_from_slice(&value[..value.len() / 2]),
            BadKind::NotObject => {
                out.push(b'[');
                out.extend_from_slice(value);
                out.push(b']');
            }
            BadKind::MissingField => out.extend_from_slice(&without_field(value, b"age_bracket")),
            BadKind::MistypedField => {
                out.extend_from_slice(&replace(
                    value,
                    b"\"http_response\": ",
                    b"\"http_response\": \"",
                    b", ",
                ));
            }
            BadKind::EmptyValue => {}
        }
    }
}

/// `value` without its field `name` (and the separator before it).
fn without_field(value: &[u8], name: &[u8]) -> Vec<u8> {
    let mut key = b", \"".to_vec();
    key.extend_from_slice(name);
    key.extend_from_slice(b"\": ");
    let Some(start) = find(value, &key) else {
        return value.to_vec();
    };
    // The field's value ends at the next `, "` (the following field) or at the `}`.
    let rest = &value[start + key.len()..];
    let end = find(rest, b", \"").unwrap_or(rest.len().saturating_sub(1));
    let mut out = value[..start].to_vec();
    out.extend_from_slice(&rest[end..]);
    out
}

/// `value` with the text after `marker` quoted up to `until`: a number made a string.
fn replace(value: &[u8], marker: &[u8], quoted_marker: &[u8], until: &[u8]) -> Vec<u8> {
    let Some(start) = find(value, marker) else {
        return value.to_vec();
    };
    let rest = &value[start + marker.len()..];
    let end = find(rest, until).unwrap_or(rest.len());
    let mut out = value[..start].to_vec();
    out.extend_from_slice(quoted_marker);
    out.extend_from_slice(&rest[..end]);
    out.push(b'"');
    out.extend_from_slice(&rest[end..]);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// What happens to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fate {
    pub bad: Option<BadKind>,
    pub duplicate: bool,
}

impl Dirt {
    /// The fate of event `index`: two independent draws from a hash of the seed and the
    /// index (SplitMix64's finaliser), so that no shared random stream is needed.
    pub fn fate(&self, index: u64) -> Fate {
        let draw = |salt: u64| {
            let mut z = self
                .seed
                .wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .wrapping_add(salt);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let unit = |bits: u64| (bits >> 11) as f64 / (1u64 << 53) as f64;
        let bad_draw = draw(0x6261_6421);
        let bad = (unit(bad_draw) < self.bad_record_ratio)
            .then(|| BadKind::ALL[(bad_draw % BadKind::ALL.len() as u64) as usize]);
        let duplicate = bad.is_none() && unit(draw(0x6475_7021)) < self.duplicate_ratio;
        Fate { bad, duplicate }
    }

    /// Appends `value` to `out` as event `index`'s fate has it (spoiled or as it is).
    pub fn write_value(fate: Fate, value: &[u8], out: &mut Vec<u8>) {
        match fate.bad {
            Some(kind) => kind.spoil(value, out),
            None => out.extend_from_slice(value),
        }
    }
}

/// What a run injected: spoiled events by kind, and duplicates sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtCounts {
    pub bad: BTreeMap<BadKind, u64>,
    pub duplicates: u64,
}

impl DirtCounts {
    pub fn add(&mut self, other: &DirtCounts) {
        for (kind, n) in &other.bad {
            *self.bad.entry(*kind).or_default() += n;
        }
        self.duplicates += other.duplicates;
    }

    pub fn record(&mut self, fate: Fate) {
        if let Some(kind) = fate.bad {
            *self.bad.entry(kind).or_default() += 1;
        }
        self.duplicates += u64::from(fate.duplicate);
    }

    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bad_total() == 0 && self.duplicates == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform;

    const EVENT: &[u8] = br#"{"ip": "126.1.20.79", "id": "-2901668335848977108", "lat": 35.6895, "lng": 139.6917, "user_agent": "Mozilla/5.0", "age_bracket": "26-40", "opted_into_marketing": true, "http_request": "GET chromista.html HTTP/1.0", "http_response": 200, "file_size_bytes": 316, "event_datetime": "2024-04-14T21:51:33.042", "event_ts": 1713095493042}"#;

    #[test]
    fn each_kind_is_dead_lettered_by_the_pipeline_as_it_says() {
        for kind in BadKind::ALL {
            let mut spoiled = Vec::new();
            kind.spoil(EVENT, &mut spoiled);
            assert!(!spoiled.contains(&b'\n'), "{kind:?}");
            let (mut key, mut value) = (Vec::new(), Vec::new());
            let rejection = transform::transform(Some(&spoiled), &mut key, &mut value)
                .expect_err(kind.as_str());
            assert_eq!(
                rejection.kind,
                kind.rejected_as(),
                "{kind:?}: {rejection:?}"
            );
        }
        let (mut key, mut value) = (Vec::new(), Vec::new());
        assert!(transform::transform(Some(EVENT), &mut key, &mut value).is_ok());
    }

    #[test]
    fn fates_follow_the_ratios_cover_every_kind_and_depend_only_on_seed_and_index() {
        let dirt = Dirt {
            bad_record_ratio: 0.1,
            duplicate_ratio: 0.05,
            seed: 42,
        };
        let mut counts = DirtCounts::default();
        for index in 0..100_000 {
            counts.record(dirt.fate(index));
        }
        assert!((9_500..10_500).contains(&counts.bad_total()), "{counts:?}");
        // Duplicates are drawn among the good events: 5% of 90%.
        assert!((4_200..4_800).contains(&counts.duplicates), "{counts:?}");
        assert_eq!(counts.bad.len(), BadKind::ALL.len(), "{counts:?}");
        assert!(counts.bad.values().all(|&n| n > 1_200), "{counts:?}");
        assert_eq!(dirt.fate(12_345), dirt.fate(12_345));
        let other = Dirt { seed: 43, ..dirt };
        assert!((0..1_000).any(|i| dirt.fate(i) != other.fate(i)));
        let clean = Dirt {
            bad_record_ratio: 0.0,
            duplicate_ratio: 0.0,
            seed: 42,
        };
        assert!((0..10_000).all(|i| clean.fate(i) == Fate::default()));
    }
}
