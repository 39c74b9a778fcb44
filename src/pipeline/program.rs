//! A program of one's own on the pipeline's runner: [`Program`] (a job's name and
//! defaults) and [`main_with`], which give a job's `main` every `pipeline` flag.
//!
//! Guarantee: such a program parses, checks and runs exactly as `pipeline` does: the same
//! flags, the same usage errors (exit code 2), the same runner, dashboard and summary.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as _, Command};

use super::cli::{DEFAULT_WINDOW, PipelineArgs, parsed, run_program};
use super::job::{Job, JobSpec, WindowConfig};

/// A program of your own on the pipeline's runner: a job's name and defaults, and every
/// `pipeline` flag. [`main_with`] is the short form.
///
/// ```no_run
/// use std::time::Duration;
/// use streamkit::pipeline::Program;
/// # use streamkit::pipeline::job::{Emitter, Job, Now, Outcome, Record};
/// # struct MyJob;
/// # impl Job for MyJob {
/// #     fn process(&mut self, _: &Record<'_>, _: Now, _: &mut Emitter) -> Outcome { Outcome::Dropped }
/// # }
///
/// fn main() -> std::process::ExitCode {
///     Program::new("my-job")
///         .about("What my job does")
///         .window(Duration::from_secs(60))
///         .run(|_config| MyJob)
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Program {
    name: &'static str,
    about: Option<&'static str>,
    window: Duration,
    output_topic: Option<&'static str>,
}

/// What a job's factory is given: the settings its flags chose.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobConfig {
    /// `--window`, `--max-out-of-orderness`, `--allowed-lateness`, `--idle-timeout` and
    /// `--max-event-time-ahead`, for a [`Windowed`](crate::pipeline::job::Windowed) job.
    pub windows: WindowConfig,
}

impl Program {
    /// A program named `name`: the program's name in `--help`, the default `--job-name`
    /// (the consumer group) and the default `--output-topic`.
    pub fn new(name: &'static str) -> Self {
        Program {
            name,
            about: None,
            window: DEFAULT_WINDOW,
            output_topic: None,
        }
    }

    /// The line `--help` starts with.
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// The default `--window` (20 s unless said).
    pub fn window(mut self, size: Duration) -> Self {
        self.window = size;
        self
    }

    /// The default `--output-topic` (the program's name unless said).
    pub fn output_topic(mut self, topic: &'static str) -> Self {
        self.output_topic = Some(topic);
        self
    }

    /// Parses the flags, logs to stderr, runs a job from `make` in every worker until the
    /// input ends (`--bounded`, files) or SIGINT/SIGTERM, prints the summary, and returns
    /// the exit code: 0, 1 for a failure, 2 for a usage error. `make` is called once per
    /// worker, and once before, to ask the job whether it is stateful.
    pub fn run<J, F>(self, make: F) -> ExitCode
    where
        J: Job + 'static,
        F: Fn(&JobConfig) -> J + Send + Sync + 'static,
    {
        // The flags' own doc would be the about line: the program's comes after them.
        let mut command =
            PipelineArgs::augment_args(Command::new(self.name).version(env!("CARGO_PKG_VERSION")))
                .about(self.about)
                // The help gives this program's window, not traffic-agg's.
                .mut_arg("window", |arg| {
                    arg.help(format!(
                        "Windowed jobs: fixed window size, aligned to the epoch (e.g. 20s, 1m) [default: {}]",
                        humantime::format_duration(self.window)
                    ))
                });
        let matches = command.get_matches_mut();
        let args: PipelineArgs = parsed(&mut command, &matches);
        let windows = match args.windows(&mut command, self.window) {
            Ok(windows) => windows,
            Err(usage) => usage.exit(),
        };
        let config = JobConfig { windows };
        let job = JobSpec::new(self.name, Some(windows), move || make(&config));
        let output = self.output_topic.unwrap_or(self.name);
        run_program(self.name, command, args, job, output)
    }
}

/// A program of your own: [`Program::new`]`(name).run(make)`. `make` builds the job, one
/// instance per worker.
///
/// ```no_run
/// use streamkit::pipeline::job::{Emitter, Job, Now, Outcome, Record};
///
/// struct Copy;
///
/// impl Job for Copy {
///     fn process(&mut self, record: &Record<'_>, _now: Now, out: &mut Emitter) -> Outcome {
///         let (key, value) = out.record();
///         key.extend_from_slice(record.key.unwrap_or_default());
///         value.extend_from_slice(record.value.unwrap_or_default());
///         Outcome::Emitted
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     streamkit::pipeline::main_with("copy", |_config| Copy)
/// }
/// ```
pub fn main_with<J, F>(name: &'static str, make: F) -> ExitCode
where
    J: Job + 'static,
    F: Fn(&JobConfig) -> J + Send + Sync + 'static,
{
    Program::new(name).run(make)
}
