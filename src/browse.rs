//! The dashboard's read-only topic browser (`/topics`), in place of kafka-ui's *Topics*
//! section: the cluster's topics with the start and end offsets of each partition, and
//! the last messages of one partition.
//!
//! Guarantees:
//! - **Read-only and bounded.** A request reads at most [`MAX_LIMIT`] messages, shows at
//!   most [`VALUE_CAP`] bytes of each value (and [`TEXT_CAP`] of a key or header), stops at
//!   [`RESPONSE_CAP`] bytes shown in all and at [`READ_TIMEOUT`], and at most
//!   [`CONCURRENT_READS`] requests read at once (others wait, then get 503). It commits
//!   nothing and joins no group.
//! - **Never in the job's way.** Each request builds its own client, on a blocking thread
//!   of the dashboard's runtime: the job's workers and their consumers are never touched.
//! - **Transactions.** It reads with `isolation.level=read_committed`: it shows what a
//!   downstream consumer that honours transactions sees.
//! - **Nothing about the connection.** Errors shown say what failed, never the address or
//!   a client property; the details go to the log.
//! - Topic names, partitions and limits are validated before any client is built: a bad
//!   one is a [`BrowseError::BadRequest`] (400), an unknown one [`BrowseError::NotFound`].
//! - **The cluster's internal topics** (names starting with `__`: `__consumer_offsets`,
//!   `__transaction_state`, which names transactional ids) are neither listed nor read
//!   unless the browser was built to show them: to a request they do not exist (404).
//! - **The newest messages.** "The last N" are read back from the end in batches of 1, 2,
//!   4, ... messages; whatever stops reading (the time or byte cap) leaves the newest
//!   shown, with no gap before the end.
//! - **Every cut is marked:** a value, a key, a header's name or value cut at its cap has
//!   its `*_truncated` flag set in the JSON, and the page says so.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::{self, ErrorLog, KafkaConfig};

/// Most messages one request shows.
pub const MAX_LIMIT: usize = 500;
/// Messages shown when the request does not say.
pub const DEFAULT_LIMIT: usize = 50;
/// Bytes of a value shown; the rest is cut (and said so).
pub const VALUE_CAP: usize = 16 * 1024;
/// Bytes of a key or a header value shown.
pub const TEXT_CAP: usize = 1024;
/// Bytes of keys, values and headers one answer shows in all; reading stops there.
pub const RESPONSE_CAP: usize = 2 * 1024 * 1024;
/// Longest a request reads (and waits for the cluster).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests that read at once.
pub const CONCURRENT_READS: usize = 2;
/// Partitions whose offsets one listing asks for; beyond, offsets are left unknown.
pub const MAX_LISTED_PARTITIONS: usize = 1000;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrowseError {
    /// A bad topic name, partition or limit (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// No such topic or partition (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The cluster did not answer, or is not up yet (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// `/api/topics`.
#[derive(Debug, Serialize)]
pub struct TopicList {
    pub topics: Vec<TopicInfo>,
    /// Why there are none, or what is left out.
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    /// The sum of the partitions' messages, when all are known.
    pub messages: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub partition: i32,
    /// The first offset still in the log.
    pub start_offset: Option<i64>,
    /// The next offset to be written (the high watermark).
    pub end_offset: Option<i64>,
    /// End less start: records still in the log (transaction markers included).
    pub messages: Option<i64>,
}

/// `/api/topics/{topic}/partitions/{partition}/messages`.
#[derive(Debug, Serialize)]
pub struct MessagePage {
    pub topic: String,
    pub partition: i32,
    pub start_offset: i64,
    pub end_offset: i64,
    pub limit: usize,
    /// The newest `limit` (or fewer, when a cap stopped reading), oldest first, with no
    /// gap before the end.
    pub messages: Vec<BrowsedMessage>,
    /// Why reading stopped before `limit` messages or the end: `"byte cap"`, `"time cap"`.
    pub stopped_by: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct BrowsedMessage {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// `create_time` or `log_append_time`.
    pub timestamp_type: Option<&'static str>,
    /// The key's first [`TEXT_CAP`] bytes, as text.
    pub key: Option<String>,
    /// True when `key` was cut.
    pub key_truncated: bool,
    /// The value's first [`VALUE_CAP`] bytes, as text (invalid UTF-8 replaced).
    pub value: Option<String>,
    /// The value's whole size.
    pub value_bytes: usize,
    /// True when `value` was cut.
    pub value_truncated: bool,
    pub headers: Vec<BrowsedHeader>,
}

#[derive(Debug, Serialize)]
pub struct BrowsedHeader {
    /// The header's name, its first [`TEXT_CAP`] bytes.
    pub key: String,
    pub key_truncated: bool,
    /// Its value, the first [`TEXT_CAP`] bytes.
    pub value: Option<String>,
    pub value_truncated: bool,
}

/// Reads topics for a dashboard. Built before the cluster is known (the embedded cluster
/// starts after the dashboard); [`connect`](Self::connect) tells it where to read.
#[derive(Debug)]
pub struct TopicBrowser {
    client_id: String,
    /// Show the cluster's internal topics (`__...`).
    internal: bool,
    kafka: OnceLock<KafkaConfig>,
    reads: tokio::sync::Semaphore,
}

impl TopicBrowser {
    /// A browser whose clients call themselves `client_id`; it shows the cluster's
    /// internal topics only when `internal`.
    pub fn new(client_id: &str, internal: bool) -> Self {
        TopicBrowser {
            client_id: client_id.to_string(),
            internal,
            kafka: OnceLock::new(),
            reads: tokio::sync::Semaphore::new(CONCURRENT_READS),
        }
    }

    /// Where to read from; only the first call counts.
    pub fn connect(&self, kafka: KafkaConfig) {
        let _ = self.kafka.set(kafka);
    }

    /// Waits (at most [`READ_TIMEOUT`]) for a free reading slot.
    pub async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BrowseError> {
        match tokio::time::timeout(READ_TIMEOUT, self.reads.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(BrowseError::Unavailable(
                "the topic browser is busy with other requests; try again".into(),
            )),
        }
    }

    fn consumer(&self) -> Result<(BaseConsumer<ErrorLog>, &KafkaConfig), BrowseError> {
        let kafka = self.kafka.get().ok_or_else(|| {
            BrowseError::Unavailable("the cluster is starting; try again in a moment".into())
        })?;
        let config = kafka::browser_consumer_config(kafka, &self.client_id);
        let consumer = kafka::create(&config, ErrorLog::new(&kafka.bootstrap_servers), kafka)
            .map_err(|e| {
                log::warn!("topic browser: {e}");
                BrowseError::Unavailable("cannot build a client for the cluster".into())
            })?;
        Ok((consumer, kafka))
    }

    /// Whether `topic` is one of the cluster's internal topics that this browser hides.
    fn hidden(&self, topic: &str) -> bool {
        topic.starts_with("__") && !self.internal
    }

    /// Every topic but the cluster's internal ones (`__consumer_offsets`, ...), by name,
    /// with its partitions' offsets. Blocking: call it from a blocking thread.
    pub fn list(&self) -> Result<TopicList, BrowseError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let (consumer, _) = self.consumer()?;
        let metadata = consumer
            .fetch_metadata(None, READ_TIMEOUT)
            .map_err(|e| unavailable("list the topics", &e))?;
        let mut topics: Vec<TopicInfo> = metadata
            .topics()
            .iter()
            .filter(|t| !self.hidden(t.name()) && t.error().is_none())
            .map(|t| {
                let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                partitions.sort_unstable();
                TopicInfo {
                    name: t.name().to_string(),
                    partitions: partitions
                        .into_iter()
                        .map(|partition| PartitionInfo {
                            partition,
                            start_offset: None,
                            end_offset: None,
                            messages: None,
                        })
                        .collect(),
                    messages: None,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let mut asked = 0;
        let mut note = None;
        'topics: for topic in &mut topics {
            for partition in &mut topic.partitions {
                let left = deadline.saturating_duration_since(Instant::now());
                if asked == MAX_LISTED_PARTITIONS || left.is_zero() {
                    note = Some(format!(
                        "offsets of some partitions are not shown (at most {MAX_LISTED_PARTITIONS} partitions, {} s)",
                        READ_TIMEOUT.as_secs()
                    ));
                    break 'topics;
                }
                asked += 1;
                match consumer.fetch_watermarks(&topic.name, partition.partition, left) {
                    Ok((low, high)) => {
                        partition.start_offset = Some(low);
                        partition.end_offset = Some(high);
                        partition.messages = Some(high - low);
                    }
                    Err(e) => log::debug!(
                        "topic browser: offsets of {} partition {}: {e}",
                        topic.name,
                        partition.partition
                    ),
                }
            }
            topic.messages = topic.partitions.iter().map(|p| p.messages).sum();
        }
        Ok(TopicList { topics, note })
    }

    /// The last `limit` messages of a partition, oldest first. Blocking: call it from a
    /// blocking thread. `topic` must have passed [`check_topic`].
    pub fn messages(
        &self,
        topic: &str,
        partition: i32,
        limit: usize,
    ) -> Result<MessagePage, BrowseError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let limit = limit.clamp(1, MAX_LIMIT);
        if self.hidden(topic) {
            return Err(BrowseError::NotFound(format!("no topic {topic}")));
        }
        let (consumer, _) = self.consumer()?;
        let metadata = consumer
            .fetch_metadata(None, READ_TIMEOUT)
            .map_err(|e| unavailable("read the topic's metadata", &e))?;
        let known = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .ok_or_else(|| BrowseError::NotFound(format!("no topic {topic}")))?;
        let count = known.partitions().len();
        if !known.partitions().iter().any(|p| p.id() == partition) {
            return Err(BrowseError::NotFound(format!(
                "{topic} has no partition {partition} (it has {count}: 0 to {})",
                count.saturating_sub(1)
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, left)
            .map_err(|e| unavailable("read the partition's offsets", &e))?;
        let start = (high - limit as i64).max(low);
        let mut page = MessagePage {
            topic: topic.to_string(),
            partition,
            start_offset: low,
            end_offset: high,
            limit,
            messages: Vec::new(),
            stopped_by: None,
        };
        if start >= high {
            return Ok(page);
        }
        // Back from the end in batches of 1, 2, 4, ...: the newest come first, so a cap
        // that stops reading leaves the newest shown. A batch cut short by the time cap is
        // dropped (it would leave a gap before the newer ones).
        let mut batches: Vec<Vec<BrowsedMessage>> = Vec::new();
        let mut shown = 0usize;
        let mut upper = high;
        let mut size = 1i64;
        while upper > start {
            let lower = (upper - size).max(start);
            let Some(batch) = read_batch(&consumer, topic, partition, lower, upper, deadline)?
            else {
                page.stopped_by = Some("time cap");
                break;
            };
            shown += batch.iter().map(BrowsedMessage::shown_bytes).sum::<usize>();
            batches.push(batch);
            if shown >= RESPONSE_CAP {
                // Drop the oldest of this batch until the answer fits (the newest stay).
                if let Some(last) = batches.last_mut() {
                    while shown > RESPONSE_CAP && !last.is_empty() {
                        shown -= last.remove(0).shown_bytes();
                    }
                }
                page.stopped_by = Some("byte cap");
                break;
            }
            upper = lower;
            size = size.saturating_mul(2);
        }
        page.messages = batches.into_iter().rev().flatten().collect();
        Ok(page)
    }
}

/// The messages of `topic` `partition` at offsets `lower..upper`, or `None` when the
/// deadline passes before the batch is whole.
fn read_batch(
    consumer: &BaseConsumer<ErrorLog>,
    topic: &str,
    partition: i32,
    lower: i64,
    upper: i64,
    deadline: Instant,
) -> Result<Option<Vec<BrowsedMessage>>, BrowseError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(lower))
        .map_err(|e| unavailable("start reading", &e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| unavailable("start reading", &e))?;
    let mut batch = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => continue,
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                return Ok(Some(batch));
            }
            Some(Err(e)) => {
                log::debug!("topic browser: reading {topic} partition {partition}: {e}");
            }
            Some(Ok(message)) => {
                // Past the batch (a gap: compaction, a transaction marker): it is whole.
                if message.offset() >= upper {
                    return Ok(Some(batch));
                }
                if message.offset() >= lower {
                    batch.push(browsed(&message));
                }
                if message.offset() >= upper - 1 {
                    return Ok(Some(batch));
                }
            }
        }
    }
}

fn unavailable(what: &str, error: &rdkafka::error::KafkaError) -> BrowseError {
    log::warn!("topic browser: cannot {what}: {error}");
    BrowseError::Unavailable(format!("cannot {what}: the cluster did not answer in time"))
}

/// Text of at most `cap` bytes of `bytes` (cut at a character boundary), and whether it
/// was cut.
fn capped_text(bytes: &[u8], cap: usize) -> (String, bool) {
    let cut = bytes.len() > cap;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(cap)]);
    let mut text = text.into_owned();
    if cut {
        // A multi-byte character split by the cap shows as a replacement at the end.
        while text.ends_with('\u{FFFD}') {
            text.pop();
        }
    }
    (text, cut)
}

fn browsed<M: Message>(message: &M) -> BrowsedMessage {
    let (timestamp_ms, timestamp_type) = match message.timestamp() {
        Timestamp::NotAvailable => (None, None),
        Timestamp::CreateTime(ms) => (Some(ms), Some("create_time")),
        Timestamp::LogAppendTime(ms) => (Some(ms), Some("log_append_time")),
    };
    let (value, value_truncated) = match message.payload() {
        Some(bytes) => {
            let (text, cut) = capped_text(bytes, VALUE_CAP);
            (Some(text), cut)
        }
        None => (None, false),
    };
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let (key, key_truncated) = capped_text(h.key.as_bytes(), TEXT_CAP);
                    let (value, value_truncated) = match h.value.map(|v| capped_text(v, TEXT_CAP)) {
                        Some((text, cut)) => (Some(text), cut),
                        None => (None, false),
                    };
                    BrowsedHeader {
                        key,
                        key_truncated,
                        value,
                        value_truncated,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let (key, key_truncated) = match message.key().map(|k| capped_text(k, TEXT_CAP)) {
        Some((text, cut)) => (Some(text), cut),
        None => (None, false),
    };
    BrowsedMessage {
        offset: message.offset(),
        timestamp_ms,
        timestamp_type,
        key,
        key_truncated,
        value,
        value_bytes: message.payload().map_or(0, <[u8]>::len),
        value_truncated,
        headers,
    }
}

impl BrowsedMessage {
    /// Bytes of text this message adds to an answer.
    fn shown_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, String::len)
            + self.value.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

/// A legal Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, and not `.` or `..`.
pub fn check_topic(name: &str) -> Result<(), BrowseError> {
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(BrowseError::BadRequest(format!(
            "{:?} is not a topic name: use 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// A partition number: 0 or more.
pub fn parse_partition(text: &str) -> Result<i32, BrowseError> {
    text.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
        BrowseError::BadRequest(format!(
            "{:?} is not a partition: use a number from 0",
            text.chars().take(32).collect::<String>()
        ))
    })
}

/// The `limit` of a query string (`limit=N`), 1 to [`MAX_LIMIT`]; [`DEFAULT_LIMIT`] when
/// absent.
pub fn parse_limit(query: Option<&str>) -> Result<usize, BrowseError> {
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "limit")
        .map(|(_, value)| value)
    else {
        return Ok(DEFAULT_LIMIT);
    };
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            BrowseError::BadRequest(format!(
                "limit {:?}: use a number from 1 to {MAX_LIMIT}",
                value.chars().take(32).collect::<String>()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for good in ["website-out", "a", "x.y_z-1", &"t".repeat(249)] {
            assert_eq!(check_topic(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", "x%2F", &"t".repeat(250)] {
            assert!(
                matches!(check_topic(bad), Err(BrowseError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn partitions_and_limits_are_checked() {
        assert_eq!(parse_partition("0"), Ok(0));
        assert_eq!(parse_partition("12"), Ok(12));
        for bad in ["-1", "x", "", "1.5", "99999999999"] {
            assert!(parse_partition(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("other=1")), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("a=b&limit=500")), Ok(500));
        assert_eq!(parse_limit(Some("limit=1")), Ok(1));
        for bad in ["limit=0", "limit=501", "limit=x", "limit="] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_is_cut_at_the_cap_on_a_character_boundary() {
        assert_eq!(capped_text(b"abc", 3), ("abc".to_string(), false));
        assert_eq!(capped_text(b"abcd", 3), ("abc".to_string(), true));
        // "é" is two bytes: a cap inside it drops it.
        assert_eq!(capped_text("aé".as_bytes(), 2), ("a".to_string(), true));
        assert_eq!(capped_text(b"\xff", 8), ("\u{FFFD}".to_string(), false));
    }

    #[test]
    fn a_browser_with_no_cluster_yet_says_it_is_starting() {
        let browser = TopicBrowser::new("test", false);
        assert!(
            matches!(browser.list(), Err(BrowseError::Unavailable(m)) if m.contains("starting"))
        );
    }
}
