//! The central property: after any sequence of unlearning requests, every shard is bitwise
//! identical to the shard trained from scratch, with the same configuration and seed, on what
//! remains. Random deletion sequences, seeded, over the MLP, logistic regression and a CNN,
//! both backends, both sharding rules, both slicing rules, deletion-aware placement, every
//! preprocessing, augmentation and epochs raised for small shards; and the ensemble answers
//! every aggregation (the weighted one too) with the same bits as the from-scratch ensemble.

mod common;

use common::*;
use sisa::data::csv::Columns;
use sisa::data::Priors;
use sisa::ensemble::Ensemble;
use sisa::model::{Augment, Backend, ModelSpec, Standardize};
use sisa::plan::{ShardBy, SliceBy};
use sisa::run::{Aggregation, Run};
use sisa::train::{self, TrainOptions};
use sisa::unlearn::{Ledger, Options, Unlearner};
use std::path::Path;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// One configuration of the oracle: a preset, its backend, the sharding and slicing rules,
/// and whether a deletion prior sets a shard aside for likely requesters.
#[derive(Clone, Copy, Debug)]
struct Config<'a> {
    preset: &'a Path,
    backend: Backend,
    shard_by: ShardBy,
    slice_by: SliceBy,
    risk: bool,
    tweak: Tweak,
}

/// Training options beyond the preset's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tweak {
    /// The preset as it is.
    None,
    /// Pixels (0..16 on digits) scaled by 1/16 and shifted by up to one pixel while training.
    ScaledAndShifted,
    /// One mean and deviation over all pixels, shifts while training.
    GlobalAndShifted,
    /// Epochs raised so that each shard takes at least 100 steps.
    MinSteps,
}

/// Priors for the oracle's data: every fifth user is a likely requester.
fn priors(users: &[String]) -> Priors {
    let map = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.clone(), if i % 5 == 0 { 0.9 } else { 0.01 }))
        .collect();
    Priors::from_map(map, 0.5)
}

fn options(data: &Path, out: &Path, c: Config<'_>, seed: u64, users: &[String]) -> TrainOptions {
    let mut model = ModelSpec::load(c.preset).unwrap();
    model.epochs = 6;
    model.batch_size = 16;
    match c.tweak {
        Tweak::None => {}
        Tweak::ScaledAndShifted => {
            model.standardize = Standardize::None;
            model.scale = Some(1.0 / 16.0);
            model.augment = Some(Augment { shift: 1 });
        }
        Tweak::GlobalAndShifted => {
            model.standardize = Standardize::Global;
            model.augment = Some(Augment { shift: 1 });
        }
        Tweak::MinSteps => model.min_steps = Some(100),
    }
    TrainOptions {
        data: sisa::data::InputSpec::file(data),
        test: None,
        model,
        shards: 3,
        slices: 3,
        seed,
        shard_by: c.shard_by,
        slice_by: c.slice_by,
        priors: c.risk.then(|| priors(users)),
        risk_shards: usize::from(c.risk),
        out: out.to_path_buf(),
        classes: Some(10),
        threads: 2,
        progress: false,
        aggregation: Aggregation::Mean,
        ledger: None,
        backend: c.backend,
        device: Default::default(),
    }
}

/// Per shard: every stage's lineage and checkpoint digest, and the model digest.
fn fingerprint(run: &Run) -> Vec<(Vec<String>, String)> {
    run.manifest
        .shards
        .iter()
        .map(|s| {
            (
                s.stages
                    .iter()
                    .map(|st| format!("{} {}", st.lineage, st.file_digest))
                    .collect(),
                s.model_digest.clone(),
            )
        })
        .collect()
}

#[test]
fn random_deletion_sequences_equal_training_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = Csv::read(&digits().0);
    let base_csv = tmp.path().join("base.csv");
    csv.write_first(450, &base_csv);
    let base = Csv::read(&base_csv);
    let users: Vec<String> = base.users().into_iter().map(|(u, _)| u).collect();
    let mut rng = Lcg(2021);
    let table = sisa::data::csv::read_csv(
        &base_csv,
        &Columns::default(),
        sisa::data::csv::Need::Optional,
        sisa::data::csv::Need::Optional,
    )
    .unwrap();
    let (x_all, n_all) = (table.x.clone(), table.len());
    let (mlp, logreg) = (
        root().join("models/mlp.toml"),
        root().join("models/logreg.toml"),
    );
    let cnn = cnn_preset(tmp.path());
    let tweaked = |preset, backend, shard_by, slice_by, risk, tweak| Config {
        preset,
        backend,
        shard_by,
        slice_by,
        risk,
        tweak,
    };
    let config = |preset, backend, shard_by, slice_by, risk| {
        tweaked(preset, backend, shard_by, slice_by, risk, Tweak::None)
    };
    let (user, row) = (SliceBy::User, SliceBy::Row);
    let configs = [
        config(&mlp, Backend::Dense, ShardBy::User, user, false),
        config(&logreg, Backend::Dense, ShardBy::User, row, false),
        config(&mlp, Backend::Dense, ShardBy::Row, row, false),
        config(&cnn, Backend::Dense, ShardBy::User, user, false),
        config(&cnn, Backend::Candle, ShardBy::User, row, false),
        config(&mlp, Backend::Candle, ShardBy::Row, user, false),
        config(&mlp, Backend::Dense, ShardBy::User, user, true),
        config(&logreg, Backend::Dense, ShardBy::Row, row, true),
        tweaked(
            &cnn,
            Backend::Dense,
            ShardBy::User,
            user,
            false,
            Tweak::ScaledAndShifted,
        ),
        tweaked(
            &cnn,
            Backend::Candle,
            ShardBy::User,
            row,
            true,
            Tweak::GlobalAndShifted,
        ),
        tweaked(
            &mlp,
            Backend::Dense,
            ShardBy::User,
            user,
            true,
            Tweak::MinSteps,
        ),
    ];
    let mut bases = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let dir = tmp.path().join(format!("base-{i}"));
        train::train_run(&options(&base_csv, &dir, *c, 7, &users)).unwrap();
        bases.push(dir);
    }
    let cases = 33;
    for case in 0..cases {
        let which = case % configs.len();
        let c = configs[which];
        let run_dir = tmp.path().join(format!("case-{case}"));
        copy_dir(&bases[which], &run_dir);
        // One to three requests of one to four users each, users never repeated.
        let mut gone: Vec<String> = Vec::new();
        let requests = 1 + rng.next(3);
        let mut unlearner = Unlearner::open(
            &run_dir,
            None,
            &Options {
                threads: 2,
                progress: false,
            },
        )
        .unwrap();
        for _ in 0..requests {
            let mut ids = Vec::new();
            for _ in 0..1 + rng.next(4) {
                let u = users[rng.next(users.len())].clone();
                if !gone.contains(&u) && !ids.contains(&u) {
                    ids.push(u);
                }
            }
            if ids.is_empty() {
                continue;
            }
            let before: Vec<u64> = unlearner
                .run()
                .manifest
                .shards
                .iter()
                .map(|s| s.data.rows)
                .collect();
            let receipt = unlearner.forget(&ids).unwrap();
            // A request reads only the shards that hold its users.
            let touched = receipt.shards.iter().filter(|s| s.rows_removed > 0);
            let rows: u64 = touched.clone().map(|s| s.rows_removed).sum();
            let io = receipt.measured.as_ref().unwrap().io;
            assert!(io.rows_read >= rows, "case {case}");
            if c.shard_by == ShardBy::User {
                let held: u64 = touched.map(|s| before[s.shard]).sum();
                assert!(
                    io.rows_read <= held,
                    "case {case}: read {} > {held}",
                    io.rows_read
                );
            }
            gone.extend(ids);
        }
        let (run, _ledger, _lock) = unlearner.into_parts();
        let reduced = tmp.path().join(format!("reduced-{case}.csv"));
        let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
        base.write_without(&refs, &reduced);
        let oracle_dir = tmp.path().join(format!("oracle-{case}"));
        // The from-scratch run has the run's configuration: the epochs it resolved at train
        // time (from min_steps, on the full data) included.
        let mut oracle_options = options(&reduced, &oracle_dir, c, 7, &users);
        oracle_options.model.epochs = run.config.model.epochs;
        oracle_options.model.min_steps = None;
        let oracle = train::train_run(&oracle_options).unwrap().run;
        assert_eq!(run.config.stage_epochs, oracle.config.stage_epochs);
        if c.tweak == Tweak::MinSteps {
            assert!(run.config.model.epochs > 6, "min_steps raised the epochs");
        }
        assert_eq!(
            fingerprint(&run),
            fingerprint(&oracle),
            "case {case} ({c:?}): forgetting {gone:?} differs from training without them"
        );
        // Served answers: every aggregation, bit for bit.
        let (ours, theirs) = (
            Ensemble::load(&run).unwrap(),
            Ensemble::load(&oracle).unwrap(),
        );
        for agg in [Aggregation::Mean, Aggregation::Vote, Aggregation::Weighted] {
            let (a, b) = (
                ours.predict(&x_all, n_all, agg),
                theirs.predict(&x_all, n_all, agg),
            );
            assert_eq!(a.labels, b.labels, "case {case}: {agg:?} labels");
            let bits = |p: &[f32]| p.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.probs), bits(&b.probs), "case {case}: {agg:?}");
        }
        let ledger = Ledger::open(&run_dir.join("ledger.jsonl")).unwrap();
        assert!(ledger.requests().iter().all(|&r| ledger.is_done(r)));
        // Nothing unreferenced is left: tainted checkpoints and old data files are gone.
        assert!(run.unreferenced_files().unwrap().is_empty());
        std::fs::remove_dir_all(&run_dir).unwrap();
        std::fs::remove_dir_all(&oracle_dir).unwrap();
    }
    println!("{cases} random deletion sequences matched training from scratch bitwise");
}
