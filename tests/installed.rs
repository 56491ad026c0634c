//! The binary works outside the source tree, as `cargo install --path .` leaves it: every
//! built-in preset by name, `sisa models`, `quickstart` and `bench` from a directory that has
//! no `models/` or `datasets/`.

mod common;

use common::root;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

/// Run the real binary with `cwd` as its working directory.
fn sisa_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the sisa binary runs")
}

#[track_caller]
fn ok_in(cwd: &Path, args: &[&str]) -> String {
    let o = sisa_in(cwd, args);
    assert!(
        o.status.success(),
        "sisa {args:?} in a directory outside the repository failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A directory with nothing of the repository in it, and copies of the data a test trains on.
fn outside() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(!dir.path().starts_with(root()));
    std::fs::copy(
        root().join("datasets/digits/train.csv"),
        dir.path().join("digits.csv"),
    )
    .unwrap();
    // The first 200 images of the bundled MNIST subset, for the image presets.
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(root().join("datasets/mnist-5k/train.csv.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    let head: Vec<&str> = text.lines().take(201).collect();
    std::fs::write(dir.path().join("mnist.csv"), head.join("\n") + "\n").unwrap();
    dir
}

#[test]
fn every_built_in_preset_trains_by_name_outside_the_repository() {
    let dir = outside();
    let d = dir.path();
    let listed: serde_json::Value = serde_json::from_str(&ok_in(d, &["models", "--json"])).unwrap();
    let names: Vec<&str> = listed["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cnn", "logreg", "mlp", "mlp-image"]);
    for p in listed["presets"].as_array().unwrap() {
        assert!(
            !p["layers"].as_array().unwrap().is_empty(),
            "{p}: sisa models shows the layers"
        );
    }
    let text = ok_in(d, &["models"]);
    assert!(
        text.contains("conv2d 32 3x3") && text.contains("dense 128 > tanh"),
        "{text}"
    );

    for name in names {
        let image = listed["presets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == name && !p["input"].is_null());
        let data = if image { "mnist.csv" } else { "digits.csv" };
        let out = format!("run-{name}");
        ok_in(
            d,
            &[
                "train", "--data", data, "--model", name, "--shards", "2", "--slices", "1",
                "--epochs", "1", "--out", &out, "-q",
            ],
        );
        let status: serde_json::Value =
            serde_json::from_str(&ok_in(d, &["status", "--run", &out, "--json"])).unwrap();
        assert_eq!(status["model"], name);
    }
    // A file of the same name wins over the built-in preset; an unknown name lists them.
    let own = std::fs::read_to_string(root().join("models/logreg.toml"))
        .unwrap()
        .replace("name = \"logreg\"", "name = \"mine\"");
    std::fs::write(d.join("mlp"), own).unwrap();
    ok_in(
        d,
        &[
            "train",
            "--data",
            "digits.csv",
            "--model",
            "mlp",
            "--shards",
            "2",
            "--slices",
            "1",
            "--epochs",
            "1",
            "--out",
            "own",
            "-q",
        ],
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok_in(d, &["status", "--run", "own", "--json"])).unwrap();
    assert_eq!(status["model"], "mine");
    let o = sisa_in(
        d,
        &[
            "train",
            "--data",
            "digits.csv",
            "--model",
            "mpl",
            "--out",
            "x",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("mpl") && err.contains("cnn, logreg, mlp, mlp-image"),
        "{err}"
    );
}

#[test]
fn quickstart_and_bench_run_outside_the_repository() {
    let dir = outside();
    let d = dir.path();
    let report = ok_in(d, &["quickstart", "-q"]);
    assert!(report.contains("bitwise identical"), "{report}");
    assert!(d.join("runs/quickstart/CURRENT").is_file());
    // The bundled data it trained on is gone again.
    let left: Vec<_> = std::fs::read_dir(d.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["quickstart"]);

    ok_in(
        d,
        &[
            "bench",
            "--data",
            "digits.csv",
            "--model",
            "logreg",
            "--epochs",
            "1",
            "--shards",
            "1,2",
            "--slices",
            "1",
            "--requests",
            "1",
            "--samples",
            "2",
            "--no-audit",
            "--no-row-sharding",
            "--out",
            "bench",
            "-q",
        ],
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("bench/results.json")).unwrap()).unwrap();
    // Every built-in preset for these features was timed (the image ones need 28x28 data).
    let timed: Vec<&str> = results["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["preset"].as_str().unwrap())
        .collect();
    assert!(
        timed.contains(&"logreg") && timed.contains(&"mlp"),
        "{timed:?}"
    );
}
