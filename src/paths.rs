//! Files a run writes, checked before it writes any: two paths that name one file, and a
//! path that cannot be written.
//!
//! Guarantee: [`same_file`] compares files, not text. Two paths that both exist are the
//! same file when they have the same device and inode (hard links, symbolic links, `./x`
//! and `x` included). A path that does not exist yet is compared by where it would be
//! created: its longest existing ancestor, resolved with its links, then the rest of the
//! path. [`check_writable`] creates nothing that it does not remove again.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `path` made absolute and resolved component by component, as the OS would walk it:
/// each prefix that exists is resolved with its links, and `..` after a prefix that does
/// not exist yet (a folder still to be created) steps back in the text.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
        }
    }
    out
}

/// Whether `a` and `b` are (or would be) one file; see the module doc.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => false,
        (Err(_), Err(_)) => resolved(a) == resolved(b),
    }
}

/// Refuses the first pair of `paths` (flag, path) that name one file, with both flags in
/// the message.
pub fn check_distinct(paths: &[(&str, &Path)]) -> Result<()> {
    for (i, (flag_a, a)) in paths.iter().enumerate() {
        for (flag_b, b) in &paths[i + 1..] {
            if same_file(a, b) {
                return Err(Error::InvalidConfig(format!(
                    "{flag_a} {} and {flag_b} {} are the same file: one would overwrite the other",
                    a.display(),
                    b.display()
                )));
            }
        }
    }
    Ok(())
}

/// Whether `path` can be written as a file now (`flag` names it in the error): not a
/// folder, in a folder that exists, and open for writing. A file this creates to find out
/// is removed again; an existing one is left as it is.
pub fn check_writable(flag: &str, path: &Path) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::InvalidConfig(format!(
            "{flag} {}: {why}",
            path.display()
        )))
    };
    if path.is_dir() {
        return refuse("is a folder; give a file name".into());
    }
    let existed = path.exists();
    match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(_) => {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            refuse("its folder does not exist".into())
        }
        Err(e) => refuse(format!("cannot be written ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_compared_as_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, "x").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let hard = dir.path().join("hard.json");
        std::fs::hard_link(&a, &hard).unwrap();
        assert!(same_file(&a, &link));
        assert!(same_file(&a, &hard));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(same_file(&a, &dir.path().join("sub/../a.json")));
        assert!(!same_file(&a, &dir.path().join("b.json")));
        // Neither exists yet: where they would be created.
        let new = dir.path().join("new/run.json");
        assert!(same_file(&new, &dir.path().join("new/./run.json")));
        assert!(same_file(&new, &link.with_file_name("new/x/../run.json")));
        assert!(!same_file(&new, &dir.path().join("new/run.html")));
        let err = check_distinct(&[("-o", &a), ("--report", &new), ("JSON", &hard)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("-o") && err.contains("JSON"), "{err}");
    }

    #[test]
    fn writability_is_checked_without_leaving_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("r.html");
        check_writable("--report", &fresh).unwrap();
        assert!(!fresh.exists(), "the probe is removed");
        std::fs::write(&fresh, "kept").unwrap();
        check_writable("--report", &fresh).unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "kept");
        let folder = check_writable("--report", dir.path())
            .unwrap_err()
            .to_string();
        assert!(folder.contains("is a folder"), "{folder}");
        let missing = check_writable("--report", &dir.path().join("nonexistent/r.html"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("folder does not exist"), "{missing}");
    }
}
