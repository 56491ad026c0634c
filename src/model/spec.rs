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
        spec.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(spec)
    }

    /// Refuse values that cannot train.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 100.0) {
            return Err(format!("lr must be in (0, 100), got {}", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(1..=1 << 16).contains(&self.batch_size) {
            return Err(format!(
                "batch_size must be in 1..=65536, got {}",
                self.batch_size
            ));
        }
        if !(1..=100_000).contains(&self.epochs) {
            return Err(format!("epochs must be in 1..=100000, got {}", self.epochs));
        }
        if let Some(w) = self.hidden.iter().find(|&&w| !(1..=1 << 16).contains(&w)) {
            return Err(format!("hidden layer width must be in 1..=65536, got {w}"));
        }
        Ok(())
    }

    /// Layer widths from input to output.
    pub fn dims(&self, features: usize, classes: usize) -> Vec<usize> {
        let mut d = vec![features];
        d.extend(&self.hidden);
        d.push(classes);
        d
    }
}
