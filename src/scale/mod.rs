//! Scale-out: the steps a cluster scheduler runs on a shared filesystem (a plan, one task per
//! shard, one publish; the plan and the tasks live in [`crate::run::plan`] and
//! [`crate::train::task`]), `sisa publish`, and the job files that run them: Slurm job arrays
//! and Kubernetes Indexed Jobs.

pub mod k8s;
pub mod publish;
pub mod shards;
pub mod slurm;
