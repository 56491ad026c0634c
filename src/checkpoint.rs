//! Checkpoints: a shard's weights, standardization and optimizer state after a stage.
//!
//! Saved as safetensors, named by the stage's [`Lineage`], with the lineage, shard, stage and
//! step count in the metadata. Loading checks the format, the lineage it was asked for and every
//! tensor's shape, so a checkpoint trained on other data (a restored backup, a file copied in by
//! hand) is refused rather than continued from.

use crate::error::{Error, Result};
use crate::model::{self, Backend, ModelConfig, Norm, ShardModel};
use crate::plan::Lineage;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Format tag written into every checkpoint's metadata. Version 2 names its backend.
pub const FORMAT: &str = "sisa-checkpoint/2";

/// The checkpoint's own metadata.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    backend: Backend,
    lineage: String,
    shard: usize,
    stage: usize,
    step: u64,
    /// The machine kind that trained it ([`crate::machine::kind`]); absent in checkpoints
    /// written before sisa recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    machine: Option<String>,
}

/// Everything needed to continue training a shard, or to serve it.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The shard's standardization (fitted on its first slice).
    pub norm: Norm,
    /// The model and its optimizer state.
    pub model: Box<dyn ShardModel>,
    /// Lineage of the stage this checkpoint ends.
    pub lineage: Lineage,
    /// The shard.
    pub shard: usize,
    /// The stage (0 = untrained).
    pub stage: usize,
    /// The machine kind that trained it ([`crate::machine::kind`]; empty when the file
    /// predates the record). Not part of the model: equal models from two kinds compare equal.
    pub machine: String,
}

impl PartialEq for Checkpoint {
    fn eq(&self, other: &Self) -> bool {
        self.norm == other.norm
            && model::same_model(self.model.as_ref(), other.model.as_ref())
            && self.lineage == other.lineage
            && self.shard == other.shard
            && self.stage == other.stage
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The served model's tensors in a fixed order: the standardization (`norm.mean`,
/// `norm.scale`, `norm.clip`), then the model's parameters.
pub fn model_tensors(norm: &Norm, model: &dyn ShardModel) -> Vec<model::Tensor> {
    let d = norm.mean.len();
    let mut out = vec![
        model::Tensor {
            name: "norm.mean".into(),
            shape: vec![d],
            data: norm.mean.clone(),
        },
        model::Tensor {
            name: "norm.scale".into(),
            shape: vec![d],
            data: norm.scale.clone(),
        },
        model::Tensor {
            name: "norm.clip".into(),
            shape: vec![1],
            data: vec![norm.clip],
        },
    ];
    out.extend(model.parameters());
    out
}

/// SHA-256 over the served model's tensors (name, shape, little-endian bytes): equal digests
/// mean equal weights, whatever file they were read from.
pub fn model_digest(norm: &Norm, model: &dyn ShardModel) -> String {
    let mut h = Sha256::new();
    for t in model_tensors(norm, model) {
        h.update((t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        h.update((t.shape.len() as u64).to_le_bytes());
        for s in &t.shape {
            h.update((*s as u64).to_le_bytes());
        }
        crate::data::rows::update_f32(&mut h, &t.data);
    }
    hex::encode(h.finalize())
}

impl Checkpoint {
    /// The digest of the model this checkpoint holds ([`model_digest`]).
    pub fn digest(&self) -> String {
        model_digest(&self.norm, self.model.as_ref())
    }

    /// The safetensors bytes of this checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> =
            model_tensors(&self.norm, self.model.as_ref())
                .into_iter()
                .chain(self.model.optimizer_state())
                .map(|t| (t.name, t.shape, f32_bytes(&t.data)))
                .collect();
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(n, s, b)| {
                let view = TensorView::new(Dtype::F32, s.clone(), b)
                    .expect("shape and byte length agree by construction");
                (n.clone(), view)
            })
            .collect();
        // One metadata entry: safetensors writes its metadata map in hash order, so several
        // entries would make equal checkpoints differ in bytes.
        let header = Header {
            format: FORMAT.to_string(),
            backend: self.model.backend(),
            lineage: self.lineage.to_hex(),
            shard: self.shard,
            stage: self.stage,
            step: self.model.steps(),
            machine: (!self.machine.is_empty()).then(|| self.machine.clone()),
        };
        let meta: HashMap<String, String> = [(
            "sisa".to_string(),
            serde_json::to_string(&header).expect("plain data serializes"),
        )]
        .into();
        safetensors::tensor::serialize(views, &Some(meta))
            .expect("serializing in-memory f32 tensors cannot fail")
    }

    /// Parse a checkpoint read from `path`, refusing it unless it is the checkpoint of
    /// `lineage` for `shard` of a model built by `config`.
    pub fn decode(
        path: &Path,
        bytes: &[u8],
        config: &ModelConfig,
        shard: usize,
        lineage: &Lineage,
    ) -> Result<Checkpoint> {
        let bad = |m: String| Error::corrupt(path, m);
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let header: Header = meta
            .get("sisa")
            .and_then(|h| serde_json::from_str(h).ok())
            .ok_or_else(|| bad("metadata has no valid 'sisa' header".into()))?;
        if header.format != FORMAT {
            return Err(bad(format!("format is not {FORMAT}")));
        }
        if header.backend != config.backend {
            return Err(bad(format!(
                "trained by the {} backend, and the run uses {}",
                header.backend.name(),
                config.backend.name()
            )));
        }
        let stage = header.stage;
        if header.lineage != lineage.to_hex() || header.shard != shard {
            let found = &header.lineage;
            return Err(Error::Lineage {
                shard,
                stage,
                message: format!(
                    "{} holds lineage {}…, expected {}…: it was trained on other data and is refused",
                    path.display(),
                    found.get(..16).unwrap_or(found),
                    &lineage.to_hex()[..16]
                ),
            });
        }
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| bad(format!("unreadable tensors: {e}")))?;
        let mut read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor {name}")))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.shape()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect())
        };
        let d = config.arch.input.len();
        let norm = Norm {
            mean: read("norm.mean", &[d])?,
            scale: read("norm.scale", &[d])?,
            clip: read("norm.clip", &[1])?[0],
        };
        let mut model = model::build(config)?;
        model.restore(&mut read, header.step)?;
        Ok(Checkpoint {
            norm,
            model,
            lineage: *lineage,
            shard,
            stage,
            machine: header.machine.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelSpec, OptimizerKind};

    pub(crate) fn config(hidden: Vec<usize>, features: usize, classes: usize) -> ModelConfig {
        let spec: ModelSpec = toml::from_str(&format!(
            "name = \"t\"\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 8\nepochs = 2\nhidden = {hidden:?}\n"
        ))
        .unwrap();
        ModelConfig {
            arch: spec.architecture(features, classes).unwrap(),
            backend: Backend::Dense,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 8,
            init_seed: 1,
            dropout_seed: 2,
            device: Default::default(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let cfg = config(vec![4], 3, 2);
        let mut model = model::build(&cfg).unwrap();
        model
            .train_step(&[0.5, -1.0, 2.0, 1.0, 0.0, -0.5], &[1, 0], 2)
            .unwrap();
        let lin = Lineage([7; 32]);
        let ck = Checkpoint {
            norm: Norm::identity(3),
            model,
            lineage: lin,
            shard: 2,
            stage: 3,
            machine: crate::machine::kind().to_string(),
        };
        let bytes = ck.encode();
        let back = Checkpoint::decode(Path::new("c"), &bytes, &cfg, 2, &lin).unwrap();
        assert_eq!(back, ck);
        assert_eq!(back.model.steps(), 1);
        assert_eq!(back.machine, crate::machine::kind());
        assert_eq!(back.digest(), ck.digest());
        let err =
            Checkpoint::decode(Path::new("c"), &bytes, &cfg, 2, &Lineage([8; 32])).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(
            Checkpoint::decode(Path::new("c"), &bytes, &config(vec![5], 3, 2), 2, &lin).is_err()
        );
        let e = Checkpoint::decode(Path::new("c"), &bytes[..bytes.len() / 2], &cfg, 2, &lin);
        assert!(e.is_err());
    }
}
