//! The safetensors export: every member's preprocessing and layers in PyTorch's layout, named
//! so that each shard loads into a plain `torch.nn.Sequential`.
//!
//! Tensor names (all `F32`, little-endian, row-major):
//!
//! | name | shape | what |
//! |---|---|---|
//! | `shard.{k}.norm.mean` | `[features]` | subtracted from each input feature |
//! | `shard.{k}.norm.scale` | `[features]` | multiplies it after (a reciprocal deviation, or the preset's `scale`) |
//! | `shard.{k}.norm.clip` | `[1]` | the result is clamped to ±clip (`inf`: not clamped) |
//! | `shard.{k}.{i}.weight` | linear `[out, in]`, conv `[out_c, in_c, kh, kw]` | layer `i` of the architecture |
//! | `shard.{k}.{i}.bias` | `[out]` | |
//!
//! `i` counts every layer of the architecture (activations, pooling, flatten and dropout
//! too), so the tensors of shard k without the `shard.{k}.` prefix are the `state_dict` of a
//! `torch.nn.Sequential` with one module per layer of `sisa.layers` in the metadata. The header's
//! `__metadata__` holds [`EnsembleExport::metadata`]. The file is written by hand, not through
//! the safetensors crate, so that its bytes are a function of the ensemble alone (the crate
//! writes its metadata map in hash order); the crate reads it back in the tests.

use super::EnsembleExport;

/// The tensors of the export, in file order: per member, its preprocessing, then its layers.
pub fn tensors(export: &EnsembleExport) -> Vec<(String, Vec<usize>, &[f32])> {
    let mut out = Vec::new();
    for m in &export.members {
        let k = m.shard;
        let d = m.norm.mean.len();
        out.push((format!("shard.{k}.norm.mean"), vec![d], &m.norm.mean[..]));
        out.push((format!("shard.{k}.norm.scale"), vec![d], &m.norm.scale[..]));
        out.push((
            format!("shard.{k}.norm.clip"),
            vec![1],
            std::slice::from_ref(&m.norm.clip),
        ));
        for (i, layer) in m.layers.iter().enumerate() {
            if let Some([(ws, w), (bs, b)]) = layer.tensors() {
                out.push((format!("shard.{k}.{i}.weight"), ws, w));
                out.push((format!("shard.{k}.{i}.bias"), bs, b));
            }
        }
    }
    out
}

/// The safetensors bytes of `export`: the 8-byte little-endian header length, the JSON
/// header (metadata first, then each tensor's dtype, shape and byte range), padded with
/// spaces to a multiple of 8, then the tensors' bytes back to back.
pub fn encode(export: &EnsembleExport) -> Vec<u8> {
    let tensors = tensors(export);
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut header = String::from("{\"__metadata__\":{");
    for (i, (k, v)) in export.metadata().iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!("{}:{}", quote(k), quote(v)));
    }
    header.push('}');
    let mut offset = 0usize;
    for (name, shape, data) in &tensors {
        let end = offset + 4 * data.len();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            quote(name),
            serde_json::to_string(shape).expect("a shape serializes"),
        ));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, data) in &tensors {
        for v in data.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}
