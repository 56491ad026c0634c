//! Model presets: `models/*.toml`, checked into a [`ModelSpec`] the trainer can run.

use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Nonlinearity of the hidden layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Hyperbolic tangent (the SISA paper's Purchase model).
    Tanh,
    /// Rectified linear unit.
    Relu,
}

/// Optimizer, with its state kept in every checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with (heavy-ball) momentum.
    Sgd,
    /// Adam with decoupled weight decay (AdamW when `weight_decay` > 0).
    Adam,
}

/// Largest batch size accepted.
pub const MAX_BATCH: usize = 1 << 16;
/// Largest epoch count accepted.
pub const MAX_EPOCHS: u32 = 100_000;
/// Largest hidden-layer width accepted.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most hidden layers accepted.
pub const MAX_LAYERS: usize = 64;
/// Most parameters (weights and biases) a shard model may have: 2²⁷, half a GiB of `f32`
/// before gradients and optimizer state.
pub const MAX_PARAMETERS: u64 = 1 << 27;

fn default_momentum() -> f32 {
    0.9
}
fn default_true() -> bool {
    true
}
fn default_activation() -> Activation {
    Activation::Tanh
}

/// A model preset: architecture, optimizer and training defaults.
///
/// Every field is saved in `run.json`, so a run never depends on the preset file again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name of the preset (`mlp`, `logreg`).
    pub name: String,
    /// One line saying what the preset is.
    #[serde(default)]
    pub description: String,
    /// Widths of the hidden layers; empty for logistic regression.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Hidden-layer nonlinearity. Default: tanh.
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f32,
    /// Momentum for SGD; ignored by Adam. Default: 0.9.
    #[serde(default = "default_momentum")]
    pub momentum: f32,
    /// Weight decay (L2 for SGD, decoupled for Adam). Default: 0.
    #[serde(default)]
    pub weight_decay: f32,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Epochs of unsliced training; stages get SISA's recalibrated share.
    pub epochs: u32,
    /// Standardize features per shard (from the shard's first slice). Default: true.
    #[serde(default = "default_true")]
    pub standardize: bool,
}

impl ModelSpec {
    /// Read a preset file and check it.
    pub fn load(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path).at(path)?;
        let spec: ModelSpec = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?;
        spec.validate().map_err(|e| match e {
            Error::Field { field, message } => {
                Error::Config(format!("{}: {field} {message}", path.display()))
            }
            other => other,
        })?;
        Ok(spec)
    }

    /// Refuse values that cannot train; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 100.0) {
            return Err(Error::field(
                "lr",
                format!("must be in (0, 100), got {}", self.lr),
            ));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(Error::field(
                "momentum",
                format!("must be in [0, 1), got {}", self.momentum),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::field(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            ));
        }
        Error::check_range("batch_size", self.batch_size, 1..=MAX_BATCH)?;
        Error::check_range("epochs", self.epochs as usize, 1..=MAX_EPOCHS as usize)?;
        for &w in &self.hidden {
            Error::check_range("hidden", w, 1..=MAX_WIDTH)?;
        }
        if self.hidden.len() > MAX_LAYERS {
            return Err(Error::field(
                "hidden",
                format!("has {} layers; at most {MAX_LAYERS}", self.hidden.len()),
            ));
        }
        Ok(())
    }

    /// Refuse a network too large to hold: more than [`MAX_PARAMETERS`] weights for
    /// `features` inputs and `classes` outputs. The error names the field `model`.
    pub fn check_size(&self, features: usize, classes: usize) -> Result<()> {
        let dims = self.dims(features, classes);
        let params = dims.windows(2).try_fold(0u64, |acc, w| {
            (w[0] as u64)
                .checked_mul(w[1] as u64)
                .and_then(|p| p.checked_add(w[1] as u64))
                .and_then(|p| acc.checked_add(p))
        });
        match params {
            Some(p) if p <= MAX_PARAMETERS => Ok(()),
            _ => Err(Error::field(
                "model",
                format!(
                    "{dims:?} (inputs, hidden widths, classes) needs more than {MAX_PARAMETERS} parameters"
                ),
            )),
        }
    }

    /// Layer widths from input to output.
    pub fn dims(&self, features: usize, classes: usize) -> Vec<usize> {
        let mut d = vec![features];
        d.extend(&self.hidden);
        d.push(classes);
        d
    }
}
