//! Training: seeded, deterministic, shard-parallel; `sisa train` end to end.
//!
//! Shards train side by side on an explicit rayon pool, one shard per worker, each shard's math
//! on one thread in a fixed order, so results are bitwise identical for any `--threads`.

pub mod progress;
pub mod shard;
pub mod task;

/// The optimizers, kept beside the models whose state they update.
pub use crate::model::optim;
/// The random number generator, kept below every module that draws from it.
pub use crate::rng;

pub use progress::Progress;
pub use shard::ShardData;

use crate::checkpoint::Checkpoint;
use crate::data::classes::{At, Label, Learner};
use crate::data::csv::Table;
use crate::data::ingest::{self, Placer, Target};
use crate::data::{self, Event, Features, InputSpec, Priors, Role, Rows, Secret};
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::plan::{self, Rules, ShardBy, SliceBy};
use crate::run::config::{cpu_model, RUN_FORMAT};
use crate::run::{
    durable, Aggregation, Manifest, RowsFile, Run, RunConfig, RunDir, RunFile, RunLock, ShardEntry,
    StageEntry,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Largest shard and slice counts accepted.
pub const MAX_SHARDS: usize = 4096;
/// Largest slice count accepted.
pub const MAX_SLICES: usize = 1024;
/// Most worker threads accepted (the pool never starts more threads than it has shards).
pub const MAX_THREADS: usize = 1024;
/// Most classes accepted: one more than the largest label a file may hold.
pub const MAX_CLASSES: usize = crate::data::csv::MAX_LABEL as usize + 1;

/// One shard to (re)train from stage `first`.
pub struct Job<'a> {
    /// The shard's data.
    pub data: ShardData<'a>,
    /// First stage to train (1 = from scratch).
    pub first: usize,
    /// Checkpoint of stage `first - 1`, when `first > 1`.
    pub start: Option<Checkpoint>,
}

/// What training one shard produced.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The shard.
    pub shard: usize,
    /// Entries of the stages trained (`first..=R`).
    pub stages: Vec<StageEntry>,
    /// The final checkpoint.
    pub last: Checkpoint,
}

/// Train `jobs` on a pool of `threads` workers, handing every finished stage to `sink`, which
/// stores (or checks) it and returns its manifest entry. Results come back in shard order.
pub fn train_jobs(
    jobs: Vec<Job<'_>>,
    threads: usize,
    progress: &Progress,
    sink: &(dyn Fn(&Checkpoint, u32, u64) -> Result<StageEntry> + Sync),
) -> Result<Vec<Trained>> {
    // No more workers than jobs: an idle worker costs its stack and start-up.
    let threads = threads.clamp(1, jobs.len().max(1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("sisa-shard-{i}"))
        .build()
        .map_err(|e| Error::Config(format!("cannot start {threads} worker threads: {e}")))?;
    let mut jobs = jobs;
    // Longest first, so the pool does not end waiting on one big shard.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.data.cost_from(j.first)));
    let mut results: Vec<Trained> = pool.install(|| {
        jobs.into_par_iter()
            .map(|job| {
                let bar = progress.shard(job.data.shard, job.data.cost_from(job.first));
                // Each finished stage is stored (encoded, hashed, written, fsync'd) by a writer
                // thread of its own while the next stage trains, in stage order. At most one
                // stage waits for the writer, so memory holds two checkpoints beyond the live one.
                let (tx, rx) = std::sync::mpsc::sync_channel::<(Checkpoint, u32, u64)>(1);
                let (last, stages) = std::thread::scope(|scope| {
                    let writer = scope.spawn(move || {
                        let mut stages = Vec::new();
                        for (ck, epochs, rows) in rx {
                            stages.push(sink(&ck, epochs, rows)?);
                        }
                        Ok::<_, Error>(stages)
                    });
                    let last = job.data.train(
                        job.first,
                        job.start,
                        &bar,
                        &|n| progress.inc(n),
                        |ck, epochs, rows| {
                            // A send fails only when the writer stopped on an error, which
                            // the join below returns.
                            tx.send((ck.clone(), epochs, rows))
                                .map_err(|_| Error::Config("the checkpoint writer stopped".into()))
                        },
                    );
                    drop(tx);
                    let stages = writer
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (last, stages)
                });
                let stages = stages?;
                let last = last?;
                bar.finish_and_clear();
                Ok(Trained {
                    shard: job.data.shard,
                    stages,
                    last,
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    results.sort_by_key(|t| t.shard);
    Ok(results)
}

/// Default worker count: the machine's available parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Everything `sisa train` needs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Training data, in any format [`data::source`] reads; its columns' names are the run's.
    pub data: InputSpec,
    /// Held-out data, in any format, read with the same column names; its features are found
    /// by the training file's names (by position for formats without names).
    pub test: Option<InputSpec>,
    /// Model preset with overrides applied.
    pub model: ModelSpec,
    /// Shards S.
    pub shards: usize,
    /// Slices R.
    pub slices: usize,
    /// Seed.
    pub seed: u64,
    /// Sharding rule.
    pub shard_by: ShardBy,
    /// Slicing rule.
    pub slice_by: SliceBy,
    /// Per-user deletion priors: likely requesters are placed where forgetting them is cheap.
    pub priors: Option<Priors>,
    /// Shards set aside for likely requesters (needs `priors`; 0: none).
    pub risk_shards: usize,
    /// Run directory to create.
    pub out: PathBuf,
    /// Number of classes, if larger than the data shows (integer labels); with labels that
    /// are names it must equal the number of names.
    pub classes: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Draw progress bars.
    pub progress: bool,
    /// Default aggregation saved in the run.
    pub aggregation: Aggregation,
    /// The backend that trains the shard models.
    pub backend: crate::model::Backend,
    /// The device they train on (a GPU needs the candle backend and a `cuda` build).
    pub device: crate::model::device::DeviceSpec,
    /// A deletion ledger outside the run (recorded in the run, so that a restored backup
    /// cannot be opened without it). Default: `RUN/ledger.jsonl`. Must be new or empty.
    pub ledger: Option<PathBuf>,
}

/// A new run's placed data: its configuration, secret, shards and held-out buckets.
pub type Ingested = (RunConfig, Secret, Vec<Rows>, Option<Vec<Rows>>);

/// What `sisa train` did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The new run.
    pub run: Run,
    /// Wall time of training, in seconds.
    pub seconds: f64,
    /// Rows×epochs trained.
    pub rows_epochs: u64,
}

fn check_counts(opts: &TrainOptions) -> Result<()> {
    if let Some(test) = &opts.test {
        if opts.data.is_stdin() && test.is_stdin() {
            return Err(Error::Config(
                "--data and --test are both standard input ('-'): one of them at most".into(),
            ));
        }
        if test.columns() != opts.data.columns() {
            return Err(Error::Config(
                "the held-out file is read with the training file's column names".into(),
            ));
        }
    }
    if !opts.device.is_cpu() {
        if opts.backend != crate::model::Backend::Candle {
            return Err(Error::Usage(format!(
                "--device {}: the dense backend runs on the CPU only; add --backend candle to train on a GPU",
                opts.device
            )));
        }
        // Refused before any data is read when this build or machine has no such device.
        opts.device.candle()?;
    }
    Error::check_range("shards", opts.shards, 1..=MAX_SHARDS)?;
    Error::check_range("slices", opts.slices, 1..=MAX_SLICES)?;
    Error::check_range("threads", opts.threads, 1..=MAX_THREADS)?;
    if let Some(c) = opts.classes {
        Error::check_range("classes", c, 2..=MAX_CLASSES)?;
    }
    if opts.risk_shards > 0 {
        if opts.priors.is_none() {
            return Err(Error::field(
                "risk_shards",
                "sets shards aside for likely requesters, which only a deletion prior names",
            ));
        }
        Error::check_range("risk_shards", opts.risk_shards, 0..=opts.shards - 1)?;
    }
    opts.model.validate()
}

/// The placement rules of a new run configured by `opts`.
fn rules(opts: &TrainOptions) -> Rules {
    Rules {
        seed: opts.seed,
        shards: opts.shards,
        slices: opts.slices,
        shard_by: opts.shard_by,
        slice_by: opts.slice_by,
        risk_shards: opts.risk_shards,
    }
}

/// Refuse a ledger for a new run that already holds entries (another run's requests).
fn check_new_ledger(ledger: Option<&Path>) -> Result<()> {
    let Some(path) = ledger else { return Ok(()) };
    crate::unlearn::ledger::check_location(path)?;
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Err(Error::run(
            path,
            "already holds deletion requests; a new run needs a new ledger",
        )),
        _ => Ok(()),
    }
}

/// Refuse an `--out` that exists and is not an empty directory.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty {
            return Err(Error::run(
                out,
                "already exists; choose a new --out (a run is never overwritten)",
            ));
        }
    }
    Ok(())
}

/// Read and validate the training and held-out files that `opts` names.
pub fn read_tables(opts: &TrainOptions) -> Result<(Table, Option<Table>)> {
    let train = data::read_labelled(&opts.data, Features::All, opts.seed, Role::Train)?;
    let test = match &opts.test {
        Some(spec) => Some(data::read_labelled(
            spec,
            Features::Named(&train.feature_names),
            opts.seed,
            Role::HeldOut,
        )?),
        None => None,
    };
    Ok((train, test))
}

/// Read, validate and place the training (and held-out) data of a new run, streaming each
/// file straight into its shards: ingest holds one copy of the data, in the shards.
///
/// The training labels are learned as they pass ([`Learner`]): rows are placed with
/// provisional label ids, which become class indices in place once the last row is read (the
/// class index of a name is known only when every name has been seen). The held-out file is
/// read with the training classes.
pub fn ingest(opts: &TrainOptions) -> Result<Ingested> {
    check_counts(opts)?;
    check_out(&opts.out)?;
    check_new_ledger(opts.ledger.as_deref())?;
    let secret = Secret::generate()?;
    let mut learner = Learner::new(opts.data.path(), &opts.data.label_place());
    let (names, mut shards) = stream_placed(
        &opts.data,
        Features::All,
        opts,
        Role::Train,
        Target::Train,
        &secret,
        &mut |label, line| learner.learn(label, line),
    )?;
    let learned = learner.finish()?;
    for rows in &mut shards {
        learned.relabel(&mut rows.labels);
    }
    let mut max_label = learned.max_index;
    let test = match &opts.test {
        Some(spec) => {
            let classes = learned.classes();
            let column = spec.label_place();
            let mut test_max = 0u32;
            let (_, rows) = stream_placed(
                spec,
                Features::Named(&names),
                opts,
                Role::HeldOut,
                Target::HeldOut,
                &secret,
                &mut |label, line| {
                    let at = At {
                        path: spec.path(),
                        line,
                        column: &column,
                    };
                    let index = classes.index(label, at)?;
                    test_max = test_max.max(index);
                    Ok(index)
                },
            )?;
            max_label = max_label.max(test_max);
            Some(rows)
        }
        None => None,
    };
    let rows: usize = shards.iter().map(|r| r.len()).sum();
    let config = new_config(opts, names, max_label, learned.names, rows, &secret)?;
    Ok((config, secret, shards, test))
}

/// Stream the labelled input `input` into shard row stores, each row's label as `label` maps
/// it (given the row's line): the input's feature names and the shards.
fn stream_placed(
    input: &InputSpec,
    features: Features<'_>,
    opts: &TrainOptions,
    role: Role,
    target: Target,
    secret: &Secret,
    label: &mut dyn FnMut(Label<'_>, u64) -> Result<u32>,
) -> Result<(Vec<String>, Vec<Rows>)> {
    let rules = rules(opts);
    let priors = opts.priors.as_ref();
    let none = HashMap::new();
    let mut placer: Option<Placer> = None;
    let names = data::for_each_labelled(input, features, opts.seed, role, |event| {
        match event {
            Event::Start { dim, users } => placer
                .get_or_insert_with(|| Placer::new(rules, target, priors, secret, &none, dim))
                .reserve_users(users.iter().map(String::as_str)),
            Event::Row(r) => {
                let id = label(r.label, r.line)?;
                placer
                    .get_or_insert_with(|| {
                        Placer::new(rules, target, priors, secret, &none, r.features.len())
                    })
                    .push(r.user, id, r.features);
            }
        }
        Ok(())
    })?;
    let path = input.path();
    let placer = placer.ok_or_else(|| Error::input(path, None, None, "no data rows"))?;
    Ok((names, placer.finish(path)?))
}

/// The configuration of a new run on data with features `names`, labels up to `max_label`
/// and, when the labels are names, `class_names`, on `rows` training rows. A preset's
/// `min_steps` is resolved here into the epochs the run records, from the mean shard size.
fn new_config(
    opts: &TrainOptions,
    names: Vec<String>,
    max_label: u32,
    class_names: Option<Vec<String>>,
    rows: usize,
    secret: &Secret,
) -> Result<RunConfig> {
    let max_label = max_label as usize;
    let classes = match (&class_names, opts.classes) {
        (Some(n), Some(c)) if c != n.len() => {
            // At odds with the data, not a usage error (exit 1).
            return Err(Error::Config(format!(
                "--classes {c} does not fit the data: its labels are names, and its {} distinct \
                 names are the classes",
                n.len()
            )));
        }
        (Some(n), _) => n.len(),
        (None, Some(c)) if c <= max_label => {
            return Err(Error::Config(format!(
                "--classes {c} is too small: the data has label {max_label}"
            )))
        }
        (None, Some(c)) => c,
        (None, None) => (max_label + 1).max(2),
    };
    if names.len() > crate::data::rows::MAX_FEATURES {
        return Err(Error::input(
            opts.data.path(),
            None,
            None,
            format!(
                "{} features per row; a run stores at most {}",
                names.len(),
                crate::data::rows::MAX_FEATURES
            ),
        ));
    }
    opts.model
        .architecture(names.len(), classes)
        .map_err(|e| preset_error(opts, e))?;
    let name = opts
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("sisa")
        .to_string();
    let mut model = opts.model.clone();
    model.epochs = model.epochs_for((rows as u64).div_ceil(opts.shards as u64));
    if let Some(p) = &opts.priors {
        if p.threshold.is_nan() || p.threshold <= 0.0 || p.threshold > 1.0 {
            return Err(Error::field("risk_threshold", "must be in (0, 1]"));
        }
    }
    Ok(RunConfig {
        format: RUN_FORMAT.to_string(),
        name,
        stage_epochs: plan::stage_epochs(model.epochs, opts.slices),
        model,
        shards: opts.shards,
        slices: opts.slices,
        seed: opts.seed,
        shard_by: opts.shard_by,
        slice_by: opts.slice_by,
        risk_shards: opts.risk_shards,
        risk_threshold: opts.priors.as_ref().map(|p| p.threshold),
        features: names,
        classes,
        class_names,
        backend: opts.backend,
        device: opts.device,
        gpu: if opts.device.is_cpu() {
            None
        } else {
            Some(crate::machine::kind_for(opts.device)?)
        },
        user_column: opts.data.columns().user.clone(),
        label_column: opts.data.columns().label.clone(),
        prior_column: opts.data.columns().ignore.clone(),
        aggregation: opts.aggregation,
        cpu: cpu_model(),
        created_by: format!("sisa {}", env!("CARGO_PKG_VERSION")),
        secret_check: secret.check_value(),
    })
}

/// A preset that does not fit the data: the message names the preset file, its field and the
/// data file.
fn preset_error(opts: &TrainOptions, e: Error) -> Error {
    match e {
        Error::Field { field, message } => Error::Config(format!(
            "{}: {} (data {})",
            opts.model.source.as_deref().unwrap_or("the model preset"),
            Error::field_text(field, &message),
            opts.data.path().display()
        )),
        other => other,
    }
}

/// Validate and place already-read tables (every row with a user and a label) for a new run
/// configured by `opts`; `opts.data` and `opts.test` are not read.
pub fn ingest_tables(opts: &TrainOptions, train: &Table, test: Option<&Table>) -> Result<Ingested> {
    check_counts(opts)?;
    check_out(&opts.out)?;
    check_new_ledger(opts.ledger.as_deref())?;
    for t in std::iter::once(train).chain(test) {
        if t.user_ids.is_none() || t.labels.is_none() {
            return Err(Error::input(
                &t.path,
                None,
                None,
                "rows need a user and a label",
            ));
        }
    }
    if let Some(t) = test {
        t.check_features(&train.feature_names, "training file")?;
    }
    let max_label = train
        .labels
        .iter()
        .chain(test.iter().flat_map(|t| t.labels.iter()))
        .flatten()
        .copied()
        .max()
        .unwrap_or(0);
    let secret = Secret::generate()?;
    let config = new_config(
        opts,
        train.feature_names.clone(),
        max_label,
        None,
        train.len(),
        &secret,
    )?;
    let none = HashMap::new();
    let priors = opts.priors.as_ref();
    let shards = ingest::place_rows(train, rules(opts), Target::Train, priors, &secret, &none)?;
    let test_rows = test
        .map(|t| ingest::place_rows(t, rules(opts), Target::HeldOut, priors, &secret, &none))
        .transpose()?;
    Ok((config, secret, shards, test_rows))
}

/// Train every shard of a new run from scratch and publish version 1 at `opts.out`.
///
/// The run is built in a sibling temp directory and renamed into place at the end, so a
/// failure at any point leaves `--out` as it was.
pub fn train_run(opts: &TrainOptions) -> Result<TrainSummary> {
    train_placed(opts, ingest(opts)?)
}

/// [`train_run`] on tables already in memory (the benchmark trains many runs on one file).
pub fn train_tables(
    opts: &TrainOptions,
    train: &Table,
    test: Option<&Table>,
) -> Result<TrainSummary> {
    train_placed(opts, ingest_tables(opts, train, test)?)
}

/// Build, train and publish a run from placed rows.
fn train_placed(
    opts: &TrainOptions,
    (config, secret, shards, test): Ingested,
) -> Result<TrainSummary> {
    let (manifest, seconds, rows_epochs) = build_beside(opts, |root| {
        build_run(root, &config, &secret, &shards, test.as_ref(), opts)
    })?;
    let run = Run::from_parts(RunDir::new(&opts.out), config, manifest, secret);
    Ok(TrainSummary {
        run,
        seconds,
        rows_epochs,
    })
}

/// What `sisa train --plan-only` did.
#[derive(Clone, Debug)]
pub struct PlanSummary {
    /// The new run's configuration.
    pub config: RunConfig,
    /// Its plan: every shard pending from stage 1.
    pub plan: crate::run::Plan,
    /// Rows×epochs its shard tasks will train.
    pub rows_epochs: u64,
}

/// Ingest and place the data of a new run at `opts.out` and write its plan, training nothing:
/// shard tasks train the shards (`sisa train-shard`) and `sisa publish` publishes version 1.
/// Built beside `--out` and renamed into place, as [`train_run`] does.
pub fn plan_run(opts: &TrainOptions) -> Result<PlanSummary> {
    let (config, secret, shards, test) = ingest(opts)?;
    let (plan, rows_epochs) = build_beside(opts, |root| {
        let dir = RunDir::new(root);
        let syncs = durable::DirSyncs::new();
        let (data_refs, test_ref) =
            write_new_run(root, &config, &secret, &shards, test.as_ref(), opts, &syncs)?;
        syncs.sync()?;
        let digest = config.digest();
        let mut total = 0;
        let mut entries = Vec::new();
        for ((k, rows), data) in shards.iter().enumerate().zip(data_refs) {
            let d = ShardData::new(&config, &digest, k, rows);
            total += d.cost_from(1);
            let stage_rows = d.stage_rows();
            let mut entry = ShardEntry {
                shard: k,
                data,
                slice_rows: Vec::new(),
                slice_digests: Vec::new(),
                stages: d
                    .lineages
                    .iter()
                    .enumerate()
                    .map(|(i, l)| StageEntry {
                        lineage: *l,
                        epochs: config.stage_epochs[i],
                        rows: stage_rows[i],
                        file_digest: String::new(),
                    })
                    .collect(),
                model_digest: String::new(),
                machine: String::new(),
            };
            entry.set_slices(&d.index);
            entries.push(entry);
        }
        let manifest = Manifest::first(&digest, test_ref, entries);
        let mut plan = crate::run::Plan::new(None, manifest);
        for k in 0..config.shards {
            plan.mark(k, 1);
        }
        plan.write(&dir)?;
        Ok((plan, total))
    })?;
    Ok(PlanSummary {
        config,
        plan,
        rows_epochs,
    })
}

/// Build a new run in a temp directory beside `opts.out` with `build`, then rename it into
/// place, so a failure at any point leaves `--out` as it was.
fn build_beside<T>(opts: &TrainOptions, build: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    durable::create_dir_all(parent)?;
    remove_abandoned_builds(parent)?;
    let tmp = parent.join(format!(
        ".{}{PARTIAL}{}",
        opts.out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("run"),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let partial = PartialBuild::start(tmp)?;
    let out = build(&partial.dir)?;
    if opts.out.exists() {
        // check_out allowed only an empty directory; rename needs it gone.
        std::fs::remove_dir(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    }
    partial.finish(&opts.out)?;
    durable::sync_dir(parent)?;
    Ok(out)
}

/// What a run being built is called beside its `--out`: `.<name>.partial-<pid>`.
const PARTIAL: &str = ".partial-";

/// A run being built in its temp directory. Dropped before [`PartialBuild::finish`] (an
/// error, or a panic unwinding), it removes the directory and everything in it (rows and the
/// secret included). It holds the directory's lock while it lives, so a process killed
/// mid-build leaves a directory that nobody holds, which the next train beside it removes
/// ([`remove_abandoned_builds`]).
struct PartialBuild {
    dir: PathBuf,
    lock: Option<RunLock>,
}

impl PartialBuild {
    fn start(dir: PathBuf) -> Result<PartialBuild> {
        durable::create_dir_all(&dir)?;
        let mut build = PartialBuild { dir, lock: None };
        build.lock = Some(RunLock::acquire(&build.dir)?);
        Ok(build)
    }

    /// Rename the finished run to `out`; from here on it is kept.
    fn finish(mut self, out: &Path) -> Result<()> {
        std::fs::rename(&self.dir, out).map_err(|e| Error::io(out, e))?;
        self.lock = None;
        self.dir = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartialBuild {
    fn drop(&mut self) {
        self.lock = None;
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "sisa: warning: could not remove the unfinished run {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

/// Remove the unfinished runs in `parent` that no live process is building: those left by a
/// process that was killed, or whose clean-up failed. One whose builder still runs holds its
/// lock and is left alone.
fn remove_abandoned_builds(parent: &Path) -> Result<()> {
    let entries = std::fs::read_dir(parent).map_err(|e| Error::io(parent, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(parent, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(PARTIAL))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if !path.is_dir() || pid == std::process::id() {
            continue;
        }
        let lock_file = RunDir::new(&path).path(RunFile::Lock);
        let abandoned = if lock_file.exists() {
            RunLock::try_acquire(&path)?.is_some()
        } else {
            // Killed before it took its lock, or just starting: only a dead builder's goes.
            !process_alive(pid)
        };
        if abandoned {
            eprintln!(
                "sisa: removing {}, an unfinished run left by an earlier train",
                path.display()
            );
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Whether a process with this id exists.
pub(crate) fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Write a new run's secret, configuration, ledger location and data files into `root`
/// (their directory fsyncs left to `syncs`); returns the data files' manifest entries.
fn write_new_run(
    root: &Path,
    config: &RunConfig,
    secret: &Secret,
    shards: &[Rows],
    test: Option<&Vec<Rows>>,
    opts: &TrainOptions,
    syncs: &durable::DirSyncs,
) -> Result<(Vec<crate::run::DataRef>, Option<Vec<crate::run::DataRef>>)> {
    let dir = RunDir::new(root);
    durable::write_atomic(&dir.path(RunFile::Secret), secret.as_bytes(), "secret")?;
    durable::write_atomic(&dir.path(RunFile::Config), &config.to_json(), "config")?;
    if let Some(ledger) = &opts.ledger {
        crate::unlearn::location::record(root, &crate::unlearn::Ledger::open(ledger)?)?;
    }
    durable::create_dir_all(&dir.path(RunFile::DataDir))?;
    durable::create_dir_all(&dir.path(RunFile::ReceiptsDir))?;
    let mut data_refs = Vec::new();
    for (k, rows) in shards.iter().enumerate() {
        data_refs.push(Run::store_rows(&dir, RowsFile::Shard(k), rows, syncs)?);
    }
    let test_ref = test
        .map(|buckets| {
            buckets
                .iter()
                .enumerate()
                .map(|(k, t)| Run::store_rows(&dir, RowsFile::Test(k), t, syncs))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    Ok((data_refs, test_ref))
}

fn build_run(
    root: &Path,
    config: &RunConfig,
    secret: &Secret,
    shards: &[Rows],
    test: Option<&Vec<Rows>>,
    opts: &TrainOptions,
) -> Result<(Manifest, f64, u64)> {
    let dir = RunDir::new(root);
    let digest = config.digest();
    // The whole build is made durable by the one fsync of the parent after its rename, and
    // the manifest is written last: one directory fsync per directory is enough.
    let syncs = durable::DirSyncs::new();
    let (data_refs, test_ref) = write_new_run(root, config, secret, shards, test, opts, &syncs)?;
    let datas: Vec<ShardData> = shards
        .iter()
        .enumerate()
        .map(|(k, rows)| ShardData::new(config, &digest, k, rows))
        .collect();
    let total: u64 = datas.iter().map(|d| d.cost_from(1)).sum();
    let indexes: Vec<crate::data::SliceIndex> = datas.iter().map(|d| d.index.clone()).collect();
    let jobs = datas
        .into_iter()
        .map(|data| Job {
            data,
            first: 1,
            start: None,
        })
        .collect();
    let progress = Progress::new("training", total, opts.progress);
    let started = Instant::now();
    let sink = |ck: &Checkpoint, epochs: u32, rows: u64| {
        Run::store_checkpoint(&dir, ck, epochs, rows, &syncs)
    };
    let trained = train_jobs(jobs, opts.threads, &progress, &sink)?;
    syncs.sync()?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let shards = trained
        .into_iter()
        .zip(data_refs)
        .zip(indexes)
        .map(|((t, data), index)| {
            let mut entry = ShardEntry {
                shard: t.shard,
                data,
                slice_rows: Vec::new(),
                slice_digests: Vec::new(),
                stages: t.stages,
                model_digest: t.last.digest(),
                machine: t.last.machine.clone(),
            };
            entry.set_slices(&index);
            entry
        })
        .collect();
    let manifest = Manifest::first(&digest, test_ref, shards);
    manifest.publish(&dir)?;
    Ok((manifest, seconds, total))
}
