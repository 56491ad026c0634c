//! The candle backend: every layer kind of [`LayerSpec`] on candle tensors, gradients by
//! candle's autograd, and our own seeded initialisation, dropout masks and optimizers, so that
//! nothing random or stateful is left to candle.
//!
//! - **Layouts.** Rows arrive channels-first (`[channels, height, width]`, standardized) and
//!   stay so: images are `[batch, channels, height, width]` tensors, and `flatten` gives C×H×W
//!   order. Dense weights are `[inputs, outputs]` row-major, as in the dense backend;
//!   convolution weights are candle's `[filters, channels, kernel, kernel]` (the dense backend
//!   holds `[filters, kernel, kernel, channels]`), biases `[outputs]`. Checkpoints record the
//!   backend, so the two need not share layouts.
//! - **Initialisation.** The dense backend's scheme and draw order exactly: one
//!   [`SplitMix64`] seeded with the init seed, drawn layer by layer, Glorot-uniform
//!   (He-uniform before a ReLU), zero biases. Where this backend orders a tensor differently
//!   (convolution weights, and the rows of a dense layer that reads a flattened image of
//!   several channels) each drawn value is placed where it acts on the same input, so both
//!   backends start from the same function; an MLP on flat inputs starts from the identical
//!   tensors. candle's random number generator is never used (it cannot be seeded on CPU).
//! - **Dropout.** Masks are drawn on the host exactly as the dense backend draws them (seed
//!   `mix(dropout_seed ^ step) ^ layer`, `step` the optimizer steps taken before this one,
//!   `layer` the dropout layer's position in the architecture; values 0 or `1/(1-rate)`),
//!   permuted into this backend's order where it differs, and uploaded as a tensor. Predicting
//!   uses no dropout.
//! - **Optimizers.** SGD with momentum and L2 weight decay, and Adam with decoupled weight
//!   decay, element for element the formulas of [`crate::model::optim`] (the bias corrections
//!   in `f64`), on candle tensors; the state is ours to save (`opt.m.<name>`, `opt.v.<name>`).
//! - **Loss.** Mean cross-entropy of a softmax over the logits; [`ShardModel::train_step`]
//!   returns the summed loss of the batch.
//! - **Convolutions** are candle's, with the input padded and cropped first where a stride
//!   leaves rows or columns unread: candle 0.11's gradient of a convolution then fails (it
//!   takes one output padding from the height for both sides).
//! - **Max pooling** takes the first maximum of each window (argmax and gather), as the dense
//!   backend does. candle's own `max_pool2d` is not used: in candle 0.11 its gradient at a
//!   single maximum is `1/size²` instead of 1, and it assumes the windows tile the image.
//!
//! **Exactness.** On one kind of device the same configuration and the same batches give the
//! same bits: every random draw is ours, the optimizer state is saved, and candle's CPU kernels
//! reduce in a fixed order. candle's CPU matmul runs on the `gemm` crate with
//! `RAYON_NUM_THREADS` threads; the `sisa` binary pins `RAYON_NUM_THREADS=1` and
//! `CANDLE_NUM_THREADS=1` so that each shard's math runs on one thread, and shards run in
//! parallel. Against the dense backend the results agree only within a tolerance (the kernels
//! sum in other orders, and `tanh`/`exp` come from the math library here and from fixed
//! polynomials there): the tests of this module state the tolerances measured.

use crate::error::{Error, Result};
use crate::model::spec::{Architecture, LayerSpec, OptimizerKind, Shape};
use crate::model::Tensor as Named;
use crate::model::{Backend, ModelConfig, ShardModel};
use crate::rng::{mix, SplitMix64};
use candle_core::{DType, Device, Tensor, Var};

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;
/// Rows per forward pass when predicting.
const CHUNK: usize = 256;

/// One layer of a [`CandleModel`], in architecture order.
#[derive(Clone, Debug)]
enum Step {
    /// `x · w + b`; `param` indexes `w` in the parameter list (`b` follows it).
    Dense { param: usize },
    /// 2-D convolution; `param` indexes `w` (`b` follows it).
    Conv {
        param: usize,
        stride: usize,
        padding: usize,
    },
    /// Maximum over `size × size` windows with stride `size`; a remainder is dropped.
    MaxPool { size: usize },
    /// An image as a flat vector (C×H×W order).
    Flatten,
    /// `max(x, 0)`.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Inverted dropout while training. `width` values per row; `perm[i]` is where the dense
    /// backend's `i`-th value of a row sits in this backend's row (`None`: the same place).
    Dropout {
        rate: f32,
        width: usize,
        perm: Option<Vec<usize>>,
    },
}

/// The optimizer and its state, on candle tensors.
#[derive(Debug)]
struct Opt {
    kind: OptimizerKind,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    /// Steps taken so far.
    step: u64,
    /// SGD's velocity or Adam's first moment, one per parameter.
    m: Vec<Tensor>,
    /// Adam's second moment, one per parameter (empty for SGD).
    v: Vec<Tensor>,
}

/// A shard model on candle tensors: the layers of a checked [`Architecture`], their
/// parameters as candle variables, and our own optimizer over them (see the module doc).
#[derive(Debug)]
pub struct CandleModel {
    /// Where every tensor lives.
    device: Device,
    /// Shape of an input row.
    input: Shape,
    /// Values per input row.
    features: usize,
    /// Number of classes.
    classes: usize,
    /// The layers, the output layer last.
    steps: Vec<Step>,
    /// Every trainable tensor: each dense or convolution layer's weights, then its biases.
    params: Vec<Var>,
    /// Names of `params` (`l<k>.w`, `l<k>.b`).
    names: Vec<String>,
    /// Shapes of `params`.
    shapes: Vec<Vec<usize>>,
    /// The optimizer.
    opt: Opt,
    /// Seed of the dropout masks.
    dropout_seed: u64,
    /// Gradients of the last training step, one per parameter.
    grads: Option<Vec<Tensor>>,
}

/// An error of a candle operation, said as a configuration error of this backend.
fn candle_error(what: &str, e: candle_core::Error) -> Error {
    Error::Config(format!("candle backend: {what}: {e}"))
}

/// The host copy of an `f32` tensor, row-major.
///
/// Every tensor this backend holds is `f32`, and flattened to rank 1 it meets the only two
/// conditions under which `to_vec1` fails on the CPU (dtype and rank); on a CUDA device the
/// copy fails only when the device is lost, which no caller could recover from.
fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("candle backend: copying a tensor to the host failed: {e}"))
}

/// For a row `[c, h, w]` held channels-last by the dense backend, where each of its values
/// sits in the channels-first row: `perm[pixel · c + channel] = channel · h · w + pixel`.
fn channels_last_perm([c, h, w]: [usize; 3]) -> Vec<usize> {
    let hw = h * w;
    let mut perm = vec![0; c * hw];
    for p in 0..hw {
        for ch in 0..c {
            perm[p * c + ch] = ch * hw + p;
        }
    }
    perm
}

/// The dense backend's order of a row relative to this backend's: an image of several
/// channels is held channels-last there; anything else in the same order.
fn image_order(shape: Shape) -> Option<[usize; 3]> {
    match shape {
        Shape::Image(dims) if dims[0] > 1 => Some(dims),
        _ => None,
    }
}

/// Convolution weights drawn in the dense backend's `[filters, kernel, kernel, channels]`
/// order, placed into `[filters, channels, kernel, kernel]`.
fn conv_weights_from_dense(drawn: &[f32], filters: usize, channels: usize, k: usize) -> Vec<f32> {
    let mut w = vec![0.0; drawn.len()];
    for f in 0..filters {
        for ky in 0..k {
            for kx in 0..k {
                for ch in 0..channels {
                    w[((f * channels + ch) * k + ky) * k + kx] =
                        drawn[((f * k + ky) * k + kx) * channels + ch];
                }
            }
        }
    }
    w
}

/// Dense weights `[inputs, outputs]` drawn with rows in the dense backend's input order,
/// placed so that drawn row `r` becomes row `perm[r]`.
fn dense_weights_from_dense(drawn: &[f32], outputs: usize, perm: &[usize]) -> Vec<f32> {
    let mut w = vec![0.0; drawn.len()];
    for (r, &to) in perm.iter().enumerate() {
        w[to * outputs..(to + 1) * outputs].copy_from_slice(&drawn[r * outputs..(r + 1) * outputs]);
    }
    w
}

/// Inverted-dropout scales in the dense backend's order: 0 with probability `rate`, else
/// `1 / (1 - rate)`, drawn from a generator seeded with `seed` (as `net.rs` draws them).
fn dropout_mask(rate: f32, seed: u64, mask: &mut [f32]) {
    let mut rng = SplitMix64::new(seed);
    let keep = 1.0 / (1.0 - rate);
    for m in mask.iter_mut() {
        let u = (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
        *m = if u < rate { 0.0 } else { keep };
    }
}

/// The convolution of `x` `[batch, channels, h, w]` with `w` `[filters, channels, k, k]`.
///
/// Where the windows do not reach the last rows or columns of the padded image (a stride that
/// does not divide `h + 2·padding - k`), the image is padded and cropped to what the windows
/// read first: candle's gradient of a convolution assumes the windows reach both ends (it
/// derives one output padding from the height and applies it to both sides).
fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let k = w.dim(2)?;
    let (rh, rw) = (
        (h + 2 * padding - k) % stride,
        (wd + 2 * padding - k) % stride,
    );
    if rh == 0 && rw == 0 {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let padded = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let cropped = padded
        .narrow(2, 0, h + 2 * padding - rh)?
        .narrow(3, 0, wd + 2 * padding - rw)?;
    cropped.conv2d(w, 0, stride, 1, 1)
}

/// Max pooling of `[batch, channels, h, w]` over `size × size` windows with stride `size`, a
/// remainder dropped; each output takes the first maximum of its window in `(ky, kx)` order.
fn max_pool(x: &Tensor, size: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / size, w / size);
    let x = if oh * size != h || ow * size != w {
        x.narrow(2, 0, oh * size)?.narrow(3, 0, ow * size)?
    } else {
        x.clone()
    };
    let windows = x
        .reshape(vec![b, c, oh, size, ow, size])?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape(vec![b, c, oh, ow, size * size])?;
    let at = windows.argmax_keepdim(4)?;
    windows.gather(&at, 4)?.squeeze(4)
}

impl CandleModel {
    /// A fresh, seeded model on the CPU.
    pub fn new(config: &ModelConfig) -> Result<CandleModel> {
        CandleModel::on_device(config, &Device::Cpu)
    }

    /// A fresh, seeded model whose tensors live on `device`.
    pub fn on_device(config: &ModelConfig, device: &Device) -> Result<CandleModel> {
        let arch: &Architecture = &config.arch;
        let bad = |m: String| Error::Config(format!("candle backend: {m}"));
        match arch.layers.last() {
            Some(l)
                if l.spec
                    == LayerSpec::Dense {
                        units: arch.classes,
                    } => {}
            _ => {
                return Err(bad(format!(
                    "the architecture must end with a dense layer to its {} classes",
                    arch.classes
                )))
            }
        }
        let mut rng = SplitMix64::new(config.init_seed);
        let relu_after = |i: usize| {
            arch.layers
                .get(i + 1)
                .is_some_and(|l| l.spec == LayerSpec::Relu)
        };
        let mut order = image_order(arch.input);
        let mut steps = Vec::with_capacity(arch.layers.len());
        let mut host_params: Vec<(Vec<f32>, Vec<usize>)> = Vec::new();
        for (i, layer) in arch.layers.iter().enumerate() {
            let step = match &layer.spec {
                LayerSpec::Dense { units } => {
                    let Shape::Flat(n_in) = layer.input else {
                        return Err(bad(format!(
                            "layer {i} (dense) gets an image ({}); flatten it first",
                            layer.input
                        )));
                    };
                    let n_out = *units;
                    let bound = if relu_after(i) {
                        (6.0 / n_in as f32).sqrt()
                    } else {
                        (6.0 / (n_in + n_out) as f32).sqrt()
                    };
                    let drawn: Vec<f32> = (0..n_in * n_out)
                        .map(|_| bound * rng.next_symmetric())
                        .collect();
                    let w = match order {
                        Some(dims) => {
                            dense_weights_from_dense(&drawn, n_out, &channels_last_perm(dims))
                        }
                        None => drawn,
                    };
                    order = None;
                    let param = host_params.len();
                    host_params.push((w, vec![n_in, n_out]));
                    host_params.push((vec![0.0; n_out], vec![n_out]));
                    Step::Dense { param }
                }
                LayerSpec::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                } => {
                    let Shape::Image([c, _, _]) = layer.input else {
                        return Err(bad(format!(
                            "layer {i} (conv2d) gets {}, not an image",
                            layer.input
                        )));
                    };
                    let (fan_in, fan_out) = (kernel * kernel * c, kernel * kernel * filters);
                    let bound = if relu_after(i) {
                        (6.0 / fan_in as f32).sqrt()
                    } else {
                        (6.0 / (fan_in + fan_out) as f32).sqrt()
                    };
                    let drawn: Vec<f32> = (0..filters * fan_in)
                        .map(|_| bound * rng.next_symmetric())
                        .collect();
                    let w = conv_weights_from_dense(&drawn, *filters, c, *kernel);
                    order = image_order(layer.output);
                    let param = host_params.len();
                    host_params.push((w, vec![*filters, c, *kernel, *kernel]));
                    host_params.push((vec![0.0; *filters], vec![*filters]));
                    Step::Conv {
                        param,
                        stride: *stride,
                        padding: *padding,
                    }
                }
                LayerSpec::Maxpool2d { size } => {
                    if !matches!(layer.input, Shape::Image(_)) {
                        return Err(bad(format!(
                            "layer {i} (maxpool2d) gets {}, not an image",
                            layer.input
                        )));
                    }
                    order = image_order(layer.output);
                    Step::MaxPool { size: *size }
                }
                LayerSpec::Flatten => Step::Flatten,
                LayerSpec::Relu => Step::Relu,
                LayerSpec::Tanh => Step::Tanh,
                LayerSpec::Dropout { rate } => Step::Dropout {
                    rate: *rate,
                    width: layer.input.len(),
                    perm: order.map(channels_last_perm),
                },
            };
            steps.push(step);
        }
        let mut params = Vec::with_capacity(host_params.len());
        let mut shapes = Vec::with_capacity(host_params.len());
        for (data, shape) in host_params {
            let var = Var::from_vec(data, shape.clone(), device)
                .map_err(|e| candle_error("allocating the parameters", e))?;
            params.push(var);
            shapes.push(shape);
        }
        let names = (0..params.len() / 2)
            .flat_map(|k| [format!("l{k}.w"), format!("l{k}.b")])
            .collect();
        let zeros = |shapes: &[Vec<usize>]| -> Result<Vec<Tensor>> {
            shapes
                .iter()
                .map(|s| {
                    Tensor::zeros(s.clone(), DType::F32, device)
                        .map_err(|e| candle_error("allocating the optimizer state", e))
                })
                .collect()
        };
        let opt = Opt {
            kind: config.optimizer,
            lr: config.lr,
            momentum: config.momentum,
            weight_decay: config.weight_decay,
            step: 0,
            m: zeros(&shapes)?,
            v: match config.optimizer {
                OptimizerKind::Adam => zeros(&shapes)?,
                OptimizerKind::Sgd => Vec::new(),
            },
        };
        Ok(CandleModel {
            device: device.clone(),
            input: arch.input,
            features: arch.input.len(),
            classes: arch.classes,
            steps,
            params,
            names,
            shapes,
            opt,
            dropout_seed: config.dropout_seed,
            grads: None,
        })
    }

    /// The device its tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `b` standardized rows as the input tensor of the first layer.
    fn input_tensor(&self, x: &[f32], b: usize) -> candle_core::Result<Tensor> {
        let x = Tensor::from_slice(&x[..b * self.features], (b, self.features), &self.device)?;
        match self.input {
            Shape::Image([c, h, w]) => x.reshape((b, c, h, w)),
            Shape::Flat(_) => Ok(x),
        }
    }

    /// The logits of the batch `x`; `step` is the training step (dropout masks), `None` when
    /// predicting.
    fn forward(&self, x: Tensor, step: Option<u64>) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let mut h = x;
        for (l, layer) in self.steps.iter().enumerate() {
            h = match layer {
                Step::Dense { param } => h
                    .matmul(self.params[*param].as_tensor())?
                    .broadcast_add(self.params[param + 1].as_tensor())?,
                Step::Conv {
                    param,
                    stride,
                    padding,
                } => {
                    let bias = self.params[param + 1].as_tensor();
                    let filters = bias.dim(0)?;
                    conv2d(&h, self.params[*param].as_tensor(), *stride, *padding)?
                        .broadcast_add(&bias.reshape((1, filters, 1, 1))?)?
                }
                Step::MaxPool { size } => max_pool(&h, *size)?,
                Step::Flatten => h.flatten_from(1)?,
                Step::Relu => h.relu()?,
                Step::Tanh => h.tanh()?,
                Step::Dropout { rate, width, perm } => match step {
                    Some(t) if *rate > 0.0 => {
                        let mut drawn = vec![0f32; b * width];
                        dropout_mask(*rate, mix(self.dropout_seed ^ t) ^ l as u64, &mut drawn);
                        let mask = match perm {
                            Some(perm) => {
                                let mut mask = vec![0f32; b * width];
                                for (src, dst) in drawn
                                    .chunks_exact(*width)
                                    .zip(mask.chunks_exact_mut(*width))
                                {
                                    for (v, &to) in src.iter().zip(perm) {
                                        dst[to] = *v;
                                    }
                                }
                                mask
                            }
                            None => drawn,
                        };
                        let mask = Tensor::from_vec(mask, h.shape(), &self.device)?;
                        h.mul(&mask)?
                    }
                    _ => h,
                },
            };
        }
        Ok(h)
    }

    /// One forward and backward pass and one optimizer step; returns the summed loss.
    fn step(&mut self, x: &[f32], y: &[u32], b: usize) -> candle_core::Result<f64> {
        let input = self.input_tensor(x, b)?;
        let logits = self.forward(input, Some(self.opt.step))?;
        // log-softmax; the row maximum only shifts, so no gradient flows through it.
        let max = logits.max_keepdim(1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        let labels = Tensor::from_slice(&y[..b], (b, 1), &self.device)?;
        let picked = logp.gather(&labels, 1)?;
        let loss = picked.sum_all()?.affine(-1.0 / b as f64, 0.0)?;
        let summed: f64 = -picked
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>();
        let store = loss.backward()?;
        let mut grads = Vec::with_capacity(self.params.len());
        for p in &self.params {
            grads.push(match store.get(p.as_tensor()) {
                Some(g) => g.detach(),
                None => p.zeros_like()?.detach(),
            });
        }
        self.update(&grads)?;
        self.grads = Some(grads);
        Ok(summed)
    }

    /// Apply `grads` to the parameters: the formulas of [`crate::model::optim`], element for
    /// element, on candle tensors.
    fn update(&mut self, grads: &[Tensor]) -> candle_core::Result<()> {
        let opt = &mut self.opt;
        opt.step += 1;
        match opt.kind {
            OptimizerKind::Sgd => {
                let (mu, wd, lr) = (opt.momentum as f64, opt.weight_decay, opt.lr as f64);
                for ((p, g), m) in self.params.iter().zip(grads).zip(opt.m.iter_mut()) {
                    let pt = p.as_detached_tensor();
                    // g + wd · p
                    let g = if wd != 0.0 {
                        (g + pt.affine(wd as f64, 0.0)?)?
                    } else {
                        g.clone()
                    };
                    // m = mu · m + g; p -= lr · m
                    *m = (m.affine(mu, 0.0)? + g)?;
                    p.set(&(pt - m.affine(lr, 0.0)?)?)?;
                }
            }
            OptimizerKind::Adam => {
                // As in optim.rs: powi is repeated multiplication and sqrt is correctly
                // rounded, so the bias corrections do not depend on a math library.
                let t = opt.step.min(i32::MAX as u64) as i32;
                let bc1 = (1.0 - (BETA1 as f64).powi(t)) as f32;
                let inv_bc2_sqrt = (1.0 / (1.0 - (BETA2 as f64).powi(t)).sqrt()) as f32;
                let step_size = opt.lr / bc1;
                let decay = 1.0 - opt.lr * opt.weight_decay;
                // Each constant is the f32 optim.rs uses; affine rounds it back exactly.
                let (b1, one_b1) = (BETA1 as f64, (1.0 - BETA1) as f64);
                let (b2, one_b2) = (BETA2 as f64, (1.0 - BETA2) as f64);
                for (((p, g), m), v) in self
                    .params
                    .iter()
                    .zip(grads)
                    .zip(opt.m.iter_mut())
                    .zip(opt.v.iter_mut())
                {
                    let pt = p.as_detached_tensor();
                    // m = β1·m + (1-β1)·g; v = β2·v + ((1-β2)·g)·g
                    *m = (m.affine(b1, 0.0)? + g.affine(one_b1, 0.0)?)?;
                    *v = (v.affine(b2, 0.0)? + (g.affine(one_b2, 0.0)? * g)?)?;
                    // denom = sqrt(v)·inv_bc2_sqrt + eps; p = p·decay - (step_size·m)/denom
                    let denom = v.sqrt()?.affine(inv_bc2_sqrt as f64, EPS as f64)?;
                    let kept = if decay != 1.0 {
                        pt.affine(decay as f64, 0.0)?
                    } else {
                        pt
                    };
                    p.set(&(kept - (m.affine(step_size as f64, 0.0)? / denom)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// Class probabilities for `n` standardized rows, in chunks of [`CHUNK`] rows.
    fn probabilities(&self, x: &[f32], n: usize) -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(n * self.classes);
        for start in (0..n).step_by(CHUNK) {
            let b = CHUNK.min(n - start);
            let rows = &x[start * self.features..(start + b) * self.features];
            let logits = self.forward(self.input_tensor(rows, b)?, None)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits.contiguous()?)?;
            out.extend(probs.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    fn named(&self, values: impl Iterator<Item = Vec<f32>>, prefix: &str) -> Vec<Named> {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(values)
            .map(|((name, shape), data)| Named {
                name: format!("{prefix}{name}"),
                shape: shape.clone(),
                data,
            })
            .collect()
    }

    /// The values `data` read for tensor `name` as a tensor of `shape` on this model's device,
    /// checked for their count.
    fn checked_tensor(&self, name: &str, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let want: usize = shape.iter().product();
        if data.len() != want {
            return Err(Error::Config(format!(
                "candle backend: tensor {name} has {} values; its shape {shape:?} holds {want}",
                data.len()
            )));
        }
        Tensor::from_vec(data, shape.to_vec(), &self.device)
            .map_err(|e| candle_error(&format!("loading {name}"), e))
    }
}

impl ShardModel for CandleModel {
    fn backend(&self) -> Backend {
        Backend::Candle
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn parameters(&self) -> Vec<Named> {
        self.named(self.params.iter().map(|p| host(p.as_tensor())), "")
    }

    fn gradients(&self) -> Vec<Named> {
        match &self.grads {
            Some(grads) => self.named(grads.iter().map(host), ""),
            None => self.named(
                self.shapes
                    .iter()
                    .map(|s| vec![0.0; s.iter().product::<usize>()]),
                "",
            ),
        }
    }

    fn optimizer_state(&self) -> Vec<Named> {
        let mut out = self.named(self.opt.m.iter().map(host), "opt.m.");
        out.extend(self.named(self.opt.v.iter().map(host), "opt.v."));
        out
    }

    fn steps(&self) -> u64 {
        self.opt.step
    }

    fn restore(&mut self, read: &mut crate::model::TensorSource<'_>, steps: u64) -> Result<()> {
        // Read everything first, so that a failed read leaves the model as it was.
        let mut params = Vec::with_capacity(self.params.len());
        let mut m = Vec::with_capacity(self.params.len());
        let mut v = Vec::with_capacity(self.opt.v.len());
        for (name, shape) in self.names.iter().zip(&self.shapes) {
            params.push(self.checked_tensor(name, shape, read(name, shape)?)?);
        }
        for (name, shape) in self.names.iter().zip(&self.shapes) {
            let name = format!("opt.m.{name}");
            m.push(self.checked_tensor(&name, shape, read(&name, shape)?)?);
        }
        if self.opt.kind == OptimizerKind::Adam {
            for (name, shape) in self.names.iter().zip(&self.shapes) {
                let name = format!("opt.v.{name}");
                v.push(self.checked_tensor(&name, shape, read(&name, shape)?)?);
            }
        }
        for ((var, t), name) in self.params.iter().zip(&params).zip(&self.names) {
            var.set(t)
                .map_err(|e| candle_error(&format!("restoring {name}"), e))?;
        }
        self.opt.m = m;
        self.opt.v = v;
        self.opt.step = steps;
        Ok(())
    }

    fn train_step(&mut self, x: &[f32], y: &[u32], b: usize) -> Result<f64> {
        if b == 0 {
            return Err(Error::Config(
                "candle backend: a training step needs at least one row".into(),
            ));
        }
        if x.len() < b * self.features || y.len() < b {
            return Err(Error::Config(format!(
                "candle backend: a batch of {b} rows needs {} values and {b} labels, got {} and {}",
                b * self.features,
                x.len(),
                y.len()
            )));
        }
        if let Some(&bad) = y[..b].iter().find(|&&c| c as usize >= self.classes) {
            return Err(Error::Config(format!(
                "candle backend: label {bad} is out of range for {} classes",
                self.classes
            )));
        }
        self.step(x, y, b)
            .map_err(|e| candle_error("training step", e))
    }

    fn predict(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert!(
            x.len() >= n * self.features,
            "predict: {n} rows need {} values, got {}",
            n * self.features,
            x.len()
        );
        // The layers' shapes were checked when the model was built and the rows' length just
        // above; on the CPU the operations fail only on shapes or dtypes, which are right here.
        // On a CUDA device a failure means the device is lost, which no caller can recover
        // from.
        self.probabilities(x, n)
            .unwrap_or_else(|e| panic!("candle backend: predict failed: {e}"))
    }

    fn boxed_clone(&self) -> Box<dyn ShardModel> {
        // Var::from_tensor of a detached tensor copies it into new storage; copy() does for
        // the state tensors. Neither fails on the CPU (same device, same dtype, contiguous);
        // on CUDA only when the device is lost.
        let copy = |t: &Tensor| {
            t.copy()
                .unwrap_or_else(|e| panic!("candle backend: copying a tensor failed: {e}"))
        };
        Box::new(CandleModel {
            device: self.device.clone(),
            input: self.input,
            features: self.features,
            classes: self.classes,
            steps: self.steps.clone(),
            params: self
                .params
                .iter()
                .map(|p| {
                    Var::from_tensor(&p.as_detached_tensor()).unwrap_or_else(|e| {
                        panic!("candle backend: copying a parameter failed: {e}")
                    })
                })
                .collect(),
            names: self.names.clone(),
            shapes: self.shapes.clone(),
            opt: Opt {
                kind: self.opt.kind,
                lr: self.opt.lr,
                momentum: self.opt.momentum,
                weight_decay: self.opt.weight_decay,
                step: self.opt.step,
                m: self.opt.m.iter().map(copy).collect(),
                v: self.opt.v.iter().map(copy).collect(),
            },
            dropout_seed: self.dropout_seed,
            grads: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{build, Activation, ModelSpec};
    use std::collections::HashMap;
    use std::time::Instant;

    /// `b` rows of `d` values in [-1, 1) and labels below `classes`, from `seed`.
    fn batch(b: usize, d: usize, classes: u32, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = SplitMix64::new(seed);
        let x = (0..b * d).map(|_| rng.next_symmetric()).collect();
        let y = (0..b)
            .map(|_| (rng.next_u64() % classes as u64) as u32)
            .collect();
        (x, y)
    }

    /// `b` rows labelled by a fixed random linear teacher (something a model can learn).
    fn learnable_batch(b: usize, d: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let (x, _) = batch(b, d, 1, seed);
        let mut rng = SplitMix64::new(77);
        let teacher: Vec<f32> = (0..d * classes).map(|_| rng.next_symmetric()).collect();
        let y = x
            .chunks_exact(d)
            .map(|row| {
                let score = |c: usize| -> f32 {
                    row.iter()
                        .enumerate()
                        .map(|(i, v)| v * teacher[i * classes + c])
                        .sum()
                };
                (0..classes)
                    .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                    .unwrap() as u32
            })
            .collect();
        (x, y)
    }

    fn arch(preset: &str, features: usize, classes: usize) -> Architecture {
        let spec: ModelSpec = toml::from_str(&format!(
            "name = \"t\"\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 8\nepochs = 2\n{preset}\n"
        ))
        .unwrap();
        spec.architecture(features, classes).unwrap()
    }

    fn config(arch: Architecture, backend: Backend, optimizer: OptimizerKind) -> ModelConfig {
        ModelConfig {
            arch,
            backend,
            optimizer,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 16,
            init_seed: 5,
            dropout_seed: 9,
            device: Default::default(),
        }
    }

    const CNN: &str = r#"input = [2, 7, 7]
layers = [
  { kind = "conv2d", filters = 3, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "conv2d", filters = 4, kernel = 2 },
  { kind = "tanh" },
  { kind = "flatten" },
  { kind = "dropout", rate = 0.25 },
  { kind = "dense", units = 6 },
  { kind = "tanh" },
]"#;

    /// Names, shapes and bit patterns: equality of these is bitwise equality.
    fn bits(ts: &[Named]) -> Vec<(String, Vec<usize>, Vec<u32>)> {
        ts.iter()
            .map(|t| {
                let data = t.data.iter().map(|v| v.to_bits()).collect();
                (t.name.clone(), t.shape.clone(), data)
            })
            .collect()
    }

    /// The largest absolute difference between two lists of the same tensors.
    fn worst(a: &[Named], b: &[Named]) -> f32 {
        assert_eq!(a.len(), b.len());
        let mut worst = 0f32;
        for (a, b) in a.iter().zip(b) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            for (x, y) in a.data.iter().zip(&b.data) {
                worst = worst.max((x - y).abs());
            }
        }
        worst
    }

    /// The largest of `|a - b| / (atol + rtol·|b|)`: at most 1 when every value is within
    /// the tolerance.
    fn worst_scaled(a: &[Named], b: &[Named], atol: f32, rtol: f32) -> f32 {
        let mut worst = 0f32;
        for (a, b) in a.iter().zip(b) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            for (x, y) in a.data.iter().zip(&b.data) {
                worst = worst.max((x - y).abs() / (atol + rtol * y.abs()));
            }
        }
        worst
    }

    /// Dense-backend tensors (parameters, gradients or optimizer state) in this backend's
    /// layout. Written from this backend's index to the dense backend's, independently of
    /// the permutations the initialisation uses: convolution weights
    /// `[f, ky, kx, c]` → `[f, c, ky, kx]`, and the rows of a dense layer that reads a
    /// flattened image of several channels from (pixel, channel) to (channel, pixel) order.
    fn to_candle_layout(arch: &Architecture, dense: &[Named]) -> Vec<Named> {
        let by_name: HashMap<&str, &Named> = dense.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut out = Vec::new();
        // The image shape behind the current flat values, as the dense backend orders them.
        let mut image = match arch.input {
            Shape::Image(d) => Some(d),
            Shape::Flat(_) => None,
        };
        let mut k = 0;
        for layer in &arch.layers {
            let mut emit = |suffix: &str, map: &dyn Fn(&Named) -> Named| {
                for prefix in ["", "opt.m.", "opt.v."] {
                    if let Some(t) = by_name.get(format!("{prefix}l{k}.{suffix}").as_str()) {
                        out.push(map(t));
                    }
                }
            };
            match &layer.spec {
                LayerSpec::Conv2d {
                    filters, kernel, ..
                } => {
                    let Shape::Image([c, _, _]) = layer.input else {
                        unreachable!()
                    };
                    let (f, kk) = (*filters, *kernel);
                    emit("w", &|t| {
                        assert_eq!(t.shape, [f, kk, kk, c]);
                        let mut data = vec![0.0; t.data.len()];
                        for (i, v) in data.iter_mut().enumerate() {
                            let (o, ch, ky, kx) =
                                (i / (c * kk * kk), i / (kk * kk) % c, i / kk % kk, i % kk);
                            *v = t.data[((o * kk + ky) * kk + kx) * c + ch];
                        }
                        Named {
                            name: t.name.clone(),
                            shape: vec![f, c, kk, kk],
                            data,
                        }
                    });
                    emit("b", &|t| t.clone());
                    k += 1;
                    image = match layer.output {
                        Shape::Image(d) => Some(d),
                        Shape::Flat(_) => None,
                    };
                }
                LayerSpec::Dense { units } => {
                    let n = *units;
                    let img = image;
                    emit("w", &|t| {
                        let mut data = t.data.clone();
                        if let Some([c, h, w]) = img {
                            for r in 0..c * h * w {
                                let (ch, p) = (r / (h * w), r % (h * w));
                                let from = p * c + ch;
                                data[r * n..(r + 1) * n]
                                    .copy_from_slice(&t.data[from * n..(from + 1) * n]);
                            }
                        }
                        Named { data, ..t.clone() }
                    });
                    emit("b", &|t| t.clone());
                    k += 1;
                    image = None;
                }
                LayerSpec::Maxpool2d { .. } => {
                    if let Shape::Image(d) = layer.output {
                        image = Some(d);
                    }
                }
                _ => {}
            }
        }
        assert_eq!(out.len(), dense.len(), "every tensor mapped");
        out
    }

    /// A model of `config` whose parameters and optimizer state are `tensors`.
    fn restored(config: &ModelConfig, tensors: &[Named], steps: u64) -> CandleModel {
        let mut m = CandleModel::new(config).unwrap();
        let by_name: HashMap<String, Named> = tensors
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        m.restore(
            &mut |name, shape| {
                let t = &by_name[name];
                assert_eq!(t.shape, shape, "{name}");
                Ok(t.data.clone())
            },
            steps,
        )
        .unwrap();
        m
    }

    fn state(m: &dyn ShardModel) -> Vec<Named> {
        let mut all = m.parameters();
        all.extend(m.optimizer_state());
        all
    }

    /// Test 1. An MLP on both backends: bitwise equal initial parameters; after 40 optimizer
    /// steps on the same seeded batches, weights within 1e-4 absolute for Adam (AdamW) and
    /// 1e-5 for SGD, the losses of every step within 1e-4 relative, and the first step's
    /// gradients within 1e-6 absolute + 1e-4 relative. (Both compute in f32 with other
    /// summation orders and other tanh/exp: differences are rounding, not method. Measured on
    /// an x86-64 CPU with AVX-512: weights within 1.2e-7, losses within 4e-8 relative.)
    #[test]
    fn an_mlp_matches_the_dense_backend() {
        let cases = [
            (Activation::Tanh, OptimizerKind::Adam, 0.0),
            (Activation::Relu, OptimizerKind::Adam, 0.0),
            (Activation::Tanh, OptimizerKind::Adam, 0.05),
            (Activation::Tanh, OptimizerKind::Sgd, 0.0),
            (Activation::Relu, OptimizerKind::Sgd, 0.01),
        ];
        for (act, optimizer, weight_decay) in cases {
            let what = format!("{act:?} {optimizer:?} wd {weight_decay}");
            let mut cfg = ModelConfig::dense(&[20, 16, 7], act, 3);
            cfg.optimizer = optimizer;
            cfg.weight_decay = weight_decay;
            if optimizer == OptimizerKind::Sgd {
                cfg.lr = 0.05;
            }
            let mut dense = build(&cfg).unwrap();
            cfg.backend = Backend::Candle;
            let mut candle = build(&cfg).unwrap();
            assert_eq!(candle.backend(), Backend::Candle);
            assert_eq!(
                bits(&dense.parameters()),
                bits(&candle.parameters()),
                "{what}: the same initial weights"
            );
            assert_eq!(
                bits(&dense.optimizer_state()),
                bits(&candle.optimizer_state()),
                "{what}: the same (zero) optimizer state, names and shapes"
            );
            let mut worst_loss = 0f64;
            for step in 0..40u64 {
                let (x, y) = batch(32, 20, 7, 100 + step);
                let ld = dense.train_step(&x, &y, 32).unwrap();
                let lc = candle.train_step(&x, &y, 32).unwrap();
                worst_loss = worst_loss.max((ld - lc).abs() / ld.abs());
                if step == 0 {
                    let g = worst_scaled(&candle.gradients(), &dense.gradients(), 1e-6, 1e-4);
                    assert!(
                        g <= 1.0,
                        "{what}: first-step gradients off by {g}× tolerance"
                    );
                }
            }
            assert_eq!(candle.steps(), 40);
            let w = worst(&candle.parameters(), &dense.parameters());
            let s = worst(&candle.optimizer_state(), &dense.optimizer_state());
            println!(
                "mlp {what}: after 40 steps worst weight diff {w:e}, state diff {s:e}, loss rel diff {worst_loss:e}"
            );
            let tol = if optimizer == OptimizerKind::Sgd {
                1e-5
            } else {
                1e-4
            };
            assert!(w < tol, "{what}: weights differ by {w}");
            assert!(worst_loss < 1e-4, "{what}: losses differ by {worst_loss}");
        }
    }

    /// Test 2. The CNN (two channels, padding, a pooling remainder, dropout after a flatten):
    /// - it starts from the dense backend's initial weights, permuted to this backend's
    ///   layouts (bitwise);
    /// - with the dense backend's parameters copied in through the layout permutation (after
    ///   5 dense-backend steps), the next step's loss agrees within 1e-4 relative (dropout
    ///   active: the masks are the same), predictions within 1e-5 absolute and gradients
    ///   within 1e-5 absolute + 1e-3 relative;
    /// - it trains (the loss after 60 steps well below the first) and is deterministic, and
    ///   after 60 steps its weights are within 1e-4 of the dense backend's.
    ///
    /// Measured on an x86-64 CPU with AVX-512: losses within 1e-8 relative, predictions and
    /// gradients within 1e-7, weights after 60 steps within 4e-7.
    #[test]
    fn a_cnn_trains_deterministically_and_computes_the_dense_backends_model() {
        let a = arch(CNN, 98, 3);
        let dense_cfg = config(a.clone(), Backend::Dense, OptimizerKind::Adam);
        let cfg = config(a.clone(), Backend::Candle, OptimizerKind::Adam);
        let mut dense = build(&dense_cfg).unwrap();
        let fresh = CandleModel::new(&cfg).unwrap();
        assert_eq!(
            bits(&fresh.parameters()),
            bits(&to_candle_layout(&a, &dense.parameters())),
            "the dense backend's initial weights, permuted"
        );
        let shapes: Vec<Vec<usize>> = fresh.parameters().into_iter().map(|t| t.shape).collect();
        assert_eq!(
            shapes[0],
            [3, 2, 3, 3],
            "conv weights are [filters, channels, k, k]"
        );
        assert_eq!(shapes[4], [16, 6], "dense weights are [inputs, outputs]");

        // The first step from the common initialisation.
        let (x0, y0) = learnable_batch(16, 98, 3, 1000);
        let mut first = fresh.boxed_clone();
        let l_candle = first.train_step(&x0, &y0, 16).unwrap();
        let mut d0 = build(&dense_cfg).unwrap();
        let l_dense = d0.train_step(&x0, &y0, 16).unwrap();
        let rel0 = ((l_candle - l_dense) / l_dense).abs();
        assert!(rel0 < 1e-4, "first-step loss {l_candle} vs {l_dense}");

        // Dense-backend parameters and state after 5 steps, copied in.
        for s in 0..5 {
            let (x, y) = learnable_batch(16, 98, 3, 2000 + s);
            dense.train_step(&x, &y, 16).unwrap();
        }
        let mut candle = restored(&cfg, &to_candle_layout(&a, &state(dense.as_ref())), 5);
        let (x, y) = learnable_batch(16, 98, 3, 3000);
        let pd = dense.predict(&x, 16);
        let pc = candle.predict(&x, 16);
        let wp = pd
            .iter()
            .zip(&pc)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(wp < 1e-5, "predictions differ by {wp}");
        let ld = dense.train_step(&x, &y, 16).unwrap();
        let lc = candle.train_step(&x, &y, 16).unwrap();
        let rel = ((lc - ld) / ld).abs();
        assert!(rel < 1e-4, "loss at step 5 (dropout on): {lc} vs {ld}");
        let g = worst_scaled(
            &candle.gradients(),
            &to_candle_layout(&a, &dense.gradients()),
            1e-5,
            1e-3,
        );
        assert!(g <= 1.0, "gradients off by {g}× tolerance");
        let wg = worst(
            &candle.gradients(),
            &to_candle_layout(&a, &dense.gradients()),
        );
        println!(
            "cnn: first-step loss rel diff {rel0:e}; after mapping: loss rel diff {rel:e}, \
             prediction diff {wp:e}, gradient diff {wg:e}"
        );

        // Training: 60 steps on 4 batches in turn, twice.
        let batches: Vec<_> = (0..4)
            .map(|i| learnable_batch(16, 98, 3, 4000 + i))
            .collect();
        let fast = |c: &ModelConfig| ModelConfig {
            lr: 0.03,
            ..c.clone()
        };
        let run = || {
            let mut m = CandleModel::new(&fast(&cfg)).unwrap();
            let mut d = build(&fast(&dense_cfg)).unwrap();
            let mut losses = Vec::new();
            let mut dense_losses = Vec::new();
            for s in 0..60 {
                let (x, y) = &batches[s % 4];
                losses.push(m.train_step(x, y, 16).unwrap());
                dense_losses.push(d.train_step(x, y, 16).unwrap());
            }
            (m, losses, d, dense_losses)
        };
        let (m1, l1, d1, dl) = run();
        let (m2, l2, _, _) = run();
        let first4: f64 = l1[..4].iter().sum();
        let last4: f64 = l1[56..].iter().sum();
        println!(
            "cnn: loss of the first 4 steps {first4:.4}, of the last 4 {last4:.4} \
             (dense backend {:.4})",
            dl[56..].iter().sum::<f64>(),
        );
        assert!(last4 < 0.5 * first4, "trains: {first4} → {last4}");
        let w60 = worst(&m1.parameters(), &to_candle_layout(&a, &d1.parameters()));
        println!("cnn: after 60 steps worst weight diff vs the dense backend {w60:e}");
        assert!(
            w60 < 1e-4,
            "after 60 steps weights differ from the dense backend's by {w60}"
        );
        assert_eq!(
            l1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            l2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(bits(&state(&m1)), bits(&state(&m2)), "the same bits");
        assert_eq!(bits(&m1.gradients()), bits(&m2.gradients()));
    }

    /// A strided, padded convolution with a 1×1 convolution after it: gradients of the first
    /// step equal the dense backend's (mapped) within 1e-5 absolute + 1e-3 relative.
    #[test]
    fn strided_convolution_gradients_match_the_dense_backend() {
        let a = arch(
            r#"input = [2, 6, 5]
layers = [
  { kind = "conv2d", filters = 3, kernel = 3, stride = 2, padding = 1 },
  { kind = "tanh" },
  { kind = "conv2d", filters = 2, kernel = 1 },
  { kind = "flatten" },
]"#,
            60,
            3,
        );
        let mut dense = build(&config(a.clone(), Backend::Dense, OptimizerKind::Sgd)).unwrap();
        let mut candle = build(&config(a.clone(), Backend::Candle, OptimizerKind::Sgd)).unwrap();
        let (x, y) = batch(5, 60, 3, 8);
        let ld = dense.train_step(&x, &y, 5).unwrap();
        let lc = candle.train_step(&x, &y, 5).unwrap();
        assert!(((lc - ld) / ld).abs() < 1e-5, "loss {lc} vs {ld}");
        let mapped = to_candle_layout(&a, &dense.gradients());
        let g = worst_scaled(&candle.gradients(), &mapped, 1e-5, 1e-3);
        assert!(g <= 1.0, "gradients off by {g}× tolerance");
        let w = worst(
            &candle.parameters(),
            &to_candle_layout(&a, &dense.parameters()),
        );
        assert!(w < 1e-6, "after one SGD step weights differ by {w}");
    }

    /// Test 3. Parameters, optimizer state and the step count read back give a model whose
    /// next step equals the original's bitwise (dropout included: the step count keys the
    /// masks); so does a clone.
    #[test]
    fn restore_continues_exactly() {
        for optimizer in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let a = arch(CNN, 98, 3);
            let mut cfg = config(a, Backend::Candle, optimizer);
            cfg.weight_decay = 0.01;
            let mut m = CandleModel::new(&cfg).unwrap();
            for s in 0..7 {
                let (x, y) = learnable_batch(16, 98, 3, 50 + s);
                m.train_step(&x, &y, 16).unwrap();
            }
            let mut other = cfg.clone();
            other.init_seed = 1234;
            let saved = state(&m);
            let names: Vec<String> = saved.iter().map(|t| t.name.clone()).collect();
            let prefixes = if optimizer == OptimizerKind::Adam {
                3
            } else {
                2
            };
            assert_eq!(names.len(), prefixes * 8, "{names:?}");
            assert!(names.contains(&"opt.m.l3.b".to_string()));
            let mut back = restored(&other, &saved, m.steps());
            assert_eq!(back.steps(), 7);
            assert_eq!(bits(&state(&back)), bits(&saved));
            let mut clone = m.boxed_clone();
            let (x, y) = learnable_batch(16, 98, 3, 99);
            let l = m.train_step(&x, &y, 16).unwrap();
            let lb = back.train_step(&x, &y, 16).unwrap();
            let lc = clone.train_step(&x, &y, 16).unwrap();
            assert_eq!(l.to_bits(), lb.to_bits());
            assert_eq!(l.to_bits(), lc.to_bits());
            assert_eq!(bits(&state(&m)), bits(&state(&back)), "{optimizer:?}");
            assert_eq!(
                bits(&state(&m)),
                bits(&state(clone.as_ref())),
                "{optimizer:?} clone"
            );
        }
    }

    /// A read that fails, or a tensor of the wrong length, leaves the model as it was.
    #[test]
    fn a_failed_restore_changes_nothing() {
        let cfg = config(arch(CNN, 98, 3), Backend::Candle, OptimizerKind::Adam);
        let mut m = CandleModel::new(&cfg).unwrap();
        let before = bits(&state(&m));
        let err = m.restore(
            &mut |name, shape| {
                if name == "opt.v.l2.w" {
                    Ok(vec![0.0; 1])
                } else {
                    Ok(vec![1.0; shape.iter().product()])
                }
            },
            3,
        );
        assert!(err.unwrap_err().to_string().contains("opt.v.l2.w"));
        assert_eq!(bits(&state(&m)), before);
        assert_eq!(m.steps(), 0);
    }

    /// Test 4. Every layer kind (a strided, padded convolution, a 1×1 convolution, pooling
    /// with a remainder, both activations, dropout on an image and on a flat vector, flatten,
    /// dense) builds, trains and predicts rows that sum to 1, in chunks as row by row, and
    /// as the dense backend does (the same initial function).
    #[test]
    fn every_layer_kind_builds_and_predicts_probabilities() {
        let a = arch(
            r#"input = [3, 9, 8]
layers = [
  { kind = "conv2d", filters = 4, kernel = 3, stride = 2, padding = 1 },
  { kind = "relu" },
  { kind = "dropout", rate = 0.1 },
  { kind = "conv2d", filters = 5, kernel = 1 },
  { kind = "tanh" },
  { kind = "maxpool2d", size = 2 },
  { kind = "flatten" },
  { kind = "dense", units = 7 },
  { kind = "relu" },
  { kind = "dropout", rate = 0.5 },
  { kind = "dense", units = 6 },
  { kind = "tanh" },
]"#,
            216,
            4,
        );
        let cfg = config(a.clone(), Backend::Candle, OptimizerKind::Adam);
        let mut m = build(&cfg).unwrap();
        let dense = build(&config(a.clone(), Backend::Dense, OptimizerKind::Adam)).unwrap();
        assert_eq!(m.classes(), 4);
        assert_eq!(
            bits(&m.parameters()),
            bits(&to_candle_layout(&a, &dense.parameters()))
        );
        assert!(m
            .gradients()
            .iter()
            .all(|g| g.data.iter().all(|&v| v == 0.0)));
        let n = 300;
        let (x, y) = batch(n, 216, 4, 17);
        let p = m.predict(&x, n);
        assert_eq!(p.len(), n * 4);
        for row in p.chunks_exact(4) {
            assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
        let pd = dense.predict(&x, n);
        let wd = p
            .iter()
            .zip(&pd)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            wd < 1e-5,
            "predictions differ from the dense backend's by {wd}"
        );
        for r in [0, 255, 256, 299] {
            let one = m.predict(&x[r * 216..(r + 1) * 216], 1);
            for (a, b) in one.iter().zip(&p[r * 4..(r + 1) * 4]) {
                assert!((a - b).abs() < 1e-6, "row {r}: {a} vs {b}");
            }
        }
        assert!(m.predict(&x, 0).is_empty());
        let l = m.train_step(&x[..16 * 216], &y[..16], 16).unwrap();
        assert!(l.is_finite() && l > 0.0);
        assert!(m
            .gradients()
            .iter()
            .all(|g| g.data.iter().any(|&v| v != 0.0)));
        assert_eq!(
            m.predict(&x, 3),
            m.predict(&x, 3),
            "predicting draws no dropout"
        );
        assert!(
            m.train_step(&x[..216], &[4], 1).is_err(),
            "label out of range"
        );
        assert!(m.train_step(&x, &y, 0).is_err(), "an empty batch");
        assert!(m.train_step(&x[..10], &y, 1).is_err(), "a short row");
        assert_eq!(m.steps(), 1, "refused steps take no step");
    }

    /// The time of one training step of a small image CNN on each backend (not a check: run
    /// with `--ignored --nocapture`, and `RAYON_NUM_THREADS=1` for the binary's setting).
    #[test]
    #[ignore]
    fn time_a_cnn_step() {
        let a = arch(
            r#"input = [3, 32, 32]
layers = [
  { kind = "conv2d", filters = 16, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "conv2d", filters = 32, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "flatten" },
  { kind = "dense", units = 64 },
  { kind = "relu" },
]"#,
            3072,
            10,
        );
        let b = 64;
        let (x, y) = batch(b, 3072, 10, 1);
        for backend in [Backend::Dense, Backend::Candle] {
            let mut cfg = config(a.clone(), backend, OptimizerKind::Adam);
            cfg.batch_size = b;
            let mut m = build(&cfg).unwrap();
            m.train_step(&x, &y, b).unwrap();
            let steps = 5;
            let t = Instant::now();
            for _ in 0..steps {
                m.train_step(&x, &y, b).unwrap();
            }
            let per = t.elapsed().as_secs_f64() / steps as f64;
            println!(
                "{}: {:.1} ms per step of {b} rows",
                backend.name(),
                per * 1e3
            );
        }
    }
}
