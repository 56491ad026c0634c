//! Export: the served ensemble as one ONNX graph ([`onnx`]) or as PyTorch-layout tensors in a
//! safetensors file ([`safetensors`]), for ONNX Runtime, Triton or a notebook.
//!
//! An export reads the published version only (the S shard models of the manifest that
//! `CURRENT` names, each checked against the manifest's file and model digests) and writes one
//! file outside the run; nothing in the run changes. Every shard's tensors are first put into
//! PyTorch's layout ([`EnsembleExport`]), whichever backend trained them: linear weights
//! `[out, in]` (the run stores `[in, out]`), convolution weights `[out_c, in_c, kh, kw]`, and
//! the features of a flattened image in `C×H×W` order (the dense backend holds images
//! channels-last and stores convolution weights `[out_c, kh, kw, in_c]`). Both formats are
//! written from that one form, so an ONNX graph and a `torch.nn.Sequential` loaded from the
//! safetensors file compute the same function.
//!
//! Cost: O(parameters) to read, convert and encode; memory holds the loaded models, their
//! converted copy and the encoded file (about three times the parameters' bytes).
//! `docs/formats.md` documents both files, their tensor and node names and their metadata.

pub mod onnx;
pub mod safetensors;

use crate::checkpoint::model_digest;
use crate::ensemble::Ensemble;
use crate::error::{Error, Result};
use crate::model::{Architecture, Backend, LayerSpec, Norm, Shape, Tensor};
use crate::run::{durable, Aggregation, Run, RunDir, RunFile};
use serde::Serialize;
use std::path::Path;

/// Format tag of every export's metadata (`sisa.format`).
pub const FORMAT: &str = "sisa-export/1";

/// A file format `sisa export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One ONNX graph: preprocessing, every shard model and the aggregation.
    Onnx,
    /// PyTorch-layout tensors of every shard, with the same metadata.
    Safetensors,
}

impl Format {
    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Safetensors => "safetensors",
        }
    }

    /// The format a file name's extension says (`.onnx`, `.safetensors`), if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "onnx" => Some(Format::Onnx),
            "safetensors" => Some(Format::Safetensors),
            _ => None,
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Format, String> {
        match s {
            "onnx" => Ok(Format::Onnx),
            "safetensors" => Ok(Format::Safetensors),
            other => Err(format!(
                "unknown export format '{other}'; sisa exports onnx or safetensors"
            )),
        }
    }
}

/// One layer of a shard model in PyTorch's layout, in architecture order; the softmax that
/// ends every shard model is not listed (it follows the last layer).
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// `y = x · weightᵀ + bias`, as `torch.nn.Linear`.
    Linear {
        /// Input width.
        in_features: usize,
        /// Output width.
        out_features: usize,
        /// `[out_features, in_features]`, row-major.
        weight: Vec<f32>,
        /// `[out_features]`.
        bias: Vec<f32>,
    },
    /// A 2-D cross-correlation over `[N, C, H, W]`, as `torch.nn.Conv2d`.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels (filters).
        out_channels: usize,
        /// Kernel height and width.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Zeros on every side.
        padding: usize,
        /// `[out_channels, in_channels, kernel, kernel]`, row-major.
        weight: Vec<f32>,
        /// `[out_channels]`.
        bias: Vec<f32>,
    },
    /// Maximum over `size × size` windows with stride `size`, a remainder dropped, as
    /// `torch.nn.MaxPool2d(size)`.
    MaxPool2d {
        /// Window size and stride.
        size: usize,
    },
    /// `[N, C, H, W]` to `[N, C·H·W]`, as `torch.nn.Flatten`.
    Flatten,
    /// `max(x, 0)`.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// The identity when predicting; `rate` is what training dropped.
    Dropout {
        /// Probability of dropping while training.
        rate: f32,
    },
}

impl Layer {
    /// The `torch.nn` module this layer is, with its arguments, as the metadata describes it.
    fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => {
                json!({"kind": "linear", "in_features": in_features, "out_features": out_features})
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                ..
            } => json!({"kind": "conv2d", "in_channels": in_channels, "out_channels": out_channels,
                        "kernel_size": kernel, "stride": stride, "padding": padding}),
            Layer::MaxPool2d { size } => json!({"kind": "maxpool2d", "kernel_size": size}),
            Layer::Flatten => json!({"kind": "flatten"}),
            Layer::Relu => json!({"kind": "relu"}),
            Layer::Tanh => json!({"kind": "tanh"}),
            Layer::Dropout { rate } => json!({"kind": "dropout", "p": rate}),
        }
    }

    /// Its weight and bias with their shapes, for layers that have them.
    pub fn tensors(&self) -> Option<[(Vec<usize>, &[f32]); 2]> {
        match self {
            Layer::Linear {
                in_features,
                out_features,
                weight,
                bias,
            } => Some([
                (vec![*out_features, *in_features], weight),
                (vec![*out_features], bias),
            ]),
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                weight,
                bias,
                ..
            } => Some([
                (vec![*out_channels, *in_channels, *kernel, *kernel], weight),
                (vec![*out_channels], bias),
            ]),
            _ => None,
        }
    }
}

/// One shard of the exported ensemble.
#[derive(Clone, Debug)]
pub struct ShardExport {
    /// The shard.
    pub shard: usize,
    /// Rows its model was trained on.
    pub rows: u64,
    /// Its weight in the aggregation: `1/M` under mean and vote, its share of the members'
    /// rows under weighted (computed as `sisa predict` computes it).
    pub weight: f32,
    /// Lineage hash of its published checkpoint (the last stage's), hex.
    pub lineage: String,
    /// Its model digest, as the manifest records it.
    pub model_digest: String,
    /// Its input preprocessing: `clamp((x - mean) · scale, -clip, clip)`.
    pub norm: Norm,
    /// Its layers in PyTorch's layout.
    pub layers: Vec<Layer>,
}

/// The published ensemble, ready to encode: every member's preprocessing and layers in
/// PyTorch's layout, the aggregation, and where it all came from.
#[derive(Clone, Debug)]
pub struct EnsembleExport {
    /// The run's name.
    pub run: String,
    /// The ensemble version exported.
    pub version: u64,
    /// How the members are combined.
    pub aggregation: Aggregation,
    /// The run's configuration digest, hex.
    pub config_digest: String,
    /// The backend that trained the models.
    pub backend: Backend,
    /// Shape of an input row (`[features]`, or `[channels, height, width]`).
    pub input: Shape,
    /// Feature column names, in order.
    pub features: Vec<String>,
    /// Number of classes.
    pub classes: usize,
    /// The class names of a run whose labels are names (`None` for integer labels).
    pub class_names: Option<Vec<String>>,
    /// Shards in the run (members are those with rows).
    pub shards_total: usize,
    /// The preprocessing, in words (`feature standardization`, `scale 0.003921569`).
    pub preprocessing: String,
    /// The members: every shard that holds rows, in shard order (as `sisa predict` uses them).
    pub members: Vec<ShardExport>,
}

/// One member as the metadata lists it.
#[derive(Serialize)]
struct MemberMeta<'a> {
    shard: usize,
    rows: u64,
    weight: f32,
    lineage: &'a str,
    model_digest: &'a str,
}

impl EnsembleExport {
    /// The published ensemble of `run` (loaded as `ensemble`) combined by `aggregation`.
    /// Every member's model digest is recomputed and must be the manifest's.
    pub fn new(run: &Run, ensemble: &Ensemble, aggregation: Aggregation) -> Result<EnsembleExport> {
        let arch = run.config.architecture()?;
        let total: u64 = ensemble.members.iter().map(|m| m.rows).sum();
        let count = ensemble.members.len();
        let mut members = Vec::with_capacity(count);
        for m in &ensemble.members {
            let entry = &run.manifest.shards[m.shard];
            let last = entry.stages.last().ok_or_else(|| {
                Error::corrupt(
                    run.dir.path(RunFile::Manifest(run.manifest.version)),
                    format!("shard {} has no stages", m.shard),
                )
            })?;
            let path = run.dir.path(RunFile::Checkpoint(m.shard, &last.lineage));
            if model_digest(&m.norm, m.model.as_ref()) != entry.model_digest {
                return Err(Error::corrupt(
                    &path,
                    "its model digest does not match the manifest's",
                ));
            }
            // The weights `aggregate` uses, computed the same way.
            let weight = match aggregation {
                Aggregation::Weighted if total > 0 => (m.rows as f64 / total as f64) as f32,
                _ => 1.0 / count as f32,
            };
            members.push(ShardExport {
                shard: m.shard,
                rows: m.rows,
                weight,
                lineage: last.lineage.to_hex(),
                model_digest: entry.model_digest.clone(),
                norm: m.norm.clone(),
                layers: torch_layers(&path, &arch, m.model.backend(), &m.model.parameters())?,
            });
        }
        Ok(EnsembleExport {
            run: run.config.name.clone(),
            version: ensemble.version,
            aggregation,
            config_digest: hex::encode(run.config_digest),
            backend: run.config.backend,
            input: arch.input,
            features: run.config.features.clone(),
            classes: run.config.classes,
            class_names: run.config.class_names.clone(),
            shards_total: run.config.shards,
            preprocessing: run.config.model.preprocessing(),
            members,
        })
    }

    /// Number of features of an input row.
    pub fn feature_count(&self) -> usize {
        self.input.len()
    }

    /// Trainable values over every member (weights and biases, not preprocessing).
    pub fn parameters(&self) -> usize {
        self.members
            .iter()
            .flat_map(|m| &m.layers)
            .filter_map(Layer::tensors)
            .map(|[(_, w), (_, b)]| w.len() + b.len())
            .sum()
    }

    /// The metadata both formats carry, as (key, value) pairs in a fixed order; values that
    /// are not plain text are JSON.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let input = match self.input {
            Shape::Flat(n) => vec![n],
            Shape::Image(d) => d.to_vec(),
        };
        let members: Vec<MemberMeta<'_>> = self
            .members
            .iter()
            .map(|m| MemberMeta {
                shard: m.shard,
                rows: m.rows,
                weight: m.weight,
                lineage: &m.lineage,
                model_digest: &m.model_digest,
            })
            .collect();
        // Every member has the run's architecture: the first one's describes them all.
        let mut layers: Vec<serde_json::Value> = self
            .members
            .first()
            .map(|m| m.layers.iter().map(Layer::describe).collect())
            .unwrap_or_default();
        layers.push(serde_json::json!({"kind": "softmax", "dim": 1}));
        [
            ("sisa.format", FORMAT.to_string()),
            ("sisa.run", self.run.clone()),
            ("sisa.version", self.version.to_string()),
            ("sisa.aggregation", self.aggregation.name().to_string()),
            ("sisa.config_digest", self.config_digest.clone()),
            ("sisa.backend", self.backend.name().to_string()),
            ("sisa.classes", self.classes.to_string()),
            ("sisa.input_shape", json(&input)),
            ("sisa.preprocessing", self.preprocessing.clone()),
            ("sisa.layers", json(&layers)),
            ("sisa.shards_total", self.shards_total.to_string()),
            ("sisa.shards", json(&members)),
            ("sisa.feature_names", json(&self.features)),
            (
                "sisa.created_by",
                format!("sisa {}", env!("CARGO_PKG_VERSION")),
            ),
        ]
        .into_iter()
        .chain(
            self.class_names
                .as_ref()
                .map(|names| ("sisa.class_names", json(names))),
        )
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Compact JSON text of plain data.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// The layers of a model of `arch` trained by `backend` with `params` (as
/// [`crate::model::ShardModel::parameters`] names them: `l<k>.w`, `l<k>.b`), in PyTorch's
/// layout. `path` is the checkpoint they came from, named when a tensor is missing.
pub fn torch_layers(
    path: &Path,
    arch: &Architecture,
    backend: Backend,
    params: &[Tensor],
) -> Result<Vec<Layer>> {
    let tensor = |name: String, shape: &[usize]| -> Result<&[f32]> {
        match params.iter().find(|t| t.name == name) {
            Some(t) if t.shape == shape => Ok(&t.data),
            Some(t) => Err(Error::corrupt(
                path,
                format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape),
            )),
            None => Err(Error::corrupt(path, format!("missing tensor {name}"))),
        }
    };
    // The image behind the current flat values, as the dense backend orders them
    // (channels-last: value `pixel · c + channel`).
    let mut image = match arch.input {
        Shape::Image(d) => Some(d),
        Shape::Flat(_) => None,
    };
    let mut k = 0;
    let mut out = Vec::with_capacity(arch.layers.len());
    for layer in &arch.layers {
        let converted = match &layer.spec {
            LayerSpec::Dense { units } => {
                let (n_in, n_out) = (layer.input.len(), *units);
                let w = tensor(format!("l{k}.w"), &[n_in, n_out])?;
                let bias = tensor(format!("l{k}.b"), &[n_out])?.to_vec();
                k += 1;
                // Row `r` of the stored `[in, out]` weights acts on input value `r`; in the
                // dense backend a flattened image's value `pixel · c + channel` is PyTorch's
                // `channel · h · w + pixel`.
                let source_row = |col: usize| match (backend, image) {
                    (Backend::Dense, Some([c, h, w])) => {
                        let (ch, p) = (col / (h * w), col % (h * w));
                        p * c + ch
                    }
                    _ => col,
                };
                let mut weight = vec![0f32; n_in * n_out];
                for col in 0..n_in {
                    let r = source_row(col);
                    for o in 0..n_out {
                        weight[o * n_in + col] = w[r * n_out + o];
                    }
                }
                image = None;
                Layer::Linear {
                    in_features: n_in,
                    out_features: n_out,
                    weight,
                    bias,
                }
            }
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                padding,
            } => {
                let Shape::Image([c, _, _]) = layer.input else {
                    return Err(Error::corrupt(path, "a convolution without an image input"));
                };
                let (f, kk) = (*filters, *kernel);
                let weight = match backend {
                    Backend::Dense => {
                        let w = tensor(format!("l{k}.w"), &[f, kk, kk, c])?;
                        let mut t = vec![0f32; w.len()];
                        for o in 0..f {
                            for ch in 0..c {
                                for ky in 0..kk {
                                    for kx in 0..kk {
                                        t[((o * c + ch) * kk + ky) * kk + kx] =
                                            w[((o * kk + ky) * kk + kx) * c + ch];
                                    }
                                }
                            }
                        }
                        t
                    }
                    Backend::Candle => tensor(format!("l{k}.w"), &[f, c, kk, kk])?.to_vec(),
                };
                let bias = tensor(format!("l{k}.b"), &[f])?.to_vec();
                k += 1;
                image = match layer.output {
                    Shape::Image(d) => Some(d),
                    Shape::Flat(_) => None,
                };
                Layer::Conv2d {
                    in_channels: c,
                    out_channels: f,
                    kernel: kk,
                    stride: *stride,
                    padding: *padding,
                    weight,
                    bias,
                }
            }
            LayerSpec::Maxpool2d { size } => {
                if let Shape::Image(d) = layer.output {
                    image = Some(d);
                }
                Layer::MaxPool2d { size: *size }
            }
            LayerSpec::Flatten => Layer::Flatten,
            LayerSpec::Relu => Layer::Relu,
            LayerSpec::Tanh => Layer::Tanh,
            LayerSpec::Dropout { rate } => Layer::Dropout { rate: *rate },
        };
        out.push(converted);
    }
    Ok(out)
}

/// Refuse a run with no published version before opening it, with a message that says so
/// (opening would only name the missing `CURRENT`).
pub fn require_published(root: &Path) -> Result<()> {
    let dir = RunDir::new(root);
    if dir.path(RunFile::Config).exists() && !dir.path(RunFile::Current).exists() {
        return Err(Error::run(
            root,
            "no published version (CURRENT is missing): there is no ensemble to export",
        ));
    }
    Ok(())
}

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// The format.
    pub format: &'static str,
    /// The file written.
    pub out: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The ensemble version exported.
    pub version: u64,
    /// The aggregation the file computes (ONNX) or records (safetensors).
    pub aggregate: &'static str,
    /// The members exported (shards with rows).
    pub shards: Vec<usize>,
    /// Trainable values over every member.
    pub parameters: usize,
}

/// Encode `export` as `format` and write it to `out` atomically (temp file, fsync, rename,
/// fsync of the directory). An existing `out` is refused unless `replace` is set; then it
/// is replaced in one rename, so a reader sees the old file or the new one, never a part.
pub fn write(
    export: &EnsembleExport,
    format: Format,
    out: &Path,
    replace: bool,
) -> Result<ExportReport> {
    if out.is_dir() {
        return Err(Error::Export {
            path: out.to_path_buf(),
            message: "is a directory; name the file to write".into(),
        });
    }
    if !replace && std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::Export {
            path: out.to_path_buf(),
            message: "already exists; pass --force to replace it".into(),
        });
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::Export {
                path: out.to_path_buf(),
                message: format!("its directory {} does not exist", parent.display()),
            });
        }
    }
    let bytes = match format {
        Format::Onnx => onnx::encode(export, out)?,
        Format::Safetensors => safetensors::encode(export),
    };
    durable::write_atomic(out, &bytes, "export")?;
    Ok(ExportReport {
        format: format.name(),
        out: out.display().to_string(),
        bytes: bytes.len() as u64,
        version: export.version,
        aggregate: export.aggregation.name(),
        shards: export.members.iter().map(|m| m.shard).collect(),
        parameters: export.parameters(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, ModelConfig, ModelSpec, OptimizerKind, ShardModel};

    fn config(preset: &str, features: usize, backend: Backend) -> ModelConfig {
        let spec: ModelSpec = toml::from_str(&format!(
            "name = \"t\"\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 8\nepochs = 2\n{preset}\n"
        ))
        .unwrap();
        ModelConfig {
            arch: spec.architecture(features, 3).unwrap(),
            backend,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 8,
            init_seed: 5,
            dropout_seed: 6,
            device: Default::default(),
        }
    }

    /// A plain forward pass over the PyTorch-layout layers (NCHW, naive loops): what
    /// `torch.nn.Sequential` of the same modules computes, written independently of both
    /// backends.
    fn torch_forward(input: Shape, layers: &[Layer], x: &[f32]) -> Vec<f32> {
        let (mut h, mut dims) = match input {
            Shape::Image(d) => (x.to_vec(), d.to_vec()),
            Shape::Flat(n) => (x.to_vec(), vec![n]),
        };
        for l in layers {
            match l {
                Layer::Linear {
                    in_features,
                    out_features,
                    weight,
                    bias,
                } => {
                    h = (0..*out_features)
                        .map(|o| {
                            bias[o]
                                + (0..*in_features)
                                    .map(|i| weight[o * in_features + i] * h[i])
                                    .sum::<f32>()
                        })
                        .collect();
                    dims = vec![*out_features];
                }
                Layer::Conv2d {
                    in_channels: c,
                    out_channels: f,
                    kernel: k,
                    stride: s,
                    padding: p,
                    weight,
                    bias,
                } => {
                    let (hh, ww) = (dims[1] as isize, dims[2] as isize);
                    let oh = (dims[1] + 2 * p - k) / s + 1;
                    let ow = (dims[2] + 2 * p - k) / s + 1;
                    let mut out = vec![0f32; f * oh * ow];
                    for o in 0..*f {
                        for y in 0..oh {
                            for xo in 0..ow {
                                let mut acc = bias[o];
                                for ch in 0..*c {
                                    for ky in 0..*k {
                                        for kx in 0..*k {
                                            let iy = (y * s + ky) as isize - *p as isize;
                                            let ix = (xo * s + kx) as isize - *p as isize;
                                            if iy < 0 || ix < 0 || iy >= hh || ix >= ww {
                                                continue;
                                            }
                                            let v = h[(ch * dims[1] + iy as usize) * dims[2]
                                                + ix as usize];
                                            acc += weight[((o * c + ch) * k + ky) * k + kx] * v;
                                        }
                                    }
                                }
                                out[(o * oh + y) * ow + xo] = acc;
                            }
                        }
                    }
                    h = out;
                    dims = vec![*f, oh, ow];
                }
                Layer::MaxPool2d { size } => {
                    let (c, oh, ow) = (dims[0], dims[1] / size, dims[2] / size);
                    let mut out = vec![f32::NEG_INFINITY; c * oh * ow];
                    for ch in 0..c {
                        for y in 0..oh {
                            for xo in 0..ow {
                                for ky in 0..*size {
                                    for kx in 0..*size {
                                        let v = h[(ch * dims[1] + y * size + ky) * dims[2]
                                            + xo * size
                                            + kx];
                                        let o = &mut out[(ch * oh + y) * ow + xo];
                                        *o = o.max(v);
                                    }
                                }
                            }
                        }
                    }
                    h = out;
                    dims = vec![c, oh, ow];
                }
                Layer::Flatten => dims = vec![dims.iter().product()],
                Layer::Relu => h.iter_mut().for_each(|v| *v = v.max(0.0)),
                Layer::Tanh => h.iter_mut().for_each(|v| *v = v.tanh()),
                Layer::Dropout { .. } => {}
            }
        }
        let max = h.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = h.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    /// Every layer kind on an image of three channels (so the channels-last order of the
    /// dense backend matters), on both backends: the PyTorch-layout layers compute what the
    /// model predicts.
    #[test]
    fn torch_layout_computes_what_each_backend_predicts() {
        // 3×10×9 → conv → 4×10×9 → pool → 4×5×4 → conv (stride 2, a row left unread) →
        // 2×2×2 → flatten: a flattened image of several channels and pixels.
        let preset = r#"input = [3, 10, 9]
layers = [
  { kind = "conv2d", filters = 4, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "conv2d", filters = 2, kernel = 2, stride = 2 },
  { kind = "tanh" },
  { kind = "flatten" },
  { kind = "dropout", rate = 0.5 },
  { kind = "dense", units = 7 },
  { kind = "relu" },
]"#;
        let d = 3 * 10 * 9;
        let x: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        for backend in [Backend::Dense, Backend::Candle] {
            let cfg = config(preset, d, backend);
            let mut m: Box<dyn ShardModel> = model::build(&cfg).unwrap();
            // A few steps, so the biases are not zero.
            for _ in 0..3 {
                m.train_step(&x, &[0, 2], 2).unwrap();
            }
            let layers = torch_layers(Path::new("c"), &cfg.arch, backend, &m.parameters()).unwrap();
            assert_eq!(layers.len(), cfg.arch.layers.len());
            let want = m.predict(&x, 2);
            for r in 0..2 {
                let got = torch_forward(cfg.arch.input, &layers, &x[r * d..(r + 1) * d]);
                for (g, w) in got.iter().zip(&want[r * 3..(r + 1) * 3]) {
                    assert!((g - w).abs() < 1e-5, "{backend:?}: {got:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn flat_model_and_refusals() {
        let cfg = config("hidden = [4]\nactivation = \"tanh\"", 5, Backend::Dense);
        let m = model::build(&cfg).unwrap();
        let layers =
            torch_layers(Path::new("c"), &cfg.arch, Backend::Dense, &m.parameters()).unwrap();
        let Layer::Linear { weight, .. } = &layers[0] else {
            panic!("a linear layer first: {layers:?}")
        };
        // [out, in] is the transpose of the stored [in, out].
        let stored = &m.parameters()[0].data;
        assert_eq!(weight[5], stored[1], "weight[1][0] is stored[0][1]");
        let err = torch_layers(Path::new("c"), &cfg.arch, Backend::Dense, &[]).unwrap_err();
        assert!(err.to_string().contains("missing tensor l0.w"), "{err}");
        assert_eq!(Format::from_path(Path::new("a/m.onnx")), Some(Format::Onnx));
        assert_eq!("safetensors".parse::<Format>(), Ok(Format::Safetensors));
        assert!("tflite"
            .parse::<Format>()
            .unwrap_err()
            .contains("onnx or safetensors"));
    }
}
