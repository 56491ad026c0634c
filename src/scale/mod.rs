//! Scale-out: the job files that train a plan's shards on a cluster scheduler (Slurm job
//! arrays, Kubernetes Indexed Jobs), one shard per task, and then publish.

pub mod k8s;
pub mod shards;
pub mod slurm;
