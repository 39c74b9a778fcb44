//! The library's error type. Every fallible library function returns [`Error`]; the
//! binaries turn it into a message on stderr and an exit code. Messages never contain
//! the value of a secret librdkafka property (see [`crate::kafka::redact`]).

use std::path::PathBuf;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Kafka at {servers}: {reason}.\n  {hint}")]
    BrokerUnreachable {
        servers: String,
        reason: String,
        hint: &'static str,
    },

    #[error(
        "topic '{topic}' does not exist on {servers} ({reason}). Create it first, or point --topic at an existing one."
    )]
    TopicMissing {
        topic: String,
        servers: String,
        reason: String,
    },

    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error("invalid Kafka client configuration: {0}")]
    KafkaConfig(String),

    #[error("Kafka error: {0}")]
    Kafka(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot encode an event as JSON: {0}")]
    Encode(#[from] serde_json::Error),

    #[error("cannot serve the {what} on {addr}: {reason}")]
    Listen {
        what: &'static str,
        addr: String,
        reason: String,
    },

    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
