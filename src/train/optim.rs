//! Optimizers whose whole state is ours to save: SGD with momentum, and Adam(W).
//!
//! The state (velocities or moments, and the step count) goes into every checkpoint, so a
//! stage resumed from a checkpoint continues exactly as if training had never stopped.

use crate::model::{simd, Network, OptimizerKind, Workspace};

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
    /// State buffers, named as [`Optimizer::buffer_names`] says.
    pub buffers: Vec<Vec<f32>>,
}

impl Optimizer {
    /// Fresh state (zeros) for `net`.
    pub fn new(
        kind: OptimizerKind,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        net: &Network,
    ) -> Self {
        let mut buffers = Vec::new();
        let copies = match kind {
            OptimizerKind::Sgd => 1,
            OptimizerKind::Adam => 2,
        };
        for _ in 0..copies {
            for l in &net.layers {
                buffers.push(vec![0.0; l.w.len()]);
                buffers.push(vec![0.0; l.b.len()]);
            }
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

    /// Names of the state buffers, in order: `opt.{m|v}.l{i}.{w|b}`.
    pub fn buffer_names(kind: OptimizerKind, layers: usize) -> Vec<String> {
        let prefixes: &[&str] = match kind {
            OptimizerKind::Sgd => &["m"],
            OptimizerKind::Adam => &["m", "v"],
        };
        let mut names = Vec::new();
        for p in prefixes {
            for l in 0..layers {
                names.push(format!("opt.{p}.l{l}.w"));
                names.push(format!("opt.{p}.l{l}.b"));
            }
        }
        names
    }

    /// Apply the gradients in `ws` to `net`.
    pub fn step(&mut self, net: &mut Network, ws: &Workspace) {
        self.step += 1;
        let params = net.layers.iter_mut().flat_map(|l| [&mut l.w, &mut l.b]);
        let grads = ws.grad_w.iter().zip(&ws.grad_b).flat_map(|(w, b)| [w, b]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Norm};

    #[test]
    fn both_optimizers_reduce_the_loss() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let mut net = Network::init(&[2, 8, 2], Activation::Tanh, Norm::identity(2), 5);
            let lr = if kind == OptimizerKind::Sgd {
                0.1
            } else {
                0.01
            };
            let mut opt = Optimizer::new(kind, lr, 0.9, 0.0, &net);
            let x = [1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 1.0];
            let y = [0, 0, 1, 1];
            let mut ws = Workspace::new(&net, 4);
            let first = net.gradients(&mut ws, &x, &y, 4);
            let mut last = first;
            for _ in 0..200 {
                last = net.gradients(&mut ws, &x, &y, 4);
                opt.step(&mut net, &ws);
            }
            assert!(last < first * 0.2, "{kind:?}: {first} -> {last}");
            assert_eq!(opt.step, 200);
            assert_eq!(opt.buffers.len(), Optimizer::buffer_names(kind, 2).len());
        }
    }
}
