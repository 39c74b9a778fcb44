//! The article's demo without any setup (`pipeline` with no `--use-own` or address): an
//! in-process mock cluster (librdkafka's), fed by an in-process generator, with the job on
//! the one runner. Exactly once runs there too, but the mock cluster does not enforce
//! `read_committed`, so it cannot prove the guarantee.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::{GroupProtocol, KafkaConfig};
use crate::pipeline::{DemoConfig, Guarantee, PipelineConfig, Stats, Topics, run_kafka};

/// The article's demo without any setup: a mock cluster and a generator, in process.
#[allow(clippy::too_many_arguments)] // the job's parts, each used once
pub(crate) fn run(
    runtime: &tokio::runtime::Runtime,
    config: &PipelineConfig,
    demo: &DemoConfig,
    topics: &Topics,
    print_keys: bool,
    stats: &Arc<Stats>,
    browser: &crate::browse::TopicBrowser,
    cancel: &CancellationToken,
) -> Result<()> {
    let mock_error = |e: rdkafka::error::KafkaError| Error::Kafka(format!("embedded cluster: {e}"));
    let cluster = rdkafka::mocking::MockCluster::new(1).map_err(mock_error)?;
    for topic in [&topics.input, &topics.output, &topics.dead_letter] {
        cluster.create_topic(topic, 3, 1).map_err(mock_error)?;
    }
    // A windowed job's repartition topic (the mock cluster takes no CreateTopics).
    if config.job.grouped && config.repartition {
        let repartition = crate::pipeline::shuffle::repartition_topic(&config.job_name);
        cluster
            .create_topic(&repartition, 3, 1)
            .map_err(mock_error)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    log::info!(
        "embedded Kafka cluster at {bootstrap}: topics {}, {}, {} (3 partitions each)",
        topics.input,
        topics.output,
        topics.dead_letter
    );
    log::info!("feed it more with: datagen --source streaming --bootstrap-servers {bootstrap}");
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        properties: demo.properties.clone(),
    };
    browser.connect(kafka.clone());
    let feed_config = crate::datagen::DatagenConfig {
        generator: crate::generator::GeneratorConfig {
            num_users: demo.users,
            missing_geo_ratio: 0.2,
            max_lag_ms: 0,
            seed: uuid::Uuid::new_v4().as_u64_pair().0,
            user_skew: None,
        },
        clock: crate::generator::Clock::Wall,
        num_events: None,
        duration: None,
        pace: crate::pacing::Pace::Rate(demo.rate),
        threads: 1,
        output: crate::datagen::Output::Kafka {
            kafka: KafkaConfig {
                bootstrap_servers: bootstrap,
                properties: Vec::new(),
            },
            topic: topics.input.clone(),
            compression: crate::kafka::Compression::None,
        },
        progress: crate::progress::ProgressMode::Quiet,
        metrics_addr: None,
        dirt: None,
        verify: None,
        report: None,
    };
    let feed_stop = cancel.child_token();
    std::thread::scope(|scope| {
        let feed = scope.spawn(|| crate::datagen::run(&feed_config, &feed_stop));
        if matches!(config.guarantee, Guarantee::ExactlyOnce(_)) {
            log::warn!(
                "exactly-once on the embedded cluster: transactions run, but the in-process cluster does not enforce read_committed, so its output cannot prove the guarantee (use --use-own with Apache Kafka)"
            );
        }
        let config = with_short_rebalances(config);
        let job = run_kafka(runtime, &config, &kafka, topics, print_keys, stats, cancel);
        feed_stop.cancel();
        let fed = feed
            .join()
            .map_err(|_| Error::Kafka("the demo generator panicked".into()))?;
        if let Ok(summary) = &fed {
            log::info!("demo generator: {summary}");
        }
        job.and(fed.map(|_| ()))
    })
}

/// The session timeout of the embedded cluster's group, unless `--session-timeout` sets one.
/// The mock cluster waits one second less than the session timeout for every member to
/// rejoin a rebalance, even once all have: at librdkafka's default of 45 s, a rebalance
/// (a member's SyncGroup racing the leader's, which the mock answers "Invalid request",
/// on a busy machine) stalled the demo's commits for 44 s, and a Ctrl-C within that time
/// could not commit. 6 s bounds that stall at 5 s.
const EMBEDDED_SESSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6);

/// `config` with [`EMBEDDED_SESSION_TIMEOUT`] for a classic group that sets none.
fn with_short_rebalances(config: &PipelineConfig) -> PipelineConfig {
    let mut config = config.clone();
    if let GroupProtocol::Classic {
        session_timeout: session_timeout @ None,
    } = &mut config.group.protocol
    {
        *session_timeout = Some(EMBEDDED_SESSION_TIMEOUT);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::cli::kafka_io_config;

    fn session_timeout(config: &PipelineConfig) -> Option<std::time::Duration> {
        match config.group.protocol {
            GroupProtocol::Classic { session_timeout } => session_timeout,
            GroupProtocol::Consumer => panic!("classic expected"),
        }
    }

    #[test]
    fn the_demo_group_rebalances_within_seconds_unless_told_otherwise() {
        let config = kafka_io_config(&["pipeline"]).unwrap();
        assert_eq!(session_timeout(&config), None, "librdkafka's default");
        let demo = with_short_rebalances(&config);
        assert_eq!(session_timeout(&demo), Some(EMBEDDED_SESSION_TIMEOUT));

        let own = kafka_io_config(&["pipeline", "--session-timeout", "20000"]).unwrap();
        assert_eq!(
            session_timeout(&with_short_rebalances(&own)),
            Some(std::time::Duration::from_secs(20)),
            "the user's --session-timeout wins"
        );
        let kip848 = kafka_io_config(&["pipeline", "--group-protocol", "consumer"]).unwrap();
        assert_eq!(
            with_short_rebalances(&kip848).group.protocol,
            GroupProtocol::Consumer
        );
    }
}
