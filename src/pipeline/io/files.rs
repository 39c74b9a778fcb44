//! File mode: JSON lines in, one value JSON per line out, bad lines to a dead-letter file.
//!
//! The aggregation jobs read the same lines: `traffic-agg` writes one window result per
//! line as windows fire (the input is one partition; a line's number is its offset), and
//! every open window at the end of the input, as Beam does for bounded input; events for a
//! window already fired go to the dead-letter file with kind `late`. `user-traffic` writes
//! one line per user, in user order, at the end.
//!
//! Bounded by nature. The job is the same code as in Kafka mode (see [`crate::pipeline::job`]):
//! this is the file runner, which hands it one line at a time as partition 0, the line's
//! number as its offset. The dead-letter file is created on the first bad line, in the
//! format of [`crate::pipeline::dead_letter::FileLine`].
//!
//! Guarantees:
//! - The output and the dead-letter file are never the input file (refused before anything
//!   is opened for writing, so the input stays untouched).
//! - Memory is bounded: a line longer than [`MAX_LINE_BYTES`] is dead-lettered as
//!   `too_large` with its number and size only, and is skipped without being held.
//! - A reader thread reads the input in chunks, so a stdin that goes quiet neither delays
//!   the output (it is flushed whenever input pauses) nor a shutdown: on SIGINT/SIGTERM
//!   every line read so far is written and flushed, and the job stops.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::pipeline::dead_letter::FileLine;
use crate::pipeline::job::{self, Emitter, Headers, Job, JobSpec, Outcome, Record};
use crate::pipeline::{FileConfig, Stats, StatusLine};
use crate::transform::RejectKind;
use crate::windows::Now;

/// Lines between two updates of the dashboard's view of the job.
const FIRE_EVERY: u64 = 1024;

/// Longest input line taken (16 MiB; an event is about 400 bytes).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Bytes per read of the input.
const CHUNK_BYTES: usize = 1 << 20;

/// Chunks read ahead of the transform.
const CHUNKS_AHEAD: usize = 4;

/// How long input may pause before the output is flushed and cancellation is checked.
const IDLE_FLUSH: Duration = Duration::from_millis(100);

/// Refuses an output or dead-letter file that is the input file, or a dead-letter file
/// that is the output, compared as files (see [`crate::paths::same_file`]), whatever the
/// paths say.
pub fn check_distinct(config: &FileConfig) -> Result<()> {
    use crate::paths::same_file;
    let outputs = [
        ("--output", config.output.as_deref()),
        ("--dead-letter-file", Some(config.dead_letter.as_path())),
    ];
    if let Some(input) = config.input.as_deref() {
        for (flag, path) in outputs {
            if let Some(path) = path
                && same_file(path, input)
            {
                return Err(Error::InvalidConfig(format!(
                    "{flag} {} is the input file {}; writing it would destroy the input",
                    path.display(),
                    input.display()
                )));
            }
        }
    }
    if let Some(output) = config.output.as_deref()
        && same_file(output, &config.dead_letter)
    {
        return Err(Error::InvalidConfig(format!(
            "--dead-letter-file {} is the --output file",
            config.dead_letter.display()
        )));
    }
    Ok(())
}

/// What the reader thread hands over.
enum Chunk {
    Bytes(Vec<u8>),
    End,
    Failed(io::Error),
}

pub(crate) fn run(
    config: &FileConfig,
    job: &JobSpec,
    stats: &Arc<Stats>,
    cancel: &CancellationToken,
) -> Result<()> {
    check_distinct(config)?;
    let input_name = config
        .input
        .as_deref()
        .map_or_else(|| PathBuf::from("stdin"), Path::to_path_buf);
    let input: Box<dyn Read + Send> = match &config.input {
        None => Box::new(io::stdin()),
        Some(path) => Box::new(File::open(path).map_err(|e| Error::io(path, e))?),
    };
    let output_name = config
        .output
        .as_deref()
        .map_or_else(|| PathBuf::from("stdout"), Path::to_path_buf);
    let output: Box<dyn Write> = match &config.output {
        None => Box::new(io::stdout().lock()),
        Some(path) => Box::new(File::create(path).map_err(|e| Error::io(path, e))?),
    };
    let chunks = spawn_reader(input)?;
    let job = job.build(stats);
    let mut lines = LineWriter {
        config,
        stats,
        output: BufWriter::with_capacity(1 << 20, output),
        output_name,
        dead_letters: None,
        number: 0,
        status: StatusLine::new(),
        reader_gone: false,
        ticking: job.tick_interval().is_some(),
        emitter: Emitter::for_job(job.as_ref()),
        job,
        now: Now::current(),
    };
    // The start of a line whose end has not been read yet, or, once it is too long, only
    // its size so far.
    let mut partial: Vec<u8> = Vec::new();
    let mut skipped: Option<usize> = None;
    loop {
        let chunk = match chunks.recv_timeout(IDLE_FLUSH) {
            Ok(Chunk::Bytes(chunk)) => chunk,
            Ok(Chunk::End) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(size) = skipped {
                    lines.too_large(size)?;
                } else if !partial.is_empty() {
                    lines.line(&partial)?;
                }
                break;
            }
            Ok(Chunk::Failed(e)) => return Err(Error::io(&input_name, e)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lines.fire()?;
                lines.flush()?;
                if cancel.is_cancelled() {
                    break;
                }
                continue;
            }
        };
        let mut rest = chunk.as_slice();
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(size) = skipped.take() {
                lines.too_large(size + piece.len())?;
            } else if partial.is_empty() {
                lines.line(piece)?;
            } else if partial.len() + piece.len() > MAX_LINE_BYTES {
                lines.too_large(partial.len() + piece.len())?;
                partial = Vec::new();
            } else {
                partial.extend_from_slice(piece);
                lines.line(&partial)?;
                partial.clear();
            }
            if lines.reader_gone {
                return lines.finish();
            }
        }
        match &mut skipped {
            Some(size) => *size += rest.len(),
            None if partial.len() + rest.len() > MAX_LINE_BYTES => {
                skipped = Some(partial.len() + rest.len());
                partial = Vec::new();
            }
            None => partial.extend_from_slice(rest),
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    if cancel.is_cancelled() {
        log::info!(
            "stopped after line {} of {}; the rest was not read",
            lines.number,
            input_name.display()
        );
    }
    lines.finish()
}

/// Reads `input` in chunks on a thread of its own. The thread ends at the end of the input,
/// on an error, or when the receiver is gone (at the latest, its next read then ends it).
fn spawn_reader(mut input: Box<dyn Read + Send>) -> Result<mpsc::Receiver<Chunk>> {
    let (sender, receiver) = mpsc::sync_channel(CHUNKS_AHEAD);
    std::thread::Builder::new()
        .name("file-reader".into())
        .spawn(move || {
            loop {
                let mut chunk = vec![0; CHUNK_BYTES];
                let read = match input.read(&mut chunk) {
                    Ok(0) => Chunk::End,
                    Ok(n) => {
                        chunk.truncate(n);
                        Chunk::Bytes(chunk)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Chunk::Failed(e),
                };
                let last = !matches!(read, Chunk::Bytes(_));
                if sender.send(read).is_err() || last {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("file-reader thread", e))?;
    Ok(receiver)
}

/// Where the lines go: the job, the output and the dead-letter file.
struct LineWriter<'a> {
    config: &'a FileConfig,
    stats: &'a Stats,
    output: BufWriter<Box<dyn Write>>,
    output_name: PathBuf,
    dead_letters: Option<BufWriter<File>>,
    /// Lines seen so far.
    number: u64,
    status: StatusLine,
    /// The output is a pipe whose reader closed it.
    reader_gone: bool,
    job: Box<dyn Job>,
    /// The job keeps time (windows fire): after each line, as lateness in a file depends
    /// on the order of its lines only.
    ticking: bool,
    emitter: Emitter,
    /// The clocks, read once per line only for a job that keeps time.
    now: Now,
}

impl LineWriter<'_> {
    /// Hands one line (without its `\n`) to the job and writes what it emits.
    fn line(&mut self, line: &[u8]) -> Result<()> {
        self.number += 1;
        let payload = line.strip_suffix(b"\r").unwrap_or(line);
        Stats::add(&self.stats.read);
        if self.ticking {
            self.now = Now::current();
        }
        let record = Record {
            partition: 0,
            offset: self.number as i64,
            key: None,
            value: Some(payload),
            timestamp: None,
            headers: Headers::none(),
        };
        self.emitter.begin();
        let outcome = self.job.process(&record, self.now, &mut self.emitter);
        self.emitter.tally_record(&outcome);
        match outcome {
            Outcome::Emitted => self.write_emitted()?,
            Outcome::Counted | Outcome::Dropped => Stats::add(&self.stats.counted),
            Outcome::Rejected(rejection) => {
                self.stats.reject(rejection.kind, &rejection.reason);
                self.dead_letter(&FileLine::of(self.number, payload, &rejection))?;
            }
        }
        if self.ticking {
            self.emitter.begin();
            self.job.tick(self.now, &mut self.emitter);
            self.emitter.tally_results();
            self.write_emitted()?;
        }
        if self.number.is_multiple_of(FIRE_EVERY) {
            job::publish(self.job.as_ref(), self.stats, self.now);
            self.flush_tally();
        }
        if self.number.is_multiple_of(4096) {
            self.status.maybe_print(self.stats);
        }
        Ok(())
    }

    /// Writes what the job emitted, one value per line (and counts it).
    fn write_emitted(&mut self) -> Result<()> {
        let LineWriter {
            emitter,
            output,
            output_name,
            reader_gone,
            stats,
            ..
        } = self;
        for (_, value) in emitter.records() {
            if !*reader_gone {
                let written = output
                    .write_all(value)
                    .and_then(|()| output.write_all(b"\n"));
                match written {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        log::info!(
                            "{}: the reader closed the pipe; stopping",
                            output_name.display()
                        );
                        *reader_gone = true;
                    }
                    other => other.map_err(|e| Error::io(&*output_name, e))?,
                }
            }
            Stats::add(&stats.written);
        }
        Ok(())
    }

    /// Fires what is due (every time the input pauses) and refreshes the dashboard.
    fn fire(&mut self) -> Result<()> {
        if self.ticking {
            let now = Now::current();
            self.emitter.begin();
            self.job.tick(now, &mut self.emitter);
            self.emitter.tally_results();
            job::publish(self.job.as_ref(), self.stats, now);
            self.write_emitted()?;
        }
        self.flush_tally();
        Ok(())
    }

    /// Adds what the job counted (records through its operators, outputs) to the stats.
    fn flush_tally(&mut self) {
        let tally = self.emitter.take_tally();
        if !tally.is_empty() {
            self.stats.add_tally(&tally);
        }
    }

    /// Dead-letters a line of `size` bytes that was too long to hold, by number and size.
    fn too_large(&mut self, size: usize) -> Result<()> {
        self.number += 1;
        Stats::add(&self.stats.read);
        let reason = format!(
            "line of {size} bytes, over the {MAX_LINE_BYTES}-byte limit; skipped without its text"
        );
        self.stats.reject(RejectKind::TooLarge, &reason);
        let entry = FileLine {
            line: self.number,
            kind: RejectKind::TooLarge.as_str(),
            error: &reason,
            raw: None,
            raw_base64: None,
            size: Some(size),
        };
        self.dead_letter(&entry)
    }

    fn dead_letter(&mut self, entry: &FileLine<'_>) -> Result<()> {
        let path = &self.config.dead_letter;
        let writer = match &mut self.dead_letters {
            Some(writer) => writer,
            None => {
                log::warn!(
                    "line {}: {}; dead letters go to {}",
                    entry.line,
                    entry.error,
                    path.display()
                );
                let file = File::create(path).map_err(|e| Error::io(path, e))?;
                self.dead_letters.insert(BufWriter::new(file))
            }
        };
        serde_json::to_writer(&mut *writer, entry)?;
        writer.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        Stats::add(&self.stats.dead_lettered);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.reader_gone {
            match self.output.flush() {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.reader_gone = true,
                other => other.map_err(|e| Error::io(&self.output_name, e))?,
            }
        }
        if let Some(writer) = &mut self.dead_letters {
            writer
                .flush()
                .map_err(|e| Error::io(&self.config.dead_letter, e))?;
        }
        Ok(())
    }

    /// The end of the input: the job writes what it holds.
    fn finish(mut self) -> Result<()> {
        self.emitter.begin();
        self.job.finish(&mut self.emitter);
        self.emitter.tally_results();
        job::publish(self.job.as_ref(), self.stats, Now::current());
        self.flush_tally();
        self.write_emitted()?;
        self.flush()
    }
}
