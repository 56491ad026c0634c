//! The dense backend: networks of dense, convolution, pooling, activation, dropout and flatten
//! steps with hand-derived gradients, on the CPU.
//!
//! Forward and backward passes run on `matrixmultiply`'s single-threaded SGEMM (convolutions as
//! im2col and one SGEMM per batch) with buffers allocated once per shard, so a training step
//! allocates nothing and its result depends only on its inputs: the same rows in the same order
//! give the same bits, on any number of threads. Images are held channels-last
//! (`[height, width, channels]` per row) between steps; rows arrive channels-first.

use crate::model::optim::Optimizer;
use crate::model::spec::{Activation, Architecture, LayerSpec, Shape};
use crate::model::{simd, Backend, ModelConfig, ShardModel, Tensor};
use crate::rng::{mix, SplitMix64};

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

    /// Every feature multiplied by `scale`, not clipped.
    pub fn scaled(dim: usize, scale: f32) -> Norm {
        Norm {
            scale: vec![scale; dim],
            ..Norm::identity(dim)
        }
    }

    /// One mean and one deviation over every feature of rows `rows` of `x` (summed in row
    /// order in f64), shared by all features: standardization that keeps an image's contrast
    /// between pixels.
    pub fn fit_global(x: &[f32], dim: usize, rows: impl Iterator<Item = usize> + Clone) -> Norm {
        let (mut n, mut sum) = (0f64, 0f64);
        for i in rows.clone() {
            n += dim as f64;
            sum += x[i * dim..(i + 1) * dim]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        if n == 0.0 {
            return Norm {
                clip: CLIP,
                ..Norm::identity(dim)
            };
        }
        let mean = sum / n;
        let mut var = 0f64;
        for i in rows {
            for &v in &x[i * dim..(i + 1) * dim] {
                let d = v as f64 - mean;
                var += d * d;
            }
        }
        let sd = (var / n).sqrt();
        let scale = if sd > 1e-6 * (1.0 + mean.abs()) {
            (1.0 / sd) as f32
        } else {
            1.0
        };
        Norm {
            mean: vec![mean as f32; dim],
            scale: vec![scale; dim],
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

/// A 2-D convolution over images held channels-last (`[height, width, channels]` per row):
/// `filters` kernels of `kernel × kernel × channels`, computed as im2col and one SGEMM.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// Input `[channels, height, width]`.
    pub input: [usize; 3],
    /// Output `[filters, height, width]`.
    pub output: [usize; 3],
    /// Kernel height and width.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros on every side.
    pub padding: usize,
    /// Weights `[filters, kernel, kernel, channels]`, row-major.
    pub w: Vec<f32>,
    /// Biases, `filters`.
    pub b: Vec<f32>,
}

impl Conv2d {
    /// Values in one window: `kernel · kernel · channels`.
    fn window(&self) -> usize {
        self.kernel * self.kernel * self.input[0]
    }

    /// Output positions of one image.
    fn positions(&self) -> usize {
        self.output[1] * self.output[2]
    }

    /// Images unfolded at a time: as many as keep the unfolded rows near 1 MiB (at least
    /// one). A function of the layer's shape alone, so the summation order is fixed.
    fn chunk(&self) -> usize {
        ((1 << 18) / (self.positions() * self.window())).max(1)
    }
}

/// One step of a network, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Fully connected.
    Dense(Dense),
    /// Convolution.
    Conv(Conv2d),
    /// Maximum over `size × size` windows; input and output `[c, h, w]`.
    MaxPool {
        /// Window size (and stride).
        size: usize,
        /// Input shape.
        input: [usize; 3],
        /// Output shape.
        output: [usize; 3],
    },
    /// Element-wise nonlinearity.
    Act(Activation),
    /// Inverted dropout while training.
    Dropout {
        /// Probability of dropping.
        rate: f32,
        /// Values per row.
        width: usize,
    },
    /// Reinterpret an image as a flat vector (a copy: channels-last order is kept).
    Flatten {
        /// Values per row.
        width: usize,
    },
}

impl Op {
    /// Values per row after this step, given `input` values per row before it.
    fn width_or(&self, input: usize) -> usize {
        match self {
            Op::Dense(d) => d.outputs,
            Op::Conv(c) => c.output.iter().product(),
            Op::MaxPool { output, .. } => output.iter().product(),
            Op::Act(_) => input,
            Op::Dropout { width, .. } | Op::Flatten { width } => *width,
        }
    }
}

/// A model of the dense backend: its steps, then a softmax. Inputs arrive standardized.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// The steps, the output layer (dense to the classes) last.
    pub ops: Vec<Op>,
    /// Values per input row.
    pub inputs: usize,
    /// Channels of an image input (rows arrive channels-first and are turned channels-last
    /// for the convolutions); 1 for flat inputs.
    pub channels: usize,
    /// Seed of the dropout masks (step `t` of layer `l` draws from `mix(seed ^ t) ^ l`).
    pub dropout_seed: u64,
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
    /// A freshly initialised network for `arch`: Glorot-uniform weights (He-uniform before a
    /// ReLU), zero biases, drawn in layer order from a generator seeded with `seed`.
    pub fn new(arch: &Architecture, seed: u64, dropout_seed: u64) -> Network {
        let mut rng = SplitMix64::new(seed);
        let mut ops = Vec::with_capacity(arch.layers.len());
        let relu_after = |i: usize| {
            arch.layers
                .get(i + 1)
                .is_some_and(|l| l.spec == LayerSpec::Relu)
        };
        for (i, layer) in arch.layers.iter().enumerate() {
            let dims = |s: Shape| match s {
                Shape::Image(d) => d,
                Shape::Flat(n) => [n, 1, 1],
            };
            let op = match &layer.spec {
                LayerSpec::Dense { units } => {
                    let (i_, o) = (layer.input.len(), *units);
                    let bound = if relu_after(i) {
                        (6.0 / i_ as f32).sqrt()
                    } else {
                        (6.0 / (i_ + o) as f32).sqrt()
                    };
                    Op::Dense(Dense {
                        inputs: i_,
                        outputs: o,
                        w: (0..i_ * o).map(|_| bound * rng.next_symmetric()).collect(),
                        b: vec![0.0; o],
                    })
                }
                LayerSpec::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                } => {
                    let input = dims(layer.input);
                    let (fan_in, fan_out) = (kernel * kernel * input[0], kernel * kernel * filters);
                    let bound = if relu_after(i) {
                        (6.0 / fan_in as f32).sqrt()
                    } else {
                        (6.0 / (fan_in + fan_out) as f32).sqrt()
                    };
                    Op::Conv(Conv2d {
                        input,
                        output: dims(layer.output),
                        kernel: *kernel,
                        stride: *stride,
                        padding: *padding,
                        w: (0..filters * fan_in)
                            .map(|_| bound * rng.next_symmetric())
                            .collect(),
                        b: vec![0.0; *filters],
                    })
                }
                LayerSpec::Maxpool2d { size } => Op::MaxPool {
                    size: *size,
                    input: dims(layer.input),
                    output: dims(layer.output),
                },
                LayerSpec::Relu => Op::Act(Activation::Relu),
                LayerSpec::Tanh => Op::Act(Activation::Tanh),
                LayerSpec::Dropout { rate } => Op::Dropout {
                    rate: *rate,
                    width: layer.input.len(),
                },
                LayerSpec::Flatten => Op::Flatten {
                    width: layer.input.len(),
                },
            };
            ops.push(op);
        }
        Network {
            ops,
            inputs: arch.input.len(),
            channels: match arch.input {
                Shape::Image([c, _, _]) => c,
                Shape::Flat(_) => 1,
            },
            dropout_seed,
        }
    }

    /// A multi-layer perceptron of widths `dims` (input first, classes last) with
    /// `activation` after every hidden layer, initialised from `seed`.
    pub fn mlp(dims: &[usize], activation: Activation, seed: u64) -> Network {
        Network::new(&Architecture::dense(dims, activation), seed, 0)
    }

    /// The dense layers, in order.
    pub fn dense_layers(&self) -> Vec<&Dense> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Dense(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// Number of input features.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Values of the largest chunk of unfolded rows any convolution holds, for batches of up
    /// to `batch` rows.
    fn widest_chunk(&self, batch: usize) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Conv(c) => c.chunk().min(batch) * c.positions() * c.window(),
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self.ops.last() {
            Some(Op::Dense(d)) => d.outputs,
            _ => unreachable!("an architecture ends with its dense output layer"),
        }
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> usize {
        self.params().map(|p| p.len()).sum()
    }

    /// Every trainable tensor in order: each dense or convolution layer's weights, then its
    /// biases.
    pub fn params(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Dense(d) => Some([&d.w, &d.b]),
                Op::Conv(c) => Some([&c.w, &c.b]),
                _ => None,
            })
            .flatten()
    }

    /// [`Network::params`], mutable (the optimizer's view every step: it allocates nothing).
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.ops
            .iter_mut()
            .filter_map(|op| match op {
                Op::Dense(d) => Some([&mut d.w, &mut d.b]),
                Op::Conv(c) => Some([&mut c.w, &mut c.b]),
                _ => None,
            })
            .flatten()
    }

    /// The shapes of [`Network::params`], as saved: dense `[inputs, outputs]`, convolution
    /// `[filters, kernel, kernel, channels]`, biases `[outputs]`.
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        self.ops
            .iter()
            .flat_map(|op| match op {
                Op::Dense(d) => vec![vec![d.inputs, d.outputs], vec![d.outputs]],
                Op::Conv(c) => vec![
                    vec![c.output[0], c.kernel, c.kernel, c.input[0]],
                    vec![c.output[0]],
                ],
                _ => vec![],
            })
            .collect()
    }

    /// Class probabilities for `n` standardized rows, `n × classes` row-major, in chunks.
    pub fn predict(&self, x: &[f32], n: usize) -> Vec<f32> {
        const CHUNK: usize = 256;
        let (d, c) = (self.inputs, self.classes());
        // Forward only: no gradient buffers (zeroing them cost more than the prediction).
        let mut ws = Workspace::forward_only(self, CHUNK.min(n.max(1)));
        let mut out = Vec::with_capacity(n * c);
        for start in (0..n).step_by(CHUNK) {
            let b = CHUNK.min(n - start);
            self.forward(&mut ws, &x[start * d..(start + b) * d], b, None);
            out.extend_from_slice(&ws.outs.last().expect("at least one layer")[..b * c]);
        }
        out
    }

    /// Names of [`Network::params`]: `l<k>.w` and `l<k>.b` for the k-th layer with
    /// parameters.
    pub fn param_names(&self) -> Vec<String> {
        let layers = self
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Dense(_) | Op::Conv(_)))
            .count();
        (0..layers)
            .flat_map(|k| [format!("l{k}.w"), format!("l{k}.b")])
            .collect()
    }

    /// Forward pass over a standardized batch of `b` rows; probabilities land in the last
    /// output buffer. `step` is the training step (dropout masks) or `None` when predicting.
    fn forward(&self, ws: &mut Workspace, x: &[f32], b: usize, step: Option<u64>) {
        let x = if self.channels > 1 {
            channels_last(x, &mut ws.input, b, self.channels, self.inputs);
            &ws.input[..b * self.inputs]
        } else {
            x
        };
        let last = self.ops.len() - 1;
        for (l, op) in self.ops.iter().enumerate() {
            let (before, rest) = ws.outs.split_at_mut(l);
            let input = if l == 0 {
                x
            } else {
                &before[l - 1][..b * ws.widths[l - 1]]
            };
            match op {
                Op::Dense(layer) => {
                    let out = &mut rest[0][..b * layer.outputs];
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
                    if l == last {
                        simd::wide(
                            #[inline(always)]
                            || {
                                for row in out.chunks_exact_mut(layer.outputs) {
                                    softmax_in_place(row);
                                }
                            },
                        );
                    }
                }
                Op::Conv(conv) => {
                    let (rows, window, filters) = (conv.positions(), conv.window(), conv.output[0]);
                    let in_width = conv.input.iter().product::<usize>();
                    // A few images at a time, so the unfolded rows stay in cache between
                    // im2col and the SGEMM that packs them.
                    let per = conv.chunk();
                    for start in (0..b).step_by(per) {
                        let n = per.min(b - start);
                        let cols = &mut ws.cols[..n * rows * window];
                        im2col(
                            conv,
                            &input[start * in_width..(start + n) * in_width],
                            cols,
                            n,
                        );
                        let out =
                            &mut rest[0][start * rows * filters..(start + n) * rows * filters];
                        for row in out.chunks_exact_mut(filters) {
                            row.copy_from_slice(&conv.b);
                        }
                        sgemm(
                            (n * rows, window, filters),
                            cols,
                            (window, 1),
                            &conv.w,
                            (1, window),
                            1.0,
                            out,
                        );
                    }
                }
                Op::MaxPool {
                    size,
                    input: shape,
                    output,
                } => {
                    let out = &mut rest[0][..b * output.iter().product::<usize>()];
                    let argmax = &mut ws.argmax[l];
                    simd::wide(
                        #[inline(always)]
                        || max_pool(*size, *shape, *output, input, out, argmax, b),
                    );
                }
                Op::Act(activation) => {
                    let out = &mut rest[0][..input.len()];
                    let activation = *activation;
                    simd::wide(
                        #[inline(always)]
                        || match activation {
                            Activation::Tanh => {
                                out.iter_mut().zip(input).for_each(|(o, v)| *o = tanh(*v))
                            }
                            Activation::Relu => {
                                out.iter_mut().zip(input).for_each(|(o, v)| *o = v.max(0.0))
                            }
                        },
                    );
                }
                Op::Dropout { rate, width } => {
                    let out = &mut rest[0][..b * width];
                    match step {
                        Some(t) => {
                            let mask = &mut ws.masks[l][..b * width];
                            let seed = mix(self.dropout_seed ^ t) ^ l as u64;
                            dropout_mask(*rate, seed, mask);
                            for ((o, v), m) in out.iter_mut().zip(input).zip(mask.iter()) {
                                *o = v * m;
                            }
                        }
                        None => out.copy_from_slice(input),
                    }
                }
                Op::Flatten { width } => rest[0][..b * width].copy_from_slice(input),
            }
        }
    }

    /// One forward and backward pass over a standardized batch of `b` rows with labels `y` at
    /// training step `step`. Gradients of the mean cross-entropy land in `ws.grad_w` /
    /// `ws.grad_b` (per step, empty for steps without parameters); returns the summed loss.
    pub fn gradients(&self, ws: &mut Workspace, x: &[f32], y: &[u32], b: usize, step: u64) -> f64 {
        self.forward(ws, x, b, Some(step));
        let x = if self.channels > 1 {
            &ws.input[..b * self.inputs]
        } else {
            x
        };
        let c = self.classes();
        let last = self.ops.len() - 1;
        let probs = &ws.outs[last];
        let mut loss = 0f64;
        let delta = &mut ws.deltas[last][..b * c];
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
        for l in (0..self.ops.len()).rev() {
            let input: &[f32] = if l == 0 {
                x
            } else {
                &ws.outs[l - 1][..b * ws.widths[l - 1]]
            };
            let (below, here) = ws.deltas.split_at_mut(l);
            let delta = &here[0][..b * ws.widths[l]];
            let prev: Option<&mut [f32]> = if l > 0 {
                let width = input.len();
                Some(&mut below[l - 1][..width])
            } else {
                None
            };
            match &self.ops[l] {
                Op::Dense(layer) => {
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
                    bias_gradient(delta, layer.outputs, &mut ws.grad_b[l]);
                    if let Some(prev) = prev {
                        // delta_prev = delta · wᵀ
                        sgemm(
                            (b, layer.outputs, layer.inputs),
                            delta,
                            (layer.outputs, 1),
                            &layer.w,
                            (1, layer.outputs),
                            0.0,
                            prev,
                        );
                    }
                }
                Op::Conv(conv) => {
                    let (rows, window, filters) = (conv.positions(), conv.window(), conv.output[0]);
                    let in_width = conv.input.iter().product::<usize>();
                    let per = conv.chunk();
                    let mut prev = prev;
                    // Chunk by chunk as in the forward pass (the rows unfolded again, while in
                    // cache); the weight gradient sums the chunks in order.
                    for start in (0..b).step_by(per) {
                        let n = per.min(b - start);
                        let cols = &mut ws.cols[..n * rows * window];
                        im2col(
                            conv,
                            &input[start * in_width..(start + n) * in_width],
                            cols,
                            n,
                        );
                        let d = &delta[start * rows * filters..(start + n) * rows * filters];
                        // grad_w[f, window] (+)= deltaᵀ · cols
                        sgemm(
                            (filters, n * rows, window),
                            d,
                            (1, filters),
                            cols,
                            (window, 1),
                            if start == 0 { 0.0 } else { 1.0 },
                            &mut ws.grad_w[l],
                        );
                        if let Some(prev) = prev.as_deref_mut() {
                            let grad_cols = &mut ws.grad_cols[..n * rows * window];
                            sgemm(
                                (n * rows, filters, window),
                                d,
                                (filters, 1),
                                &conv.w,
                                (window, 1),
                                0.0,
                                grad_cols,
                            );
                            col2im(
                                conv,
                                grad_cols,
                                &mut prev[start * in_width..(start + n) * in_width],
                                n,
                            );
                        }
                    }
                    bias_gradient(delta, filters, &mut ws.grad_b[l]);
                }
                Op::MaxPool { .. } => {
                    if let Some(prev) = prev {
                        prev.fill(0.0);
                        for (d, &i) in delta.iter().zip(&ws.argmax[l]) {
                            prev[i as usize] += d;
                        }
                    }
                }
                Op::Act(activation) => {
                    if let Some(prev) = prev {
                        let out = &ws.outs[l][..prev.len()];
                        let activation = *activation;
                        simd::wide(
                            #[inline(always)]
                            || match activation {
                                Activation::Tanh => {
                                    for ((g, d), a) in prev.iter_mut().zip(delta).zip(out) {
                                        *g = d * (1.0 - a * a);
                                    }
                                }
                                Activation::Relu => {
                                    for ((g, d), a) in prev.iter_mut().zip(delta).zip(out) {
                                        *g = if *a <= 0.0 { 0.0 } else { *d };
                                    }
                                }
                            },
                        );
                    }
                }
                Op::Dropout { .. } => {
                    if let Some(prev) = prev {
                        for ((g, d), m) in prev.iter_mut().zip(delta).zip(&ws.masks[l]) {
                            *g = d * m;
                        }
                    }
                }
                Op::Flatten { .. } => {
                    if let Some(prev) = prev {
                        prev.copy_from_slice(delta);
                    }
                }
            }
        }
        loss
    }
}

/// `grad_b = column sums of delta` (rows of `width`), summed in row order.
#[inline(always)]
fn bias_gradient(delta: &[f32], width: usize, gb: &mut [f32]) {
    simd::wide(
        #[inline(always)]
        || {
            gb.copy_from_slice(&delta[..width]);
            for row in delta.chunks_exact(width).skip(1) {
                for (g, v) in gb.iter_mut().zip(row) {
                    *g += v;
                }
            }
        },
    );
}

/// Rows channels-first (`[c, h·w]`) to channels-last (`[h·w, c]`).
fn channels_last(x: &[f32], out: &mut [f32], b: usize, c: usize, width: usize) {
    let hw = width / c;
    for (src, dst) in x[..b * width]
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
    {
        for ch in 0..c {
            for p in 0..hw {
                dst[p * c + ch] = src[ch * hw + p];
            }
        }
    }
}

/// For output position `(oy, ox)` and kernel row `ky`: the input pixel row `iy`, or `None` in
/// the padding, and the range `kx_lo..kx_hi` of kernel columns that fall inside the image (the
/// window's values for `ky` are then one contiguous run of the channels-last input).
#[inline(always)]
fn window_row(
    conv: &Conv2d,
    oy: usize,
    ox: usize,
    ky: usize,
) -> Option<(usize, isize, usize, usize)> {
    let [_, h, w] = conv.input;
    let (k, s, p) = (conv.kernel, conv.stride, conv.padding as isize);
    let iy = (oy * s + ky) as isize - p;
    if iy < 0 || iy >= h as isize {
        return None;
    }
    let ix0 = (ox * s) as isize - p;
    let lo = (-ix0).clamp(0, k as isize) as usize;
    let hi = (w as isize - ix0).clamp(0, k as isize) as usize;
    Some((iy as usize, ix0, lo, hi.max(lo)))
}

/// Unfold `b` channels-last images into rows of windows: row `(image, position)` holds the
/// window's values in `(ky, kx, channel)` order, zeros where it overlaps the padding.
fn im2col(conv: &Conv2d, input: &[f32], cols: &mut [f32], b: usize) {
    let [c, _, w] = conv.input;
    let [_, oh, ow] = conv.output;
    let k = conv.kernel;
    let in_width = conv.input.iter().product::<usize>();
    let (rows, window) = (conv.positions(), conv.window());
    let span = k * c;
    for n in 0..b {
        let image = &input[n * in_width..(n + 1) * in_width];
        let out = &mut cols[n * rows * window..(n + 1) * rows * window];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &mut out[(oy * ow + ox) * window..(oy * ow + ox + 1) * window];
                for ky in 0..k {
                    let dst = &mut row[ky * span..(ky + 1) * span];
                    match window_row(conv, oy, ox, ky) {
                        None => dst.fill(0.0),
                        Some((iy, ix0, lo, hi)) => {
                            dst[..lo * c].fill(0.0);
                            dst[hi * c..].fill(0.0);
                            let from = (iy * w) as isize + ix0;
                            let (a, z) =
                                ((from + lo as isize) as usize, (from + hi as isize) as usize);
                            dst[lo * c..hi * c].copy_from_slice(&image[a * c..z * c]);
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: add every window row back onto the pixels it was read from, in
/// a fixed order (image, position, kernel row, kernel column, channel).
fn col2im(conv: &Conv2d, cols: &[f32], grad: &mut [f32], b: usize) {
    let [c, _, w] = conv.input;
    let [_, oh, ow] = conv.output;
    let k = conv.kernel;
    let in_width = conv.input.iter().product::<usize>();
    let (rows, window) = (conv.positions(), conv.window());
    let span = k * c;
    grad[..b * in_width].fill(0.0);
    for n in 0..b {
        let image = &mut grad[n * in_width..(n + 1) * in_width];
        let src = &cols[n * rows * window..(n + 1) * rows * window];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &src[(oy * ow + ox) * window..(oy * ow + ox + 1) * window];
                for ky in 0..k {
                    if let Some((iy, ix0, lo, hi)) = window_row(conv, oy, ox, ky) {
                        let from = (iy * w) as isize + ix0;
                        let (a, z) = ((from + lo as isize) as usize, (from + hi as isize) as usize);
                        let values = &row[ky * span + lo * c..ky * span + hi * c];
                        simd::wide(
                            #[inline(always)]
                            || {
                                for (g, v) in image[a * c..z * c].iter_mut().zip(values) {
                                    *g += v;
                                }
                            },
                        );
                    }
                }
            }
        }
    }
}

/// Max pooling of `b` channels-last images; `argmax` gets, for every output value, the index
/// (into the batch's input) of the value it took (the first of equal values, in window order).
#[inline(always)]
fn max_pool(
    size: usize,
    [c, h, w]: [usize; 3],
    [_, oh, ow]: [usize; 3],
    input: &[f32],
    out: &mut [f32],
    argmax: &mut [u32],
    b: usize,
) {
    let _ = h;
    let (in_width, out_width) = (c * h * w, c * oh * ow);
    for n in 0..b {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = n * out_width + (oy * ow + ox) * c;
                let (best, at) = (&mut out[o..o + c], &mut argmax[o..o + c]);
                for ky in 0..size {
                    for kx in 0..size {
                        let i = n * in_width + ((oy * size + ky) * w + ox * size + kx) * c;
                        let values = &input[i..i + c];
                        if ky == 0 && kx == 0 {
                            best.copy_from_slice(values);
                            for (ch, a) in at.iter_mut().enumerate() {
                                *a = (i + ch) as u32;
                            }
                            continue;
                        }
                        for (ch, ((bv, a), v)) in
                            best.iter_mut().zip(at.iter_mut()).zip(values).enumerate()
                        {
                            if *v > *bv {
                                *bv = *v;
                                *a = (i + ch) as u32;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Inverted-dropout scales for one batch: 0 with probability `rate`, else `1 / (1 - rate)`,
/// drawn from a generator seeded with `seed`.
fn dropout_mask(rate: f32, seed: u64, mask: &mut [f32]) {
    let mut rng = SplitMix64::new(seed);
    let keep = 1.0 / (1.0 - rate);
    for m in mask.iter_mut() {
        let u = (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
        *m = if u < rate { 0.0 } else { keep };
    }
}

/// The dense backend's [`ShardModel`]: a [`Network`], its optimizer, and training buffers
/// sized once for the batch.
#[derive(Debug)]
pub struct DenseModel {
    /// The network.
    pub net: Network,
    /// Its optimizer.
    pub opt: Optimizer,
    batch: usize,
    ws: Option<Workspace>,
}

impl DenseModel {
    /// A fresh, seeded model.
    pub fn new(config: &ModelConfig) -> DenseModel {
        let net = Network::new(&config.arch, config.init_seed, config.dropout_seed);
        let opt = Optimizer::new(
            config.optimizer,
            config.lr,
            config.momentum,
            config.weight_decay,
            net.params().map(Vec::len).collect::<Vec<_>>().into_iter(),
        );
        DenseModel {
            net,
            opt,
            batch: config.batch_size,
            ws: None,
        }
    }

    fn named(&self, values: impl Iterator<Item = Vec<f32>>, prefix: &str) -> Vec<Tensor> {
        self.net
            .param_names()
            .into_iter()
            .zip(self.net.param_shapes())
            .zip(values)
            .map(|((name, shape), data)| Tensor {
                name: format!("{prefix}{name}"),
                shape,
                data,
            })
            .collect()
    }
}

impl ShardModel for DenseModel {
    fn backend(&self) -> Backend {
        Backend::Dense
    }

    fn classes(&self) -> usize {
        self.net.classes()
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.named(self.net.params().cloned(), "")
    }

    fn gradients(&self) -> Vec<Tensor> {
        match &self.ws {
            Some(ws) => self.named(ws.grads().cloned(), ""),
            None => self.named(self.net.params().map(|p| vec![0.0; p.len()]), ""),
        }
    }

    fn optimizer_state(&self) -> Vec<Tensor> {
        let per = self.net.param_names().len();
        let mut out = Vec::new();
        for (i, prefix) in self.opt.kind.state_prefixes().iter().enumerate() {
            let bufs = self.opt.buffers[i * per..(i + 1) * per].iter().cloned();
            out.extend(self.named(bufs, &format!("opt.{prefix}.")));
        }
        out
    }

    fn steps(&self) -> u64 {
        self.opt.step
    }

    fn restore(
        &mut self,
        read: &mut crate::model::TensorSource<'_>,
        steps: u64,
    ) -> crate::Result<()> {
        let names = self.net.param_names();
        let shapes = self.net.param_shapes();
        for ((p, name), shape) in self.net.params_mut().zip(&names).zip(&shapes) {
            *p = read(name, shape)?;
        }
        let per = names.len();
        for (i, prefix) in self.opt.kind.state_prefixes().iter().enumerate() {
            for (j, (name, shape)) in names.iter().zip(&shapes).enumerate() {
                self.opt.buffers[i * per + j] = read(&format!("opt.{prefix}.{name}"), shape)?;
            }
        }
        self.opt.step = steps;
        Ok(())
    }

    fn train_step(&mut self, x: &[f32], y: &[u32], b: usize) -> crate::Result<f64> {
        let DenseModel {
            net,
            opt,
            batch,
            ws,
            ..
        } = self;
        let ws = ws.get_or_insert_with(|| Workspace::new(net, *batch));
        let loss = net.gradients(ws, x, y, b, opt.step);
        opt.update(net.params_mut(), ws.grads());
        Ok(loss)
    }

    fn predict(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.net.predict(x, n)
    }

    fn boxed_clone(&self) -> Box<dyn ShardModel> {
        Box::new(DenseModel {
            net: self.net.clone(),
            opt: self.opt.clone(),
            batch: self.batch,
            ws: None,
        })
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
    /// Values per row after every step.
    widths: Vec<usize>,
    /// The batch turned channels-last (image inputs of several channels).
    input: Vec<f32>,
    /// Output of every step.
    outs: Vec<Vec<f32>>,
    /// Gradient of the loss with respect to every step's output.
    deltas: Vec<Vec<f32>>,
    /// im2col rows of one chunk of images (the largest any convolution unfolds).
    cols: Vec<f32>,
    /// Their gradient.
    grad_cols: Vec<f32>,
    /// Where each pooled value came from.
    argmax: Vec<Vec<u32>>,
    /// Dropout scales of the current step.
    masks: Vec<Vec<f32>>,
    /// Weight gradients per step, same layout as the weights (empty without parameters).
    pub grad_w: Vec<Vec<f32>>,
    /// Bias gradients per step.
    pub grad_b: Vec<Vec<f32>>,
}

impl Workspace {
    /// Buffers for batches of up to `batch` rows through `net`.
    pub fn new(net: &Network, batch: usize) -> Workspace {
        let mut ws = Workspace::forward_only(net, batch);
        ws.deltas = ws.widths.iter().map(|w| vec![0.0; batch * w]).collect();
        for op in &net.ops {
            let (w, b) = match op {
                Op::Dense(d) => (d.w.len(), d.b.len()),
                Op::Conv(c) => (c.w.len(), c.b.len()),
                _ => (0, 0),
            };
            ws.grad_w.push(vec![0.0; w]);
            ws.grad_b.push(vec![0.0; b]);
        }
        ws.grad_cols = vec![0.0; net.widest_chunk(batch)];
        ws.masks = net
            .ops
            .iter()
            .map(|op| match op {
                Op::Dropout { width, .. } => vec![0.0; batch * width],
                _ => Vec::new(),
            })
            .collect();
        ws
    }

    /// Buffers for forward passes only, for batches of up to `batch` rows; the gradient
    /// buffers stay empty.
    pub fn forward_only(net: &Network, batch: usize) -> Workspace {
        let mut widths = Vec::with_capacity(net.ops.len());
        let mut width = net.inputs;
        for op in &net.ops {
            width = op.width_or(width);
            widths.push(width);
        }
        let outs = widths.iter().map(|w| vec![0.0; batch * w]).collect();
        Workspace {
            widths,
            input: if net.channels > 1 {
                vec![0.0; batch * net.inputs]
            } else {
                Vec::new()
            },
            outs,
            deltas: Vec::new(),
            cols: vec![0.0; net.widest_chunk(batch)],
            grad_cols: Vec::new(),
            argmax: net
                .ops
                .iter()
                .map(|op| match op {
                    Op::MaxPool { output, .. } => vec![0; batch * output.iter().product::<usize>()],
                    _ => Vec::new(),
                })
                .collect(),
            masks: Vec::new(),
            grad_w: Vec::new(),
            grad_b: Vec::new(),
        }
    }

    /// Every parameter's gradient, in the order of [`Network::params`].
    pub fn grads(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.grad_w
            .iter()
            .zip(&self.grad_b)
            .filter(|(w, _)| !w.is_empty())
            .flat_map(|(w, b)| [w, b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec::ModelSpec;

    fn loss_of(net: &Network, x: &[f32], y: &[u32], b: usize, step: u64) -> f64 {
        let mut ws = Workspace::new(net, b);
        net.gradients(&mut ws, x, y, b, step) / b as f64
    }

    fn arch(preset: &str, features: usize, classes: usize) -> Architecture {
        let spec: ModelSpec = toml::from_str(&format!(
            "name = \"t\"\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 8\nepochs = 2\n{preset}\n"
        ))
        .unwrap();
        spec.architecture(features, classes).unwrap()
    }

    /// Every parameter's gradient (a few entries of each) against central differences.
    fn check_gradients(net: &Network, features: usize, classes: u32, what: &str) {
        let mut rng = SplitMix64::new(3);
        let b = 5;
        let x: Vec<f32> = (0..b * features).map(|_| rng.next_symmetric()).collect();
        let y: Vec<u32> = (0..b as u32).map(|i| i % classes).collect();
        let step = 7;
        let mut ws = Workspace::new(net, b);
        net.gradients(&mut ws, &x, &y, b, step);
        let grads: Vec<Vec<f32>> = ws.grads().cloned().collect();
        let params = net.params().count();
        assert_eq!(grads.len(), params);
        for (p, grad) in grads.iter().enumerate() {
            let n = grad.len();
            for j in [0, n / 3, n / 2, n - 1] {
                let h = 5e-3f32;
                let mut plus = net.clone();
                plus.params_mut().nth(p).unwrap()[j] += h;
                let mut minus = net.clone();
                minus.params_mut().nth(p).unwrap()[j] -= h;
                let numeric = (loss_of(&plus, &x, &y, b, step) - loss_of(&minus, &x, &y, b, step))
                    / (2.0 * h as f64);
                let analytic = grad[j] as f64;
                assert!(
                    (numeric - analytic).abs() < 2e-3 + 3e-2 * numeric.abs(),
                    "{what}: parameter {p}[{j}]: numeric {numeric} vs analytic {analytic}"
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for act in [Activation::Tanh, Activation::Relu] {
            let net = Network::mlp(&[5, 7, 4, 3], act, 11);
            check_gradients(&net, 5, 3, &format!("mlp {act:?}"));
        }
        // Two input channels (turned channels-last), padding, stride, pooling with a
        // remainder, dropout, flatten: every step's backward pass.
        let cnn = arch(
            r#"input = [2, 7, 7]
layers = [
  { kind = "conv2d", filters = 3, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "conv2d", filters = 4, kernel = 2, stride = 1 },
  { kind = "tanh" },
  { kind = "flatten" },
  { kind = "dropout", rate = 0.25 },
  { kind = "dense", units = 6 },
  { kind = "tanh" },
]"#,
            98,
            3,
        );
        check_gradients(&Network::new(&cnn, 5, 9), 98, 3, "cnn");
        let strided = arch(
            r#"input = [1, 6, 6]
layers = [{ kind = "conv2d", filters = 2, kernel = 3, stride = 2, padding = 1 }, { kind = "flatten" }]"#,
            36,
            2,
        );
        check_gradients(&Network::new(&strided, 1, 0), 36, 2, "strided conv");
        // An image large enough that a chunk holds one image: five chunks per batch.
        let chunked = arch(
            r#"input = [2, 64, 64]
layers = [
  { kind = "conv2d", filters = 2, kernel = 1 },
  { kind = "tanh" },
  { kind = "conv2d", filters = 4, kernel = 5, padding = 2 },
  { kind = "flatten" },
]"#,
            8192,
            2,
        );
        let net = Network::new(&chunked, 2, 0);
        let Op::Conv(conv) = &net.ops[2] else {
            panic!("the third step is the chunked convolution")
        };
        assert_eq!(conv.chunk(), 1);
        check_gradients(&net, 8192, 2, "chunked conv");
    }

    #[test]
    fn a_convolution_equals_the_direct_sum() {
        let a = arch(
            r#"input = [2, 4, 5]
layers = [{ kind = "conv2d", filters = 3, kernel = 3, stride = 2, padding = 1 }, { kind = "flatten" }]"#,
            40,
            2,
        );
        let net = Network::new(&a, 4, 0);
        let Op::Conv(conv) = &net.ops[0] else {
            panic!("first step is the convolution")
        };
        let mut rng = SplitMix64::new(9);
        let x: Vec<f32> = (0..40).map(|_| rng.next_symmetric()).collect();
        let mut ws = Workspace::forward_only(&net, 1);
        net.forward(&mut ws, &x, 1, None);
        let [c, h, w] = conv.input;
        let [f, oh, ow] = conv.output;
        let k = conv.kernel;
        for o in 0..f {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = conv.b[o] as f64;
                    for ch in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * 2 + ky) as isize - 1;
                                let ix = (ox * 2 + kx) as isize - 1;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                // Input channels-first; weights [f, ky, kx, c].
                                let xv = x[ch * h * w + iy as usize * w + ix as usize];
                                let wv = conv.w[((o * k + ky) * k + kx) * c + ch];
                                sum += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let got = ws.outs[0][(oy * ow + ox) * f + o] as f64;
                    assert!(
                        (got - sum).abs() < 1e-5,
                        "({o}, {oy}, {ox}): {got} vs {sum}"
                    );
                }
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
        let net = Network::mlp(&[2, 3], Activation::Tanh, 1);
        let p = net.predict(&[1.0, 2.0, 3.0, 4.0], 2);
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn dropout_is_the_identity_when_predicting_and_seeded_when_training() {
        let a = arch(
            "layers = [{ kind = \"dense\", units = 8 }, { kind = \"dropout\", rate = 0.5 }]",
            4,
            2,
        );
        let net = Network::new(&a, 1, 2);
        let x = [0.5f32, -1.0, 0.25, 2.0];
        let mut ws = Workspace::new(&net, 1);
        let l1 = net.gradients(&mut ws, &x, &[1], 1, 3);
        let l2 = net.gradients(&mut ws, &x, &[1], 1, 3);
        let l3 = net.gradients(&mut ws, &x, &[1], 1, 4);
        assert_eq!(l1, l2, "the same step draws the same mask");
        assert_ne!(l1, l3, "another step draws another mask");
        assert_eq!(net.predict(&x, 1), net.predict(&x, 1));
    }
}
