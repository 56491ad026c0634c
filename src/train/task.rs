//! Shard tasks: train the shards of the run's plan, one shard or many, on any machine that
//! mounts the run.
//!
//! A task reads its shard's rows and starting checkpoint through the plan, trains the plan's
//! stages, writes each stage's checkpoint (named by its lineage) and then its result,
//! `tasks/shard-<k>.json`. It writes nothing else, so tasks of different shards never touch
//! one another's files. A task is idempotent: run again after it finished, it finds its
//! result and does nothing; killed halfway, it resumes after the last stage whose checkpoint is
//! on disk (each was written whole, by rename), and training is deterministic, so the rerun
//! ends with the bits an uninterrupted run has.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::run::durable::{failpoint, DirSyncs};
use crate::run::plan::{self, NotReady, TaskResult};
use crate::run::{Plan, Run, RunDir, RunFile, StageEntry};
use crate::train::{train_jobs, Job, Progress, ShardData};
use std::path::Path;
use std::time::Instant;

/// A run's plan, opened for its shard tasks: the plan and the run as the plan will publish it.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The pending plan.
    pub plan: Plan,
    /// The run seen through the plan's manifest: its rows and checkpoints are the plan's.
    pub run: Run,
}

impl Planned {
    /// Open the plan of the run at `root`: refused when no plan is pending, or when it builds
    /// on another version than the one published now (a stale plan, which the next command
    /// that opens the run plans again).
    pub fn open(root: &Path) -> Result<Planned> {
        let dir = RunDir::new(root);
        if !dir.path(RunFile::Config).exists() {
            return Err(Error::run(root, "not a sisa run (no run.json)"));
        }
        let (config, secret) = Run::config_and_secret(&dir)?;
        let Some(plan) = Plan::load(&dir)? else {
            return Err(Error::run(
                root,
                "has no plan pending: nothing for shard tasks to train (plan with \
                 sisa train --plan-only or sisa unlearn --no-retrain)",
            ));
        };
        let current = plan::current_text(&dir)?;
        if !plan.builds_on(current.as_deref()) {
            return Err(Error::run(
                root,
                format!(
                    "plan {} builds on version {}, and another version is published now: the plan is \
                     stale (open the run, e.g. sisa status, to plan its requests again)",
                    plan.short_id(),
                    plan.base.as_ref().map_or(0, |b| b.version)
                ),
            ));
        }
        let run = Run::from_parts(dir, config, plan.manifest.clone(), secret);
        if plan.manifest.config_digest != hex::encode(run.config_digest)
            || plan.manifest.shards.len() != run.config.shards
        {
            return Err(Error::corrupt(
                run.dir.path(RunFile::Plan),
                "was made under another configuration than run.json",
            ));
        }
        Ok(Planned { plan, run })
    }

    /// Shard `k`'s result, checked in full: [`Plan::result_of`], then every checkpoint it
    /// names is on disk with its digest, and the final one holds the model and machine kind
    /// the result records.
    pub fn checked_result(&self, k: usize) -> std::result::Result<TaskResult, NotReady> {
        let r = self.plan.result_of(&self.run.dir, k)?;
        let damaged = |m: String| NotReady::Damaged(m);
        for (i, st) in r.stages.iter().enumerate() {
            let path = self.run.dir.path(RunFile::Checkpoint(k, &st.lineage));
            match plan::file_digest(&path) {
                Ok(d) if d == st.file_digest => {}
                Ok(_) => {
                    return Err(damaged(format!(
                        "the checkpoint of stage {} ({}) is not the one its task wrote",
                        r.first_stage + i,
                        path.display()
                    )))
                }
                Err(e) => return Err(damaged(format!("stage {}: {e}", r.first_stage + i))),
            }
        }
        let last = r.stages.last().ok_or_else(|| damaged("no stages".into()))?;
        let path = self.run.dir.path(RunFile::Checkpoint(k, &last.lineage));
        let ck = std::fs::read(&path)
            .map_err(|e| Error::io(&path, e))
            .and_then(|bytes| {
                Checkpoint::decode(
                    &path,
                    &bytes,
                    &self.run.config.model_config(k)?,
                    k,
                    &last.lineage,
                )
            })
            .map_err(|e| damaged(e.to_string()))?;
        if ck.digest() != r.model_digest || ck.machine != r.machine {
            return Err(damaged(format!(
                "{} does not hold the model and machine kind its task recorded",
                path.display()
            )));
        }
        Ok(r)
    }
}

/// What a task did for one shard.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Trained (or finished training) and wrote its result.
    Trained {
        /// The result written.
        result: TaskResult,
        /// Stages found on disk from an earlier, interrupted attempt and not trained again.
        resumed: usize,
    },
    /// Its result for this plan was already there: nothing to do.
    AlreadyDone(TaskResult),
    /// The plan does not train this shard.
    NotPending,
}

/// Train the plan's `shards` on a pool of `threads` workers (one shard per worker), writing
/// each shard's checkpoints and result; returns what happened to each, in the order given.
pub fn train_shards(
    planned: &Planned,
    shards: &[usize],
    threads: usize,
    progress: bool,
) -> Result<Vec<(usize, Outcome)>> {
    let run = &planned.run;
    let slices = run.config.slices;
    for &k in shards {
        if k >= run.config.shards {
            return Err(Error::Usage(format!(
                "shard {k}: the run has shards 0..{}",
                run.config.shards - 1
            )));
        }
    }
    let mut outcomes: Vec<(usize, Option<Outcome>)> = Vec::new();
    // Shards to train: their place in `outcomes` and their number.
    let mut todo: Vec<(usize, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &k in shards.iter().filter(|&&k| seen.insert(k)) {
        let outcome = match planned.plan.pending_of(k) {
            None => Some(Outcome::NotPending),
            Some(_) => planned.checked_result(k).ok().map(Outcome::AlreadyDone),
        };
        if outcome.is_none() {
            todo.push((outcomes.len(), k));
        }
        outcomes.push((k, outcome));
    }
    let rows = todo
        .iter()
        .map(|&(_, k)| run.shard_rows(k))
        .collect::<Result<Vec<_>>>()?;
    let mut prepared = Vec::new();
    let mut jobs = Vec::new();
    for (&(slot, k), rows) in todo.iter().zip(&rows) {
        let data = ShardData::new(&run.config, &run.config_digest, k, rows);
        let expected = &run.manifest.shards[k].stages;
        if data
            .lineages
            .iter()
            .zip(expected)
            .any(|(a, b)| *a != b.lineage)
        {
            return Err(Error::Lineage {
                shard: k,
                stage: 1,
                message: "the shard's rows do not give the lineages the plan expects".into(),
            });
        }
        let planned_first = planned.plan.pending_of(k).map_or(1, |p| p.first_stage);
        let (first, start, resumed) = resume_point(run, &data, planned_first)?;
        // The stages an earlier attempt left on disk, as the result records them.
        let stage_rows = data.stage_rows();
        let mut on_disk = Vec::new();
        for stage in planned_first..first {
            let lineage = data.lineages[stage - 1];
            on_disk.push(StageEntry {
                lineage,
                epochs: run.config.stage_epochs[stage - 1],
                rows: stage_rows[stage - 1],
                file_digest: plan::file_digest(&run.dir.path(RunFile::Checkpoint(k, &lineage)))?,
            });
        }
        if resumed > 0 {
            eprintln!(
                "sisa: shard {k}: stages {planned_first}..{} are on disk from an earlier attempt; resuming at stage {first}",
                first - 1
            );
        }
        // A shard whose every stage is on disk trains nothing: its last checkpoint is the model.
        let finished = if first > slices {
            start
        } else {
            jobs.push(Job { data, first, start });
            None
        };
        prepared.push(Prepared {
            slot,
            shard: k,
            // Earlier than the plan's first stage when a damaged checkpoint made it start
            // further back.
            first_stage: first.min(planned_first),
            resumed,
            on_disk,
            finished,
        });
    }
    let total: u64 = jobs.iter().map(|j| j.data.cost_from(j.first)).sum();
    let bar = Progress::new("training shards", total, progress);
    let syncs = DirSyncs::new();
    let dir = run.dir.clone();
    let sink = |ck: &Checkpoint, epochs: u32, rows: u64| {
        failpoint("task.checkpoint");
        Run::store_checkpoint(&dir, ck, epochs, rows, &syncs)
    };
    let started = Instant::now();
    let mut trained: std::collections::HashMap<usize, crate::train::Trained> =
        train_jobs(jobs, threads, &bar, &sink)?
            .into_iter()
            .map(|t| (t.shard, t))
            .collect();
    syncs.sync()?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    for p in prepared {
        let mut stages = p.on_disk;
        let last = match (p.finished, trained.remove(&p.shard)) {
            (Some(ck), _) => ck,
            (None, Some(t)) => {
                stages.extend(t.stages);
                t.last
            }
            (None, None) => unreachable!("every shard with stages to train was trained"),
        };
        debug_assert_eq!(stages.len(), slices + 1 - p.first_stage);
        let result = TaskResult {
            format: plan::TASK_FORMAT.to_string(),
            plan: planned.plan.id.clone(),
            shard: p.shard,
            first_stage: p.first_stage,
            stages,
            model_digest: last.digest(),
            machine: last.machine.clone(),
            host: crate::machine::host(),
            seconds,
        };
        failpoint("task.result");
        result.write(&run.dir)?;
        outcomes[p.slot].1 = Some(Outcome::Trained {
            result,
            resumed: p.resumed,
        });
    }
    Ok(outcomes
        .into_iter()
        .map(|(k, o)| (k, o.expect("every shard has an outcome")))
        .collect())
}

/// A shard about to train: where its outcome goes, and what its result will record besides
/// the stages it trains.
struct Prepared {
    slot: usize,
    shard: usize,
    first_stage: usize,
    resumed: usize,
    on_disk: Vec<StageEntry>,
    /// Its final checkpoint, when an earlier attempt left every stage on disk.
    finished: Option<Checkpoint>,
}

/// Where shard `data` resumes to train from the plan's stage `first`: after the last stage
/// whose checkpoint an earlier attempt left on disk (every stage from `first` to it present,
/// the last one reading back), else from the plan's starting checkpoint
/// ([`start_checkpoint`]). Returns the first stage to train, its starting checkpoint and how
/// many stages were found on disk.
fn resume_point(
    run: &Run,
    data: &ShardData<'_>,
    first: usize,
) -> Result<(usize, Option<Checkpoint>, usize)> {
    let k = data.shard;
    let slices = run.config.slices;
    let mut last_present = first - 1;
    while last_present < slices
        && run
            .dir
            .path(RunFile::Checkpoint(k, &data.lineages[last_present]))
            .exists()
    {
        last_present += 1;
    }
    if last_present >= first {
        let lineage = data.lineages[last_present - 1];
        let path = run.dir.path(RunFile::Checkpoint(k, &lineage));
        let read = std::fs::read(&path)
            .map_err(|e| Error::io(&path, e))
            .and_then(|b| Checkpoint::decode(&path, &b, &run.config.model_config(k)?, k, &lineage));
        match read {
            Ok(ck) => return Ok((last_present + 1, Some(ck), last_present + 1 - first)),
            Err(e) => eprintln!("sisa: warning: shard {k}: {e}; training its stages again"),
        }
    }
    let (first, start) = start_checkpoint(run, k, first);
    Ok((first, start, 0))
}

/// Where shard `k` resumes to retrain from stage `first`: the checkpoint of stage `first - 1`
/// and `first`, or, when that checkpoint is missing or damaged, the latest earlier one that
/// reads back (from scratch if none does). Training is deterministic, so retraining more
/// stages gives the same bits; a deletion already acknowledged is never stopped by a damaged
/// checkpoint the deletion would not even keep.
pub fn start_checkpoint(run: &Run, k: usize, first: usize) -> (usize, Option<Checkpoint>) {
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

/// What [`publish_plan`] published.
#[derive(Clone, Debug)]
pub struct PublishedPlan {
    /// The new ensemble version.
    pub version: u64,
    /// The shards its tasks trained.
    pub shards: Vec<usize>,
    /// The deletion requests it applies.
    pub requests: Vec<crate::unlearn::RequestId>,
    /// The longest task's training time, seconds (the tasks ran side by side).
    pub seconds: f64,
    /// The machine kind every shard was trained on.
    pub machine: String,
}

/// Check every pending shard's result against the plan ([`Planned::checked_result`]) and
/// the machine kinds of the whole version, then publish it (`CURRENT` replaced by one atomic
/// rename) and remove the plan. Refused, with every shard at fault named, when a shard has no
/// result, has one from an older plan or a damaged one, or when the version's shards were
/// trained on different machine kinds. The caller holds the run's lock and its publish lock.
pub fn publish_plan(planned: &Planned) -> Result<PublishedPlan> {
    let plan = &planned.plan;
    let dir = &planned.run.dir;
    let mut manifest = plan.manifest.clone();
    let mut refusals = Vec::new();
    let mut seconds = 0f64;
    for p in &plan.pending {
        match planned.checked_result(p.shard) {
            Ok(r) => {
                let entry = &mut manifest.shards[p.shard];
                for (i, st) in r.stages.into_iter().enumerate() {
                    entry.stages[r.first_stage - 1 + i] = st;
                }
                entry.model_digest = r.model_digest;
                entry.machine = r.machine;
                seconds = seconds.max(r.seconds);
            }
            Err(why) => refusals.push(format!("shard {}: {why}", p.shard)),
        }
    }
    if !refusals.is_empty() {
        return Err(Error::run(
            dir.root(),
            format!(
                "cannot publish plan {}: {} of its {} shard(s) are not ready\n  {}",
                plan.short_id(),
                refusals.len(),
                plan.pending.len(),
                refusals.join("\n  ")
            ),
        ));
    }
    let machine = one_machine_kind(dir.root(), &manifest)?;
    if let Some((k, _)) = manifest.shards.iter().enumerate().find(|(_, s)| {
        s.model_digest.is_empty() || s.stages.iter().any(|st| st.file_digest.is_empty())
    }) {
        return Err(Error::corrupt(
            dir.path(RunFile::Plan),
            format!("shard {k} has stages to train that the plan does not list as pending"),
        ));
    }
    manifest.publish(dir)?;
    failpoint("publish.published");
    Plan::remove(dir)?;
    Ok(PublishedPlan {
        version: manifest.version,
        shards: plan.shards(),
        requests: plan.requests.clone(),
        seconds,
        machine,
    })
}

/// The machine kinds that trained the shards of `manifest`, each with its shards, the most
/// common first (shards from before sisa recorded kinds are left out).
pub fn machine_kinds(manifest: &crate::run::Manifest) -> Vec<(String, Vec<usize>)> {
    let mut kinds: Vec<(String, Vec<usize>)> = Vec::new();
    for s in manifest.shards.iter().filter(|s| !s.machine.is_empty()) {
        match kinds.iter_mut().find(|(m, _)| *m == s.machine) {
            Some((_, shards)) => shards.push(s.shard),
            None => kinds.push((s.machine.clone(), vec![s.shard])),
        }
    }
    kinds.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
    kinds
}

/// `shard(s) 0-3 on 'A'; shard(s) 4 on 'B'`.
pub fn describe_kinds(kinds: &[(String, Vec<usize>)]) -> String {
    kinds
        .iter()
        .map(|(m, s)| format!("shard(s) {} on '{m}'", crate::plan::shard_ranges(s)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The one machine kind that trained every shard of `manifest` (empty when none is
/// recorded), or a refusal that lists the kinds and their shards.
pub fn one_machine_kind(root: &Path, manifest: &crate::run::Manifest) -> Result<String> {
    let kinds = machine_kinds(manifest);
    match kinds.len() {
        0 => Ok(String::new()),
        1 => Ok(kinds[0].0.clone()),
        n => Err(Error::run(
            root,
            format!(
                "cannot publish: the version's shards were trained on {n} machine kinds, and a model is \
                 bitwise what training from scratch gives only on the kind that trained it: {}. \
                 Run the other shards' tasks on machines of kind '{}' (a Slurm --constraint, a \
                 Kubernetes node selector) and publish again",
                describe_kinds(&kinds),
                kinds[0].0
            ),
        )),
    }
}
