//! Convolutional models through the real binary, on each backend: unlearning equals training
//! from scratch without the users, bitwise; the same bits for any thread count and on both
//! element-wise paths; `verify` certifies it.

mod common;

use common::*;
use std::path::Path;

const SEED: u64 = 7;

fn train(data: &Path, test: Option<&Path>, model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--shards",
        "4",
        "--slices",
        "3",
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

/// One user for each of the shards `0..n` (of 4): the first, in file order, whose shard it is.
fn users_in_distinct_shards(csv: &Csv, n: usize) -> Vec<String> {
    let mut picked: Vec<(usize, String)> = Vec::new();
    for (u, _) in csv.users() {
        let k = sisa::plan::shard_of_user(SEED, &u, 4);
        if k < n && !picked.iter().any(|(s, _)| *s == k) {
            picked.push((k, u));
        }
    }
    picked.sort();
    picked.into_iter().map(|(_, u)| u).collect()
}

/// Train at S=4, R=3, forget three users in three shards, and compare every shard with a
/// from-scratch run without them; then `verify`.
fn unlearns_bitwise(dir: &Path, data: &Path, test: Option<&Path>, model: &Path, extra: &[&str]) {
    let run = dir.join("run");
    train(data, test, model, &run, extra);
    let csv = Csv::read_any(data);
    let users = users_in_distinct_shards(&csv, 3);
    assert_eq!(users.len(), 3);
    let r = run.to_str().unwrap();
    sisa_ok(&[
        "unlearn", "--run", r, "--user", &users[0], "--user", &users[1], "--user", &users[2], "-q",
    ]);
    let reduced = dir.join("reduced.csv");
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    csv.write_without(&refs, &reduced);
    let oracle = dir.join("oracle");
    train(&reduced, test, model, &oracle, extra);
    assert_eq!(
        digests(&run),
        digests(&oracle),
        "{extra:?}: every shard equals the from-scratch run without the users"
    );
    let v = sisa(&["verify", "--run", r, "-q"]);
    assert!(
        v.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&v.stdout)
    );
}

#[test]
fn a_cnn_unlearns_three_users_bitwise_on_each_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let model = cnn_preset(tmp.path());
    let (train_csv, test_csv) = digits();
    for backend in ["dense", "candle"] {
        let dir = tmp.path().join(backend);
        std::fs::create_dir(&dir).unwrap();
        unlearns_bitwise(
            &dir,
            &train_csv,
            Some(&test_csv),
            &model,
            &["--backend", backend],
        );
    }
}

#[test]
fn the_cnn_preset_unlearns_bitwise_on_mnist() {
    let tmp = tempfile::tempdir().unwrap();
    let data = root().join("datasets/mnist-5k/train.csv.gz");
    unlearns_bitwise(
        tmp.path(),
        &data,
        None,
        &root().join("models/cnn.toml"),
        &["--epochs", "2"],
    );
}

#[test]
fn a_cnn_trains_the_same_bits_on_any_thread_count_and_both_element_wise_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let model = cnn_preset(tmp.path());
    let (train_csv, _) = digits();
    for backend in ["dense", "candle"] {
        let mut runs = Vec::new();
        for (threads, scalar) in [("1", "0"), ("2", "0"), ("2", "1")] {
            let out = tmp.path().join(format!("{backend}-{threads}-{scalar}"));
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_sisa"))
                .args(["train", "--data", train_csv.to_str().unwrap(), "--model"])
                .arg(&model)
                .args(["--shards", "3", "--slices", "2", "--epochs", "2", "-q"])
                .args(["--backend", backend, "--threads", threads, "--out"])
                .arg(&out)
                .env("SISA_SCALAR", scalar)
                .status()
                .unwrap();
            assert!(status.success());
            runs.push(digests(&out));
        }
        assert_eq!(runs[0], runs[1], "{backend}: 1 and 2 threads");
        assert_eq!(
            runs[1], runs[2],
            "{backend}: AVX2 and baseline element-wise loops"
        );
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join(format!("{backend}-1-0/run.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(config["backend"], backend, "run.json records the backend");
    }
}

#[test]
fn the_candle_and_dense_backends_train_different_bits_but_the_same_model() {
    // Different kernels, so not bitwise; the same architecture, seeds and batches, so after a
    // stage the ensembles agree closely. Tolerance: held-out accuracy within 2 points.
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let mut acc = Vec::new();
    let mut all = Vec::new();
    for backend in ["dense", "candle"] {
        let out = tmp.path().join(backend);
        sisa_ok(&[
            "train",
            "--data",
            train_csv.to_str().unwrap(),
            "--test",
            test_csv.to_str().unwrap(),
            "--model",
            "models/mlp.toml",
            "--shards",
            "2",
            "--slices",
            "1",
            "--epochs",
            "5",
            "--backend",
            backend,
            "-q",
            "--out",
            out.to_str().unwrap(),
        ]);
        let e = sisa_json(&["eval", "--run", out.to_str().unwrap()]);
        acc.push(e["accuracy"].as_f64().unwrap());
        all.push(digests(&out));
    }
    assert_ne!(all[0], all[1], "different kernels give different bits");
    assert!(
        (acc[0] - acc[1]).abs() <= 0.02,
        "held-out accuracy dense {} vs candle {}",
        acc[0],
        acc[1]
    );
}
