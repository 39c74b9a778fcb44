//! The article's demo without any setup (`pipeline` with no `--use-own` or address): an
//! in-process mock cluster (librdkafka's), fed by an in-process generator, with the job on
//! the one runner. Exactly once runs there too, but the mock cluster does not enforce
//! `read_committed`, so it cannot prove the guarantee.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::KafkaConfig;
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
        let job = run_kafka(runtime, config, &kafka, topics, print_keys, stats, cancel);
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
