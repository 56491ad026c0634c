//! Adding rows to a published run without ever bringing back a forgotten user.
//!
//! New rows join their shards and slices by the same pure functions as at train time; each
//! touched shard retrains from its earliest stage whose lineage changed, so the result equals
//! training from scratch on all the data. Rows of any user in the ledger are refused and
//! counted: re-importing a raw export cannot resurrect a deletion.

use crate::checkpoint::Checkpoint;
use crate::data::ingest::{self, Target};
use crate::data::{source, InputSpec, Need, Priors, Rows, UserKey};
use crate::error::{Error, Result};
use crate::plan::{self, ShardBy};
use crate::run::durable::{failpoint, DirSyncs};
use crate::run::{RowsFile, Run};
use crate::train::{Job, ShardData};
use crate::unlearn::{Ledger, Options};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

/// What `sisa add` did.
#[derive(Clone, Debug, Serialize)]
pub struct AddReport {
    /// Rows read from the file.
    pub rows_read: u64,
    /// Rows added to the run.
    pub rows_added: u64,
    /// Rows refused because their user was forgotten by an earlier request.
    pub rows_refused: u64,
    /// Distinct forgotten users whose rows were refused.
    pub users_refused: u64,
    /// Shards retrained, with the first stage retrained.
    pub shards: Vec<(usize, usize)>,
    /// Rows×epochs retrained.
    pub retrained_rows_epochs: u64,
    /// Ensemble version published (unchanged when nothing was added).
    pub version: u64,
    /// Content digest of the batch ([`crate::data::batch::BatchDigest`]), recorded in the
    /// manifest so that adding the same rows again is refused.
    pub batch_digest: String,
}

/// Add the rows of `input` (any format the run's data could have) to `run`, refusing every user in `ledger`, and publish a new version.
///
/// Reads only the shards the new rows go to (and, when shards are set aside for likely
/// requesters, the user-key columns of the other shard a known user could be in; under row
/// sharding, every shard's user-key column, since a user's rows are numbered across shards).
/// `priors` places new likely requesters; a known user keeps the place of their rows.
///
/// A batch whose rows (user, label, features, in order) digest like one added before is
/// refused, naming the version that added it, unless `allow_duplicate`: adding a file twice
/// would otherwise train on every row twice.
pub fn add_rows(
    run: &mut Run,
    ledger: &Ledger,
    input: &InputSpec,
    priors: Option<&Priors>,
    allow_duplicate: bool,
    opts: &Options,
) -> Result<AddReport> {
    let data = input.path();
    if let Some(plan) = crate::unlearn::defer::pending_plan(run)? {
        return Err(Error::run(
            run.dir.root(),
            format!(
                "plan {} is pending ({} shard task(s) to publish): adding rows would change the \
                 data its tasks train on; run its tasks and sisa publish first",
                plan.short_id(),
                plan.pending.len()
            ),
        ));
    }
    crate::machine::require_gpu_kind(run.config.device, &run.manifest, "add")?;
    let _publishing = crate::run::PublishLock::acquire(run.dir.root())?;
    if priors.is_some() && run.config.risk_threshold.is_none() {
        return Err(Error::Request(
            "the run was trained without a deletion prior; add its rows without one".into(),
        ));
    }
    // Features by name (by position for NumPy), labels read as the run's classes.
    let mut table = source::read_for_run(input, &run.config, Need::Required, Need::Required)?;
    let rows_read = table.len() as u64;
    let batch_digest = batch_digest(&table);
    if !allow_duplicate && run.manifest.added_batches.contains(&batch_digest) {
        return Err(Error::input(
            data,
            None,
            None,
            format!(
                "these {rows_read} rows were added to the run before (batch digest {}); \
                 pass --allow-duplicate to add them again",
                &batch_digest[..16]
            ),
        ));
    }
    // Refuse every row of a forgotten user.
    let forgotten: HashSet<UserKey> = ledger.deleted_users().into_iter().map(|(k, _)| k).collect();
    let ids = table.user_ids.clone().expect("user column is required");
    let keep: Vec<bool> = ids
        .iter()
        .map(|id| !forgotten.contains(&run.key(id)))
        .collect();
    let refused_users: HashSet<&str> = ids
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(id, _)| id.as_str())
        .collect();
    let rows_refused = keep.iter().filter(|k| !**k).count() as u64;
    table = table.filter(&keep);
    let mut report = AddReport {
        rows_read,
        rows_added: table.len() as u64,
        rows_refused,
        users_refused: refused_users.len() as u64,
        shards: Vec::new(),
        retrained_rows_epochs: 0,
        version: run.manifest.version,
        batch_digest: batch_digest.clone(),
    };
    if table.is_empty() {
        return Ok(report);
    }
    let rules = run.config.rules();
    let ids = table.user_ids.as_ref().expect("user column is required");
    let likely = |id: &str| priors.is_some_and(|p| p.likely(id));
    // The shards the new rows go to (placement does not depend on row numbers under user
    // sharding; under row sharding every shard may receive rows).
    let mut shards: BTreeMap<usize, Rows> = BTreeMap::new();
    // Rows each known user already has, and (under user sharding) where.
    let mut existing: HashMap<UserKey, u32> = HashMap::new();
    let mut home: HashMap<UserKey, (usize, u32)> = HashMap::new();
    match rules.shard_by {
        ShardBy::User => {
            let targets: BTreeSet<usize> = ids
                .iter()
                .map(|id| rules.place(id, 0, likely(id)).shard)
                .collect();
            for k in targets {
                let rows = run.shard_rows(k)?;
                for i in 0..rows.len() {
                    *existing.entry(rows.keys[i]).or_insert(0) += 1;
                    home.entry(rows.keys[i]).or_insert((k, rows.slices[i]));
                }
                shards.insert(k, rows);
            }
        }
        // A user's rows are numbered across every shard: count them from the key columns.
        ShardBy::Row => {
            for k in 0..run.config.shards {
                for key in run.shard_keys(k)? {
                    *existing.entry(key).or_insert(0) += 1;
                }
            }
        }
    }
    if rules.shard_by == ShardBy::User && rules.risk_shards > 0 {
        let mut others: BTreeMap<usize, HashSet<UserKey>> = BTreeMap::new();
        for id in ids {
            let key = run.key(id);
            let here = rules.place(id, 0, likely(id)).shard;
            for k in rules.candidate_shards(id).unwrap_or_default() {
                if k == here {
                    continue;
                }
                let keys = match others.entry(k) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(run.shard_keys(k)?.into_iter().collect())
                    }
                };
                if keys.contains(&key) {
                    return Err(placement_moved(data, id, k, here));
                }
            }
        }
    }
    for id in ids {
        let key = run.key(id);
        if let Some(&(shard, slice)) = home.get(&key) {
            // Under user sharding a user's rows share a shard, and, sliced by user or
            // placed as a likely requester, a slice.
            let p = rules.place(id, plan::row_tag(rules.seed, id, 0), likely(id));
            let one_slice = rules.slice_by == crate::plan::SliceBy::User || likely(id);
            if rules.shard_by == ShardBy::User
                && (p.shard != shard || (one_slice && p.slice as u32 != slice))
            {
                return Err(placement_moved(data, id, shard, p.shard));
            }
        }
    }
    let placed = ingest::place_rows(
        &table,
        rules,
        Target::Train,
        priors,
        run.secret(),
        &existing,
    )?;
    let mut manifest = run.manifest.clone();
    let mut touched: Vec<usize> = Vec::new();
    for (k, new) in placed.into_iter().enumerate() {
        if new.is_empty() {
            continue;
        }
        let merged = match shards.entry(k) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(run.shard_rows(k)?),
        };
        for i in 0..new.len() {
            merged.push_from(&new, i);
        }
        merged.sort();
        if let Some(tag) = merged.duplicate_tag() {
            return Err(Error::input(
                data,
                None,
                None,
                format!("a new row repeats the identity tag {tag:016x} of an existing row"),
            ));
        }
        touched.push(k);
    }
    let mut jobs = Vec::new();
    let syncs = DirSyncs::new();
    for &k in &touched {
        manifest.shards[k].data =
            Run::store_rows(&run.dir, RowsFile::Shard(k), &shards[&k], &syncs)?;
    }
    syncs.sync()?;
    failpoint("add.rows");
    let datas: Vec<(usize, ShardData)> = touched
        .iter()
        .map(|&k| {
            (
                k,
                ShardData::new(&run.config, &run.config_digest, k, &shards[&k]),
            )
        })
        .collect();
    for (k, data) in datas {
        let old = &run.manifest.shards[k].stages;
        let first = data
            .lineages
            .iter()
            .zip(old)
            .position(|(a, b)| *a != b.lineage)
            .map(|i| i + 1);
        let Some(first) = first else { continue };
        let start: Option<Checkpoint> = if first > 1 {
            Some(run.checkpoint(k, first - 1)?)
        } else {
            None
        };
        manifest.shards[k].set_slices(&data.index);
        report.shards.push((k, first));
        jobs.push(Job { data, first, start });
    }
    report.retrained_rows_epochs = jobs.iter().map(|j| j.data.cost_from(j.first)).sum();
    crate::unlearn::retrain_into(run, &mut manifest, jobs, "adding", opts)?;
    manifest.version += 1;
    manifest.added_batches.push(batch_digest);
    run.publish(manifest)?;
    run.collect_garbage_in(Some(&touched))?;
    report.version = run.manifest.version;
    Ok(report)
}

/// The content digest of every row of `table`, as read (before any row is refused).
fn batch_digest(table: &crate::data::csv::Table) -> String {
    let mut d = crate::data::batch::BatchDigest::new();
    let users = table.user_ids.as_deref().unwrap_or_default();
    let labels = table.labels.as_deref().unwrap_or_default();
    for (i, (user, label)) in users.iter().zip(labels).enumerate() {
        d.push(user, *label, table.row(i));
    }
    d.finish()
}

/// A known user whose new rows the rules (with the prior given) would place elsewhere than
/// their rows: a user's rows never span shards, so the add is refused.
fn placement_moved(data: &Path, id: &str, was: usize, now: usize) -> Error {
    Error::input(
        data,
        None,
        None,
        format!(
            "user '{id}' has rows in shard {was}, but the deletion prior given now places their \
             new rows in shard {now} (or another slice); add with the prior the run was \
             trained with"
        ),
    )
}
