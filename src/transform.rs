//! The job's transform, pure: Decode → Parse → Create messages, as the original's
//! `decode_message`, `parse_json` and `create_message`.
//!
//! Guarantees:
//! - For every valid record the key and value are what the original writes: key
//!   `{"event_id": <id>, "event_ts": <event_ts>}`, value the twelve `EventLog` fields in
//!   order, Python `json.dumps` formatting. When `lat` or `lng` is falsy in Python terms
//!   (`""`, `0`, `null`), **both** become `-1`.
//! - Every other record is rejected with a [`Rejection`] saying what is wrong, never a
//!   panic: not UTF-8, not JSON, not a JSON object, a missing or mistyped field, empty.
//!   The caller dead-letters it. (The original crashed on any of these.)
//!
//! Speed: a record laid out as the original generator writes it (every record of the
//! generators, ours and the original) takes [`pass_through`]: one validating pass, and the
//! output value is the input itself. Everything else takes the three stages, with
//! serde_json as the reference reader. Both give the same bytes (property tests).

use std::fmt;

use crate::schema::{self, Coordinate, EventLog, OriginalLayout};

/// Why a record cannot be transformed. `as_str` names the kind for headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    /// No value, or zero bytes.
    Empty,
    /// Not UTF-8 text.
    NotUtf8,
    /// Not JSON.
    NotJson,
    /// Valid JSON, but not an object (including `null`).
    NotObject,
    /// A missing field, an unknown field, or a field of the wrong type.
    InvalidField,
    /// Larger than the output (or the input reader) takes.
    TooLarge,
    /// Refused by the output topic for a reason of its own (say, an invalid record).
    OutputRejected,
    /// An event for an event-time window that has already fired (traffic-agg).
    Late,
    /// An event whose time is too far past the wall clock (traffic-agg).
    Future,
    /// A kind a job of its own names (see [`Rejection::new`]).
    Job(&'static str),
}

impl RejectKind {
    /// The kind's name, as the `streamkit.error.kind` header and the dashboard show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Empty => "empty",
            RejectKind::NotUtf8 => "not_utf8",
            RejectKind::NotJson => "not_json",
            RejectKind::NotObject => "not_object",
            RejectKind::InvalidField => "invalid_field",
            RejectKind::TooLarge => "too_large",
            RejectKind::OutputRejected => "output_rejected",
            RejectKind::Late => "late",
            RejectKind::Future => "future",
            RejectKind::Job(kind) => kind,
        }
    }
}

/// A rejected record: its kind and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What kind of rejection (the dead letter's `streamkit.error.kind` header).
    pub kind: RejectKind,
    /// Why, for a person (the `streamkit.error` header).
    pub reason: String,
}

impl Rejection {
    /// A rejection of a kind the job names (`kind`, the dead letter's
    /// `streamkit.error.kind` header and the dashboard's group; say `"not_json"`), and a
    /// reason a person can act on (the `streamkit.error` header).
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        Rejection {
            kind: RejectKind::Job(kind),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

fn reject(kind: RejectKind, reason: impl Into<String>) -> Rejection {
    Rejection {
        kind,
        reason: reason.into(),
    }
}

/// Decode: the value as UTF-8 text.
pub fn decode(value: Option<&[u8]>) -> Result<&str, Rejection> {
    let bytes = match value {
        None => return Err(reject(RejectKind::Empty, "null value")),
        Some([]) => return Err(reject(RejectKind::Empty, "empty value")),
        Some(bytes) => bytes,
    };
    std::str::from_utf8(bytes).map_err(|e| {
        reject(
            RejectKind::NotUtf8,
            format!("not UTF-8: invalid byte at offset {}", e.valid_up_to()),
        )
    })
}

/// Parse: the text as an `EventLog`, with the original's falsy lat/lng rule applied.
pub fn parse(text: &str) -> Result<EventLog<'_>, Rejection> {
    let mut event = match EventLog::from_original_layout(text) {
        Some(event) => event,
        None => serde_json::from_str(text).map_err(|e| classify(text, &e))?,
    };
    if !event.lat.is_truthy() || !event.lng.is_truthy() {
        event.lat = Coordinate::Degrees(-1.0);
        event.lng = Coordinate::Degrees(-1.0);
    }
    Ok(event)
}

/// What the aggregation jobs read of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit<'a> {
    pub id: std::borrow::Cow<'a, str>,
    pub event_datetime: std::borrow::Cow<'a, str>,
    pub file_size_bytes: i64,
}

/// Decode → Parse for the aggregation jobs: the fields they use, with the same verdict
/// and rejections as [`parse`]`(`[`decode`]`(value))`. A record in the original layout is
/// read in one validating scan, without building an `EventLog` (no float or string
/// copies); any other takes the full path. Hand-written because `bench window` showed the
/// full parse at about half of the aggregation's time; a property test holds it to the
/// full path.
pub fn visit(value: Option<&[u8]>) -> Result<Visit<'_>, Rejection> {
    if let Some(bytes) = value
        && let Some(layout) = OriginalLayout::scan(bytes)
    {
        // The whole record must be UTF-8, as decode wants (a string may hold any bytes).
        let whole = std::str::from_utf8(bytes).ok();
        let text = |range: std::ops::Range<usize>| whole?.get(range);
        let integer = |range: std::ops::Range<usize>| text(range)?.parse::<i64>().ok();
        if let (Some(id), Some(event_datetime), Some(file_size_bytes), Some(_), Some(_)) = (
            text(layout.id),
            text(layout.event_datetime),
            integer(layout.file_size_bytes),
            integer(layout.http_response),
            integer(layout.event_ts),
        ) {
            return Ok(Visit {
                id: id.into(),
                event_datetime: event_datetime.into(),
                file_size_bytes,
            });
        }
    }
    let event = parse(decode(value)?)?;
    Ok(Visit {
        id: event.id,
        event_datetime: event.event_datetime,
        file_size_bytes: event.file_size_bytes,
    })
}

/// Create messages: appends the key and value JSON of `event`.
pub fn create_message(
    event: &EventLog<'_>,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) -> Result<(), Rejection> {
    let encode =
        |e: serde_json::Error| reject(RejectKind::InvalidField, format!("cannot encode: {e}"));
    schema::write_key(event, key).map_err(encode)?;
    schema::write_value(event, value).map_err(encode)
}

/// The whole transform of one Kafka value into the output key and value: [`pass_through`]
/// when it applies, else Decode → Parse → Create messages.
#[cfg(any(test, feature = "bench"))]
pub fn transform(
    value: Option<&[u8]>,
    key_out: &mut Vec<u8>,
    value_out: &mut Vec<u8>,
) -> Result<(), Rejection> {
    if let Some(bytes) = value
        && pass_through(bytes, key_out, value_out)
    {
        return Ok(());
    }
    let event = parse(decode(value)?)?;
    create_message(&event, key_out, value_out)
}

/// The fast path of the whole transform, for records the original generator wrote: when
/// `bytes` are ASCII, laid out as the original writes events ([`OriginalLayout`]), and
/// each coordinate is falsy or in the form the writer writes back, the output value is the
/// input itself (with `-1` for both coordinates when one is falsy) and the key is built
/// from the input's `id` and `event_ts` text. Appends them and returns `true`; returns
/// `false`, having appended nothing, for any other record, which then takes the full path.
///
/// Why it is right: for such a record, `write_value(parse(bytes))` writes every field back
/// as the same text (strings need no escape, integers are canonical, coordinates are
/// checked by [`canonical_coordinate`]). A property test compares the two paths on real
/// records and on mutations of them. Why it exists: the transform benchmark (`bench transform`) shows
/// parsing and writing back at about 1M records/s on one core, and this at several times
/// that; it validates in one pass and copies the record in one piece.
pub fn pass_through(bytes: &[u8], key_out: &mut Vec<u8>, value_out: &mut Vec<u8>) -> bool {
    if !bytes.is_ascii() {
        return false;
    }
    let Some(layout) = OriginalLayout::scan(bytes) else {
        return false;
    };
    let (Some(lat_truthy), Some(lng_truthy)) = (
        canonical_coordinate(&bytes[layout.lat.clone()]),
        canonical_coordinate(&bytes[layout.lng.clone()]),
    ) else {
        return false;
    };
    key_out.extend_from_slice(b"{\"event_id\": \"");
    key_out.extend_from_slice(&bytes[layout.id]);
    key_out.extend_from_slice(b"\", \"event_ts\": ");
    key_out.extend_from_slice(&bytes[layout.event_ts]);
    key_out.push(b'}');
    if lat_truthy && lng_truthy {
        value_out.extend_from_slice(bytes);
    } else {
        value_out.extend_from_slice(&bytes[..layout.lat.start]);
        value_out.extend_from_slice(b"-1, \"lng\": -1");
        value_out.extend_from_slice(&bytes[layout.lng.end..]);
    }
    true
}

/// For a coordinate's text as [`OriginalLayout::scan`] accepted it: `Some(false)` when it
/// is falsy (`""` or zero; the job writes `-1` in its place), `Some(true)` when it is a
/// number that the writer writes back as the same text, `None` otherwise (`35.10`, `0.05`:
/// the full path decides).
///
/// The scan admits at most 15 significant digits. A decimal of at most 15 significant
/// digits is the shortest text that reads back as its nearest double, so the writer's
/// shortest round-trip form reproduces it, provided it has no trailing zero in its
/// fraction and is written without an exponent: a magnitude from 0.1 to below 1000.
fn canonical_coordinate(text: &[u8]) -> Option<bool> {
    if text == b"\"\"" {
        return Some(false);
    }
    let unsigned = text.strip_prefix(b"-").unwrap_or(text);
    if unsigned.iter().all(|&b| b == b'0' || b == b'.') {
        return Some(false);
    }
    let (integral, fraction) = match memchr::memchr(b'.', unsigned) {
        Some(dot) => (&unsigned[..dot], Some(&unsigned[dot + 1..])),
        None => (unsigned, None),
    };
    let integral_ok = match integral {
        [b'0'] => fraction.is_some_and(|f| f.first() != Some(&b'0')),
        [b'1'..=b'9', ..] => integral.len() <= 3,
        _ => false,
    };
    let fraction_ok = fraction.is_none_or(|f| f.last().is_some_and(|&b| b != b'0'));
    (integral_ok && fraction_ok).then_some(true)
}

/// Turns a serde error into a precise rejection (only on the slow, bad-record path).
fn classify(text: &str, error: &serde_json::Error) -> Rejection {
    if error.is_syntax() || error.is_eof() {
        return reject(RejectKind::NotJson, format!("not JSON: {error}"));
    }
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value,
        // serde_json stops at 128 levels of arrays and objects, so no input overflows the
        // stack; an event has one level.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            return reject(
                RejectKind::NotJson,
                format!("not JSON we read: nested too deeply (more than 128 levels; {e})"),
            );
        }
        Err(e) => return reject(RejectKind::NotJson, format!("not JSON: {e}")),
    };
    let Some(object) = value.as_object() else {
        let what = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        return reject(RejectKind::NotObject, format!("not a JSON object: {what}"));
    };
    for (field, expected) in FIELD_TYPES {
        match object.get(*field) {
            None => return reject(RejectKind::InvalidField, format!("missing field {field}")),
            Some(v) if !expected.accepts(v) => {
                return reject(
                    RejectKind::InvalidField,
                    format!(
                        "field {field}: expected {}, got {}",
                        expected.describe(),
                        brief(v)
                    ),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(unknown) = object
        .keys()
        .find(|k| !FIELD_TYPES.iter().any(|(f, _)| f == k))
    {
        return reject(RejectKind::InvalidField, format!("unknown field {unknown}"));
    }
    reject(RejectKind::InvalidField, error.to_string())
}

#[derive(Clone, Copy)]
enum FieldType {
    Str,
    Coordinate,
    Bool,
    Int,
}

impl FieldType {
    fn accepts(self, v: &serde_json::Value) -> bool {
        match self {
            FieldType::Str => v.is_string(),
            FieldType::Coordinate => v.is_number() || v.is_null() || v.as_str() == Some(""),
            FieldType::Bool => v.is_boolean(),
            FieldType::Int => {
                v.is_i64() || v.is_u64() && v.as_u64().is_some_and(|n| i64::try_from(n).is_ok())
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FieldType::Str => "a string",
            FieldType::Coordinate => "a number, \"\" or null",
            FieldType::Bool => "true or false",
            FieldType::Int => "a 64-bit integer",
        }
    }
}

const FIELD_TYPES: &[(&str, FieldType)] = &[
    ("ip", FieldType::Str),
    ("id", FieldType::Str),
    ("lat", FieldType::Coordinate),
    ("lng", FieldType::Coordinate),
    ("user_agent", FieldType::Str),
    ("age_bracket", FieldType::Str),
    ("opted_into_marketing", FieldType::Bool),
    ("http_request", FieldType::Str),
    ("http_response", FieldType::Int),
    ("file_size_bytes", FieldType::Int),
    ("event_datetime", FieldType::Str),
    ("event_ts", FieldType::Int),
];

fn brief(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if text.len() > 40 {
        format!("{}...", &text[..text.floor_char_boundary(40)])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"ip": "126.1.20.79", "id": "-2901668335848977108", "lat": 35.6895, "lng": 139.6917, "user_agent": "Mozilla/5.0", "age_bracket": "26-40", "opted_into_marketing": true, "http_request": "GET chromista.html HTTP/1.0", "http_response": 200, "file_size_bytes": 316, "event_datetime": "2024-04-14T21:51:33.042", "event_ts": 1713095493042}"#;

    fn run(value: &[u8]) -> Result<(String, String), Rejection> {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        transform(Some(value), &mut k, &mut v)?;
        Ok((String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
    }

    fn with(field: &str, raw: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        let old = serde_json::to_string(&value[field]).unwrap();
        let needle = format!("\"{field}\": {old}");
        assert!(GOOD.contains(&needle), "{needle}");
        GOOD.replace(&needle, &format!("\"{field}\": {raw}"))
    }

    fn kind(value: &[u8]) -> RejectKind {
        run(value).unwrap_err().kind
    }

    #[test]
    fn valid_records_keep_everything_and_get_the_original_key() {
        let (key, value) = run(GOOD.as_bytes()).unwrap();
        assert_eq!(
            key,
            r#"{"event_id": "-2901668335848977108", "event_ts": 1713095493042}"#
        );
        assert_eq!(value, GOOD);
    }

    #[test]
    fn every_original_sample_record_gets_minus_one_coordinates() {
        for line in include_str!("../fixtures/original-generator-batch.jsonl").lines() {
            let (key, value) = run(line.as_bytes()).unwrap();
            let expected = line.replace(r#""lat": "", "lng": """#, r#""lat": -1, "lng": -1"#);
            assert_eq!(value, expected);
            let original: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                key,
                format!(
                    r#"{{"event_id": {}, "event_ts": {}}}"#,
                    original["id"], original["event_ts"]
                )
            );
        }
    }

    #[test]
    fn falsy_coordinates_make_both_minus_one() {
        for (lat, lng) in [
            (r#""""#, r#""""#),
            ("0", "139.6917"),
            ("0.0", "139.6917"),
            ("null", "139.6917"),
            ("35.6895", r#""""#),
            ("35.6895", "0"),
            ("35.6895", "null"),
        ] {
            let record =
                with("lat", lat).replace(r#""lng": 139.6917"#, &format!(r#""lng": {lng}"#));
            let (_, value) = run(record.as_bytes()).unwrap();
            assert!(
                value.contains(r#""lat": -1, "lng": -1,"#),
                "{lat},{lng}: {value}"
            );
        }
        // Truthy pairs are kept, including negative coordinates.
        let (_, value) = run(with("lat", "-33.8688").as_bytes()).unwrap();
        assert!(
            value.contains(r#""lat": -33.8688, "lng": 139.6917"#),
            "{value}"
        );
    }

    #[test]
    fn deep_nesting_is_named_as_such() {
        for deep in ["[".repeat(200), format!("{{\"ip\": {}", "[".repeat(200))] {
            let rejection = run(deep.as_bytes()).unwrap_err();
            assert_eq!(rejection.kind, RejectKind::NotJson);
            assert!(
                rejection.reason.contains("nested too deeply"),
                "{rejection}"
            );
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// No input panics: any bytes end as a record or a rejection with a reason.
        #[test]
        fn any_bytes_transform_or_reject(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            match run(&bytes) {
                Ok((key, value)) => {
                    let well_formed = key.starts_with(r#"{"event_id""#) && value.starts_with('{');
                    prop_assert!(well_formed, "{} {}", key, value);
                }
                Err(rejection) => proptest::prop_assert!(!rejection.reason.is_empty()),
            }
        }

        /// Any field of a good record replaced by any JSON value: no panic, and a rejection
        /// names a reason.
        #[test]
        fn any_field_value_transforms_or_rejects(
            field in proptest::sample::select(vec!["ip", "id", "lat", "lng", "user_agent", "age_bracket", "opted_into_marketing", "http_request", "http_response", "file_size_bytes", "event_datetime", "event_ts"]),
            raw in proptest::prop_oneof![
                proptest::strategy::Just("null".to_string()),
                proptest::num::f64::ANY.prop_map(|v| v.to_string()),
                proptest::num::i64::ANY.prop_map(|v| v.to_string()),
                "\\PC{0,20}".prop_map(|v| serde_json::to_string(&v).unwrap()),
                "[\\[\\]{}0-9,\"a:]{0,30}",
            ],
        ) {
            let record = with(field, &raw);
            if let Err(rejection) = run(record.as_bytes()) {
                proptest::prop_assert!(!rejection.reason.is_empty());
            }
        }
    }

    #[test]
    fn non_utf8_is_rejected() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[10] = 0xff;
        assert_eq!(kind(&bytes), RejectKind::NotUtf8);
    }

    #[test]
    fn non_json_is_rejected() {
        assert_eq!(kind(b"hello"), RejectKind::NotJson);
        assert_eq!(kind(&GOOD.as_bytes()[..50]), RejectKind::NotJson);
        assert_eq!(kind(b"{\"ip\": }"), RejectKind::NotJson);
    }

    #[test]
    fn json_that_is_not_an_object_is_rejected() {
        for text in ["[1, 2]", "\"text\"", "42", "true", "null"] {
            let rejection = run(text.as_bytes()).unwrap_err();
            assert_eq!(rejection.kind, RejectKind::NotObject, "{text}");
        }
        assert!(run(b"null").unwrap_err().reason.contains("null"));
    }

    #[test]
    fn missing_fields_are_rejected_by_name() {
        let missing_ip = GOOD.replace(r#""ip": "126.1.20.79", "#, "");
        assert_eq!(
            run(missing_ip.as_bytes()).unwrap_err(),
            reject(RejectKind::InvalidField, "missing field ip")
        );
        // The original reads row["lat"]: an absent lat is a missing field, not a falsy one.
        let missing_lat = GOOD.replace(r#""lat": 35.6895, "#, "");
        assert_eq!(
            run(missing_lat.as_bytes()).unwrap_err().reason,
            "missing field lat"
        );
    }

    #[test]
    fn wrong_types_are_rejected_by_name() {
        for (field, raw, expected) in [
            (
                "http_response",
                r#""200""#,
                "field http_response: expected a 64-bit integer, got \"200\"",
            ),
            (
                "id",
                "-2901668335848977108",
                "field id: expected a string, got -2901668335848977108",
            ),
            (
                "event_ts",
                "1713095493042.5",
                "field event_ts: expected a 64-bit integer, got 1713095493042.5",
            ),
            (
                "opted_into_marketing",
                "1",
                "field opted_into_marketing: expected true or false, got 1",
            ),
            (
                "lat",
                r#""35.6""#,
                "field lat: expected a number, \"\" or null, got \"35.6\"",
            ),
            (
                "file_size_bytes",
                "null",
                "field file_size_bytes: expected a 64-bit integer, got null",
            ),
        ] {
            let rejection = run(with(field, raw).as_bytes()).unwrap_err();
            assert_eq!(rejection, reject(RejectKind::InvalidField, expected));
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let extra = GOOD.replace(r#"{"ip""#, r#"{"extra": 1, "ip""#);
        assert_eq!(
            run(extra.as_bytes()).unwrap_err().reason,
            "unknown field extra"
        );
    }

    #[test]
    fn empty_and_null_values_are_rejected() {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        assert_eq!(
            transform(None, &mut k, &mut v).unwrap_err().kind,
            RejectKind::Empty
        );
        assert_eq!(
            transform(Some(b""), &mut k, &mut v).unwrap_err().kind,
            RejectKind::Empty
        );
        assert!(k.is_empty() && v.is_empty());
    }

    #[test]
    fn non_ascii_strings_are_escaped_like_python() {
        let record = with("user_agent", r#""Mozilla/5.0 (café)""#);
        let (_, value) = run(record.as_bytes()).unwrap();
        assert!(
            value.contains(r#""user_agent": "Mozilla/5.0 (caf\u00e9)""#),
            "{value}"
        );
    }

    /// The full path, Decode → Parse → Create messages, which the fast path must match.
    fn full_path(bytes: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let event = parse(decode(Some(bytes)).ok()?).ok()?;
        create_message(&event, &mut key, &mut value).ok()?;
        Some((key, value))
    }

    fn fast_path(bytes: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let taken = pass_through(bytes, &mut key, &mut value);
        assert!(taken || (key.is_empty() && value.is_empty()));
        taken.then_some((key, value))
    }

    const ORIGINAL: &str = include_str!("../fixtures/original-generator-batch.jsonl");
    const OURS: &str = include_str!("../fixtures/website-visit.jsonl");

    #[test]
    fn every_generated_record_takes_the_fast_path_with_the_full_paths_output() {
        for line in ORIGINAL.lines().chain(OURS.lines()) {
            let fast = fast_path(line.as_bytes()).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(Some(fast), full_path(line.as_bytes()), "{line}");
        }
    }

    #[test]
    fn coordinates_the_writer_would_change_leave_the_fast_path() {
        for (text, expected) in [
            ("\"\"", Some(false)),
            ("0", Some(false)),
            ("0.0", Some(false)),
            ("35.6895", Some(true)),
            ("-33.8688", Some(true)),
            ("139", Some(true)),
            ("0.5", Some(true)),
            ("179.999999999999", Some(true)),
            ("35.10", None),
            ("35.0", None),
            ("0.05", None),
            ("1000.5", None),
            ("-0.1278", Some(true)),
            ("-0.05", None),
            ("-0", Some(false)),
        ] {
            assert_eq!(canonical_coordinate(text.as_bytes()), expected, "{text}");
        }
    }

    /// The full path of [`visit`]: decode and parse.
    fn full_visit(bytes: &[u8]) -> Result<(String, String, i64), RejectKind> {
        parse(decode(Some(bytes)).map_err(|r| r.kind)?)
            .map(|e| {
                (
                    e.id.into_owned(),
                    e.event_datetime.into_owned(),
                    e.file_size_bytes,
                )
            })
            .map_err(|r| r.kind)
    }

    fn fast_visit(bytes: &[u8]) -> Result<(String, String, i64), RejectKind> {
        visit(Some(bytes))
            .map(|v| {
                (
                    v.id.into_owned(),
                    v.event_datetime.into_owned(),
                    v.file_size_bytes,
                )
            })
            .map_err(|r| r.kind)
    }

    #[test]
    fn visit_reads_every_generated_record_as_parse_does() {
        for line in ORIGINAL.lines().chain(OURS.lines()) {
            assert_eq!(
                fast_visit(line.as_bytes()),
                full_visit(line.as_bytes()),
                "{line}"
            );
        }
        assert_eq!(visit(None).unwrap_err().kind, RejectKind::Empty);
    }

    proptest! {
        /// `visit` agrees with decode and parse on mutated real records: the same fields,
        /// or the same rejection.
        #[test]
        fn visit_matches_the_full_parse_on_mutated_records(
            line in proptest::sample::select(ORIGINAL.lines().chain(OURS.lines()).collect::<Vec<_>>()),
            at in 0usize..600,
            byte in proptest::sample::select(b"0123456789-.e\"\\ ,:{}tfnul\x01\x7fa\xc3".to_vec()),
            how in 0u8..3,
        ) {
            let bytes = schema::mutated(line, at, byte, how);
            prop_assert_eq!(fast_visit(&bytes), full_visit(&bytes));
        }

        /// Whatever the fast path takes, it writes what the full path writes: mutations
        /// of real records (a byte replaced, inserted or removed) explore the edges.
        #[test]
        fn the_fast_path_matches_the_full_path_on_mutated_records(
            line in proptest::sample::select(ORIGINAL.lines().chain(OURS.lines()).collect::<Vec<_>>()),
            at in 0usize..600,
            byte in proptest::sample::select(b"0123456789-.e\"\\ ,:{}tfnul\x01\x7fa\xc3".to_vec()),
            how in 0u8..3,
        ) {
            let bytes = schema::mutated(line, at, byte, how);
            if let Some(fast) = fast_path(&bytes) {
                prop_assert_eq!(Some(fast), full_path(&bytes));
            }
        }

        /// Coordinates in every form a writer might use (shortest, fixed decimals with
        /// trailing zeros, integers, tiny and large magnitudes): the fast path takes only
        /// those the full path writes back unchanged, or both replace with `-1`.
        #[test]
        fn the_fast_path_matches_the_full_path_on_any_coordinate_text(
            degrees in prop_oneof![-180.0f64..180.0, -1.0f64..1.0, -1e6f64..1e6],
            decimals in proptest::option::of(0usize..17),
            which in proptest::sample::select(vec!["lat", "lng"]),
        ) {
            let text = match decimals {
                Some(decimals) => format!("{degrees:.decimals$}"),
                None => degrees.to_string(),
            };
            let record = with(which, &text);
            if let Some(fast) = fast_path(record.as_bytes()) {
                prop_assert_eq!(Some(fast), full_path(record.as_bytes()), "{}", text);
            }
        }
    }
}
