//! Shard models: presets read from `models/*.toml`, checked against the data into an
//! [`Architecture`], and built by a backend behind one interface, [`ShardModel`].
//!
//! The optimizer, checkpoints (tensor names come from the model), the model digest, the
//! ensemble, verification, the benchmarks and serving see a shard model only through
//! [`ShardModel`]: named parameters, gradients and optimizer state as (name, shape, data),
//! one training step on a batch, and class probabilities for a batch. A new layer goes into
//! [`spec::LayerSpec`] (its shape rule) and into each backend; a new backend implements
//! [`ShardModel`] and is named in [`Backend`] and [`build`].
//!
//! - `dense` ([`net`]): hand-written CPU code on a single-threaded SGEMM, every layer kind, the
//!   fastest exact path.
//! - `candle` ([`candle`]): the same layers on candle tensors, CPU (and CUDA where built).

pub mod candle;
pub mod device;
pub mod net;
pub mod optim;
pub mod presets;
pub mod simd;
pub mod spec;

pub use net::{Conv2d, Dense, Network, Norm, Op, Workspace};
pub use optim::Optimizer;
pub use spec::{
    Activation, Architecture, Augment, LayerSpec, ModelSpec, OptimizerKind, Shape, Standardize,
};

use crate::error::Result;
use serde::{Deserialize, Serialize};

/// Which implementation trains and runs the shard models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Hand-written CPU code: every layer kind, the fastest exact path. Default.
    #[default]
    Dense,
    /// candle tensors and our own optimizers on them: the code that runs on CUDA.
    Candle,
}

impl Backend {
    /// The name used in `run.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Dense => "dense",
            Backend::Candle => "candle",
        }
    }
}

/// A named tensor: `(name, shape, data)`, row-major `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The name it is saved under (`l0.w`, `opt.m.l0.w`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: Vec<f32>,
}

/// Everything that builds one shard's model: the checked architecture, the optimizer and the
/// seeds derived for the shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Layers and shapes.
    pub arch: Architecture,
    /// The backend.
    pub backend: Backend,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Largest batch.
    pub batch_size: usize,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Seed of the dropout masks.
    pub dropout_seed: u64,
    /// Where the model's tensors live (the candle backend; the dense backend is CPU-only).
    pub device: device::DeviceSpec,
}

impl ModelConfig {
    /// A dense network of widths `dims` (input first, classes last) with `activation`, Adam
    /// at lr 0.01 and batch 64, initialised from `seed`: for tests and benchmarks.
    pub fn dense(dims: &[usize], activation: Activation, seed: u64) -> ModelConfig {
        ModelConfig {
            arch: Architecture::dense(dims, activation),
            backend: Backend::Dense,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 64,
            init_seed: seed,
            dropout_seed: seed ^ 1,
            device: Default::default(),
        }
    }
}

/// Where [`ShardModel::restore`] reads tensors from: `read(name, shape)` gives the values of
/// the tensor saved under `name`, refusing one of another shape.
pub type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a;

/// One shard's model and its optimizer, behind whichever backend runs it.
///
/// Contract: the same configuration, the same batches in the same order and the same
/// optimizer state give the same bits, on any number of threads; [`ShardModel::restore`] of
/// what [`ShardModel::parameters`] and [`ShardModel::optimizer_state`] gave continues exactly
/// where the model stopped.
pub trait ShardModel: Send + Sync + std::fmt::Debug {
    /// The backend that runs it.
    fn backend(&self) -> Backend;
    /// Number of classes.
    fn classes(&self) -> usize;
    /// The trainable tensors, in a fixed order (the model digest and checkpoints use it).
    fn parameters(&self) -> Vec<Tensor>;
    /// The gradients of the last training step, named as the parameters.
    fn gradients(&self) -> Vec<Tensor>;
    /// The optimizer's state tensors (`opt.m.<name>`, `opt.v.<name>`).
    fn optimizer_state(&self) -> Vec<Tensor>;
    /// Optimizer steps taken so far.
    fn steps(&self) -> u64;
    /// Replace parameters and optimizer state with tensors `read(name, shape)` returns (every
    /// name [`ShardModel::parameters`] and [`ShardModel::optimizer_state`] list), after
    /// `steps` steps.
    fn restore(&mut self, read: &mut TensorSource<'_>, steps: u64) -> Result<()>;
    /// One optimizer step on `b` standardized rows `x` with labels `y`; returns the summed
    /// cross-entropy of the batch before the step.
    fn train_step(&mut self, x: &[f32], y: &[u32], b: usize) -> Result<f64>;
    /// Class probabilities for `n` standardized rows, `n × classes` row-major.
    fn predict(&self, x: &[f32], n: usize) -> Vec<f32>;
    /// A copy (training buffers are not copied).
    fn boxed_clone(&self) -> Box<dyn ShardModel>;
}

impl Clone for Box<dyn ShardModel> {
    fn clone(&self) -> Self {
        self.boxed_clone()
    }
}

/// Whether two models hold the same backend, parameters, optimizer state and step count.
pub fn same_model(a: &dyn ShardModel, b: &dyn ShardModel) -> bool {
    a.backend() == b.backend()
        && a.steps() == b.steps()
        && a.parameters() == b.parameters()
        && a.optimizer_state() == b.optimizer_state()
}

/// A fresh, seeded model for `config` on its backend.
pub fn build(config: &ModelConfig) -> Result<Box<dyn ShardModel>> {
    match config.backend {
        Backend::Dense if !config.device.is_cpu() => Err(crate::Error::Usage(format!(
            "--device {}: the dense backend runs on the CPU only; train with --backend candle to use a GPU",
            config.device
        ))),
        Backend::Dense => Ok(Box::new(net::DenseModel::new(config))),
        Backend::Candle => Ok(Box::new(candle::CandleModel::on_device(
            config,
            &config.device.candle()?,
        )?)),
    }
}

/// Class probabilities for `n` raw rows: standardized by `norm`, then `model`, in chunks.
pub fn predict_raw(norm: &Norm, model: &dyn ShardModel, x: &[f32], n: usize) -> Vec<f32> {
    const CHUNK: usize = 256;
    let d = norm.mean.len();
    let c = model.classes();
    let mut xb = vec![0f32; CHUNK.min(n.max(1)) * d];
    let mut out = Vec::with_capacity(n * c);
    for start in (0..n).step_by(CHUNK) {
        let b = CHUNK.min(n - start);
        simd::wide(
            #[inline(always)]
            || {
                for (row, out) in x[start * d..(start + b) * d]
                    .chunks_exact(d)
                    .zip(xb.chunks_exact_mut(d))
                {
                    norm.apply(row, out);
                }
            },
        );
        out.extend(model.predict(&xb[..b * d], b));
    }
    out
}
