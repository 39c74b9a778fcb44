//! What is asked of the cluster before a job starts: that it answers (naming the address
//! when it does not), that the topics exist, and the largest record each takes.

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};

use super::{
    ErrorLog, KafkaConfig, LOCAL_CLUSTER_HINT, REACHABILITY_TIMEOUT, admin_config, create,
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
    let admin: AdminClient<ErrorLog> = create(
        &admin_config(kafka),
        ErrorLog::new(&kafka.bootstrap_servers),
        kafka,
    )?;
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

/// `topic`'s partition count; fails fast, naming the address, if the cluster cannot be
/// reached or the topic is missing.
pub fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32> {
    use rdkafka::admin::AdminClient;
    let admin: AdminClient<ErrorLog> = create(
        &admin_config(kafka),
        ErrorLog::new(&kafka.bootstrap_servers),
        kafka,
    )?;
    let count = tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, topic));
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    count
}

/// Makes `topic` with `partitions` partitions (at the broker's replication factor) and the
/// topic settings `configs`, unless it exists; returns its partition count, whatever it
/// is. A cluster that takes no `CreateTopics` (librdkafka's mock cluster) gets the topic by
/// auto-creation, if it allows that. Fails fast, naming the address, as
/// [`inspect_topics`], and names what the job's principal must be allowed when the topic
/// cannot be made.
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<i32> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let config = admin_config(kafka);
    let admin: AdminClient<ErrorLog> =
        create(&config, ErrorLog::new(&kafka.bootstrap_servers), kafka)?;
    let existing =
        tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, topic));
    match existing {
        Ok(count) if count > 0 => {
            drop(tokio::task::spawn_blocking(move || drop(admin)));
            return Ok(count);
        }
        Ok(_) | Err(Error::TopicMissing { .. }) => {}
        Err(e) => return Err(e),
    }
    // Replication -1: the broker's default.
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (name, value) in configs {
        new = new.set(name, value);
    }
    // A cluster that does not take CreateTopics may never answer it: the request is given
    // up after the reachability timeout, as the other checks before a job starts.
    let options = AdminOptions::new()
        .operation_timeout(Some(REACHABILITY_TIMEOUT))
        .request_timeout(Some(REACHABILITY_TIMEOUT));
    let refused = match admin.create_topics([&new], &options).await {
        Ok(results) => results.into_iter().find_map(|result| match result {
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) | Ok(_) => None,
            Err((_, code)) => Some(code.to_string()),
        }),
        Err(e) => Some(e.to_string()),
    };
    if let Some(refused) = &refused {
        // librdkafka's mock cluster takes no CreateTopics, but creates a topic asked for
        // by a client that allows it.
        log::debug!("cannot create {topic} ({refused}); asking for it to be auto-created");
        let mut auto = config.clone();
        auto.set("allow.auto.create.topics", "true");
        // (An admin client is a producer inside librdkafka: its metadata requests carry
        // the setting.)
        let client: AdminClient<ErrorLog> =
            create(&auto, ErrorLog::new(&kafka.bootstrap_servers), kafka)?;
        let _ = tokio::task::block_in_place(|| {
            client
                .inner()
                .fetch_metadata(Some(topic), REACHABILITY_TIMEOUT)
        });
        drop(tokio::task::spawn_blocking(move || drop(client)));
    }
    // The new topic's metadata may take a moment to reach every broker.
    let deadline = std::time::Instant::now() + REACHABILITY_TIMEOUT;
    loop {
        let count =
            tokio::task::block_in_place(|| check_topic_reachable(admin.inner(), kafka, topic));
        match count {
            Ok(count) if count > 0 => {
                drop(tokio::task::spawn_blocking(move || drop(admin)));
                return Ok(count);
            }
            Ok(_) | Err(Error::TopicMissing { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(_) | Err(Error::TopicMissing { .. }) => {
                return Err(Error::Kafka(format!(
                    "cannot create topic {topic} on {}: {}; the job's principal must be allowed to create topics (and delete records) named after the job",
                    kafka.bootstrap_servers,
                    refused.as_deref().unwrap_or("it did not appear")
                )));
            }
            Err(e) => return Err(e),
        }
    }
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
