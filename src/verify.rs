//! The certificate: retrain shards from scratch on the run's current data and compare bitwise.
//!
//! `sisa verify` re-derives what `sisa train` would produce with the same configuration and
//! seed on the data the run now holds, and compares every stage's lineage and checkpoint digest
//! and the final model digest with the published manifest. Equal digests mean equal bits:
//! every deletion so far left exactly the model a from-scratch run would have trained. Results
//! are bitwise on the same kind of machine: each shard records the kind that trained it
//! ([`crate::machine`]), and each verdict says whether this machine is of that kind.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::run::{Run, StageEntry};
use crate::train::{self, Job, Progress, ShardData};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The verdict on one shard.
#[derive(Clone, Debug, Serialize)]
pub struct ShardVerdict {
    /// The shard.
    pub shard: usize,
    /// Model digest in the published manifest.
    pub published: String,
    /// Model digest of the from-scratch retrain.
    pub retrained: String,
    /// Stages whose lineage and checkpoint digest match.
    pub stages_matching: usize,
    /// Stages in the shard.
    pub stages: usize,
    /// True when every stage and the model are bitwise identical.
    pub identical: bool,
    /// The machine kind that trained the published model (empty when not recorded).
    pub trained_on: String,
    /// True when this machine is of that kind (or none is recorded): only then must the
    /// bits agree. On another kind a difference says nothing about the data.
    pub same_machine_kind: bool,
}

/// Retrain `shards` (all when `None`) from scratch and compare with the published run. A
/// stored checkpoint or data file that fails its digest is an error naming the file. A
/// stored checkpoint or data file that fails its digest is an error naming the file.
pub fn verify(
    run: &Run,
    shards: Option<&[usize]>,
    threads: usize,
    progress: bool,
) -> Result<Vec<ShardVerdict>> {
    let all: Vec<usize> = (0..run.config.shards).collect();
    let wanted = shards.unwrap_or(&all);
    for &k in wanted {
        if k >= run.config.shards {
            return Err(Error::Usage(format!(
                "--shard {k}: the run has shards 0..{}",
                run.config.shards - 1
            )));
        }
    }
    // On a GPU the comparison means something only on the kind that trained the shards.
    crate::machine::require_gpu_kind(run.config.device, &run.manifest, "verify")?;
    // Every stored checkpoint must be intact and of its lineage before it is compared.
    for &k in wanted {
        for stage in 1..=run.config.slices {
            run.checkpoint(k, stage)?;
        }
    }
    let rows = wanted
        .iter()
        .map(|&k| run.shard_rows(k))
        .collect::<Result<Vec<_>>>()?;
    let jobs: Vec<Job> = wanted
        .iter()
        .zip(&rows)
        .map(|(&k, r)| Job {
            data: ShardData::new(&run.config, &run.config_digest, k, r),
            first: 1,
            start: None,
        })
        .collect();
    let total = jobs.iter().map(|j| j.data.cost_from(1)).sum();
    let bar = Progress::new("verifying", total, progress);
    let sink = |ck: &Checkpoint, epochs: u32, rows: u64| {
        let bytes = ck.encode();
        Ok(StageEntry {
            lineage: ck.lineage,
            epochs,
            rows,
            file_digest: hex::encode(Sha256::digest(&bytes)),
        })
    };
    let trained = train::train_jobs(jobs, threads, &bar, &sink)?;
    bar.finish();
    Ok(trained
        .into_iter()
        .map(|t| {
            let entry = &run.manifest.shards[t.shard];
            let stages_matching = t
                .stages
                .iter()
                .zip(&entry.stages)
                .filter(|(a, b)| a == b)
                .count();
            let retrained = t.last.digest();
            ShardVerdict {
                shard: t.shard,
                identical: retrained == entry.model_digest && stages_matching == entry.stages.len(),
                published: entry.model_digest.clone(),
                retrained,
                stages_matching,
                stages: entry.stages.len(),
                same_machine_kind: entry.machine.is_empty()
                    || crate::machine::kind_for(run.config.device)
                        .is_ok_and(|k| k == entry.machine),
                trained_on: entry.machine.clone(),
            }
        })
        .collect())
}
