//! Command-line pieces shared by the binaries: the flattened [`KafkaArgs`] and value parsers.
//!
//! Only the binaries parse arguments and read the environment (through clap's `env`); they
//! turn these structs into the plain config structs the library takes.

use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::kafka::KafkaConfig;

/// What every binary does first: log to stderr as `program` (`log_filter` is RUST_LOG's
/// value), and return the one cancellation token that SIGINT and SIGTERM cancel. The
/// process exits at the latest `drain_timeout` plus [`EXIT_MARGIN`] after the signal.
pub fn start(
    program: &'static str,
    log_filter: Option<&str>,
    drain_timeout: Duration,
) -> Result<CancellationToken> {
    crate::logging::init(program, log_filter);
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone(), Some(drain_timeout + EXIT_MARGIN))?;
    Ok(cancel)
}

/// How long after its drain timeout a stopping process may take to exit.
pub const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// Kafka connection flags, the same in every binary.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port...]
    #[arg(long, env = "BOOTSTRAP_SERVERS", value_name = "HOST:PORT")]
    pub bootstrap_servers: Option<String>,

    /// A librdkafka property, as in kcat (repeatable; applied last, over every default).
    /// Values of secret properties are never printed.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

impl KafkaArgs {
    /// The connection config, with `default_servers` when no address was given.
    pub fn to_config(&self, default_servers: &str) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self
                .bootstrap_servers
                .clone()
                .unwrap_or_else(|| default_servers.to_string()),
            properties: self.properties.clone(),
        }
    }
}

impl KafkaArgs {
    /// Checks the `-X` properties for a run that has Kafka clients (against librdkafka), or
    /// refuses any for a run that has none (`without_kafka` says what it does instead).
    pub fn check(&self, without_kafka: Option<&str>) -> Result<(), String> {
        match (without_kafka, self.properties.first()) {
            (Some(mode), Some((key, _))) => Err(format!(
                "-X {key}: -X sets librdkafka properties, and {mode} uses no Kafka client"
            )),
            (Some(_), None) => Ok(()),
            (None, _) => {
                crate::kafka::check_properties(&self.properties).map_err(|e| e.to_string())
            }
        }
    }
}

/// Parses `key=value` (the value may contain `=`).
pub fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got '{raw}'")),
    }
}

/// Parses a ratio in `0..=1`.
pub fn parse_ratio(raw: &str) -> Result<f64, String> {
    let value: f64 = raw
        .parse()
        .map_err(|_| format!("'{raw}' is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside 0..1"))
    }
}

/// The highest `--user-skew` accepted: at 10, the first user takes 99.9% of the events.
pub const MAX_USER_SKEW: f64 = 10.0;

/// `--user-skew`: a Zipf exponent, above 0 and at most [`MAX_USER_SKEW`].
pub fn parse_user_skew(raw: &str) -> Result<f64, String> {
    let value: f64 = raw
        .parse()
        .map_err(|_| format!("'{raw}' is not a number"))?;
    if value > 0.0 && value <= MAX_USER_SKEW {
        Ok(value)
    } else {
        Err(format!(
            "{value} is outside (0, {MAX_USER_SKEW}]: use 1 for a classic Zipf law, leave the flag out for uniform users"
        ))
    }
}

/// The highest `--rate` accepted, events per second: well above what one machine
/// generates (about 16M/s on two cores), and low enough that pacing arithmetic stays exact.
pub const MAX_RATE: f64 = 1e9;

/// The lowest `--rate` accepted: one event every ten seconds.
pub const MIN_RATE: f64 = 0.1;

/// The longest duration, pause or interval any flag takes: ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses a finite number in `min..=max`.
pub fn parse_number_in(raw: &str, min: f64, max: f64) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v),
        Ok(_) => Err(format!("'{raw}' is outside {min}..={max}")),
        Err(_) => Err(format!("'{raw}' is not a number")),
    }
}

/// Parses an event rate: events per second, from [`MIN_RATE`] to [`MAX_RATE`].
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    parse_number_in(raw, MIN_RATE, MAX_RATE)
        .map_err(|e| format!("{e} (events per second, {MIN_RATE} to {MAX_RATE:e})"))
}

/// `--rate`: a fixed rate, a range for `--ramp`, or steps.
#[derive(Debug, Clone, PartialEq)]
pub enum RateSpec {
    /// `5000`: events per second.
    Fixed(f64),
    /// `1000..50000`: from one rate to the other over `--ramp`.
    Range(f64, f64),
    /// `5000@30s,20000@30s`: each rate for its time, in order.
    Steps(Vec<(f64, Duration)>),
}

impl RateSpec {
    /// The first rate: the one a simulated clock steps by.
    pub fn initial(&self) -> f64 {
        match self {
            RateSpec::Fixed(rate) | RateSpec::Range(rate, _) => *rate,
            RateSpec::Steps(steps) => steps.first().map_or(MIN_RATE, |&(rate, _)| rate),
        }
    }
}

/// Parses `--rate`: `RATE`, `FROM..TO` (with `--ramp`), or `RATE@DURATION,...` (steps);
/// every rate within [`MIN_RATE`]..=[`MAX_RATE`], every duration as [`parse_duration`]
/// takes it (and more than zero).
pub fn parse_rate_spec(raw: &str) -> Result<RateSpec, String> {
    let raw = raw.trim();
    if raw.contains('@') {
        let steps = raw
            .split(',')
            .map(|step| {
                let (rate, duration) = step.split_once('@').ok_or_else(|| {
                    format!("step '{step}' is not RATE@DURATION (as in 5000@30s)")
                })?;
                let duration = parse_duration(duration)?;
                if duration.is_zero() {
                    return Err(format!("step '{step}' lasts no time"));
                }
                Ok((parse_rate(rate.trim())?, duration))
            })
            .collect::<Result<Vec<_>, String>>()?;
        return Ok(RateSpec::Steps(steps));
    }
    if let Some((from, to)) = raw.split_once("..") {
        return Ok(RateSpec::Range(
            parse_rate(from.trim())?,
            parse_rate(to.trim())?,
        ));
    }
    parse_rate(raw).map(RateSpec::Fixed)
}

/// Parses seconds, from 0 to one day (`--delay-seconds`).
pub fn parse_seconds_up_to_a_day(raw: &str) -> Result<f64, String> {
    parse_number_in(raw, 0.0, 86_400.0).map_err(|e| format!("{e} (seconds, up to one day)"))
}

/// Parses milliseconds, from 0 to one day (`--time-step-ms`).
pub fn parse_millis_up_to_a_day(raw: &str) -> Result<f64, String> {
    parse_number_in(raw, 0.0, 86_400_000.0)
        .map_err(|e| format!("{e} (milliseconds, up to one day)"))
}

/// As [`parse_duration`], and zero (`0`, `0s`) too.
pub fn parse_duration_or_zero(raw: &str) -> Result<Duration, String> {
    let trimmed = raw.trim();
    if trimmed
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .trim_end()
        .parse::<f64>()
        .is_ok_and(|n| n == 0.0)
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(raw)
}

/// Parses a duration with `humantime` (`500ms`, `90s`, `5m`, `2h`, `1h 30m`, `1.5s`); a bare
/// number is seconds, as in `90`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let bare_number = !raw.is_empty() && raw.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if bare_number {
        humantime::parse_duration(&format!("{raw}s"))
    } else {
        humantime::parse_duration(raw)
    };
    match parsed {
        Ok(duration) if duration > MAX_DURATION => Err(format!(
            "'{raw}' is longer than the most accepted, {}",
            humantime::format_duration(MAX_DURATION)
        )),
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(format!("'{raw}' must be longer than zero")),
        Err(e) => Err(format!(
            "'{raw}' is not a duration like 90, 30s, 500ms, 5m or 2h ({e})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties() {
        assert_eq!(
            parse_property("sasl.jaas.config=a=b").unwrap(),
            ("sasl.jaas.config".into(), "a=b".into())
        );
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-3").is_err());
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert_eq!(parse_rate("0.1").unwrap(), 0.1);
        assert_eq!(parse_rate("1e9").unwrap(), 1e9);
        for bad in ["1e-12", "1e-300", "1e300", "0", "-5", "inf", "NaN", "x"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_seconds_up_to_a_day("0.5").unwrap(), 0.5);
        assert!(parse_seconds_up_to_a_day("1e300").is_err());
        assert!(parse_millis_up_to_a_day("86400001").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("3650d").is_ok());
        assert!(parse_duration("3651d").is_err());
    }

    use proptest::prelude::*;

    proptest! {
        /// No flag value panics; whatever a parser accepts is inside its documented range.
        #[test]
        fn flag_parsers_never_panic(raw in "[-+0-9.eE]{0,30}|\\PC{0,30}|[0-9]{1,30}(ns|ms|s|m|h|d|y)?") {
            if let Ok(rate) = parse_rate(&raw) {
                prop_assert!((MIN_RATE..=MAX_RATE).contains(&rate));
            }
            if let Ok(duration) = parse_duration(&raw) {
                prop_assert!(!duration.is_zero() && duration <= MAX_DURATION);
            }
            if let Ok(ratio) = parse_ratio(&raw) {
                prop_assert!((0.0..=1.0).contains(&ratio));
            }
            if let Ok(seconds) = parse_seconds_up_to_a_day(&raw) {
                prop_assert!((0.0..=86_400.0).contains(&seconds));
            }
            let _ = parse_property(&raw);
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("0.25").unwrap(), 0.25);
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }
}
