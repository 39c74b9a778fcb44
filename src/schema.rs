//! The `EventLog` record shared by every tool in this crate, and its exact wire format.
//!
//! `EventLog` has the twelve fields of the original Beam job's `EventLog`, in the same
//! order and with the same JSON types. Serialisation goes through [`write_value`] and
//! [`write_key`], which reproduce Python's `json.dumps` byte for byte: `", "` and `": "`
//! separators, non-ASCII escaped as `\uXXXX`, and integral coordinates written as integers
//! (so the pipeline's `-1` stays `-1`). Deserialisation accepts the original generator's
//! records, where `lat`/`lng` are numbers or the empty string, and is otherwise strict
//! about types: `"http_response": "200"` is an error, not a coercion.
//!
//! Strings are `Cow<'a, str>`, so parsing borrows from the input and generation borrows
//! from the user pool: neither allocates per field.
//!
//! Both directions have a hand-written path for the fixed layout, justified by
//! the transform benchmark (`bench transform`, about twice the transform's speed):
//! [`EventLog::from_original_layout`] reads records laid out as the original writes them
//! (serde_json reads everything else), through `OriginalLayout::scan`, which finds each
//! field's bytes in one pass and which the transform's pass-through path shares; the
//! writers append bytes directly. Property tests check both against serde_json.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Range;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// One website visit, as the original generator writes it and the original job reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLog<'a> {
    /// The visitor's IPv4 address, dotted decimal.
    #[serde(borrow)]
    pub ip: Cow<'a, str>,
    /// A signed 64-bit hash of ip, lat and lng, written as a decimal string.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Latitude in degrees, or missing (the original writes `""` when its geo lookup failed).
    pub lat: Coordinate,
    /// Longitude in degrees, or missing.
    pub lng: Coordinate,
    #[serde(borrow)]
    /// The browser's user agent string.
    pub user_agent: Cow<'a, str>,
    /// One of `18-25`, `26-40`, `41-55`, `55+`.
    #[serde(borrow)]
    pub age_bracket: Cow<'a, str>,
    /// Whether the user opted into marketing.
    pub opted_into_marketing: bool,
    /// `GET <page> HTTP/1.0`.
    #[serde(borrow)]
    pub http_request: Cow<'a, str>,
    /// The HTTP status code.
    pub http_response: i64,
    /// The size of the file served, in bytes.
    pub file_size_bytes: i64,
    /// ISO-8601 UTC without zone, milliseconds: `2024-04-14T21:51:33.042`.
    #[serde(borrow)]
    pub event_datetime: Cow<'a, str>,
    /// The same instant as `event_datetime`, in epoch milliseconds.
    pub event_ts: i64,
}

/// The message key of the original job: `{"event_id": <id>, "event_ts": <event_ts>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventKey<'a> {
    #[serde(borrow)]
    /// The event's `id`.
    pub event_id: Cow<'a, str>,
    /// The event's `event_ts`, epoch milliseconds.
    pub event_ts: i64,
}

impl<'a> EventLog<'a> {
    /// The Kafka key the original job and generator attach to this event.
    pub fn key(&self) -> EventKey<'_> {
        EventKey {
            event_id: Cow::Borrowed(&self.id),
            event_ts: self.event_ts,
        }
    }

    /// Parses one JSON record strictly (see the module docs).
    pub fn from_json(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Parses `text` if it is laid out exactly as the original generator writes events:
    /// the twelve fields in order, Python's separators, strings without escapes or control
    /// characters, plain decimal numbers. `None` for anything else, which the caller then
    /// parses with serde_json (the reference, and the source of precise errors).
    ///
    /// Hand-written because the transform benchmark (`bench transform`) shows serde_json's derive at
    /// about half the transform's time. For every text it accepts, the result equals
    /// serde_json's (a property test checks this on valid and mutated records).
    pub fn from_original_layout(text: &'a str) -> Option<Self> {
        let layout = OriginalLayout::scan(text.as_bytes())?;
        // Every range is bounded by ASCII bytes (quotes, separators), so `get` finds
        // character boundaries; it returns `None` rather than panic in any case.
        let string = |range: &Range<usize>| text.get(range.clone()).map(Cow::Borrowed);
        let integer = |range: &Range<usize>| text.get(range.clone())?.parse().ok();
        let coordinate = |range: &Range<usize>| match text.get(range.clone())? {
            "\"\"" => Some(Coordinate::Missing),
            number => number.parse().ok().map(Coordinate::Degrees),
        };
        Some(EventLog {
            ip: string(&layout.ip)?,
            id: string(&layout.id)?,
            lat: coordinate(&layout.lat)?,
            lng: coordinate(&layout.lng)?,
            user_agent: string(&layout.user_agent)?,
            age_bracket: string(&layout.age_bracket)?,
            opted_into_marketing: layout.opted_into_marketing,
            http_request: string(&layout.http_request)?,
            http_response: integer(&layout.http_response)?,
            file_size_bytes: integer(&layout.file_size_bytes)?,
            event_datetime: string(&layout.event_datetime)?,
            event_ts: integer(&layout.event_ts)?,
        })
    }
}

/// Where each field of a record laid out as the original generator writes it sits: byte
/// ranges of the field's JSON text (inside the quotes for strings; `""` itself for a
/// missing coordinate). Found by [`OriginalLayout::scan`] in one pass, with no allocation.
///
/// What the scan accepts, serde_json reads alike (the property tests of
/// [`EventLog::from_original_layout`] check it), and every number's text is in the form
/// the writers here write back: integers of at most 18 digits without leading zeros or
/// `-0`, coordinates of at most 15 significant digits without an exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OriginalLayout {
    pub ip: Range<usize>,
    pub id: Range<usize>,
    pub lat: Range<usize>,
    pub lng: Range<usize>,
    pub user_agent: Range<usize>,
    pub age_bracket: Range<usize>,
    pub opted_into_marketing: bool,
    pub http_request: Range<usize>,
    pub http_response: Range<usize>,
    pub file_size_bytes: Range<usize>,
    pub event_datetime: Range<usize>,
    pub event_ts: Range<usize>,
}

impl OriginalLayout {
    /// The layout of `bytes`, or `None` when they are not laid out as the original writes
    /// events (see [`EventLog::from_original_layout`]).
    pub(crate) fn scan(bytes: &[u8]) -> Option<Self> {
        let mut cursor = LayoutCursor { bytes, at: 0 };
        cursor.expect(b"{\"ip\": ")?;
        let ip = cursor.string()?;
        cursor.expect(b", \"id\": ")?;
        let id = cursor.string()?;
        cursor.expect(b", \"lat\": ")?;
        let lat = cursor.coordinate()?;
        cursor.expect(b", \"lng\": ")?;
        let lng = cursor.coordinate()?;
        cursor.expect(b", \"user_agent\": ")?;
        let user_agent = cursor.string()?;
        cursor.expect(b", \"age_bracket\": ")?;
        let age_bracket = cursor.string()?;
        cursor.expect(b", \"opted_into_marketing\": ")?;
        let opted_into_marketing = if cursor.expect(b"true").is_some() {
            true
        } else {
            cursor.expect(b"false")?;
            false
        };
        cursor.expect(b", \"http_request\": ")?;
        let http_request = cursor.string()?;
        cursor.expect(b", \"http_response\": ")?;
        let http_response = cursor.integer()?;
        cursor.expect(b", \"file_size_bytes\": ")?;
        let file_size_bytes = cursor.integer()?;
        cursor.expect(b", \"event_datetime\": ")?;
        let event_datetime = cursor.string()?;
        cursor.expect(b", \"event_ts\": ")?;
        let event_ts = cursor.integer()?;
        cursor.expect(b"}")?;
        (cursor.at == bytes.len()).then_some(OriginalLayout {
            ip,
            id,
            lat,
            lng,
            user_agent,
            age_bracket,
            opted_into_marketing,
            http_request,
            http_response,
            file_size_bytes,
            event_datetime,
            event_ts,
        })
    }
}

/// A position in a record being read by [`OriginalLayout::scan`].
struct LayoutCursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> LayoutCursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    fn expect(&mut self, literal: &[u8]) -> Option<()> {
        self.rest()
            .starts_with(literal)
            .then(|| self.at += literal.len())
    }

    /// A string without escapes or control characters (serde_json refuses raw control
    /// characters; escapes are left to it). The range excludes the quotes.
    fn string(&mut self) -> Option<Range<usize>> {
        self.expect(b"\"")?;
        let length = memchr::memchr(b'"', self.rest())?;
        // No `"` inside (memchr stopped at the first one), so only controls and `\\` count.
        if has_special_byte(&self.rest()[..length], false) {
            return None;
        }
        let start = self.at;
        self.at += length + 1;
        Some(start..start + length)
    }

    /// The digits of a number: `-?(0|[1-9][0-9]*)` and, with `fraction`, an optional
    /// `.[0-9]+`; no exponent. Returns the range and its count of digits.
    fn number_text(&mut self, fraction: bool) -> Option<(Range<usize>, usize)> {
        let bytes = self.rest();
        let mut end = usize::from(bytes.first() == Some(&b'-'));
        let first_digit = end;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let integral = end - first_digit;
        if integral == 0 || (integral > 1 && bytes[first_digit] == b'0') {
            return None;
        }
        let mut digits = integral;
        if fraction && bytes.get(end) == Some(&b'.') {
            let fraction_start = end + 1;
            end = fraction_start;
            while bytes.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == fraction_start {
                return None;
            }
            digits += end - fraction_start;
        }
        if matches!(bytes.get(end), Some(b'e' | b'E' | b'.')) {
            return None;
        }
        let start = self.at;
        self.at += end;
        Some((start..start + end, digits))
    }

    /// An integer of at most 18 digits (no overflow; longer ones are left to serde_json).
    fn integer(&mut self) -> Option<Range<usize>> {
        let (range, digits) = self.number_text(false)?;
        (digits <= 18 && &self.bytes[range.clone()] != b"-0").then_some(range)
    }

    /// `""`, or a decimal of at most 15 significant digits: in that range both Rust's
    /// parser and serde_json's are exact (correctly rounded), so they agree.
    fn coordinate(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        if self.expect(b"\"\"").is_some() {
            return Some(start..self.at);
        }
        let (range, digits) = self.number_text(true)?;
        (digits <= 15).then_some(range)
    }
}

/// A latitude or longitude that may be missing.
///
/// Serialises as a JSON number, or as `""` when missing (the original's failed lookup).
/// Deserialises from a number, `""` or `null`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coordinate {
    /// The empty string: a user without a known location.
    Missing,
    /// A latitude or longitude in degrees.
    Degrees(f64),
}

impl Coordinate {
    /// Python truthiness, as the original job tests it: missing and zero are falsy.
    pub fn is_truthy(self) -> bool {
        matches!(self, Coordinate::Degrees(d) if d != 0.0)
    }
}

/// Largest magnitude below which every integral f64 is exactly an i64 (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

impl Serialize for Coordinate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Coordinate::Missing => serializer.serialize_str(""),
            // Integral values come from Python ints (the job's -1): write them as ints.
            Coordinate::Degrees(d) if d.fract() == 0.0 && d.abs() < EXACT_INTEGER_LIMIT => {
                serializer.serialize_i64(d as i64)
            }
            Coordinate::Degrees(d) => serializer.serialize_f64(d),
        }
    }
}

impl<'de> Deserialize<'de> for Coordinate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CoordinateVisitor;
        impl Visitor<'_> for CoordinateVisitor {
            type Value = Coordinate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, \"\" or null")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Coordinate, E> {
                Ok(Coordinate::Degrees(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Coordinate, E> {
                Ok(Coordinate::Degrees(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Coordinate, E> {
                Ok(Coordinate::Degrees(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Coordinate, E> {
                if v.is_empty() {
                    Ok(Coordinate::Missing)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Coordinate, E> {
                Ok(Coordinate::Missing)
            }
        }
        deserializer.deserialize_any(CoordinateVisitor)
    }
}

/// A `serde_json` formatter that writes what Python's `json.dumps` writes by default.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    /// `ensure_ascii=True`: every non-ASCII character becomes `\uXXXX` (UTF-16 units).
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// The serde path with [`PythonFormatter`]: the reference the hand-written writers are
/// tested against.
#[cfg(test)]
fn write_python_json<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let mut serializer = serde_json::Serializer::with_formatter(out, PythonFormatter);
    value.serialize(&mut serializer)
}

/// Appends `text` as a JSON string the way Python's `json.dumps` writes it: the short
/// escapes for `"`, `\`, `\n`, `\r`, `\t`, `\b` and `\f`, `\u00XX` for other control
/// characters, and `\uXXXX` (UTF-16 units, lowercase hex) for everything non-ASCII.
///
/// Hand-written for the fixed `EventLog` layout: the transform benchmark (`bench transform`) shows the
/// serde serializer with [`PythonFormatter`] at about half the speed of this, and the
/// strings of real events are plain ASCII, copied in one piece.
pub(crate) fn write_python_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut units = [0u16; 2];
        for c in text.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                c if (c as u32) >= 0x20 && (c as u32) < 0x80 => out.push(c as u8),
                c => {
                    for unit in c.encode_utf16(&mut units) {
                        let unit = *unit;
                        out.extend_from_slice(b"\\u");
                        for shift in [12, 8, 4, 0] {
                            out.push(HEX[usize::from((unit >> shift) & 0xf)]);
                        }
                    }
                }
            }
        }
    }
    out.push(b'"');
}

/// Whether any byte of `bytes` is a control character, `"`, `\\` or non-ASCII.
fn needs_escape(bytes: &[u8]) -> bool {
    has_special_byte(bytes, true)
}

/// Whether any byte of `bytes` is a control character, `"` or `\\` (and, with
/// `non_ascii`, 0x80 or above): eight bytes at a time (the classic "has a zero byte" and
/// "has a byte less than n" bit tricks), the rest one by one.
fn has_special_byte(bytes: &[u8], non_ascii: bool) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let high_mask = if non_ascii { HIGH } else { 0 };
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let v = u64::from_le_bytes(eight);
        let special = (v & high_mask)
            | (v.wrapping_sub(ONES * 0x20) & !v & HIGH)
            | has_zero(v ^ (ONES * 0x22))
            | has_zero(v ^ (ONES * 0x5c));
        if special != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || (non_ascii && b >= 0x80))
}

fn write_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_coordinate(out: &mut Vec<u8>, coordinate: Coordinate) {
    match coordinate {
        Coordinate::Missing => out.extend_from_slice(b"\"\""),
        // Integral values come from Python ints (the job's -1): write them as ints.
        Coordinate::Degrees(d) if d.fract() == 0.0 && d.abs() < EXACT_INTEGER_LIMIT => {
            write_i64(out, d as i64)
        }
        // serde_json's shortest round-trip form, which matches Python's repr for the
        // values events carry; like serde_json, a non-finite value is `null`.
        Coordinate::Degrees(d) if d.is_finite() => {
            let _ = serde_json::ser::Formatter::write_f64(&mut PythonFormatter, out, d);
        }
        Coordinate::Degrees(_) => out.extend_from_slice(b"null"),
    }
}

/// Appends the event's JSON, exactly as the original writes it, to `out`.
pub fn write_value(event: &EventLog<'_>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"ip\": ");
    write_python_str(out, &event.ip);
    out.extend_from_slice(b", \"id\": ");
    write_python_str(out, &event.id);
    out.extend_from_slice(b", \"lat\": ");
    write_coordinate(out, event.lat);
    out.extend_from_slice(b", \"lng\": ");
    write_coordinate(out, event.lng);
    out.extend_from_slice(b", \"user_agent\": ");
    write_python_str(out, &event.user_agent);
    out.extend_from_slice(b", \"age_bracket\": ");
    write_python_str(out, &event.age_bracket);
    out.extend_from_slice(if event.opted_into_marketing {
        b", \"opted_into_marketing\": true, \"http_request\": ".as_slice()
    } else {
        b", \"opted_into_marketing\": false, \"http_request\": ".as_slice()
    });
    write_python_str(out, &event.http_request);
    out.extend_from_slice(b", \"http_response\": ");
    write_i64(out, event.http_response);
    out.extend_from_slice(b", \"file_size_bytes\": ");
    write_i64(out, event.file_size_bytes);
    out.extend_from_slice(b", \"event_datetime\": ");
    write_python_str(out, &event.event_datetime);
    out.extend_from_slice(b", \"event_ts\": ");
    write_i64(out, event.event_ts);
    out.push(b'}');
    Ok(())
}

/// Appends the event's key JSON, exactly as the original writes it, to `out`.
pub fn write_key(event: &EventLog<'_>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"event_id\": ");
    write_python_str(out, &event.id);
    out.extend_from_slice(b", \"event_ts\": ");
    write_i64(out, event.event_ts);
    out.push(b'}');
    Ok(())
}

/// `line` with one byte replaced (`how` 0), inserted (1) or removed (2) at `at` (taken
/// modulo the length): the mutations the fast paths' property tests explore.
#[cfg(test)]
pub(crate) fn mutated(line: &str, at: usize, byte: u8, how: u8) -> Vec<u8> {
    let mut bytes = line.as_bytes().to_vec();
    let at = at % (bytes.len() + 1);
    match how {
        0 if at < bytes.len() => bytes[at] = byte,
        1 => bytes.insert(at, byte),
        _ if at < bytes.len() => {
            bytes.remove(at);
        }
        _ => {}
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../fixtures/original-generator-batch.jsonl");

    #[test]
    fn every_original_sample_line_parses_and_round_trips_byte_for_byte() {
        let mut count = 0;
        for line in SAMPLE.lines() {
            let event = EventLog::from_json(line.as_bytes()).expect(line);
            let mut out = Vec::new();
            write_value(&event, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), line);
            count += 1;
        }
        assert_eq!(count, 300);
    }

    #[test]
    fn numeric_coordinates_round_trip() {
        let line = r#"{"ip": "126.1.20.79", "id": "-2901668335848977108", "lat": 35.6895, "lng": 139.6917, "user_agent": "Mozilla/5.0", "age_bracket": "26-40", "opted_into_marketing": true, "http_request": "GET chromista.html HTTP/1.0", "http_response": 200, "file_size_bytes": 316, "event_datetime": "2024-04-14T21:51:33.042", "event_ts": 1713095493042}"#;
        let event = EventLog::from_json(line.as_bytes()).unwrap();
        assert_eq!(event.lat, Coordinate::Degrees(35.6895));
        assert_eq!(event.lng, Coordinate::Degrees(139.6917));
        let mut out = Vec::new();
        write_value(&event, &mut out).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), line);
        let mut key = Vec::new();
        write_key(&event, &mut key).unwrap();
        assert_eq!(
            std::str::from_utf8(&key).unwrap(),
            r#"{"event_id": "-2901668335848977108", "event_ts": 1713095493042}"#
        );
    }

    #[test]
    fn integral_coordinates_are_written_as_integers_like_python_ints() {
        let mut out = Vec::new();
        write_python_json(
            &[
                Coordinate::Degrees(-1.0),
                Coordinate::Degrees(0.5),
                Coordinate::Missing,
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#"[-1, 0.5, ""]"#);
    }

    #[test]
    fn coordinates_accept_null_and_reject_other_strings() {
        assert_eq!(
            serde_json::from_str::<Coordinate>("null").unwrap(),
            Coordinate::Missing
        );
        assert_eq!(
            serde_json::from_str::<Coordinate>("12").unwrap(),
            Coordinate::Degrees(12.0)
        );
        assert!(serde_json::from_str::<Coordinate>(r#""12.5""#).is_err());
        assert!(serde_json::from_str::<Coordinate>("true").is_err());
    }

    #[test]
    fn non_ascii_is_escaped_like_python() {
        let mut out = Vec::new();
        write_python_json("café 😀", &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#""caf\u00e9 \ud83d\ude00""#
        );
    }

    #[test]
    fn wrong_types_and_missing_fields_are_errors() {
        let good = SAMPLE.lines().next().unwrap();
        let wrong_status = good.replace("\"http_response\": 200", "\"http_response\": \"200\"");
        assert!(EventLog::from_json(wrong_status.as_bytes()).is_err());
        let missing = good.replace("\"ip\": \"9.46.247.103\", ", "");
        assert!(EventLog::from_json(missing.as_bytes()).is_err());
    }

    use proptest::prelude::*;

    proptest! {
        /// The hand-written writers give exactly what serde_json with [`PythonFormatter`]
        /// gives, for any strings, numbers and coordinates.
        #[test]
        fn hand_written_json_matches_the_serde_formatter(
            text in "\\PC{0,12}|[\\x00-\\x7f]{0,12}",
            number in proptest::num::i64::ANY,
            degrees in proptest::num::f64::ANY,
            flag in proptest::bool::ANY,
        ) {
            let event = EventLog {
                ip: Cow::Borrowed(&text),
                id: Cow::Owned(format!("{number}")),
                lat: Coordinate::Degrees(degrees),
                lng: if flag { Coordinate::Missing } else { Coordinate::Degrees(degrees.trunc()) },
                user_agent: Cow::Borrowed(&text),
                age_bracket: Cow::Borrowed("26-40"),
                opted_into_marketing: flag,
                http_request: Cow::Borrowed(&text),
                http_response: number,
                file_size_bytes: -number.wrapping_abs(),
                event_datetime: Cow::Borrowed(&text),
                event_ts: number,
            };
            let (mut fast, mut reference) = (Vec::new(), Vec::new());
            write_value(&event, &mut fast).unwrap();
            write_python_json(&event, &mut reference).unwrap();
            prop_assert_eq!(&fast, &reference);
            let (mut fast, mut reference) = (Vec::new(), Vec::new());
            write_key(&event, &mut fast).unwrap();
            write_python_json(&event.key(), &mut reference).unwrap();
            prop_assert_eq!(fast, reference);
        }
    }

    #[test]
    fn every_original_sample_line_takes_the_fast_path_with_the_same_result() {
        for line in SAMPLE.lines() {
            let fast = EventLog::from_original_layout(line).expect(line);
            assert_eq!(fast, EventLog::from_json(line.as_bytes()).unwrap());
        }
    }

    proptest! {
        /// Whatever the fast path accepts, serde_json reads the same; mutations of a real
        /// record (a byte replaced, inserted or removed) explore the edges.
        #[test]
        fn the_fast_path_agrees_with_serde_json(
            line in proptest::sample::select(SAMPLE.lines().collect::<Vec<_>>()),
            at in 0usize..400,
            byte in proptest::sample::select(b"0123456789-.e\"\\ ,:{}tfnul\x01\x7fa".to_vec()),
            how in 0u8..3,
        ) {
            let bytes = mutated(line, at, byte, how);
            if let Ok(text) = std::str::from_utf8(&bytes)
                && let Some(fast) = EventLog::from_original_layout(text)
            {
                let reference = EventLog::from_json(&bytes);
                prop_assert!(reference.is_ok(), "{text}: {reference:?}");
                prop_assert_eq!(fast, reference.unwrap());
            }
        }

        /// Any event written by `write_value` is read back by the fast path as serde_json
        /// reads it, when the fast path takes it.
        #[test]
        fn written_events_read_back_alike(
            text in "[ -~]{0,12}",
            number in proptest::num::i64::ANY,
            degrees in -180.0f64..180.0,
        ) {
            let event = EventLog {
                ip: Cow::Borrowed(&text),
                id: Cow::Owned(format!("{number}")),
                lat: Coordinate::Degrees(degrees),
                lng: Coordinate::Missing,
                user_agent: Cow::Borrowed(&text),
                age_bracket: Cow::Borrowed("26-40"),
                opted_into_marketing: number % 2 == 0,
                http_request: Cow::Borrowed(&text),
                http_response: number,
                file_size_bytes: number / 3,
                event_datetime: Cow::Borrowed(&text),
                event_ts: number,
            };
            let mut out = Vec::new();
            write_value(&event, &mut out).unwrap();
            let written = std::str::from_utf8(&out).unwrap();
            if let Some(fast) = EventLog::from_original_layout(written) {
                prop_assert_eq!(fast, EventLog::from_json(&out).unwrap());
            }
        }
    }

    #[test]
    fn needs_escape_finds_every_special_byte_at_every_position() {
        for len in 0..20 {
            let plain = vec![b'a'; len];
            assert!(!needs_escape(&plain));
            for at in 0..len {
                for special in [0u8, 0x1f, b'"', b'\\', 0x80, 0xff] {
                    let mut bytes = plain.clone();
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{special:#x} at {at} of {len}");
                }
                for fine in [0x20u8, 0x21, 0x23, 0x5b, 0x5d, 0x7f] {
                    let mut bytes = plain.clone();
                    bytes[at] = fine;
                    assert!(!needs_escape(&bytes), "{fine:#x} at {at} of {len}");
                }
                for non_ascii in [0x80u8, 0xc3, 0xff] {
                    let mut bytes = plain.clone();
                    bytes[at] = non_ascii;
                    assert!(!has_special_byte(&bytes, false), "{non_ascii:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn python_truthiness_of_coordinates() {
        assert!(!Coordinate::Missing.is_truthy());
        assert!(!Coordinate::Degrees(0.0).is_truthy());
        assert!(Coordinate::Degrees(-33.86).is_truthy());
    }
}
