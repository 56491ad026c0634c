//! Checkpoints: a shard's weights, standardization and optimizer state after a stage.
//!
//! Saved as safetensors, named by the stage's [`Lineage`], with the lineage, shard, stage and
//! step count in the metadata. Loading checks the format, the lineage it was asked for and every
//! tensor's shape, so a checkpoint trained on other data (a restored backup, a file copied in by
//! hand) is refused rather than continued from.

use crate::error::{Error, Result};
use crate::model::{Activation, Dense, ModelSpec, Network, Norm};
use crate::plan::Lineage;
use crate::train::optim::Optimizer;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Format tag written into every checkpoint's metadata.
pub const FORMAT: &str = "sisa-checkpoint/1";

/// The checkpoint's own metadata.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    lineage: String,
    shard: usize,
    stage: usize,
    step: u64,
}

/// Everything needed to continue training a shard, or to serve it.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The model.
    pub net: Network,
    /// The optimizer and its state.
    pub opt: Optimizer,
    /// Lineage of the stage this checkpoint ends.
    pub lineage: Lineage,
    /// The shard.
    pub shard: usize,
    /// The stage (0 = untrained).
    pub stage: usize,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The model's tensors in a fixed order: `(name, shape, values)`.
pub fn model_tensors(net: &Network) -> Vec<(String, Vec<usize>, &[f32])> {
    let d = net.inputs();
    let mut out: Vec<(String, Vec<usize>, &[f32])> = vec![
        ("norm.mean".into(), vec![d], &net.norm.mean),
        ("norm.scale".into(), vec![d], &net.norm.scale),
        (
            "norm.clip".into(),
            vec![1],
            std::slice::from_ref(&net.norm.clip),
        ),
    ];
    for (i, l) in net.layers.iter().enumerate() {
        out.push((format!("l{i}.w"), vec![l.inputs, l.outputs], &l.w));
        out.push((format!("l{i}.b"), vec![l.outputs], &l.b));
    }
    out
}

/// SHA-256 over the model's tensors (name, shape, little-endian bytes): equal digests mean
/// equal weights, whatever file they were read from.
pub fn model_digest(net: &Network) -> String {
    let mut h = Sha256::new();
    for (name, shape, values) in model_tensors(net) {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for s in shape {
            h.update((s as u64).to_le_bytes());
        }
        crate::data::rows::update_f32(&mut h, values);
    }
    hex::encode(h.finalize())
}

impl Checkpoint {
    /// The safetensors bytes of this checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = model_tensors(&self.net)
            .into_iter()
            .map(|(n, s, v)| (n, s, f32_bytes(v)))
            .collect();
        let names = Optimizer::buffer_names(self.opt.kind, self.net.layers.len());
        for (name, buf) in names.into_iter().zip(&self.opt.buffers) {
            owned.push((name, vec![buf.len()], f32_bytes(buf)));
        }
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
            lineage: self.lineage.to_hex(),
            shard: self.shard,
            stage: self.stage,
            step: self.opt.step,
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
    /// `lineage` for `shard` with the architecture of `spec` on `dims`.
    pub fn decode(
        path: &Path,
        bytes: &[u8],
        spec: &ModelSpec,
        dims: &[usize],
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
        let step = header.step;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| bad(format!("unreadable tensors: {e}")))?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
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
        let d = dims[0];
        let clip = read("norm.clip", &[1])?[0];
        let norm = Norm {
            mean: read("norm.mean", &[d])?,
            scale: read("norm.scale", &[d])?,
            clip,
        };
        let mut layers = Vec::new();
        for (i, w) in dims.windows(2).enumerate() {
            layers.push(Dense {
                inputs: w[0],
                outputs: w[1],
                w: read(&format!("l{i}.w"), &[w[0], w[1]])?,
                b: read(&format!("l{i}.b"), &[w[1]])?,
            });
        }
        let activation: Activation = spec.activation;
        let net = Network {
            norm,
            layers,
            activation,
        };
        let mut opt = Optimizer::new(
            spec.optimizer,
            spec.lr,
            spec.momentum,
            spec.weight_decay,
            &net,
        );
        opt.step = step;
        let names = Optimizer::buffer_names(spec.optimizer, net.layers.len());
        for (name, buf) in names.iter().zip(opt.buffers.iter_mut()) {
            *buf = read(name, &[buf.len()])?;
        }
        Ok(Checkpoint {
            net,
            opt,
            lineage: *lineage,
            shard,
            stage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OptimizerKind;

    fn spec() -> ModelSpec {
        ModelSpec {
            name: "t".into(),
            description: String::new(),
            hidden: vec![4],
            activation: Activation::Tanh,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 8,
            epochs: 2,
            standardize: true,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = spec();
        let dims = [3, 4, 2];
        let net = Network::init(&dims, s.activation, Norm::identity(3), 1);
        let mut opt = Optimizer::new(s.optimizer, s.lr, s.momentum, s.weight_decay, &net);
        opt.step = 17;
        opt.buffers[0][1] = 0.5;
        let lin = Lineage([7; 32]);
        let ck = Checkpoint {
            net,
            opt,
            lineage: lin,
            shard: 2,
            stage: 3,
        };
        let bytes = ck.encode();
        let back = Checkpoint::decode(Path::new("c"), &bytes, &s, &dims, 2, &lin).unwrap();
        assert_eq!(back, ck);
        assert_eq!(model_digest(&back.net), model_digest(&ck.net));
        let err = Checkpoint::decode(Path::new("c"), &bytes, &s, &dims, 2, &Lineage([8; 32]))
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(Checkpoint::decode(Path::new("c"), &bytes, &s, &[3, 5, 2], 2, &lin).is_err());
        assert!(Checkpoint::decode(
            Path::new("c"),
            &bytes[..bytes.len() / 2],
            &s,
            &dims,
            2,
            &lin
        )
        .is_err());
    }
}
