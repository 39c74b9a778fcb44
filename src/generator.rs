//! Pure, seeded generation of website-visit events: the `UserPool` and the `EventStream`.
//!
//! Guarantees:
//! - **Deterministic.** Everything derives from one `u64` seed. Each random stream is a
//!   `rand_xoshiro::Xoshiro256PlusPlus` (a generator with a documented, fixed algorithm)
//!   seeded through `seed_from_u64`; values are drawn with `rand`'s distributions, and the
//!   users' user agents and addresses with `fake`. `Cargo.lock` pins all three, and the
//!   fixture test (`tests/fixtures.rs`) fails if an upgrade changes a single byte. Given the
//!   seed and the base times, the events are identical on every run and machine.
//! - **Independent of threads.** Events are numbered from 0, and event `n` is drawn from
//!   the random stream of chunk `n / CHUNK_EVENTS`. Workers that generate different chunks
//!   in parallel therefore produce exactly what one thread would.
//! - **Pure.** No clock, no I/O: the caller passes each event's base time (see [`Clock`]).
//!
//! Dates are formatted by `chrono` ([`DatetimeFormatter`] reuses chrono's text within a
//! day, so chrono runs about once per simulated day rather than once per event).

use std::borrow::Cow;
use std::net::Ipv4Addr;

use chrono::DateTime;
use fake::Fake;
use fake::faker::internet::en::{IPv4, UserAgent};
use rand::distr::{Distribution, Uniform};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::{SplitMix64, Xoshiro256PlusPlus};

use crate::error::{Error, Result};
use crate::geo::CityPicker;
use crate::schema::{self, Coordinate, EventLog};

/// Events per independently seeded chunk of the stream.
pub const CHUNK_EVENTS: u64 = 4096;

/// The pages of the original generator, as complete request lines.
pub const HTTP_REQUESTS: [&str; 15] = [
    "GET home.html HTTP/1.0",
    "GET archea.html HTTP/1.0",
    "GET archaea.html HTTP/1.0",
    "GET bacteria.html HTTP/1.0",
    "GET eucharya.html HTTP/1.0",
    "GET protozoa.html HTTP/1.0",
    "GET amoebozoa.html HTTP/1.0",
    "GET chromista.html HTTP/1.0",
    "GET cryptista.html HTTP/1.0",
    "GET plantae.html HTTP/1.0",
    "GET coniferophyta.html HTTP/1.0",
    "GET fungi.html HTTP/1.0",
    "GET blastocladiomycota.html HTTP/1.0",
    "GET animalia.html HTTP/1.0",
    "GET acanthocephala.html HTTP/1.0",
];

/// The original generator's age brackets.
pub const AGE_BRACKETS: [&str; 4] = ["18-25", "26-40", "41-55", "55+"];

/// `file_size_bytes` is drawn from `FILE_SIZE_MIN..FILE_SIZE_END`.
pub const FILE_SIZE_MIN: i64 = 100;
pub const FILE_SIZE_END: i64 = 500;

/// The random generator of every stream.
pub type Rng = Xoshiro256PlusPlus;

/// The generator of random stream `stream` under `seed`. Distinct streams get unrelated
/// states: the stream number is scrambled by SplitMix64 before it is mixed into the seed.
pub fn stream_rng(seed: u64, stream: u64) -> Rng {
    let mut scramble = SplitMix64::seed_from_u64(stream);
    Rng::seed_from_u64(seed ^ rand::Rng::next_u64(&mut scramble))
}

/// One simulated visitor: the user fields of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub ip: String,
    pub id: String,
    pub lat: Coordinate,
    pub lng: Coordinate,
    pub user_agent: String,
    pub age_bracket: &'static str,
    pub opted_into_marketing: bool,
    /// This user's part of every value: `{"ip": ..., "opted_into_marketing": ..., "http_request": `.
    value_prefix: Vec<u8>,
    /// `{"event_id": "<id>", "event_ts": `.
    key_prefix: Vec<u8>,
}

impl User {
    fn new(
        ip: String,
        lat: Coordinate,
        lng: Coordinate,
        user_agent: String,
        age_bracket: &'static str,
        opted_into_marketing: bool,
    ) -> Self {
        let id = user_id(&ip, lat, lng).to_string();
        let mut user = User {
            ip,
            id,
            lat,
            lng,
            user_agent,
            age_bracket,
            opted_into_marketing,
            value_prefix: Vec::new(),
            key_prefix: Vec::new(),
        };
        // Render the prefixes with the canonical serializer, from a template event whose
        // per-event fields are cut off: the fast path then writes only those fields.
        let template = GeneratedEvent {
            user: &user,
            http_request: HTTP_REQUESTS[0],
            file_size_bytes: 0,
            event_ts: 0,
        }
        .to_event_log();
        let (mut value, mut key) = (Vec::new(), Vec::new());
        // Writing to a Vec cannot fail, and these plain types always serialise.
        let _ = schema::write_value(&template, &mut value);
        let _ = schema::write_key(&template, &mut key);
        let value_cut =
            find_last(&value, b"\"http_request\": ").map_or(0, |i| i + b"\"http_request\": ".len());
        let key_cut = find_last(&key, b"\"event_ts\": ").map_or(0, |i| i + b"\"event_ts\": ".len());
        value.truncate(value_cut);
        key.truncate(key_cut);
        user.value_prefix = value;
        user.key_prefix = key;
        user
    }
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// How to build the users and draw events.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// At least 1.
    pub num_users: u32,
    /// Share of users, 0 to 1, whose `lat`/`lng` are missing (`""`).
    pub missing_geo_ratio: f64,
    /// Each event's time is its base time plus a uniform lag in `0..=max_lag_ms`.
    pub max_lag_ms: u64,
    pub seed: u64,
    /// `None`: each event's user is drawn uniformly, as the original does. `Some(s)`: by a
    /// Zipf law of exponent `s > 0` over the users in pool order, so that the first few
    /// users dominate (hot keys for load tests).
    pub user_skew: Option<f64>,
}

/// Random stream numbers: users use one, chunk `c` uses `CHUNK_STREAM_BASE + c`.
const USER_STREAM: u64 = 0;
const CHUNK_STREAM_BASE: u64 = 1;

/// The users of a run, built once, as the original does.
#[derive(Debug, Clone)]
pub struct UserPool {
    users: Vec<User>,
}

impl UserPool {
    /// `num_users` users (at least 1); `missing_geo_ratio` of them (0 to 1) without
    /// coordinates.
    pub fn generate(num_users: u32, missing_geo_ratio: f64, seed: u64) -> Result<Self> {
        if num_users == 0 {
            return Err(Error::InvalidConfig(
                "the user pool needs at least 1 user".into(),
            ));
        }
        if !(0.0..=1.0).contains(&missing_geo_ratio) {
            return Err(Error::InvalidConfig(format!(
                "the missing-geo ratio must be within 0..1, not {missing_geo_ratio}"
            )));
        }
        let mut rng = stream_rng(seed, USER_STREAM);
        let picker =
            CityPicker::new().map_err(|e| Error::InvalidConfig(format!("the city table: {e}")))?;
        let users = (0..num_users)
            .map(|_| {
                let ip = random_public_ipv4(&mut rng);
                let (lat, lng) = if rng.random::<f64>() < missing_geo_ratio {
                    (Coordinate::Missing, Coordinate::Missing)
                } else {
                    let city = picker.pick(&mut rng);
                    (Coordinate::Degrees(city.lat), Coordinate::Degrees(city.lng))
                };
                let user_agent: &str = UserAgent().fake_with_rng(&mut rng);
                let age_bracket =
                    AGE_BRACKETS[rng.random_range(0..AGE_BRACKETS.len() as u32) as usize];
                let opted_into_marketing = rng.random::<bool>();
                User::new(
                    ip.to_string(),
                    lat,
                    lng,
                    user_agent.to_string(),
                    age_bracket,
                    opted_into_marketing,
                )
            })
            .collect();
        Ok(UserPool { users })
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }
}

/// How an event's base time is found: the wall clock, or a simulated one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clock {
    /// "Now", read by the caller when the event is emitted.
    Wall,
    /// Event `n` is at `start_ms + n * step_us / 1000`: reproducible.
    Simulated { start_ms: i64, step_us: u64 },
}

impl Clock {
    /// Base time of event `index`; `now_ms` is only called for the wall clock.
    pub fn base_ms(&self, index: u64, now_ms: impl FnOnce() -> i64) -> i64 {
        match *self {
            Clock::Wall => now_ms(),
            Clock::Simulated { start_ms, step_us } => {
                let offset = i128::from(index) * i128::from(step_us) / 1000;
                start_ms.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
            }
        }
    }
}

/// The distributions of the per-event fields, built once.
#[derive(Debug, Clone)]
struct EventDistributions {
    user: UserDraw,
    http_request: Uniform<u32>,
    file_size_bytes: Uniform<i64>,
    /// `None` when there is no lag.
    lag_ms: Option<Uniform<u64>>,
}

/// How each event's user is drawn: an index into the pool.
#[derive(Debug, Clone)]
enum UserDraw {
    Uniform(Uniform<u32>),
    /// `rand_distr`'s Zipf law: rank `k` (1-based) with probability proportional to
    /// `k^-s`; rank `k` is the pool's user `k - 1`.
    Zipf(rand_distr::Zipf<f64>),
}

impl UserDraw {
    fn sample(&self, rng: &mut Rng) -> usize {
        match self {
            UserDraw::Uniform(uniform) => uniform.sample(rng) as usize,
            // A rank is a whole number from 1 to the pool size, so the cast is exact.
            UserDraw::Zipf(zipf) => (zipf.sample(rng) as usize).saturating_sub(1),
        }
    }
}

/// The users plus the rules to draw events from them.
#[derive(Debug, Clone)]
pub struct EventSource {
    pool: UserPool,
    distributions: EventDistributions,
    seed: u64,
}

impl EventSource {
    pub fn new(config: &GeneratorConfig) -> Result<Self> {
        let pool = UserPool::generate(config.num_users, config.missing_geo_ratio, config.seed)?;
        let invalid = |e: rand::distr::uniform::Error| Error::InvalidConfig(e.to_string());
        let distributions = EventDistributions {
            user: match config.user_skew {
                None => UserDraw::Uniform(Uniform::new(0, config.num_users).map_err(invalid)?),
                Some(skew) => UserDraw::Zipf(
                    rand_distr::Zipf::new(f64::from(config.num_users), skew)
                        .map_err(|e| Error::InvalidConfig(format!("user skew {skew}: {e}")))?,
                ),
            },
            http_request: Uniform::new(0, HTTP_REQUESTS.len() as u32).map_err(invalid)?,
            file_size_bytes: Uniform::new(FILE_SIZE_MIN, FILE_SIZE_END).map_err(invalid)?,
            lag_ms: match config.max_lag_ms {
                0 => None,
                max => Some(Uniform::new_inclusive(0, max).map_err(invalid)?),
            },
        };
        Ok(EventSource {
            pool,
            distributions,
            seed: config.seed,
        })
    }

    #[cfg(test)]
    pub fn pool(&self) -> &UserPool {
        &self.pool
    }

    /// The events from `first_index` on. Starting mid-chunk replays the chunk's start.
    pub fn stream(&self, first_index: u64) -> EventStream<'_> {
        let chunk_start = first_index - first_index % CHUNK_EVENTS;
        let mut stream = EventStream {
            source: self,
            next_index: chunk_start,
            rng: self.chunk_rng(chunk_start / CHUNK_EVENTS),
        };
        while stream.next_index < first_index {
            stream.next_event(0);
        }
        stream
    }

    fn chunk_rng(&self, chunk: u64) -> Rng {
        stream_rng(self.seed, CHUNK_STREAM_BASE + chunk)
    }
}

/// A cursor over the numbered events of an [`EventSource`].
#[derive(Debug, Clone)]
pub struct EventStream<'s> {
    source: &'s EventSource,
    next_index: u64,
    rng: Rng,
}

impl<'s> EventStream<'s> {
    /// Number of the event `next_event` returns next.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Draws the next event; its time is `base_ms` plus a random lag.
    pub fn next_event(&mut self, base_ms: i64) -> GeneratedEvent<'s> {
        if self.next_index > 0 && self.next_index.is_multiple_of(CHUNK_EVENTS) {
            self.rng = self.source.chunk_rng(self.next_index / CHUNK_EVENTS);
        }
        self.next_index += 1;
        let rng = &mut self.rng;
        let d = &self.source.distributions;
        let users = self.source.pool.users();
        let user = &users[d.user.sample(rng).min(users.len() - 1)];
        let http_request = HTTP_REQUESTS[d.http_request.sample(rng) as usize];
        let file_size_bytes = d.file_size_bytes.sample(rng);
        let lag_ms = d.lag_ms.as_ref().map_or(0, |lag| lag.sample(rng));
        GeneratedEvent {
            user,
            http_request,
            file_size_bytes,
            event_ts: base_ms.saturating_add(i64::try_from(lag_ms).unwrap_or(i64::MAX)),
        }
    }
}

/// A generated event: its user plus the per-event fields.
///
/// [`to_event_log`](Self::to_event_log) gives the shared `EventLog`. `write_value` and
/// `write_key` write the same bytes as `schema::write_value`/`write_key` on that
/// `EventLog` (a test checks it), several times faster: the user's fields are rendered once.
#[derive(Debug, Clone, Copy)]
pub struct GeneratedEvent<'s> {
    pub user: &'s User,
    pub http_request: &'static str,
    pub file_size_bytes: i64,
    pub event_ts: i64,
}

impl<'s> GeneratedEvent<'s> {
    pub fn to_event_log(self) -> EventLog<'s> {
        let user = self.user;
        EventLog {
            ip: Cow::Borrowed(&user.ip),
            id: Cow::Borrowed(&user.id),
            lat: user.lat,
            lng: user.lng,
            user_agent: Cow::Borrowed(&user.user_agent),
            age_bracket: Cow::Borrowed(user.age_bracket),
            opted_into_marketing: user.opted_into_marketing,
            http_request: Cow::Borrowed(self.http_request),
            http_response: 200,
            file_size_bytes: self.file_size_bytes,
            event_datetime: Cow::Owned(format_event_datetime(self.event_ts)),
            event_ts: self.event_ts,
        }
    }

    /// Appends the value JSON (no newline); `datetimes` formats `event_datetime`.
    pub fn write_value(&self, out: &mut Vec<u8>, datetimes: &mut DatetimeFormatter) {
        let mut int = itoa::Buffer::new();
        out.extend_from_slice(&self.user.value_prefix);
        out.push(b'"');
        // The request lines are plain ASCII: nothing to escape.
        out.extend_from_slice(self.http_request.as_bytes());
        out.extend_from_slice(b"\", \"http_response\": 200, \"file_size_bytes\": ");
        out.extend_from_slice(int.format(self.file_size_bytes).as_bytes());
        out.extend_from_slice(b", \"event_datetime\": \"");
        out.extend_from_slice(datetimes.format(self.event_ts));
        out.extend_from_slice(b"\", \"event_ts\": ");
        out.extend_from_slice(int.format(self.event_ts).as_bytes());
        out.push(b'}');
    }

    /// Appends the key JSON.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.user.key_prefix);
        out.extend_from_slice(itoa::Buffer::new().format(self.event_ts).as_bytes());
        out.push(b'}');
    }
}

/// `id`: a signed 64-bit FNV-1a hash of ip, lat and lng as the JSON writes them.
pub fn user_id(ip: &str, lat: Coordinate, lng: Coordinate) -> i64 {
    let text = format!("{ip}{}{}", coordinate_text(lat), coordinate_text(lng));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash as i64
}

fn coordinate_text(c: Coordinate) -> String {
    match c {
        Coordinate::Missing => String::new(),
        Coordinate::Degrees(d) => d.to_string(),
    }
}

/// chrono's format of `event_datetime`: UTC, no zone, milliseconds.
const EVENT_DATETIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";

/// `2024-04-14T21:51:33.042` for epoch milliseconds (UTC, proleptic Gregorian), by
/// chrono. Times beyond chrono's range (about ±262,000 years) are clamped to it.
pub fn format_event_datetime(ts_ms: i64) -> String {
    let clamped = ts_ms.clamp(
        DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis(),
        DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis(),
    );
    DateTime::from_timestamp_millis(clamped)
        .unwrap_or_default()
        .format(EVENT_DATETIME_FORMAT)
        .to_string()
}

/// Formats `event_datetime` as [`format_event_datetime`] does, without allocating.
///
/// chrono formats the first time of each day; the other times of that day only rewrite
/// the twelve characters `HH:MM:SS.mmm` of that text, from the milliseconds since
/// midnight. This is hand-written because a benchmark demanded it
/// (`bench generator`, one core): chrono's `format` costs about 0.4 µs, and
/// calling it for every event would hold generation to about 2.2M events/s, under the 5M/s
/// target, against about 13M/s with this formatter. A test compares it with chrono on every millisecond of a second,
/// across midnights and before 1970.
#[derive(Debug, Clone, Default)]
pub struct DatetimeFormatter {
    /// The day (since the epoch) whose date `text` holds, when chrono formatted it.
    day: Option<i64>,
    /// `YYYY-MM-DDTHH:MM:SS.mmm` (the year as chrono writes it).
    text: Vec<u8>,
}

/// Length of `HH:MM:SS.mmm`, the end of every `event_datetime`.
const TIME_OF_DAY_LEN: usize = 12;

impl DatetimeFormatter {
    /// The text of `ts_ms`; valid until the next call.
    pub fn format(&mut self, ts_ms: i64) -> &[u8] {
        let day = ts_ms.div_euclid(86_400_000);
        if self.day != Some(day) || self.text.len() < TIME_OF_DAY_LEN {
            self.text.clear();
            self.text
                .extend_from_slice(format_event_datetime(ts_ms).as_bytes());
            // Beyond chrono's range the text is clamped: never reuse it.
            self.day = DateTime::from_timestamp_millis(ts_ms).map(|_| day);
            return &self.text;
        }
        // The same day: only the time of day differs.
        let ms = ts_ms.rem_euclid(86_400_000) as u32;
        let (hours, minutes, seconds, millis) =
            (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        let digit = |n: u32| b'0' + n as u8;
        let start = self.text.len() - TIME_OF_DAY_LEN;
        self.text[start..].copy_from_slice(&[
            digit(hours / 10),
            digit(hours % 10),
            b':',
            digit(minutes / 10),
            digit(minutes % 10),
            b':',
            digit(seconds / 10),
            digit(seconds % 10),
            b'.',
            digit(millis / 100),
            digit(millis / 10 % 10),
            digit(millis % 10),
        ]);
        &self.text
    }
}

/// A random public IPv4 address (from `fake`), like the addresses of real visitors: drawn
/// again while it falls in a private, loopback, link-local, shared (CGNAT), documentation,
/// multicast or otherwise reserved range.
pub fn random_public_ipv4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let ip: Ipv4Addr = IPv4().fake_with_rng(rng);
        let [a, b, ..] = ip.octets();
        let reserved = ip.is_unspecified()
            || ip.is_private()
            || ip.is_loopback()
            || ip.is_link_local()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_documentation()
            || a == 0
            || a >= 240
            || (a == 100 && (64..128).contains(&b));
        if !reserved {
            return ip;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::CITIES;

    fn source(seed: u64, ratio: f64) -> EventSource {
        EventSource::new(&GeneratorConfig {
            num_users: 50,
            missing_geo_ratio: ratio,
            max_lag_ms: 5_000,
            seed,
            user_skew: None,
        })
        .unwrap()
    }

    fn render(source: &EventSource, n: u64) -> Vec<String> {
        let clock = Clock::Simulated {
            start_ms: 1_713_095_493_042,
            step_us: 500_000,
        };
        let mut stream = source.stream(0);
        let mut datetimes = DatetimeFormatter::default();
        (0..n)
            .map(|i| {
                let mut out = Vec::new();
                stream
                    .next_event(clock.base_ms(i, || 0))
                    .write_value(&mut out, &mut datetimes);
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    #[test]
    fn fast_encoding_equals_the_canonical_serializer() {
        // Missing and present coordinates, every user-agent shape, lags, odd timestamps.
        let s = source(21, 0.5);
        let mut stream = s.stream(0);
        let mut datetimes = DatetimeFormatter::default();
        for i in 0..20_000i64 {
            // Runs of events within one second, and jumps across days.
            let base = -86_400_000 + (i / 8) * 7_919_111 + (i % 8) * 3;
            let event = stream.next_event(base);
            let (mut fast, mut canonical) = (Vec::new(), Vec::new());
            event.write_value(&mut fast, &mut datetimes);
            schema::write_value(&event.to_event_log(), &mut canonical).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(canonical).unwrap()
            );
            let (mut fast_key, mut canonical_key) = (Vec::new(), Vec::new());
            event.write_key(&mut fast_key);
            schema::write_key(&event.to_event_log(), &mut canonical_key).unwrap();
            assert_eq!(fast_key, canonical_key);
        }
    }

    #[test]
    fn datetime_formatter_matches_chrono() {
        let chrono_text = |ts: i64| {
            chrono::DateTime::from_timestamp_millis(ts)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3f")
                .to_string()
        };
        let mut formatter = DatetimeFormatter::default();
        let mut times = vec![
            0i64,
            1_713_095_493_042,
            951_782_400_000,
            -1,
            -1_000,
            -999,
            4_102_444_800_123,
            1_795_537_077_517,
            253_402_300_799_999,
        ];
        // Every millisecond of a second, forwards and backwards, then across a boundary.
        times.extend(1_713_095_493_000..1_713_095_494_000);
        times.extend((1_713_095_493_000..1_713_095_494_000).rev());
        times.extend((-2_500..2_500).step_by(7));
        // Across midnights, back and forth, as lagged events are.
        for day in [-1i64, 0, 19_831, 2_932_896] {
            let midnight = day * 86_400_000;
            for step in [
                -86_399_999i64,
                -3_600_001,
                -1,
                0,
                1,
                59_999,
                3_599_999,
                86_399_999,
            ] {
                times.push(midnight + step);
                times.push(midnight + step / 2);
            }
        }
        for ts in times {
            assert_eq!(
                String::from_utf8_lossy(formatter.format(ts)),
                chrono_text(ts),
                "{ts}"
            );
            assert_eq!(format_event_datetime(ts), chrono_text(ts), "{ts}");
        }
        // Beyond chrono's range: clamped, never a panic.
        assert!(format_event_datetime(i64::MAX).starts_with('+'));
        assert!(!formatter.format(i64::MIN).is_empty());
    }

    #[test]
    fn addresses_are_public() {
        let mut rng = stream_rng(4, 0);
        for _ in 0..20_000 {
            let ip = random_public_ipv4(&mut rng);
            assert!(
                !ip.is_private() && !ip.is_loopback() && !ip.is_multicast(),
                "{ip}"
            );
            assert!(ip.octets()[0] != 0 && ip.octets()[0] < 240, "{ip}");
        }
    }

    #[test]
    fn user_agents_mix_the_browsers_faker_does() {
        let pool = UserPool::generate(2_000, 0.0, 12).unwrap();
        let agents: Vec<&str> = pool.users().iter().map(|u| u.user_agent.as_str()).collect();
        for browser in ["Chrome/", "Firefox/", "MSIE", "Opera/", "Safari/"] {
            assert!(
                agents.iter().any(|a| a.contains(browser)),
                "no {browser} user agent among {} users",
                agents.len()
            );
        }
        let distinct: std::collections::HashSet<_> = agents.iter().collect();
        assert!(
            distinct.len() >= 10,
            "{} distinct user agents",
            distinct.len()
        );
    }

    #[test]
    fn empty_pools_and_bad_ratios_are_errors() {
        assert!(UserPool::generate(0, 0.0, 1).is_err());
        assert!(UserPool::generate(5, 1.5, 1).is_err());
        assert!(UserPool::generate(5, f64::NAN, 1).is_err());
    }

    #[test]
    fn same_seed_same_events_and_different_seed_different_events() {
        let a = render(&source(7, 0.2), 10_000);
        assert_eq!(a, render(&source(7, 0.2), 10_000));
        let b = render(&source(8, 0.2), 10_000);
        assert_ne!(a, b);
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 10);
    }

    #[test]
    fn a_stream_started_mid_way_continues_the_full_stream() {
        let s = source(3, 0.1);
        let all = render(&s, 2 * CHUNK_EVENTS + 10);
        for start in [CHUNK_EVENTS, CHUNK_EVENTS + 17, 2 * CHUNK_EVENTS] {
            let mut stream = s.stream(start);
            let clock = Clock::Simulated {
                start_ms: 1_713_095_493_042,
                step_us: 500_000,
            };
            let mut datetimes = DatetimeFormatter::default();
            for i in start..start + 5 {
                let mut out = Vec::new();
                stream
                    .next_event(clock.base_ms(i, || 0))
                    .write_value(&mut out, &mut datetimes);
                assert_eq!(String::from_utf8(out).unwrap(), all[i as usize]);
            }
        }
    }

    #[test]
    fn every_field_stays_within_its_domain() {
        let s = source(11, 0.25);
        let clock = Clock::Simulated {
            start_ms: 1_713_095_493_042,
            step_us: 1_000,
        };
        let mut stream = s.stream(0);
        let mut pages = std::collections::HashSet::new();
        let mut distinct_users = std::collections::HashSet::new();
        for i in 0..20_000u64 {
            let base = clock.base_ms(i, || 0);
            let e = stream.next_event(base).to_event_log();
            let octets: Vec<u8> = e.ip.split('.').map(|o| o.parse().unwrap()).collect();
            assert_eq!(octets.len(), 4);
            assert!(
                ![0, 10, 127].contains(&octets[0]) && octets[0] < 224,
                "{}",
                e.ip
            );
            assert_eq!(e.id.parse::<i64>().unwrap(), user_id(&e.ip, e.lat, e.lng));
            match (e.lat, e.lng) {
                (Coordinate::Missing, Coordinate::Missing) => {}
                (Coordinate::Degrees(lat), Coordinate::Degrees(lng)) => {
                    assert!(
                        CITIES.iter().any(|c| c.lat == lat && c.lng == lng),
                        "{lat},{lng}"
                    );
                }
                other => panic!("lat and lng must be missing together: {other:?}"),
            }
            let ua = &e.user_agent;
            assert!(
                ua.starts_with("Mozilla/5.0 (") || ua.starts_with("Opera/"),
                "{ua}"
            );
            assert!(AGE_BRACKETS.contains(&e.age_bracket.as_ref()));
            assert!(HTTP_REQUESTS.contains(&e.http_request.as_ref()));
            pages.insert(e.http_request.to_string());
            assert_eq!(e.http_response, 200);
            assert!((FILE_SIZE_MIN..FILE_SIZE_END).contains(&e.file_size_bytes));
            assert!(e.event_ts >= base && e.event_ts <= base + 5_000);
            assert_eq!(e.event_datetime, format_event_datetime(e.event_ts));
            distinct_users.insert(e.id.to_string());
        }
        assert_eq!(pages.len(), HTTP_REQUESTS.len());
        assert_eq!(distinct_users.len(), 50);
    }

    #[test]
    fn missing_geo_ratio_is_honoured() {
        let pool = UserPool::generate(10_000, 0.3, 5).unwrap();
        let missing = pool
            .users()
            .iter()
            .filter(|u| u.lat == Coordinate::Missing)
            .count();
        assert!((2_700..3_300).contains(&missing), "{missing}");
        let none = UserPool::generate(1_000, 0.0, 5).unwrap();
        assert!(none.users().iter().all(|u| u.lat != Coordinate::Missing));
        let all = UserPool::generate(1_000, 1.0, 5).unwrap();
        assert!(
            all.users()
                .iter()
                .all(|u| u.lat == Coordinate::Missing && u.lng == Coordinate::Missing)
        );
    }

    #[test]
    fn cities_are_picked_by_population() {
        let pool = UserPool::generate(20_000, 0.0, 9).unwrap();
        let tokyo = pool
            .users()
            .iter()
            .filter(|u| u.lat == Coordinate::Degrees(35.6895))
            .count();
        let reykjavik = pool
            .users()
            .iter()
            .filter(|u| u.lat == Coordinate::Degrees(64.1466))
            .count();
        assert!(
            tokyo > 20 * reykjavik.max(1),
            "tokyo {tokyo}, reykjavik {reykjavik}"
        );
    }

    /// How many of `draws` events each user of the pool got, by pool position.
    fn user_counts(config: &GeneratorConfig, draws: u64) -> Vec<u64> {
        let source = EventSource::new(config).unwrap();
        let users = source.pool().users();
        let mut counts = vec![0u64; users.len()];
        let mut stream = source.stream(0);
        for _ in 0..draws {
            let event = stream.next_event(0);
            let at = users
                .iter()
                .position(|u| std::ptr::eq(u, event.user))
                .unwrap();
            counts[at] += 1;
        }
        counts
    }

    #[test]
    fn user_skew_follows_the_zipf_law() {
        let (users, skew, draws) = (100u32, 1.2f64, 200_000u64);
        let config = GeneratorConfig {
            num_users: users,
            missing_geo_ratio: 0.0,
            max_lag_ms: 0,
            seed: 7,
            user_skew: Some(skew),
        };
        let counts = user_counts(&config, draws);
        let weights: Vec<f64> = (1..=users).map(|k| f64::from(k).powf(-skew)).collect();
        let total: f64 = weights.iter().sum();
        // Pearson's chi-square over the 20 most likely users and the rest together:
        // 20 degrees of freedom, whose 0.1% critical value is 45.3.
        let expected = |range: std::ops::Range<usize>| {
            weights[range].iter().sum::<f64>() / total * draws as f64
        };
        let mut chi_square = 0.0;
        for (k, &observed) in counts.iter().enumerate().take(20) {
            let e = expected(k..k + 1);
            chi_square += (observed as f64 - e).powi(2) / e;
        }
        let rest: u64 = counts[20..].iter().sum();
        let e = expected(20..users as usize);
        chi_square += (rest as f64 - e).powi(2) / e;
        assert!(chi_square < 45.3, "chi-square {chi_square:.1}: {counts:?}");
        // And it is skewed: the first user gets about 28% of the events, not 1%.
        assert!(counts[0] > draws / 5, "{counts:?}");
        assert!(counts[0] > 2 * counts[1] && counts[1] > counts[9]);
    }

    #[test]
    fn without_skew_users_are_drawn_uniformly_and_skew_keeps_the_seed_deterministic() {
        let mut config = GeneratorConfig {
            num_users: 10,
            missing_geo_ratio: 0.0,
            max_lag_ms: 0,
            seed: 3,
            user_skew: None,
        };
        let uniform = user_counts(&config, 100_000);
        assert!(
            uniform.iter().all(|&n| (9_400..10_600).contains(&n)),
            "{uniform:?}"
        );
        config.user_skew = Some(1.0);
        assert_eq!(user_counts(&config, 10_000), user_counts(&config, 10_000));
    }
}
