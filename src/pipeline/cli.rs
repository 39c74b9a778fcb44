//! The flags of `pipeline` and of every program built on `main_with`: one
//! [`PipelineArgs`], checked and turned into the plain config the runner takes. With
//! `datagen`'s, the one place the library reads argv and the environment (through clap's
//! `env`, and RUST_LOG).
//!
//! A usage error (a bad value, flags that conflict, a flag the job cannot take) exits
//! with code 2 and says why, as clap does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{KafkaArgs, parse_duration, parse_duration_or_zero, parse_rate};
use crate::kafka::{GroupConfig, GroupProtocol, LOCAL_BOOTSTRAP_SERVERS};
use crate::pipeline::job::{JobKind, JobSpec, WindowConfig};
use crate::pipeline::{
    self, Cluster, DemoConfig, ExactlyOnce, FileConfig, Guarantee, InstanceId, PipelineConfig,
    Source, Topics,
};
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches, Parser};

const AFTER_HELP: &str = "Where it runs:
  no address       an embedded Kafka cluster in the process, fed by a demo generator (Ctrl-C stops)
  --use-own        the local cluster at localhost:29092 (see setup/)
  --bootstrap-servers / BOOTSTRAP_SERVERS   any cluster; wins over both
  --input PATH     files instead of Kafka

Examples:
  pipeline                                   # the article's demo, self-contained
  pipeline --use-own                         # the article's `python section3/kafka_io.py --use_own`
  pipeline --use-own --bounded               # drain website-visit once, print the summary, exit
  pipeline --input fixtures/website-visit.jsonl --output -
  pipeline --use-own --job traffic-agg       # the article's `python section3/traffic_agg.py --use_own`
  pipeline --input inputs/x.out --job user-traffic   # `python section2/user_traffic.py`";

/// Read website-visit events, parse them into EventLog records, write them to website-out.
#[derive(Debug, Parser)]
#[command(name = "pipeline", version, after_help = AFTER_HELP)]
struct BuiltinArgs {
    /// The job: kafka-io (parse and republish each event), traffic-agg (page views per user
    /// in event-time windows) or user-traffic (page views and bytes per user; files only)
    #[arg(long, value_enum, default_value_t = JobArg::KafkaIo)]
    job: JobArg,

    #[command(flatten)]
    args: PipelineArgs,
}

/// Every flag of `pipeline` but `--job`: where the job reads and writes (Kafka or files),
/// its guarantee, its group, its windows, its dashboard, and `-X` last. A program built on
/// `main_with` takes them all.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PipelineArgs {
    /// Job name; also the consumer group its positions are committed under [default: the job]
    #[arg(long)]
    job_name: Option<String>,

    /// at-least-once (the default) or exactly-once: transactions that commit the output,
    /// the dead letters and the input positions together (Kafka Streams' names)
    #[arg(long, value_enum, default_value_t = GuaranteeArg::AtLeastOnce)]
    processing_guarantee: GuaranteeArg,

    /// How often positions are committed, in milliseconds [default: 100 with exactly-once,
    /// as in Kafka Streams; else --checkpointing-interval]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000), allow_negative_numbers = true)]
    commit_interval: Option<u64>,

    /// Exactly-once: this process instance's name in its transactional ids
    /// (<job>-<instance>-<worker>), kept across restarts so a restart fences its
    /// predecessor; refused while another process of this host runs under it [default: the
    /// host name, or <host>-N for the first slot N no live process of this host holds]
    #[arg(long, value_name = "ID")]
    instance_id: Option<String>,

    /// Exactly-once: where instance ids are held under locks (one folder per host)
    /// [default: <temp dir>/streamkit]
    #[arg(long, env = "STREAMKIT_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Test hook: kafka-io at least once forwards no input header, as Flink's and Beam's
    /// Kafka sinks do
    #[arg(long, hide = true)]
    drop_input_headers: bool,

    /// Test hook: abort the first transaction that holds N records, once
    #[arg(long, hide = true, value_name = "N")]
    inject_abort_after: Option<u64>,

    /// Windowed jobs: fixed window size, aligned to the epoch (e.g. 20s, 1m) [default: the
    /// job's; traffic-agg 20s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    window: Option<Duration>,

    /// Windowed jobs: how far an event may trail the latest event time of its partition and
    /// still count (the watermark's bounded out-of-orderness)
    #[arg(long, default_value = "5s", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    max_out_of_orderness: Duration,

    /// Windowed jobs: how long after a window's end it still takes events; later ones are
    /// dead-lettered as `late` (0, as in Beam)
    #[arg(long, default_value = "0s", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    allowed_lateness: Duration,

    /// Windowed jobs: a partition with no record for this long does not hold the watermark back
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Duration,

    /// Windowed jobs: an event stamped further than this past the wall clock is dead-lettered
    /// as `future` and moves no watermark (the watermark itself never passes the clock)
    #[arg(long, default_value = "1h", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    max_event_time_ahead: Duration,

    /// Windowed jobs on Kafka: the input is keyed by the grouping key already, so count
    /// where it is read, without the repartition topic <job-name>-repartition (one worker
    /// per process)
    #[arg(long)]
    no_repartition: bool,

    /// Windowed jobs on Kafka: partitions of <job-name>-repartition when the job creates
    /// it [default: the input's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10_000))]
    repartition_partitions: Option<u16>,

    /// Workers in this process, sharing its partitions (more processes with the same
    /// --job-name share the partitions between them) [default: 3; a windowed job: 1]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64), allow_negative_numbers = true)]
    parallelism: Option<u16>,

    /// Consumer-group protocol: classic (cooperative-sticky, every broker) or consumer
    /// (KIP-848, Kafka 4+); -X group.protocol=... says the same
    #[arg(long, value_enum, default_value_t = GroupProtocolArg::Classic)]
    group_protocol: GroupProtocolArg,

    /// Classic protocol: how long the group waits for a silent member before moving its
    /// partitions, in milliseconds [default: librdkafka's, 45000]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000), allow_negative_numbers = true)]
    session_timeout: Option<u64>,

    /// Static membership: the process joins as ID, and a restart within the session
    /// timeout gets its partitions back without a rebalance
    #[arg(long, value_name = "ID")]
    group_instance_id: Option<String>,

    /// How often delivered positions are committed, in milliseconds (up to one day)
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000), allow_negative_numbers = true, value_name = "MS")]
    checkpointing_interval: u64,

    /// Stop once every input partition has been read to its end, print the summary, exit 0
    #[arg(long)]
    bounded: bool,

    /// Use the local cluster started by setup/ (localhost:29092) instead of an embedded one
    #[arg(long, conflicts_with = "input")]
    use_own: bool,

    /// Topic to read
    #[arg(long, default_value = "website-visit")]
    input_topic: String,

    /// Topic to write [default: the job's: website-out for kafka-io, traffic-agg for
    /// traffic-agg]
    #[arg(long)]
    output_topic: Option<String>,

    /// Topic for records that cannot be parsed, with headers naming the error and source
    #[arg(long, default_value = "website-visit-dlq")]
    dead_letter_topic: String,

    /// Print each republished key on stdout, as the original does [default: on in the embedded demo]
    #[arg(long)]
    print_keys: bool,

    /// Embedded demo: users of the in-process generator (1 to 10,000,000)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000_000), allow_negative_numbers = true)]
    demo_users: u32,

    /// Embedded demo: events per second of the in-process generator (0.1 to 1e9)
    #[arg(long, default_value_t = 2.0, value_parser = parse_rate, allow_negative_numbers = true, value_name = "EVENTS_PER_SEC")]
    demo_rate: f64,

    /// File mode: read JSON lines from PATH (`-` for stdin) instead of Kafka
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,

    /// File mode: write one value JSON per line to PATH (`-` for stdout)
    #[arg(long, value_name = "PATH", default_value = "-", requires = "input")]
    output: PathBuf,

    /// File mode: write bad lines, with their line number and error, to PATH
    #[arg(
        long,
        value_name = "PATH",
        default_value = "website-visit-dlq.jsonl",
        requires = "input"
    )]
    dead_letter_file: PathBuf,

    /// Serve the dashboard, its JSON (/api/job) and Prometheus metrics (/metrics) here; the
    /// next free port is used if this one is taken
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "HOST:PORT")]
    ui_addr: std::net::SocketAddr,

    /// No dashboard or metrics server
    #[arg(long, conflicts_with = "ui_addr")]
    no_ui: bool,

    /// Serve the topic browser (/topics) even when --ui-addr is not a loopback address [default: on for loopback addresses only]
    #[arg(long, conflicts_with = "no_topic_browser")]
    topic_browser: bool,

    /// No topic browser; the dashboard and /metrics stay
    #[arg(long)]
    no_topic_browser: bool,

    /// Let the topic browser read the cluster's internal topics (__consumer_offsets,
    /// __transaction_state, ...), which it otherwise treats as absent
    #[arg(long)]
    browse_internal_topics: bool,

    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GuaranteeArg {
    AtLeastOnce,
    ExactlyOnce,
}

/// The host's name, the default instance id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum JobArg {
    KafkaIo,
    TrafficAgg,
    UserTraffic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GroupProtocolArg {
    Classic,
    Consumer,
}

/// `-` means stdin or stdout: `None`.
fn dash_is_std(path: &Path) -> Option<PathBuf> {
    (path.as_os_str() != "-").then(|| path.to_path_buf())
}

impl PipelineArgs {
    /// The window settings the flags give, `default_size` unless `--window` says.
    pub(super) fn windows(
        &self,
        command: &mut Command,
        default_size: Duration,
    ) -> Result<WindowConfig, clap::Error> {
        let size = self.window.unwrap_or(default_size);
        if size.is_zero() {
            return Err(command.error(
                clap::error::ErrorKind::InvalidValue,
                "--window must be at least 1ms",
            ));
        }
        Ok(WindowConfig {
            size,
            max_out_of_orderness: self.max_out_of_orderness,
            allowed_lateness: self.allowed_lateness,
            idle_timeout: self.idle_timeout,
            max_event_time_ahead: self.max_event_time_ahead,
        })
    }

    /// The runner's config for `job`, writing to `default_output` unless
    /// `--output-topic` says; a usage error (exit code 2) when the flags do not fit.
    fn into_config(
        self,
        command: &mut Command,
        job: JobSpec,
        default_output: &str,
    ) -> Result<PipelineConfig, clap::Error> {
        // A stateful job keeps each key's state in one place: split over workers without
        // the repartition topic, a key's window would be counted in parts.
        let single_stage = !job.grouped || self.no_repartition || self.input.is_some();
        let parallelism = match self.parallelism {
            Some(n) if n > 1 && job.stateful && single_stage => {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{} runs one worker per process (--parallelism 1) {}: its windows count each key's events in one place, and {n} workers would each write a partial result for the same window",
                        job.name,
                        if self.no_repartition { "with --no-repartition" } else { "here" }
                    ),
                ));
            }
            Some(n) => usize::from(n),
            None if job.stateful || job.aggregates => 1,
            None => 3,
        };
        let guarantee = match self.processing_guarantee {
            GuaranteeArg::AtLeastOnce if self.inject_abort_after.is_some() => {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--inject-abort-after needs --processing-guarantee exactly-once",
                ));
            }
            GuaranteeArg::AtLeastOnce => Guarantee::AtLeastOnce,
            GuaranteeArg::ExactlyOnce if self.input.is_some() => {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--processing-guarantee exactly-once needs Kafka: files have no transactions",
                ));
            }
            GuaranteeArg::ExactlyOnce => Guarantee::ExactlyOnce(ExactlyOnce {
                instance: match &self.instance_id {
                    Some(id) => InstanceId::Named(id.clone()),
                    None => InstanceId::Slot { host: host_name() },
                },
                state_dir: self
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("streamkit")),
                inject_abort_after: self.inject_abort_after,
            }),
        };
        let commit_interval = match (self.commit_interval, &guarantee) {
            (Some(ms), _) => ms,
            (None, Guarantee::ExactlyOnce(_)) => 100,
            (None, Guarantee::AtLeastOnce) => self.checkpointing_interval,
        };
        let without_kafka = self.input.is_some().then_some("file mode (--input)");
        if let Err(message) = self.kafka.check(without_kafka) {
            return Err(command.error(clap::error::ErrorKind::InvalidValue, message));
        }
        // `-X group.protocol=...` is librdkafka's own name for --group-protocol; the last word wins.
        let protocol = match self
            .kafka
            .properties
            .iter()
            .rev()
            .find(|(key, _)| key == "group.protocol")
            .map(|(_, value)| value.as_str())
        {
            Some("consumer") => GroupProtocolArg::Consumer,
            Some("classic") => GroupProtocolArg::Classic,
            Some(other) => {
                return Err(command.error(
                    clap::error::ErrorKind::InvalidValue,
                    format!("-X group.protocol={other}: expected classic or consumer"),
                ));
            }
            None => self.group_protocol,
        };
        let protocol = match protocol {
            GroupProtocolArg::Classic => GroupProtocol::Classic {
                session_timeout: self.session_timeout.map(Duration::from_millis),
            },
            GroupProtocolArg::Consumer if self.session_timeout.is_some() => {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--session-timeout applies to the classic protocol; with KIP-848 the broker sets it (group.consumer.session.timeout.ms)",
                ));
            }
            GroupProtocolArg::Consumer => GroupProtocol::Consumer,
        };
        // Exactly-once adds static membership under its instance id (see `transactional`).
        let group = GroupConfig {
            protocol,
            instance_id: self.group_instance_id.clone(),
        };
        let topics = Topics {
            input: self.input_topic,
            output: self
                .output_topic
                .unwrap_or_else(|| default_output.to_string()),
            dead_letter: self.dead_letter_topic,
        };
        let source = if let Some(input) = &self.input {
            let files = FileConfig {
                input: dash_is_std(input),
                output: dash_is_std(&self.output),
                dead_letter: self.dead_letter_file,
            };
            if let Err(e) = pipeline::check_files(&files) {
                return Err(command.error(clap::error::ErrorKind::ArgumentConflict, e.to_string()));
            }
            Source::Files(files)
        } else {
            // An explicit address wins, then --use-own, then the embedded cluster.
            let explicit = self.kafka.bootstrap_servers.is_some();
            if !explicit && !self.use_own {
                if self.bounded {
                    return Err(command.error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--bounded needs a cluster to drain (--use-own or --bootstrap-servers) or --input; the embedded demo runs until stopped",
                    ));
                }
                let demo = DemoConfig {
                    users: self.demo_users,
                    rate: self.demo_rate,
                    properties: self.kafka.properties,
                };
                Source::Kafka {
                    cluster: Cluster::Embedded(demo),
                    topics,
                    print_keys: true,
                }
            } else {
                let kafka = self.kafka.to_config(LOCAL_BOOTSTRAP_SERVERS);
                Source::Kafka {
                    cluster: Cluster::External(kafka),
                    topics,
                    print_keys: self.print_keys,
                }
            }
        };
        Ok(PipelineConfig {
            job_name: self.job_name.unwrap_or_else(|| job.name.clone()),
            job,
            guarantee,
            parallelism,
            group,
            checkpointing_interval: Duration::from_millis(commit_interval),
            bounded: self.bounded,
            source,
            ui: (!self.no_ui).then_some(self.ui_addr),
            topic_browser: match (self.topic_browser, self.no_topic_browser) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            browse_internal_topics: self.browse_internal_topics,
            drop_input_headers: self.drop_input_headers,
            repartition: !self.no_repartition,
            repartition_partitions: self.repartition_partitions.map(i32::from),
        })
    }
}

/// The `pipeline` program: the built-in jobs (`--job`) with every flag. Parses the flags,
/// logs to stderr, runs, and maps the outcome to an exit code (2 for a usage error).
pub fn main() -> ExitCode {
    let mut command = BuiltinArgs::command();
    let matches = command.get_matches_mut();
    let BuiltinArgs { job, args } = parsed(&mut command, &matches);
    let windows = match args.windows(&mut command, DEFAULT_WINDOW) {
        Ok(windows) => windows,
        Err(usage) => usage.exit(),
    };
    let (kind, output) = match job {
        JobArg::KafkaIo => (JobKind::KafkaIo, "website-out"),
        JobArg::TrafficAgg => (JobKind::TrafficAgg(windows), "traffic-agg"),
        JobArg::UserTraffic if args.input.is_none() => command
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--job user-traffic is a batch job over files: give --input PATH",
            )
            .exit(),
        JobArg::UserTraffic => (JobKind::UserTraffic, "website-out"),
    };
    run_program("pipeline", command, args, JobSpec::builtin(kind), output)
}

/// kafka-io's runner config from `pipeline`'s flags `args` (the program name first), for
/// tests of what the runner makes of them.
#[cfg(test)]
pub(crate) fn kafka_io_config(args: &[&str]) -> Result<PipelineConfig, clap::Error> {
    let mut command = BuiltinArgs::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let BuiltinArgs { args, .. } = BuiltinArgs::from_arg_matches(&matches)?;
    let job = JobSpec::builtin(JobKind::KafkaIo);
    args.into_config(&mut command, job, "website-out")
}

/// traffic-agg's window, as the original's.
pub(super) const DEFAULT_WINDOW: Duration = Duration::from_secs(20);

/// Flags parsed into `T`, or the usage error's exit.
pub(super) fn parsed<T: FromArgMatches>(command: &mut Command, matches: &ArgMatches) -> T {
    T::from_arg_matches(matches).unwrap_or_else(|e| e.format(command).exit())
}

/// Starts logging and the signal handlers, checks the flags, runs, and says how it went.
pub(super) fn run_program(
    program: &'static str,
    mut command: Command,
    args: PipelineArgs,
    job: JobSpec,
    default_output: &str,
) -> ExitCode {
    let cancel = match crate::cli::start(
        program,
        std::env::var("RUST_LOG").ok().as_deref(),
        pipeline::DRAIN_TIMEOUT,
    ) {
        Ok(cancel) => cancel,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match args.into_config(&mut command, job, default_output) {
        Ok(config) => config,
        Err(usage) => usage.exit(),
    };
    match pipeline::run(&config, &cancel) {
        Ok(summary) => {
            eprintln!("{program}: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
