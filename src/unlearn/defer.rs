//! Deferred unlearning: accept and erase now, retrain in shard tasks, publish later.
//!
//! `sisa unlearn --no-retrain` accepts a request (the acknowledgement, as always), erases the
//! users' rows from the touched shards, and folds the request into the run's plan
//! ([`crate::run::plan`]): the touched shards become pending from their first affected stage.
//! Shard tasks retrain them on any machine (`sisa train-shard`, a Slurm array, a Kubernetes
//! Indexed Job) and `sisa publish` publishes the version and completes every request of the
//! plan: receipts, clean-up, `done`. Until then the request is pending in the ledger, and a
//! server leaves its shards out of every answer, as for any request in flight.
//!
//! While a plan is pending, every new request joins it, so requests stay applied in order. One
//! that asked to be retrained here (a plain `sisa unlearn`, the server's deletions) then trains
//! the plan's remaining shards in this process and publishes.

use crate::data::UserKey;
use crate::error::{Error, Result};
use crate::run::durable::failpoint;
use crate::run::plan::{Base, Plan};
use crate::run::{Run, StageEntry};
use crate::train::task::{self, Planned};
use crate::train::ShardData;
use crate::unlearn::{
    append_once, complete, erase_into, plan, planned_event, Event, Ledger, Loaded, Options,
    RequestId,
};

/// The plan of `run`, if one is pending on the version it has published.
pub fn pending_plan(run: &Run) -> Result<Option<Plan>> {
    Ok(Plan::load(&run.dir)?.filter(|p| p.builds_on(Some(run.current_text()))))
}

/// Fold accepted request `r` into the run's plan (a new one on the published version when
/// none is pending): erase its users' rows from the plan's data, mark the shards that held
/// them pending from their first affected stage, write the plan, record `deferred`.
/// Idempotent. `loaded` may carry the rows read when the request was resolved. The caller
/// holds the run's lock and its publish lock.
pub(crate) fn defer(
    run: &Run,
    ledger: &mut Ledger,
    r: RequestId,
    loaded: Option<Loaded>,
) -> Result<Plan> {
    let mut plan = match pending_plan(run)? {
        Some(p) => p,
        None => {
            let mut manifest = run.manifest.clone();
            manifest.version += 1;
            Plan::new(
                Some(Base {
                    version: run.manifest.version,
                    current: run.current_text().to_string(),
                }),
                manifest,
            )
        }
    };
    if plan.requests.contains(&r) {
        append_once(
            ledger,
            r,
            Event::Deferred {
                plan: plan.id.clone(),
                shards: plan.shards(),
            },
        )?;
        return Ok(plan);
    }
    let users: Vec<UserKey> = ledger
        .users(r)
        .ok_or_else(|| Error::Request(format!("request {r} is not in the ledger")))?
        .to_vec();
    let working = run.with_manifest(plan.manifest.clone());
    let loaded = match loaded {
        // Rows read from the published version are the plan's only while it changes nothing.
        Some(l) if plan.pending.is_empty() && l.version == run.manifest.version => l,
        _ => Loaded::read(&working, ledger.touched(r))?,
    };
    let (mut unlearn_plan, kept) = plan::prepare(&working, &users, &loaded);
    // What was served before the request is the published version, not the plan.
    unlearn_plan.version_before = run.manifest.version;
    for p in &mut unlearn_plan.shards {
        let served = &run.manifest.shards[p.shard];
        p.lineage_before = served
            .stages
            .last()
            .map(|s| s.lineage.to_hex())
            .unwrap_or_default();
        p.model_digest_before = served.model_digest.clone();
    }
    append_once(ledger, r, planned_event(&unlearn_plan))?;
    failpoint("defer.planned");
    let mut manifest = plan.manifest.clone();
    erase_into(&working, &mut manifest, &users, &kept, &loaded)?;
    append_once(ledger, r, Event::Erased)?;
    failpoint("defer.erased");
    let c = &run.config;
    for (p, k) in unlearn_plan.shards.iter().zip(&kept) {
        let data = ShardData::with_index(c, &run.config_digest, k.shard, &k.rows, k.index.clone());
        let entry = &mut manifest.shards[k.shard];
        entry.set_slices(&data.index);
        if p.first_stage > c.slices {
            continue;
        }
        let stage_rows = data.stage_rows();
        for stage in p.first_stage..=c.slices {
            entry.stages[stage - 1] = StageEntry {
                lineage: data.lineages[stage - 1],
                epochs: c.stage_epochs[stage - 1],
                rows: stage_rows[stage - 1],
                file_digest: String::new(),
            };
        }
        entry.model_digest.clear();
        entry.machine.clear();
        plan.mark(k.shard, p.first_stage);
    }
    manifest.applied_request = r;
    manifest.applied_entry = ledger
        .find(r, "accepted")
        .map(|e| e.hash.clone())
        .unwrap_or_default();
    plan.manifest = manifest;
    plan.requests.push(r);
    plan.write(&run.dir)?;
    failpoint("defer.plan");
    ledger.append(
        r,
        Event::Deferred {
            plan: plan.id.clone(),
            shards: plan.shards(),
        },
    )?;
    Ok(plan)
}

/// Record that `requests` are published in the version `run` now has, and complete each:
/// clean-up, receipt, `done`. `seconds` is the shard tasks' training time.
pub(crate) fn complete_published(
    run: &mut Run,
    ledger: &mut Ledger,
    requests: &[RequestId],
    seconds: f64,
    opts: &Options,
) -> Result<()> {
    run.reload()?;
    ledger.reload()?;
    for &r in requests {
        if ledger.is_done(r) {
            continue;
        }
        append_once(ledger, r, Event::Retrained { seconds })?;
        append_once(
            ledger,
            r,
            Event::Published {
                version: run.manifest.version,
            },
        )?;
        complete(run, ledger, r, opts)?;
    }
    Ok(())
}

/// Train the pending plan's remaining shards in this process and publish it, completing its
/// requests. The caller holds the run's lock and its publish lock.
pub(crate) fn run_plan_here(run: &mut Run, ledger: &mut Ledger, opts: &Options) -> Result<()> {
    let planned = Planned::open(run.dir.root())?;
    let shards = planned.plan.shards();
    if !shards.is_empty() {
        eprintln!(
            "sisa: a plan is pending: training its {} shard(s) here, then publishing",
            shards.len()
        );
    }
    task::train_shards(&planned, &shards, opts.threads, opts.progress)?;
    let published = task::publish_plan(&planned)?;
    complete_published(run, ledger, &published.requests, published.seconds, opts)
}
