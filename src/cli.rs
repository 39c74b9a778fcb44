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
/// value), and return the one cancellation token that SIGINT and SIGTERM cancel.
pub fn start(program: &'static str, log_filter: Option<&str>) -> Result<CancellationToken> {
    crate::logging::init(program, log_filter);
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signals(cancel.clone())?;
    Ok(cancel)
}

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

/// Parses a finite number greater than zero.
pub fn parse_positive(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{raw}' is not a number greater than 0")),
    }
}

/// Parses a finite number of zero or more.
pub fn parse_non_negative(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{raw}' is not a number of 0 or more")),
    }
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
    fn ratios() {
        assert_eq!(parse_ratio("0.25").unwrap(), 0.25);
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }
}
