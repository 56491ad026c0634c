//! Unlearning: the writer, the ledger, resolving users, the planner, the executor, receipts
//! and recovery.
//!
//! Callers forget users through [`Unlearner`] (`writer.rs`). [`resolve_users`] (`resolve.rs`)
//! reads only the shards and held-out buckets that hold them. A request goes accepted → planned → erased → retrained → published → cleaned → receipt
//! written → done, each step recorded in the ledger once it is durable. Every step is
//! idempotent (files are named by their content or lineage, the manifest by its version), so a
//! request interrupted anywhere is completed by running it again, which every command that
//! opens a run does first ([`open`]).

pub mod add;
pub mod ledger;
pub mod location;
pub mod plan;
pub mod receipt;
mod resolve;
mod writer;

pub use ledger::{Event, Ledger, Phases, RequestId, Touched};
pub use plan::{plan_unlearning, ShardPlan, UnlearnPlan};
pub use receipt::Receipt;
pub use resolve::{resolve_users, Loaded, Resolved};
pub use writer::Unlearner;

use crate::checkpoint::Checkpoint;
use crate::data::UserKey;
use crate::error::{Error, Result};
use crate::run::durable::{self, failpoint, DirSyncs, Io};
use crate::run::{RowsFile, Run, RunFile};
use crate::train::{self, Job, Progress, ShardData};
use ledger::ShardBefore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
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

/// Record a request in the ledger (fsync'd: the acknowledgement); returns its number.
pub fn accept(
    ledger: &mut Ledger,
    users: Vec<UserKey>,
    place: Option<Touched>,
) -> Result<RequestId> {
    let r = ledger.next_request();
    failpoint("unlearn.accept");
    ledger.append(r, Event::Accepted { users, place })?;
    failpoint("unlearn.accepted");
    Ok(r)
}

fn append_once(ledger: &mut Ledger, r: RequestId, event: Event) -> Result<()> {
    if ledger.find(r, event.name()).is_none() {
        ledger.append(r, event)?;
    }
    Ok(())
}

/// What a fresh request brings to its completion: the rows it read and what accepting it took.
pub(crate) struct Fresh {
    pub(crate) loaded: Loaded,
    pub(crate) accept_seconds: f64,
    pub(crate) io_before: Io,
}

/// Carry request `r` through to `done`, from wherever it stopped; returns its receipt.
pub fn complete(
    run: &mut Run,
    ledger: &mut Ledger,
    r: RequestId,
    opts: &Options,
) -> Result<Receipt> {
    complete_fresh(run, ledger, r, opts, None)
}

pub(crate) fn complete_fresh(
    run: &mut Run,
    ledger: &mut Ledger,
    r: RequestId,
    opts: &Options,
    fresh: Option<Fresh>,
) -> Result<Receipt> {
    let users: Vec<UserKey> = ledger
        .users(r)
        .ok_or_else(|| Error::Request(format!("request {r} is not in the ledger")))?
        .to_vec();
    let io_before = fresh.as_ref().map_or_else(Io::now, |f| f.io_before);
    let mut phases = Phases {
        accept: fresh.as_ref().map_or(0.0, |f| f.accept_seconds),
        ..Phases::default()
    };
    run.reload()?;
    if run.manifest.applied_request < r {
        let rolled_back = ledger.find(r, "published").is_some();
        let loaded = match fresh {
            Some(f) if f.loaded.version == run.manifest.version => f.loaded,
            _ => Loaded::read(run, ledger.touched(r))?,
        };
        let version = apply(run, ledger, r, &users, loaded, opts, &mut phases)?;
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
    let clean = Instant::now();
    // What this request can have left behind lies in its shards' checkpoints, data/ and the
    // root; every open looks at the whole run.
    let touched = ledger.touched(r).map(|t| t.shards.clone());
    let removed = run.collect_garbage_in(touched.as_deref())?;
    append_once(
        ledger,
        r,
        Event::Cleaned {
            removed: removed.len() as u64,
        },
    )?;
    failpoint("unlearn.cleaned");
    phases.clean = clean.elapsed().as_secs_f64();
    if ledger.find(r, "receipt_written").is_none() {
        append_once(
            ledger,
            r,
            Event::Measured {
                phases,
                io: Io::since(&io_before),
            },
        )?;
    }
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
    loaded: Loaded,
    opts: &Options,
    phases: &mut Phases,
) -> Result<u64> {
    let erase = Instant::now();
    let (plan, kept) = plan::prepare(run, users, &loaded);
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
            expected_rows_epochs: Some(plan.expected_rows_epochs.round() as u64),
        },
    )?;
    failpoint("unlearn.planned");

    // Erase: write the touched shards and held-out buckets without the users' rows. One fsync
    // of data/ makes every rename durable before the ledger says so.
    let set: HashSet<UserKey> = users.iter().copied().collect();
    let mut manifest = run.manifest.clone();
    let syncs = DirSyncs::new();
    for k in &kept {
        manifest.shards[k.shard].data =
            Run::store_rows(&run.dir, RowsFile::Shard(k.shard), &k.rows, &syncs)?;
    }
    for (b, rows) in &loaded.buckets {
        if rows.count_of(&set) > 0 {
            let entry = Run::store_rows(&run.dir, RowsFile::Test(*b), &rows.without(&set), &syncs)?;
            if let Some(buckets) = manifest.test.as_mut() {
                buckets[*b] = entry;
            }
        }
    }
    syncs.sync()?;
    append_once(ledger, r, Event::Erased)?;
    failpoint("unlearn.erased");
    phases.erase = erase.elapsed().as_secs_f64();

    // Retrain each affected shard once, from the checkpoint before its first affected stage.
    let mut jobs = Vec::new();
    for (p, k) in plan.shards.iter().zip(&kept) {
        let data = ShardData::with_index(
            &run.config,
            &run.config_digest,
            k.shard,
            &k.rows,
            k.index.clone(),
        );
        let (first, start) = start_checkpoint(run, k.shard, p.first_stage);
        manifest.shards[k.shard].set_slices(&data.index);
        jobs.push(Job { data, first, start });
    }
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| j.first <= run.config.slices)
        .collect();
    let started = Instant::now();
    retrain_into(run, &mut manifest, jobs, "unlearning", opts)?;
    phases.retrain = started.elapsed().as_secs_f64();
    append_once(
        ledger,
        r,
        Event::Retrained {
            seconds: phases.retrain,
        },
    )?;
    failpoint("unlearn.retrained");

    // Publish.
    let publish = Instant::now();
    manifest.version = run.manifest.version + 1;
    manifest.applied_request = r;
    manifest.applied_entry = ledger
        .find(r, "accepted")
        .map(|e| e.hash.clone())
        .unwrap_or_default();
    run.publish(manifest)?;
    phases.publish = publish.elapsed().as_secs_f64();
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
    // Each shard's checkpoint directory is fsync'd once, after its last stage, before the
    // manifest that names the checkpoints is written.
    let syncs = DirSyncs::new();
    let sink = |ck: &Checkpoint, epochs: u32, rows: u64| {
        failpoint("retrain.checkpoint");
        Run::store_checkpoint(&dir, ck, epochs, rows, &syncs)
    };
    let trained = train::train_jobs(jobs, opts.threads, &progress, &sink)?;
    syncs.sync()?;
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
