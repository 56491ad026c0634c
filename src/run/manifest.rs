//! Manifests: the published state of a run, one immutable file per ensemble version.
//!
//! `CURRENT` names the published manifest and its SHA-256; it is replaced by one atomic rename,
//! which is the moment a new ensemble version exists. A manifest lists, per shard, the digest of
//! its data file, the lineage and file digest of every stage's checkpoint, and the digest of the
//! model's weights.

use crate::error::{Error, IoContext, Result};
use crate::plan::Lineage;
use crate::run::durable;
use crate::run::layout::{manifest_name, parse_manifest_name, RunDir, RunFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Schema tag of manifests. Version 2 keeps held-out rows in one bucket per shard and the
/// digest of each row file's user-key column.
pub const MANIFEST_FORMAT: &str = "sisa-manifest/2";

/// A data file of the run: its content digest and row count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    /// SHA-256 of the file's content (the row file's trailer), hex.
    pub digest: String,
    /// Rows in the file.
    pub rows: u64,
    /// Distinct users in the file.
    pub users: u64,
    /// SHA-256 of the file's user-key column, hex: the users a file holds can be checked
    /// without reading its features.
    pub keys_digest: String,
}

/// One stage's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEntry {
    /// Lineage hash; also the checkpoint's file name.
    pub lineage: Lineage,
    /// Epochs the stage trained.
    pub epochs: u32,
    /// Rows the stage trained on (slices 1..r).
    pub rows: u64,
    /// SHA-256 of the checkpoint file, hex.
    pub file_digest: String,
}

/// One shard's published state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Shard number.
    pub shard: usize,
    /// The shard's rows.
    pub data: DataRef,
    /// Rows in each slice.
    pub slice_rows: Vec<u64>,
    /// Digest of each slice's rows (see [`crate::data::SliceIndex`]), hex: a deletion hashes
    /// again only the slices it changes.
    pub slice_digests: Vec<String>,
    /// Stages 1..R.
    pub stages: Vec<StageEntry>,
    /// SHA-256 over the final model's tensors (see [`crate::checkpoint::model_digest`]).
    pub model_digest: String,
    /// The machine kind ([`crate::machine::kind`]) that trained the final model; empty in
    /// manifests written before sisa recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine: String,
}

impl ShardEntry {
    /// Record a shard's slices: their row counts and digests.
    pub fn set_slices(&mut self, index: &crate::data::SliceIndex) {
        self.slice_rows = index.counts.clone();
        self.slice_digests = index.digests.iter().map(hex::encode).collect();
    }

    /// The recorded slice digests, if there is one per slice and each reads back.
    pub fn known_slice_digests(&self) -> Option<Vec<[u8; 32]>> {
        if self.slice_digests.len() != self.slice_rows.len() {
            return None;
        }
        self.slice_digests
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).ok().map(|_| out)
            })
            .collect()
    }

    /// Rows×epochs of training this shard from scratch.
    pub fn cost(&self) -> u64 {
        self.stages.iter().map(|s| s.rows * s.epochs as u64).sum()
    }
}

/// A published ensemble version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema tag, [`MANIFEST_FORMAT`].
    pub format: String,
    /// Ensemble version, counting from 1.
    pub version: u64,
    /// Hex digest of the run configuration it was trained under.
    pub config_digest: String,
    /// The last deletion request (ledger request number) reflected in this version; 0 if none.
    pub applied_request: u64,
    /// Digest of the ledger entry that `applied_request` was accepted in (empty if none).
    #[serde(default)]
    pub applied_entry: String,
    /// Held-out rows, if the run has them: one bucket per shard, a user's held-out rows in
    /// bucket [`crate::plan::Rules::test_bucket`] of their id.
    pub test: Option<Vec<DataRef>>,
    /// Every shard, in order.
    pub shards: Vec<ShardEntry>,
    /// Content digests ([`crate::data::batch::BatchDigest`]) of the batches `sisa add` has
    /// added, oldest first: adding one again is refused. Absent until the first add, so the
    /// manifests of runs that never added read and write back byte for byte.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_batches: Vec<String>,
}

impl Manifest {
    /// Version 1 of a new run trained under the configuration of `config_digest`.
    pub fn first(
        config_digest: &[u8; 32],
        test: Option<Vec<DataRef>>,
        shards: Vec<ShardEntry>,
    ) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            version: 1,
            config_digest: hex::encode(config_digest),
            applied_request: 0,
            applied_entry: String::new(),
            test,
            shards,
            added_batches: Vec::new(),
        }
    }

    /// Held-out rows and users over every bucket, if the run has held-out rows.
    pub fn test_totals(&self) -> Option<(u64, u64)> {
        self.test.as_ref().map(|buckets| {
            buckets
                .iter()
                .fold((0, 0), |(r, u), b| (r + b.rows, u + b.users))
        })
    }

    /// Rows×epochs of training every shard from scratch.
    pub fn full_cost(&self) -> u64 {
        self.shards.iter().map(ShardEntry::cost).sum()
    }

    /// Read the manifest that `CURRENT` names, checking its digest.
    pub fn load_current(dir: &RunDir) -> Result<Manifest> {
        let (m, _) =
            Manifest::load_current_unless(dir, None)?.expect("loaded when nothing is known");
        Ok(m)
    }

    /// [`Manifest::load_current`] with the text of `CURRENT` that named it, or `None` when
    /// `CURRENT` still reads `known`: the manifest it names is the one already loaded
    /// (`CURRENT` holds its digest).
    pub fn load_current_unless(
        dir: &RunDir,
        known: Option<&str>,
    ) -> Result<Option<(Manifest, String)>> {
        let current = dir.path(RunFile::Current);
        let text = std::fs::read_to_string(&current).at(&current)?;
        if known == Some(text.as_str()) {
            return Ok(None);
        }
        let (name, digest) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| Error::corrupt(&current, "expected '<manifest file> <sha256>'"))?;
        let version = parse_manifest_name(name)
            .ok_or_else(|| Error::corrupt(&current, format!("'{name}' is not a manifest name")))?;
        let path = dir.path(RunFile::Manifest(version));
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::corrupt(
                &current,
                format!("names {}, which cannot be read: {e}", path.display()),
            )
        })?;
        if hex::encode(Sha256::digest(&bytes)) != digest {
            return Err(Error::corrupt(
                &path,
                "digest does not match CURRENT: the manifest was modified or damaged",
            ));
        }
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("not a valid manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT || m.version != version {
            return Err(Error::corrupt(
                &path,
                "format or version does not match its name",
            ));
        }
        Ok(Some((m, text)))
    }

    /// Write this manifest and point `CURRENT` at it: the atomic publish of a version.
    /// Returns the text written to `CURRENT`.
    pub fn publish(&self, dir: &RunDir) -> Result<String> {
        // Compact: a manifest is O(S·R) entries and is written on every publish.
        let bytes = serde_json::to_vec(self).expect("serializing plain data cannot fail");
        durable::write_atomic(
            &dir.path(RunFile::Manifest(self.version)),
            &bytes,
            "publish.manifest",
        )?;
        let current = format!(
            "{} {}\n",
            manifest_name(self.version),
            hex::encode(Sha256::digest(&bytes))
        );
        durable::write_atomic(
            &dir.path(RunFile::Current),
            current.as_bytes(),
            "publish.current",
        )?;
        Ok(current)
    }
}
