//! Planning a deletion: users → rows → shards → first affected stage → cost. Pure: it reads
//! rows it is given and changes nothing, so `--dry-run` prints exactly what would be done.

use crate::data::{Rows, UserKey};
use crate::run::Run;
use crate::train::ShardData;
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// Plan the removal of `users` from `run`, given every shard's rows and the held-out rows.
pub fn plan_unlearning(
    run: &Run,
    users: &[UserKey],
    shards: &[Rows],
    test: Option<&Rows>,
) -> UnlearnPlan {
    let set: HashSet<UserKey> = users.iter().copied().collect();
    let mut plans = Vec::new();
    let mut untouched = Vec::new();
    let mut full = 0u64;
    for (k, rows) in shards.iter().enumerate() {
        let entry = &run.manifest.shards[k];
        let removed = rows.count_of(&set) as u64;
        if removed == 0 {
            untouched.push(k);
            full += entry.cost();
            continue;
        }
        let kept = rows.without(&set);
        let data = ShardData::new(&run.config, &run.config_digest, k, &kept);
        let first = data
            .lineages
            .iter()
            .zip(&entry.stages)
            .position(|(new, old)| *new != old.lineage)
            .map(|i| i + 1)
            .unwrap_or(run.config.slices + 1);
        let cost = data.cost_from(first);
        full += data.cost_from(1);
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
    }
    let train_rows_removed: u64 = plans.iter().map(|p| p.rows_removed).sum();
    let remaining: u64 =
        run.manifest.shards.iter().map(|s| s.data.rows).sum::<u64>() - train_rows_removed;
    UnlearnPlan {
        version_before: run.manifest.version,
        users: users.to_vec(),
        retrain_rows_epochs: plans.iter().map(|p| p.retrain_rows_epochs).sum(),
        shards: plans,
        untouched_shards: untouched,
        train_rows_removed,
        test_rows_removed: test.map(|t| t.count_of(&set) as u64).unwrap_or(0),
        full_retrain_rows_epochs: remaining * run.config.model.epochs as u64,
        ensemble_retrain_rows_epochs: full,
    }
}
