//! One record through a worker: the job processes it, and what it emits (its outputs,
//! or its dead letter) goes out through the [`Sender`](super::send::Sender) in the open
//! read batch ([`super::batches`]); and what the job emits on its own (window results,
//! watermark marks), tied to no input position.
//!
//! Guarantee: every record read is either processed once or left for its partition's next
//! owner; one delivered again by the consumer is skipped, not written twice. A record
//! with nothing to send is released at once; one with outputs, when its batch is
//! delivered.

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::task::block_in_place;

use super::deliveries::{Replay, Sends, queue};
use super::send::Input;
use super::worker::{Commit, Progress, Worker};
use crate::error::Result;
use crate::pipeline::Stats;
use crate::pipeline::job::{Headers, Outcome, Record};
use crate::windows::Now;

/// One input record in this many (by offset) has the end-to-end latency of its outputs
/// measured: from its timestamp to its batch's delivery.
const LATENCY_SAMPLE_EVERY: i64 = 8;

impl Worker {
    /// One record read: processed, or skipped when it is not this worker's to process.
    pub(super) fn take(
        &mut self,
        message: &BorrowedMessage<'_>,
        now: Now,
        progress: &mut Progress,
    ) -> Result<()> {
        let partition = message.partition();
        if !progress.partitions.contains(&partition) {
            // Assigned by the callback inside this recv(): take the news before deciding,
            // or the records would be skipped and a later commit would pass over them.
            self.handle_rebalances(progress);
        }
        if !progress.reading()
            || progress
                .revoking
                .as_ref()
                .is_some_and(|r| r.partitions.contains(&partition))
            || !progress.partitions.contains(&partition)
        {
            // Being handed over (or no longer ours): its new owner reads it from the
            // committed position.
            return Ok(());
        }
        if !progress.tracker.read(partition, message.offset()) {
            // Delivered again (a fetch restarted from a stale position): already
            // processed, not written twice.
            progress.redelivered += 1;
            if progress.redelivered == 1 || progress.redelivered.is_power_of_two() {
                log::info!(
                    "worker {}: {} partition {partition} offset {} was delivered again by the consumer; skipped ({} so far)",
                    self.id,
                    self.sender.topics.input,
                    message.offset(),
                    progress.redelivered
                );
            }
            return Ok(());
        }
        progress.at_end.remove(&partition);
        progress.finished = false;
        let inject_abort = match &mut self.commit {
            Commit::AtLeastOnce => {
                self.uncounted.read += 1;
                false
            }
            Commit::ExactlyOnce(tx) => tx.read_one(),
        };
        self.process(message, now, progress)?;
        if inject_abort && let Commit::ExactlyOnce(tx) = &mut self.commit {
            block_in_place(|| tx.inject_abort())?;
            self.sender.producer = tx.producer();
            self.rewind(progress)?;
        }
        self.abort_if_due(progress)
    }

    /// Hands one record to the job and sends what it emits, or its dead letter.
    fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        now: Now,
        progress: &mut Progress,
    ) -> Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        let timestamp = message.timestamp().to_millis();
        let record = Record {
            partition,
            offset,
            key: message.key(),
            value: message.payload(),
            timestamp,
            headers: Headers::kafka(message),
        };
        self.emitter.begin();
        let outcome = self.job.process(&record, now, &mut self.emitter);
        self.emitter.tally_record(&outcome);
        // Headers are parsed (librdkafka allocates them) only for what is sent with them.
        let forward = self.forward_headers
            && match outcome {
                Outcome::Emitted => self.job.forwards_headers(),
                Outcome::Counted | Outcome::Dropped => false,
                Outcome::Rejected(_) => true,
            };
        let input = Input {
            partition,
            offset,
            at: self.batches.next(),
            key: record.key,
            payload: record.value,
            headers: if forward { message.headers() } else { None },
        };
        let replay = if progress.refused.records.is_empty() {
            None
        } else {
            progress.refused.records.get(&(partition, offset)).cloned()
        };
        let mut sent = Sends::default();
        let (sender, stats, emitter, commit) =
            (&self.sender, &self.stats, &self.emitter, &mut self.commit);
        let result = (|| -> std::result::Result<(), KafkaError> {
            match (outcome, replay) {
                (_, Some(Replay::DeadLetter(rejection))) => {
                    stats.reject(rejection.kind, &rejection.reason);
                    queue(commit, sender.dead_letter(&input, &rejection), &mut sent)
                }
                (_, Some(Replay::Reference(rejection))) => {
                    let key = input.key;
                    let reference = sender.reference(
                        input.headers.map(|h| h.detach()),
                        input.at,
                        (partition, offset),
                        input.size(),
                        key,
                        &rejection,
                    );
                    queue(commit, reference, &mut sent)
                }
                (Outcome::Emitted, None) => {
                    for record in emitter.timed_records() {
                        queue(commit, sender.output(&input, record, stats), &mut sent)?;
                    }
                    Ok(())
                }
                (Outcome::Counted | Outcome::Dropped, None) => {
                    match commit {
                        Commit::AtLeastOnce => Stats::add(&stats.counted),
                        Commit::ExactlyOnce(tx) => tx.open.counted += 1,
                    }
                    Ok(())
                }
                (Outcome::Rejected(rejection), None) => {
                    stats.reject(rejection.kind, &rejection.reason);
                    queue(commit, sender.dead_letter(&input, &rejection), &mut sent)
                }
            }
        })();
        if sent.records > 0
            && let Some(at) = input.at
        {
            let sample = (sent.outputs > 0 && offset % LATENCY_SAMPLE_EVERY == 0)
                .then_some(timestamp)
                .flatten();
            self.batches.sent(
                at,
                (partition, offset),
                (sent.records, sent.outputs),
                sample,
            );
        }
        // At least once, a record is released when its batch is delivered; exactly once,
        // deliveries are only counted: the commit waits for them.
        let awaited = if self.awaits_deliveries() {
            sent.records
        } else {
            self.sent += u64::from(sent.records);
            0
        };
        if awaited == 0 {
            progress.tracker.delivered(partition, offset);
        }
        progress.in_flight += awaited as usize;
        result.or_else(|e| self.send_failed(&e, progress))
    }

    /// Sends what the job emitted on its own (window results): tied to no input position.
    pub(super) fn send_results(&mut self, progress: &mut Progress) -> Result<()> {
        self.emitter.tally_results();
        self.flush_tally();
        if self.emitter.is_empty() {
            return Ok(());
        }
        self.begin()?;
        let mut sent = Sends::default();
        let mut result = Ok(());
        for (key, value) in self.emitter.records() {
            let refused = progress.refused.results.get_mut(key);
            let destination = match refused {
                Some((rejection, in_transaction)) => {
                    *in_transaction = true;
                    self.sender.result_dead_letter(key, value, rejection)
                }
                None => self.sender.result(key, value, &self.stats),
            };
            result = queue(&mut self.commit, destination, &mut sent);
            if result.is_err() {
                break;
            }
        }
        // Results stand for no input position: their deliveries are counted, not reported.
        self.sent += u64::from(sent.records);
        result.or_else(|e| self.send_failed(&e, progress))
    }

    /// Sends what the job has to tell every partition of the output (the first stage of a
    /// grouped job: its watermark mark), if anything: standing for no input position, and
    /// after every record this worker sent before it.
    pub(super) fn send_broadcast(&mut self, now: Now, progress: &mut Progress) -> Result<()> {
        if self.sender.broadcast_partitions <= 0 {
            return Ok(());
        }
        let Some(value) = self.job.broadcast(now) else {
            return Ok(());
        };
        self.begin()?;
        let mut sent = Sends::default();
        let mut result = Ok(());
        for partition in 0..self.sender.broadcast_partitions {
            result = queue(
                &mut self.commit,
                self.sender.mark(partition, &value),
                &mut sent,
            );
            if result.is_err() {
                break;
            }
        }
        self.sent += u64::from(sent.records);
        result.or_else(|e| self.send_failed(&e, progress))
    }
}
