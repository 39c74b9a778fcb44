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

use std::borrow::Cow;
use std::fmt;
use std::io;

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
    pub user_agent: Cow<'a, str>,
    /// One of `18-25`, `26-40`, `41-55`, `55+`.
    #[serde(borrow)]
    pub age_bracket: Cow<'a, str>,
    pub opted_into_marketing: bool,
    /// `GET <page> HTTP/1.0`.
    #[serde(borrow)]
    pub http_request: Cow<'a, str>,
    pub http_response: i64,
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
    pub event_id: Cow<'a, str>,
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
}

/// A latitude or longitude that may be missing.
///
/// Serialises as a JSON number, or as `""` when missing (the original's failed lookup).
/// Deserialises from a number, `""` or `null`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coordinate {
    Missing,
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

fn write_python_json<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let mut serializer = serde_json::Serializer::with_formatter(out, PythonFormatter);
    value.serialize(&mut serializer)
}

/// Appends the event's JSON, exactly as the original writes it, to `out`.
pub fn write_value(event: &EventLog<'_>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    write_python_json(event, out)
}

/// Appends the event's key JSON, exactly as the original writes it, to `out`.
pub fn write_key(event: &EventLog<'_>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    write_python_json(&event.key(), out)
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

    #[test]
    fn python_truthiness_of_coordinates() {
        assert!(!Coordinate::Missing.is_truthy());
        assert!(!Coordinate::Degrees(0.0).is_truthy());
        assert!(Coordinate::Degrees(-33.86).is_truthy());
    }
}
