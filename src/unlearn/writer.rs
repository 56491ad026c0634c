//! The one writer of a run's deletions.

use crate::data::UserKey;
use crate::error::{Error, Result};
use crate::run::{Plan, PublishLock, Run, RunLock};
use crate::unlearn::{
    accept, complete_fresh, defer, open, plan_unlearning, receipt, resolve_users, Fresh, Ledger,
    Options, Receipt, Recovery, RequestId, Resolved, UnlearnPlan,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The one writer of a run's deletions: the opened run, its ledger and its lock, held
/// together from open to the last receipt. Every caller (the CLI, the quickstart, the
/// server's admin worker, the benchmarks and the audit) forgets users through it, so the rule
/// that a request reads only what it touches lives here alone.
///
/// ```text
/// Unlearner::open → resolve(ids) → [plan] → accept → complete → Receipt
///                   └─────────────── forget(ids) ───────────────┘
/// ```
pub struct Unlearner {
    run: Run,
    ledger: Ledger,
    lock: RunLock,
    publish_lock: Option<PublishLock>,
    opts: Options,
    recovery: Recovery,
    fresh: HashMap<RequestId, Fresh>,
}

impl Unlearner {
    /// Open the run at `root` for deletions ([`open`]: lock, recover, collect garbage).
    pub fn open(root: &Path, ledger: Option<&Path>, opts: &Options) -> Result<Unlearner> {
        let (run, ledger, lock, recovery) = open(root, ledger, opts)?;
        Ok(Unlearner {
            run,
            ledger,
            lock,
            publish_lock: None,
            opts: opts.clone(),
            recovery,
            fresh: HashMap::new(),
        })
    }

    /// The run, as published now.
    pub fn run(&self) -> &Run {
        &self.run
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What opening recovered.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The run, ledger and lock, for callers that go on to read the run.
    pub fn into_parts(self) -> (Run, Ledger, RunLock) {
        (self.run, self.ledger, self.lock)
    }

    /// Resolve user ids ([`resolve_users`]).
    pub fn resolve(&self, ids: &[String]) -> Result<Resolved> {
        resolve_users(&self.run, &self.ledger, ids)
    }

    /// What forgetting `resolved` would do, changing nothing (`--dry-run`).
    pub fn plan(&self, resolved: &Resolved) -> UnlearnPlan {
        plan_unlearning(&self.run, &resolved.keys, &resolved.loaded)
    }

    /// Accept `resolved` as one request: fsync'd to the ledger, the acknowledgement. Its rows
    /// are kept for [`Unlearner::complete`], which then reads nothing again.
    pub fn accept(&mut self, resolved: Resolved) -> Result<RequestId> {
        self.accept_as(resolved, false)
    }

    /// [`Unlearner::accept`] for a request whose retraining is left to shard tasks: complete
    /// it with [`Unlearner::defer`] (`sisa unlearn --no-retrain`).
    pub fn accept_deferred(&mut self, resolved: Resolved) -> Result<RequestId> {
        self.accept_as(resolved, true)
    }

    /// Take the run's publish lock (across machines) for the change about to be made.
    fn hold_publish_lock(&mut self) -> Result<()> {
        if self.publish_lock.is_none() {
            self.publish_lock = Some(PublishLock::acquire(self.run.dir.root())?);
        }
        Ok(())
    }

    fn accept_as(&mut self, resolved: Resolved, deferred: bool) -> Result<RequestId> {
        // Refused before it is acknowledged: a GPU run retrains on its kind of GPU (shard
        // tasks of a deferred request may run elsewhere, and publish checks their kinds).
        if !deferred {
            crate::machine::require_gpu_kind(
                self.run.config.device,
                &self.run.manifest,
                "unlearn",
            )?;
        }
        self.hold_publish_lock()?;
        let Resolved {
            keys,
            touched,
            loaded,
            started,
            io_before,
        } = resolved;
        let r = accept(&mut self.ledger, keys, Some(touched), deferred)?;
        self.fresh.insert(
            r,
            Fresh {
                loaded,
                accept_seconds: started.elapsed().as_secs_f64(),
                io_before,
            },
        );
        Ok(r)
    }

    /// Accept several resolved batches of users as one request (the server's deletions that
    /// arrived while another retrained): each touched shard retrains once for all of them.
    /// Users in more than one batch are forgotten once. The batches are given in the order they
    /// were resolved, so the first one's clock and I/O readings are where the request began.
    pub fn accept_together(&mut self, batches: Vec<Resolved>) -> Result<RequestId> {
        let mut iter = batches.into_iter();
        let mut all = iter
            .next()
            .ok_or_else(|| Error::Request("no users given".into()))?;
        for b in iter {
            let known: HashSet<UserKey> = all.keys.iter().copied().collect();
            all.keys
                .extend(b.keys.into_iter().filter(|k| !known.contains(k)));
            merge_sorted(&mut all.touched.shards, &b.touched.shards);
            merge_sorted(&mut all.touched.buckets, &b.touched.buckets);
            all.loaded.shards.extend(b.loaded.shards);
            all.loaded.buckets.extend(b.loaded.buckets);
        }
        self.accept(all)
    }

    /// Carry request `r` through to its receipt ([`crate::unlearn::complete`]). While a plan
    /// is pending the request joins it, and this process trains the plan's remaining shards
    /// and publishes it ([`crate::unlearn::defer`]).
    pub fn complete(&mut self, r: RequestId) -> Result<Receipt> {
        self.hold_publish_lock()?;
        let fresh = self.fresh.remove(&r);
        let out = if defer::pending_plan(&self.run)?.is_some() {
            defer::defer(&self.run, &mut self.ledger, r, fresh.map(|f| f.loaded))
                .and_then(|_| defer::run_plan_here(&mut self.run, &mut self.ledger, &self.opts))
                .and_then(|()| receipt::build(&self.run, &self.ledger, r))
        } else {
            complete_fresh(&mut self.run, &mut self.ledger, r, &self.opts, fresh)
        };
        self.publish_lock = None;
        out
    }

    /// Erase accepted request `r` into the run's plan, leaving its retraining to shard tasks
    /// and its completion to `sisa publish` ([`crate::unlearn::defer`]); returns the plan.
    pub fn defer(&mut self, r: RequestId) -> Result<Plan> {
        self.hold_publish_lock()?;
        let fresh = self.fresh.remove(&r);
        let out = defer::defer(&self.run, &mut self.ledger, r, fresh.map(|f| f.loaded));
        self.publish_lock = None;
        out
    }

    /// Resolve, accept and complete in one call.
    pub fn forget(&mut self, ids: &[String]) -> Result<Receipt> {
        let resolved = self.resolve(ids)?;
        let r = self.accept(resolved)?;
        self.complete(r)
    }
}

fn merge_sorted(into: &mut Vec<usize>, more: &[usize]) {
    into.extend_from_slice(more);
    into.sort_unstable();
    into.dedup();
}
