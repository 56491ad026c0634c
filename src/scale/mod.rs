//! Scale-out: the steps a cluster scheduler runs (plan, one task per shard, publish) and the
//! job files that run them on Slurm job arrays and Kubernetes Indexed Jobs.

pub mod publish;
pub mod shards;
