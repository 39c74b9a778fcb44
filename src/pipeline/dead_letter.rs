//! The dead-letter contract, in one place: where a record that cannot become output goes,
//! and what it carries. The README's "Dead letters" section documents this format; the
//! tests read it through these constants.
//!
//! **On Kafka** a dead letter is the input record's key and value, untouched (a null key or
//! value stays null), with the input's own headers first and then:
//! - [`ERROR`]: the reason, for a human;
//! - [`KIND`]: the reason's kind ([`RejectKind::as_str`]: `not_json`, `late`, ...);
//! - [`SOURCE_TOPIC`], [`SOURCE_PARTITION`], [`SOURCE_OFFSET`]: where the record is.
//!
//! **By reference**: when the dead-letter topic refuses the record too (it is larger than
//! its `max.message.bytes`), the dead letter carries the headers above, [`OMITTED_SIZE`],
//! and in place of the value a small JSON object, [`reference`]:
//! `{"omitted_payload": {"topic", "partition", "offset", "size"}}`. The record itself stays
//! in the input topic at that offset.
//!
//! **A job's own result** that the output refuses (a window result, say) has no input
//! record: its dead letter is the result's key and value with [`ERROR`] and [`KIND`].
//!
//! **In files** each dead letter is one JSON line with the line number, the
//! error, its kind and the raw text (`raw_base64` too when it is not UTF-8), or only the
//! size of a line too long to hold.
//!
//! Guarantee: a record is refused for what it is (too large, invalid) only through
//! `record_refusal`; every other error is the cluster's, and stops the job.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;

use crate::transform::{RejectKind, Rejection};
use crate::windows::Verdict;

/// Header: why the record became a dead letter.
pub const ERROR: &str = "error";
/// Header: the kind of reason ([`RejectKind::as_str`]).
pub const KIND: &str = "error.kind";
/// Header: the input topic of the record.
pub const SOURCE_TOPIC: &str = "source.topic";
/// Header: the input partition of the record.
pub const SOURCE_PARTITION: &str = "source.partition";
/// Header: the input offset of the record.
pub const SOURCE_OFFSET: &str = "source.offset";
/// Header of a dead letter by reference: the size of the key and value left out.
pub const OMITTED_SIZE: &str = "payload.omitted.size";

/// Longest key kept on a dead letter by reference (a longer key may be what made the
/// record too large).
pub(crate) const REFERENCE_KEY_BYTES: usize = 1024;

/// Where an input record is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The dead-letter kind for an error that is about one record, not the cluster: the record
/// goes to the dead letters and the job goes on.
pub(crate) fn record_refusal(code: RDKafkaErrorCode) -> Option<RejectKind> {
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge => Some(RejectKind::TooLarge),
        RDKafkaErrorCode::InvalidRecord => Some(RejectKind::OutputRejected),
        _ => None,
    }
}

/// A dead letter's headers: the input record's own (`inherited`) first, then the error, its
/// kind, the source position (when there is an input record) and, for a reference, the
/// size of what was left out.
pub(crate) fn headers(
    inherited: Option<OwnedHeaders>,
    source: Option<Position<'_>>,
    rejection: &Rejection,
    omitted_size: Option<usize>,
) -> OwnedHeaders {
    let mut headers = inherited
        .unwrap_or_default()
        .insert(Header {
            key: ERROR,
            value: Some(rejection.reason.as_str()),
        })
        .insert(Header {
            key: KIND,
            value: Some(rejection.kind.as_str()),
        });
    if let Some(source) = source {
        headers = headers
            .insert(Header {
                key: SOURCE_TOPIC,
                value: Some(source.topic),
            })
            .insert(Header {
                key: SOURCE_PARTITION,
                value: Some(source.partition.to_string().as_str()),
            })
            .insert(Header {
                key: SOURCE_OFFSET,
                value: Some(source.offset.to_string().as_str()),
            });
    }
    match omitted_size {
        None => headers,
        Some(size) => headers.insert(Header {
            key: OMITTED_SIZE,
            value: Some(size.to_string().as_str()),
        }),
    }
}

/// The value of a dead letter by reference: where the record is and how big it was.
pub(crate) fn reference(source: Position<'_>, size: usize) -> String {
    serde_json::json!({
        "omitted_payload": {
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "size": size,
        }
    })
    .to_string()
}

/// The reason of an output record the output topic refused at `send`.
pub(crate) fn output_refused(size: usize, topic: &str, kind: RejectKind, error: &str) -> Rejection {
    Rejection {
        kind,
        reason: format!("the output record ({size} bytes) cannot go to {topic}: {error}"),
    }
}

/// The reason of a record a topic refused on delivery (the broker's answer).
pub(crate) fn refused_on_delivery(topic: &str, kind: RejectKind, error: &str) -> Rejection {
    Rejection {
        kind,
        reason: format!("{topic} refused the record: {error}"),
    }
}

/// The reason once the dead-letter topic refused the dead letter too.
pub(crate) fn refused_twice(rejection: &Rejection, error: &str) -> Rejection {
    Rejection {
        kind: rejection.kind,
        reason: format!("{}; the dead letter too: {error}", rejection.reason),
    }
}

/// An event whose `event_datetime` is no time.
pub(crate) fn invalid_event_time(text: &str) -> Rejection {
    Rejection {
        kind: RejectKind::InvalidField,
        reason: format!(
            "event_datetime {text:?} is not a time of the form YYYY-MM-DDTHH:MM:SS.fff"
        ),
    }
}

/// The dead letter that an event's [`Verdict`] calls for, if any: `late` or `future`.
pub(crate) fn verdict(verdict: Verdict) -> Option<Rejection> {
    match verdict {
        Verdict::Counted => None,
        Verdict::Late {
            window_end_ms,
            behind_ms,
        } => Some(Rejection {
            kind: RejectKind::Late,
            reason: format!(
                "late: its window ended at {} and had fired; the event is {behind_ms} ms behind the watermark less the allowed lateness",
                crate::windows::format_time(window_end_ms)
            ),
        }),
        Verdict::Future {
            event_ms,
            ahead_ms,
            bound_ms,
        } => Some(Rejection {
            kind: RejectKind::Future,
            reason: format!(
                "future: its time {} is {} ahead of the wall clock, beyond --max-event-time-ahead {}; it moves no watermark",
                crate::windows::format_time(event_ms),
                humantime::format_duration(Duration::from_millis(ahead_ms.max(0) as u64)),
                humantime::format_duration(Duration::from_millis(bound_ms.max(0) as u64)),
            ),
        }),
    }
}

/// One line of a dead-letter file.
#[derive(Debug, serde::Serialize)]
pub(crate) struct FileLine<'a> {
    pub line: u64,
    pub kind: &'static str,
    pub error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// Bytes of a line too long to keep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

impl<'a> FileLine<'a> {
    /// The dead letter of line `line`, whose text is `record`.
    pub fn of(line: u64, record: &'a [u8], rejection: &'a Rejection) -> Self {
        use base64::Engine;
        FileLine {
            line,
            kind: rejection.kind.as_str(),
            error: &rejection.reason,
            raw: Some(String::from_utf8_lossy(record)),
            raw_base64: std::str::from_utf8(record)
                .is_err()
                .then(|| base64::engine::general_purpose::STANDARD.encode(record)),
            size: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn headers_carry_the_reason_and_the_source_after_the_inherited_ones() {
        let inherited = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("t1"),
        });
        let rejection = Rejection {
            kind: RejectKind::NotJson,
            reason: "not JSON".into(),
        };
        let source = Position {
            topic: "in",
            partition: 2,
            offset: 40,
        };
        let headers = headers(Some(inherited), Some(source), &rejection, Some(9));
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let expected = [
            ("trace", "t1"),
            (ERROR, "not JSON"),
            (KIND, "not_json"),
            (SOURCE_TOPIC, "in"),
            (SOURCE_PARTITION, "2"),
            (SOURCE_OFFSET, "40"),
            (OMITTED_SIZE, "9"),
        ];
        assert_eq!(
            pairs,
            expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        let value: serde_json::Value = serde_json::from_str(&reference(source, 9)).unwrap();
        assert_eq!(value["omitted_payload"]["offset"], 40);
        assert_eq!(value["omitted_payload"]["topic"], "in");
    }
}
