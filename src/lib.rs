//! `sisa`: exact machine unlearning with SISA training (Sharded, Isolated, Sliced, Aggregated;
//! Bourtoule et al., IEEE S&P 2021).
//!
//! The training data is split into isolated shards by user, each with its own model and a
//! checkpoint after every slice; forgetting a user retrains only that user's shard, from the
//! last checkpoint that never saw them, and the result is bitwise identical to training from
//! scratch without the user.
//!
//! - [`error`]: one error type that names the file, line, column, shard or request at fault.
//! - [`data`]: CSV and IDX ingest with validation, class labels (integers or names) to class
//!   indices, seeded user rules for data without users, the checksummed row store, HMAC user
//!   keys.
//! - [`rng`]: SplitMix64, the one seeded random number generator.
//! - [`plan`]: pure functions for shard and slice assignment, stage epochs and lineage hashes.
//! - [`model`]: model presets and the dense networks they describe, with hand-derived gradients.
//! - [`train`]: deterministic, seeded, shard-parallel training with our own optimizers.
//! - [`checkpoint`]: safetensors checkpoints named and checked by lineage.
//! - [`run`]: the run directory: layout, `run.json`, manifests, durable atomic writes.
//! - [`machine`]: the machine kind a model's bits depend on, recorded with every checkpoint.
//! - [`ensemble`]: aggregation of shard models by posterior mean or majority vote.
//! - [`metrics`]: what `sisa eval` reports: log-loss, per-class precision, recall and F1,
//!   macro averages, the confusion matrix.
//! - [`export`]: the served ensemble as one ONNX graph, or as PyTorch-layout safetensors with
//!   the same metadata (version, aggregation, config digest, each shard's lineage).
//! - [`unlearn`]: the hash-chained ledger, planning, execution, receipts and recovery.
//! - [`serve`]: the Open Inference Protocol (v2) server: atomic hot swap of published versions,
//!   deletion requests over an authenticated endpoint, shards under deletion left out of the vote.
//! - [`scale`]: scale-out on a shared filesystem: `sisa publish` of a plan whose shards tasks
//!   trained on any machine, and the job files that run those tasks: a Slurm `sbatch` script
//!   (a job array, one shard per task, then a dependent publish job) and Kubernetes manifests
//!   (an Indexed Job and a publish Job that waits for it).
//! - [`verify`]: the certificate: retrain from scratch and compare bitwise with what is published.
//! - [`audit`]: membership inference by loss threshold: AUC, TPR at fixed FPR, bootstrap and
//!   never-seen (null) intervals; tells whether forgotten rows look like rows never trained on.
//! - [`bench`](mod@bench): unlearning vs retraining from scratch, accuracy vs shards, the SISA formulas
//!   beside the measurements, training throughput vs peak; results.json, Markdown and plots.
#![warn(missing_docs)]

pub mod audit;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod ensemble;
pub mod error;
pub mod export;
pub mod machine;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod rng;
pub mod run;
pub mod scale;
pub mod serve;
pub mod train;
pub mod unlearn;
pub mod verify;

pub use error::{Error, Result};
