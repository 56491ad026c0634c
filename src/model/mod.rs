//! Architectures: presets read from `models/*.toml`, and the dense networks they describe.
//!
//! A [`ModelSpec`] names the layers, activation, optimizer, learning rate, batch size and
//! epochs; a [`Network`] is its weights with the standardization learned from its shard.

pub mod net;
pub mod simd;
pub mod spec;

pub use net::{Dense, Network, Norm, Workspace};
pub use spec::{Activation, ModelSpec, OptimizerKind};
