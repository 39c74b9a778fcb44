//! File mode: JSON lines in, one value JSON per line out, bad lines to a dead-letter file.
//!
//! Bounded by nature. The transform is the same code as in Kafka mode. The dead-letter file
//! is created on the first bad line; each of its lines is a JSON object with the line
//! number, the error, its kind and the raw text (`raw_base64` too when it is not UTF-8).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use tokio_util::sync::CancellationToken;

use super::{FileConfig, Stats, StatusLine, run_stages};
use crate::error::{Error, Result};

pub(super) fn run(config: &FileConfig, stats: &Stats, cancel: &CancellationToken) -> Result<()> {
    let input_name = config
        .input
        .as_deref()
        .map_or_else(|| PathBuf::from("stdin"), Path::to_path_buf);
    let output_name = config
        .output
        .as_deref()
        .map_or_else(|| PathBuf::from("stdout"), Path::to_path_buf);
    let mut input: Box<dyn BufRead> = match &config.input {
        None => Box::new(io::stdin().lock()),
        Some(path) => Box::new(BufReader::with_capacity(
            1 << 20,
            File::open(path).map_err(|e| Error::io(path, e))?,
        )),
    };
    let mut output: BufWriter<Box<dyn Write>> = BufWriter::with_capacity(
        1 << 20,
        match &config.output {
            None => Box::new(io::stdout().lock()),
            Some(path) => Box::new(File::create(path).map_err(|e| Error::io(path, e))?),
        },
    );
    let mut dead_letters: Option<BufWriter<File>> = None;
    let (mut line, mut key, mut value) = (Vec::new(), Vec::new(), Vec::new());
    let mut status = StatusLine::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(&input_name, e))?
            == 0
        {
            break;
        }
        number += 1;
        let record = strip_line_end(&line);
        Stats::add(&stats.read);
        key.clear();
        value.clear();
        match run_stages(Some(record), stats, &mut key, &mut value) {
            Ok(()) => {
                value.push(b'\n');
                match output.write_all(&value) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        log::info!(
                            "{}: the reader closed the pipe; stopping",
                            output_name.display()
                        );
                        return Ok(());
                    }
                    other => other.map_err(|e| Error::io(&output_name, e))?,
                }
                Stats::add(&stats.written);
            }
            Err(rejection) => {
                let writer = match &mut dead_letters {
                    Some(writer) => writer,
                    None => {
                        log::warn!(
                            "line {number}: {rejection}; dead letters go to {}",
                            config.dead_letter.display()
                        );
                        let file = File::create(&config.dead_letter)
                            .map_err(|e| Error::io(&config.dead_letter, e))?;
                        dead_letters.insert(BufWriter::new(file))
                    }
                };
                let entry = DeadLetterLine {
                    line: number,
                    kind: rejection.kind.as_str(),
                    error: &rejection.reason,
                    raw: String::from_utf8_lossy(record),
                    raw_base64: std::str::from_utf8(record)
                        .is_err()
                        .then(|| base64::engine::general_purpose::STANDARD.encode(record)),
                };
                serde_json::to_writer(&mut *writer, &entry)?;
                writer
                    .write_all(b"\n")
                    .map_err(|e| Error::io(&config.dead_letter, e))?;
                Stats::add(&stats.dead_lettered);
            }
        }
        if number.is_multiple_of(4096) {
            if cancel.is_cancelled() {
                log::info!("stopped at line {number} of {}", input_name.display());
                break;
            }
            status.maybe_print(stats);
        }
    }
    match output.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.map_err(|e| Error::io(&output_name, e))?,
    }
    if let Some(mut writer) = dead_letters {
        writer
            .flush()
            .map_err(|e| Error::io(&config.dead_letter, e))?;
    }
    Ok(())
}

/// One line of the dead-letter file.
#[derive(Debug, serde::Serialize)]
struct DeadLetterLine<'a> {
    line: u64,
    kind: &'static str,
    error: &'a str,
    raw: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
}

/// The line without its `\n` or `\r\n`.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
