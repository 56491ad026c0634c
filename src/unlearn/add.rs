//! Adding rows to a published run without ever bringing back a forgotten user.
//!
//! New rows join their shards and slices by the same pure functions as at train time; each
//! touched shard retrains from its earliest stage whose lineage changed, so the result equals
//! training from scratch on all the data. Rows of any user in the ledger are refused and
//! counted: re-importing a raw export cannot resurrect a deletion.

use crate::checkpoint::Checkpoint;
use crate::data::csv::{self, Columns, Need};
use crate::data::ingest::{self, Placement};
use crate::data::UserKey;
use crate::error::{Error, Result};
use crate::run::durable::failpoint;
use crate::run::{RowsFile, Run};
use crate::train::{Job, ShardData};
use crate::unlearn::{Ledger, Options};
use serde::Serialize;
use std::collections::HashSet;
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
}

/// Add the rows of `data` to `run`, refusing every user in `ledger`, and publish a new version.
pub fn add_rows(run: &mut Run, ledger: &Ledger, data: &Path, opts: &Options) -> Result<AddReport> {
    let cols = Columns {
        user: run.config.user_column.clone(),
        label: run.config.label_column.clone(),
    };
    let mut table = csv::read_csv(data, &cols, Need::Required, Need::Required)?;
    table.check_features(&run.config.features, "run")?;
    table.check_labels(run.config.classes, &run.config.label_column)?;
    let rows_read = table.len() as u64;
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
    let (mut shards, _test) = crate::unlearn::load_rows(run)?;
    let mut report = AddReport {
        rows_read,
        rows_added: table.len() as u64,
        rows_refused,
        users_refused: refused_users.len() as u64,
        shards: Vec::new(),
        retrained_rows_epochs: 0,
        version: run.manifest.version,
    };
    if table.is_empty() {
        return Ok(report);
    }
    let existing = ingest::rows_per_user(&shards.iter().collect::<Vec<_>>());
    let placement = Placement {
        seed: run.config.seed,
        shards: run.config.shards,
        shard_by: run.config.shard_by,
    };
    let placed = ingest::place_rows(&table, placement, run.secret(), &existing)?;
    let mut manifest = run.manifest.clone();
    let mut touched: Vec<usize> = Vec::new();
    for (k, new) in placed.into_iter().enumerate() {
        if new.is_empty() {
            continue;
        }
        let merged = &mut shards[k];
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
    for &k in &touched {
        manifest.shards[k].data = Run::store_rows(&run.dir, RowsFile::Shard(k), &shards[k])?;
    }
    failpoint("add.rows");
    let datas: Vec<(usize, ShardData)> = touched
        .iter()
        .map(|&k| {
            (
                k,
                ShardData::new(&run.config, &run.config_digest, k, &shards[k]),
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
        manifest.shards[k].slice_rows = data.index.counts.clone();
        report.shards.push((k, first));
        jobs.push(Job { data, first, start });
    }
    report.retrained_rows_epochs = jobs.iter().map(|j| j.data.cost_from(j.first)).sum();
    crate::unlearn::retrain_into(run, &mut manifest, jobs, "adding", opts)?;
    manifest.version += 1;
    manifest.publish(&run.dir)?;
    run.manifest = manifest;
    run.collect_garbage()?;
    report.version = run.manifest.version;
    Ok(report)
}
