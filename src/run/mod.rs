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
pub mod plan;

pub use config::{Aggregation, RunConfig};
pub use layout::{RunDir, RunFile};
pub use lock::{PublishLock, RunLock};
pub use manifest::{DataRef, Manifest, ShardEntry, StageEntry};
pub use plan::Plan;

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
    /// The text of `CURRENT` that named `manifest` (empty when not known).
    current: String,
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
    /// The rows×epochs that forgetting one user of the mean row count is expected to retrain
    /// under the run's rules (the SISA paper's expectation, [`crate::plan::formula`]).
    pub fn expected_one_user_rows_epochs(&self) -> f64 {
        let rows: u64 = self.manifest.shards.iter().map(|s| s.data.rows).sum();
        let users: u64 = self.manifest.shards.iter().map(|s| s.data.users).sum();
        crate::plan::formula::users_rows_epochs(
            rows as f64,
            self.config.shards,
            &self.config.stage_epochs,
            1,
            &[rows.div_ceil(users.max(1)).max(1) as u32],
            (self.config.shard_by, self.config.slice_by),
        )
    }

    /// Open the run at `root` and check its configuration and published manifest.
    pub fn open(root: &Path) -> Result<Run> {
        let dir = RunDir::new(root);
        if !root.is_dir() {
            return Err(Error::run(root, "no such run directory"));
        }
        if !dir.path(RunFile::Config).exists() {
            return Err(Error::run(root, "not a sisa run (no run.json)"));
        }
        if !dir.path(RunFile::Current).exists() && dir.path(RunFile::Plan).exists() {
            return Err(Error::run(
                root,
                "is planned and not published yet: run its shard tasks (sisa train-shard, or the \
                 jobs sisa slurm and sisa k8s write), then sisa publish",
            ));
        }
        let (config, secret) = Run::config_and_secret(&dir)?;
        let (manifest, current) =
            Manifest::load_current_unless(&dir, None)?.expect("loaded when nothing is known");
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
            current,
            secret,
        })
    }

    /// The run's `run.json` and secret, the secret checked against the configuration.
    pub fn config_and_secret(dir: &RunDir) -> Result<(RunConfig, Secret)> {
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
        Ok((config, secret))
    }

    /// Assemble a run from parts (used while a run is being created).
    pub fn from_parts(dir: RunDir, config: RunConfig, manifest: Manifest, secret: Secret) -> Run {
        let config_digest = config.digest();
        Run {
            dir,
            config,
            config_digest,
            manifest,
            current: String::new(),
            secret,
        }
    }

    /// Re-read the published manifest if another process published since it was read
    /// (`CURRENT` names another manifest); the file is parsed only then.
    pub fn reload(&mut self) -> Result<()> {
        if let Some((m, text)) = Manifest::load_current_unless(&self.dir, Some(&self.current))? {
            self.manifest = m;
            self.current = text;
        }
        Ok(())
    }

    /// The text of `CURRENT` that named the loaded manifest (empty for a run being built).
    pub fn current_text(&self) -> &str {
        &self.current
    }

    /// This run as it would be with `manifest` published: what a plan's shard tasks read
    /// their rows and starting checkpoints through (nothing is written).
    pub fn with_manifest(&self, manifest: Manifest) -> Run {
        Run {
            manifest,
            ..self.clone()
        }
    }

    /// Publish `manifest` ([`Manifest::publish`]) and make it this run's.
    pub fn publish(&mut self, manifest: Manifest) -> Result<()> {
        self.current = manifest.publish(&self.dir)?;
        self.manifest = manifest;
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
        self.unreferenced_in(None)
    }

    /// [`Run::unreferenced_files`], looking only at the checkpoints of `shards` (every shard's
    /// when `None`), at `data/` and at the run's root: what a request that touched `shards`
    /// can have left behind.
    pub fn unreferenced_in(&self, shards: Option<&[usize]>) -> Result<Vec<PathBuf>> {
        use std::collections::HashSet;
        let m = &self.manifest;
        let name_of = |p: PathBuf| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .unwrap_or_default()
        };
        // Names to keep, per directory: readdir gives names and types without a stat.
        let mut keep_data: HashSet<String> = HashSet::new();
        for s in &m.shards {
            keep_data.insert(name_of(
                self.dir.path(RunFile::ShardData(s.shard, &s.data.digest)),
            ));
        }
        for (k, t) in m.test.iter().flatten().enumerate() {
            keep_data.insert(name_of(self.dir.path(RunFile::TestData(k, &t.digest))));
        }
        // A pending plan's files are kept too: its data, and the checkpoints its shard tasks
        // write (their temp files as well, which a task may be writing right now).
        let plan = Plan::load(&self.dir)?;
        if let Some(p) = &plan {
            for s in &p.manifest.shards {
                keep_data.insert(name_of(
                    self.dir.path(RunFile::ShardData(s.shard, &s.data.digest)),
                ));
            }
            for (k, t) in p.manifest.test.iter().flatten().enumerate() {
                keep_data.insert(name_of(self.dir.path(RunFile::TestData(k, &t.digest))));
            }
        }
        let keep_manifest = name_of(self.dir.path(RunFile::Manifest(m.version)));
        let mut out = Vec::new();
        let visit =
            |dir: &Path, keep: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>| -> Result<()> {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(Error::io(dir, e)),
                };
                for entry in entries {
                    let entry = entry.at(dir)?;
                    if !entry.file_type().at(dir)?.is_file() {
                        continue;
                    }
                    let name = entry.file_name();
                    if !name.to_str().is_some_and(keep) {
                        out.push(entry.path());
                    }
                }
                Ok(())
            };
        visit(
            &self.dir.path(RunFile::DataDir),
            &|n| keep_data.contains(n),
            &mut out,
        )?;
        let all: Vec<usize>;
        let shards = match shards {
            Some(s) => s,
            None => {
                all = (0..m.shards.len()).collect();
                &all
            }
        };
        for &k in shards {
            let Some(entry) = m.shards.get(k) else {
                continue;
            };
            let planned = plan.as_ref().and_then(|p| p.manifest.shards.get(k));
            let keep: HashSet<String> = entry
                .stages
                .iter()
                .chain(planned.iter().flat_map(|s| s.stages.iter()))
                .map(|st| format!("{}.safetensors", st.lineage.to_hex()))
                .collect();
            let writing = plan.as_ref().is_some_and(|p| p.pending_of(k).is_some());
            visit(
                &self.dir.path(RunFile::ShardCheckpoints(k)),
                &|n| keep.contains(n) || (writing && n.ends_with(".tmp")),
                &mut out,
            )?;
        }
        visit(
            self.dir.root(),
            &|n| {
                !(n.ends_with(".tmp")
                    || (layout::parse_manifest_name(n).is_some() && n != keep_manifest))
            },
            &mut out,
        )?;
        out.sort();
        Ok(out)
    }

    /// Remove every unreferenced file (see [`Run::unreferenced_files`]); returns them.
    pub fn collect_garbage(&self) -> Result<Vec<PathBuf>> {
        self.collect_garbage_in(None)
    }

    /// Remove the unreferenced files [`Run::unreferenced_in`] finds; returns them.
    pub fn collect_garbage_in(&self, shards: Option<&[usize]>) -> Result<Vec<PathBuf>> {
        let files = self.unreferenced_in(shards)?;
        let syncs = durable::DirSyncs::new();
        for f in &files {
            syncs.remove(f, "gc.remove")?;
        }
        syncs.sync()?;
        Ok(files)
    }
}
