//! Every Kafka client of this crate is configured and built here, and only here.
//!
//! Settings this crate changes from librdkafka's defaults are commented where they are
//! set. User `-X key=value` properties are applied last, so they override anything.
//! The values of secret properties (passwords, keys, tokens) are never logged or shown in
//! errors: [`KafkaConfig`]'s `Debug` and [`redact`] replace them with `***`.
//!
//! [`config`] holds the settings of each kind of client, [`inspect`] what is asked of the
//! cluster before a job starts (reachability, topics, their limits), and [`context`] the
//! client contexts that log errors and count deliveries.

mod config;
mod context;
mod inspect;

pub use config::*;
pub use context::*;
pub use inspect::*;

use std::fmt;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};

use crate::error::{Error, Result};

/// Where a local cluster is expected, and how to get one (printed with connection errors).
pub const LOCAL_BOOTSTRAP_SERVERS: &str = "localhost:29092";
pub const LOCAL_CLUSTER_HINT: &str = "Is a broker running there? Start a local one with setup/start-env.sh -k, or pass --bootstrap-servers (env BOOTSTRAP_SERVERS).";

/// How long a client may try to reach the cluster before we report it unreachable.
pub const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(6);

/// Connection settings shared by every client: plain data, built by the binaries.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// `-X key=value` properties, applied last, in order.
    pub properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &shown)
            .finish()
    }
}

/// True for librdkafka properties whose values are credentials.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "key",
        "credentials",
        ".pem",
    ]
    .iter()
    .any(|marker| key.contains(marker))
        && !key.ends_with(".location")
        && key != "ssl.key.location"
}

/// `text` with every secret property value of `config` replaced by `***`.
pub fn redact(text: &str, config: &KafkaConfig) -> String {
    config
        .properties
        .iter()
        .filter(|(k, v)| is_secret_property(k) && !v.is_empty())
        .fold(text.to_string(), |acc, (_, v)| {
            acc.replace(v.as_str(), "***")
        })
}

/// librdkafka's `message.timeout.ms` (alias `delivery.timeout.ms`) in `config`: how long a
/// message may wait for its acknowledgement before it is reported failed. `None` for 0,
/// which means no limit.
pub fn message_timeout(config: &ClientConfig) -> Option<Duration> {
    let millis = match config.create_native_config() {
        Ok(native) => native
            .get("message.timeout.ms")
            .ok()
            .and_then(|v| v.parse::<u64>().ok()),
        Err(_) => None,
    }
    .unwrap_or(300_000);
    (millis > 0).then(|| Duration::from_millis(millis))
}

/// Checks `-X` properties against librdkafka before any client exists: an unknown name or
/// a value librdkafka refuses is an error naming the property (a secret value is not shown).
pub fn check_properties(properties: &[(String, String)]) -> Result<()> {
    let kafka = KafkaConfig {
        bootstrap_servers: String::new(),
        properties: properties.to_vec(),
    };
    for (key, value) in properties {
        let mut config = ClientConfig::new();
        config.set(key, value);
        config.create_native_config().map_err(|e| {
            Error::KafkaConfig(format!("-X {key}: {}", redact(&e.to_string(), &kafka)))
        })?;
    }
    Ok(())
}

fn apply_properties(config: &mut ClientConfig, kafka: &KafkaConfig) {
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
}

/// Builds a client of type `T` (a producer or consumer) from `config` and `context`.
pub fn create<T, C>(config: &ClientConfig, context: C, kafka: &KafkaConfig) -> Result<T>
where
    C: ClientContext,
    T: FromClientConfigAndContext<C>,
{
    T::from_config_and_context(config, context)
        .map_err(|e| Error::KafkaConfig(redact(&e.to_string(), kafka)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.jaas.config",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in [
            "bootstrap.servers",
            "sasl.username",
            "ssl.key.location",
            "linger.ms",
            "security.protocol",
        ] {
            assert!(!is_secret_property(key), "{key}");
        }
    }

    #[test]
    fn debug_and_redact_hide_secret_values() {
        let config = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            properties: vec![
                ("sasl.password".into(), "hunter2".into()),
                ("sasl.username".into(), "alice".into()),
            ],
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("alice") && shown.contains("***"),
            "{shown}"
        );
        assert_eq!(
            redact("bad value hunter2 for x", &config),
            "bad value *** for x"
        );
    }

    #[test]
    fn the_consumer_protocol_leaves_out_what_only_the_classic_one_takes() {
        let kafka = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            properties: Vec::new(),
        };
        let classic = GroupConfig {
            protocol: GroupProtocol::Classic {
                session_timeout: Some(std::time::Duration::from_secs(6)),
            },
            instance_id: Some("node".into()),
        };
        let config = pipeline_consumer_config(&kafka, "job", &classic, 1024);
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        // Every 500 ms, well within a third of the 6 s session.
        assert_eq!(config.get("heartbeat.interval.ms"), Some("500"));
        assert_eq!(config.get("group.instance.id"), Some("node"));
        assert_eq!(config.get("group.id"), Some("job"));
        let consumer = GroupConfig {
            protocol: GroupProtocol::Consumer,
            instance_id: None,
        };
        let config = pipeline_consumer_config(&kafka, "job", &consumer, 1024);
        assert_eq!(config.get("group.protocol"), Some("consumer"));
        // librdkafka refuses either of these with group.protocol=consumer.
        assert_eq!(config.get("partition.assignment.strategy"), None);
        assert_eq!(config.get("session.timeout.ms"), None);
    }

    #[test]
    fn the_message_timeout_is_librdkafkas_own() {
        let mut config = ClientConfig::new();
        assert_eq!(message_timeout(&config), Some(Duration::from_secs(300)));
        config.set("delivery.timeout.ms", "4000");
        assert_eq!(message_timeout(&config), Some(Duration::from_secs(4)));
        let mut unlimited = ClientConfig::new();
        unlimited.set("message.timeout.ms", "0");
        assert_eq!(message_timeout(&unlimited), None);
    }

    #[test]
    fn properties_are_checked_against_librdkafka() {
        let property = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(check_properties(&property("linger.ms", "5")).is_ok());
        assert!(check_properties(&property("sasl.password", "hunter2")).is_ok());
        let unknown = check_properties(&property("bogus.property", "1")).unwrap_err();
        assert!(unknown.to_string().contains("bogus.property"), "{unknown}");
        let bad_value = check_properties(&property("linger.ms", "soon")).unwrap_err();
        assert!(bad_value.to_string().contains("linger.ms"), "{bad_value}");
    }

    #[test]
    fn user_properties_override_defaults() {
        let config = KafkaConfig {
            bootstrap_servers: "b:9092".into(),
            properties: vec![
                ("linger.ms".into(), "0".into()),
                ("acks".into(), "1".into()),
            ],
        };
        let client = throughput_producer_config(&config, "test", Compression::Lz4);
        assert_eq!(client.get("linger.ms"), Some("0"));
        assert_eq!(client.get("acks"), Some("1"));
        assert_eq!(client.get("compression.type"), Some("lz4"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
    }
}
