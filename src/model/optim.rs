//! Optimizers whose whole state is ours to save: SGD with momentum, and Adam(W).
//!
//! The state (velocities or moments, and the step count) goes into every checkpoint, so a
//! stage resumed from a checkpoint continues exactly as if training had never stopped.

use crate::model::{simd, OptimizerKind};

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// An optimizer and its state for one network.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// Which update rule.
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Steps taken so far.
    pub step: u64,
    /// State buffers, named as [`OptimizerKind::state_prefixes`] says.
    pub buffers: Vec<Vec<f32>>,
}

impl Optimizer {
    /// Fresh state (zeros) for parameters of `sizes` values each.
    pub fn new(
        kind: OptimizerKind,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        sizes: impl Iterator<Item = usize> + Clone,
    ) -> Self {
        let mut buffers = Vec::new();
        for _ in kind.state_prefixes() {
            buffers.extend(sizes.clone().map(|n| vec![0.0; n]));
        }
        Optimizer {
            kind,
            lr,
            momentum,
            weight_decay,
            step: 0,
            buffers,
        }
    }

    /// Apply `grads` to `params` (the same order and sizes as at [`Optimizer::new`]).
    pub fn update<'p, 'g>(
        &mut self,
        params: impl Iterator<Item = &'p mut Vec<f32>>,
        grads: impl Iterator<Item = &'g Vec<f32>>,
    ) {
        self.step += 1;
        let n = self.buffers.len();
        match self.kind {
            OptimizerKind::Sgd => {
                let (mu, wd, lr) = (self.momentum, self.weight_decay, self.lr);
                for ((p, g), m) in params.zip(grads).zip(self.buffers.iter_mut()) {
                    simd::wide(
                        #[inline(always)]
                        || {
                            for ((p, g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                                let g = g + wd * *p;
                                *m = mu * *m + g;
                                *p -= lr * *m;
                            }
                        },
                    );
                }
            }
            OptimizerKind::Adam => {
                // powi is repeated multiplication and sqrt is correctly rounded: the bias
                // corrections do not depend on the platform's math library.
                let t = self.step.min(i32::MAX as u64) as i32;
                let bc1 = (1.0 - (BETA1 as f64).powi(t)) as f32;
                let inv_bc2_sqrt = (1.0 / (1.0 - (BETA2 as f64).powi(t)).sqrt()) as f32;
                let step_size = self.lr / bc1;
                let decay = 1.0 - self.lr * self.weight_decay;
                let (ms, vs) = self.buffers.split_at_mut(n / 2);
                for (((p, g), m), v) in params.zip(grads).zip(ms.iter_mut()).zip(vs.iter_mut()) {
                    simd::wide(
                        #[inline(always)]
                        || {
                            for (((p, g), m), v) in
                                p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                            {
                                *m = BETA1 * *m + (1.0 - BETA1) * g;
                                *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                                let denom = v.sqrt() * inv_bc2_sqrt + EPS;
                                *p = *p * decay - step_size * *m / denom;
                            }
                        },
                    );
                }
            }
        }
    }
}

impl OptimizerKind {
    /// The state each parameter gets, by name prefix: `m` (SGD's velocity, Adam's first
    /// moment) and `v` (Adam's second moment).
    pub fn state_prefixes(self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Sgd => &["m"],
            OptimizerKind::Adam => &["m", "v"],
        }
    }
}
