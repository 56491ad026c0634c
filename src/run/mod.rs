//! A run on disk: its layout, configuration, manifests and durable writes.
//!
//! [`Run::open`] reads `run.json`, the secret and the published manifest, checking each; every
//! data file and checkpoint read through it is checked against the manifest's digests before
//! use. [`Run::collect_garbage`] removes every file the published manifest does not reference.

pub mod config;
pub mod durable;
pub mod layout;
pub mod lock;
pub mod manifest;

pub use config::{Aggregation, RunConfig};
pub use layout::{RunDir, RunFile};
pub use lock::RunLock;
pub use manifest::{DataRef, Manifest, ShardEntry, StageEntry};

use crate::checkpoint::Checkpoint;
use crate::data::{Rows, Secret, UserKey};
use crate::error::{Error, IoContext, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// An opened run: configuration, secret and the published manifest.
#[derive(Clone, Debug)]
pub struct Run {
    /// Where it lives.
    pub dir: RunDir,
    /// `run.json`.
    pub config: RunConfig,
    /// [`RunConfig::digest`] of `config`.
    pub config_digest: [u8; 32],
    /// The published manifest.
    pub manifest: Manifest,
    secret: Secret,
}

/// Which row file to write.
#[derive(Clone, Copy, Debug)]
pub enum RowsFile {
    /// A shard's rows.
    Shard(usize),
    /// A held-out bucket.
    Test(usize),
}

impl Run {
    /// Open the run at `root` and check its configuration and published manifest.
    pub fn open(root: &Path) -> Result<Run> {
        let dir = RunDir::new(root);
        if !root.is_dir() {
            return Err(Error::run(root, "no such run directory"));
        }
        if !dir.path(RunFile::Config).exists() {
            return Err(Error::run(root, "not a sisa run (no run.json)"));
        }
        let config = RunConfig::load(&dir.path(RunFile::Config))?;
        let secret_path = dir.path(RunFile::Secret);
        let secret = Secret::load(&secret_path)?;
        if secret.check_value() != config.secret_check {
            return Err(Error::corrupt(
                &secret_path,
                "does not give the check value in run.json: the secret was changed or damaged, \
                 and under another secret no user (forgotten or not) would be recognised",
            ));
        }
        let manifest = Manifest::load_current(&dir)?;
        let config_digest = config.digest();
        if manifest.config_digest != hex::encode(config_digest) {
            return Err(Error::corrupt(
                dir.path(RunFile::Manifest(manifest.version)),
                "trained under another configuration than run.json",
            ));
        }
        if manifest.shards.len() != config.shards
            || manifest
                .shards
                .iter()
                .enumerate()
                .any(|(k, s)| s.shard != k || s.stages.len() != config.slices)
        {
            return Err(Error::corrupt(
                dir.path(RunFile::Manifest(manifest.version)),
                "shard or stage count disagrees with run.json",
            ));
        }
        Ok(Run {
            dir,
            config,
            config_digest,
            manifest,
            secret,
        })
    }

    /// Assemble a run from parts (used while a run is being created).
    pub fn from_parts(dir: RunDir, config: RunConfig, manifest: Manifest, secret: Secret) -> Run {
        let config_digest = config.digest();
        Run {
            dir,
            config,
            config_digest,
            manifest,
            secret,
        }
    }

    /// Re-read the published manifest (after another process published).
    pub fn reload(&mut self) -> Result<()> {
        self.manifest = Manifest::load_current(&self.dir)?;
        Ok(())
    }

    /// The run's key for `user_id`.
    pub fn key(&self, user_id: &str) -> UserKey {
        self.secret.key(user_id)
    }

    /// The run's secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    fn read_rows(&self, path: PathBuf, expected: &DataRef, held_out: bool) -> Result<Rows> {
        let bytes = std::fs::read(&path).at(&path)?;
        let rows = Rows::decode(&path, &bytes)?;
        if hex::encode(Rows::digest_of_encoded(&bytes)) != expected.digest {
            return Err(Error::corrupt(&path, "digest does not match the manifest"));
        }
        if rows.dim != self.config.features.len() {
            return Err(Error::corrupt(
                &path,
                "feature count disagrees with run.json",
            ));
        }
        if let Some(s) = rows.slice_out_of_range(self.config.slices) {
            return Err(Error::corrupt(
                &path,
                format!(
                    "a row is in slice {s}, beyond the run's {} slices",
                    self.config.slices
                ),
            ));
        }
        let n = rows.len() as u64;
        let (train, test) = if held_out { (0, n) } else { (n, 0) };
        durable::Io::count_read(bytes.len() as u64, train, test);
        Ok(rows)
    }

    /// The rows of shard `k`, checked against the manifest.
    pub fn shard_rows(&self, k: usize) -> Result<Rows> {
        let entry = &self.manifest.shards[k].data;
        self.read_rows(
            self.dir.path(RunFile::ShardData(k, &entry.digest)),
            entry,
            false,
        )
    }

    /// The user keys of shard `k`'s rows, read from the key column alone (32 bytes a row) and
    /// checked against the manifest: which users a shard holds, without its features.
    pub fn shard_keys(&self, k: usize) -> Result<Vec<UserKey>> {
        use std::io::Read;
        let entry = &self.manifest.shards[k].data;
        let path = self.dir.path(RunFile::ShardData(k, &entry.digest));
        let len = Rows::keys_prefix_len(entry.rows);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .at(&path)?
            .take(len)
            .read_to_end(&mut bytes)
            .at(&path)?;
        let keys = Rows::decode_keys(&path, &bytes, entry.rows)?;
        if hex::encode(Rows::keys_digest_of_encoded(&bytes)) != entry.keys_digest {
            return Err(Error::corrupt(
                &path,
                "user-key column does not match the manifest",
            ));
        }
        durable::Io::count_read(bytes.len() as u64, 0, 0);
        Ok(keys)
    }

    /// The held-out rows of bucket `k`, if the run has held-out rows.
    pub fn test_bucket(&self, k: usize) -> Result<Option<Rows>> {
        match &self.manifest.test {
            None => Ok(None),
            Some(buckets) => {
                let entry = &buckets[k];
                self.read_rows(
                    self.dir.path(RunFile::TestData(k, &entry.digest)),
                    entry,
                    true,
                )
                .map(Some)
            }
        }
    }

    /// Every held-out row (all buckets, in bucket order), if the run has them.
    pub fn test_rows(&self) -> Result<Option<Rows>> {
        let Some(buckets) = &self.manifest.test else {
            return Ok(None);
        };
        let mut all = Rows::new(self.config.features.len());
        for k in 0..buckets.len() {
            if let Some(rows) = self.test_bucket(k)? {
                all.reserve(rows.len());
                for i in 0..rows.len() {
                    all.push_from(&rows, i);
                }
            }
        }
        Ok(Some(all))
    }

    /// The checkpoint of shard `k` after stage `stage` (1-based), checked against the manifest
    /// and refused unless its lineage is the one the manifest names.
    pub fn checkpoint(&self, k: usize, stage: usize) -> Result<Checkpoint> {
        let entry = &self.manifest.shards[k].stages[stage - 1];
        let path = self.dir.path(RunFile::Checkpoint(k, &entry.lineage));
        let bytes = std::fs::read(&path).at(&path)?;
        durable::Io::count_read(bytes.len() as u64, 0, 0);
        if hex::encode(Sha256::digest(&bytes)) != entry.file_digest {
            return Err(Error::corrupt(&path, "digest does not match the manifest"));
        }
        Checkpoint::decode(
            &path,
            &bytes,
            &self.config.model_config(k)?,
            k,
            &entry.lineage,
        )
    }

    /// Shard `k`'s published model (its last stage's checkpoint).
    pub fn model(&self, k: usize) -> Result<Checkpoint> {
        self.checkpoint(k, self.config.slices)
    }

    /// Write a row file (its directory's fsync is left to `syncs`); returns its manifest entry.
    pub fn store_rows(
        dir: &RunDir,
        which: RowsFile,
        rows: &Rows,
        syncs: &durable::DirSyncs,
    ) -> Result<DataRef> {
        let bytes = rows.encode();
        let digest = hex::encode(Rows::digest_of_encoded(&bytes));
        let path = match which {
            RowsFile::Shard(k) => dir.path(RunFile::ShardData(k, &digest)),
            RowsFile::Test(k) => dir.path(RunFile::TestData(k, &digest)),
        };
        syncs.write(&path, &bytes, "rows")?;
        Ok(DataRef {
            digest,
            rows: rows.len() as u64,
            users: rows.users() as u64,
            keys_digest: hex::encode(Rows::keys_digest_of_encoded(&bytes)),
        })
    }

    /// Write a checkpoint (its directory's fsync is left to `syncs`); returns its manifest
    /// entry.
    pub fn store_checkpoint(
        dir: &RunDir,
        ck: &Checkpoint,
        epochs: u32,
        rows: u64,
        syncs: &durable::DirSyncs,
    ) -> Result<StageEntry> {
        let bytes = ck.encode();
        durable::create_dir_all(&dir.path(RunFile::ShardCheckpoints(ck.shard)))?;
        syncs.write(
            &dir.path(RunFile::Checkpoint(ck.shard, &ck.lineage)),
            &bytes,
            "checkpoint",
        )?;
        Ok(StageEntry {
            lineage: ck.lineage,
            epochs,
            rows,
            file_digest: hex::encode(Sha256::digest(&bytes)),
        })
    }

    /// Every file under data/ and checkpoints/, and every manifest, that the published manifest
    /// does not reference. These are what a deletion leaves behind (tainted data, checkpoints
    /// and models) plus temp files of interrupted writes.
    pub fn unreferenced_files(&self) -> Result<Vec<PathBuf>> {
        let m = &self.manifest;
        let mut keep: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
        for s in &m.shards {
            keep.insert(self.dir.path(RunFile::ShardData(s.shard, &s.data.digest)));
            for st in &s.stages {
                keep.insert(self.dir.path(RunFile::Checkpoint(s.shard, &st.lineage)));
            }
        }
        for (k, t) in m.test.iter().flatten().enumerate() {
            keep.insert(self.dir.path(RunFile::TestData(k, &t.digest)));
        }
        keep.insert(self.dir.path(RunFile::Manifest(m.version)));
        let mut out = Vec::new();
        let visit = |dir: &Path, out: &mut Vec<PathBuf>| -> Result<()> {
            if !dir.is_dir() {
                return Ok(());
            }
            for entry in std::fs::read_dir(dir).at(dir)? {
                let path = entry.at(dir)?.path();
                if path.is_file() && !keep.contains(&path) {
                    out.push(path);
                }
            }
            Ok(())
        };
        visit(&self.dir.path(RunFile::DataDir), &mut out)?;
        let ck = self.dir.path(RunFile::CheckpointsDir);
        if ck.is_dir() {
            for entry in std::fs::read_dir(&ck).at(&ck)? {
                let path = entry.at(&ck)?.path();
                visit(&path, &mut out)?;
            }
        }
        for entry in std::fs::read_dir(self.dir.root()).at(self.dir.root())? {
            let path = entry.at(self.dir.root())?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let stale_manifest =
                layout::parse_manifest_name(name).is_some() && !keep.contains(&path);
            if path.is_file() && (stale_manifest || name.ends_with(".tmp")) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Remove every unreferenced file (see [`Run::unreferenced_files`]); returns them.
    pub fn collect_garbage(&self) -> Result<Vec<PathBuf>> {
        let files = self.unreferenced_files()?;
        let syncs = durable::DirSyncs::new();
        for f in &files {
            syncs.remove(f, "gc.remove")?;
        }
        syncs.sync()?;
        Ok(files)
    }
}
