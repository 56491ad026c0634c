//! The plan: a version that shard tasks train and `sisa publish` publishes.
//!
//! `sisa train --plan-only` and `sisa unlearn --no-retrain` do everything but the training:
//! they place or erase the rows and write `plan.json`, which holds the manifest of the version
//! to publish, complete except for the stages to train (their lineages are known from the
//! data; their checkpoint digests are empty), the shards to train and from which stage, and the
//! published version it builds on. Shard tasks (`sisa train-shard`, one per shard, on any
//! machine that mounts the run) train those stages and record what they wrote in
//! `tasks/shard-<k>.json`; `sisa publish` checks every result against the plan and publishes.
//!
//! A plan is named by its id, the SHA-256 of its content: a second `--no-retrain` replaces the
//! plan with one that also forgets its users, and a task result whose lineages no longer match
//! is from an older plan and refused. A plan whose base is no longer the published version is
//! stale; recovery discards it and plans its deferred requests again from the ledger.

use crate::error::{Error, IoContext, Result};
use crate::run::{durable, Manifest, RunDir, RunFile};
use crate::unlearn::RequestId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Schema tag of `plan.json`.
pub const PLAN_FORMAT: &str = "sisa-plan/1";

/// The published version a plan builds on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// Its ensemble version.
    pub version: u64,
    /// The text of `CURRENT` that named it (names the manifest and its digest).
    pub current: String,
}

/// A shard the plan trains, from which stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The shard.
    pub shard: usize,
    /// First stage to train (1-based; 1 = from scratch).
    pub first_stage: usize,
}

/// The version shard tasks train (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Schema tag, [`PLAN_FORMAT`].
    pub format: String,
    /// SHA-256 (hex) of the plan's content with this field empty.
    pub id: String,
    /// The published version it builds on; `None` for a new run (`train --plan-only`).
    pub base: Option<Base>,
    /// Deletion requests it applies (deferred with `--no-retrain`), in order.
    pub requests: Vec<RequestId>,
    /// Shards to train, in shard order.
    pub pending: Vec<Pending>,
    /// The version to publish. The stages to train have empty `file_digest`s, and their
    /// shards an empty `model_digest` and `machine`, until publish fills them in.
    pub manifest: Manifest,
}

impl Plan {
    /// A plan that builds on nothing yet: `manifest` as the next version, no shard pending.
    pub fn new(base: Option<Base>, manifest: Manifest) -> Plan {
        let mut plan = Plan {
            format: PLAN_FORMAT.to_string(),
            id: String::new(),
            base,
            requests: Vec::new(),
            pending: Vec::new(),
            manifest,
        };
        plan.id = plan.digest();
        plan
    }

    fn digest(&self) -> String {
        let body = Plan {
            id: String::new(),
            ..self.clone()
        };
        hex::encode(Sha256::digest(
            serde_json::to_vec(&body).expect("plain data serializes"),
        ))
    }

    /// The first 16 hex digits of the id, as messages and file labels show it.
    pub fn short_id(&self) -> &str {
        self.id.get(..16).unwrap_or(&self.id)
    }

    /// The pending shards, in order.
    pub fn shards(&self) -> Vec<usize> {
        self.pending.iter().map(|p| p.shard).collect()
    }

    /// Shard `k`'s pending entry, if the plan trains it.
    pub fn pending_of(&self, k: usize) -> Option<Pending> {
        self.pending.iter().copied().find(|p| p.shard == k)
    }

    /// Mark shard `k` to train from `first_stage` (or from an earlier stage it already
    /// trains from).
    pub fn mark(&mut self, k: usize, first_stage: usize) {
        match self.pending.iter_mut().find(|p| p.shard == k) {
            Some(p) => p.first_stage = p.first_stage.min(first_stage),
            None => {
                self.pending.push(Pending {
                    shard: k,
                    first_stage,
                });
                self.pending.sort_by_key(|p| p.shard);
            }
        }
    }

    /// True when the plan builds on the version `CURRENT` names now (`None`: no version yet).
    pub fn builds_on(&self, current: Option<&str>) -> bool {
        self.base.as_ref().map(|b| b.current.as_str()) == current
    }

    /// Read the run's plan, if one is pending; checked (format, id) before use.
    pub fn load(dir: &RunDir) -> Result<Option<Plan>> {
        let path = dir.path(RunFile::Plan);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let plan: Plan = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("not a valid plan: {e}")))?;
        if plan.format != PLAN_FORMAT {
            return Err(Error::corrupt(
                &path,
                format!("format is not {PLAN_FORMAT}"),
            ));
        }
        if plan.digest() != plan.id {
            return Err(Error::corrupt(
                &path,
                "content does not match its id: the plan was modified or damaged",
            ));
        }
        Ok(Some(plan))
    }

    /// Name the plan by its content and write it (atomically, durably).
    pub fn write(&mut self, dir: &RunDir) -> Result<()> {
        self.id = self.digest();
        let bytes = serde_json::to_vec_pretty(self).expect("plain data serializes");
        durable::write_atomic(&dir.path(RunFile::Plan), &bytes, "plan")
    }

    /// Remove the run's plan and every task result (once published, or when stale).
    pub fn remove(dir: &RunDir) -> Result<()> {
        let tasks = dir.path(RunFile::TasksDir);
        match std::fs::read_dir(&tasks) {
            Ok(entries) => {
                let syncs = durable::DirSyncs::new();
                for entry in entries {
                    let entry = entry.at(&tasks)?;
                    if entry.file_type().at(&tasks)?.is_file() {
                        syncs.remove(&entry.path(), "plan.task.remove")?;
                    }
                }
                syncs.sync()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&tasks, e)),
        }
        durable::remove_file(&dir.path(RunFile::Plan), "plan.remove")
    }
}

/// The text of the run's `CURRENT`, or `None` when nothing is published yet.
pub fn current_text(dir: &RunDir) -> Result<Option<String>> {
    let path = dir.path(RunFile::Current);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Schema tag of a task result.
pub const TASK_FORMAT: &str = "sisa-task/1";

/// What one shard task trained for a plan: `tasks/shard-<k>.json`, written by that task alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Schema tag, [`TASK_FORMAT`].
    pub format: String,
    /// Id of the plan it trained for.
    pub plan: String,
    /// The shard.
    pub shard: usize,
    /// First stage of `stages` (the plan's first stage to train, or earlier when the task had
    /// to start further back).
    pub first_stage: usize,
    /// Stages `first_stage..=R`: lineage, epochs, rows and checkpoint file digest.
    pub stages: Vec<crate::run::StageEntry>,
    /// Digest of the final model.
    pub model_digest: String,
    /// The machine kind that trained it.
    pub machine: String,
    /// The host it ran on.
    pub host: String,
    /// Wall time of the task's training, seconds.
    pub seconds: f64,
}

impl TaskResult {
    /// Write this result as shard `shard`'s (atomically, durably).
    pub fn write(&self, dir: &RunDir) -> Result<()> {
        durable::create_dir_all(&dir.path(RunFile::TasksDir))?;
        let bytes = serde_json::to_vec_pretty(self).expect("plain data serializes");
        durable::write_atomic(&dir.path(RunFile::TaskResult(self.shard)), &bytes, "task")
    }

    /// Read shard `k`'s result, if its task has written one.
    pub fn load(dir: &RunDir, k: usize) -> Result<Option<TaskResult>> {
        let path = dir.path(RunFile::TaskResult(k));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let r: TaskResult = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&path, format!("not a valid task result: {e}")))?;
        if r.format != TASK_FORMAT || r.shard != k {
            return Err(Error::corrupt(
                &path,
                format!("not the {TASK_FORMAT} result of shard {k}"),
            ));
        }
        Ok(Some(r))
    }
}

/// Why a shard's result cannot be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// Its task has not written a result.
    Missing,
    /// The result was trained for another plan: its lineages are not this plan's.
    OlderPlan {
        /// The plan the task trained for.
        plan: String,
        /// The first stage whose lineage differs.
        stage: usize,
    },
    /// The result or its checkpoints fail a check (named in the message).
    Damaged(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Missing => write!(f, "no result: its task has not finished"),
            NotReady::OlderPlan { plan, stage } => write!(
                f,
                "trained for an older plan ({}): stage {stage} is not this plan's lineage; run its task again",
                plan.get(..16).unwrap_or(plan)
            ),
            NotReady::Damaged(m) => write!(f, "{m}"),
        }
    }
}

impl Plan {
    /// Shard `k`'s result from `tasks/`, checked against this plan without reading its
    /// checkpoints: it exists, is this shard's, and every stage it trained has the lineage the
    /// plan expects (a task of an older plan trained other rows).
    pub fn result_of(&self, dir: &RunDir, k: usize) -> Result<TaskResult, NotReady> {
        let r = match TaskResult::load(dir, k) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(NotReady::Missing),
            Err(e) => return Err(NotReady::Damaged(e.to_string())),
        };
        let Some(p) = self.pending_of(k) else {
            return Err(NotReady::Damaged(format!(
                "shard {k} is not pending in the plan"
            )));
        };
        let expected = &self.manifest.shards[k].stages;
        let slices = expected.len();
        if r.first_stage == 0
            || r.first_stage > p.first_stage
            || r.stages.len() != slices + 1 - r.first_stage
        {
            return Err(NotReady::OlderPlan {
                plan: r.plan,
                stage: p.first_stage,
            });
        }
        for (i, st) in r.stages.iter().enumerate() {
            let stage = r.first_stage + i;
            if st.lineage != expected[stage - 1].lineage {
                return Err(NotReady::OlderPlan {
                    plan: r.plan,
                    stage,
                });
            }
        }
        Ok(r)
    }
}

/// SHA-256 (hex) of a run file, or why it cannot be read.
pub fn file_digest(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).at(path)?;
    durable::Io::count_read(bytes.len() as u64, 0, 0);
    Ok(hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::manifest::MANIFEST_FORMAT;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            version: 2,
            config_digest: "00".into(),
            applied_request: 0,
            applied_entry: String::new(),
            test: None,
            shards: Vec::new(),
            added_batches: Vec::new(),
        }
    }

    #[test]
    fn a_plan_is_named_by_its_content_and_refused_when_edited() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(Plan::load(&run).unwrap().is_none());
        let base = Base {
            version: 1,
            current: "manifest-000001.json ab\n".into(),
        };
        let mut plan = Plan::new(Some(base.clone()), manifest());
        plan.mark(3, 4);
        plan.mark(1, 2);
        plan.mark(3, 2);
        assert_eq!(plan.shards(), [1, 3]);
        assert_eq!(
            plan.pending_of(3).unwrap().first_stage,
            2,
            "the earlier stage wins"
        );
        plan.write(&run).unwrap();
        let back = Plan::load(&run).unwrap().unwrap();
        assert_eq!(back, plan);
        assert!(back.builds_on(Some(&base.current)));
        assert!(!back.builds_on(None));
        // Another plan has another id; an edited one is refused.
        let mut other = plan.clone();
        other.mark(5, 1);
        other.write(&run).unwrap();
        assert_ne!(other.id, plan.id);
        let path = run.path(RunFile::Plan);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"first_stage\": 1", "\"first_stage\": 3"),
        )
        .unwrap();
        let err = Plan::load(&run).unwrap_err().to_string();
        assert!(err.contains("does not match its id"), "{err}");
        Plan::remove(&run).unwrap();
        assert!(Plan::load(&run).unwrap().is_none());
    }
}
