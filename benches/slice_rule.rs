//! `cargo bench --bench slice_rule`: what one user's deletion costs under each slice rule,
//! against the SISA paper's expectation for one row.
//!
//! Fashion-MNIST (Debian's `dataset-fashion-mnist`) when installed, else the bundled mnist-5k;
//! 8,000 uniform users (about 7.5 rows each), the MLP preset, S = 20, R = 10, 11 epochs (so
//! SISA's recalibration gives exactly 2 epochs a stage). For each rule the run is trained once,
//! then the first 50 users owning 5 to 10 rows are planned one at a time (rows×epochs, exactly
//! what a deletion retrains: the tests check that the plan prices what runs), and the first 3 of
//! them are forgotten for real to show plan = receipt. The table goes to stdout and to
//! `docs/bench/slice-rule.md`.

use sisa::plan::{formula, ShardBy, SliceBy};
use sisa::run::Aggregation;
use sisa::train::{self, TrainOptions};
use sisa::unlearn::{Options, Unlearner};
use std::fmt::Write as _;
use std::path::Path;

const SHARDS: usize = 20;
const SLICES: usize = 10;
const EPOCHS: u32 = 11;
const USERS: usize = 50;

struct Outcome {
    rule: SliceBy,
    mean: f64,
    min: f64,
    max: f64,
    paper_one_row: f64,
    expected_users: f64,
    forgotten: Vec<(u64, u64)>,
    mean_rows: f64,
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let standard = sisa::bench::standard_data(&root.join("datasets"));
    let tmp = tempfile::tempdir()?;
    let mut model = sisa::model::ModelSpec::load(&root.join("models/mlp.toml"))?;
    model.epochs = EPOCHS;
    let threads = sisa::train::default_threads();
    let mut outcomes = Vec::new();
    for rule in [SliceBy::User, SliceBy::Row] {
        let out = tmp.path().join(format!("{rule:?}"));
        let opts = TrainOptions {
            data: sisa::data::InputSpec::file(&standard.data).with_users(sisa::data::Users::Rule(
                "uniform:8000".parse().map_err(anyhow::Error::msg)?,
            )),
            test: None,
            model: model.clone(),
            shards: SHARDS,
            slices: SLICES,
            seed: 7,
            shard_by: ShardBy::User,
            slice_by: rule,
            priors: None,
            risk_shards: 0,
            out: out.clone(),
            classes: None,
            threads,
            progress: false,
            aggregation: Aggregation::Mean,
            backend: sisa::model::Backend::Dense,
            device: Default::default(),
            ledger: None,
        };
        eprintln!("slice_rule: training {} sliced by {rule:?}", standard.name);
        train::train_run(&opts)?;
        let uopts = Options {
            threads,
            progress: false,
        };
        let mut unlearner = Unlearner::open(&out, None, &uopts)?;
        let total: u64 = unlearner
            .run()
            .manifest
            .shards
            .iter()
            .map(|s| s.data.rows)
            .sum();
        let mut costs = Vec::new();
        let mut rows = Vec::new();
        let mut chosen = Vec::new();
        for u in 0..8000 {
            let id = format!("u{u}");
            let Ok(resolved) = unlearner.resolve(std::slice::from_ref(&id)) else {
                continue;
            };
            let plan = unlearner.plan(&resolved);
            if !(5..=10).contains(&plan.train_rows_removed) {
                continue;
            }
            costs.push(plan.retrain_rows_epochs as f64);
            rows.push(plan.train_rows_removed as u32);
            chosen.push(id);
            if costs.len() == USERS {
                break;
            }
        }
        let mut forgotten = Vec::new();
        for id in chosen.iter().take(3) {
            let resolved = unlearner.resolve(std::slice::from_ref(id))?;
            let planned = unlearner.plan(&resolved).retrain_rows_epochs;
            let r = unlearner.accept(resolved)?;
            let receipt = unlearner.complete(r)?;
            forgotten.push((planned, receipt.cost.retrained_rows_epochs));
        }
        let stage_epochs = unlearner.run().config.stage_epochs.clone();
        let n = costs.len() as f64;
        outcomes.push(Outcome {
            rule,
            mean: costs.iter().sum::<f64>() / n,
            min: costs.iter().copied().fold(f64::INFINITY, f64::min),
            max: costs.iter().copied().fold(0.0, f64::max),
            paper_one_row: formula::paper_rows_epochs(total as f64, SHARDS, &stage_epochs, 1),
            expected_users: formula::users_rows_epochs(
                total as f64,
                SHARDS,
                &stage_epochs,
                1,
                &rows,
                (ShardBy::User, rule),
            ),
            forgotten,
            mean_rows: rows.iter().map(|&r| r as f64).sum::<f64>() / n,
        });
    }
    let mut md = String::new();
    writeln!(md, "# One user's deletion under each slice rule\n")?;
    writeln!(md, "Command: `cargo bench --bench slice_rule`. Data: {}, 8,000 uniform users, MLP preset, S = {SHARDS}, R = {SLICES}, {EPOCHS} epochs (2 a stage), sharded by user. {USERS} users of 5 to 10 rows each, planned one at a time; cost in rows×epochs retrained.\n", standard.name)?;
    writeln!(md, "| slice rule | users | mean rows | mean cost | min | max | paper, one row | mean / paper | expected for these users | plan = receipt (3 forgotten) |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    for o in &outcomes {
        writeln!(
            md,
            "| {:?} | {USERS} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {:.0} | {} |",
            o.rule,
            o.mean_rows,
            o.mean,
            o.min,
            o.max,
            o.paper_one_row,
            o.mean / o.paper_one_row,
            o.expected_users,
            if o.forgotten.iter().all(|(p, r)| p == r) {
                "yes"
            } else {
                "NO"
            }
        )?;
    }
    writeln!(
        md,
        "\nSliced by user, a user's rows share one slice, so a user costs what the paper's one row costs; sliced by row, a user of m rows reaches back to the earliest of m slices."
    )?;
    print!("{md}");
    let path = root.join("docs/bench/slice-rule.md");
    std::fs::create_dir_all(path.parent().expect("a file in docs/bench"))?;
    std::fs::write(&path, &md)?;
    eprintln!("slice_rule: wrote {}", path.display());
    Ok(())
}
