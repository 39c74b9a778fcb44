//! What is asked of the cluster before a job starts: that it answers (naming the address
//! when it does not), that the topics exist, and the largest record each takes.

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};

use super::{
    ErrorLog, KafkaConfig, LOCAL_CLUSTER_HINT, REACHABILITY_TIMEOUT, apply_properties, create,
};

/// Room left for a record batch's own framing under a topic's `max.message.bytes`.
pub const BATCH_FRAMING_BYTES: usize = 512;

/// What the job needs to know of its topics before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFacts {
    /// Partitions of the input topic.
    pub input_partitions: i32,
    /// The largest record every output topic takes, from their `max.message.bytes`, less
    /// room for the batch framing; `None` when the cluster does not say (then librdkafka's
    /// default applies).
    pub max_record_bytes: Option<usize>,
    /// The same per output topic, in the order asked.
    pub record_limits: Vec<Option<usize>>,
}

/// Fails fast, naming the address, if the cluster cannot be reached or a topic is missing;
/// then reads the output topics' record size limit.
pub async fn inspect_topics(
    kafka: &KafkaConfig,
    input: &str,
    outputs: &[&str],
) -> Result<TopicFacts> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        // Fail a connection attempt after 5 s (default 30 s), as every client here.
        .set("socket.connection.setup.timeout.ms", "5000")
        // Asking for a missing topic's metadata must not create it (an admin client is a
        // producer inside librdkafka, whose default is true).
        .set("allow.auto.create.topics", "false");
    apply_properties(&mut config, kafka);
    let admin: AdminClient<ErrorLog> =
        create(&config, ErrorLog::new(&kafka.bootstrap_servers), kafka)?;
    let input_partitions =
        tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, input))?;
    for topic in outputs {
        tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, topic))?;
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = outputs
        .iter()
        .map(|t| ResourceSpecifier::Topic(t))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(REACHABILITY_TIMEOUT));
    // Each output topic's largest record, less room for the batch framing.
    let record_limits: Vec<Option<usize>> =
        match admin.describe_configs(&specifiers, &options).await {
            Ok(results) => results
                .into_iter()
                .map(|result| {
                    result
                        .ok()?
                        .get("max.message.bytes")?
                        .value
                        .as_deref()?
                        .parse::<usize>()
                        .ok()
                        .map(|limit| limit.saturating_sub(BATCH_FRAMING_BYTES))
                })
                .collect(),
            Err(e) => {
                log::debug!("cannot read the topics' max.message.bytes: {e}");
                vec![None; outputs.len()]
            }
        };
    let max_record_bytes = record_limits
        .iter()
        .copied()
        .collect::<Option<Vec<usize>>>()
        .and_then(|limits| limits.into_iter().min());
    // The admin client's polling thread takes up to a tenth of a second to stop: it stops
    // in the background while the job starts.
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    Ok(TopicFacts {
        input_partitions,
        max_record_bytes,
        record_limits,
    })
}

/// Fails fast, naming the address, if the cluster cannot be reached or `topic` is
/// missing; returns the topic's partition count.
pub fn check_topic_reachable<C: ClientContext>(
    client: &Client<C>,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<i32> {
    let metadata = client
        .fetch_metadata(Some(topic), REACHABILITY_TIMEOUT)
        .map_err(|e| Error::BrokerUnreachable {
            servers: kafka.bootstrap_servers.clone(),
            reason: describe_unreachable(&e, &kafka.bootstrap_servers),
            hint: LOCAL_CLUSTER_HINT,
        })?;
    let topic_metadata = metadata.topics().iter().find(|t| t.name() == topic);
    let partitions = topic_metadata.map_or(0, |t| t.partitions().len() as i32);
    let topic_error = topic_metadata
        .and_then(|t| t.error())
        .map(RDKafkaErrorCode::from);
    match topic_error {
        Some(code @ RDKafkaErrorCode::UnknownTopicOrPartition)
        | Some(code @ RDKafkaErrorCode::UnknownTopic) => Err(Error::TopicMissing {
            topic: topic.to_string(),
            servers: kafka.bootstrap_servers.clone(),
            reason: code.to_string(),
        }),
        // Anything else (say, a leader election under way) is transient: the client retries.
        _ => Ok(partitions),
    }
}

/// Why the cluster could not be reached. librdkafka reports a name that does not resolve
/// as "all brokers down", so the names are resolved here to tell the two apart.
fn describe_unreachable(error: &KafkaError, servers: &str) -> String {
    let unresolved = unresolved_hosts(servers);
    if !unresolved.is_empty() {
        return format!("the host name does not resolve: {}", unresolved.join(", "));
    }
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::OperationTimedOut) => format!(
            "no answer to a metadata request within {} s",
            REACHABILITY_TIMEOUT.as_secs()
        ),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
            "could not connect (nothing listening, or the connection was refused)".to_string()
        }
        Some(RDKafkaErrorCode::Resolve) => "the host name does not resolve".to_string(),
        _ => error.to_string(),
    }
}

/// The `host:port` entries of a bootstrap list whose host does not resolve.
fn unresolved_hosts(servers: &str) -> Vec<String> {
    use std::net::ToSocketAddrs;
    servers
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| {
            // Strip a protocol prefix such as PLAINTEXT:// .
            server.rsplit("://").next().unwrap_or(server)
        })
        .filter(|server| {
            let with_port = if server
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                server.to_string()
            } else {
                format!("{server}:9092")
            };
            with_port.to_socket_addrs().is_err()
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unresolvable_hosts_are_named() {
        assert_eq!(
            unresolved_hosts("localhost:9092, no-such-host.invalid:9092,127.0.0.1:1"),
            vec!["no-such-host.invalid:9092"]
        );
        assert!(unresolved_hosts("PLAINTEXT://localhost:29092").is_empty());
    }
}
