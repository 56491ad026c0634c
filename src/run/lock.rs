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

/// The lock that guards publishing across machines: `RUN/PUBLISH`, created with `O_EXCL`.
///
/// A run on a shared filesystem (NFS, Lustre, a ReadWriteMany volume) is changed from many
/// machines, where advisory `flock` does not reliably exclude a process on another client.
/// Exclusive creation is atomic on every such filesystem (NFS since version 3), so the one
/// process that creates the file holds the lock; it writes its host, process id and start time
/// into it, and removes it when the last guard is dropped. Taking it never waits: a second
/// process is refused at once, told who holds it. Within one process it is re-entrant (the
/// writer of deletions, recovery and publish each take it), so nested steps never refuse
/// their own process.
///
/// A holder that died leaves the file behind. On the same host its process id shows it is
/// gone, and the lock is taken over under a `flock` on a file of this host's temporary
/// directory named after the run, so that two processes taking over at once cannot both win; a holder on another host cannot be checked
/// from here, and the message says how to clear it.
#[derive(Debug)]
pub struct PublishLock {
    path: std::path::PathBuf,
}

/// The publish locks this process holds, with how many guards each has.
static HELD: std::sync::Mutex<Vec<(std::path::PathBuf, usize)>> = std::sync::Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<(std::path::PathBuf, usize)>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who holds the publish lock, as its file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Unix time it took the lock.
    pub since: u64,
}

impl Holder {
    fn parse(text: &str) -> Option<Holder> {
        let mut it = text.split_whitespace();
        let host = it.next()?.to_string();
        let pid = it.next()?.parse().ok()?;
        let since = it.next()?.parse().ok()?;
        Some(Holder { host, pid, since })
    }
}

impl PublishLock {
    /// Take the publish lock of the run at `root`, or say who holds it.
    pub fn acquire(root: &Path) -> Result<PublishLock> {
        let base = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let path = RunDir::new(&base).path(RunFile::PublishLock);
        {
            let mut held = held();
            if let Some(entry) = held.iter_mut().find(|(p, _)| *p == path) {
                entry.1 += 1;
                return Ok(PublishLock { path });
            }
        }
        for _ in 0..3 {
            match Self::create(&path) {
                Ok(()) => {
                    held().push((path.clone(), 1));
                    return Ok(PublishLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // Released between our create and our read: try again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            let here = crate::machine::host();
            match Holder::parse(&text) {
                Some(h) if h.host == here && !crate::train::process_alive(h.pid) => {
                    Self::take_over(&base, &path, &text, h.pid)?;
                }
                Some(h) => {
                    return Err(Error::run(
                        root,
                        format!(
                            "another process is publishing or changing it (process {} on {}, since unix time {}): \
                             {} is its lock; wait for it to finish, or, if that process is gone, remove the file",
                            h.pid,
                            h.host,
                            h.since,
                            path.display()
                        ),
                    ))
                }
                None => {
                    return Err(Error::run(
                        root,
                        format!(
                            "{} is held and does not say by whom (a lock being written, or a damaged one); \
                             if no process is publishing, remove it",
                            path.display()
                        ),
                    ))
                }
            }
        }
        Err(Error::run(
            root,
            format!("could not take the publish lock {}", path.display()),
        ))
    }

    /// [`PublishLock::acquire`], or `None` when another live process holds it.
    pub fn try_acquire(root: &Path) -> Result<Option<PublishLock>> {
        match PublishLock::acquire(root) {
            Ok(lock) => Ok(Some(lock)),
            Err(Error::Run { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the lock `path` of a dead process on this host, if it still reads `stale`.
    fn take_over(base: &Path, path: &Path, stale: &str, pid: u32) -> Result<()> {
        // Only processes of this host take over (the holder's process id is checked here),
        // so the guard is a file of this host's, outside the run: a run's directory holds
        // only the run.
        use sha2::{Digest, Sha256};
        let id = hex::encode(Sha256::digest(base.as_os_str().as_encoded_bytes()));
        let guard_path = std::env::temp_dir().join(format!("sisa-publish-takeover-{}", &id[..16]));
        let guard = crate::run::durable::private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .map_err(|e| Error::io(&guard_path, e))?;
        guard.lock().map_err(|e| Error::io(&guard_path, e))?;
        match std::fs::read_to_string(path) {
            Ok(t) if t == stale => {
                eprintln!("sisa: taking over the publish lock of process {pid}, which is gone");
                crate::run::durable::remove_file(path, "publish.lock.takeover")
            }
            // Taken over (or released) by another process meanwhile: try again.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn create(path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = crate::run::durable::private_options()
            .write(true)
            .create_new(true)
            .open(path)?;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let written = writeln!(
            file,
            "{} {} {since}",
            crate::machine::host(),
            std::process::id()
        )
        .and_then(|()| file.sync_all())
        .and_then(|()| match path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        });
        if let Err(e) = written {
            // Created but not ours to keep: a lock nobody can name would hold everyone off.
            if let Err(r) = std::fs::remove_file(path) {
                eprintln!(
                    "sisa: warning: could not remove the half-written lock {}: {r}",
                    path.display()
                );
            }
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for PublishLock {
    fn drop(&mut self) {
        let last = {
            let mut held = held();
            match held.iter().position(|(p, _)| *p == self.path) {
                Some(i) if held[i].1 > 1 => {
                    held[i].1 -= 1;
                    false
                }
                Some(i) => {
                    held.remove(i);
                    true
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "sisa: warning: could not remove the publish lock {}: {e}; remove it by hand",
                    self.path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_lock_is_exclusive_reentrant_and_taken_over_from_the_dead() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let path = RunDir::new(root).path(RunFile::PublishLock);
        {
            let outer = PublishLock::acquire(root).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let holder = Holder::parse(&text).unwrap();
            assert_eq!(holder.pid, std::process::id());
            assert_eq!(holder.host, crate::machine::host());
            // Re-entrant within this process: the inner guard leaves the file in place.
            drop(PublishLock::acquire(root).unwrap());
            assert!(path.exists());
            drop(outer);
        }
        assert!(!path.exists(), "the last guard removes the lock");
        // A live holder on another host is refused, and named.
        std::fs::write(&path, "elsewhere 1 1700000000\n").unwrap();
        let err = PublishLock::acquire(root).unwrap_err().to_string();
        assert!(err.contains("process 1 on elsewhere"), "{err}");
        assert!(PublishLock::try_acquire(root).unwrap().is_none());
        // A holder on this host whose process is gone is taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(
            &path,
            format!("{} {dead} 1700000000\n", crate::machine::host()),
        )
        .unwrap();
        let lock = PublishLock::acquire(root).unwrap();
        let holder = Holder::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(holder.pid, std::process::id());
        drop(lock);
        // A lock that names nobody is refused rather than guessed about.
        std::fs::write(&path, "").unwrap();
        let err = PublishLock::acquire(root).unwrap_err().to_string();
        assert!(err.contains("does not say by whom"), "{err}");
    }
}
