//! The run loop: pace, generate, hand to the sink, count.
//!
//! Paced runs generate on one thread, each batch when it is due (no sleep per event).
//! Unpaced runs with `threads > 1` encode chunks on worker threads and hand them to the
//! sink in chunk order, so the output is the same as on one thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::DatagenConfig;
use super::batch::{EncodedBatch, encode};
use super::metrics::LiveCounts;
use super::sink::{Sent, Sink};
use crate::error::Result;
use crate::generator::{CHUNK_EVENTS, EventSource};
use crate::pacing::{Allowance, Pacer};
use crate::progress::Progress;

/// Longest single sleep, so cancellation and deadlines are noticed promptly.
const IDLE_SLICE: Duration = Duration::from_millis(50);

/// Shortest wait between paced batches. At high rates the next event is due within
/// microseconds; waking that often costs a core. Every event due by the end of the wait is
/// emitted in the next batch, so the average rate stays exact.
const PACING_TICK: Duration = Duration::from_millis(1);

/// Most events generated and handed over in one step of the sequential loop.
const BATCH_EVENTS: u64 = 1024;

pub(super) struct Run<'a> {
    pub config: &'a DatagenConfig,
    pub source: &'a EventSource,
    pub cancel: &'a CancellationToken,
    pub started: Instant,
    pub deadline: Option<Instant>,
    pub live: &'a LiveCounts,
}

impl Run<'_> {
    /// Adds what the sink just took to the live counters, and refreshes its delivery counts.
    pub(super) fn record(&self, sink: &dyn Sink, sent: Sent) {
        self.live.generated.inc_by(sent.events);
        self.live.bytes.inc_by(sent.bytes);
        let (delivered, failed) = sink.delivery_counts();
        self.live.set_deliveries(delivered, failed);
    }

    fn should_stop(&self, sink: &dyn Sink, now: Instant) -> bool {
        self.cancel.is_cancelled() || sink.closed() || self.deadline.is_some_and(|d| now >= d)
    }

    /// One thread, paced: generates each batch when it is due.
    pub(super) fn sequential(&self, sink: &mut dyn Sink, progress: &mut Progress) -> Result<Sent> {
        let mut pacer = Pacer::new(self.config.pace, self.started);
        let mut stream = self.source.stream(0);
        let mut batch = EncodedBatch::default();
        let mut sent = Sent::default();
        loop {
            let now = Instant::now();
            let remaining = self.config.num_events.map_or(u64::MAX, |n| n - sent.events);
            if remaining == 0 || self.should_stop(sink, now) {
                return Ok(sent);
            }
            match pacer.allowance(sent.events, now) {
                Allowance::WaitUntil(due) => {
                    let until = self.deadline.map_or(due, |d| due.min(d));
                    let wait = until.saturating_duration_since(now);
                    sink.idle(wait.clamp(PACING_TICK, IDLE_SLICE))?;
                    self.record(sink, Sent::default());
                }
                Allowance::Emit(due) => {
                    batch.clear();
                    encode(
                        &mut stream,
                        self.config.clock,
                        due.min(remaining).min(BATCH_EVENTS),
                        &mut batch,
                    );
                    let accepted = sink.send(&batch, self.cancel)?;
                    self.record(sink, accepted);
                    sent.add(accepted);
                    let now = Instant::now();
                    pacer.emitted_at(now);
                    progress.update(sent.events, now, || {
                        String::from_utf8_lossy(batch.last_value()).into_owned()
                    });
                }
            }
        }
    }

    /// Unpaced, on `threads` workers: worker `w` encodes chunks `w, w + threads, ...`, and
    /// this thread hands them to the sink in chunk order.
    pub(super) fn parallel(&self, sink: &mut dyn Sink, progress: &mut Progress) -> Result<Sent> {
        let threads = self.config.threads as u64;
        let num_events = self.config.num_events;
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let receivers: Vec<_> = (0..threads)
                .map(|worker| {
                    let (tx, rx) = mpsc::sync_channel::<EncodedBatch>(2);
                    let stop = &stop;
                    scope.spawn(move || {
                        let mut chunk = worker;
                        while !stop.load(Ordering::Relaxed) {
                            let first = chunk * CHUNK_EVENTS;
                            let count = num_events.map_or(CHUNK_EVENTS, |n| {
                                n.saturating_sub(first).min(CHUNK_EVENTS)
                            });
                            if count == 0 {
                                break;
                            }
                            let mut batch = EncodedBatch::default();
                            encode(
                                &mut self.source.stream(first),
                                self.config.clock,
                                count,
                                &mut batch,
                            );
                            if tx.send(batch).is_err() {
                                break;
                            }
                            chunk += threads;
                        }
                    });
                    rx
                })
                .collect();
            let mut sent = Sent::default();
            let mut chunk = 0u64;
            let result = loop {
                if self.should_stop(sink, Instant::now()) {
                    break Ok(sent);
                }
                // A worker hangs up only after its last chunk: then every chunk was handed over.
                let Ok(batch) = receivers[(chunk % threads) as usize].recv() else {
                    break Ok(sent);
                };
                match sink.send(&batch, self.cancel) {
                    Ok(accepted) => {
                        self.record(&*sink, accepted);
                        sent.add(accepted);
                        progress.update(sent.events, Instant::now(), || {
                            String::from_utf8_lossy(batch.last_value()).into_owned()
                        });
                    }
                    Err(e) => break Err(e),
                }
                chunk += 1;
            };
            stop.store(true, Ordering::Relaxed);
            drop(receivers);
            result
        })
    }
}
