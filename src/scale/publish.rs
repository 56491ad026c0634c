//! `sisa publish`: wait for a plan's shard tasks, check their results, publish the version.
//!
//! Publish is the only writer of `CURRENT` in scale-out: it holds the run's local lock and the
//! publish lock that works across machines (`PUBLISH`, created with `O_EXCL`), checks every
//! pending shard's result against the plan and the machine kinds of the whole version
//! ([`crate::train::task::publish_plan`]), replaces `CURRENT` by one atomic rename, and then
//! completes the plan's deletion requests: ledger, receipts, clean-up.

use crate::error::{Error, Result};
use crate::run::plan::{current_text, Plan};
use crate::run::{PublishLock, Run, RunDir, RunLock};
use crate::train::task::{self, Planned, PublishedPlan};
use crate::unlearn::{self, defer, location, Ledger};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How `sisa publish` runs.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// The run's ledger, when it lives outside the run (default: where the run records it).
    pub ledger: Option<PathBuf>,
    /// Wait up to this long for every shard task's result before publishing (default: do
    /// not wait; a shard without a result is refused).
    pub wait: Option<Duration>,
    /// How requests completed on the way are retrained, if any must be.
    pub unlearn: unlearn::Options,
}

/// What `sisa publish` did.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The plan was published.
    Published(PublishedPlan),
    /// No plan was pending: the version named is published and nothing waits.
    NothingPending {
        /// The published version.
        version: u64,
    },
}

/// Publish the run's pending plan (see the module doc).
pub fn publish(root: &Path, opts: &PublishOptions) -> Result<Outcome> {
    if let Some(limit) = opts.wait {
        wait_for_tasks(root, limit)?;
    }
    let dir = RunDir::new(root);
    if !root.is_dir() {
        return Err(Error::run(root, "no such run directory"));
    }
    // Taken first and never waited for: a second publish, here or on another machine, is
    // refused at once.
    let _publishing = PublishLock::acquire(root)?;
    // A published run is opened as every command opens it: recovered first (a plan left by a
    // publish that stopped halfway is finished or planned again). A new run has no version
    // and no requests yet.
    let (opened, _lock) = if current_text(&dir)?.is_some() {
        let (run, ledger, lock, _) = unlearn::open(root, opts.ledger.as_deref(), &opts.unlearn)?;
        (Some((run, ledger)), lock)
    } else {
        (None, RunLock::acquire(root)?)
    };
    if Plan::load(&dir)?.is_none() {
        return match opened {
            Some((run, _)) => Ok(Outcome::NothingPending {
                version: run.manifest.version,
            }),
            None => Err(Error::run(
                root,
                "has neither a plan nor a published version (is it a sisa run?)",
            )),
        };
    }
    let planned = Planned::open(root)?;
    let published = task::publish_plan(&planned)?;
    let (mut run, mut ledger) = match opened {
        Some(o) => o,
        None => (
            Run::open(root)?,
            Ledger::open(&location::resolve(root, opts.ledger.as_deref())?)?,
        ),
    };
    defer::complete_published(
        &mut run,
        &mut ledger,
        &published.requests,
        published.seconds,
        &opts.unlearn,
    )?;
    // The plan's shards may hold temp files of interrupted tasks, kept while it was pending.
    run.collect_garbage_in(Some(&published.shards))?;
    location::record(root, &ledger)?;
    Ok(Outcome::Published(published))
}

/// Wait until every pending shard of the run's plan has a result for it (or no plan is
/// pending any more), polling the shared filesystem; refused after `limit`, naming the shards
/// still without one.
pub fn wait_for_tasks(root: &Path, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let mut said = None;
    loop {
        let dir = RunDir::new(root);
        if Plan::load(&dir)?.is_none() && current_text(&dir)?.is_some() {
            return Ok(());
        }
        let planned = Planned::open(root)?;
        let missing: Vec<usize> = planned
            .plan
            .pending
            .iter()
            .filter(|p| planned.plan.result_of(&dir, p.shard).is_err())
            .map(|p| p.shard)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= limit {
            return Err(Error::run(
                root,
                format!(
                    "waited {}s for the shard tasks of plan {}: {} of {} have no result yet (shards {})",
                    waited.as_secs(),
                    planned.plan.short_id(),
                    missing.len(),
                    planned.plan.pending.len(),
                    crate::plan::shard_ranges(&missing)
                ),
            ));
        }
        if said.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
            eprintln!(
                "sisa: waiting for {} of {} shard tasks of plan {}",
                missing.len(),
                planned.plan.pending.len(),
                planned.plan.short_id()
            );
            said = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_secs(2).min(limit - waited));
    }
}
