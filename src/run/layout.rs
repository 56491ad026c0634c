//! The run directory's layout: the one place that builds paths inside a run.
//!
//! ```text
//! RUN/
//!   run.json                         config, schema version
//!   CURRENT                          names the published manifest and its digest
//!   manifest-<version>.json          per shard: data and checkpoint digests, lineages
//!   secret                           HMAC key for user keys (0600)
//!   LOCK                             locked by the process recovering or changing the run
//!   PUBLISH                          created (O_EXCL) by the one process publishing, on any machine
//!   plan.json                        the version shard tasks are training, when one is pending
//!   tasks/shard-<k>.json             what shard k's task trained for the pending plan
//!   ledger.jsonl                     deletion requests (may live elsewhere: --ledger)
//!   ledger-location.json             where the ledger lives, if elsewhere, and its last head
//!   data/shard-<k>-<digest>.rows     a shard's rows, named by their digest
//!   data/test-<k>-<digest>.rows      held-out rows of the users in bucket k
//!   checkpoints/shard-<k>/<lineage>.safetensors
//!   receipts/<request>.json
//! ```
//! No file name is ever built from a user-supplied string: shards and requests are numbers,
//! digests and lineages are hex.

use crate::plan::Lineage;
use std::path::{Path, PathBuf};

/// One file (or folder) of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunFile<'a> {
    /// `run.json`.
    Config,
    /// `CURRENT`.
    Current,
    /// `manifest-<version>.json`.
    Manifest(u64),
    /// `secret`.
    Secret,
    /// `LOCK`: held (flock) by the process that recovers or changes the run.
    Lock,
    /// `PUBLISH`: created exclusively by the process that publishes (any machine).
    PublishLock,
    /// `plan.json`: the version that shard tasks train, while one is pending.
    Plan,
    /// `tasks/`.
    TasksDir,
    /// `tasks/shard-<k>.json`: the result of shard k's task.
    TaskResult(usize),
    /// `ledger.jsonl` (the default ledger location).
    Ledger,
    /// `ledger-location.json`: where the ledger lives when it is not `ledger.jsonl`.
    LedgerLocation,
    /// `data/`.
    DataDir,
    /// `data/shard-<k>-<digest16>.rows`.
    ShardData(usize, &'a str),
    /// `data/test-<k>-<digest16>.rows`: held-out bucket k.
    TestData(usize, &'a str),
    /// `checkpoints/`.
    CheckpointsDir,
    /// `checkpoints/shard-<k>/`.
    ShardCheckpoints(usize),
    /// `checkpoints/shard-<k>/<lineage>.safetensors`.
    Checkpoint(usize, &'a Lineage),
    /// `receipts/`.
    ReceiptsDir,
    /// `receipts/<request>.json`.
    Receipt(u64),
}

/// A run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// The run's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `file` in this run.
    pub fn path(&self, file: RunFile<'_>) -> PathBuf {
        let short = |d: &str| d.get(..16).unwrap_or(d).to_string();
        match file {
            RunFile::Config => self.root.join("run.json"),
            RunFile::Current => self.root.join("CURRENT"),
            RunFile::Manifest(v) => self.root.join(manifest_name(v)),
            RunFile::Secret => self.root.join("secret"),
            RunFile::Lock => self.root.join("LOCK"),
            RunFile::PublishLock => self.root.join("PUBLISH"),
            RunFile::Plan => self.root.join("plan.json"),
            RunFile::TasksDir => self.root.join("tasks"),
            RunFile::TaskResult(k) => self.root.join("tasks").join(format!("shard-{k}.json")),
            RunFile::Ledger => self.root.join("ledger.jsonl"),
            RunFile::LedgerLocation => self.root.join("ledger-location.json"),
            RunFile::DataDir => self.root.join("data"),
            RunFile::ShardData(k, digest) => self
                .root
                .join("data")
                .join(format!("shard-{k}-{}.rows", short(digest))),
            RunFile::TestData(k, digest) => self
                .root
                .join("data")
                .join(format!("test-{k}-{}.rows", short(digest))),
            RunFile::CheckpointsDir => self.root.join("checkpoints"),
            RunFile::ShardCheckpoints(k) => {
                self.root.join("checkpoints").join(format!("shard-{k}"))
            }
            RunFile::Checkpoint(k, lineage) => self
                .root
                .join("checkpoints")
                .join(format!("shard-{k}"))
                .join(format!("{}.safetensors", lineage.to_hex())),
            RunFile::ReceiptsDir => self.root.join("receipts"),
            RunFile::Receipt(r) => self.root.join("receipts").join(format!("{r:06}.json")),
        }
    }
}

/// File name of manifest `version`.
pub fn manifest_name(version: u64) -> String {
    format!("manifest-{version:06}.json")
}

/// The version in a manifest file name, if it is one.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    name.strip_prefix("manifest-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let r = RunDir::new("r");
        assert_eq!(
            r.path(RunFile::Manifest(3)),
            Path::new("r/manifest-000003.json")
        );
        assert_eq!(parse_manifest_name("manifest-000003.json"), Some(3));
        assert_eq!(parse_manifest_name("manifest-x.json"), None);
        assert_eq!(
            r.path(RunFile::ShardData(2, "abcdef0123456789ffff")),
            Path::new("r/data/shard-2-abcdef0123456789.rows")
        );
        assert_eq!(
            r.path(RunFile::Receipt(12)),
            Path::new("r/receipts/000012.json")
        );
    }
}
