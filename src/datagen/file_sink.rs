//! JSON lines into a file or stdout.
//!
//! Guarantees: the file is created (with its folders) or truncated; a slow run flushes
//! each line as soon as it is written, so `tail -f` and pipes see it; a reader that closes
//! the pipe ends the run cleanly instead of failing it.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Output;
use super::batch::EncodedBatch;
use super::sink::{Delivery, Sent, Sink};
use crate::error::{Error, Result};

pub(super) struct FileSink {
    writer: BufWriter<Box<dyn Write + Send>>,
    path: PathBuf,
    closed: bool,
    written: u64,
}

impl FileSink {
    pub(super) fn open(output: &Output) -> Result<Self> {
        let (writer, path): (Box<dyn Write + Send>, PathBuf) = match output {
            Output::Stdout => (Box::new(io::stdout()), PathBuf::from("stdout")),
            Output::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                (
                    Box::new(File::create(path).map_err(|e| Error::io(path, e))?),
                    path.clone(),
                )
            }
            Output::Kafka { topic, .. } => {
                return Err(Error::InvalidConfig(format!(
                    "topic {topic} is not a file: the Kafka sink writes it"
                )));
            }
        };
        Ok(FileSink {
            writer: BufWriter::with_capacity(1 << 20, writer),
            path,
            closed: false,
            written: 0,
        })
    }

    fn check(&mut self, result: io::Result<()>) -> Result<()> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                log::info!(
                    "{}: the reader closed the pipe; stopping",
                    self.path.display()
                );
                self.closed = true;
                Ok(())
            }
            other => other.map_err(|e| Error::io(&self.path, e)),
        }
    }
}

impl Sink for FileSink {
    fn send(&mut self, batch: &EncodedBatch, _: &CancellationToken) -> Result<Sent> {
        let result = self.writer.write_all(batch.lines());
        self.check(result)?;
        if self.closed {
            return Ok(Sent::default());
        }
        self.written += batch.len() as u64;
        Ok(Sent {
            events: batch.len() as u64,
            bytes: batch.lines().len() as u64,
        })
    }

    fn idle(&mut self, wait: Duration) -> Result<()> {
        // A slow run shows each line as soon as it is written (tail -f, pipes).
        let result = self.writer.flush();
        self.check(result)?;
        std::thread::sleep(wait);
        Ok(())
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn finish(&mut self, _: &CancellationToken) -> Result<Delivery> {
        let result = self.writer.flush();
        self.check(result)?;
        Ok(Delivery::default())
    }

    fn delivery_counts(&self) -> (u64, u64) {
        (self.written, 0)
    }
}
