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
pub mod defer;
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
use crate::run::{Plan, PublishLock, RowsFile, Run, RunFile};
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
    /// Requests left to shard tasks: deferred (`--no-retrain`) into the pending plan, which
    /// `sisa publish` completes.
    pub pending: Vec<RequestId>,
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
    let root = run.dir.root().to_path_buf();
    // The publish lock, taken (across machines) only once something is to change.
    let mut lock: Option<PublishLock> = None;
    let take = |lock: &mut Option<PublishLock>| -> Result<()> {
        if lock.is_none() {
            *lock = Some(PublishLock::acquire(&root)?);
        }
        Ok(())
    };
    if Plan::load(&run.dir)?.is_some_and(|p| !p.builds_on(Some(run.current_text()))) {
        take(&mut lock)?;
        run.reload()?;
        if Plan::load(&run.dir)?.is_some_and(|p| !p.builds_on(Some(run.current_text()))) {
            // Published by a process that stopped before removing it (its requests complete
            // below), or made on a version since replaced (its requests are planned again).
            eprintln!("sisa: removing a plan that no longer builds on the published version");
            Plan::remove(&run.dir)?;
        }
    }
    let plan = defer::pending_plan(run)?;
    let (mut joined, mut here) = (false, false);
    for r in requests {
        if r <= applied && ledger.is_done(r) {
            continue;
        }
        if r > applied && (ledger.is_deferred(r) || joined) {
            // Left to shard tasks; a request after a deferred one joins the plan too, and one
            // that asked to be retrained here has the plan trained here.
            joined = true;
            here |= !ledger.is_deferred(r);
            let recorded = plan.as_ref().is_some_and(|p| p.requests.contains(&r))
                && ledger.find(r, "deferred").is_some();
            if !recorded {
                take(&mut lock)?;
                defer::defer(run, ledger, r, None)?;
            }
            report.pending.push(r);
            continue;
        }
        take(&mut lock)?;
        complete(run, ledger, r, opts)?;
        report.completed.push(r);
    }
    if here {
        take(&mut lock)?;
        defer::run_plan_here(run, ledger, opts)?;
        report.completed.append(&mut report.pending);
    }
    // Garbage is collected only while no process, on any machine, is publishing: one that is
    // may have written files that the manifest read here does not name yet.
    if lock.is_none() {
        lock = PublishLock::try_acquire(&root)?;
    }
    if lock.is_some() {
        report.removed_files = run.collect_garbage()?;
    }
    Ok(report)
}

/// The requests of `ledger` not yet done and the shards they touch (every shard of `run`
/// for a request recorded without its place): what a published model may still hold. After
/// [`open`], these are the deferred requests waiting for `sisa publish`; a caller that
/// predicts with the published version leaves their shards out, as the server does.
pub fn pending_shards(run: &Run, ledger: &Ledger) -> (Vec<RequestId>, Vec<usize>) {
    let mut requests = Vec::new();
    let mut shards = std::collections::BTreeSet::new();
    for r in ledger.requests() {
        if ledger.is_done(r) {
            continue;
        }
        requests.push(r);
        match ledger.touched(r) {
            Some(t) => shards.extend(t.shards.iter().copied()),
            None => shards.extend(0..run.config.shards),
        }
    }
    (requests, shards.into_iter().collect())
}

/// Record a request in the ledger (fsync'd: the acknowledgement); returns its number.
pub fn accept(
    ledger: &mut Ledger,
    users: Vec<UserKey>,
    place: Option<Touched>,
    deferred: bool,
) -> Result<RequestId> {
    let r = ledger.next_request();
    failpoint("unlearn.accept");
    ledger.append(
        r,
        Event::Accepted {
            users,
            place,
            deferred,
        },
    )?;
    failpoint("unlearn.accepted");
    Ok(r)
}

pub(crate) fn append_once(ledger: &mut Ledger, r: RequestId, event: Event) -> Result<()> {
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
    } else if run.manifest.applied_request > r && ledger.find(r, "published").is_none() {
        // Published together with later requests (a plan's), by a process that stopped
        // before the ledger said so.
        ledger.append(
            r,
            Event::Published {
                version: run.manifest.version,
            },
        )?;
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

/// The ledger's record of `plan`, made before anything changes.
pub(crate) fn planned_event(plan: &UnlearnPlan) -> Event {
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
    }
}

/// Write the touched shards (`kept`) and held-out buckets without `users`' rows, and point
/// `manifest` at the new files. One fsync of data/ makes every rename durable before the
/// caller records the erasure.
pub(crate) fn erase_into(
    run: &Run,
    manifest: &mut crate::run::Manifest,
    users: &[UserKey],
    kept: &[plan::Kept],
    loaded: &Loaded,
) -> Result<()> {
    let set: HashSet<UserKey> = users.iter().copied().collect();
    let syncs = DirSyncs::new();
    for k in kept {
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
    syncs.sync()
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
    append_once(ledger, r, planned_event(&plan))?;
    failpoint("unlearn.planned");

    // Erase: write the touched shards and held-out buckets without the users' rows.
    let mut manifest = run.manifest.clone();
    erase_into(run, &mut manifest, users, &kept, &loaded)?;
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
    let kinds = train::task::machine_kinds(&manifest);
    if kinds.len() > 1 {
        // A deletion is never held back for it, but the claim is per kind: say so.
        eprintln!(
            "sisa: warning: the version's shards are now of {} machine kinds ({}); `sisa verify` \
             re-derives each shard bitwise only on its own kind",
            kinds.len(),
            train::task::describe_kinds(&kinds)
        );
    }
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

pub(crate) use crate::train::task::start_checkpoint;

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
        entry.machine = t.last.machine.clone();
    }
    Ok(())
}
