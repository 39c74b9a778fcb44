//! `datagen`: website-visit events for demos, fixtures and load tests. Flags follow the
//! original generator (dashed); the work is done by `crate::datagen::run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{
    KafkaArgs, RateSpec, parse_duration, parse_millis_up_to_a_day, parse_rate_spec, parse_ratio,
    parse_seconds_up_to_a_day, parse_user_skew,
};
use crate::datagen::identity::MatchSpec;
use crate::datagen::{self, DatagenConfig, Dirt, Output, VerifyConfig};
use crate::generator::{Clock, GeneratorConfig};
use crate::kafka::{Compression, LOCAL_BOOTSTRAP_SERVERS};
use crate::pacing::{Pace, RateSchedule};
use crate::progress::ProgressMode;
use chrono::{DateTime, FixedOffset};
use clap::{CommandFactory, Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// JSON lines into a file (or stdout)
    Batch,
    /// Messages into a Kafka topic
    Streaming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

const EXAMPLES: &str = "Streaming goes to localhost:29092 unless --bootstrap-servers or BOOTSTRAP_SERVERS says otherwise.

Examples:
  datagen --source streaming --num-users 5 --delay-seconds 0.5     # the article's demo
  datagen --num-events 1000 --seed 42 --start-time 2024-04-14T21:51:33Z --output -
  datagen -s streaming --rate 50000 --duration 5m --compression lz4 -X sasl.username=me";

/// Generate website-visit events into a file, stdout or a Kafka topic.
#[derive(Debug, Parser)]
#[command(name = "datagen", version, after_help = EXAMPLES)]
struct Args {
    /// batch writes JSON lines to --output; streaming produces to --topic
    #[arg(short = 's', long, value_enum, default_value_t = Source::Batch)]
    source: Source,

    /// Users in the pool (1 to 10,000,000); each event picks one at random
    #[arg(short = 'u', long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=MAX_USERS), allow_negative_numbers = true)]
    num_users: u32,

    /// Stop after this many events [default: unlimited]
    #[arg(short = 'e', long, allow_negative_numbers = true)]
    num_events: Option<u64>,

    /// Each event's time is now plus a uniform random lag in [0, N] seconds (N up to a year)
    #[arg(
        short = 'l',
        long,
        default_value_t = 0,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(0..=31_536_000),
        allow_negative_numbers = true
    )]
    max_lag_seconds: u64,

    /// Pause after each event, as the original does (seconds, up to one day)
    #[arg(short = 'd', long, value_parser = parse_seconds_up_to_a_day, conflicts_with = "rate", allow_negative_numbers = true)]
    delay_seconds: Option<f64>,

    /// Hold an exact average rate, events per second (0.1 up to the machine's limit); or
    /// a shape: FROM..TO with --ramp, or steps RATE@DURATION,RATE@DURATION,... (the run
    /// ends after the last step unless --duration or --num-events say otherwise)
    /// [default: as fast as possible]
    #[arg(long, value_parser = parse_rate_spec, value_name = "EVENTS_PER_SEC", allow_negative_numbers = true)]
    rate: Option<RateSpec>,

    /// With --rate FROM..TO: how long the rate takes to go from FROM to TO (then TO holds)
    #[arg(long, value_parser = parse_duration, requires = "rate", value_name = "DURATION")]
    ramp: Option<Duration>,

    /// Stop after this long: 90, 90s, 500ms, 5m, 2h, up to ten years [default: unlimited]
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Share of users, 0 to 1, with empty-string lat/lng (the original's failed geo lookups)
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio, value_name = "RATIO", allow_negative_numbers = true)]
    missing_geo_ratio: f64,

    /// Hot users: pick each event's user by a Zipf law of exponent S (0 < S <= 10; 1 is the
    /// classic law), so that the first users of the pool dominate [default: uniform, as the original]
    #[arg(long, value_parser = parse_user_skew, value_name = "S", allow_negative_numbers = true)]
    user_skew: Option<f64>,

    /// Dirty data: this share of events (0 to 1) is malformed, evenly in every kind the
    /// pipeline dead-letters (not UTF-8, not JSON, truncated JSON, not an object, a missing
    /// field, a mistyped field, an empty value); the summary counts each kind
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio, value_name = "RATIO", allow_negative_numbers = true)]
    bad_record_ratio: f64,

    /// This share of the good events (0 to 1) is sent twice, as a retrying producer would
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio, value_name = "RATIO", allow_negative_numbers = true)]
    duplicate_ratio: f64,

    /// Seed of all random choices; with --start-time the output is byte-identical on every run [default: random]
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,

    /// Simulated clock: event n is stamped START + n × --time-step-ms (plus lag) instead of now (RFC 3339)
    #[arg(long, value_parser = parse_start_time, value_name = "START")]
    start_time: Option<DateTime<FixedOffset>>,

    /// Simulated time between events, up to one day [default: 1000/--rate, or --delay-seconds, or 1 ms]
    #[arg(long, value_parser = parse_millis_up_to_a_day, requires = "start_time", value_name = "MS", allow_negative_numbers = true)]
    time_step_ms: Option<f64>,

    /// batch: the JSON-lines file to write, `-` for stdout [default: inputs/<uuid>.out]
    #[arg(short = 'o', long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// streaming: the topic to produce to
    #[arg(long, env = "TOPIC_NAME", default_value = "website-visit")]
    topic: String,

    /// streaming: batch compression
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,

    /// Generator threads when no rate or delay is set; the output is the same for any count
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256), allow_negative_numbers = true)]
    threads: u16,

    /// No progress output (the summary is still printed)
    #[arg(short = 'q', long)]
    quiet: bool,

    /// Serve Prometheus metrics (events generated and delivered, delivery errors, rate) at
    /// http://HOST:PORT/metrics while running; the next free port is used if it is taken
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// streaming: read this topic (a pipeline's output) while producing, and report every
    /// event as arrived, lost or duplicated, with end-to-end latencies; exit 1 if any is lost
    #[arg(long, value_name = "TOPIC")]
    verify_topic: Option<String>,

    /// With --verify-topic: also read the pipeline's dead-letter topic, to account for the
    /// records it rejects (--bad-record-ratio's, and any other)
    #[arg(long, value_name = "TOPIC", requires = "verify_topic")]
    verify_dead_letter_topic: Option<String>,

    /// Write a self-contained HTML report here at the end (charts over time of the target
    /// and achieved rate, latencies and, with --verify-topic, arrivals), and beside it the
    /// same figures as JSON (PATH with the extension .json)
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,

    /// With --verify-topic: for records without datagen's headers (a job that drops them),
    /// the fields holding the user id and the event time, as dotted paths into the key's
    /// JSON, else the value's [default: the key's event_id (or id) and event_ts, else the
    /// value's id and event_ts]
    #[arg(long, value_name = "FIELD,FIELD", value_parser = MatchSpec::parse, requires = "verify_topic")]
    verify_match: Option<MatchSpec>,

    /// With --verify-topic: how long to wait for stragglers once every event is delivered
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION", requires = "verify_topic")]
    verify_grace: Duration,

    #[command(flatten)]
    kafka: KafkaArgs,
}

/// Most users `--num-users` takes: each holds an address and a user agent in memory.
const MAX_USERS: i64 = 10_000_000;

/// An RFC 3339 time in the years 1 to 9999, the range of the original's Python `datetime`.
fn parse_start_time(raw: &str) -> Result<DateTime<FixedOffset>, String> {
    let time = DateTime::parse_from_rfc3339(raw)
        .map_err(|e| format!("'{raw}' is not an RFC 3339 time like 2024-04-14T21:51:33Z ({e})"))?;
    use chrono::Datelike;
    if (1..=9999).contains(&time.year()) {
        Ok(time)
    } else {
        Err(format!("'{raw}' is outside the years 1 to 9999"))
    }
}

impl Args {
    fn into_config(self) -> Result<DatagenConfig, clap::Error> {
        let usage_error = |kind, message: &str| Args::command().error(kind, message);
        let without_kafka = (self.source == Source::Batch).then_some("--source batch");
        if let Err(message) = self.kafka.check(without_kafka) {
            return Err(usage_error(clap::error::ErrorKind::InvalidValue, &message));
        }
        if self.source == Source::Batch && self.verify_topic.is_some() {
            return Err(usage_error(
                clap::error::ErrorKind::ArgumentConflict,
                "--verify-topic applies to --source streaming only",
            ));
        }
        let output = match (self.source, &self.output) {
            (Source::Streaming, Some(_)) => {
                return Err(usage_error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--output applies to --source batch only",
                ));
            }
            (Source::Streaming, None) => Output::Kafka {
                kafka: self.kafka.to_config(LOCAL_BOOTSTRAP_SERVERS),
                topic: self.topic.clone(),
                compression: match self.compression {
                    CompressionArg::None => Compression::None,
                    CompressionArg::Gzip => Compression::Gzip,
                    CompressionArg::Snappy => Compression::Snappy,
                    CompressionArg::Lz4 => Compression::Lz4,
                    CompressionArg::Zstd => Compression::Zstd,
                },
            },
            (Source::Batch, Some(path)) if path.as_os_str() == "-" => Output::Stdout,
            (Source::Batch, Some(path)) => Output::File(path.clone()),
            (Source::Batch, None) => Output::File(PathBuf::from(format!(
                "inputs/{}.out",
                uuid::Uuid::new_v4()
            ))),
        };
        let pace = match (&self.rate, self.ramp, self.delay_seconds) {
            (Some(RateSpec::Fixed(rate)), None, _) => Pace::Rate(*rate),
            (Some(RateSpec::Range(from, to)), Some(ramp), _) if !ramp.is_zero() => {
                Pace::Schedule(RateSchedule::ramp(*from, *to, ramp))
            }
            (Some(RateSpec::Range(..)), _, _) => {
                return Err(usage_error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--rate FROM..TO needs --ramp DURATION (longer than zero): how long the rate takes from FROM to TO",
                ));
            }
            (Some(RateSpec::Steps(steps)), None, _) => Pace::Schedule(RateSchedule::steps(steps)),
            (Some(_), Some(_), _) => {
                return Err(usage_error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--ramp goes with --rate FROM..TO only",
                ));
            }
            (None, _, Some(delay)) => Pace::Delay(Duration::from_secs_f64(delay)),
            (None, _, None) => Pace::Unlimited,
        };
        // Steps end the run after the last one, unless a count or duration says otherwise.
        let duration = match (&self.rate, self.duration, self.num_events) {
            (Some(RateSpec::Steps(steps)), None, None) => Some(steps.iter().map(|&(_, d)| d).sum()),
            _ => self.duration,
        };
        let clock = match self.start_time {
            None => Clock::Wall,
            Some(start) => {
                let step_ms = self
                    .time_step_ms
                    .or(self.rate.as_ref().map(|rate| 1000.0 / rate.initial()))
                    .or(self.delay_seconds.map(|delay| delay * 1000.0))
                    .unwrap_or(1.0);
                Clock::Simulated {
                    start_ms: start.timestamp_millis(),
                    step_us: (step_ms * 1000.0).round() as u64,
                }
            }
        };
        let seed = self
            .seed
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        if self.seed.is_none() {
            log::debug!("seed {seed}");
        }
        let bounded = self.num_events.is_some() || duration.is_some();
        let progress = if self.quiet {
            ProgressMode::Quiet
        } else if bounded && std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines {
                every: if self.source == Source::Batch {
                    100
                } else {
                    10
                },
            }
        };
        Ok(DatagenConfig {
            generator: GeneratorConfig {
                num_users: self.num_users,
                missing_geo_ratio: self.missing_geo_ratio,
                max_lag_ms: self.max_lag_seconds.saturating_mul(1000),
                seed,
                user_skew: self.user_skew,
            },
            clock,
            num_events: self.num_events,
            duration,
            pace,
            threads: usize::from(self.threads),
            output,
            progress,
            metrics_addr: self.metrics_addr,
            report: self.report.clone(),
            verify: self.verify_topic.clone().map(|topic| VerifyConfig {
                topic,
                dead_letter_topic: self.verify_dead_letter_topic.clone(),
                grace: self.verify_grace,
                matching: self.verify_match.clone().unwrap_or_default(),
            }),
            dirt: (self.bad_record_ratio > 0.0 || self.duplicate_ratio > 0.0).then_some(Dirt {
                bad_record_ratio: self.bad_record_ratio,
                duplicate_ratio: self.duplicate_ratio,
                seed,
            }),
        })
    }
}

/// The `datagen` program: parses its flags, logs to stderr, runs, and maps the outcome to
/// an exit code (2 for a usage error).
pub fn main() -> ExitCode {
    let args = Args::parse();
    let cancel = match crate::cli::start(
        "datagen",
        std::env::var("RUST_LOG").ok().as_deref(),
        datagen::DRAIN_TIMEOUT,
    ) {
        Ok(cancel) => cancel,
        Err(e) => {
            eprintln!("datagen: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(usage) => usage.exit(),
    };
    if let Err(e) = datagen::check_outputs(&config) {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e.to_string())
            .exit();
    }
    if let Output::File(path) = &config.output {
        log::info!("writing to {}", path.display());
    }
    match datagen::run(&config, &cancel) {
        Ok(summary) => {
            eprintln!("datagen: {summary}");
            let lost = summary.verification.as_ref().map_or(0, |v| v.lost);
            if let Some(error) = &summary.report_error {
                log::error!("the report was not written: {error}");
                ExitCode::FAILURE
            } else if summary.delivery_failures > 0 {
                log::error!("{} events were not delivered", summary.delivery_failures);
                ExitCode::FAILURE
            } else if lost > 0 {
                log::error!("{lost} events never reached the verified topic");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
