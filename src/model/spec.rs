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

/// Largest number of filters, kernel size, stride, padding or pooling size accepted.
pub const MAX_KERNEL: usize = 64;
/// Largest number of convolution filters accepted.
pub const MAX_FILTERS: usize = 4096;

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

/// How a shard's features are standardized before its model sees them. Everything fitted is
/// fitted on the shard's own first slice, so unlearning refits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Standardize {
    /// Each feature by its own mean and deviation, clipped at ±6σ: for tabular data.
    #[default]
    Feature,
    /// One mean and one deviation over every feature, clipped at ±6σ: for images, where a
    /// pixel that is almost always 0 should stay small.
    Global,
    /// Features as they are (times `scale`, when given).
    None,
}

impl Standardize {
    /// The name used in presets and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Standardize::Feature => "feature",
            Standardize::Global => "global",
            Standardize::None => "none",
        }
    }
}

// Presets and `run.json` files written before `global` existed say `true` (per feature) or
// `false` (none); those two stay booleans, so such files read and write back byte for byte.
impl Serialize for Standardize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Standardize::Feature => s.serialize_bool(true),
            Standardize::None => s.serialize_bool(false),
            Standardize::Global => s.serialize_str("global"),
        }
    }
}

impl<'de> Deserialize<'de> for Standardize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Bool(bool),
            Name(String),
        }
        match Given::deserialize(d)? {
            Given::Bool(true) => Ok(Standardize::Feature),
            Given::Bool(false) => Ok(Standardize::None),
            Given::Name(n) => match n.as_str() {
                "feature" => Ok(Standardize::Feature),
                "global" => Ok(Standardize::Global),
                "none" => Ok(Standardize::None),
                other => Err(serde::de::Error::custom(format!(
                    "standardize is \"{other}\"; expected \"feature\", \"global\" or \"none\""
                ))),
            },
        }
    }
}

/// A fixed factor every feature is multiplied by, written as a number or a fraction
/// (`scale = "1/255"` for 8-bit pixels).
fn de_scale<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(f64),
        Text(String),
    }
    let v = match Option::<Given>::deserialize(d)? {
        None => return Ok(None),
        Some(Given::Number(v)) => v,
        Some(Given::Text(t)) => parse_scale(&t).map_err(serde::de::Error::custom)?,
    };
    Ok(Some(v as f32))
}

/// `"0.5"`, `"1/255"`: the value of a scale written as text.
pub fn parse_scale(text: &str) -> std::result::Result<f64, String> {
    let bad = || format!("scale is \"{text}\"; expected a number or a fraction such as \"1/255\"");
    let num = |t: &str| t.trim().parse::<f64>().map_err(|_| bad());
    match text.split_once('/') {
        Some((a, b)) => Ok(num(a)? / num(b)?),
        None => num(text),
    }
}

/// Deterministic augmentation of image rows while training: every row of every epoch is
/// shifted by a whole number of pixels drawn from the derived seeds and the row's tag, so
/// retraining after a deletion draws exactly the shifts training from scratch draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Largest shift, in pixels, along each axis (each row moves by -shift..=shift right and
    /// down, the uncovered pixels set to 0 after preprocessing).
    pub shift: usize,
}

/// Largest augmentation shift accepted, in pixels.
pub const MAX_SHIFT: usize = 16;

fn default_momentum() -> f32 {
    0.9
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
    /// How features are standardized per shard (fitted on the shard's first slice):
    /// `"feature"` (or `true`), `"global"` or `"none"` (or `false`). Default: feature.
    #[serde(default)]
    pub standardize: Standardize,
    /// A fixed factor every feature is multiplied by before the model sees it (`"1/255"` for
    /// 8-bit pixels); only with `standardize = "none"`, since standardizing undoes any scale.
    /// Default: none.
    #[serde(
        default,
        deserialize_with = "de_scale",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale: Option<f32>,
    /// Random shifts of image rows while training (`augment = { shift = 1 }`); needs `input`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Train small shards longer: each shard model takes at least this many optimizer steps
    /// of unsliced training, so a run of S shards of n rows trains
    /// `max(epochs, ceil(min_steps·batch_size/n))` epochs, n fixed at train time from the
    /// training file (unlearning keeps the epochs). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_steps: Option<u64>,
    /// Input shape `[channels, height, width]` of image presets: features are read row-major
    /// as C×H×W. Default: a flat vector of the data's features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[usize; 3]>,
    /// The layers before the output layer, in order. The output layer, dense to the class
    /// count with a softmax, is always added. Default: `hidden` as dense layers, each followed
    /// by `activation`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSpec>,
    /// Where the preset was read from, for messages (not saved).
    #[serde(skip)]
    pub source: Option<String>,
}

/// One layer of a preset (`layers = [{ kind = "conv2d", filters = 32, kernel = 3 }, ...]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LayerSpec {
    /// Fully connected: `units` outputs from a flat input.
    Dense {
        /// Output width.
        units: usize,
    },
    /// 2-D convolution over an image input, `filters` output channels of `kernel`×`kernel`.
    Conv2d {
        /// Output channels.
        filters: usize,
        /// Kernel height and width.
        kernel: usize,
        /// Step between windows. Default: 1.
        #[serde(default = "one")]
        stride: usize,
        /// Zeros added on every side. Default: 0.
        #[serde(default)]
        padding: usize,
    },
    /// Maximum over `size`×`size` windows with stride `size` (a remainder is dropped).
    Maxpool2d {
        /// Window height and width.
        size: usize,
    },
    /// An image as a flat vector (row-major).
    Flatten,
    /// `max(x, 0)`.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Inverted dropout while training (masks drawn from the derived seeds, so still
    /// deterministic); the identity when predicting.
    Dropout {
        /// Probability of dropping a value, in [0, 1).
        rate: f32,
    },
}

fn one() -> usize {
    1
}

/// The shape of the values between two layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// A flat vector.
    Flat(usize),
    /// An image, `[channels, height, width]`.
    Image([usize; 3]),
}

impl Shape {
    /// Number of values.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Flat(n) => n,
            Shape::Image([c, h, w]) => c * h * w,
        }
    }

    /// True for a shape of no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Flat(n) => write!(f, "{n} values"),
            Shape::Image([c, h, w]) => write!(f, "{c}×{h}×{w}"),
        }
    }
}

/// A layer with its input and output shapes: what the backends build.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The layer.
    pub spec: LayerSpec,
    /// Shape of its input.
    pub input: Shape,
    /// Shape of its output.
    pub output: Shape,
}

/// A checked architecture: every layer's shapes resolved for the data's feature and class
/// counts, the output layer included. Only [`ModelSpec::architecture`] makes one, so a model
/// can only be built from a preset that was checked against its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    /// Shape of a row.
    pub input: Shape,
    /// The layers, the output layer (dense to `classes`) last.
    pub layers: Vec<Layer>,
    /// Number of classes.
    pub classes: usize,
}

impl Architecture {
    /// Dense layers of widths `dims` (input first, classes last) with `activation` after
    /// every hidden layer.
    pub fn dense(dims: &[usize], activation: Activation) -> Architecture {
        let act = match activation {
            Activation::Tanh => LayerSpec::Tanh,
            Activation::Relu => LayerSpec::Relu,
        };
        let mut layers = Vec::new();
        let last = dims.len() - 2;
        for (i, w) in dims.windows(2).enumerate() {
            layers.push(Layer {
                spec: LayerSpec::Dense { units: w[1] },
                input: Shape::Flat(w[0]),
                output: Shape::Flat(w[1]),
            });
            if i < last {
                layers.push(Layer {
                    spec: act.clone(),
                    input: Shape::Flat(w[1]),
                    output: Shape::Flat(w[1]),
                });
            }
        }
        Architecture {
            input: Shape::Flat(dims[0]),
            layers,
            classes: dims[dims.len() - 1],
        }
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| match (&l.spec, l.input) {
                (LayerSpec::Dense { units }, i) => (i.len() as u64 + 1) * *units as u64,
                (
                    LayerSpec::Conv2d {
                        filters, kernel, ..
                    },
                    Shape::Image([c, _, _]),
                ) => (*kernel as u64 * *kernel as u64 * c as u64 + 1) * *filters as u64,
                _ => 0,
            })
            .sum()
    }

    /// Multiply-adds of one forward pass of one row, per layer (0 for layers without
    /// weights).
    pub fn layer_macs(&self) -> Vec<u64> {
        self.layers
            .iter()
            .map(|l| match (&l.spec, l.input, l.output) {
                (LayerSpec::Dense { units }, i, _) => i.len() as u64 * *units as u64,
                (LayerSpec::Conv2d { kernel, .. }, Shape::Image([c, _, _]), out) => {
                    out.len() as u64 * (*kernel * *kernel * c) as u64
                }
                _ => 0,
            })
            .collect()
    }
}

impl ModelSpec {
    /// Read a preset file and check it.
    pub fn load(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path).at(path)?;
        ModelSpec::from_toml(&text, &path.display().to_string())
    }

    /// Parse and check a preset's TOML text; `source` names it in messages (a path, or
    /// `built-in preset 'mlp'`).
    pub fn from_toml(text: &str, source: &str) -> Result<ModelSpec> {
        let mut spec: ModelSpec = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{source}: {}", e.message())))?;
        spec.source = Some(source.to_string());
        spec.validate().map_err(|e| match e {
            Error::Field { field, message } => {
                Error::Config(format!("{source}: {}", Error::field_text(field, &message)))
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
        if let Some(s) = self.scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::field(
                    "scale",
                    format!("must be a positive number, got {s}"),
                ));
            }
            if self.standardize != Standardize::None {
                return Err(Error::field(
                    "scale",
                    format!(
                        "applies to features that are not standardized, but standardize is \"{}\" (which undoes any scale); set standardize = \"none\"",
                        self.standardize.name()
                    ),
                ));
            }
        }
        if let Some(a) = self.augment {
            let Some([_, h, w]) = self.input else {
                return Err(Error::field(
                    "augment",
                    "shifts images, but the preset has no input = [channels, height, width]",
                ));
            };
            let most = MAX_SHIFT.min(h.min(w).saturating_sub(1));
            if !(1..=most).contains(&a.shift) {
                return Err(Error::field(
                    "augment",
                    format!(
                        "shift must be in 1..={most} for {h}×{w} images, got {}",
                        a.shift
                    ),
                ));
            }
        }
        if let Some(m) = self.min_steps {
            if !(1..=1 << 40).contains(&m) {
                return Err(Error::field(
                    "min_steps",
                    format!("must be in 1..=2^40, got {m}"),
                ));
            }
        }
        Ok(())
    }

    /// The epoch count of unsliced training for shards of `shard_rows` rows: `epochs`, raised
    /// by `min_steps` when shards are small.
    pub fn epochs_for(&self, shard_rows: u64) -> u32 {
        let Some(steps) = self.min_steps else {
            return self.epochs;
        };
        let needed = (steps as u128 * self.batch_size as u128).div_ceil(shard_rows.max(1) as u128);
        needed.clamp(self.epochs as u128, MAX_EPOCHS as u128) as u32
    }

    /// The preprocessing as one phrase (`feature standardization`, `scale 0.0039`), for
    /// messages and reports.
    pub fn preprocessing(&self) -> String {
        match (self.standardize, self.scale) {
            (Standardize::None, Some(s)) => format!("scale {s}"),
            (Standardize::None, None) => "none".into(),
            (st, _) => format!("{} standardization", st.name()),
        }
    }

    /// The layers before the output layer: `layers`, or `hidden` with `activation`.
    /// An image input (`input` given) is flattened before the first of `hidden`.
    pub fn hidden_layers(&self) -> Vec<LayerSpec> {
        if !self.layers.is_empty() {
            return self.layers.clone();
        }
        let act = match self.activation {
            Activation::Tanh => LayerSpec::Tanh,
            Activation::Relu => LayerSpec::Relu,
        };
        let flatten = self.input.map(|_| LayerSpec::Flatten);
        flatten
            .into_iter()
            .chain(
                self.hidden
                    .iter()
                    .flat_map(|&units| [LayerSpec::Dense { units }, act.clone()]),
            )
            .collect()
    }

    /// Check the preset against data of `features` features and `classes` classes and
    /// resolve every layer's shapes. Errors name the field (`input`, `layers[2]`, `model`).
    pub fn architecture(&self, features: usize, classes: usize) -> Result<Architecture> {
        let input = match self.input {
            None => Shape::Flat(features),
            Some([c, h, w]) => {
                for (name, v) in [("channels", c), ("height", h), ("width", w)] {
                    if !(1..=1 << 16).contains(&v) {
                        return Err(Error::field(
                            "input",
                            format!("{name} must be in 1..=65536, got {v}"),
                        ));
                    }
                }
                let shape = Shape::Image([c, h, w]);
                if shape.len() != features {
                    return Err(Error::field(
                        "input",
                        format!(
                            "is [{c}, {h}, {w}], which holds {} features, but the data has {features}",
                            shape.len()
                        ),
                    ));
                }
                shape
            }
        };
        if !self.layers.is_empty() && !self.hidden.is_empty() {
            return Err(Error::field(
                "layers",
                "and hidden are both given; give one of them",
            ));
        }
        let specs = self.hidden_layers();
        if specs.len() > 4 * MAX_LAYERS {
            return Err(Error::field(
                "layers",
                format!("has {} layers; at most {}", specs.len(), 4 * MAX_LAYERS),
            ));
        }
        let mut layers = Vec::with_capacity(specs.len() + 1);
        let mut shape = input;
        for (i, spec) in specs
            .iter()
            .cloned()
            .chain([LayerSpec::Dense { units: classes }])
            .enumerate()
        {
            let output = if i == specs.len() {
                match shape {
                    Shape::Flat(_) => Shape::Flat(classes),
                    Shape::Image(_) => {
                        return Err(Error::field(
                            "layers",
                            format!(
                                "end on an image ({shape}); the output layer needs a flat input: add {{ kind = \"flatten\" }}"
                            ),
                        ))
                    }
                }
            } else {
                output_shape(&spec, shape).map_err(|m| Error::Field {
                    field: "layers",
                    message: format!("[{i}] ({}): {m}", kind_name(&spec)),
                })?
            };
            layers.push(Layer {
                spec,
                input: shape,
                output,
            });
            shape = output;
        }
        let arch = Architecture {
            input,
            layers,
            classes,
        };
        if arch.parameters() > MAX_PARAMETERS {
            return Err(Error::field(
                "model",
                format!(
                    "has {} parameters on {features} features and {classes} classes, more than {MAX_PARAMETERS}",
                    arch.parameters()
                ),
            ));
        }
        Ok(arch)
    }
}

fn kind_name(spec: &LayerSpec) -> &'static str {
    match spec {
        LayerSpec::Dense { .. } => "dense",
        LayerSpec::Conv2d { .. } => "conv2d",
        LayerSpec::Maxpool2d { .. } => "maxpool2d",
        LayerSpec::Flatten => "flatten",
        LayerSpec::Relu => "relu",
        LayerSpec::Tanh => "tanh",
        LayerSpec::Dropout { .. } => "dropout",
    }
}

/// The output shape of `spec` on input `shape`, or why it cannot take that input.
fn output_shape(spec: &LayerSpec, shape: Shape) -> std::result::Result<Shape, String> {
    let in_range = |name: &str, v: usize, lo: usize, hi: usize| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("{name} must be in {lo}..={hi}, got {v}"))
        }
    };
    match (spec, shape) {
        (LayerSpec::Dense { units }, Shape::Flat(_)) => {
            in_range("units", *units, 1, MAX_WIDTH)?;
            Ok(Shape::Flat(*units))
        }
        (LayerSpec::Dense { .. }, Shape::Image(_)) => Err(format!(
            "takes a flat input, but gets an image ({shape}): add {{ kind = \"flatten\" }} before it"
        )),
        (
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                padding,
            },
            Shape::Image([_, h, w]),
        ) => {
            in_range("filters", *filters, 1, MAX_FILTERS)?;
            in_range("kernel", *kernel, 1, MAX_KERNEL)?;
            in_range("stride", *stride, 1, MAX_KERNEL)?;
            in_range("padding", *padding, 0, MAX_KERNEL)?;
            if *kernel > h + 2 * padding || *kernel > w + 2 * padding {
                return Err(format!(
                    "kernel {kernel} is larger than its input {shape} with padding {padding}"
                ));
            }
            let oh = (h + 2 * padding - kernel) / stride + 1;
            let ow = (w + 2 * padding - kernel) / stride + 1;
            Ok(Shape::Image([*filters, oh, ow]))
        }
        (LayerSpec::Maxpool2d { size }, Shape::Image([c, h, w])) => {
            in_range("size", *size, 1, MAX_KERNEL)?;
            if *size > h || *size > w {
                return Err(format!("size {size} is larger than its input {shape}"));
            }
            Ok(Shape::Image([c, h / size, w / size]))
        }
        (LayerSpec::Conv2d { .. } | LayerSpec::Maxpool2d { .. }, Shape::Flat(_)) => Err(format!(
            "takes an image, but gets {shape}: give the preset input = [channels, height, width]"
        )),
        (LayerSpec::Flatten, s) => Ok(Shape::Flat(s.len())),
        (LayerSpec::Relu | LayerSpec::Tanh, s) => Ok(s),
        (LayerSpec::Dropout { rate }, s) => {
            if rate.is_finite() && (0.0..1.0).contains(rate) {
                Ok(s)
            } else {
                Err(format!("rate must be in [0, 1), got {rate}"))
            }
        }
    }
}
