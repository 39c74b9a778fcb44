//! Exactly-once instance ids: the name that a process's transactional ids are made of
//! (`<job>-<instance>-<worker>`), unique among the live processes of a host.
//!
//! Guarantee: two live processes on one host never run under the same instance id, so they
//! never fence each other's producers. Each id is held under an exclusive lock on a file in
//! the state directory (`<state-dir>/<job>/<instance>.lock`), released by the kernel when
//! the process ends, however it ends. With no `--instance-id`, a process takes the first
//! free slot: the host name, then `<host>-1`, `<host>-2`, ... (as Kafka Streams keeps its
//! process id in `state.dir`), so a restarted process takes its old id back and fences its
//! predecessor's open transactions. A named id that another live process holds is refused
//! at start, naming the process.
//!
//! Limit: the lock sees one host (one state directory). Two hosts given the same
//! `--instance-id` meet at the broker instead: the worker fenced by the other's producer
//! stops its process (see `transactional`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Slots tried on one host before giving up.
pub const MAX_SLOTS: usize = 1024;

/// Where the instance id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceId {
    /// `--instance-id`: this name.
    Named(String),
    /// The first free slot of `host`.
    Slot { host: String },
}

/// An instance id, held for as long as this value lives.
#[derive(Debug)]
pub struct InstanceLock {
    pub id: String,
    /// Holds the lock; closing it releases it.
    _file: File,
}

/// A name safe as one file name: `[A-Za-z0-9._-]` kept, anything else as `%XX`.
fn file_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.starts_with('.') {
        out.replace_range(0..1, "%2E");
    }
    out
}

/// Takes `id` in `folder`: `Ok(None)` when another live process holds it.
fn try_take(folder: &Path, id: &str) -> Result<Option<InstanceLock>> {
    let path = folder.join(format!("{}.lock", file_name(id)));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    // Who holds it, for the message another process gets.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(Some(InstanceLock {
        id: id.to_string(),
        _file: file,
    }))
}

/// The process that holds `id`, as its lock file says.
fn holder(folder: &Path, id: &str) -> String {
    let mut text = String::new();
    let _ = File::open(folder.join(format!("{}.lock", file_name(id))))
        .and_then(|mut f| f.read_to_string(&mut text));
    match text.trim() {
        "" => "another process".to_string(),
        pid => format!("process {pid}"),
    }
}

/// Takes this process's instance id for `job` under `state_dir` (see the module doc).
pub fn claim(state_dir: &Path, job: &str, instance: &InstanceId) -> Result<InstanceLock> {
    let folder: PathBuf = state_dir.join(file_name(job));
    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    match instance {
        InstanceId::Named(id) => try_take(&folder, id)?.ok_or_else(|| {
            Error::InvalidConfig(format!(
                "--instance-id {id} is in use by {} on this host for job {job}: two processes under one instance id fence each other's transactions; give this one another id, or none to take a free one",
                holder(&folder, id)
            ))
        }),
        InstanceId::Slot { host } => {
            for slot in 0..MAX_SLOTS {
                let id = if slot == 0 {
                    host.clone()
                } else {
                    format!("{host}-{slot}")
                };
                if let Some(lock) = try_take(&folder, &id)? {
                    return Ok(lock);
                }
            }
            Err(Error::InvalidConfig(format!(
                "every one of {MAX_SLOTS} instance ids of host {host} for job {job} is taken under {}",
                folder.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_unique_among_holders_and_come_back_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let slot = InstanceId::Slot { host: "box".into() };
        let a = claim(dir.path(), "job/1", &slot).unwrap();
        let b = claim(dir.path(), "job/1", &slot).unwrap();
        let c = claim(dir.path(), "job/1", &slot).unwrap();
        assert_eq!(
            (a.id.as_str(), b.id.as_str(), c.id.as_str()),
            ("box", "box-1", "box-2")
        );
        // Another job has slots of its own.
        assert_eq!(claim(dir.path(), "other", &slot).unwrap().id, "box");
        // A released slot (a process that ended) is taken again: a restart keeps its id.
        drop(b);
        assert_eq!(claim(dir.path(), "job/1", &slot).unwrap().id, "box-1");
        // A named id collides with a slot of the same name, and says who holds it.
        let err = claim(dir.path(), "job/1", &InstanceId::Named("box".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--instance-id box is in use by process")
                && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(a);
        assert_eq!(
            claim(dir.path(), "job/1", &InstanceId::Named("box".into()))
                .unwrap()
                .id,
            "box"
        );
        drop(c);
    }

    #[test]
    fn any_name_makes_a_safe_file_name() {
        assert_eq!(file_name("host-1.example"), "host-1.example");
        assert_eq!(file_name("../x y"), "%2E.%2Fx%20y");
    }
}
