//! End-to-end tests of the engine through the real binary on bundled real data: unlearning is
//! bitwise equal to training from scratch, untouched shards are not retrained, and costs are
//! what the receipt says.

mod common;

use common::*;
use sisa::plan::ShardBy;
use std::path::Path;

const SEED: u64 = 7;

fn train(
    data: &Path,
    test: Option<&Path>,
    out: &Path,
    shards: usize,
    slices: usize,
    extra: &[&str],
) {
    let (s, r) = (shards.to_string(), slices.to_string());
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "models/mlp.toml",
        "--shards",
        &s,
        "--slices",
        &r,
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    if let Some(t) = test {
        args.extend(["--test", t.to_str().unwrap()]);
    }
    args.extend(extra);
    sisa_ok(&args);
}

/// One user for each of the shards `0..n`: the first user, in file order, whose shard it is.
fn users_in_distinct_shards(csv: &Csv, shards: usize, n: usize) -> Vec<String> {
    let mut picked: Vec<(usize, String)> = Vec::new();
    for (u, _) in csv.users() {
        let k = sisa::plan::shard_of_user(SEED, &u, shards);
        if k < n && !picked.iter().any(|(s, _)| *s == k) {
            picked.push((k, u));
        }
    }
    picked.sort();
    picked.into_iter().map(|(_, u)| u).collect()
}

#[test]
fn unlearning_three_users_equals_training_from_scratch_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let run = tmp.path().join("run");
    train(&train_csv, Some(&test_csv), &run, 5, 4, &[]);
    let before = digests(&run);

    let csv = Csv::read(&train_csv);
    let users = users_in_distinct_shards(&csv, 5, 3);
    assert_eq!(users.len(), 3);
    let receipt = sisa_json(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &users[0],
        "--user",
        &users[1],
        "--user",
        &users[2],
        "-q",
    ]);

    // The oracle: a fresh run, same flags and seed, on the CSV without those users' rows.
    let reduced = tmp.path().join("reduced.csv");
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    csv.write_without(&refs, &reduced);
    let oracle = tmp.path().join("oracle");
    train(&reduced, Some(&test_csv), &oracle, 5, 4, &[]);
    let after = digests(&run);
    assert_eq!(
        after,
        digests(&oracle),
        "every shard equals the from-scratch run"
    );

    // Shards 0..3 held the users and changed, and the receipt names them; shards 3 and 4
    // were not retrained, and the receipt counts them and pins them by the ensemble digest.
    let named: Vec<usize> = receipt["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["stages_retrained"].as_u64().unwrap() > 0);
            assert!(s["rows_removed"].as_u64().unwrap() > 0);
            s["shard"].as_u64().unwrap() as usize
        })
        .collect();
    assert_eq!(named, vec![0, 1, 2]);
    assert_eq!(receipt["untouched_shards"], 2);
    assert_eq!(receipt["ensemble_digest"].as_str().unwrap().len(), 64);
    for k in 0..5 {
        if k < 3 {
            assert_ne!(before[k], after[k]);
        } else {
            assert_eq!(before[k], after[k], "untouched shard {k} is not retrained");
        }
    }
    let removed: usize = csv
        .users()
        .iter()
        .filter(|(u, _)| users.contains(u))
        .map(|(_, c)| c)
        .sum();
    assert_eq!(
        receipt["train_rows_removed"].as_u64().unwrap() as usize,
        removed
    );
    assert_eq!(receipt["ensemble_version"], 2);

    // verify re-derives the certificate.
    let v = sisa_json(&["verify", "--run", run.to_str().unwrap(), "-q"]);
    assert_eq!(v["identical"], true);

    // status reports the shape the issue names.
    let s = sisa_json(&["status", "--run", run.to_str().unwrap()]);
    assert_eq!(s["version"], 2);
    let total_rows: u64 = s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(total_rows as usize, csv.lines.len() - removed);
    for x in s["shards"].as_array().unwrap() {
        assert_eq!(x["stages"], 4);
        assert!(x["users"].as_u64().unwrap() > 0);
    }
}

#[test]
fn one_user_at_ten_shards_retrains_at_most_a_tenth() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let run = tmp.path().join("run");
    train(
        &train_csv,
        Some(&test_csv),
        &run,
        10,
        5,
        &["--epochs", "10"],
    );
    let csv = Csv::read(&train_csv);
    // The first user in file order that owns a single row: the common case of one request.
    let (user, _) = csv.users().into_iter().find(|(_, c)| *c == 1).unwrap();
    let plan = sisa_json(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &user,
        "--dry-run",
    ]);
    let receipt = sisa_json(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &user,
        "-q",
    ]);
    let retrained = receipt["cost"]["retrained_rows_epochs"].as_f64().unwrap();
    let full = receipt["cost"]["full_retrain_rows_epochs"]
        .as_f64()
        .unwrap();
    assert_eq!(
        plan["retrain_rows_epochs"].as_f64().unwrap(),
        retrained,
        "the dry run prices what runs"
    );
    assert!(retrained > 0.0);
    // One shard at most: the user's shard trained from scratch (its share of the data may be
    // above a tenth; the mean over every user below is the tenth).
    let touched_rows: f64 = receipt["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stages_retrained"] != 0)
        .map(|s| s["rows_removed"].as_f64().unwrap())
        .sum();
    let status = sisa_json(&["status", "--run", run.to_str().unwrap()]);
    let shard_rows = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        retrained <= (shard_rows + touched_rows) * 10.0 && retrained < full / 5.0,
        "retrained {retrained} of {full} rows x epochs"
    );
    let touched = receipt["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stages_retrained"] != 0)
        .count();
    assert_eq!(touched, 1);

    // Over every user of the run, one request costs at most 1/S of a full retrain on average
    // (a single request can cost more when its shard is larger than the average shard).
    let opened = sisa::run::Run::open(&run).unwrap();
    let loaded = sisa::unlearn::Loaded::everything(&opened).unwrap();
    let fractions: Vec<f64> = csv
        .users()
        .iter()
        .filter(|(u, _)| *u != user)
        .map(|(u, _)| sisa::unlearn::plan_unlearning(&opened, &[opened.key(u)], &loaded).fraction())
        .collect();
    let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
    assert!(mean <= 0.1, "mean fraction {mean}");
}

#[test]
fn the_avx2_and_baseline_builds_of_the_elementwise_loops_train_the_same_bits() {
    // SISA_SCALAR=1 (honoured by test builds only) keeps every element-wise loop on the
    // baseline instruction set; by default they run on AVX2 where the CPU has it.
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, _) = digits();
    let relu = tmp.path().join("relu.toml");
    let mlp = std::fs::read_to_string(root().join("models/mlp.toml")).unwrap();
    std::fs::write(&relu, mlp.replace("\"tanh\"", "\"relu\"")).unwrap();
    for (m, model) in [
        "models/mlp.toml".to_string(),
        "models/logreg.toml".to_string(),
        relu.to_str().unwrap().to_string(),
    ]
    .iter()
    .enumerate()
    {
        let mut runs = Vec::new();
        for scalar in ["0", "1"] {
            let out = tmp.path().join(format!("run-{m}-{scalar}"));
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_sisa"))
                .args([
                    "train",
                    "--data",
                    train_csv.to_str().unwrap(),
                    "--model",
                    model,
                ])
                .args([
                    "--shards", "2", "--slices", "2", "--epochs", "3", "-q", "--out",
                ])
                .arg(&out)
                .env("SISA_SCALAR", scalar)
                .current_dir(root())
                .status()
                .unwrap();
            assert!(status.success(), "{model} with SISA_SCALAR={scalar}");
            runs.push(digests(&out));
        }
        assert_eq!(runs[0], runs[1], "{model}");
    }
}

#[test]
fn training_is_bitwise_identical_for_any_thread_count_and_seed_dependent() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, _) = digits();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    train(
        &train_csv,
        None,
        &a,
        4,
        3,
        &["--threads", "1", "--epochs", "6"],
    );
    train(
        &train_csv,
        None,
        &b,
        4,
        3,
        &["--threads", "2", "--epochs", "6"],
    );
    assert_eq!(digests(&a), digests(&b));
    let s = sisa_json(&["status", "--run", a.to_str().unwrap()]);
    let t = sisa_json(&["status", "--run", b.to_str().unwrap()]);
    assert_eq!(s["shards"], t["shards"], "lineages and rows agree too");
    sisa_ok(&[
        "train",
        "--data",
        train_csv.to_str().unwrap(),
        "--model",
        "models/mlp.toml",
        "--shards",
        "4",
        "--slices",
        "3",
        "--seed",
        "8",
        "--epochs",
        "6",
        "--out",
        c.to_str().unwrap(),
        "-q",
    ]);
    assert_ne!(digests(&a), digests(&c), "another seed gives other models");
}

#[test]
fn eval_predict_and_aggregation() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let run = tmp.path().join("run");
    train(&train_csv, Some(&test_csv), &run, 5, 2, &[]);
    let r = run.to_str().unwrap();
    let mean = sisa_json(&["eval", "--run", r]);
    assert_eq!(mean["aggregate"], "mean");
    assert!(mean["accuracy"].as_f64().unwrap() > 0.85, "{mean}");
    assert_eq!(mean["per_shard"].as_array().unwrap().len(), 5);
    let vote = sisa_json(&["eval", "--run", r, "--aggregate", "vote"]);
    assert_eq!(vote["aggregate"], "vote");
    assert!(vote["accuracy"].as_f64().unwrap() > 0.8);
    // --data evaluates another labelled file: the held-out file itself gives the same figure.
    let again = sisa_json(&["eval", "--run", r, "--data", test_csv.to_str().unwrap()]);
    assert_eq!(again["accuracy"], mean["accuracy"]);
    // predict: one answer per row; labels agree with eval's accuracy on the same rows.
    let p = sisa_json(&["predict", "--run", r, "--data", test_csv.to_str().unwrap()]);
    let preds = p["predictions"].as_array().unwrap();
    let csv = Csv::read(&test_csv);
    assert_eq!(preds.len(), csv.lines.len());
    let correct = preds
        .iter()
        .zip(&csv.lines)
        .filter(|(p, l)| p["label"].as_u64().unwrap().to_string() == l.split(',').nth(1).unwrap())
        .count();
    assert!(
        (correct as f64 / preds.len() as f64 - mean["accuracy"].as_f64().unwrap()).abs() < 1e-9
    );
    for q in preds {
        let s: f64 = q["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((s - 1.0).abs() < 1e-4);
    }
    // A feature-only file (no user or label column) predicts too.
    let features_only = tmp.path().join("x.csv");
    let header: Vec<&str> = csv.header.split(',').skip(2).collect();
    let mut text = header.join(",") + "\n";
    for l in csv.lines.iter().take(3) {
        text += &l.split(',').skip(2).collect::<Vec<_>>().join(",");
        text += "\n";
    }
    std::fs::write(&features_only, text).unwrap();
    let q = sisa_json(&[
        "predict",
        "--run",
        r,
        "--data",
        features_only.to_str().unwrap(),
    ]);
    assert_eq!(q["predictions"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(q["predictions"][i]["label"], preds[i]["label"]);
    }
}

#[test]
fn held_out_rows_of_a_forgotten_user_are_erased_too() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    // Put one training user's rows into the held-out file as well.
    let csv = Csv::read(&train_csv);
    let (user, count) = csv.users()[0].clone();
    let test = Csv::read(&test_csv);
    let mixed = tmp.path().join("test.csv");
    let mut text = test.header.clone() + "\n";
    for l in test
        .lines
        .iter()
        .chain(csv.lines.iter().filter(|l| Csv::user(l) == user))
    {
        text += l;
        text += "\n";
    }
    std::fs::write(&mixed, text).unwrap();
    let run = tmp.path().join("run");
    train(&train_csv, Some(&mixed), &run, 3, 2, &["--epochs", "4"]);
    let receipt = sisa_json(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &user,
        "-q",
    ]);
    assert_eq!(
        receipt["test_rows_removed"].as_u64().unwrap() as usize,
        count
    );
    assert_eq!(
        receipt["train_rows_removed"].as_u64().unwrap() as usize,
        count
    );
    let ev = sisa_json(&["eval", "--run", run.to_str().unwrap()]);
    assert_eq!(ev["rows"].as_u64().unwrap() as usize, test.lines.len());
}

#[test]
fn quickstart_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qs");
    let stdout = sisa_ok(&["quickstart", "--out", out.to_str().unwrap(), "-q"]);
    assert!(stdout.contains("bitwise identical"), "{stdout}");
    assert!(stdout.contains("accuracy after"), "{stdout}");
    // Running it again replaces the earlier demo run.
    sisa_ok(&["quickstart", "--out", out.to_str().unwrap(), "-q"]);
}

#[test]
fn streamed_ingest_places_the_rows_that_reading_the_whole_file_places() {
    // `sisa train` streams its files into the shards; the benchmark and `add` read whole
    // tables. Both must give every row the same identity, shard, label and features (keys
    // differ: each run has its own secret).
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    // A CSV without a user column, whose users come from a rule.
    let anonymous = tmp.path().join("anonymous.csv");
    let text = std::fs::read_to_string(&test_csv).unwrap();
    let user_col = text
        .lines()
        .next()
        .unwrap()
        .split(',')
        .position(|h| h == "user_id")
        .unwrap();
    let drop_user = |line: &str| {
        line.split(',')
            .enumerate()
            .filter(|(i, _)| *i != user_col)
            .map(|(_, f)| f)
            .collect::<Vec<_>>()
            .join(",")
    };
    let body: Vec<String> = text.lines().map(drop_user).collect();
    std::fs::write(&anonymous, body.join("\n") + "\n").unwrap();
    // An IDX pair of 300 records of 3×2 pixels.
    let images = tmp.path().join("t-images-idx3-ubyte");
    let mut bytes = vec![0u8, 0, 0x08, 3];
    for d in [300u32, 3, 2] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend((0..300 * 6).map(|i| (i * 7 % 256) as u8));
    std::fs::write(&images, bytes).unwrap();
    let mut labels = vec![0u8, 0, 0x08, 1];
    labels.extend_from_slice(&300u32.to_be_bytes());
    labels.extend((0..300).map(|i| (i % 4) as u8));
    std::fs::write(tmp.path().join("t-labels-idx1-ubyte"), labels).unwrap();

    let model = sisa::model::ModelSpec::load(&root().join("models/logreg.toml")).unwrap();
    let cases = [
        (
            train_csv.clone(),
            Some(test_csv.clone()),
            None,
            ShardBy::User,
        ),
        (train_csv, None, None, ShardBy::Row),
        (anonymous, None, Some("zipf:40:1.1"), ShardBy::User),
        (images, None, Some("uniform:25"), ShardBy::Row),
    ];
    for (i, (data, test, users, shard_by)) in cases.into_iter().enumerate() {
        let spec = |p: &Path| {
            let s = sisa::data::InputSpec::file(p);
            match users {
                Some(u) => s.with_users(sisa::data::Users::Rule(u.parse().unwrap())),
                None => s,
            }
        };
        let opts = sisa::train::TrainOptions {
            data: spec(&data),
            test: test.as_ref().map(|t| spec(t)),
            model: model.clone(),
            shards: 3,
            slices: 2,
            seed: 5,
            shard_by,
            slice_by: if i % 2 == 0 {
                sisa::plan::SliceBy::User
            } else {
                sisa::plan::SliceBy::Row
            },
            priors: None,
            risk_shards: 0,
            out: tmp.path().join(format!("never-{i}")),
            classes: None,
            threads: 1,
            progress: false,
            aggregation: sisa::run::Aggregation::Mean,
            ledger: None,
            backend: sisa::model::Backend::Dense,
            device: Default::default(),
        };
        let (config, _, shards, test_rows) = sisa::train::ingest(&opts).unwrap();
        let all = sisa::data::Features::All;
        let table = sisa::data::read_labelled(&opts.data, all, 5, sisa::data::Role::Train).unwrap();
        let names = sisa::data::Features::Named(&table.feature_names);
        let held = opts
            .test
            .as_ref()
            .map(|t| sisa::data::read_labelled(t, names, 5, sisa::data::Role::HeldOut).unwrap());
        let (config2, _, shards2, test_rows2) =
            sisa::train::ingest_tables(&opts, &table, held.as_ref()).unwrap();
        assert_eq!(config.features, config2.features, "case {i}");
        assert_eq!(config.classes, config2.classes, "case {i}");
        let same = |a: &sisa::data::Rows, b: &sisa::data::Rows| {
            assert!(!a.is_empty() || b.is_empty(), "case {i}");
            assert_eq!(
                (&a.tags, &a.seqs, &a.slices, &a.labels, &a.x),
                (&b.tags, &b.seqs, &b.slices, &b.labels, &b.x),
                "case {i}"
            );
        };
        assert_eq!(shards.len(), shards2.len());
        for (a, b) in shards.iter().zip(&shards2) {
            same(a, b);
        }
        assert_eq!(test_rows.is_some(), test_rows2.is_some());
        if let (Some(a), Some(b)) = (&test_rows, &test_rows2) {
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(b) {
                assert_eq!((&a.tags, &a.x), (&b.tags, &b.x), "case {i}");
            }
        }
    }
}

#[test]
fn train_notes_when_rounded_stage_epochs_move_the_training_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, _) = digits();
    let run = |slices: &str, epochs: &str, quiet: bool| {
        let out = tmp.path().join(format!("run-{slices}-{epochs}-{quiet}"));
        let mut args = vec![
            "train",
            "--data",
            train_csv.to_str().unwrap(),
            "--model",
            "models/logreg.toml",
            "--shards",
            "2",
            "--slices",
            slices,
            "--epochs",
            epochs,
            "--out",
            out.to_str().unwrap(),
        ];
        if quiet {
            args.push("-q");
        }
        let o = sisa(&args);
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let noted = run("10", "10", false);
    assert!(
        noted.contains("10 slices turn 10 epochs into 1 per stage") && noted.contains("55%"),
        "{noted}"
    );
    assert!(
        !run("3", "10", false).contains("note:"),
        "2e/(R+1) = 5 exactly"
    );
    assert!(
        !run("10", "10", true).contains("note:"),
        "-q keeps it quiet"
    );
}
