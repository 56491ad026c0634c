//! Planning a deletion: users → rows → shards → first affected stage → cost. Pure: it reads
//! the rows it is given (the touched shards' and held-out buckets') and changes nothing, so
//! `--dry-run` prints exactly what would be done.

use crate::data::{Rows, SliceIndex, UserKey};
use crate::run::Run;
use crate::train::ShardData;
use crate::unlearn::Loaded;
use serde::Serialize;
use std::collections::HashSet;

/// What unlearning does to one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardPlan {
    /// The shard.
    pub shard: usize,
    /// Rows of the users in this shard.
    pub rows_removed: u64,
    /// First stage whose lineage changes (1-based); retraining starts here from the
    /// checkpoint of the stage before.
    pub first_stage: usize,
    /// Stages retrained (`R - first_stage + 1`).
    pub stages_retrained: usize,
    /// Rows×epochs retraining this shard costs.
    pub retrain_rows_epochs: u64,
    /// Lineage of the shard's last stage now.
    pub lineage_before: String,
    /// Model digest now.
    pub model_digest_before: String,
}

/// What unlearning a set of users does to a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnlearnPlan {
    /// Ensemble version the plan is made against.
    pub version_before: u64,
    /// Keys of the users.
    pub users: Vec<UserKey>,
    /// Affected shards, in order.
    pub shards: Vec<ShardPlan>,
    /// Shards the users never touched: not retrained.
    pub untouched_shards: Vec<usize>,
    /// Training rows removed.
    pub train_rows_removed: u64,
    /// Held-out rows removed.
    pub test_rows_removed: u64,
    /// Rows×epochs this plan retrains.
    pub retrain_rows_epochs: u64,
    /// Rows×epochs of a full retrain: one model trained from scratch on all remaining rows for
    /// the configured epochs (the SISA paper's baseline).
    pub full_retrain_rows_epochs: u64,
    /// Rows×epochs of retraining every shard of this run from scratch on the remaining rows.
    pub ensemble_retrain_rows_epochs: u64,
    /// Rows×epochs a request of as many users, owning as many rows each, costs on average
    /// under the run's sharding and slicing rules with uniform placement (the SISA paper's
    /// expectation, [`crate::plan::formula::users_rows_epochs`]): what this plan is
    /// measured against.
    pub expected_rows_epochs: f64,
}

impl UnlearnPlan {
    /// Retrained share of a full retrain (0 when nothing is retrained).
    pub fn fraction(&self) -> f64 {
        if self.full_retrain_rows_epochs == 0 {
            0.0
        } else {
            self.retrain_rows_epochs as f64 / self.full_retrain_rows_epochs as f64
        }
    }
}

/// One touched shard's rows without the users, sliced: computed once by the plan and reused
/// by the executor, so no row is hashed twice.
#[derive(Clone, Debug)]
pub struct Kept {
    /// The shard.
    pub shard: usize,
    /// Its rows without the users'.
    pub rows: Rows,
    /// Their slices and slice digests.
    pub index: SliceIndex,
}

/// Plan the removal of `users` from `run`, given the rows of every shard that may hold them
/// and of the held-out buckets that may (see [`super::Loaded`]); other shards are untouched.
pub fn plan_unlearning(run: &Run, users: &[UserKey], loaded: &Loaded) -> UnlearnPlan {
    prepare(run, users, loaded).0
}

/// [`plan_unlearning`], and the kept rows of every touched shard.
pub fn prepare(run: &Run, users: &[UserKey], loaded: &Loaded) -> (UnlearnPlan, Vec<Kept>) {
    let set: HashSet<UserKey> = users.iter().copied().collect();
    let mut plans = Vec::new();
    let mut kept_shards = Vec::new();
    let mut untouched = Vec::new();
    let mut full = 0u64;
    for (k, entry) in run.manifest.shards.iter().enumerate() {
        let removed = loaded
            .shards
            .get(&k)
            .map_or(0, |rows| rows.count_of(&set) as u64);
        if removed == 0 {
            untouched.push(k);
            full += entry.cost();
            continue;
        }
        let rows = &loaded.shards[&k];
        let kept = rows.without(&set);
        // Only the slices that lose rows are hashed again.
        let mut dirty = vec![false; run.config.slices];
        for i in 0..rows.len() {
            if set.contains(&rows.keys[i]) {
                dirty[rows.slices[i] as usize] = true;
            }
        }
        let known = entry.known_slice_digests();
        let index = kept.slice_index_reusing(
            run.config.slices,
            known.as_deref().map(|d| (d, dirty.as_slice())),
        );
        let (first, cost, from_scratch, index) = {
            let data = ShardData::with_index(&run.config, &run.config_digest, k, &kept, index);
            let first = data
                .lineages
                .iter()
                .zip(&entry.stages)
                .position(|(new, old)| *new != old.lineage)
                .map(|i| i + 1)
                .unwrap_or(run.config.slices + 1);
            (first, data.cost_from(first), data.cost_from(1), data.index)
        };
        full += from_scratch;
        plans.push(ShardPlan {
            shard: k,
            rows_removed: removed,
            first_stage: first,
            stages_retrained: run.config.slices + 1 - first,
            retrain_rows_epochs: cost,
            lineage_before: entry
                .stages
                .last()
                .map(|s| s.lineage.to_hex())
                .unwrap_or_default(),
            model_digest_before: entry.model_digest.clone(),
        });
        kept_shards.push(Kept {
            shard: k,
            rows: kept,
            index,
        });
    }
    let train_rows_removed: u64 = plans.iter().map(|p| p.rows_removed).sum();
    let total: u64 = run.manifest.shards.iter().map(|s| s.data.rows).sum();
    let remaining = total - train_rows_removed;
    let mut per_user: std::collections::HashMap<UserKey, u32> = Default::default();
    for rows in loaded.shards.values() {
        for k in rows.keys.iter().filter(|k| set.contains(k)) {
            *per_user.entry(*k).or_insert(0) += 1;
        }
    }
    let user_rows: Vec<u32> = per_user.into_values().collect();
    let expected_rows_epochs = if user_rows.is_empty() {
        0.0
    } else {
        crate::plan::formula::users_rows_epochs(
            total as f64,
            run.config.shards,
            &run.config.stage_epochs,
            user_rows.len(),
            &user_rows,
            (run.config.shard_by, run.config.slice_by),
        )
    };
    let plan = UnlearnPlan {
        version_before: run.manifest.version,
        users: users.to_vec(),
        retrain_rows_epochs: plans.iter().map(|p| p.retrain_rows_epochs).sum(),
        shards: plans,
        untouched_shards: untouched,
        train_rows_removed,
        test_rows_removed: loaded
            .buckets
            .values()
            .map(|t| t.count_of(&set) as u64)
            .sum(),
        full_retrain_rows_epochs: remaining * run.config.model.epochs as u64,
        ensemble_retrain_rows_epochs: full,
        expected_rows_epochs,
    };
    (plan, kept_shards)
}
