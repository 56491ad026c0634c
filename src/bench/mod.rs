//! `sisa bench`: unlearning cost against retraining from scratch, accuracy against shards, the
//! SISA formulas beside the measurements, training throughput, and a membership audit.
//!
//! For every S in `shards` and R in `slices` the benchmark trains one run, measures its held-out
//! accuracy (mean and vote), plans random single-user requests as a dry run to compare their
//! mean cost with the formulas ([`formula`]), and executes unlearning experiments (one user;
//! K users sequentially and batched; the worst K users) each on a fresh copy of that run, so
//! nothing is retrained twice to set an experiment up. Sharding by row is measured beside
//! sharding by user. The report ([`report`]) is `results.json`, `results.md` and plots
//! ([`plot`]) in the output directory.

pub use crate::plan::formula;
pub mod membership;
pub mod plot;
pub mod report;
pub mod throughput;

use crate::data::csv::Table;
use crate::data::{Rows, UserKey, UserRule};
use crate::ensemble::Ensemble;
use crate::error::{Error, IoContext, Result};
use crate::model::ModelSpec;
use crate::plan::{self, ShardBy, SliceBy};
use crate::rng::SplitMix64;
use crate::run::config::cpu_model;
use crate::run::{Aggregation, Run};
use crate::train::{self, TrainOptions};
use crate::unlearn;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use report::{
    ConfigResult, DatasetInfo, Experiment, FormulaCheck, Mode, ModelInfo, Report, Selection,
    Written, REPORT_FORMAT,
};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Everything `sisa bench` needs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Training data (any format `sisa train` reads).
    pub data: PathBuf,
    /// The device every run trains on: the CPU (with the dense backend) or a CUDA GPU (with
    /// the candle backend). Default: the CPU.
    pub device: crate::model::device::DeviceSpec,
    /// Held-out data.
    pub test: Option<PathBuf>,
    /// Labels of IDX training data. Default: found by name.
    pub labels: Option<PathBuf>,
    /// Labels of IDX held-out data. Default: found by name.
    pub test_labels: Option<PathBuf>,
    /// Users for data without a user column.
    pub users: Option<UserRule>,
    /// Short name of the data for the report.
    pub dataset_name: String,
    /// Why this data, when it is a fallback (said in the report and on stderr).
    pub dataset_note: Option<String>,
    /// The model preset file.
    pub model_path: PathBuf,
    /// The preset with `--epochs` applied.
    pub model: ModelSpec,
    /// Epochs the preset asks for.
    pub preset_epochs: u32,
    /// Presets whose training throughput is measured.
    pub presets: Vec<ModelSpec>,
    /// Shard counts to sweep. Default: 1, 5, 10, 20.
    pub shards: Vec<usize>,
    /// Slice counts to sweep. Default: 1, 5, 10.
    pub slices: Vec<usize>,
    /// Users per experiment K. Default: 1, 8.
    pub requests: Vec<usize>,
    /// Random single-user requests planned per configuration for the formula check. Default: 50.
    pub samples: usize,
    /// Seed of the runs and of every random choice. Default: 7.
    pub seed: u64,
    /// Also measure sharding by row (at the largest R, for every S > 1). Default: true.
    pub row_sharding: bool,
    /// Slice rule of every configuration. Default: by user.
    pub slice_by: SliceBy,
    /// Run the membership audit. Default: true.
    pub audit: bool,
    /// Membership audit settings.
    pub membership: membership::MembershipOptions,
    /// Keep every trained run under `out/runs/`. Default: false.
    pub keep_runs: bool,
    /// Output directory.
    pub out: PathBuf,
    /// Worker threads.
    pub threads: usize,
    /// Progress bar on stderr.
    pub progress: bool,
}

impl BenchOptions {
    /// The backend the runs train with: the dense one on the CPU, candle on a GPU.
    pub fn backend(&self) -> crate::model::Backend {
        if self.device.is_cpu() {
            crate::model::Backend::Dense
        } else {
            crate::model::Backend::Candle
        }
    }

    /// The training and held-out inputs the options name (any format `sisa train` reads).
    pub fn inputs(&self) -> (crate::data::InputSpec, Option<crate::data::InputSpec>) {
        use crate::data::{InputSpec, Users};
        let users = |s: InputSpec| match self.users {
            Some(rule) => s.with_users(Users::Rule(rule)),
            None => s,
        };
        let data = users(InputSpec::file(&self.data).with_labels(self.labels.clone()));
        let test = self
            .test
            .as_ref()
            .map(|t| users(InputSpec::file(t).with_labels(self.test_labels.clone())));
        (data, test)
    }
}

/// The data the standard suite runs on: Fashion-MNIST when Debian's package has installed it,
/// else the bundled MNIST subset in `datasets` (with a note that says so).
#[derive(Clone, Debug, PartialEq)]
pub struct StandardData {
    /// Training file.
    pub data: PathBuf,
    /// Held-out file.
    pub test: PathBuf,
    /// Users for data without a user column.
    pub users: Option<UserRule>,
    /// Short name.
    pub name: String,
    /// Set when falling back.
    pub note: Option<String>,
}

/// Users given to Fashion-MNIST's rows by the standard suite: about three rows per user.
pub const FASHION_MNIST_USERS: UserRule = UserRule::Uniform { users: 20_000 };

/// Locate the standard suite's data (see [`StandardData`]).
pub fn standard_data(datasets: &Path) -> StandardData {
    let fm = Path::new(FASHION_MNIST_DIR);
    let train = fm.join("train-images-idx3-ubyte.gz");
    let test = fm.join("t10k-images-idx3-ubyte.gz");
    if train.is_file() && test.is_file() {
        return StandardData {
            data: train,
            test,
            users: Some(FASHION_MNIST_USERS),
            name: "fashion-mnist".into(),
            note: None,
        };
    }
    StandardData {
        data: datasets.join("mnist-5k/train.csv.gz"),
        test: datasets.join("mnist-5k/test.csv.gz"),
        users: None,
        name: "mnist-5k".into(),
        note: Some(format!(
            "Fashion-MNIST is not installed ({FASHION_MNIST_DIR} is missing; `apt-get install \
             dataset-fashion-mnist`, see datasets/fashion-mnist/README.md): this run uses the \
             bundled MNIST subset datasets/mnist-5k instead."
        )),
    }
}

/// One overall progress bar, or log lines when stderr is not a terminal.
struct Steps {
    bar: ProgressBar,
    log: bool,
}

impl Steps {
    fn new(total: u64, visible: bool) -> Steps {
        if visible && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>5} [{bar:30}] {pos}/{len} steps {elapsed_precise} {msg}",
                )
                .expect("static template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix("bench");
            Steps { bar, log: false }
        } else {
            Steps {
                bar: ProgressBar::hidden(),
                log: visible,
            }
        }
    }

    fn start(&self, msg: String) {
        if self.log {
            eprintln!("sisa bench: {msg}");
        }
        self.bar.set_message(msg);
    }

    fn say(&self, msg: String) {
        if self.log {
            eprintln!("sisa bench: {msg}");
        } else if !self.bar.is_hidden() {
            self.bar.println(format!("sisa bench: {msg}"));
        }
    }

    fn done(&self) {
        self.bar.inc(1);
    }
}

/// The data and choices shared by every configuration.
struct Context<'a> {
    opts: &'a BenchOptions,
    train: Table,
    test: Option<Table>,
    /// Training users in order of first appearance, and their row counts.
    users: Vec<String>,
    user_rows: Vec<u32>,
    /// Random distinct users: the formula check's requests, then the experiments'.
    sample: Vec<String>,
    /// Row counts of `sample`.
    sample_rows: Vec<u32>,
    /// Single-core rows×epochs per second for baseline wall times.
    rate: f64,
    rate_from: String,
    steps: Steps,
}

fn check(opts: &BenchOptions) -> Result<()> {
    let positive = |name: &str, v: &[usize]| {
        if v.is_empty() || v.contains(&0) {
            Err(Error::Usage(format!(
                "--{name} needs one or more positive numbers, got {v:?}"
            )))
        } else {
            Ok(())
        }
    };
    positive("shards", &opts.shards)?;
    positive("slices", &opts.slices)?;
    positive("requests", &opts.requests)?;
    if opts.samples == 0 {
        return Err(Error::Usage("--samples must be at least 1".into()));
    }
    opts.model.validate()
}

fn sorted(v: &[usize]) -> Vec<usize> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Copy a run directory for one experiment. Files under `data/` and `checkpoints/` are never
/// opened for writing again once written (every write is a new file renamed into place), so
/// they are hard-linked; everything else is copied. Unlearning on the copy leaves the original
/// untouched.
pub fn copy_run(from: &Path, to: &Path) -> Result<()> {
    fn walk(from: &Path, to: &Path, immutable: bool) -> Result<()> {
        crate::run::durable::create_dir_all(to)?;
        for entry in std::fs::read_dir(from).at(from)? {
            let entry = entry.at(from)?;
            let src = entry.path();
            let dst = to.join(entry.file_name());
            let kind = entry.file_type().at(&src)?;
            if kind.is_dir() {
                let name = entry.file_name();
                let below = immutable || name == "data" || name == "checkpoints";
                walk(&src, &dst, below)?;
            } else if immutable {
                // A hard link fails across file systems; a copy then does the same job.
                if let Err(link) = std::fs::hard_link(&src, &dst) {
                    std::fs::copy(&src, &dst).map_err(|copy| {
                        Error::io(
                            &dst,
                            std::io::Error::other(format!("cannot link ({link}) or copy ({copy})")),
                        )
                    })?;
                }
            } else {
                std::fs::copy(&src, &dst).at(&dst)?;
            }
        }
        Ok(())
    }
    walk(from, to, false)
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// What executing some requests on a copy of a run measured.
struct Executed {
    seconds: f64,
    rows_epochs: u64,
    same_config: u64,
    baseline: u64,
    rows_removed: u64,
    shards_retrained: usize,
}

impl Context<'_> {
    fn train_options(
        &self,
        shard_by: ShardBy,
        shards: usize,
        slices: usize,
        out: PathBuf,
    ) -> TrainOptions {
        let o = self.opts;
        let (data, test) = o.inputs();
        TrainOptions {
            data,
            test,
            model: o.model.clone(),
            shards,
            slices,
            seed: o.seed,
            shard_by,
            slice_by: o.slice_by,
            priors: None,
            risk_shards: 0,
            out,
            classes: None,
            threads: o.threads,
            progress: false,
            aggregation: Aggregation::Mean,
            ledger: None,
            backend: o.backend(),
            device: o.device,
        }
    }

    /// Accept and complete each request (a list of user ids) in turn on a copy of `run_dir`.
    fn execute(&self, run_dir: &Path, requests: &[Vec<String>], label: &str) -> Result<Executed> {
        let copy = self.opts.out.join("runs").join("unlearn-copy");
        remove_dir(&copy)?;
        copy_run(run_dir, &copy)?;
        let uopts = unlearn::Options {
            threads: self.opts.threads,
            progress: false,
        };
        let mut unlearner = unlearn::Unlearner::open(&copy, None, &uopts)?;
        let mut rows: u64 = unlearner
            .run()
            .manifest
            .shards
            .iter()
            .map(|s| s.data.rows)
            .sum();
        let mut out = Executed {
            seconds: 0.0,
            rows_epochs: 0,
            same_config: 0,
            baseline: 0,
            rows_removed: 0,
            shards_retrained: 0,
        };
        for (i, users) in requests.iter().enumerate() {
            if requests.len() > 1 {
                self.steps
                    .start(format!("{label}: request {}/{}", i + 1, requests.len()));
            }
            let started = Instant::now();
            let receipt = unlearner.forget(users)?;
            out.seconds += started.elapsed().as_secs_f64();
            out.rows_epochs += receipt.cost.retrained_rows_epochs;
            out.same_config += receipt.cost.full_retrain_rows_epochs;
            out.rows_removed += receipt.train_rows_removed;
            rows -= receipt.train_rows_removed;
            out.baseline += rows * self.opts.model.epochs as u64;
            out.shards_retrained += receipt
                .shards
                .iter()
                .filter(|s| s.stages_retrained > 0)
                .count();
        }
        drop(unlearner);
        remove_dir(&copy)?;
        Ok(out)
    }

    fn experiment(
        &self,
        run_dir: &Path,
        label: &str,
        (selection, mode, k): (Selection, Mode, usize),
        requests: Vec<Vec<String>>,
        expected: (Option<f64>, Option<f64>),
    ) -> Result<Experiment> {
        let what = format!(
            "{label}: {} {} of {k}",
            match selection {
                Selection::Random => "random",
                Selection::Worst => "worst",
            },
            match mode {
                Mode::Single => "single request",
                Mode::Sequential => "sequential requests",
                Mode::Batched => "batched request",
            }
        );
        self.steps.start(what.clone());
        let e = self.execute(run_dir, &requests, &what)?;
        self.steps.done();
        let baseline_seconds = e.baseline as f64 / self.rate;
        Ok(Experiment {
            selection,
            mode,
            k,
            requests: requests.len(),
            rows_removed: e.rows_removed,
            shards_retrained: e.shards_retrained,
            seconds: e.seconds,
            rows_epochs: e.rows_epochs,
            same_config_rows_epochs: e.same_config,
            baseline_rows_epochs: e.baseline,
            baseline_seconds,
            speedup: e.baseline as f64 / e.rows_epochs.max(1) as f64,
            wall_speedup: baseline_seconds / e.seconds.max(1e-9),
            expected_users: expected.0,
            expected_paper: expected.1,
        })
    }

    fn config(&mut self, shard_by: ShardBy, shards: usize, slices: usize) -> Result<ConfigResult> {
        let by = match shard_by {
            ShardBy::User => "user",
            ShardBy::Row => "row",
        };
        let label = format!("S={shards} R={slices} by {by}");
        let run_dir = self
            .opts
            .out
            .join("runs")
            .join(format!("{by}-s{shards}-r{slices}"));
        self.steps.start(format!("{label}: training"));
        let topts = self.train_options(shard_by, shards, slices, run_dir.clone());
        let started = Instant::now();
        let summary = train::train_tables(&topts, &self.train, self.test.as_ref())?;
        let train_wall_seconds = started.elapsed().as_secs_f64();
        self.steps.done();
        let run = summary.run;
        if shards == 1 && slices == 1 && shard_by == ShardBy::User {
            self.rate = summary.rows_epochs as f64 / train_wall_seconds;
            self.rate_from = "the whole `sisa train` of S=1, R=1 in this benchmark (ingest, \
                              row files, training on one thread, checkpoint)"
                .into();
        }
        let (accuracy_mean, accuracy_vote) = match &self.test {
            Some(t) => {
                let ens = Ensemble::load(&run)?;
                let y = t.labels.as_deref().unwrap_or_default();
                (
                    Some(ens.evaluate(&t.x, y, Aggregation::Mean).accuracy),
                    Some(ens.evaluate(&t.x, y, Aggregation::Vote).accuracy),
                )
            }
            None => (None, None),
        };

        // Formula check: dry-run plans of random single-user requests.
        let o = self.opts;
        self.steps.start(format!(
            "{label}: planning {} random requests (dry run)",
            o.samples
        ));
        let loaded = unlearn::Loaded::everything(&run)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(o.threads.max(1))
            .build()
            .map_err(|e| Error::Config(format!("cannot start {} threads: {e}", o.threads)))?;
        let costs: Vec<f64> = pool.install(|| {
            self.sample[..o.samples]
                .par_iter()
                .map(|id| {
                    unlearn::plan_unlearning(&run, &[run.key(id)], &loaded).retrain_rows_epochs
                        as f64
                })
                .collect()
        });
        let n = costs.len() as f64;
        let mean = costs.iter().sum::<f64>() / n;
        let var = costs.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let total_rows = self.train.len() as f64;
        let epochs = &run.config.stage_epochs;
        let rules = (shard_by, run.config.slice_by);
        let users_one =
            formula::users_rows_epochs(total_rows, shards, epochs, 1, &self.user_rows, rules);
        let sampled = formula::users_rows_epochs(
            total_rows,
            shards,
            epochs,
            1,
            &self.sample_rows[..o.samples],
            rules,
        );
        let paper_one = formula::paper_rows_epochs(total_rows, shards, epochs, 1);
        let max_k = self.opts.requests.iter().copied().max().unwrap_or(1);
        let rows: Vec<Rows> = loaded.shards.into_values().collect();
        let worst = self.worst_users(&run, &rows, max_k);
        drop(rows);
        self.steps.done();

        let mut experiments = Vec::new();
        let one = |id: &String| vec![id.clone()];
        for &k in &sorted(&self.opts.requests) {
            if k == 1 {
                experiments.push(self.experiment(
                    &run_dir,
                    &label,
                    (Selection::Random, Mode::Single, 1),
                    vec![one(&self.sample[0])],
                    (Some(users_one), Some(paper_one)),
                )?);
                experiments.push(self.experiment(
                    &run_dir,
                    &label,
                    (Selection::Worst, Mode::Single, 1),
                    vec![worst[..1].to_vec()],
                    (None, None),
                )?);
                continue;
            }
            let users: Vec<String> = self.sample[1..=k].to_vec();
            experiments.push(self.experiment(
                &run_dir,
                &label,
                (Selection::Random, Mode::Sequential, k),
                users.iter().map(one).collect(),
                (Some(k as f64 * users_one), Some(k as f64 * paper_one)),
            )?);
            let batched_users =
                formula::users_rows_epochs(total_rows, shards, epochs, k, &self.user_rows, rules);
            experiments.push(self.experiment(
                &run_dir,
                &label,
                (Selection::Random, Mode::Batched, k),
                vec![users],
                (
                    Some(batched_users),
                    Some(formula::paper_rows_epochs(total_rows, shards, epochs, k)),
                ),
            )?);
            experiments.push(self.experiment(
                &run_dir,
                &label,
                (Selection::Worst, Mode::Batched, k),
                vec![worst[..k.min(worst.len())].to_vec()],
                (None, None),
            )?);
        }
        let plan_equals_receipt = experiments
            .iter()
            .find(|e| e.selection == Selection::Random && e.mode == Mode::Single)
            .map(|e| e.rows_epochs as f64 == costs[0]);
        if !self.opts.keep_runs {
            remove_dir(&run_dir)?;
        }
        Ok(ConfigResult {
            shard_by,
            slice_by: run.config.slice_by,
            shards,
            slices,
            stage_epochs: run.config.stage_epochs.clone(),
            train_seconds: summary.seconds,
            train_wall_seconds,
            train_rows_epochs: summary.rows_epochs,
            accuracy_mean,
            accuracy_vote,
            formula_check: FormulaCheck {
                samples: costs.len(),
                measured_mean: mean,
                measured_stderr: (var / n).sqrt(),
                expected_users: users_one,
                ratio_users: mean / users_one,
                expected_sampled: sampled,
                ratio_sampled: mean / sampled,
                expected_paper: paper_one,
                ratio_paper: mean / paper_one,
                within_10pct: (mean / users_one - 1.0).abs() <= 0.10,
                plan_equals_receipt,
            },
            experiments,
        })
    }

    /// The `k` users whose deletion retrains the most, chosen greedily: each adds the most
    /// retraining given the users before it (rows in the earliest slices of shards not yet hit).
    fn worst_users(&self, run: &Run, rows: &[Rows], k: usize) -> Vec<String> {
        let c = &run.config;
        let keys: HashMap<UserKey, usize> = self
            .users
            .iter()
            .enumerate()
            .map(|(i, id)| (run.key(id), i))
            .collect();
        // Per user: (shard, earliest slice) for every shard holding their rows.
        let mut touch: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.users.len()];
        for (s, r) in rows.iter().enumerate() {
            for i in 0..r.len() {
                let Some(&u) = keys.get(&r.keys[i]) else {
                    continue;
                };
                let slice = r.slices[i] as usize;
                match touch[u].iter_mut().find(|(sh, _)| *sh == s) {
                    Some(t) => t.1 = t.1.min(slice),
                    None => touch[u].push((s, slice)),
                }
            }
        }
        // cost[s][j-1]: rows×epochs of retraining shard s from stage j (j = R+1: nothing).
        let cost: Vec<Vec<u64>> = run
            .manifest
            .shards
            .iter()
            .map(|e| {
                (1..=c.slices + 1)
                    .map(|j| plan::stage_cost(&e.slice_rows, &c.stage_epochs, j))
                    .collect()
            })
            .collect();
        let mut first = vec![c.slices + 1; c.shards];
        let mut chosen: Vec<usize> = Vec::new();
        for _ in 0..k.min(self.users.len()) {
            let mut best: Option<(u64, usize)> = None;
            for (u, t) in touch.iter().enumerate() {
                if t.is_empty() || chosen.contains(&u) {
                    continue;
                }
                let gain: u64 = t
                    .iter()
                    .map(|&(s, sl)| {
                        let now = first[s];
                        let then = now.min(sl + 1);
                        cost[s][then - 1] - cost[s][now - 1]
                    })
                    .sum();
                if best.is_none_or(|(g, _)| gain > g) {
                    best = Some((gain, u));
                }
            }
            let Some((_, u)) = best else { break };
            for &(s, sl) in &touch[u] {
                first[s] = first[s].min(sl + 1);
            }
            chosen.push(u);
        }
        chosen.into_iter().map(|u| self.users[u].clone()).collect()
    }
}

/// Run the benchmark and write its report into `opts.out`.
pub fn run(opts: &BenchOptions) -> Result<(Report, Written)> {
    check(opts)?;
    let started = Instant::now();
    let runs = opts.out.join("runs");
    if runs.exists() {
        return Err(Error::run(
            &runs,
            "exists (left by an earlier benchmark?); remove it or choose another --out",
        ));
    }
    crate::run::durable::create_dir_all(&opts.out)?;
    let shards = sorted(&opts.shards);
    let slices = sorted(&opts.slices);
    let requests = sorted(&opts.requests);
    let max_k = requests.last().copied().unwrap_or(1);
    let max_r = slices.last().copied().unwrap_or(1);
    let mut configs: Vec<(ShardBy, usize, usize)> = Vec::new();
    for &s in &shards {
        for &r in &slices {
            configs.push((ShardBy::User, s, r));
        }
    }
    if opts.row_sharding {
        configs.extend(
            shards
                .iter()
                .filter(|&&s| s > 1)
                .map(|&s| (ShardBy::Row, s, max_r)),
        );
    }
    let per_config: u64 = 2 + requests
        .iter()
        .map(|&k| if k == 1 { 2 } else { 3 })
        .sum::<u64>();
    let total = 1 + configs.len() as u64 * per_config + u64::from(opts.audit);
    let steps = Steps::new(total, opts.progress);
    if let Some(note) = &opts.dataset_note {
        steps.say(note.clone());
    }

    steps.start(format!("reading {}", opts.data.display()));
    let (data, test) = opts.inputs();
    let template = TrainOptions {
        data,
        test,
        model: opts.model.clone(),
        shards: 1,
        slices: 1,
        seed: opts.seed,
        shard_by: ShardBy::User,
        slice_by: opts.slice_by,
        priors: None,
        risk_shards: 0,
        out: runs.clone(),
        classes: None,
        threads: opts.threads,
        progress: false,
        aggregation: Aggregation::Mean,
        ledger: None,
        backend: opts.backend(),
        device: opts.device,
    };
    let (train_table, test_table) = train::read_tables(&template)?;
    let ids = train_table
        .user_ids
        .as_ref()
        .ok_or_else(|| Error::input(&opts.data, None, None, "training rows need users"))?;
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut users: Vec<String> = Vec::new();
    let mut user_rows: Vec<u32> = Vec::new();
    for id in ids {
        let i = *index.entry(id.as_str()).or_insert_with(|| {
            users.push(id.clone());
            user_rows.push(0);
            users.len() - 1
        });
        user_rows[i] += 1;
    }
    let want = opts.samples.max(max_k + 1);
    if users.len() < want {
        return Err(Error::Config(format!(
            "the data has {} users; the benchmark needs {want} (--samples and the largest --requests + 1)",
            users.len()
        )));
    }
    let mut rng = SplitMix64::new(plan::derive_seed(opts.seed, 0, 0, 0, "bench/users"));
    let mut order: Vec<usize> = (0..users.len()).collect();
    for i in 0..want {
        let j = i + (rng.next_u64() % (order.len() - i) as u64) as usize;
        order.swap(i, j);
    }
    let sample = order[..want].iter().map(|&i| users[i].clone()).collect();
    let sample_rows = order[..want].iter().map(|&i| user_rows[i]).collect();

    // Throughput first: it also gives the baseline rate until an S=1, R=1 run measures it.
    steps.start("measuring the fp32 peak and training throughput".into());
    let peak = throughput::measure_peak(opts.threads);
    let mut presets = Vec::new();
    let mut seen_model = false;
    for spec in &opts.presets {
        seen_model |= spec.name == opts.model.name;
        if spec
            .input
            .is_some_and(|[c, h, w]| c * h * w != train_table.dim())
        {
            // An image preset for another image size (the CNN on 8×8 digits): nothing to time.
            continue;
        }
        presets.push(throughput::measure_preset(
            spec,
            &train_table,
            16_384,
            2,
            opts.seed,
            peak.per_core_gflops,
        )?);
    }
    if !seen_model {
        presets.push(throughput::measure_preset(
            &opts.model,
            &train_table,
            16_384,
            2,
            opts.seed,
            peak.per_core_gflops,
        )?);
    }
    steps.done();
    let rate = presets
        .iter()
        .find(|p| p.preset == opts.model.name)
        .map(|p| p.samples_per_second_per_core)
        .unwrap_or(1.0);
    let n = train_table.len() as f64;
    let estimate: f64 = configs
        .iter()
        .map(|&(_, s, _)| {
            let e = opts.model.epochs as f64;
            let train = n * e / (s.min(opts.threads).max(1) as f64);
            let one = n * e / s as f64;
            let unlearn: f64 = requests
                .iter()
                .map(|&k| {
                    if k == 1 {
                        2.0 * one
                    } else {
                        (k as f64 + (k.min(s) as f64) * 2.0) * one
                    }
                })
                .sum();
            train + unlearn
        })
        .sum::<f64>()
        / rate;
    steps.say(format!(
        "{} configurations; their training and retraining alone take about {:.0} minutes at \
         {:.0} rows×epochs/s per core (reading, checking and writing row files add to it)",
        configs.len(),
        estimate / 60.0,
        rate
    ));

    let mut ctx = Context {
        opts,
        train: train_table,
        test: test_table,
        users,
        user_rows,
        sample,
        sample_rows,
        rate,
        rate_from: format!(
            "the throughput measurement of the {} preset (one thread)",
            opts.model.name
        ),
        steps,
    };
    let mut results = Vec::new();
    for &(by, s, r) in &configs {
        results.push(ctx.config(by, s, r)?);
    }
    let membership = if opts.audit {
        ctx.steps
            .start("membership audit on an overfit configuration".into());
        let m = membership::run(
            &ctx.train,
            &opts.model,
            opts.seed,
            &opts.out.join("audit"),
            opts.threads,
            &opts.membership,
        )?;
        ctx.steps.done();
        Some(m)
    } else {
        None
    };
    if !opts.keep_runs {
        remove_dir(&runs)?;
    }
    ctx.steps.bar.finish_and_clear();

    let mean_rows = ctx.train.len() as f64 / ctx.users.len() as f64;
    let report = Report {
        format: REPORT_FORMAT.to_string(),
        created_by: format!("sisa {}", env!("CARGO_PKG_VERSION")),
        cpu: cpu_model(),
        threads: opts.threads,
        seed: opts.seed,
        dataset: DatasetInfo {
            name: opts.dataset_name.clone(),
            path: opts.data.clone(),
            test_path: opts.test.clone(),
            rows: ctx.train.len(),
            test_rows: ctx.test.as_ref().map(Table::len).unwrap_or(0),
            users: ctx.users.len(),
            mean_rows_per_user: mean_rows,
            features: ctx.train.dim(),
            user_rule: opts.users.map(|u| u.to_string()),
            note: opts.dataset_note.clone(),
        },
        model: ModelInfo {
            name: opts.model.name.clone(),
            preset: opts.model_path.clone(),
            epochs: opts.model.epochs,
            preset_epochs: opts.preset_epochs,
            batch_size: opts.model.batch_size,
            hidden: opts.model.hidden.clone(),
        },
        baseline_rate: ctx.rate,
        baseline_rate_from: ctx.rate_from.clone(),
        notes: notes(opts, &ctx, max_r),
        configs: results,
        peak,
        throughput: presets,
        membership,
        seconds: started.elapsed().as_secs_f64(),
    };
    let written = report::write(&opts.out, &report)?;
    Ok((report, written))
}

fn notes(opts: &BenchOptions, ctx: &Context, max_r: usize) -> Vec<String> {
    let e0 = opts.model.epochs;
    let mut v = vec![
        format!(
            "Epochs: every configuration trains e0 = {e0} epochs of unsliced training (the `{}` preset \
             says {}; fewer keep the whole sweep within its time budget on 2 cores). Stage r of R \
             trains floor(2·e0/(R+1)) epochs, SISA's recalibration, so a sliced run costs about as \
             much as an unsliced one (the 'train rows×epochs' column shows how close).",
            opts.model.name, opts.preset_epochs
        ),
        "Every unlearning experiment runs on its own copy of the configuration's trained run \
         (files under data/ and checkpoints/ are immutable and hard-linked, the rest copied): \
         nothing is retrained to set an experiment up, and each starts from the same run. \
         Requests go through the real path: ledger fsync, plan, erasure, retraining from the last \
         untouched checkpoint, publish, garbage collection, receipt."
            .into(),
        format!(
            "Speed-up = baseline / measured. The baseline is the paper's: retrain one model \
             (S=1, R=1) from scratch on the retained rows after every request, `retained × e0` \
             rows×epochs. The rows×epochs speed-up is machine-independent. The wall speed-up \
             prices the baseline at {:.0} rows×epochs/s, measured by {}, against the measured wall \
             time of the requests (ledger fsyncs, reading and checking the shard, erasure, \
             retraining, publishing, receipt). \
             Wall-clock figures were measured while other engineers' builds shared the 2 cores: \
             read them as indicative.",
            ctx.rate, ctx.rate_from
        ),
        "Expected costs: 'expected (SISA, 1 row each)' is the paper's model, every request \
         deleting one row: e·(N/S)·(R+1)(2R+1)/(6R) for one request, and for K batched requests \
         e·N·(1 − (1 − 1/S)^K) when R = 1. Here a request deletes a user, and a user's m rows \
         share a shard (sharding by user) but each row falls in its own random slice, so \
         retraining starts at the earliest of m slices: 'expected (users)' is the same \
         expectation with this data's row counts per user (src/bench/formula.rs). K sequential \
         requests are expected to cost K times one."
            .into(),
        format!(
            "Formula check: the same {} random users in every configuration, each planned alone \
             with `unlearn::plan_unlearning` against the trained run (a dry run; the plan's cost \
             is what the executor retrains, and 'plan_equals_receipt' in results.json confirms it \
             for the executed single request). 'expected (users)' is the expectation for a random \
             user of the data; 'expected (these users)' the expectation given the sampled users' \
             own row counts, which leaves only the randomness of shards and slices (and, since \
             the same users serve every configuration, their errors are correlated). The formulas \
             assume N/S rows per shard in R equal slices; users are hashed to shards and rows to \
             slices, so sizes vary by a few percent.",
            opts.samples
        ),
        "Throughput: one thread trains the first 16,384 rows for 2 epochs in memory with the \
         real trainer, best of three; FLOPs per sample count the dense layers' multiply-adds \
         (forward, weight gradient, input gradient), so activations, softmax and the optimizer \
         are left out and the fraction of peak is slightly understated. The peak is an AVX2 FMA \
         loop on one thread, then on every thread at once; the second figure is only as good as \
         the cores were free."
            .into(),
        "Worst case: K users chosen greedily, each adding the most retraining given those \
         before it: users with a row in the first slice of a shard no earlier user has hit."
            .into(),
    ];
    if opts.row_sharding {
        v.push(format!(
            "Sharding by row (`--shard-by row`, the paper's rule) is measured at R = {max_r} for \
             every S > 1: a user's rows land in several shards and every one of them retrains, \
             which is what sharding by user (the default) saves."
        ));
    }
    if let Some(n) = &opts.dataset_note {
        v.push(n.clone());
    }
    v
}
