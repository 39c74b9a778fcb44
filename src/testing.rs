//! A test driver for jobs, in the manner of Kafka Streams' `TopologyTestDriver`: it feeds
//! records (keys, values, timestamps, headers, partitions) into a [`Job`] in memory,
//! moves time on so that windows fire, and hands back the outputs and the dead letters.
//!
//! Guarantees:
//! - **no broker, no thread, no clock**: the driver's clocks start at [`START_MS`] (or
//!   where [`TestDriver::starting_at`] puts them) and move only with
//!   [`advance`](TestDriver::advance);
//! - **deterministic**: the same inputs and the same calls give the same outputs and dead
//!   letters, in the same order, on every run;
//! - **the runner's rules**: the job sees what the Kafka runner would show it. Each
//!   partition is assigned (with no saved state) before its first record; offsets count
//!   from 0 per partition; a job that keeps time is ticked after every record and every
//!   [`advance`](TestDriver::advance) (the runner ticks every 100 ms); a record's outputs
//!   carry its headers when the job [forwards them](Job::forwards_headers), and a dead
//!   letter always does; [`finish`](TestDriver::finish) is the end of a bounded input;
//!   [`restart`](TestDriver::restart) is a commit, a crash and a restart: a fresh job
//!   takes over from the committed positions with the state saved at that commit.
//!
//! ```
//! use streamkit::pipeline::job::{Emitter, Job, Now, Outcome, Record, Rejection};
//! use streamkit::testing::{Input, TestDriver};
//!
//! struct Shout;
//!
//! impl Job for Shout {
//!     fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
//!         match record.value {
//!             Some(value) if !value.is_empty() => {
//!                 let (_, out_value) = out.record();
//!                 out_value.extend(value.iter().map(u8::to_ascii_uppercase));
//!                 Outcome::Emitted
//!             }
//!             _ => Outcome::Rejected(Rejection::new("empty", "no value")),
//!         }
//!     }
//! }
//!
//! let mut driver = TestDriver::new(Shout);
//! driver.pipe(Input::value("hello").header("trace", "t-1"));
//! driver.pipe(Input::value(""));
//! let output = driver.read_output();
//! assert_eq!(output[0].value_str(), "HELLO");
//! assert_eq!(output[0].headers, vec![("trace".to_string(), Some(b"t-1".to_vec()))]);
//! let dead_letters = driver.read_dead_letters();
//! assert_eq!((dead_letters[0].kind, dead_letters[0].offset), ("empty", 1));
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::pipeline::job::{Emitter, Headers, Job, Now, Outcome, Record};

/// Where the driver's wall clock starts: 2100-01-01T00:00:00Z, after any event a test is
/// likely to hold, so that none is refused as too far ahead of the clock.
pub const START_MS: i64 = 4_102_444_800_000;

/// A header as the driver holds it: its name and value (`None`: a null value).
pub type Header = (String, Option<Vec<u8>>);

/// A record to feed into the job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    /// The input partition (0 unless said).
    pub partition: i32,
    /// The record's key (`None`: a null key).
    pub key: Option<Vec<u8>>,
    /// The record's value (`None`: a null value).
    pub value: Option<Vec<u8>>,
    /// The record's timestamp, epoch milliseconds.
    pub timestamp: Option<i64>,
    /// The record's headers, in order.
    pub headers: Vec<Header>,
}

impl Input {
    /// A record of partition 0 with this value, no key, no timestamp and no header.
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        Input {
            value: Some(value.into()),
            ..Input::default()
        }
    }

    /// A record with a null value (a tombstone).
    pub fn null() -> Self {
        Input::default()
    }

    /// The record's key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The record's timestamp, epoch milliseconds.
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_string(), Some(value.into())));
        self
    }

    /// The input partition the record is read from.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }
}

/// A record the job emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The output record's key.
    pub key: Vec<u8>,
    /// The output record's value.
    pub value: Vec<u8>,
    /// The input record's headers when the job forwards them; none for results of a tick
    /// or of the end of the input.
    pub headers: Vec<Header>,
}

impl Output {
    /// The key as text (lossy for bytes that are not UTF-8).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }

    /// The value as text (lossy for bytes that are not UTF-8).
    pub fn value_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// A record the job rejected, as the runner would dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The input partition of the rejected record.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its headers (a dead letter keeps them).
    pub headers: Vec<Header>,
    /// The rejection's kind (the dead letter's `streamkit.error.kind` header).
    pub kind: &'static str,
    /// Why (the `streamkit.error` header).
    pub reason: String,
}

/// Runs one job in memory: see the module doc.
pub struct TestDriver<J: Job> {
    job: J,
    emitter: Emitter,
    started: Instant,
    /// How far the clocks have moved since the start.
    elapsed: Duration,
    start_ms: i64,
    /// The next offset of each partition seen, by partition.
    next_offsets: std::collections::BTreeMap<i32, i64>,
    /// Every record piped, in order, with its offset: what a restart reads again.
    piped: Vec<(Input, i64)>,
    assigned: BTreeSet<i32>,
    output: Vec<Output>,
    dead_letters: Vec<DeadLetter>,
}

impl<J: Job> TestDriver<J> {
    /// A driver for `job`, its wall clock at [`START_MS`].
    pub fn new(job: J) -> Self {
        TestDriver {
            job,
            emitter: Emitter::default(),
            started: Instant::now(),
            elapsed: Duration::ZERO,
            start_ms: START_MS,
            next_offsets: std::collections::BTreeMap::new(),
            piped: Vec::new(),
            assigned: BTreeSet::new(),
            output: Vec::new(),
            dead_letters: Vec::new(),
        }
    }

    /// The wall clock starts at `wall_ms` (epoch milliseconds) instead.
    pub fn starting_at(mut self, wall_ms: i64) -> Self {
        self.start_ms = wall_ms;
        self
    }

    /// The time the job is given now.
    pub fn now(&self) -> Now {
        Now {
            instant: self.started + self.elapsed,
            wall_ms: self
                .start_ms
                .saturating_add(i64::try_from(self.elapsed.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// The job, to look at its state.
    pub fn job(&self) -> &J {
        &self.job
    }

    /// Feeds one record to the job: at the next offset of its partition, assigning the
    /// partition first if it is new. A job that keeps time is then ticked.
    pub fn pipe(&mut self, input: Input) {
        if self.assigned.insert(input.partition) {
            self.job.assign(input.partition, None, self.now());
        }
        let next = self.next_offsets.entry(input.partition).or_insert(0);
        let offset = *next;
        *next += 1;
        self.process(&input, offset);
        self.piped.push((input, offset));
    }

    /// A commit, a crash and a restart: `job` (a fresh instance) is assigned every
    /// partition with the state the old job would have saved in a commit now
    /// ([`Job::save`]), and reads again from the position that commit would reach (where
    /// [`Job::hold`] says the state still needs records). What it emits while it catches up
    /// goes to the output, as the runner would write it again.
    pub fn restart(&mut self, job: J) {
        let now = self.now();
        let mut positions = std::collections::BTreeMap::new();
        let mut saved = Vec::new();
        for (&partition, &next) in &self.next_offsets {
            let position = self.job.hold(partition).map_or(next, |hold| hold.min(next));
            positions.insert(partition, position);
            saved.push((partition, self.job.save(partition, next)));
        }
        self.job = job;
        for (partition, state) in saved {
            self.job.assign(partition, state.as_deref(), now);
        }
        let piped = std::mem::take(&mut self.piped);
        for (input, offset) in &piped {
            if positions
                .get(&input.partition)
                .is_some_and(|&p| *offset >= p)
            {
                self.process(input, *offset);
            }
        }
        self.piped = piped;
    }

    /// Hands one record to the job at `offset`, collects what comes of it, and ticks.
    fn process(&mut self, input: &Input, offset: i64) {
        let now = self.now();
        let record = Record {
            partition: input.partition,
            offset,
            key: input.key.as_deref(),
            value: input.value.as_deref(),
            timestamp: input.timestamp,
            headers: Headers::from_list(&input.headers),
        };
        self.emitter.begin();
        match self.job.process(&record, now, &mut self.emitter) {
            Outcome::Emitted => {
                let headers = if self.job.forwards_headers() {
                    input.headers.clone()
                } else {
                    Vec::new()
                };
                self.collect(&headers);
            }
            Outcome::Counted | Outcome::Dropped => {}
            Outcome::Rejected(rejection) => self.dead_letters.push(DeadLetter {
                partition: input.partition,
                offset,
                kind: rejection.kind.as_str(),
                reason: rejection.reason,
                key: input.key.clone(),
                value: input.value.clone(),
                headers: input.headers.clone(),
            }),
        }
        self.tick();
    }

    /// Feeds each record in turn.
    pub fn pipe_all(&mut self, inputs: impl IntoIterator<Item = Input>) {
        for input in inputs {
            self.pipe(input);
        }
    }

    /// Moves both clocks on by `by` (partitions without records go idle), and ticks a job
    /// that keeps time.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed = self.elapsed.saturating_add(by);
        self.tick();
    }

    /// The end of a bounded input: the job emits everything it holds (every open window
    /// fires, as Beam does).
    pub fn finish(&mut self) {
        self.emitter.begin();
        self.job.finish(&mut self.emitter);
        self.collect(&[]);
    }

    /// The records emitted since the last call, in order.
    pub fn read_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.output)
    }

    /// The values emitted since the last call, in order, as text (Kafka Streams'
    /// `readValuesToList`).
    pub fn read_values(&mut self) -> Vec<String> {
        self.read_output()
            .iter()
            .map(|o| o.value_str().into_owned())
            .collect()
    }

    /// The (key, value) pairs emitted since the last call, in order, as text (Kafka
    /// Streams' `readKeyValuesToList`).
    pub fn read_key_values(&mut self) -> Vec<(String, String)> {
        self.read_output()
            .iter()
            .map(|o| (o.key_str().into_owned(), o.value_str().into_owned()))
            .collect()
    }

    /// The records rejected since the last call, in order.
    pub fn read_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    fn tick(&mut self) {
        if self.job.tick_interval().is_some() {
            self.emitter.begin();
            self.job.tick(self.now(), &mut self.emitter);
            self.collect(&[]);
        }
    }

    fn collect(&mut self, headers: &[Header]) {
        self.output
            .extend(self.emitter.records().map(|(key, value)| Output {
                key: key.to_vec(),
                value: value.to_vec(),
                headers: headers.to_vec(),
            }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // Records per key, by record timestamp; a record without a key is rejected.
    use crate::pipeline::job::windowed_test_job::CountByKey;
    use crate::pipeline::job::{WindowConfig, Windowed};

    fn windows() -> WindowConfig {
        WindowConfig {
            size: Duration::from_secs(10),
            max_out_of_orderness: Duration::from_secs(2),
            allowed_lateness: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            max_event_time_ahead: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_window_fires_when_the_watermark_passes_its_end_and_not_before() {
        let mut driver = TestDriver::new(Windowed::new(CountByKey, &windows()));
        for (key, ms) in [("a", 1_000), ("b", 4_000), ("a", 9_999), ("a", 11_000)] {
            driver.pipe(Input::value("x").key(key).timestamp(ms));
        }
        // The watermark is 11 s less 2 s: [0, 10 s) is still open.
        assert!(driver.read_output().is_empty());
        driver.pipe(Input::value("x").key("b").timestamp(11_999));
        assert!(driver.read_output().is_empty(), "watermark 9.999 s");
        driver.pipe(Input::value("x").key("b").timestamp(12_000));
        assert_eq!(
            driver.read_key_values(),
            [("a@0", "2"), ("b@0", "1")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // An event for the fired window is late: dead-lettered, with the reason.
        driver.pipe(Input::value("x").key("a").timestamp(9_000));
        let late = driver.read_dead_letters();
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].kind, late[0].offset), ("late", 6));
        // The end of the input fires what is open.
        driver.finish();
        assert_eq!(
            driver.read_key_values(),
            [("a@10000", "1"), ("b@10000", "2")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn an_idle_input_fires_its_windows_as_the_clock_moves_on() {
        let mut driver = TestDriver::new(Windowed::new(CountByKey, &windows()));
        driver.pipe(Input::value("x").key("a").timestamp(1_000));
        driver.advance(Duration::from_secs(29));
        assert!(driver.read_output().is_empty(), "not idle yet");
        // Idle: event time moves on with the clock, past [0, 10 s)'s end.
        driver.advance(Duration::from_secs(2));
        assert_eq!(
            driver.read_key_values(),
            vec![("a@0".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn rejections_are_dead_letters_with_their_record_reason_and_headers() {
        let mut driver = TestDriver::new(Windowed::new(CountByKey, &windows()));
        driver.pipe(
            Input::value("v")
                .timestamp(1)
                .header("trace", "t-9")
                .partition(2),
        );
        driver.pipe(Input::value("w").key("k").partition(2));
        let dead = driver.read_dead_letters();
        assert_eq!(
            dead,
            vec![
                DeadLetter {
                    partition: 2,
                    offset: 0,
                    key: None,
                    value: Some(b"v".to_vec()),
                    headers: vec![("trace".to_string(), Some(b"t-9".to_vec()))],
                    kind: "no_key",
                    reason: "a record needs a UTF-8 key".to_string(),
                },
                DeadLetter {
                    partition: 2,
                    offset: 1,
                    key: Some(b"k".to_vec()),
                    value: Some(b"w".to_vec()),
                    headers: vec![],
                    kind: "no_time",
                    reason: "no timestamp".to_string(),
                },
            ]
        );
        assert!(driver.read_output().is_empty());
    }

    #[test]
    fn a_restart_restores_the_saved_state_and_writes_each_window_result_once() {
        let inputs: Vec<Input> = (0..600i64)
            .map(|i| {
                Input::value("x")
                    .key(format!("k{}", i % 7))
                    // Out of order within the 2 s bound: a window's records come after
                    // the next window's first, so a commit's position is held back.
                    .timestamp(i * 97 - (i / 3 % 4) * 500)
                    .partition((i % 3) as i32)
            })
            .collect();
        let mut through = TestDriver::new(Windowed::new(CountByKey, &windows()));
        through.pipe_all(inputs.clone());
        through.finish();
        let expected = through.read_key_values();
        assert!(expected.len() > 30, "{} results", expected.len());
        // The same input, with a crash after a third of it: the new job skips what fired
        // before the commit and rebuilds the open windows from the records they need.
        let mut driver = TestDriver::new(Windowed::new(CountByKey, &windows()));
        let (before, after) = inputs.split_at(200);
        driver.pipe_all(before.to_vec());
        let fired_before = driver.read_output().len();
        assert!(fired_before > 0);
        driver.restart(Windowed::new(CountByKey, &windows()));
        driver.pipe_all(after.to_vec());
        driver.finish();
        let results: Vec<(String, String)> = expected[..fired_before]
            .iter()
            .cloned()
            .chain(driver.read_key_values())
            .collect();
        assert_eq!(results, expected);
        // A stateless job's commit covers every record read: nothing is read again.
        let mut copy = TestDriver::new(Copy);
        copy.pipe(Input::value("a"));
        assert_eq!(copy.read_output().len(), 1);
        copy.restart(Copy);
        assert!(copy.read_output().is_empty());
    }

    /// Passes each record on, key and value as they are.
    struct Copy;

    impl Job for Copy {
        fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
            let (key, value) = out.record();
            key.extend_from_slice(record.key.unwrap_or_default());
            value.extend_from_slice(record.value.unwrap_or_default());
            Outcome::Emitted
        }
    }

    #[test]
    fn outputs_carry_their_input_headers_when_the_job_forwards_them() {
        let mut driver = TestDriver::new(Copy);
        driver.pipe(Input::value("v").key("k").header("a", "1").header("b", "2"));
        let output = driver.read_output();
        assert_eq!(
            output,
            vec![Output {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                headers: vec![
                    ("a".to_string(), Some(b"1".to_vec())),
                    ("b".to_string(), Some(b"2".to_vec())),
                ],
            }]
        );
        // Window results carry none.
        let mut windowed = TestDriver::new(Windowed::new(CountByKey, &windows()));
        windowed.pipe(Input::value("x").key("a").timestamp(1).header("h", "1"));
        windowed.finish();
        assert!(windowed.read_output()[0].headers.is_empty());
    }

    #[test]
    fn the_same_inputs_give_the_same_outputs_on_every_run() {
        let run = || {
            let mut driver = TestDriver::new(Windowed::new(CountByKey, &windows()));
            // Many keys over three partitions, out of order within the bound: the order of
            // results must not depend on hashing or on when the test runs.
            for i in 0..3_000i64 {
                let key = format!("user-{}", (i * 7919) % 97);
                let ms = i * 37 - (i % 5) * 300;
                driver.pipe(
                    Input::value("x")
                        .key(key)
                        .timestamp(ms.max(0))
                        .partition((i % 3) as i32),
                );
                if i % 500 == 0 {
                    driver.advance(Duration::from_millis(100));
                }
            }
            driver.finish();
            (driver.read_output(), driver.read_dead_letters())
        };
        let first = run();
        assert!(first.0.len() > 100, "{} results", first.0.len());
        for _ in 0..3 {
            assert_eq!(run(), first);
        }
    }
}
