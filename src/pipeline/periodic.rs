//! A named thread that runs a task at a fixed interval until it is stopped: the job's
//! watchers of the cluster (its topics, its input's end offsets), which call blocking
//! client methods and so live off the runtime.
//!
//! Guarantee: stopping (or dropping) a [`Periodic`] wakes its thread at once and joins it,
//! so a job's exit waits for no sleep, only for a task already under way; a long task
//! asks [`Stop::requested`] between its steps.

use std::ops::ControlFlow;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// The thread; dropping it stops the thread and waits for it.
pub(crate) struct Periodic {
    /// Dropped to stop the thread: its wait ends at once.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Runs `task` after `first`, then every `interval`, on a thread called `name`, until
    /// the task breaks or the `Periodic` is stopped.
    pub(crate) fn start(
        name: &str,
        first: Duration,
        interval: Duration,
        mut task: impl FnMut(&Stop<'_>) -> ControlFlow<()> + Send + 'static,
    ) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut wait = first;
                // Nothing is ever sent: the wait ends on a timeout, or when the sender is
                // dropped (a stop).
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    if task(&Stop(&stopped)).is_break() {
                        break;
                    }
                    wait = interval;
                }
            })
            .map_err(|e| Error::Kafka(format!("cannot start the {name} thread: {e}")))?;
        Ok(Periodic {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for the task under way, if any.
    pub(crate) fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Tells a task under way whether its [`Periodic`] is being stopped.
pub(crate) struct Stop<'a>(&'a mpsc::Receiver<()>);

impl Stop<'_> {
    /// Whether the stop was asked for: the task should return.
    pub(crate) fn requested(&self) -> bool {
        matches!(self.0.try_recv(), Err(TryRecvError::Disconnected))
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[test]
    fn runs_the_task_each_interval_and_stops_without_waiting_out_the_interval() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let mut periodic = Periodic::start(
            "test",
            Duration::ZERO,
            Duration::from_millis(20),
            move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        let started = Instant::now();
        while runs.load(Ordering::Relaxed) < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the task ran too few times"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A long interval: the stop must not wait it out.
        let mut slow = Periodic::start(
            "test-slow",
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        let stopping = Instant::now();
        slow.stop();
        periodic.stop();
        assert!(stopping.elapsed() < Duration::from_secs(1));
        let after = runs.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            runs.load(Ordering::Relaxed),
            after,
            "the task ran after the stop"
        );
    }

    #[test]
    fn a_task_under_way_sees_the_stop_between_its_steps() {
        let steps = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&steps);
        let mut periodic = Periodic::start(
            "test-steps",
            Duration::ZERO,
            Duration::from_secs(3600),
            move |stop| {
                // A long task: a thousand steps of 10 ms, unless stopped.
                for _ in 0..1_000 {
                    if stop.requested() {
                        break;
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        while steps.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stopping = Instant::now();
        periodic.stop();
        assert!(stopping.elapsed() < Duration::from_secs(1));
        assert!(steps.load(Ordering::Relaxed) < 1_000);
    }

    #[test]
    fn a_task_that_breaks_ends_the_thread() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let mut periodic = Periodic::start(
            "test",
            Duration::ZERO,
            Duration::from_millis(1),
            move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
                ControlFlow::Break(())
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        periodic.stop();
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }
}
