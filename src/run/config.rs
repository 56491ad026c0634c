//! `run.json`: everything that determined the run's models, fixed at train time.

use crate::error::{Error, IoContext, Result};
use crate::model::ModelSpec;
use crate::plan::ShardBy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Schema tag of `run.json`.
pub const RUN_FORMAT: &str = "sisa-run/1";

/// How shard models are combined into one prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Average the shards' class probabilities (posterior mean). Default.
    Mean,
    /// Each shard votes for its top class; ties go to the smallest label.
    Vote,
}

impl Aggregation {
    /// The name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
            Aggregation::Vote => "vote",
        }
    }
}

/// The run's configuration, saved as `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Schema tag, [`RUN_FORMAT`].
    pub format: String,
    /// The run's name (its directory name at train time); the served model's name.
    pub name: String,
    /// The model preset with command-line overrides applied.
    pub model: ModelSpec,
    /// Number of shards S.
    pub shards: usize,
    /// Number of slices R per shard.
    pub slices: usize,
    /// Epochs of each stage (SISA's recalibration of `model.epochs`).
    pub stage_epochs: Vec<u32>,
    /// Seed of every derived random choice.
    pub seed: u64,
    /// How rows are assigned to shards.
    pub shard_by: ShardBy,
    /// Feature column names, in order.
    pub features: Vec<String>,
    /// Number of classes (largest label + 1, or `--classes`).
    pub classes: usize,
    /// User id column of the input files.
    pub user_column: String,
    /// Label column of the input files.
    pub label_column: String,
    /// Default aggregation for eval and predict.
    pub aggregation: Aggregation,
    /// CPU model the run was trained on; bitwise comparisons hold on the same kind of CPU.
    pub cpu: String,
    /// `sisa` version that created the run.
    pub created_by: String,
}

/// The part of the configuration that determines trained weights.
#[derive(Serialize)]
struct TrainingIdentity<'a> {
    format: &'a str,
    hidden: &'a [usize],
    activation: crate::model::Activation,
    optimizer: crate::model::OptimizerKind,
    lr: u32,
    momentum: u32,
    weight_decay: u32,
    batch_size: usize,
    standardize: bool,
    shards: usize,
    slices: usize,
    stage_epochs: &'a [u32],
    seed: u64,
    shard_by: ShardBy,
    features: usize,
    classes: usize,
}

impl RunConfig {
    /// SHA-256 of everything that determines the trained weights (floats by their bits); part
    /// of every lineage. Names, columns and the CPU string are left out.
    pub fn digest(&self) -> [u8; 32] {
        let id = TrainingIdentity {
            format: RUN_FORMAT,
            hidden: &self.model.hidden,
            activation: self.model.activation,
            optimizer: self.model.optimizer,
            lr: self.model.lr.to_bits(),
            momentum: self.model.momentum.to_bits(),
            weight_decay: self.model.weight_decay.to_bits(),
            batch_size: self.model.batch_size,
            standardize: self.model.standardize,
            shards: self.shards,
            slices: self.slices,
            stage_epochs: &self.stage_epochs,
            seed: self.seed,
            shard_by: self.shard_by,
            features: self.features.len(),
            classes: self.classes,
        };
        let json = serde_json::to_vec(&id).expect("serializing plain data cannot fail");
        Sha256::digest(json).into()
    }

    /// Layer widths, input to output.
    pub fn dims(&self) -> Vec<usize> {
        self.model.dims(self.features.len(), self.classes)
    }

    /// Read and check `run.json`.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let bytes = std::fs::read(path).at(path)?;
        let config: RunConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(path, format!("not a valid run.json: {e}")))?;
        if config.format != RUN_FORMAT {
            return Err(Error::corrupt(
                path,
                format!("format '{}' is not {RUN_FORMAT}", config.format),
            ));
        }
        config
            .model
            .validate()
            .map_err(|e| Error::corrupt(path, e))?;
        if config.shards == 0 || config.slices == 0 || config.stage_epochs.len() != config.slices {
            return Err(Error::corrupt(
                path,
                "shards, slices and stage epochs disagree",
            ));
        }
        if config.features.is_empty() || config.classes < 2 {
            return Err(Error::corrupt(
                path,
                "needs at least one feature and two classes",
            ));
        }
        Ok(config)
    }
}

/// The CPU model name, as far as the operating system tells it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
