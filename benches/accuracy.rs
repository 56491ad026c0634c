//! `cargo bench --bench accuracy`: what each training option buys in accuracy, and what it
//! costs in rows×epochs, at S = 1, 5, 10 and 20.
//!
//! Datasets: the bundled `datasets/mnist-5k` (4,050 training rows, 950 held out), and
//! Fashion-MNIST (60,000 training images, the 10,000 test images held out, users
//! `uniform:20000`) when Debian's `dataset-fashion-mnist` is installed (or
//! `SISA_FASHION_MNIST` names its directory). Option sets, each trained from scratch at every S:
//!
//! - `mlp`: `models/mlp.toml` as it is (per-feature standardization, 30 epochs, batch 64);
//! - `mlp, global`: the same with one mean and deviation over all pixels;
//! - `mlp, global, min_steps`: the same with `min_steps` set so that S = 20 shards train 1.5×
//!   the preset's epochs (larger shards are raised less, or not at all);
//! - `mlp-image`: `models/mlp-image.toml` (pixels / 255, shifts of up to 1 pixel, the SISA
//!   reference code's Adam, lr 0.001, batch 128, 20 epochs), and the same without shifts;
//! - `cnn`: `models/cnn.toml` (pixels / 255, shifts), and the same with per-feature
//!   standardization and no shifts (the preset before image defaults).
//!
//! Every configuration trains at R = 1 for S = 1, 5, 10, 20, and the MLP sets also at S = 20,
//! R = 10. For each: held-out accuracy under mean, vote and weighted aggregation, the
//! rows×epochs of training every shard (a full retrain), that as a multiple of the option
//! set's S = 1 run, and the expected rows×epochs of forgetting one user. On mnist-5k the S = 1
//! runs are repeated over seeds 1, 2, 3 and the median is reported beside seed 7.
//!
//! The tables go to stdout and to `docs/bench/accuracy.md`. `SISA_BENCH_THREADS` sets the
//! worker count (default 2); `SISA_BENCH_QUICK=1` keeps only the MLP sets on mnist-5k.

mod common;

use common::*;

use sisa::ensemble::Ensemble;
use sisa::model::{ModelSpec, Standardize};
use sisa::plan::{ShardBy, SliceBy};
use sisa::run::{Aggregation, Run};
use sisa::train::TrainOptions;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SHARDS: [usize; 4] = [1, 5, 10, 20];
const SEED: u64 = 7;
const MEDIAN_SEEDS: [u64; 3] = [1, 2, 3];

/// Where a dataset's files are.
struct Dataset {
    name: &'static str,
    train: PathBuf,
    test: PathBuf,
    users: Option<sisa::data::UserRule>,
    /// Repeat S = 1 over [`MEDIAN_SEEDS`].
    seeds: bool,
}

/// One option set: a preset and what is changed in it.
struct OptionSet {
    name: &'static str,
    preset: &'static str,
    change: fn(&mut ModelSpec, rows: usize),
    cnn: bool,
}

fn as_is(_: &mut ModelSpec, _: usize) {}
fn global(m: &mut ModelSpec, _: usize) {
    m.standardize = Standardize::Global;
}
/// Global standardization and enough steps that S = 20 shards train 1.5× the epochs.
fn global_min_steps(m: &mut ModelSpec, rows: usize) {
    m.standardize = Standardize::Global;
    let shard = rows.div_ceil(20) as u64;
    // Rounded down, so that the epochs this resolves to (rounded up) stay within 1.5×.
    m.min_steps = Some(m.epochs as u64 * 3 / 2 * shard / m.batch_size as u64);
}
fn no_shifts(m: &mut ModelSpec, _: usize) {
    m.augment = None;
}
fn feature_no_shifts(m: &mut ModelSpec, _: usize) {
    m.augment = None;
    m.scale = None;
    m.standardize = Standardize::Feature;
}

fn option_sets() -> Vec<OptionSet> {
    let set = |name, preset, change, cnn| OptionSet {
        name,
        preset,
        change,
        cnn,
    };
    vec![
        set(
            "mlp",
            "models/mlp.toml",
            as_is as fn(&mut ModelSpec, usize),
            false,
        ),
        set("mlp, global", "models/mlp.toml", global, false),
        set(
            "mlp, global, min_steps",
            "models/mlp.toml",
            global_min_steps,
            false,
        ),
        set("mlp-image", "models/mlp-image.toml", as_is, false),
        set(
            "mlp-image, no shifts",
            "models/mlp-image.toml",
            no_shifts,
            false,
        ),
        set("cnn", "models/cnn.toml", as_is, true),
        set(
            "cnn, feature, no shifts",
            "models/cnn.toml",
            feature_no_shifts,
            true,
        ),
    ]
}

/// One trained configuration's figures.
struct Figures {
    mean: f64,
    vote: f64,
    weighted: f64,
    rows_epochs: u64,
    one_user: f64,
    epochs: u32,
}

/// The input at `path`, its users from `users` when the data has none.
fn input(path: &Path, users: Option<sisa::data::UserRule>) -> sisa::data::InputSpec {
    let spec = sisa::data::InputSpec::file(path);
    match users {
        Some(rule) => spec.with_users(sisa::data::Users::Rule(rule)),
        None => spec,
    }
}

fn train_one(
    root: &Path,
    data: &Dataset,
    set: &OptionSet,
    rows: usize,
    (shards, slices, seed): (usize, usize, u64),
    out: &Path,
) -> anyhow::Result<Figures> {
    let mut model = ModelSpec::load(&root.join(set.preset))?;
    (set.change)(&mut model, rows);
    model.validate()?;
    let opts = TrainOptions {
        data: input(&data.train, data.users),
        test: Some(input(&data.test, data.users)),
        model,
        shards,
        slices,
        seed,
        shard_by: ShardBy::User,
        slice_by: SliceBy::User,
        priors: None,
        risk_shards: 0,
        out: out.to_path_buf(),
        classes: None,
        threads: threads(),
        progress: false,
        aggregation: Aggregation::Mean,
        ledger: None,
        backend: Default::default(),
        device: Default::default(),
    };
    let summary = sisa::train::train_run(&opts)?;
    let figures = measure(&summary.run, summary.rows_epochs)?;
    std::fs::remove_dir_all(out)?;
    Ok(figures)
}

fn measure(run: &Run, rows_epochs: u64) -> anyhow::Result<Figures> {
    let test = run
        .test_rows()?
        .ok_or_else(|| anyhow::anyhow!("the run has no held-out rows"))?;
    let ev = Ensemble::load(run)?.evaluate(&test.x, &test.labels, Aggregation::Mean);
    let one_user = run.expected_one_user_rows_epochs();
    Ok(Figures {
        mean: ev.by_aggregation["mean"],
        vote: ev.by_aggregation["vote"],
        weighted: ev.by_aggregation["weighted"],
        rows_epochs,
        one_user,
        epochs: run.config.model.epochs,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn datasets(root: &Path) -> Vec<Dataset> {
    let mut out = vec![Dataset {
        name: "mnist-5k",
        train: root.join("datasets/mnist-5k/train.csv.gz"),
        test: root.join("datasets/mnist-5k/test.csv.gz"),
        users: None,
        seeds: true,
    }];
    let fashion = std::env::var_os("SISA_FASHION_MNIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"));
    let train = fashion.join("train-images-idx3-ubyte.gz");
    if train.exists() {
        out.push(Dataset {
            name: "Fashion-MNIST",
            train,
            test: fashion.join("t10k-images-idx3-ubyte.gz"),
            users: Some("uniform:20000".parse().expect("a valid user rule")),
            seeds: false,
        });
    } else {
        eprintln!(
            "accuracy: Fashion-MNIST not found at {} (apt-get install dataset-fashion-mnist, or set SISA_FASHION_MNIST); measuring mnist-5k only",
            fashion.display()
        );
    }
    out
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let quick = std::env::var_os("SISA_BENCH_QUICK").is_some();
    let tmp = tempfile::tempdir()?;
    let started = Instant::now();
    let mut md = String::new();
    let (nproc, cpu) = machine();
    wln!(md, "# Accuracy and cost of the training options\n");
    wln!(
        md,
        "Measured by `cargo bench --bench accuracy` on {cpu} ({nproc} cores, {} workers), {}.",
        threads(),
        git_state(&root)
    );
    wln!(
        md,
        "Held-out accuracy, users sharded and sliced by user, seed {SEED}: mean / vote / weighted aggregation. \
         \"rows×epochs\" is the cost of training every shard (a full retrain), \"×S=1\" that as a multiple of the \
         same option set at S = 1, \"one user\" the expected rows×epochs of forgetting one user.\n"
    );
    let mut datasets = datasets(&root);
    if quick {
        datasets.truncate(1);
    }
    for data in &datasets {
        let rows = sisa::data::read_labelled(
            &input(&data.train, data.users),
            sisa::data::Features::All,
            SEED,
            sisa::data::Role::Train,
        )?
        .len();
        wln!(md, "## {} ({rows} training rows)\n", data.name);
        wln!(
            md,
            "| option set | S | R | epochs | accuracy (mean / vote / weighted) | rows×epochs | ×S=1 | one user |"
        );
        wln!(md, "|---|---|---|---|---|---|---|---|");
        for set in option_sets() {
            if quick && set.cnn {
                continue;
            }
            let mut configs: Vec<(usize, usize)> = SHARDS.iter().map(|&s| (s, 1)).collect();
            if !set.cnn {
                configs.push((20, 10));
            }
            let mut base = None;
            for (shards, slices) in configs {
                let out = tmp.path().join("run");
                let f = train_one(&root, data, &set, rows, (shards, slices, SEED), &out)?;
                let base_cost = *base.get_or_insert(f.rows_epochs);
                let mut accuracy = format!("{:.4} / {:.4} / {:.4}", f.mean, f.vote, f.weighted);
                if data.seeds && shards == 1 {
                    let mut accs = Vec::new();
                    for seed in MEDIAN_SEEDS {
                        let g = train_one(&root, data, &set, rows, (shards, slices, seed), &out)?;
                        accs.push(g.mean);
                    }
                    accuracy.push_str(&format!(
                        " (seeds 1–3: median {:.4}, {:.4}–{:.4})",
                        median(accs.clone()),
                        accs.iter().copied().fold(f64::INFINITY, f64::min),
                        accs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    ));
                }
                let line = format!(
                    "| {} | {shards} | {slices} | {} | {accuracy} | {} | {:.2} | {:.0} |",
                    set.name,
                    f.epochs,
                    f.rows_epochs,
                    f.rows_epochs as f64 / base_cost as f64,
                    f.one_user,
                );
                println!("{} {line}", data.name);
                wln!(md, "{line}");
            }
        }
        wln!(md, "");
    }
    wln!(
        md,
        "The whole benchmark took {:.0} s; load average at the end {}.",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    if !quick {
        let path = root.join("docs/bench/accuracy.md");
        std::fs::write(&path, &md)?;
        println!("wrote {}", path.display());
    } else {
        print!("{md}");
    }
    Ok(())
}
