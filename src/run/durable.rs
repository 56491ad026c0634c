//! Durable file operations: every write is temp file, fsync, rename, fsync of the directory.
//!
//! An fsync or rename error is returned at once and never retried: after a failed fsync the
//! page cache may already have dropped the data, so the operation is abandoned and the run
//! recovers on its next start. With the `failpoints` feature, `SISA_FAILPOINT=<name>` makes the
//! process abort at the named point, so crash tests can stop the real binary at every step.

use crate::error::{Error, IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Abort the process here when `SISA_FAILPOINT` names this point (only with the `failpoints`
/// feature; otherwise does nothing). `SISA_FAILPOINT=name:n` aborts at the n-th hit (1-based).
/// `SISA_FAILPOINT=pause:name` instead waits at the point until the file named by
/// `SISA_FAILPOINT_RESUME` exists, so a test can look at a process in the middle of an operation.
/// Every point that is passed is appended to the file named by `SISA_FAILPOINT_LOG`, so a test
/// can list the points an operation goes through.
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    failpoints::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Like [`failpoint`], but returns an injected I/O error instead of aborting when
/// `SISA_FAILPOINT=error:<name>`.
#[inline]
pub fn failpoint_error(name: &str, path: &Path) -> Result<()> {
    #[cfg(feature = "failpoints")]
    if failpoints::error_requested(name) {
        return Err(Error::io(
            path,
            std::io::Error::other(format!("injected failure at {name}")),
        ));
    }
    let _ = (name, path);
    Ok(())
}

#[cfg(feature = "failpoints")]
mod failpoints {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    static HITS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    static TOTAL: AtomicU64 = AtomicU64::new(0);

    fn count(name: &str) -> u64 {
        let mut hits = HITS.lock().unwrap_or_else(|p| p.into_inner());
        match hits.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                hits.push((name.to_string(), 1));
                1
            }
        }
    }

    pub fn hit(name: &str) {
        let n = count(name);
        TOTAL.fetch_add(1, Ordering::Relaxed);
        if let Ok(log) = std::env::var("SISA_FAILPOINT_LOG") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                // One write per line, so lines from shards training side by side never
                // interleave. The log is a test aid; a failure to write it must not change
                // behaviour.
                let _ = f.write_all(format!("{name}:{n}\n").as_bytes());
            }
        }
        if let Ok(spec) = std::env::var("SISA_FAILPOINT") {
            if spec.strip_prefix("pause:") == Some(name) {
                pause(name);
                return;
            }
            let (want, nth) = match spec.rsplit_once(':') {
                Some((w, k)) if k.parse::<u64>().is_ok() => (w.to_string(), k.parse().unwrap_or(1)),
                _ => (spec.clone(), 1),
            };
            if want == name && n == nth {
                eprintln!("sisa: failpoint {name}:{n} reached, aborting");
                std::process::abort();
            }
        }
    }

    /// Wait until the file named by `SISA_FAILPOINT_RESUME` exists (forever if unset).
    fn pause(name: &str) {
        eprintln!("sisa: failpoint {name} reached, paused");
        let resume = std::env::var_os("SISA_FAILPOINT_RESUME");
        while !resume
            .as_ref()
            .is_some_and(|p| std::path::Path::new(p).exists())
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("sisa: failpoint {name} resumed");
    }

    pub fn error_requested(name: &str) -> bool {
        std::env::var("SISA_FAILPOINT").is_ok_and(|s| s.strip_prefix("error:") == Some(name))
    }
}

/// What this process has read and written through the run's files: the figures receipts
/// report. Counters only grow; [`Io::now`] takes a reading and [`Io::since`] the difference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Io {
    /// fsync calls (files and directories).
    pub fsyncs: u64,
    /// Bytes written to files.
    pub bytes_written: u64,
    /// Bytes of row files and checkpoints read.
    pub bytes_read: u64,
    /// Training rows read (rows of shard files read in full).
    pub rows_read: u64,
    /// Held-out rows read.
    pub test_rows_read: u64,
}

mod counters {
    use std::sync::atomic::AtomicU64;
    pub static FSYNCS: AtomicU64 = AtomicU64::new(0);
    pub static WRITTEN: AtomicU64 = AtomicU64::new(0);
    pub static READ: AtomicU64 = AtomicU64::new(0);
    pub static ROWS: AtomicU64 = AtomicU64::new(0);
    pub static TEST_ROWS: AtomicU64 = AtomicU64::new(0);
}

impl Io {
    /// The counters now.
    pub fn now() -> Io {
        use std::sync::atomic::Ordering::Relaxed;
        Io {
            fsyncs: counters::FSYNCS.load(Relaxed),
            bytes_written: counters::WRITTEN.load(Relaxed),
            bytes_read: counters::READ.load(Relaxed),
            rows_read: counters::ROWS.load(Relaxed),
            test_rows_read: counters::TEST_ROWS.load(Relaxed),
        }
    }

    /// What was counted since `earlier`.
    pub fn since(earlier: &Io) -> Io {
        let now = Io::now();
        Io {
            fsyncs: now.fsyncs - earlier.fsyncs,
            bytes_written: now.bytes_written - earlier.bytes_written,
            bytes_read: now.bytes_read - earlier.bytes_read,
            rows_read: now.rows_read - earlier.rows_read,
            test_rows_read: now.test_rows_read - earlier.test_rows_read,
        }
    }

    /// Count `bytes` read from a run file holding `rows` training and `test_rows` held-out rows.
    pub fn count_read(bytes: u64, rows: u64, test_rows: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        counters::READ.fetch_add(bytes, Relaxed);
        counters::ROWS.fetch_add(rows, Relaxed);
        counters::TEST_ROWS.fetch_add(test_rows, Relaxed);
    }
}

fn fsync(f: &File, path: &Path) -> Result<()> {
    counters::FSYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    f.sync_all().at(path)
}

/// Permission bits of every file a run, ledger or receipt gets: the owner's alone, whatever
/// the umask, since the run holds the remaining users' rows.
pub const FILE_MODE: u32 = 0o600;
/// Permission bits of every directory created for a run, a ledger or receipts.
pub const DIR_MODE: u32 = 0o700;

/// Open options that create files with [`FILE_MODE`].
pub fn private_options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut opts = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts
}

/// fsync a directory, so that renames and removals inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).at(dir)?;
    fsync(&d, dir)
}

/// Create `dir` (and parents) durably.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder
        .create(dir)
        .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
        .at(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Write `bytes` to `path` atomically and durably: `path.tmp`, fsync, rename, fsync the
/// directory. `point` names the failpoints along the way (`<point>.write`, `<point>.rename`,
/// `<point>.done`). The file gets [`FILE_MODE`].
pub fn write_atomic(path: &Path, bytes: &[u8], point: &str) -> Result<()> {
    let dir = write_renamed(path, bytes, point)?;
    sync_dir(&dir)?;
    failpoint(&format!("{point}.done"));
    Ok(())
}

/// Directories whose renames and removals are made durable together, once each: a step that
/// writes many files into one directory fsyncs the directory once, not once per file.
/// [`DirSyncs::sync`] must run before anything that depends on the files (a manifest naming
/// them) is written; dropping unsynced directories only loses what a crash would lose.
/// Shared by shards training side by side: the set is behind a lock, the writes are not.
#[derive(Debug, Default)]
pub struct DirSyncs {
    dirs: std::sync::Mutex<std::collections::BTreeSet<std::path::PathBuf>>,
}

impl DirSyncs {
    /// No directories yet.
    pub fn new() -> DirSyncs {
        DirSyncs::default()
    }

    /// [`write_atomic`] without the directory fsync, which [`DirSyncs::sync`] does later.
    pub fn write(&self, path: &Path, bytes: &[u8], point: &str) -> Result<()> {
        let dir = write_renamed(path, bytes, point)?;
        self.note(dir);
        Ok(())
    }

    fn note(&self, dir: std::path::PathBuf) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir);
    }

    /// [`remove_file`] without the directory fsync.
    pub fn remove(&self, path: &Path, point: &str) -> Result<()> {
        if let Some(dir) = unlink(path, point)? {
            self.note(dir.to_path_buf());
        }
        Ok(())
    }

    /// fsync every directory written to, once each.
    pub fn sync(&self) -> Result<()> {
        let dirs = std::mem::take(&mut *self.dirs.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// The temp file, fsync and rename of [`write_atomic`]; returns the directory to fsync.
fn write_renamed(path: &Path, bytes: &[u8], point: &str) -> Result<std::path::PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at(&tmp)?;
        // A temp file left by an earlier crash keeps the bits it had: set them again.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                .at(&tmp)?;
        }
        // A torn write: half the bytes reach the temp file, then the process dies.
        if cfg!(feature = "failpoints")
            && std::env::var("SISA_FAILPOINT").is_ok_and(|s| s == format!("torn:{point}"))
        {
            f.write_all(&bytes[..bytes.len() / 2]).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            eprintln!("sisa: torn write at {point}, aborting");
            std::process::abort();
        }
        f.write_all(bytes).at(&tmp)?;
        counters::WRITTEN.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        failpoint(&format!("{point}.write"));
        failpoint_error(&format!("{point}.fsync"), &tmp)?;
        fsync(&f, &tmp)?;
    }
    failpoint(&format!("{point}.rename"));
    fs::rename(&tmp, path).at(path)?;
    Ok(dir.to_path_buf())
}

/// Remove `path` durably (missing files are fine: removal is idempotent).
pub fn remove_file(path: &Path, point: &str) -> Result<()> {
    if let Some(dir) = unlink(path, point)? {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Unlink `path` after the fault point `point`; the directory whose fsync makes it durable,
/// or `None` when there was nothing to remove.
fn unlink<'p>(path: &'p Path, point: &str) -> Result<Option<&'p Path>> {
    failpoint(point);
    match fs::remove_file(path) {
        Ok(()) => Ok(path.parent()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Append one line to a file and fsync it; creates the file (durably) if needed.
pub fn append_line(path: &Path, line: &str, point: &str) -> Result<()> {
    let existed = path.exists();
    let mut f = private_options()
        .create(true)
        .append(true)
        .open(path)
        .at(path)?;
    // One write for the line and its end, so a concurrent reader never sees a line without
    // its newline (which it would take for a truncated ledger).
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    f.write_all(&buf).at(path)?;
    counters::WRITTEN.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
    failpoint(&format!("{point}.write"));
    failpoint_error(&format!("{point}.fsync"), path)?;
    fsync(&f, path)?;
    if !existed {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
    }
    failpoint(&format!("{point}.done"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one", "t").unwrap();
        write_atomic(&p, b"two", "t").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove_file(&p, "t").unwrap();
        remove_file(&p, "t").unwrap();
        append_line(&dir.path().join("l"), "x", "t").unwrap();
        append_line(&dir.path().join("l"), "y", "t").unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("l")).unwrap(), "x\ny\n");
        create_dir_all(&dir.path().join("a/b/c")).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
    }
}
