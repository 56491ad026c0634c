//! `run.json`: everything that determined the run's models, fixed at train time.

use crate::error::{Error, IoContext, Result};
use crate::model::device::DeviceSpec;
use crate::model::{
    Architecture, Augment, Backend, LayerSpec, ModelConfig, ModelSpec, Standardize,
};
use crate::plan::{Rules, ShardBy, SliceBy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Schema tag of `run.json`. Version 2 added the check values (`secret_check`, `check`);
/// version 3 the slice rule and deletion-aware placement (`slice_by`, `risk_shards`,
/// `risk_threshold`), with row files that store each row's slice.
pub const RUN_FORMAT: &str = "sisa-run/3";

/// The key under which `run.json` keeps the SHA-256 of the rest of its contents.
const CHECK_KEY: &str = "check";

/// How shard models are combined into one prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Average the shards' class probabilities (posterior mean). Default.
    Mean,
    /// Each shard votes for its top class; ties go to the smallest label.
    Vote,
    /// Average the shards' class probabilities, each weighted by its share of the training
    /// rows: a shard's weight comes from its own data only, so a deletion changes the
    /// weights of the shards it touches and no others' (relative to each other).
    Weighted,
}

impl Aggregation {
    /// The name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
            Aggregation::Vote => "vote",
            Aggregation::Weighted => "weighted",
        }
    }
}

/// The run's configuration, saved as `run.json`.
///
/// The file also holds `check`, the SHA-256 of every other field ([`RunConfig::to_json`]):
/// any edit or flipped bit in a field that changes behaviour (a feature name, a column, the
/// aggregation) is refused as corruption of `run.json` by every command that opens the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Schema tag, [`RUN_FORMAT`].
    pub format: String,
    /// The run's name (its directory name at train time); the served model's name.
    pub name: String,
    /// The model preset with command-line overrides applied.
    pub model: ModelSpec,
    /// Number of shards S.
    pub shards: usize,
    /// Number of slices R per shard.
    pub slices: usize,
    /// Epochs of each stage (SISA's recalibration of `model.epochs`).
    pub stage_epochs: Vec<u32>,
    /// Seed of every derived random choice.
    pub seed: u64,
    /// How rows are assigned to shards.
    pub shard_by: ShardBy,
    /// How rows are assigned to slices.
    pub slice_by: SliceBy,
    /// Shards set aside for likely requesters (0: none), see [`Rules`].
    pub risk_shards: usize,
    /// The deletion prior at or above which a user is a likely requester, when the run was
    /// trained with a prior file; `None` when it was not (no user is a likely requester).
    pub risk_threshold: Option<f64>,
    /// Feature column names, in order.
    pub features: Vec<String>,
    /// Number of classes (largest label + 1, or `--classes`; the number of names).
    pub classes: usize,
    /// The class names, sorted in byte order, when the training labels were names: the class
    /// index of a name is its position, and every later file's names map through them.
    /// `None` (and absent from `run.json`) when the labels are class indices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// The backend that trains and runs the shard models.
    pub backend: Backend,
    /// The device they train on (`cpu`, absent from `run.json`, or `cuda:N`): part of the
    /// digest when not the CPU, and the device every later retraining uses.
    #[serde(default, skip_serializing_if = "DeviceSpec::is_cpu")]
    pub device: DeviceSpec,
    /// The kind of GPU the run was trained on, when `device` is one (model, compute capability
    /// and SMs, the driver's CUDA and the cuBLAS versions; [`crate::machine::kind_for`]).
    /// Outside the digest, like `cpu`: every checkpoint records its own kind too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// User id column of the input files.
    pub user_column: String,
    /// Label column of the input files.
    pub label_column: String,
    /// The column of the training file that held the deletion priors, if it had one: never a
    /// feature, in any file.
    pub prior_column: Option<String>,
    /// Default aggregation for eval and predict.
    pub aggregation: Aggregation,
    /// CPU model the run was trained on; bitwise comparisons hold on the same kind of CPU.
    pub cpu: String,
    /// `sisa` version that created the run.
    pub created_by: String,
    /// `HMAC-SHA256(secret, "sisa-secret-check")` in hex: a changed or damaged `secret` would
    /// give every user another key (a forgotten user would no longer be recognised), so the
    /// run refuses to open when the secret does not give this value ([`Secret::check_value`]).
    ///
    /// [`Secret::check_value`]: crate::data::Secret::check_value
    pub secret_check: String,
}

/// The part of the configuration that determines trained weights.
#[derive(Serialize)]
struct TrainingIdentity<'a> {
    format: &'a str,
    backend: Backend,
    #[serde(skip_serializing_if = "DeviceSpec::is_cpu")]
    device: DeviceSpec,
    input: Option<[usize; 3]>,
    layers: Vec<LayerSpec>,
    optimizer: crate::model::OptimizerKind,
    lr: u32,
    momentum: u32,
    weight_decay: u32,
    batch_size: usize,
    standardize: bool,
    // Fields added after runs existed are left out while unset, so those runs keep their
    // digests.
    #[serde(skip_serializing_if = "Option::is_none")]
    standardize_global: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    augment: Option<Augment>,
    shards: usize,
    slices: usize,
    stage_epochs: &'a [u32],
    seed: u64,
    shard_by: ShardBy,
    slice_by: SliceBy,
    risk_shards: usize,
    risk_threshold: Option<u64>,
    features: usize,
    classes: usize,
}

impl RunConfig {
    /// SHA-256 of everything that determines the trained weights (floats by their bits); part
    /// of every lineage. Names, columns and the CPU string are left out.
    pub fn digest(&self) -> [u8; 32] {
        // Destructured field by field, so a new field cannot stay out of the digest unnoticed:
        // each is either part of the training identity or named here as outside it.
        let RunConfig {
            format: _,
            name: _,
            model,
            shards,
            slices,
            stage_epochs,
            seed,
            shard_by,
            slice_by,
            risk_shards,
            risk_threshold,
            features,
            classes,
            // The rows hold class indices; the names only say what each index is called.
            class_names: _,
            backend,
            device,
            gpu: _,
            user_column: _,
            label_column: _,
            // Placement is in the rows themselves (their shards and slices).
            prior_column: _,
            aggregation: _,
            cpu: _,
            created_by: _,
            secret_check: _,
        } = self;
        let ModelSpec {
            name: _,
            description: _,
            // Both enter as the layers they stand for.
            hidden: _,
            activation: _,
            input,
            layers: _,
            source: _,
            optimizer,
            lr,
            momentum,
            weight_decay,
            batch_size,
            // Enters through the stage epochs it was recalibrated into.
            epochs: _,
            min_steps: _,
            standardize,
            scale,
            augment,
        } = model;
        let id = TrainingIdentity {
            format: RUN_FORMAT,
            backend: *backend,
            device: *device,
            input: *input,
            layers: model.hidden_layers(),
            optimizer: *optimizer,
            lr: lr.to_bits(),
            momentum: momentum.to_bits(),
            weight_decay: weight_decay.to_bits(),
            batch_size: *batch_size,
            standardize: *standardize == Standardize::Feature,
            standardize_global: (*standardize == Standardize::Global).then_some(true),
            scale: scale.map(f32::to_bits),
            augment: *augment,
            shards: *shards,
            slices: *slices,
            stage_epochs,
            seed: *seed,
            shard_by: *shard_by,
            slice_by: *slice_by,
            risk_shards: *risk_shards,
            risk_threshold: risk_threshold.map(f64::to_bits),
            features: features.len(),
            classes: *classes,
        };
        let json = serde_json::to_vec(&id).expect("serializing plain data cannot fail");
        Sha256::digest(json).into()
    }

    /// The columns of this run's input files: user, label, and the prior column that is not
    /// a feature.
    pub fn columns(&self) -> crate::data::csv::Columns {
        crate::data::csv::Columns {
            user: self.user_column.clone(),
            label: self.label_column.clone(),
            ignore: self.prior_column.clone(),
        }
    }

    /// How this run reads labels: as class indices, or by its class names.
    pub fn labels(&self) -> crate::data::Classes {
        match &self.class_names {
            Some(names) => crate::data::Classes::named(names.clone())
                .expect("class names are checked when run.json is loaded or created"),
            None => crate::data::Classes::indices(self.classes),
        }
    }

    /// The rules that place every row of this run.
    pub fn rules(&self) -> Rules {
        Rules {
            seed: self.seed,
            shards: self.shards,
            slices: self.slices,
            shard_by: self.shard_by,
            slice_by: self.slice_by,
            risk_shards: self.risk_shards,
        }
    }

    /// The model's layers and shapes on this run's features and classes.
    pub fn architecture(&self) -> crate::Result<Architecture> {
        self.model.architecture(self.features.len(), self.classes)
    }

    /// What builds shard `shard`'s model: the architecture, optimizer, backend and the seeds
    /// derived for the shard.
    pub fn model_config(&self, shard: usize) -> crate::Result<ModelConfig> {
        let m = &self.model;
        Ok(ModelConfig {
            arch: self.architecture()?,
            backend: self.backend,
            optimizer: m.optimizer,
            lr: m.lr,
            momentum: m.momentum,
            weight_decay: m.weight_decay,
            batch_size: m.batch_size,
            init_seed: crate::plan::derive_seed(self.seed, shard, 0, 0, "init"),
            dropout_seed: crate::plan::derive_seed(self.seed, shard, 0, 0, "dropout"),
            device: self.device,
        })
    }

    /// SHA-256 of the serialized fields, in hex: the `check` value of `run.json`.
    fn check_value(&self) -> String {
        let json = serde_json::to_vec(self).expect("serializing plain data cannot fail");
        hex::encode(Sha256::digest(json))
    }

    /// The contents of `run.json`: every field, and `check` over them.
    pub fn to_json(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("serializing plain data cannot fail");
        if let serde_json::Value::Object(map) = &mut value {
            map.insert(CHECK_KEY.into(), self.check_value().into());
        }
        serde_json::to_vec_pretty(&value).expect("serializing plain data cannot fail")
    }

    /// Read and check `run.json`: its check value, schema and ranges.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let bytes = std::fs::read(path).at(path)?;
        let mut value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(path, format!("not a valid run.json: {e}")))?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != RUN_FORMAT {
            return Err(Error::corrupt(
                path,
                format!(
                    "format '{format}' is not {RUN_FORMAT}{}",
                    match format {
                        "sisa-run/1" => " (the run was created by an earlier sisa, before run.json had check values; train it again)",
                        "sisa-run/2" => " (the run was created by an earlier sisa, before row files stored their slices; train it again)",
                        _ => "",
                    }
                ),
            ));
        }
        let check = match value.as_object_mut().and_then(|m| m.remove(CHECK_KEY)) {
            Some(serde_json::Value::String(c)) => c,
            _ => return Err(Error::corrupt(path, "no check value")),
        };
        let config: RunConfig = serde_json::from_value(value.clone())
            .map_err(|e| Error::corrupt(path, format!("not a valid run.json: {e}")))?;
        // Every value must read back as written: a digit added to a float that still rounds
        // to the same f32 leaves the check value as it was, but it is an edit all the same.
        // (Layout is free: whitespace is not a value.)
        if serde_json::to_value(&config).ok().as_ref() != Some(&value) {
            return Err(Error::corrupt(
                path,
                "a value does not read back as sisa wrote it: run.json was edited or damaged",
            ));
        }
        if config.check_value() != check {
            return Err(Error::corrupt(
                path,
                "its contents do not match its check value: run.json was edited or damaged",
            ));
        }
        if config.format != RUN_FORMAT {
            return Err(Error::corrupt(
                path,
                format!("format '{}' is not {RUN_FORMAT}", config.format),
            ));
        }
        config
            .model
            .validate()
            .map_err(|e| Error::corrupt(path, e.to_string()))?;
        config
            .architecture()
            .map_err(|e| Error::corrupt(path, e.to_string()))?;
        if config.shards == 0 || config.slices == 0 || config.stage_epochs.len() != config.slices {
            return Err(Error::corrupt(
                path,
                "shards, slices and stage epochs disagree",
            ));
        }
        if config.risk_shards >= config.shards.max(2)
            || config
                .risk_threshold
                .is_some_and(|t| !(t > 0.0 && t <= 1.0))
        {
            return Err(Error::corrupt(
                path,
                "risk shards or risk threshold out of range",
            ));
        }
        if config.features.is_empty() || config.classes < 2 {
            return Err(Error::corrupt(
                path,
                "needs at least one feature and two classes",
            ));
        }
        if let Some(names) = &config.class_names {
            crate::data::classes::check_names(names).map_err(|m| Error::corrupt(path, m))?;
            if names.len() != config.classes {
                return Err(Error::corrupt(
                    path,
                    format!("{} class names for {} classes", names.len(), config.classes),
                ));
            }
        }
        Ok(config)
    }
}

/// The CPU model name, as far as the operating system tells it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's configuration as `sisa train` writes it for a CSV with integer labels.
    fn integer_labelled() -> RunConfig {
        let model: ModelSpec = toml::from_str(
            "name = \"mlp\"\nhidden = [64]\noptimizer = \"adam\"\nlr = 0.003\nbatch_size = 32\nepochs = 20\n",
        )
        .unwrap();
        RunConfig {
            format: RUN_FORMAT.to_string(),
            name: "digits".into(),
            stage_epochs: crate::plan::stage_epochs(model.epochs, 4),
            model,
            shards: 5,
            slices: 4,
            seed: 7,
            shard_by: ShardBy::User,
            slice_by: SliceBy::User,
            risk_shards: 0,
            risk_threshold: None,
            features: (0..64).map(|i| format!("p{i}")).collect(),
            classes: 10,
            class_names: None,
            backend: Backend::Dense,
            device: DeviceSpec::Cpu,
            gpu: None,
            user_column: "user_id".into(),
            label_column: "label".into(),
            prior_column: None,
            aggregation: Aggregation::Mean,
            cpu: "cpu".into(),
            created_by: "sisa 0.1.0".into(),
            secret_check: "00".into(),
        }
    }

    #[test]
    fn runs_with_integer_labels_keep_their_json_and_digest() {
        // Values of the configuration above as sisa wrote it before class names existed: a run
        // trained then still opens, and a run trained now on the same data is the same run.
        let c = integer_labelled();
        assert_eq!(
            hex::encode(c.digest()),
            "e122fddb34fcfaab64bea2fa0f2e8014f3280b0de919ebba2e88593cd3f291bf"
        );
        assert_eq!(
            hex::encode(Sha256::digest(c.to_json())),
            "7428471c259dffedcf242f642d2d9b7c9b6a458d4681cbb752d1d4c5b5ddf519"
        );
        assert!(!String::from_utf8(c.to_json())
            .unwrap()
            .contains("class_names"));
    }

    #[test]
    fn class_names_are_kept_checked_and_outside_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let mut c = integer_labelled();
        c.class_names = Some((0..10).map(|d| format!("digit-{d}")).collect());
        // The rows hold class indices: the names change no weight, so no lineage.
        assert_eq!(c.digest(), integer_labelled().digest());
        std::fs::write(&path, c.to_json()).unwrap();
        let back = RunConfig::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.labels().name(3), Some("digit-3"));
        // Names that cannot be this run's are corruption, even with a matching check value.
        for (names, want) in [
            (
                vec!["a".to_string(), "b".to_string()],
                "2 class names for 10 classes",
            ),
            (
                (0..10).rev().map(|d| format!("digit-{d}")).collect(),
                "strictly increasing byte order",
            ),
        ] {
            let mut bad = c.clone();
            bad.class_names = Some(names);
            std::fs::write(&path, bad.to_json()).unwrap();
            let e = RunConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains("corrupt") && e.contains(want), "{e}");
        }
    }
}
