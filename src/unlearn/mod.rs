//! Unlearning: the ledger, the planner, the executor, receipts and recovery.
//!
//! A request goes accepted → planned → erased → retrained → published → cleaned → receipt
//! written → done, each step recorded in the ledger once it is durable. Every step is
//! idempotent (files are named by their content or lineage, the manifest by its version), so a
//! request interrupted anywhere is completed by running it again, which every command that
//! opens a run does first ([`open`]).

pub mod add;
pub mod ledger;
pub mod location;
pub mod plan;
pub mod receipt;

pub use ledger::{Event, Ledger, RequestId};
pub use plan::{plan_unlearning, ShardPlan, UnlearnPlan};
pub use receipt::Receipt;

use crate::checkpoint::Checkpoint;
use crate::data::{Rows, UserKey};
use crate::error::{Error, Result};
use crate::run::durable::{self, failpoint};
use crate::run::{RowsFile, Run, RunFile};
use crate::train::{self, Job, Progress, ShardData};
use ledger::ShardBefore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How long-running steps run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads for retraining.
    pub threads: usize,
    /// Draw progress bars.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: train::default_threads(),
            progress: false,
        }
    }
}

pub use crate::run::RunLock;

/// The ledger path of a run: `--ledger` if given, else `RUN/ledger.jsonl`.
pub fn ledger_path(run_root: &Path, ledger: Option<&Path>) -> PathBuf {
    ledger
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::run::RunDir::new(run_root).path(RunFile::Ledger))
}

/// What [`recover`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recovery {
    /// Requests completed (interrupted, or re-applied after a rollback).
    pub completed: Vec<RequestId>,
    /// Unreferenced files removed.
    pub removed_files: Vec<PathBuf>,
}

/// Open a run for use: lock it, read the ledger, complete unfinished requests, re-apply any
/// request a restored backup rolled back, and remove files the manifest does not reference.
/// The lock is held until the returned [`RunLock`] is dropped.
pub fn open(
    root: &Path,
    ledger: Option<&Path>,
    opts: &Options,
) -> Result<(Run, Ledger, RunLock, Recovery)> {
    if !root.is_dir() {
        return Err(Error::run(root, "no such run directory"));
    }
    let lock = RunLock::acquire(root)?;
    let mut run = Run::open(root)?;
    let mut ledger = Ledger::open(&location::resolve(root, ledger)?)?;
    location::check(root, &ledger)?;
    let report = recover(&mut run, &mut ledger, opts)?;
    location::record(root, &ledger)?;
    Ok((run, ledger, lock, report))
}

/// Bring `run` in line with `ledger` (see [`open`]).
pub fn recover(run: &mut Run, ledger: &mut Ledger, opts: &Options) -> Result<Recovery> {
    let applied = run.manifest.applied_request;
    let requests = ledger.requests();
    if applied > 0 {
        let known = ledger.find(applied, "accepted").map(|e| e.hash.clone());
        if known.as_deref() != Some(run.manifest.applied_entry.as_str()) {
            return Err(Error::run(
                run.dir.root(),
                format!(
                    "it reflects deletion request {applied}, which the ledger {} does not hold as accepted; \
                     was the ledger rolled back, or is it another run's ledger? (pass --ledger)",
                    ledger.path().display()
                ),
            ));
        }
    }
    let mut report = Recovery::default();
    for r in requests {
        if r > applied || !ledger.is_done(r) {
            complete(run, ledger, r, opts)?;
            report.completed.push(r);
        }
    }
    report.removed_files = run.collect_garbage()?;
    Ok(report)
}

/// Every shard's rows and the held-out rows, checked against the manifest.
pub fn load_rows(run: &Run) -> Result<(Vec<Rows>, Option<Rows>)> {
    let shards = (0..run.config.shards)
        .map(|k| run.shard_rows(k))
        .collect::<Result<Vec<_>>>()?;
    Ok((shards, run.test_rows()?))
}

/// Turn user ids into keys, refusing ids the run does not hold and ids already forgotten.
pub fn resolve_users(
    run: &Run,
    ledger: &Ledger,
    ids: &[String],
    shards: &[Rows],
    test: Option<&Rows>,
) -> Result<Vec<UserKey>> {
    if ids.is_empty() {
        return Err(Error::Request(
            "no users given (--user ID or --users-file FILE)".into(),
        ));
    }
    let forgotten: HashMap<UserKey, RequestId> = ledger.deleted_users().into_iter().collect();
    let mut present: HashSet<UserKey> = HashSet::new();
    for rows in shards.iter().chain(test) {
        present.extend(rows.keys.iter().copied());
    }
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        let id = id.trim();
        if id.is_empty() {
            return Err(Error::Request("an empty user id was given".into()));
        }
        let key = run.key(id);
        if !seen.insert(key) {
            continue;
        }
        if let Some(r) = forgotten.get(&key) {
            return Err(Error::Request(format!(
                "user '{id}' was already forgotten by request {r}"
            )));
        }
        if !present.contains(&key) {
            return Err(Error::Request(format!(
                "unknown user '{id}': the run holds no rows of this user; nothing was changed"
            )));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Record a request in the ledger (fsync'd: the acknowledgement); returns its number.
pub fn accept(ledger: &mut Ledger, users: Vec<UserKey>) -> Result<RequestId> {
    let r = ledger.next_request();
    failpoint("unlearn.accept");
    ledger.append(r, Event::Accepted { users })?;
    failpoint("unlearn.accepted");
    Ok(r)
}

fn append_once(ledger: &mut Ledger, r: RequestId, event: Event) -> Result<()> {
    if ledger.find(r, event.name()).is_none() {
        ledger.append(r, event)?;
    }
    Ok(())
}

/// Carry request `r` through to `done`, from wherever it stopped; returns its receipt.
pub fn complete(
    run: &mut Run,
    ledger: &mut Ledger,
    r: RequestId,
    opts: &Options,
) -> Result<Receipt> {
    complete_with_rows(run, ledger, r, opts, None)
}

/// [`complete`], reusing every shard's rows and the held-out rows already loaded (by
/// [`load_rows`]) for the published version `rows.0`, so a fresh request reads the data once.
/// The rows are used only if that version is still the published one.
pub fn complete_with_rows(
    run: &mut Run,
    ledger: &mut Ledger,
    r: RequestId,
    opts: &Options,
    rows: Option<(u64, Vec<Rows>, Option<Rows>)>,
) -> Result<Receipt> {
    let users: Vec<UserKey> = ledger
        .users(r)
        .ok_or_else(|| Error::Request(format!("request {r} is not in the ledger")))?
        .to_vec();
    run.reload()?;
    if run.manifest.applied_request < r {
        let rolled_back = ledger.find(r, "published").is_some();
        let loaded = match rows {
            Some((version, shards, test)) if version == run.manifest.version => (shards, test),
            _ => load_rows(run)?,
        };
        let version = apply(run, ledger, r, &users, loaded, opts)?;
        if rolled_back {
            ledger.append(r, Event::Reapplied { version })?;
        } else {
            append_once(ledger, r, Event::Published { version })?;
        }
        failpoint("unlearn.published");
    } else if run.manifest.applied_request == r {
        // Published, but the process stopped before the ledger said so.
        let recorded = ledger
            .events(r)
            .filter_map(|e| match e.event {
                Event::Published { version } | Event::Reapplied { version } => Some(version),
                _ => None,
            })
            .last();
        match recorded {
            None => ledger
                .append(
                    r,
                    Event::Published {
                        version: run.manifest.version,
                    },
                )
                .map(|_| ())?,
            Some(v) if v != run.manifest.version => ledger
                .append(
                    r,
                    Event::Reapplied {
                        version: run.manifest.version,
                    },
                )
                .map(|_| ())?,
            Some(_) => {}
        }
    }
    let removed = run.collect_garbage()?;
    append_once(
        ledger,
        r,
        Event::Cleaned {
            removed: removed.len() as u64,
        },
    )?;
    failpoint("unlearn.cleaned");
    let receipt = receipt::build(run, ledger, r)?;
    let bytes = serde_json::to_vec_pretty(&receipt).expect("plain data serializes");
    durable::create_dir_all(&run.dir.path(RunFile::ReceiptsDir))?;
    durable::write_atomic(&run.dir.path(RunFile::Receipt(r)), &bytes, "receipt")?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let recorded = ledger
        .events(r)
        .filter_map(|e| match &e.event {
            Event::ReceiptWritten { digest } => Some(digest.clone()),
            _ => None,
        })
        .last();
    if recorded.as_deref() != Some(digest.as_str()) {
        ledger.append(r, Event::ReceiptWritten { digest })?;
    }
    failpoint("unlearn.receipt");
    append_once(ledger, r, Event::Done)?;
    location::record(run.dir.root(), ledger)?;
    Ok(receipt)
}

/// Erase, retrain and publish request `r` against the published version; returns the new
/// version number.
fn apply(
    run: &mut Run,
    ledger: &mut Ledger,
    r: RequestId,
    users: &[UserKey],
    (shards, test): (Vec<Rows>, Option<Rows>),
    opts: &Options,
) -> Result<u64> {
    let plan = plan_unlearning(run, users, &shards, test.as_ref());
    append_once(
        ledger,
        r,
        Event::Planned {
            version_before: plan.version_before,
            shards: plan
                .shards
                .iter()
                .map(|p| ShardBefore {
                    shard: p.shard,
                    rows_removed: p.rows_removed,
                    first_stage: p.first_stage,
                    lineage_before: p.lineage_before.clone(),
                    model_digest_before: p.model_digest_before.clone(),
                })
                .collect(),
            test_rows_removed: plan.test_rows_removed,
            retrain_rows_epochs: plan.retrain_rows_epochs,
            full_retrain_rows_epochs: plan.full_retrain_rows_epochs,
            ensemble_retrain_rows_epochs: plan.ensemble_retrain_rows_epochs,
        },
    )?;
    failpoint("unlearn.planned");

    // Erase: write the shards and the held-out set without the users' rows.
    let set: HashSet<UserKey> = users.iter().copied().collect();
    let mut manifest = run.manifest.clone();
    let mut kept: Vec<(usize, Rows)> = Vec::new();
    for p in &plan.shards {
        let rows = shards[p.shard].without(&set);
        manifest.shards[p.shard].data = Run::store_rows(&run.dir, RowsFile::Shard(p.shard), &rows)?;
        kept.push((p.shard, rows));
    }
    if let Some(t) = &test {
        if plan.test_rows_removed > 0 {
            manifest.test = Some(Run::store_rows(&run.dir, RowsFile::Test, &t.without(&set))?);
        }
    }
    append_once(ledger, r, Event::Erased)?;
    failpoint("unlearn.erased");

    // Retrain each affected shard once, from the checkpoint before its first affected stage.
    let mut jobs = Vec::new();
    for (p, (k, rows)) in plan.shards.iter().zip(&kept) {
        let data = ShardData::new(&run.config, &run.config_digest, *k, rows);
        let (first, start) = start_checkpoint(run, *k, p.first_stage);
        manifest.shards[*k].slice_rows = data.index.counts.clone();
        jobs.push(Job { data, first, start });
    }
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| j.first <= run.config.slices)
        .collect();
    let started = Instant::now();
    retrain_into(run, &mut manifest, jobs, "unlearning", opts)?;
    append_once(
        ledger,
        r,
        Event::Retrained {
            seconds: started.elapsed().as_secs_f64(),
        },
    )?;
    failpoint("unlearn.retrained");

    // Publish.
    manifest.version = run.manifest.version + 1;
    manifest.applied_request = r;
    manifest.applied_entry = ledger
        .find(r, "accepted")
        .map(|e| e.hash.clone())
        .unwrap_or_default();
    manifest.publish(&run.dir)?;
    run.manifest = manifest;
    Ok(run.manifest.version)
}

/// Where shard `k` resumes to retrain from stage `first`: the checkpoint of stage `first - 1`
/// and `first`, or, when that checkpoint is missing or damaged, the latest earlier one that
/// reads back (from scratch if none does). Training is deterministic, so retraining more
/// stages gives the same bits; a deletion already acknowledged is never stopped by a damaged
/// checkpoint the deletion would not even keep.
pub(crate) fn start_checkpoint(run: &Run, k: usize, first: usize) -> (usize, Option<Checkpoint>) {
    if first <= 1 || first > run.config.slices {
        return (first, None);
    }
    for stage in (1..first).rev() {
        match run.checkpoint(k, stage) {
            Ok(ck) => {
                if stage + 1 < first {
                    eprintln!(
                        "sisa: shard {k}: retraining from stage {} instead of {first}",
                        stage + 1
                    );
                }
                return (stage + 1, Some(ck));
            }
            Err(e) => {
                eprintln!("sisa: warning: shard {k}, stage {stage}: {e}; trying an earlier one")
            }
        }
    }
    eprintln!("sisa: shard {k}: retraining from scratch instead of from stage {first}");
    (1, None)
}

/// Retrain `jobs`, storing each stage's checkpoint in the run, and splice the new stages and
/// model digests into `manifest`.
pub(crate) fn retrain_into(
    run: &Run,
    manifest: &mut crate::run::Manifest,
    jobs: Vec<Job<'_>>,
    label: &str,
    opts: &Options,
) -> Result<()> {
    let total = jobs.iter().map(|j| j.data.cost_from(j.first)).sum();
    let progress = Progress::new(label, total, opts.progress);
    let dir = run.dir.clone();
    let sink = |ck: &Checkpoint, epochs: u32, rows: u64| {
        failpoint("retrain.checkpoint");
        Run::store_checkpoint(&dir, ck, epochs, rows)
    };
    let trained = train::train_jobs(jobs, opts.threads, &progress, &sink)?;
    progress.finish();
    for t in trained {
        let entry = &mut manifest.shards[t.shard];
        let first = run.config.slices - t.stages.len();
        entry.stages.truncate(first);
        entry.stages.extend(t.stages);
        entry.model_digest = t.last.digest();
    }
    Ok(())
}
