//! Matching a job's output to the events `datagen` sent by their content, for jobs that do
//! not forward `datagen`'s headers (Flink's `KafkaSink`, Beam's `WriteToKafka`, Kafka
//! Connect transforms, most hand-written consumers).
//!
//! **Identity.** An event's identity is its user `id` and its `event_ts`, the original
//! job's output key. It is read from an output record's key when that is JSON holding
//! `event_id` (or `id`) and `event_ts`; else from its value, when that is JSON holding `id`
//! and `event_ts`; or from the fields that `--verify-match ID,TS` names (dotted paths into
//! nested JSON), for jobs that rename them. A dead letter is matched the same way: by its
//! original key when its value does not parse. Ids compare as text (a JSON number by its
//! digits), times as integers (a string of digits too).
//!
//! **A multiset, not a set.** The original's events carry no event id: a user's two events
//! in one millisecond share an identity. So each identity counts the events sent and the
//! records that arrived: lost is the sum of max(0, sent − arrived), duplicated the sum of
//! max(0, arrived − sent). Limit: a loss and a duplicate of one identity cancel out.
//!
//! **Memory, bounded and stated.** The table keeps a 64-bit hash of each identity (not the
//! text) with 8 bytes of counts and first send time: 16 bytes a slot, plus a control byte,
//! in an open-addressing table (hashbrown) whose buckets are a power of two at most 7/8
//! full, so 19 to 39 bytes an identity ([`IdentityTable::bytes`]). The table is sized for
//! the run's expected events up front, so it never holds two copies while growing:
//! `bench identity` measures 38 bytes an event and a peak RSS of 546 MB for a
//! 5-minute run at 50,000 events/s (15 million events). Dead letters and bad records,
//! rare, are kept in small side tables. Two identities whose hashes collide (about 1 in 10^13 for a million identities)
//! count as one.
//!
//! Send times are kept in units of 100 µs from the run's start, up to about 5 days.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use serde_json::Value;

use super::verify::VerifyReport;

/// Where a record's identity is read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MatchSpec {
    /// The key (`event_id` or `id`, and `event_ts`), else the value (`id`, `event_ts`).
    #[default]
    KeyOrValue,
    /// `--verify-match ID,TS`: dotted paths into the key, else the value.
    Fields { id: Vec<String>, ts: Vec<String> },
}

impl MatchSpec {
    /// `--verify-match FIELD,FIELD`: the id's path, then the event time's.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let path = |p: &str| -> Result<Vec<String>, String> {
            let segments: Vec<String> = p.split('.').map(str::to_string).collect();
            if segments.iter().any(String::is_empty) {
                Err(format!("'{p}' is not a field path like user.id"))
            } else {
                Ok(segments)
            }
        };
        match parts.as_slice() {
            [id, ts] => Ok(MatchSpec::Fields {
                id: path(id)?,
                ts: path(ts)?,
            }),
            _ => Err(format!(
                "'{text}': expected two fields, the user id's and the event time's (e.g. id,event_ts or user.id,meta.ts)"
            )),
        }
    }

    /// How the summary names it.
    pub fn describe(&self) -> String {
        match self {
            MatchSpec::KeyOrValue => "key or value (id, event_ts)".into(),
            MatchSpec::Fields { id, ts } => format!("fields {},{}", id.join("."), ts.join(".")),
        }
    }
}

/// The 64-bit identity of user `id` at `event_ts`.
pub fn hash(id: &str, event_ts: i64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A fixed-seed hasher: the same identity hashes alike on the sending and reading side.
    let mut hasher = rustc_hash::FxBuildHasher.build_hasher();
    hasher.write(id.as_bytes());
    hasher.write_u8(0xff);
    hasher.write_i64(event_ts);
    // Fx is fast but weak in its low bits; one round of a 64-bit mixer spreads them.
    let mut x = hasher.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn field<'a>(value: &'a Value, path: &[impl AsRef<str>]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, segment| v.get(segment.as_ref()))
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ts_number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn identity_in(bytes: Option<&[u8]>, ids: &[&[&str]], ts: &[&str]) -> Option<u64> {
    let json: Value = serde_json::from_slice(bytes?).ok()?;
    let id = ids
        .iter()
        .find_map(|path| field(&json, path).and_then(id_text))?;
    let ts = field(&json, ts).and_then(ts_number)?;
    Some(hash(&id, ts))
}

/// The identity of a record with `key` and `value`, per `spec`: the key's if it holds one,
/// else the value's.
pub fn identity(spec: &MatchSpec, key: Option<&[u8]>, value: Option<&[u8]>) -> Option<u64> {
    match spec {
        MatchSpec::KeyOrValue => identity_in(key, &[&["event_id"], &["id"]], &["event_ts"])
            .or_else(|| identity_in(value, &[&["id"]], &["event_ts"])),
        MatchSpec::Fields { id, ts } => {
            let id: Vec<&str> = id.iter().map(String::as_str).collect();
            let ts: Vec<&str> = ts.iter().map(String::as_str).collect();
            identity_in(key, &[&id], &ts).or_else(|| identity_in(value, &[&id], &ts))
        }
    }
}

/// What [`IdentityTable::arrived`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub first_sent_micros: u64,
    /// More records of this identity arrived than events were sent.
    pub repeated: bool,
}

/// One identity's counts: 8 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// The first send of this identity, in 100 µs units from the table's start.
    first_sent: u32,
    /// Good events sent (a `--duplicate-ratio` copy counts again: it is expected again).
    sent: u16,
    /// Output records that arrived.
    arrived: u16,
}

/// Per identity: events sent and records arrived (see the module doc).
#[derive(Debug)]
pub struct IdentityTable {
    slots: FxHashMap<u64, Slot>,
    /// Bad events sent (`--bad-record-ratio`): expected in the dead letters only.
    bad: FxHashMap<u64, u16>,
    /// Dead letters that arrived.
    dead: FxHashMap<u64, u16>,
    /// Arrivals of identities never sent (another writer's records).
    unmatched: u64,
    /// Good events sent, and arrivals that matched one (not repeats): the run has all it
    /// waits for once they are equal.
    sent_good: u64,
    matched: u64,
    started: Instant,
    started_micros: u64,
}

impl IdentityTable {
    /// An empty table sized for `expected` identities (0 when unknown).
    pub fn with_capacity(expected: usize) -> Self {
        let started_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        IdentityTable {
            slots: FxHashMap::with_capacity_and_hasher(expected, Default::default()),
            bad: FxHashMap::default(),
            dead: FxHashMap::default(),
            unmatched: 0,
            sent_good: 0,
            matched: 0,
            started: Instant::now(),
            started_micros,
        }
    }

    /// An event of identity `id` sent now; `bad` when it was spoiled on purpose.
    pub fn sent(&mut self, id: u64, bad: bool, now: Instant) {
        if bad {
            let n = self.bad.entry(id).or_default();
            *n = n.saturating_add(1);
            return;
        }
        let units = u32::try_from(now.saturating_duration_since(self.started).as_micros() / 100)
            .unwrap_or(u32::MAX);
        let slot = self.slots.entry(id).or_insert(Slot {
            first_sent: units,
            ..Slot::default()
        });
        slot.sent = slot.sent.saturating_add(1);
        self.sent_good += 1;
    }

    /// Every good event sent so far has arrived.
    pub fn all_arrived(&self) -> bool {
        self.matched >= self.sent_good
    }

    /// A record of identity `id` arrived in the output (or, `dead`, the dead letters).
    /// When this run sent it: its identity's first send time (microseconds since the Unix
    /// epoch), and whether it is one more than were sent (a duplicate).
    pub fn arrived(&mut self, id: u64, dead: bool) -> Option<Arrival> {
        if dead {
            let n = self.dead.entry(id).or_default();
            *n = n.saturating_add(1);
            return None;
        }
        match self.slots.get_mut(&id) {
            Some(slot) => {
                slot.arrived = slot.arrived.saturating_add(1);
                let repeated = slot.arrived > slot.sent;
                if !repeated {
                    self.matched += 1;
                }
                Some(Arrival {
                    first_sent_micros: self.started_micros + u64::from(slot.first_sent) * 100,
                    repeated,
                })
            }
            None => {
                self.unmatched += 1;
                None
            }
        }
    }

    /// Bytes the table holds (its slots and control bytes), for the stated memory bound.
    pub fn bytes(&self) -> usize {
        let table = |capacity: usize, slot: usize| {
            // hashbrown: buckets are a power of two, at most 7/8 full; one control byte each.
            let buckets = (capacity * 8 / 7).next_power_of_two().max(4);
            buckets * (slot + 1)
        };
        table(self.slots.capacity(), 16)
            + table(self.bad.capacity(), 16)
            + table(self.dead.capacity(), 16)
    }

    /// Identities held.
    #[cfg(feature = "bench")]
    pub fn len(&self) -> usize {
        self.slots.len() + self.bad.len()
    }

    /// Fills `report`'s accounting (see the module doc); `dead_letters_read` when a
    /// dead-letter topic was read.
    pub fn account(&self, dead_letters_read: bool, report: &mut VerifyReport) {
        report.unmatched = self.unmatched;
        let no_slot = Slot::default();
        let ids = self
            .slots
            .keys()
            .chain(self.bad.keys().filter(|id| !self.slots.contains_key(*id)));
        for id in ids {
            let slot = self.slots.get(id).unwrap_or(&no_slot);
            let (sent, arrived) = (u64::from(slot.sent), u64::from(slot.arrived));
            let bad = u64::from(self.bad.get(id).copied().unwrap_or(0));
            let dead = u64::from(self.dead.get(id).copied().unwrap_or(0));
            if sent + bad > 1 {
                report.shared_identities += 1;
            }
            // Dead letters account for the bad events first, then for good ones.
            let dead_for_bad = dead.min(bad);
            let dead_for_good = (dead - dead_for_bad).min(sent.saturating_sub(arrived));
            report.dead_lettered_expected += dead_for_bad;
            report.dead_lettered_unexpected += dead - dead_for_bad;
            if dead_letters_read {
                report.lost += bad - dead_for_bad;
            } else {
                report.bad_unaccounted += bad;
            }
            report.arrived += arrived.min(sent);
            report.lost += sent.saturating_sub(arrived + dead_for_good);
            report.duplicated += arrived.saturating_sub(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Option<&[u8]> {
        Some(text.as_bytes())
    }

    #[test]
    fn identities_come_from_the_key_then_the_value_then_named_fields() {
        let id = hash("-4315835577877225391", 1713430800995);
        let spec = MatchSpec::default();
        // The original job's key.
        assert_eq!(
            identity(
                &spec,
                json(r#"{"event_id": "-4315835577877225391", "event_ts": 1713430800995}"#),
                None
            ),
            Some(id)
        );
        // A key holding `id`; a number for the id, a string for the time.
        assert_eq!(
            identity(
                &spec,
                json(r#"{"id": -4315835577877225391, "event_ts": "1713430800995"}"#),
                None
            ),
            Some(id)
        );
        // No usable key: the value.
        let value = r#"{"ip": "1.2.3.4", "id": "-4315835577877225391", "event_ts": 1713430800995}"#;
        assert_eq!(identity(&spec, json("k-1"), json(value)), Some(id));
        assert_eq!(identity(&spec, None, json(value)), Some(id));
        assert_eq!(identity(&spec, json("{}"), json("not json")), None);
        // A key and a value holding different identities: the key's wins.
        let other_key = r#"{"event_id": "7", "event_ts": 1}"#;
        assert_eq!(
            identity(&spec, json(other_key), json(value)),
            Some(hash("7", 1))
        );
        // Renamed, nested fields.
        let renamed = MatchSpec::parse("user.uid, meta.ts").unwrap();
        let nested = r#"{"user": {"uid": "-4315835577877225391"}, "meta": {"ts": 1713430800995}}"#;
        assert_eq!(identity(&renamed, None, json(nested)), Some(id));
        assert_eq!(identity(&renamed, json(nested), None), Some(id));
        assert_eq!(identity(&renamed, None, json(value)), None);
        let other = r#"{"user": {"uid": "7"}, "meta": {"ts": 1}}"#;
        assert_eq!(
            identity(&renamed, json(other), json(nested)),
            Some(hash("7", 1))
        );
        // Another time, another user: another identity.
        assert_ne!(hash("-4315835577877225391", 1713430800996), id);
        assert_ne!(hash("-431583557787722539", 11713430800995), id);
        for bad in ["id", "a,b,c", "a,.b", ""] {
            assert!(MatchSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identities_are_a_multiset() {
        let now = Instant::now();
        let mut table = IdentityTable::with_capacity(0);
        let (a, b, c, d) = (hash("a", 1), hash("b", 1), hash("c", 1), hash("d", 1));
        // a: two events share it, both arrive. b: two share it, one arrives (one lost).
        // c: one event, it arrives three times (two duplicates). d: a bad event, dead-lettered.
        for id in [a, a, b, b, c] {
            table.sent(id, false, now);
        }
        table.sent(d, true, now);
        let repeats: Vec<bool> = [a, a, b, c, c, c]
            .into_iter()
            .map(|id| table.arrived(id, false).unwrap().repeated)
            .collect();
        assert_eq!(repeats, [false, false, false, false, true, true]);
        assert_eq!(table.arrived(d, true), None);
        assert_eq!(table.arrived(hash("stranger", 1), false), None);
        let mut report = VerifyReport::default();
        table.account(true, &mut report);
        let figures = |r: &VerifyReport| {
            (
                r.arrived,
                r.lost,
                r.duplicated,
                r.dead_lettered_expected,
                r.dead_lettered_unexpected,
                r.bad_unaccounted,
                r.shared_identities,
                r.unmatched,
            )
        };
        assert_eq!(figures(&report), (4, 1, 2, 1, 0, 0, 2, 1));
        // Without the dead letters read, the bad event is not looked for.
        let mut blind = IdentityTable::with_capacity(0);
        blind.sent(d, true, now);
        let (mut unread, mut read) = (VerifyReport::default(), VerifyReport::default());
        blind.account(false, &mut unread);
        blind.account(true, &mut read);
        assert_eq!((unread.bad_unaccounted, unread.lost), (1, 0));
        assert_eq!((read.bad_unaccounted, read.lost), (0, 1));
    }

    #[test]
    fn a_good_event_dead_lettered_is_unexpected_not_lost() {
        let now = Instant::now();
        let mut table = IdentityTable::with_capacity(0);
        let a = hash("a", 1);
        table.sent(a, false, now);
        table.arrived(a, true);
        let mut report = VerifyReport::default();
        table.account(true, &mut report);
        assert_eq!((report.lost, report.dead_lettered_unexpected), (0, 1));
    }

    #[test]
    fn a_slot_is_16_bytes() {
        assert_eq!(std::mem::size_of::<(u64, Slot)>(), 16);
    }
}
