//! Dense networks (multi-layer perceptron, logistic regression) with hand-derived gradients.
//!
//! Forward and backward passes run on `matrixmultiply`'s single-threaded SGEMM with buffers
//! allocated once per shard, so a training step allocates nothing and its result depends only
//! on its inputs: the same rows in the same order give the same bits, on any number of threads.

use crate::model::simd;
use crate::model::spec::Activation;
use crate::train::rng::SplitMix64;

/// Standardized inputs are clipped to this many standard deviations, so that a feature that
/// barely varied in the slice the statistics came from cannot blow up later inputs.
pub const CLIP: f32 = 6.0;

/// Per-feature standardization: `clamp((x - mean) · scale, -clip, clip)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Reciprocal standard deviation of each feature (1 for constant features).
    pub scale: Vec<f32>,
    /// Clip bound; infinite when standardization is off.
    pub clip: f32,
}

impl Norm {
    /// The identity transform.
    pub fn identity(dim: usize) -> Norm {
        Norm {
            mean: vec![0.0; dim],
            scale: vec![1.0; dim],
            clip: f32::INFINITY,
        }
    }

    /// Statistics of rows `rows` of `x` (row-major, `dim` wide), summed in row order in f64.
    pub fn fit(x: &[f32], dim: usize, rows: impl Iterator<Item = usize> + Clone) -> Norm {
        let mut n = 0f64;
        let mut sum = vec![0f64; dim];
        for i in rows.clone() {
            n += 1.0;
            for (s, v) in sum.iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                *s += *v as f64;
            }
        }
        if n == 0.0 {
            return Norm {
                clip: CLIP,
                ..Norm::identity(dim)
            };
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut var = vec![0f64; dim];
        for i in rows {
            for ((q, v), m) in var.iter_mut().zip(&x[i * dim..(i + 1) * dim]).zip(&mean) {
                let d = *v as f64 - m;
                *q += d * d;
            }
        }
        let scale = var
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let sd = (q / n).sqrt();
                if sd > 1e-6 * (1.0 + m.abs()) {
                    (1.0 / sd) as f32
                } else {
                    1.0
                }
            })
            .collect();
        Norm {
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale,
            clip: CLIP,
        }
    }

    /// Standardize one row into `out`.
    #[inline]
    pub fn apply(&self, row: &[f32], out: &mut [f32]) {
        for (((o, v), m), s) in out.iter_mut().zip(row).zip(&self.mean).zip(&self.scale) {
            *o = ((v - m) * s).clamp(-self.clip, self.clip);
        }
    }
}

/// One fully connected layer: `y = x · w + b`, `w` row-major `[inputs, outputs]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Weights, `inputs × outputs`, row-major.
    pub w: Vec<f32>,
    /// Biases, `outputs`.
    pub b: Vec<f32>,
}

/// A model: standardization, dense layers, softmax output.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Input standardization.
    pub norm: Norm,
    /// Layers from input to output.
    pub layers: Vec<Dense>,
    /// Nonlinearity after every layer but the last.
    pub activation: Activation,
}

/// `c = a · b + beta · c` with explicit strides; `a` is m×k, `b` is k×n, `c` is m×n row-major.
#[allow(clippy::too_many_arguments)]
#[inline]
fn sgemm(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    // The strides address exactly the given slices: the largest index touched is checked here.
    assert!(k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len());
    assert!(k == 0 || (k - 1) * rsb + (n - 1) * csb < b.len());
    assert!(m * n <= c.len());
    // SAFETY: the asserts above keep every access of the kernel inside the three slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

impl Network {
    /// A freshly initialised network: Glorot-uniform weights (He-uniform before ReLU), zero
    /// biases, drawn from a generator seeded with `seed`.
    pub fn init(dims: &[usize], activation: Activation, norm: Norm, seed: u64) -> Network {
        let mut rng = SplitMix64::new(seed);
        let last = dims.len() - 2;
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let (i, o) = (w[0], w[1]);
                let bound = if l < last && activation == Activation::Relu {
                    (6.0 / i as f32).sqrt()
                } else {
                    (6.0 / (i + o) as f32).sqrt()
                };
                let w = (0..i * o).map(|_| bound * rng.next_symmetric()).collect();
                Dense {
                    inputs: i,
                    outputs: o,
                    w,
                    b: vec![0.0; o],
                }
            })
            .collect();
        Network {
            norm,
            layers,
            activation,
        }
    }

    /// Number of input features.
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.layers
            .last()
            .expect("a network has at least one layer")
            .outputs
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        self.layers.iter().map(|l| l.w.len() + l.b.len()).sum()
    }

    /// Class probabilities for `n` raw (unstandardized) rows, `n × classes` row-major.
    pub fn predict_proba(&self, x: &[f32], n: usize) -> Vec<f32> {
        const CHUNK: usize = 256;
        let d = self.inputs();
        let c = self.classes();
        // Forward only: no gradient buffers (zeroing them cost more than the prediction).
        let mut ws = Workspace::forward_only(self, CHUNK.min(n.max(1)));
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
                        self.norm.apply(row, out);
                    }
                },
            );
            self.forward(&mut ws, &xb[..b * d], b);
            out.extend_from_slice(&ws.acts.last().expect("at least one layer")[..b * c]);
        }
        out
    }

    /// Forward pass over a standardized batch of `b` rows; probabilities land in the last
    /// activation buffer.
    fn forward(&self, ws: &mut Workspace, x: &[f32], b: usize) {
        let last = self.layers.len() - 1;
        for (l, layer) in self.layers.iter().enumerate() {
            let (before, rest) = ws.acts.split_at_mut(l);
            let out = &mut rest[0][..b * layer.outputs];
            let input = if l == 0 {
                x
            } else {
                &before[l - 1][..b * layer.inputs]
            };
            for row in out.chunks_exact_mut(layer.outputs) {
                row.copy_from_slice(&layer.b);
            }
            sgemm(
                (b, layer.inputs, layer.outputs),
                input,
                (layer.inputs, 1),
                &layer.w,
                (layer.outputs, 1),
                1.0,
                out,
            );
            let activation = self.activation;
            simd::wide(
                #[inline(always)]
                || {
                    if l < last {
                        match activation {
                            Activation::Tanh => out.iter_mut().for_each(|v| *v = tanh(*v)),
                            Activation::Relu => out.iter_mut().for_each(|v| *v = v.max(0.0)),
                        }
                    } else {
                        for row in out.chunks_exact_mut(layer.outputs) {
                            softmax_in_place(row);
                        }
                    }
                },
            );
        }
    }

    /// One forward and backward pass over a standardized batch of `b` rows with labels `y`.
    /// Gradients of the mean cross-entropy land in `ws.grad_w` / `ws.grad_b`; returns the summed
    /// loss of the batch.
    pub fn gradients(&self, ws: &mut Workspace, x: &[f32], y: &[u32], b: usize) -> f64 {
        self.forward(ws, x, b);
        let c = self.classes();
        let probs = &ws.acts[self.layers.len() - 1];
        let mut loss = 0f64;
        let delta = &mut ws.delta[..b * c];
        let inv_b = 1.0 / b as f32;
        for (r, &yr) in y[..b].iter().enumerate() {
            loss -= (probs[r * c + yr as usize].max(1e-30) as f64).ln();
        }
        simd::wide(
            #[inline(always)]
            || {
                for ((d, p), &yr) in delta.chunks_exact_mut(c).zip(probs.chunks_exact(c)).zip(y) {
                    for (dv, pv) in d.iter_mut().zip(p) {
                        *dv = pv * inv_b;
                    }
                    d[yr as usize] -= inv_b;
                }
            },
        );
        for l in (0..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let input = if l == 0 {
                x
            } else {
                &ws.acts[l - 1][..b * layer.inputs]
            };
            let delta = &ws.delta[..b * layer.outputs];
            // grad_w = inputᵀ · delta
            sgemm(
                (layer.inputs, b, layer.outputs),
                input,
                (1, layer.inputs),
                delta,
                (layer.outputs, 1),
                0.0,
                &mut ws.grad_w[l],
            );
            let gb = &mut ws.grad_b[l];
            simd::wide(
                #[inline(always)]
                || {
                    gb.copy_from_slice(&delta[..layer.outputs]);
                    for row in delta.chunks_exact(layer.outputs).skip(1) {
                        for (g, v) in gb.iter_mut().zip(row) {
                            *g += v;
                        }
                    }
                },
            );
            if l > 0 {
                // delta_prev = (delta · wᵀ) ⊙ act'(a_prev)
                let prev = &mut ws.delta_prev[..b * layer.inputs];
                sgemm(
                    (b, layer.outputs, layer.inputs),
                    delta,
                    (layer.outputs, 1),
                    &layer.w,
                    (1, layer.outputs),
                    0.0,
                    prev,
                );
                let a_prev = &ws.acts[l - 1][..b * layer.inputs];
                let activation = self.activation;
                simd::wide(
                    #[inline(always)]
                    || match activation {
                        Activation::Tanh => {
                            for (g, a) in prev.iter_mut().zip(a_prev) {
                                *g *= 1.0 - a * a;
                            }
                        }
                        Activation::Relu => {
                            for (g, a) in prev.iter_mut().zip(a_prev) {
                                if *a <= 0.0 {
                                    *g = 0.0;
                                }
                            }
                        }
                    },
                );
                std::mem::swap(&mut ws.delta, &mut ws.delta_prev);
            }
        }
        loss
    }
}

/// Hyperbolic tangent as a fixed rational function (Eigen's `generic_fast_tanh_float`, within
/// a few ulp of the true value). Written out in plain IEEE operations, so it vectorizes, and the
/// trained bits depend on no platform's math library.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_7e-3;
    const B4: f32 = 1.185_347e-4;
    const B6: f32 = 1.198_258_4e-6;
    let small = x.abs() < 4e-4;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = A13;
    p = p * x2 + A11;
    p = p * x2 + A9;
    p = p * x2 + A7;
    p = p * x2 + A5;
    p = p * x2 + A3;
    p = p * x2 + A1;
    p *= x;
    let mut q = B6;
    q = q * x2 + B4;
    q = q * x2 + B2;
    q = q * x2 + B0;
    if small {
        x
    } else {
        p / q
    }
}

/// `e^x` for x ≤ 0 (softmax after subtracting the row maximum), Cephes' `expf` polynomial with
/// a range reduction by powers of two; relative error below 2e-7. Plain IEEE and integer
/// operations only (the rounding to an integer is the add-and-subtract of 1.5·2²³), so it
/// vectorizes and depends on no platform's math library.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    // n = round(x / ln 2), in [-126, 0]; its two's complement sits in the low mantissa bits.
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2^n: the biased exponent n + 127 placed in the exponent field.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = simd::max(row);
    row.iter_mut().for_each(|v| *v = exp_nonpositive(*v - max));
    let inv = 1.0 / simd::sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Buffers for one shard's training, sized once for the largest batch.
#[derive(Clone, Debug)]
pub struct Workspace {
    acts: Vec<Vec<f32>>,
    delta: Vec<f32>,
    delta_prev: Vec<f32>,
    /// Weight gradients per layer, same layout as [`Dense::w`].
    pub grad_w: Vec<Vec<f32>>,
    /// Bias gradients per layer.
    pub grad_b: Vec<Vec<f32>>,
}

impl Workspace {
    /// Buffers for batches of up to `batch` rows through `net`.
    pub fn new(net: &Network, batch: usize) -> Workspace {
        let widest = net
            .layers
            .iter()
            .map(|l| l.outputs.max(l.inputs))
            .max()
            .unwrap_or(1);
        Workspace {
            delta: vec![0.0; batch * widest],
            delta_prev: vec![0.0; batch * widest],
            grad_w: net.layers.iter().map(|l| vec![0.0; l.w.len()]).collect(),
            grad_b: net.layers.iter().map(|l| vec![0.0; l.b.len()]).collect(),
            ..Workspace::forward_only(net, batch)
        }
    }

    /// Buffers for forward passes only (activations), for batches of up to `batch` rows; the
    /// gradient buffers stay empty.
    fn forward_only(net: &Network, batch: usize) -> Workspace {
        Workspace {
            acts: net
                .layers
                .iter()
                .map(|l| vec![0.0; batch * l.outputs])
                .collect(),
            delta: Vec::new(),
            delta_prev: Vec::new(),
            grad_w: Vec::new(),
            grad_b: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss_of(net: &Network, x: &[f32], y: &[u32], b: usize) -> f64 {
        let mut ws = Workspace::new(net, b);
        net.gradients(&mut ws, x, y, b) / b as f64
    }

    #[test]
    fn gradients_match_finite_differences() {
        for act in [Activation::Tanh, Activation::Relu] {
            let net = Network::init(&[5, 7, 4, 3], act, Norm::identity(5), 11);
            let mut rng = SplitMix64::new(3);
            let b = 6;
            let x: Vec<f32> = (0..b * 5).map(|_| rng.next_symmetric()).collect();
            let y: Vec<u32> = (0..b as u32).map(|i| i % 3).collect();
            let mut ws = Workspace::new(&net, b);
            net.gradients(&mut ws, &x, &y, b);
            for l in 0..net.layers.len() {
                for j in [0, net.layers[l].w.len() / 2, net.layers[l].w.len() - 1] {
                    let h = 1e-2f32;
                    let mut plus = net.clone();
                    plus.layers[l].w[j] += h;
                    let mut minus = net.clone();
                    minus.layers[l].w[j] -= h;
                    let numeric =
                        (loss_of(&plus, &x, &y, b) - loss_of(&minus, &x, &y, b)) / (2.0 * h as f64);
                    let analytic = ws.grad_w[l][j] as f64;
                    assert!(
                        (numeric - analytic).abs() < 2e-3 + 2e-2 * numeric.abs(),
                        "{act:?} layer {l} w[{j}]: {numeric} vs {analytic}"
                    );
                }
                let mut plus = net.clone();
                plus.layers[l].b[0] += 1e-2;
                let mut minus = net.clone();
                minus.layers[l].b[0] -= 1e-2;
                let numeric = (loss_of(&plus, &x, &y, b) - loss_of(&minus, &x, &y, b)) / 2e-2;
                assert!((numeric - ws.grad_b[l][0] as f64).abs() < 2e-3 + 2e-2 * numeric.abs());
            }
        }
    }

    #[test]
    fn tanh_and_exp_match_the_math_library() {
        let mut worst_t = 0f32;
        let mut worst_e = 0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            worst_t = worst_t.max((tanh(x) - x.tanh()).abs());
            let y = -(i as f32).abs() * 4e-4;
            worst_e = worst_e.max(((exp_nonpositive(y) - y.exp()) / y.exp()).abs());
        }
        assert!(worst_t < 1e-6, "tanh error {worst_t}");
        assert!(worst_e < 5e-7, "exp relative error {worst_e}");
        assert_eq!(tanh(100.0), tanh(7.905_311));
        assert!((tanh(100.0) - 1.0).abs() < 1e-6);
        assert_eq!(exp_nonpositive(-1000.0), exp_nonpositive(-87.0));
    }

    #[test]
    fn probabilities_sum_to_one_and_norm_clips() {
        let norm = Norm::fit(&[0.0, 10.0, 2.0, 10.0, 4.0, 10.0], 2, 0..3);
        assert_eq!(norm.mean, [2.0, 10.0]);
        assert_eq!(norm.scale[1], 1.0, "a constant feature keeps scale 1");
        let mut out = [0.0; 2];
        norm.apply(&[1000.0, 10.0], &mut out);
        assert_eq!(out, [CLIP, 0.0]);
        let net = Network::init(&[2, 3], Activation::Tanh, norm, 1);
        let p = net.predict_proba(&[1.0, 2.0, 3.0, 4.0], 2);
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
