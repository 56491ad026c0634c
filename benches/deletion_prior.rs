//! `cargo bench --bench deletion_prior`: deletion-aware placement (SISA paper §V).
//!
//! On the bundled digits data (`datasets/digits`, 1,412 training rows of 323 users), a seeded
//! deletion prior gives 10% of the users p = 0.5 and the rest p = 0.01; with the threshold
//! 0.25 the first group are the likely requesters. Three runs on the same rows, S = 10, R = 5,
//! the MLP preset at its own epochs: (a) uniform placement (no prior), (b) the prior with
//! likely requesters in the last slice of their shard, (c) the same and 2 shards set aside
//! for them. For each run:
//!
//! - the expected cost of one request under the prior, `Σ_u p_u · cost(u) / Σ_u p_u`, where
//!   `cost(u)` is the rows×epochs of the dry-run plan (`resolve` + `plan`, nothing changed) of
//!   forgetting user u alone, and beside it the mean over users drawn uniformly;
//! - the measured cost of forgetting 20 users drawn from the prior (seeded, without
//!   replacement, the same 20 users for every run), one request each, in sequence on the run;
//! - held-out accuracy on `datasets/digits/test.csv`, before and after those 20 requests.
//!
//! The table goes to stdout and to `docs/bench/deletion-prior.md`. Runs live in a temp dir.
//! `SISA_BENCH_THREADS` sets the worker count (default 2).

mod common;

use common::*;

use sisa::data::csv::Table;
use sisa::data::Priors;
use sisa::model::ModelSpec;
use sisa::plan::{ShardBy, SliceBy};
use sisa::rng::SplitMix64;
use sisa::run::Aggregation;
use sisa::train::TrainOptions;
use sisa::unlearn::{Options, Unlearner};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SHARDS: usize = 10;
const SLICES: usize = 5;
const RISK_SHARDS: usize = 2;
/// Share of users who are likely requesters.
const LIKELY_SHARE: f64 = 0.10;
const P_LIKELY: f64 = 0.5;
const P_OTHER: f64 = 0.01;
const THRESHOLD: f64 = 0.25;
/// Users forgotten per run.
const REQUESTS: usize = 20;
const SEED: u64 = 7;

/// One of the three placements.
struct Placement {
    name: &'static str,
    what: &'static str,
    priors: bool,
    risk_shards: usize,
}

const PLACEMENTS: [Placement; 3] = [
    Placement {
        name: "(a) uniform",
        what: "no prior: every user hashed over all shards and slices",
        priors: false,
        risk_shards: 0,
    },
    Placement {
        name: "(b) prior, last slice",
        what: "likely requesters in the last slice of their shard, all 10 shards shared",
        priors: true,
        risk_shards: 0,
    },
    Placement {
        name: "(c) prior, 2 risk shards",
        what: "likely requesters in the last slice of the last 2 shards, which hold no one else",
        priors: true,
        risk_shards: RISK_SHARDS,
    },
];

/// What one placement measured.
struct Measured {
    /// Prior-weighted expected rows×epochs of one request.
    expected: f64,
    /// Mean over all users (a user drawn uniformly).
    uniform: f64,
    /// Mean cost of a likely requester, and of anyone else.
    likely_mean: f64,
    other_mean: f64,
    /// Mean measured rows×epochs, wall time and stages retrained of the executed requests.
    measured: f64,
    wall: f64,
    stages: f64,
    /// Rows×epochs of one full retrain (the receipts' baseline), mean over the requests.
    full: f64,
    train_wall: f64,
    /// Rows in each shard.
    shard_rows: Vec<u64>,
    accuracy_before: f64,
    accuracy_after: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn train_options(
    root: &Path,
    model: &ModelSpec,
    priors: Option<Priors>,
    risk_shards: usize,
    out: PathBuf,
) -> TrainOptions {
    TrainOptions {
        data: sisa::data::InputSpec::file(root.join("datasets/digits/train.csv")),
        test: Some(sisa::data::InputSpec::file(
            root.join("datasets/digits/test.csv"),
        )),
        model: model.clone(),
        shards: SHARDS,
        slices: SLICES,
        seed: SEED,
        shard_by: ShardBy::User,
        slice_by: SliceBy::User,
        priors,
        risk_shards,
        out,
        classes: None,
        threads: threads(),
        progress: false,
        aggregation: Aggregation::Mean,
        ledger: None,
        backend: sisa::model::Backend::Dense,
        device: Default::default(),
    }
}

/// `k` distinct users drawn with probability proportional to their prior, one at a time from
/// those not yet drawn.
fn draw(users: &[String], prior: &HashMap<String, f64>, k: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    let mut left: Vec<&String> = users.iter().collect();
    let mut out = Vec::new();
    while out.len() < k && !left.is_empty() {
        let total: f64 = left.iter().map(|u| prior[*u]).sum();
        let mut x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut pick = left.len() - 1;
        for (i, u) in left.iter().enumerate() {
            x -= prior[*u];
            if x < 0.0 {
                pick = i;
                break;
            }
        }
        out.push(left.remove(pick).clone());
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn measure(
    root: &Path,
    tmp: &Path,
    model: &ModelSpec,
    place: &Placement,
    train: &Table,
    test: &Table,
    users: &[String],
    prior: &HashMap<String, f64>,
    priors: &Priors,
    drawn: &[String],
) -> anyhow::Result<Measured> {
    let dir = tmp.join(
        place
            .name
            .split(' ')
            .next()
            .unwrap_or("run")
            .trim_matches(['(', ')']),
    );
    let opts = train_options(
        root,
        model,
        place.priors.then(|| priors.clone()),
        place.risk_shards,
        dir.clone(),
    );
    let started = Instant::now();
    let summary = sisa::train::train_tables(&opts, train, None)?;
    let train_wall = started.elapsed().as_secs_f64();
    let accuracy_before = accuracy(&summary.run, test)?;
    drop(summary);

    let uopts = Options {
        threads: threads(),
        progress: false,
    };
    let mut unlearner = Unlearner::open(&dir, None, &uopts)?;
    let shard_rows = unlearner
        .run()
        .manifest
        .shards
        .iter()
        .map(|s| s.data.rows)
        .collect();
    // Dry-run plans of every user alone: nothing changes.
    let mut weighted = 0.0;
    let mut weight = 0.0;
    let mut all = Vec::new();
    let (mut likely, mut other) = (Vec::new(), Vec::new());
    for u in users {
        let resolved = unlearner.resolve(std::slice::from_ref(u))?;
        let cost = unlearner.plan(&resolved).retrain_rows_epochs as f64;
        let p = prior[u];
        weighted += p * cost;
        weight += p;
        all.push(cost);
        if priors.likely(u) {
            likely.push(cost);
        } else {
            other.push(cost);
        }
    }
    let (mut costs, mut walls, mut stages, mut full) = (vec![], vec![], vec![], vec![]);
    for u in drawn {
        // Every dirty page written back first (sync(2)), so that the request's fsyncs wait on
        // its own writes only. SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let started = Instant::now();
        let receipt = unlearner.forget(std::slice::from_ref(u))?;
        walls.push(started.elapsed().as_secs_f64());
        costs.push(receipt.cost.retrained_rows_epochs as f64);
        full.push(receipt.cost.full_retrain_rows_epochs as f64);
        stages.push(
            receipt
                .shards
                .iter()
                .map(|s| s.stages_retrained as f64)
                .sum(),
        );
    }
    let accuracy_after = accuracy(unlearner.run(), test)?;
    drop(unlearner);
    std::fs::remove_dir_all(&dir)?;
    let m = Measured {
        expected: weighted / weight,
        uniform: mean(&all),
        likely_mean: mean(&likely),
        other_mean: mean(&other),
        measured: mean(&costs),
        wall: mean(&walls),
        stages: mean(&stages),
        full: mean(&full),
        train_wall,
        shard_rows,
        accuracy_before,
        accuracy_after,
    };
    eprintln!(
        "deletion_prior: {}: expected {:.0} rows×epochs per request, measured {:.0} over {} \
         requests, accuracy {:.4} → {:.4}",
        place.name,
        m.expected,
        m.measured,
        drawn.len(),
        m.accuracy_before,
        m.accuracy_after
    );
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = ModelSpec::load(&root.join("models/mlp.toml"))?;
    let template = train_options(root, &model, None, 0, PathBuf::from("unused"));
    let (train, test) = sisa::train::read_tables(&template)?;
    let test = test.ok_or_else(|| anyhow::anyhow!("the digits test file did not load"))?;
    let ids = train
        .user_ids
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("digits train.csv has no user_id column"))?;
    let mut users: Vec<String> = ids.clone();
    users.sort();
    users.dedup();
    let mut rows_of: HashMap<&str, u64> = HashMap::new();
    for id in ids {
        *rows_of.entry(id.as_str()).or_default() += 1;
    }

    // The prior: a seeded shuffle, the first 10% likely.
    let mut order = users.clone();
    let mut rng = SplitMix64::new(SEED ^ 0x0050_5249_4F52);
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let n_likely = (users.len() as f64 * LIKELY_SHARE).round() as usize;
    let prior: HashMap<String, f64> = order
        .iter()
        .enumerate()
        .map(|(i, u)| (u.clone(), if i < n_likely { P_LIKELY } else { P_OTHER }))
        .collect();
    let priors = Priors::from_map(prior.clone(), THRESHOLD);
    let likely_rows: u64 = order[..n_likely].iter().map(|u| rows_of[u.as_str()]).sum();
    let drawn = draw(&users, &prior, REQUESTS, SEED ^ 0xD4A3);
    let drawn_likely = drawn.iter().filter(|u| priors.likely(u)).count();
    eprintln!(
        "deletion_prior: {} rows, {} users, {n_likely} likely requesters ({likely_rows} rows); \
         {drawn_likely} of the {REQUESTS} drawn users are likely requesters",
        train.len(),
        users.len()
    );

    let tmp = tempfile::Builder::new()
        .prefix("sisa-deletion-prior-")
        .tempdir()?;
    let started = Instant::now();
    let mut results = Vec::new();
    for place in &PLACEMENTS {
        results.push(measure(
            root,
            tmp.path(),
            &model,
            place,
            &train,
            &test,
            &users,
            &prior,
            &priors,
            &drawn,
        )?);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(tmp);

    let base = results[0].expected;
    let mut table = String::new();
    table.push_str(
        "| placement | expected rows×epochs / request (prior) | vs (a) | mean over users \
         (uniform draw) | likely requester | other user | measured rows×epochs / request (20) \
         | measured wall s / request | stages retrained / request | accuracy | accuracy after \
         20 requests |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (p, m) in PLACEMENTS.iter().zip(&results) {
        wln!(
            table,
            "| {} | {:.0} | {:.2}× | {:.0} | {:.0} | {:.0} | {:.0} | {:.4} | {:.2} | {:.4} | {:.4} |",
            p.name,
            m.expected,
            base / m.expected,
            m.uniform,
            m.likely_mean,
            m.other_mean,
            m.measured,
            m.wall,
            m.stages,
            m.accuracy_before,
            m.accuracy_after
        );
    }
    print!("{table}");

    let (nproc, cpu) = (
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_else(|_| "?".into()),
        sisa::run::config::cpu_model(),
    );
    let mut command = String::new();
    if let Ok(v) = std::env::var("SISA_BENCH_THREADS") {
        command.push_str(&format!("SISA_BENCH_THREADS={v} "));
    }
    command.push_str("cargo bench --bench deletion_prior");
    let mut md = String::new();
    wln!(md, "# Deletion-aware placement (SISA paper §V)\n");
    wln!(md, "```\n{command}\n```\n");
    wln!(
        md,
        "Library: {}. Machine: `nproc` = {nproc}, CPU `{cpu}`, {} worker threads; \
         {seconds:.1} s in all. \
         Wall times are tiny here and the cores are shared with other builds and tests: read \
         them as indicative; the rows×epochs are exact.\n",
        git_state(root),
        threads()
    );
    wln!(
        md,
        "Setup: `datasets/digits` ({} training rows, {} users, {:.1} rows per user; {} held-out \
         rows in `test.csv`), S = {SHARDS}, R = {SLICES}, user sharding and user slicing, the \
         `mlp` preset at its {} epochs (stage epochs {:?}). Deletion prior (seeded): {n_likely} \
         users ({:.0}%, {likely_rows} rows) have p = {P_LIKELY}, the other {} p = {P_OTHER}; \
         threshold {THRESHOLD}, so the first group are the likely requesters. The same prior \
         and the same rows for every run; only the placement differs:\n",
        train.len(),
        users.len(),
        train.len() as f64 / users.len() as f64,
        test.len(),
        model.epochs,
        sisa::plan::stage_epochs(model.epochs, SLICES),
        LIKELY_SHARE * 100.0,
        users.len() - n_likely,
    );
    for p in &PLACEMENTS {
        wln!(md, "- {}: {}.", p.name, p.what);
    }
    wln!(
        md,
        "\nExpected cost: Σ_u p_u · cost(u) / Σ_u p_u over all {} users, where cost(u) is the \
         retrain rows×epochs of the dry-run plan of forgetting u alone (`Unlearner::resolve` + \
         `plan` on the trained run; nothing changed). *vs (a)* is (a)'s expected cost over this one's. *Mean over users* is the same cost for a \
         user drawn uniformly, and the next two columns split it by group. Measured: {REQUESTS} \
         users drawn from the prior (seeded, proportional to p, without replacement: \
         {drawn_likely} of them likely requesters), the same users for every run, forgotten one \
         request each in sequence on the run; the mean of the receipts' \
         `cost.retrained_rows_epochs` and of the wall time of `forget` (every dirty page written \
         back with sync(2) before each request, so its fsyncs wait on its own writes only). One full retrain (one \
         model on all remaining rows, {} epochs) is {:.0} rows×epochs. Accuracy: mean \
         aggregation on `test.csv`, before the requests and after all {REQUESTS}.\n",
        users.len(),
        model.epochs,
        results[0].full,
    );
    md.push_str(&table);
    wln!(
        md,
        "\nRows per shard, and the wall time of training the run:\n"
    );
    md.push_str("| placement | rows in shards 0..9 | train s |\n|---|---|---:|\n");
    for (p, m) in PLACEMENTS.iter().zip(&results) {
        wln!(
            md,
            "| {} | {:?} | {:.2} |",
            p.name,
            m.shard_rows,
            m.train_wall
        );
    }
    wln!(md, "\n## Reading\n\n{}", reading(&results, test.len()));
    let out = root.join("docs/bench/deletion-prior.md");
    std::fs::create_dir_all(out.parent().expect("a file under docs/bench"))?;
    std::fs::write(&out, md)?;
    eprintln!("deletion_prior: {} written", out.display());
    Ok(())
}

/// A short reading written from the numbers.
fn reading(r: &[Measured], test_rows: usize) -> String {
    let (a, b, c) = (&r[0], &r[1], &r[2]);
    format!(
        "Under the prior, one request is expected to retrain {:.0} rows×epochs with uniform \
         placement, {:.0} with likely requesters in the last slice ({:.2}× less) and {:.0} with \
         them also in {RISK_SHARDS} shards of their own ({:.2}× less). The gain comes from \
         where the likely requesters sit: forgetting one costs {:.0} rows×epochs in (a), {:.0} \
         in (b) (only the last stage of their shard retrains) and {:.0} in (c) (the last stage \
         of a smaller shard), while anyone else costs {:.0}, {:.0} and {:.0}: in (c) the other \
         users share {} shards instead of {SHARDS}, so their shards, and their rare requests, \
         grow. The {REQUESTS} executed requests measured {:.0}, {:.0} and {:.0} rows×epochs on \
         average, {:.2}, {:.2} and {:.2} of the expectations (a sample of {REQUESTS} users, and \
         each request shrinks its shard a little for the next). Held-out accuracy was {:.4} (a), {:.4} (b) and \
         {:.4} (c), one seed each on {} held-out rows (one row is {:.2} points).",
        a.expected,
        b.expected,
        a.expected / b.expected,
        c.expected,
        a.expected / c.expected,
        a.likely_mean,
        b.likely_mean,
        c.likely_mean,
        a.other_mean,
        b.other_mean,
        c.other_mean,
        SHARDS - RISK_SHARDS,
        a.measured,
        b.measured,
        c.measured,
        a.measured / a.expected,
        b.measured / b.expected,
        c.measured / c.expected,
        a.accuracy_before,
        b.accuracy_before,
        c.accuracy_before,
        test_rows,
        100.0 / test_rows as f64,
    )
}
