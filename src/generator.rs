//! Pure, seeded generation of website-visit events: the `UserPool` and the `EventStream`.
//!
//! Guarantees:
//! - **Deterministic.** Everything derives from one `u64` seed through xoshiro256++ (seeded
//!   by SplitMix64), implemented here so that no dependency upgrade can change the stream.
//!   Given the seed and the base times, the events are identical on every run and machine.
//! - **Independent of threads.** Events are numbered from 0, and event `n` is drawn from
//!   the random stream of chunk `n / CHUNK_EVENTS`. Workers that generate different chunks
//!   in parallel therefore produce exactly what one thread would.
//! - **Pure.** No clock, no I/O: the caller passes each event's base time (see [`Clock`]).

use std::borrow::Cow;

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

/// xoshiro256++ seeded through SplitMix64: small, fast and fully specified.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `stream` under `seed`; distinct streams are independent.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut stream_state = stream.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut state = seed ^ splitmix64(&mut stream_state);
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` without bias (Lemire's method); `n == 0` yields 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn choose<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[self.below(items.len() as u64) as usize]
    }
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
    pub num_users: u32,
    /// Share of users, 0 to 1, whose `lat`/`lng` are missing (`""`).
    pub missing_geo_ratio: f64,
    /// Each event's time is its base time plus a uniform lag in `0..=max_lag_ms`.
    pub max_lag_ms: u64,
    pub seed: u64,
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
    pub fn generate(num_users: u32, missing_geo_ratio: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed, USER_STREAM);
        let picker = CityPicker::default();
        let users = (0..num_users)
            .map(|_| {
                let ip = random_public_ipv4(&mut rng);
                let (lat, lng) = if rng.unit() < missing_geo_ratio {
                    (Coordinate::Missing, Coordinate::Missing)
                } else {
                    let city = picker.pick(rng.below(picker.total_weight()));
                    (Coordinate::Degrees(city.lat), Coordinate::Degrees(city.lng))
                };
                let user_agent = random_user_agent(&mut rng);
                let age_bracket = *rng.choose(&AGE_BRACKETS);
                User::new(ip, lat, lng, user_agent, age_bracket, rng.below(2) == 1)
            })
            .collect();
        UserPool { users }
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

/// The users plus the rules to draw events from them.
#[derive(Debug, Clone)]
pub struct EventSource {
    pool: UserPool,
    max_lag_ms: u64,
    seed: u64,
}

impl EventSource {
    pub fn new(config: &GeneratorConfig) -> Self {
        EventSource {
            pool: UserPool::generate(config.num_users, config.missing_geo_ratio, config.seed),
            max_lag_ms: config.max_lag_ms,
            seed: config.seed,
        }
    }

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
        Rng::new(self.seed, CHUNK_STREAM_BASE + chunk)
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
        let users = self.source.pool.users();
        let user = &users[rng.below(users.len() as u64) as usize];
        let http_request = *rng.choose(&HTTP_REQUESTS);
        let file_size_bytes =
            FILE_SIZE_MIN + rng.below((FILE_SIZE_END - FILE_SIZE_MIN) as u64) as i64;
        let lag_ms = if self.source.max_lag_ms == 0 {
            0
        } else {
            rng.below(self.source.max_lag_ms + 1)
        };
        GeneratedEvent {
            user,
            http_request,
            file_size_bytes,
            event_ts: base_ms.saturating_add(lag_ms as i64),
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
    pub fn to_event_log(&self) -> EventLog<'s> {
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

    /// Appends the value JSON (no newline).
    pub fn write_value(&self, out: &mut Vec<u8>) {
        let mut int = itoa::Buffer::new();
        out.extend_from_slice(&self.user.value_prefix);
        out.push(b'"');
        // The request lines are plain ASCII: nothing to escape.
        out.extend_from_slice(self.http_request.as_bytes());
        out.extend_from_slice(b"\", \"http_response\": 200, \"file_size_bytes\": ");
        out.extend_from_slice(int.format(self.file_size_bytes).as_bytes());
        out.extend_from_slice(b", \"event_datetime\": \"");
        out.extend_from_slice(&event_datetime_bytes(self.event_ts));
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

/// `2024-04-14T21:51:33.042` for epoch milliseconds (UTC, proleptic Gregorian).
pub fn format_event_datetime(ts_ms: i64) -> String {
    String::from_utf8_lossy(&event_datetime_bytes(ts_ms)).into_owned()
}

/// [`format_event_datetime`] without allocating; years outside 0..=9999 are clamped.
fn event_datetime_bytes(ts_ms: i64) -> [u8; 23] {
    let days = ts_ms.div_euclid(86_400_000);
    let ms_of_day = ts_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, (ms_of_day / 3_600_000) as u64);
    put(14, 2, (ms_of_day / 60_000 % 60) as u64);
    put(17, 2, (ms_of_day / 1000 % 60) as u64);
    put(20, 3, (ms_of_day % 1000) as u64);
    out
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A random IPv4 address outside the private, loopback, link-local, CGNAT and
/// multicast ranges, like the addresses of real visitors.
pub fn random_public_ipv4(rng: &mut Rng) -> String {
    loop {
        let [a, b, c, d] = (rng.next_u64() as u32).to_be_bytes();
        let reserved = a == 0
            || a == 10
            || a == 127
            || a >= 224
            || (a == 100 && (64..128).contains(&b))
            || (a == 169 && b == 254)
            || (a == 172 && (16..32).contains(&b))
            || (a == 192 && b == 168);
        if !reserved {
            return format!("{a}.{b}.{c}.{d}");
        }
    }
}

const LOCALES: [&str; 16] = [
    "en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "it-IT", "pt-BR", "nl-NL", "pl-PL", "ru-RU",
    "ja-JP", "zh-CN", "ko-KR", "sv-SE", "tr-TR", "hi-IN",
];

fn random_platform(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => format!(
            "Windows NT {}",
            rng.choose(&["5.1", "6.0", "6.1", "6.2", "6.3", "10.0"])
        ),
        1 => format!(
            "Macintosh; Intel Mac OS X 10_{}_{}",
            rng.between(9, 15),
            rng.between(0, 9)
        ),
        2 => format!("X11; Linux {}", rng.choose(&["x86_64", "i686"])),
        3 => format!(
            "Linux; Android {}.{}",
            rng.between(5, 14),
            rng.between(0, 1)
        ),
        _ => format!(
            "iPhone; CPU iPhone OS {}_{} like Mac OS X",
            rng.between(12, 17),
            rng.between(0, 6)
        ),
    }
}

/// A random Firefox, Chrome, Safari, Internet Explorer or Opera user agent, in the
/// shapes the original generator (Faker) produces.
pub fn random_user_agent(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => {
            let v = rng.between(3, 125);
            format!(
                "Mozilla/5.0 ({}; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
                random_platform(rng)
            )
        }
        1 => {
            let (webkit, minor) = (rng.between(531, 537), rng.between(0, 36));
            format!(
                "Mozilla/5.0 ({}) AppleWebKit/{webkit}.{minor} (KHTML, like Gecko) Chrome/{}.0.{}.0 Safari/{webkit}.{minor}",
                random_platform(rng),
                rng.between(13, 124),
                rng.between(800, 6400)
            )
        }
        2 => {
            let webkit = format!(
                "{}.{}.{}",
                rng.between(531, 605),
                rng.between(1, 50),
                rng.between(1, 7)
            );
            format!(
                "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10_{}_{}; {}) AppleWebKit/{webkit} (KHTML, like Gecko) Version/{}.{}.{} Safari/{webkit}",
                rng.between(5, 15),
                rng.between(0, 9),
                rng.choose(&LOCALES),
                rng.between(4, 17),
                rng.between(0, 6),
                rng.between(0, 9)
            )
        }
        3 => format!(
            "Mozilla/5.0 (compatible; MSIE {}.0; Windows NT {}; Trident/{}.{})",
            rng.between(5, 11),
            rng.choose(&["5.1", "6.0", "6.1", "6.2"]),
            rng.between(3, 7),
            rng.between(0, 1)
        ),
        _ => format!(
            "Opera/{}.{}.({}; {}) Presto/2.9.{} Version/{}.00",
            rng.between(8, 9),
            rng.between(10, 99),
            random_platform(rng),
            rng.choose(&LOCALES),
            rng.between(160, 190),
            rng.between(10, 12)
        ),
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
        })
    }

    fn render(source: &EventSource, n: u64) -> Vec<String> {
        let clock = Clock::Simulated {
            start_ms: 1_713_095_493_042,
            step_us: 500_000,
        };
        let mut stream = source.stream(0);
        (0..n)
            .map(|i| {
                let mut out = Vec::new();
                stream
                    .next_event(clock.base_ms(i, || 0))
                    .write_value(&mut out);
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    #[test]
    fn fast_encoding_equals_the_canonical_serializer() {
        // Missing and present coordinates, every user-agent shape, lags, odd timestamps.
        let s = source(21, 0.5);
        let mut stream = s.stream(0);
        for i in 0..20_000i64 {
            let event = stream.next_event(-86_400_000 + i * 7_919_111);
            let (mut fast, mut canonical) = (Vec::new(), Vec::new());
            event.write_value(&mut fast);
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
    fn datetime_matches_chrono() {
        for ts in [
            0i64,
            1_713_095_493_042,
            951_782_400_000,
            -1,
            4_102_444_800_123,
            1_795_537_077_517,
        ] {
            let expected = chrono::DateTime::from_timestamp_millis(ts)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3f")
                .to_string();
            assert_eq!(format_event_datetime(ts), expected);
        }
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
            for i in start..start + 5 {
                let mut out = Vec::new();
                stream
                    .next_event(clock.base_ms(i, || 0))
                    .write_value(&mut out);
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
        let pool = UserPool::generate(10_000, 0.3, 5);
        let missing = pool
            .users()
            .iter()
            .filter(|u| u.lat == Coordinate::Missing)
            .count();
        assert!((2_700..3_300).contains(&missing), "{missing}");
        let none = UserPool::generate(1_000, 0.0, 5);
        assert!(none.users().iter().all(|u| u.lat != Coordinate::Missing));
        let all = UserPool::generate(1_000, 1.0, 5);
        assert!(
            all.users()
                .iter()
                .all(|u| u.lat == Coordinate::Missing && u.lng == Coordinate::Missing)
        );
    }

    #[test]
    fn cities_are_picked_by_population() {
        let pool = UserPool::generate(20_000, 0.0, 9);
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

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = Rng::new(1, 2);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[rng.below(6) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }
}
