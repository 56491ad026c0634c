//! Where a run's ledger lives, when it is not `RUN/ledger.jsonl`.
//!
//! A ledger kept outside the run (`--ledger PATH`, for backups that must not roll deletions
//! back) is recorded in `RUN/ledger-location.json` together with the last entry the run saw.
//! A run restored from a backup taken before a deletion then still knows that its ledger lives
//! elsewhere: opened without `--ledger` it refuses, naming the path, instead of reading an
//! empty ledger and serving users who asked to be forgotten. A ledger that lacks the entry the
//! run last saw (an older copy, or another run's) is refused too.

use crate::error::{Error, IoContext, Result};
use crate::run::{durable, RunDir, RunFile};
use crate::unlearn::Ledger;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FORMAT: &str = "sisa-ledger-location/1";

/// `RUN/ledger-location.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerLocation {
    /// Schema tag.
    pub format: String,
    /// Absolute path of the ledger.
    pub path: PathBuf,
    /// Number of entries the run last saw (0: none yet).
    pub seq: u64,
    /// Hash of the last entry the run saw (empty when `seq` is 0).
    pub head: String,
}

impl LedgerLocation {
    /// Read the run's record, if it has one.
    pub fn load(run_root: &Path) -> Result<Option<LedgerLocation>> {
        let path = RunDir::new(run_root).path(RunFile::LedgerLocation);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let loc: LedgerLocation = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("not a ledger location: {e}")))?;
        if loc.format != FORMAT || (loc.seq > 0) == loc.head.is_empty() {
            return Err(Error::corrupt(&path, "not a ledger location"));
        }
        Ok(Some(loc))
    }

    fn store(&self, run_root: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("plain data serializes");
        durable::write_atomic(
            &RunDir::new(run_root).path(RunFile::LedgerLocation),
            &bytes,
            "ledger_location",
        )
    }
}

/// The path as absolute as it can be made (symbolic links resolved where it exists).
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `ledger` is the run's own `RUN/ledger.jsonl`.
fn is_default(run_root: &Path, ledger: &Path) -> bool {
    absolute(ledger) == absolute(&RunDir::new(run_root).path(RunFile::Ledger))
}

/// The ledger of the run at `run_root`: `ledger` (the `--ledger` flag) if given, else the
/// run's own. Refuses to go without `ledger` when the run records that its ledger lives
/// elsewhere, and refuses another file when the run's own ledger already holds entries.
pub fn resolve(run_root: &Path, ledger: Option<&Path>) -> Result<PathBuf> {
    let own = RunDir::new(run_root).path(RunFile::Ledger);
    match (ledger, LedgerLocation::load(run_root)?) {
        (None, Some(loc)) => Err(Error::run(
            run_root,
            format!(
                "its deletion ledger lives at {} (recorded in {}); pass --ledger {0}",
                loc.path.display(),
                RunDir::new(run_root)
                    .path(RunFile::LedgerLocation)
                    .display()
            ),
        )),
        (None, None) => Ok(own),
        (Some(p), None) if !is_default(run_root, p) && own.is_file() => {
            let len = std::fs::metadata(&own).at(&own)?.len();
            if len > 0 {
                return Err(Error::run(
                    run_root,
                    format!(
                        "its deletion ledger is {}, which holds requests; --ledger {} is another file",
                        own.display(),
                        p.display()
                    ),
                ));
            }
            Ok(p.to_path_buf())
        }
        (Some(p), _) => Ok(p.to_path_buf()),
    }
}

/// Refuse `ledger` if it lacks the last entry the run saw.
pub fn check(run_root: &Path, ledger: &Ledger) -> Result<()> {
    let Some(loc) = LedgerLocation::load(run_root)? else {
        return Ok(());
    };
    if loc.seq == 0 {
        return Ok(());
    }
    let held = ledger
        .entries()
        .get(loc.seq as usize - 1)
        .is_some_and(|e| e.hash == loc.head);
    if held {
        return Ok(());
    }
    Err(Error::run(
        run_root,
        format!(
            "the ledger {} does not hold entry {} ({}) that this run has seen: it is an older \
             copy (restored from a backup?) or another run's, and using it could bring back \
             forgotten users; pass the ledger this run was used with",
            ledger.path().display(),
            loc.seq,
            loc.head.get(..16).unwrap_or(&loc.head)
        ),
    ))
}

/// Record where the run's ledger lives and its head, when it lives outside the run.
pub fn record(run_root: &Path, ledger: &Ledger) -> Result<()> {
    if is_default(run_root, ledger.path()) {
        return Ok(());
    }
    let entries = ledger.entries();
    let loc = LedgerLocation {
        format: FORMAT.into(),
        path: absolute(ledger.path()),
        seq: entries.len() as u64,
        head: entries.last().map(|e| e.hash.clone()).unwrap_or_default(),
    };
    if LedgerLocation::load(run_root)?.as_ref() != Some(&loc) {
        loc.store(run_root)?;
    }
    Ok(())
}
