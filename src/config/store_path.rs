//! Whether the redb session file can be written where `session.path` puts it: the gateway
//! creates the file (and missing directories) at start, so `wxgate check` tries what the
//! start will do — writing the file, or creating a file in the nearest existing directory —
//! rather than guessing from permission bits (ACLs, read-only mounts, root).

use std::fs::OpenOptions;
use std::path::Path;

/// `Ok` when the gateway will be able to create or open `path` for writing.
pub fn writable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!(
            "{} is a directory; name the session file inside it (e.g. {})",
            path.display(),
            path.join("sessions.redb").display()
        )),
        Ok(_) => OpenOptions::new()
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        Err(_) => creatable_in(nearest_existing_ancestor(path), path),
    }
}

/// The closest ancestor of `path` that exists (`.` for a bare relative file name).
fn nearest_existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .skip(1)
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .unwrap_or(Path::new("."))
}

/// Creates and removes a probe file in `dir`, where the gateway will create `path`'s
/// directories and file.
fn creatable_in(dir: &Path, path: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "cannot create {}: {} is not a directory",
            path.display(),
            dir.display()
        ));
    }
    let probe = dir.join(format!(".wxgate-check-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(file) => {
            drop(file);
            // A probe left behind is harmless; failing to remove it is not a config problem.
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot create {}: {} is not writable by this user ({e}); choose a writable directory or fix its owner",
            path.display(),
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_in_a_writable_tree_is_fine_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        assert!(writable(&dir.path().join("a/b/sessions.redb")).is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_where_a_directory_should_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let m = writable(&file.join("sessions.redb")).unwrap_err();
        assert!(m.contains("is not a directory"), "{m}");
        let m = writable(dir.path()).unwrap_err();
        assert!(m.contains("is a directory"), "{m}");
    }
}
