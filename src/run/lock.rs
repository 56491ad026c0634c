//! The run's lock: one process at a time recovers or changes a run.
//!
//! `RUN/LOCK` is held with an advisory `flock` for as long as a process works on the run; the
//! operating system drops it when the process ends, however it ends, so a lock is never stale.
//! A run being built (`.<name>.partial-<pid>/`) holds its own lock the same way, which is how
//! a later `sisa train` tells an abandoned build from one in progress.

use crate::error::{Error, Result};
use crate::run::{RunDir, RunFile};
use std::fs::File;
use std::path::Path;

/// An exclusive lock on a run, held while it is recovered or changed.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Open (creating, 0600) the lock file of the directory `root`.
fn lock_file(root: &Path) -> Result<(File, std::path::PathBuf)> {
    let path = RunDir::new(root).path(RunFile::Lock);
    let file = crate::run::durable::private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    Ok((file, path))
}

impl RunLock {
    /// Wait for and take the run's lock.
    pub fn acquire(root: &Path) -> Result<RunLock> {
        let (file, path) = lock_file(root)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!(
                    "sisa: waiting for another process working on {} to finish",
                    root.display()
                );
                file.lock().map_err(|e| Error::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        Ok(RunLock { _file: file })
    }

    /// Take the lock of the directory `root` if no process holds it; `None` if one does. A
    /// missing lock file counts as held by nobody.
    pub fn try_acquire(root: &Path) -> Result<Option<RunLock>> {
        let (file, path) = lock_file(root)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}
