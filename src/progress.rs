//! Progress on stderr, never stdout.
//!
//! A bounded run on a terminal gets an indicatif bar. Otherwise the original generator's
//! line, "N events created so far...", followed by a sample event, is printed each time the
//! count passes another multiple of the original's interval (100 in batch mode, 10 in
//! streaming), and at most once per second, so that fast runs do not flood the log.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar (bounded run, stderr is a terminal).
    Bar,
    /// The original's periodic line, every `every` events at most once per second.
    Lines {
        every: u64,
    },
    Quiet,
}

/// What bounds the run, for the bar's length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Events(u64),
    Time(Duration),
    None,
}

const MIN_LINE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Progress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    bound: Bound,
    started: Instant,
    last_line: Option<Instant>,
    last_multiple: u64,
}

impl Progress {
    pub fn new(mode: ProgressMode, bound: Bound, started: Instant) -> Self {
        let bar = match (mode, bound) {
            (ProgressMode::Bar, Bound::Events(n)) => Some(new_bar(
                n,
                "{bar:40} {human_pos}/{human_len} events  {per_sec}  eta {eta}",
            )),
            (ProgressMode::Bar, Bound::Time(d)) => Some(new_bar(
                d.as_millis() as u64,
                "{bar:40} {elapsed}/{duration}  {msg}",
            )),
            _ => None,
        };
        Progress {
            mode,
            bar,
            bound,
            started,
            last_line: None,
            last_multiple: 0,
        }
    }

    /// Reports `count` events so far; `sample` renders the latest event if a line is printed.
    pub fn update(&mut self, count: u64, now: Instant, sample: impl FnOnce() -> String) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    match self.bound {
                        Bound::Time(_) => {
                            bar.set_position(now.duration_since(self.started).as_millis() as u64);
                            bar.set_message(format!("{count} events"));
                        }
                        _ => bar.set_position(count),
                    }
                }
            }
            ProgressMode::Lines { every } => {
                let multiple = count / every.max(1);
                let due = self
                    .last_line
                    .is_none_or(|t| now.duration_since(t) >= MIN_LINE_INTERVAL);
                if multiple > self.last_multiple && due {
                    self.last_multiple = multiple;
                    self.last_line = Some(now);
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "{count} events created so far...");
                    let _ = writeln!(err, "{}", sample());
                }
            }
        }
    }

    /// Prints `text` as a line of its own on stderr, above the bar if there is one;
    /// nothing when quiet.
    pub fn line(&self, text: &str) {
        match (&self.mode, &self.bar) {
            (ProgressMode::Quiet, _) => {}
            (_, Some(bar)) => bar.println(text),
            (_, None) => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
