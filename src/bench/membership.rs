//! The benchmark's membership audit: a deliberately overfit run, a forget set, and never-seen
//! rows, audited before and after unlearning (see [`crate::audit`]).
//!
//! The run trains on the rows of a random subset of the data's users, many epochs, no weight
//! decay, so its shard models memorise their rows. The forget set is users of shard 0 whose
//! every row lies in its last slice (up to a fifth of the run's users): forgetting them retrains
//! only shard 0's last stage, from the checkpoint of the stage before, the case where a flaw in
//! exact unlearning would show. Never-seen rows are rows of other users of the same file (same distribution, never in
//! the run): one sample is the nonmember set, a disjoint one the pool the null interval draws
//! never-seen groups from. Before unlearning, the forget set must separate from the nonmembers
//! (the positive control); after unlearning it must fall inside the null interval, while rows
//! the run still holds keep separating (the audit did not lose its power).

use crate::audit::{self, AuditOptions, AuditReport, Verdict};
use crate::bench::copy_run;
use crate::bench::report::MembershipResult;
use crate::data::csv::Table;
use crate::ensemble::{self, Ensemble};
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::plan::{self, ShardBy};
use crate::rng::SplitMix64;
use crate::run::{Aggregation, Run};
use crate::train::{self, TrainOptions};
use crate::unlearn;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The overfit configuration. Defaults: 1000 users, at most a fifth forgotten, S = 1, R = 2,
/// 200 epochs, no weight decay, 2000 nonmember rows. One shard, so that no ensemble dilutes
/// what the model memorised; two slices, so that forgetting retrains only the last stage.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipOptions {
    /// Users whose rows the overfit run trains on. Default: 1000.
    pub users: usize,
    /// Largest share of those users forgotten. Default: 0.2.
    pub forget_fraction: f64,
    /// Shards. Default: 1.
    pub shards: usize,
    /// Slices. Default: 2.
    pub slices: usize,
    /// Epochs of unsliced training. Default: 200.
    pub epochs: u32,
    /// Never-seen rows in the nonmember set. Default: 2000.
    pub nonmembers: usize,
    /// Resampling settings.
    pub audit: AuditOptions,
}

impl Default for MembershipOptions {
    fn default() -> Self {
        MembershipOptions {
            users: 1000,
            forget_fraction: 0.2,
            shards: 1,
            slices: 2,
            epochs: 200,
            nonmembers: 2000,
            audit: AuditOptions::default(),
        }
    }
}

/// The rows `idx` of `t` as a table of their own.
fn subset(t: &Table, idx: &[usize]) -> Table {
    let d = t.dim();
    let mut x = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        x.extend_from_slice(t.row(i));
    }
    Table {
        path: t.path.clone(),
        feature_names: t.feature_names.clone(),
        user_ids: t
            .user_ids
            .as_ref()
            .map(|u| idx.iter().map(|&i| u[i].clone()).collect()),
        labels: t
            .labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i]).collect()),
        x,
        lines: idx.iter().map(|&i| t.lines[i]).collect(),
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Write `t` as a CSV with the default columns (`user_id,label,<features>`).
fn write_csv(t: &Table, path: &Path) -> Result<()> {
    let fail = |e: csv::Error| Error::Report {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut w = csv::Writer::from_path(path).map_err(fail)?;
    let mut header = vec!["user_id".to_string(), "label".to_string()];
    header.extend(t.feature_names.iter().cloned());
    w.write_record(&header).map_err(fail)?;
    let users = t.user_ids.as_deref().unwrap_or_default();
    let labels = t.labels.as_deref().unwrap_or_default();
    for i in 0..t.len() {
        let mut rec = vec![users[i].clone(), labels[i].to_string()];
        rec.extend(t.row(i).iter().map(|v| v.to_string()));
        w.write_record(&rec).map_err(fail)?;
    }
    w.flush().map_err(|e| Error::io(path, e))
}

fn losses(run: &Run, t: &Table) -> Result<(Vec<f64>, f64)> {
    let ens = Ensemble::load(run)?;
    let y = t.labels.as_deref().unwrap_or_default();
    let l = audit::row_losses(&ens, &t.x, y);
    let acc = ensemble::accuracy(&ens.predict(&t.x, y.len(), Aggregation::Mean).labels, y);
    Ok((l, acc))
}

/// Train the overfit run under `dir`, audit it, forget the forget set, audit again.
pub fn run(
    data: &Table,
    model: &ModelSpec,
    seed: u64,
    dir: &Path,
    threads: usize,
    opts: &MembershipOptions,
) -> Result<MembershipResult> {
    let ids = data.user_ids.as_deref().unwrap_or_default();
    let mut users: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        if seen.insert(id.as_str()) {
            users.push(id);
        }
    }
    let mut rng = SplitMix64::new(plan::derive_seed(seed, 0, 0, 0, "bench/membership"));
    shuffle(&mut users, &mut rng);
    let members: HashSet<&str> = users[..opts.users.min(users.len() / 2)]
        .iter()
        .copied()
        .collect();
    let member_idx: Vec<usize> = (0..data.len())
        .filter(|&i| members.contains(ids[i].as_str()))
        .collect();
    // Users of shard 0 with every row in the last slice, by the run's own pure rules: a user's
    // k-th row (in file order) has tag row_tag(seed, id, k).
    let last = opts.slices - 1;
    let rules = plan::Rules {
        seed,
        shards: opts.shards,
        slices: opts.slices,
        shard_by: ShardBy::User,
        slice_by: plan::SliceBy::User,
        risk_shards: 0,
    };
    let mut seq: HashMap<&str, u32> = HashMap::new();
    let mut eligible: HashMap<&str, bool> = HashMap::new();
    for &i in &member_idx {
        let id = ids[i].as_str();
        let k = seq.entry(id).or_insert(0);
        let tag = plan::row_tag(seed, id, *k);
        *k += 1;
        let place = rules.place(id, tag, false);
        let ok = place.shard == 0 && place.slice == last;
        *eligible.entry(id).or_insert(true) &= ok;
    }
    let cap = ((members.len() as f64 * opts.forget_fraction).ceil() as usize).max(1);
    let forget: HashSet<&str> = users
        .iter()
        .copied()
        .filter(|u| eligible.get(u).copied().unwrap_or(false))
        .take(cap)
        .collect();
    let forget_idx: Vec<usize> = member_idx
        .iter()
        .copied()
        .filter(|&i| forget.contains(ids[i].as_str()))
        .collect();
    let mut retained_idx: Vec<usize> = member_idx
        .iter()
        .copied()
        .filter(|&i| !forget.contains(ids[i].as_str()))
        .collect();
    shuffle(&mut retained_idx, &mut rng);
    retained_idx.truncate(forget_idx.len());
    let mut unseen_idx: Vec<usize> = (0..data.len())
        .filter(|&i| !members.contains(ids[i].as_str()))
        .collect();
    shuffle(&mut unseen_idx, &mut rng);
    let (m, n) = (forget_idx.len(), opts.nonmembers.min(unseen_idx.len() / 4));
    let pool_n = (3 * (m + n)).min(unseen_idx.len() - n);
    if m < 10 || n == 0 || pool_n < m + n {
        return Err(Error::Config(format!(
            "the membership audit needs more data: {} rows of {} users",
            data.len(),
            users.len()
        )));
    }
    let train_rows = subset(data, &member_idx);
    let forget_rows = subset(data, &forget_idx);
    let retained_rows = subset(data, &retained_idx);
    let nonmember_rows = subset(data, &unseen_idx[..n]);
    let pool_rows = subset(data, &unseen_idx[n..n + pool_n]);

    super::remove_dir(dir)?;
    crate::run::durable::create_dir_all(dir)?;
    let mut spec = model.clone();
    spec.epochs = opts.epochs;
    spec.weight_decay = 0.0;
    let before_dir = dir.join("run");
    let topts = TrainOptions {
        data: crate::data::InputSpec::file(&data.path),
        test: None,
        model: spec,
        shards: opts.shards,
        slices: opts.slices,
        seed,
        shard_by: rules.shard_by,
        slice_by: rules.slice_by,
        priors: None,
        risk_shards: 0,
        out: before_dir.clone(),
        classes: None,
        threads,
        progress: false,
        aggregation: Aggregation::Mean,
        ledger: None,
        backend: crate::model::Backend::Dense,
        device: Default::default(),
    };
    let trained = train::train_tables(&topts, &train_rows, None)?;
    let (_, train_accuracy) = losses(&trained.run, &train_rows)?;
    let (f_before, _) = losses(&trained.run, &forget_rows)?;
    let (n_before, unseen_accuracy) = losses(&trained.run, &nonmember_rows)?;
    let (p_before, _) = losses(&trained.run, &pool_rows)?;

    // Forget on a copy, so the trained run stays for comparison.
    let after_dir = dir.join("run-unlearned");
    copy_run(&before_dir, &after_dir)?;
    let uopts = unlearn::Options {
        threads,
        progress: false,
    };
    let mut unlearner = unlearn::Unlearner::open(&after_dir, None, &uopts)?;
    let mut forget_ids: Vec<String> = forget.iter().map(|u| u.to_string()).collect();
    forget_ids.sort_unstable();
    let receipt = unlearner.forget(&forget_ids)?;
    let retrained: Vec<String> = receipt
        .shards
        .iter()
        .filter(|s| s.stages_retrained > 0)
        .map(|s| {
            format!(
                "shard {} from stage {} of {}",
                s.shard, s.first_stage, opts.slices
            )
        })
        .collect();
    let (run, _ledger, lock) = unlearner.into_parts();
    drop(lock);
    let verdicts = crate::verify::verify(&run, None, threads, false)?;
    let (f_after, _) = losses(&run, &forget_rows)?;
    let (r_after, _) = losses(&run, &retained_rows)?;
    let (n_after, _) = losses(&run, &nonmember_rows)?;
    let (p_after, _) = losses(&run, &pool_rows)?;

    let forget_csv = dir.join("forget.csv");
    let nonmembers_csv = dir.join("nonmembers.csv");
    write_csv(&forget_rows, &forget_csv)?;
    write_csv(&nonmember_rows, &nonmembers_csv)?;

    let from = "never-seen rows of other users of the same file";
    let a = &opts.audit;
    let before: AuditReport = audit::audit(&f_before, &n_before, Some((&p_before, from)), a)?;
    let after = audit::audit(&f_after, &n_after, Some((&p_after, from)), a)?;
    let retained_after = audit::audit(&r_after, &n_after, Some((&p_after, from)), a)?;
    Ok(MembershipResult {
        configuration: format!(
            "`{}` preset, S={}, R={}, {} epochs, no weight decay, on the rows of {} random users",
            model.name,
            opts.shards,
            opts.slices,
            opts.epochs,
            members.len()
        ),
        rows: train_rows.len(),
        forget_users: forget.len(),
        forget_rows: m,
        retrained: format!(
            "{} ({} of {} shards); {} of {} rows×epochs of a full retrain",
            retrained.join(", "),
            retrained.len(),
            opts.shards,
            receipt.cost.retrained_rows_epochs,
            receipt.cost.full_retrain_rows_epochs
        ),
        train_accuracy,
        unseen_accuracy,
        positive_control_separates: before.verdict == Verdict::Separates,
        forgotten_indistinguishable: after.verdict == Verdict::Indistinguishable,
        before,
        after,
        retained_after,
        verified_identical: verdicts.iter().all(|v| v.identical),
        command: format!(
            "sisa audit --run {} --members {} --nonmembers {}",
            after_dir.display(),
            forget_csv.display(),
            nonmembers_csv.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::csv::{read_csv, Columns, Need};

    #[test]
    fn forgets_only_the_last_stage_and_stays_exact() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/digits/train.csv");
        let mut t = read_csv(&path, &Columns::default(), Need::Required, Need::Required).unwrap();
        // One row per user, so that many users have every row in the last slice.
        t.user_ids = Some((0..t.len()).map(|i| format!("r{i}")).collect());
        let model =
            ModelSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/logreg.toml"))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = MembershipOptions {
            users: 600,
            epochs: 10,
            nonmembers: 200,
            audit: AuditOptions {
                bootstrap: 100,
                null_draws: 100,
                ..AuditOptions::default()
            },
            ..MembershipOptions::default()
        };
        let r = run(&t, &model, 7, dir.path(), 2, &opts).unwrap();
        assert_eq!(r.rows, 600);
        assert_eq!(r.forget_users, 120, "a fifth of the users, all eligible");
        assert_eq!(r.forget_rows, 120);
        assert!(
            r.retrained
                .starts_with("shard 0 from stage 2 of 2 (1 of 1 shards)"),
            "{}",
            r.retrained
        );
        assert!(r.verified_identical);
        assert_eq!(r.before.members, 120);
        assert_eq!(r.after.nonmembers, 200);
        assert!(dir.path().join("forget.csv").is_file());
        assert!(dir.path().join("run-unlearned/run.json").is_file());
    }
}
