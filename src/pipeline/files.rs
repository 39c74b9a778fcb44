//! File mode: JSON lines in, one value JSON per line out, bad lines to a dead-letter file.
//!
//! The aggregation jobs read the same lines: `traffic-agg` writes one window result per
//! line as windows fire (the input is one partition; a line's number is its offset), and
//! every open window at the end of the input, as Beam does for bounded input; events for a
//! window already fired go to the dead-letter file with kind `late`. `user-traffic` writes
//! one line per user, in user order, at the end.
//!
//! Bounded by nature. The transform is the same code as in Kafka mode. The dead-letter file
//! is created on the first bad line; each of its lines is a JSON object with the line
//! number, the error, its kind and the raw text (`raw_base64` too when it is not UTF-8).
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

use base64::Engine;
use tokio_util::sync::CancellationToken;

use super::{FileConfig, Job, Stats, StatusLine, run_stages};
use crate::error::{Error, Result};
use crate::transform::{RejectKind, Rejection};
use crate::windows::{Aggregator, Now, UserTraffic, WindowResult, event_time_ms};

/// What an aggregation job holds between lines.
enum Aggregate {
    Windows(Box<Aggregator>),
    Users(UserTraffic),
}

/// Lines between two updates of the dashboard's view of the windows.
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

pub(super) fn run(
    config: &FileConfig,
    job: &Job,
    stats: &Stats,
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
    let mut lines = LineWriter {
        config,
        stats,
        output: BufWriter::with_capacity(1 << 20, output),
        output_name,
        dead_letters: None,
        key: Vec::new(),
        value: Vec::new(),
        number: 0,
        status: StatusLine::new(),
        reader_gone: false,
        aggregate: match job {
            Job::KafkaIo => None,
            Job::TrafficAgg(windows) => {
                Some(Aggregate::Windows(Box::new(Aggregator::new(windows))))
            }
            Job::UserTraffic => Some(Aggregate::Users(UserTraffic::default())),
        },
        fired: Vec::new(),
    };
    if lines.aggregate.is_some() {
        stats.set_aggregating();
    }
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

/// Where the lines go: the transform, the output and the dead-letter file.
struct LineWriter<'a> {
    config: &'a FileConfig,
    stats: &'a Stats,
    output: BufWriter<Box<dyn Write>>,
    output_name: PathBuf,
    dead_letters: Option<BufWriter<File>>,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Lines seen so far.
    number: u64,
    status: StatusLine,
    /// The output is a pipe whose reader closed it.
    reader_gone: bool,
    aggregate: Option<Aggregate>,
    /// Window results fired by the current line, written after it.
    fired: Vec<WindowResult>,
}

impl LineWriter<'_> {
    /// Transforms one line (without its `\n`) and writes the result.
    fn line(&mut self, line: &[u8]) -> Result<()> {
        self.number += 1;
        let record = line.strip_suffix(b"\r").unwrap_or(line);
        Stats::add(&self.stats.read);
        self.key.clear();
        self.value.clear();
        let outcome = if self.aggregate.is_some() {
            self.aggregate_line(record)
        } else {
            run_stages(Some(record), self.stats, &mut self.key, &mut self.value).map(|()| true)
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                self.value.push(b'\n');
                self.write_output()?;
                Stats::add(&self.stats.written);
            }
            Err(rejection) => {
                let raw_base64 = std::str::from_utf8(record)
                    .is_err()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(record));
                let entry = DeadLetterLine {
                    line: self.number,
                    kind: rejection.kind.as_str(),
                    error: &rejection.reason,
                    raw: Some(String::from_utf8_lossy(record)),
                    raw_base64,
                    size: None,
                };
                self.dead_letter(&entry)?;
            }
        }
        if !self.fired.is_empty() {
            let fired = std::mem::take(&mut self.fired);
            self.write_results(fired)?;
        }
        if self.number.is_multiple_of(FIRE_EVERY) {
            self.fire()?;
        }
        if self.number.is_multiple_of(4096) {
            self.status.maybe_print(self.stats);
        }
        Ok(())
    }

    /// Writes `self.value` to the output (a closed pipe stops the job quietly).
    fn write_output(&mut self) -> Result<()> {
        match self.output.write_all(&self.value) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                log::info!(
                    "{}: the reader closed the pipe; stopping",
                    self.output_name.display()
                );
                self.reader_gone = true;
                Ok(())
            }
            other => other.map_err(|e| Error::io(&self.output_name, e)),
        }
    }

    /// An aggregation job's line: counted (`Ok(false)`: nothing to write yet) or rejected.
    fn aggregate_line(&mut self, record: &[u8]) -> Result<bool, Rejection> {
        let stats = self.stats;
        let event = super::visit_stages(Some(record), stats)?;
        let number = self.number;
        match &mut self.aggregate {
            Some(Aggregate::Users(users)) => users.add(&event.id, event.file_size_bytes),
            Some(Aggregate::Windows(windows)) => {
                let Some(at) = event_time_ms(&event.event_datetime) else {
                    let reason = format!(
                        "event_datetime {:?} is not a time of the form YYYY-MM-DDTHH:MM:SS.fff",
                        event.event_datetime
                    );
                    stats.reject(RejectKind::InvalidField, &reason);
                    return Err(Rejection {
                        kind: RejectKind::InvalidField,
                        reason,
                    });
                };
                let now = Now::current();
                let verdict = windows.add(0, number as i64, &event.id, at, now);
                // Windows fire as soon as this line moves the watermark past them: in a
                // file, lateness depends on the order of lines only.
                self.fired.extend(windows.fire(now));
                if let Some(rejection) = super::windowed::rejection(verdict) {
                    stats.reject(rejection.kind, &rejection.reason);
                    return Err(rejection);
                }
            }
            None => {}
        }
        Stats::add(&stats.counted);
        Ok(false)
    }

    /// Writes window results (and counts them).
    fn write_results(&mut self, results: Vec<WindowResult>) -> Result<()> {
        for result in results {
            Stats::add(&self.stats.created);
            self.value.clear();
            result.write_value(&mut self.value);
            self.value.push(b'\n');
            self.write_output()?;
            Stats::add(&self.stats.written);
        }
        Ok(())
    }

    /// Fires what the watermark has passed (every [`FIRE_EVERY`] lines and when the input
    /// pauses).
    fn fire(&mut self) -> Result<()> {
        if let Some(Aggregate::Windows(windows)) = &mut self.aggregate {
            let now = Now::current();
            let results = windows.fire(now);
            self.stats.set_windows(windows.status(now));
            self.write_results(results)?;
        }
        Ok(())
    }

    /// Dead-letters a line of `size` bytes that was too long to hold, by number and size.
    fn too_large(&mut self, size: usize) -> Result<()> {
        self.number += 1;
        Stats::add(&self.stats.read);
        let reason = format!(
            "line of {size} bytes, over the {MAX_LINE_BYTES}-byte limit; skipped without its text"
        );
        self.stats.reject(RejectKind::TooLarge, &reason);
        let entry = DeadLetterLine {
            line: self.number,
            kind: RejectKind::TooLarge.as_str(),
            error: &reason,
            raw: None,
            raw_base64: None,
            size: Some(size),
        };
        self.dead_letter(&entry)
    }

    fn dead_letter(&mut self, entry: &DeadLetterLine<'_>) -> Result<()> {
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

    /// The end of the input: an aggregation job writes what it holds.
    fn finish(mut self) -> Result<()> {
        match self.aggregate.take() {
            Some(Aggregate::Windows(mut windows)) => {
                let results = windows.fire_all();
                self.stats.set_windows(windows.status(Now::current()));
                self.write_results(results)?;
            }
            Some(Aggregate::Users(users)) => {
                self.value.clear();
                users.write_lines(&mut self.value);
                let lines = users.len() as u64;
                self.stats
                    .created
                    .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
                self.write_output()?;
                self.stats
                    .written
                    .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
            }
            None => {}
        }
        self.flush()
    }
}

/// One line of the dead-letter file.
#[derive(Debug, serde::Serialize)]
struct DeadLetterLine<'a> {
    line: u64,
    kind: &'static str,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
    /// Bytes of a line too long to keep.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
}
