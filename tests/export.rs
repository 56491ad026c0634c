//! `sisa export` through the real binary: for every preset in `models/` (the tabular ones on
//! the bundled digits, the image ones on a slice of mnist-5k), on both backends and under each
//! aggregation, the exported ONNX graph run by onnxruntime (`tests/export/run_onnx.py`) gives
//! the labels `sisa predict --json` gives and its probabilities within 1e-5; the safetensors
//! export rebuilt in NumPy from its documented layout (`tests/export/run_safetensors.py`) does
//! the same for a dense model and the CNN. The metadata names the version, the aggregation,
//! the configuration digest and every shard's lineage and model digest as the run records
//! them. Refusals (an existing --out, an unknown format, a run with no published version) name
//! the problem and change nothing.
//!
//! The Python half needs `python3` with `pip install onnxruntime safetensors numpy`; without
//! them those tests say why and pass, unless the environment variable `CI` is set: then they
//! fail.

mod common;
mod serving;

use common::*;
use serde_json::Value;
use serving::python_has;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "python3 -m pip install onnxruntime safetensors numpy";

/// Whether the Python packages the comparisons need are there (see [`python_has`]).
fn have_python() -> bool {
    python_has(&["numpy", "onnxruntime", "safetensors"], INSTALL)
}

/// Train `preset` on `data` with 3 shards and 2 slices into `dir/name`.
fn train(dir: &Path, name: &str, preset: &str, data: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--model",
        preset,
        "--shards",
        "3",
        "--slices",
        "2",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ];
    args.extend(extra);
    sisa_ok(&args);
    out
}

/// `sisa export` of `run` to `out`, with `extra` flags; the `--json` report.
fn export(run: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    sisa_json(&args)
}

/// `sisa predict --json` of `rows` under `aggregate` (the run's when `None`).
fn predict(run: &Path, rows: &Path, aggregate: Option<&str>) -> Value {
    let mut args = vec![
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        rows.to_str().unwrap(),
    ];
    if let Some(a) = aggregate {
        args.extend(["--aggregate", a]);
    }
    sisa_json(&args)
}

/// Run `tests/export/<script>` on `model` and `rows`; its JSON.
fn python(script: &str, model: &Path, rows: &Path) -> Value {
    let out = Command::new("python3")
        .arg(root().join("tests/export").join(script))
        .arg(model)
        .arg(rows)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script} {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints one JSON document")
}

/// Labels equal and probabilities within 1e-5 of `sisa predict --json`'s; returns how many
/// rows have two or more classes tied at the top (where the smallest label must win).
#[track_caller]
fn assert_matches(what: &str, predicted: &Value, got: &Value) -> usize {
    let rows = predicted["predictions"].as_array().unwrap();
    let labels = got["labels"].as_array().unwrap();
    let probs = got["probabilities"].as_array().unwrap();
    assert_eq!(rows.len(), labels.len(), "{what}: row count");
    assert!(!rows.is_empty(), "{what}: no rows compared");
    let mut worst = 0f64;
    let mut ties = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["label"], labels[i], "{what}: label of row {i}");
        let want = row["probabilities"].as_array().unwrap();
        let top = want[row["label"].as_u64().unwrap() as usize]
            .as_f64()
            .unwrap();
        if want.iter().filter(|p| p.as_f64().unwrap() == top).count() > 1 {
            ties += 1;
        }
        let have = probs[i].as_array().unwrap();
        assert_eq!(want.len(), have.len(), "{what}: classes of row {i}");
        for (w, h) in want.iter().zip(have) {
            worst = worst.max((w.as_f64().unwrap() - h.as_f64().unwrap()).abs());
        }
    }
    assert!(worst <= 1e-5, "{what}: probabilities differ by {worst}");
    // A model that answers one class for everything would compare nothing of its layers.
    let distinct: std::collections::BTreeSet<u64> =
        labels.iter().map(|l| l.as_u64().unwrap()).collect();
    assert!(distinct.len() >= 3, "{what}: labels {distinct:?} only");
    println!(
        "{what}: {} rows ({ties} with a tie at the top), labels equal, largest difference {worst:e}",
        rows.len()
    );
    ties
}

/// The configuration digest of the published manifest.
fn config_digest(run: &Path) -> String {
    let current = std::fs::read_to_string(run.join("CURRENT")).unwrap();
    let name = current.split_whitespace().next().unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(run.join(name)).unwrap()).unwrap();
    manifest["config_digest"].as_str().unwrap().to_string()
}

/// The metadata names what the run publishes: version, aggregation, configuration digest,
/// and each member shard's lineage and model digest.
#[track_caller]
fn assert_metadata(run: &Path, meta: &Value, aggregate: &str) {
    let status = sisa_json(&["status", "--run", run.to_str().unwrap()]);
    assert_eq!(meta["sisa.format"], "sisa-export/1");
    assert_eq!(meta["sisa.version"], status["version"].to_string());
    assert_eq!(meta["sisa.aggregation"], aggregate);
    assert_eq!(meta["sisa.config_digest"], config_digest(run));
    assert_eq!(
        meta["sisa.run"].as_str().unwrap(),
        run.file_name().unwrap().to_str().unwrap()
    );
    let shards: Value = serde_json::from_str(meta["sisa.shards"].as_str().unwrap()).unwrap();
    let published: Vec<&Value> = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["rows"].as_u64().unwrap() > 0)
        .collect();
    assert_eq!(shards.as_array().unwrap().len(), published.len());
    for (m, s) in shards.as_array().unwrap().iter().zip(published) {
        assert_eq!(m["shard"], s["shard"]);
        assert_eq!(m["rows"], s["rows"]);
        assert_eq!(m["lineage"], s["lineage"]);
        assert_eq!(m["model_digest"], s["model_digest"]);
    }
}

/// Export `run` as ONNX (under `aggregate`, the run's `default` when `None`), run it with
/// onnxruntime on `rows`, and compare with `sisa predict`; returns the rows tied at the top.
fn onnx_matches(
    dir: &Path,
    run: &Path,
    rows: &Path,
    aggregate: Option<&str>,
    default: &str,
) -> usize {
    let name = format!(
        "{}-{}.onnx",
        run.file_name().unwrap().to_str().unwrap(),
        aggregate.unwrap_or("default")
    );
    let model = dir.join(name);
    let mut extra = vec![];
    if let Some(a) = aggregate {
        extra.extend(["--aggregate", a]);
    }
    let report = export(run, &model, &extra);
    let agg = aggregate.unwrap_or(default);
    assert_eq!(report["format"], "onnx");
    assert_eq!(report["aggregate"], agg);
    assert_eq!(
        report["bytes"].as_u64().unwrap(),
        std::fs::metadata(&model).unwrap().len()
    );
    let got = python("run_onnx.py", &model, rows);
    let ties = assert_matches(
        &format!("{} (onnx, {agg})", run.display()),
        &predict(run, rows, aggregate),
        &got,
    );
    assert_metadata(run, &got["metadata"], agg);
    let features = got["metadata"]["sisa.feature_names"]
        .as_str()
        .map(|s| serde_json::from_str::<Vec<String>>(s).unwrap().len())
        .unwrap();
    let classes: u64 = got["metadata"]["sisa.classes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        got["inputs"],
        serde_json::json!([{"name": "input", "type": "tensor(float)", "shape": ["batch", features]}])
    );
    assert_eq!(
        got["outputs"],
        serde_json::json!([
            {"name": "probabilities", "type": "tensor(float)", "shape": ["batch", classes]},
            {"name": "label", "type": "tensor(int64)", "shape": ["batch"]},
        ])
    );
    assert_eq!(got["version"], status_version(run));
    assert_eq!(got["producer"], "sisa");
    ties
}

fn status_version(run: &Path) -> Value {
    sisa_json(&["status", "--run", run.to_str().unwrap()])["version"].clone()
}

/// Export `run` as safetensors, rebuild it in NumPy, and compare with `sisa predict`.
fn safetensors_matches(dir: &Path, run: &Path, rows: &Path, aggregate: &str) -> Value {
    let model = dir.join(format!(
        "{}.safetensors",
        run.file_name().unwrap().to_str().unwrap()
    ));
    let report = export(run, &model, &[]);
    assert_eq!(report["format"], "safetensors");
    let got = python("run_safetensors.py", &model, rows);
    assert_matches(
        &format!("{} (safetensors, {aggregate})", run.display()),
        &predict(run, rows, None),
        &got,
    );
    assert_metadata(run, &got["metadata"], aggregate);
    got
}

/// Every `step`-th row of a bundled mnist-5k file (which is sorted by label, so every class
/// is there) as a plain CSV in `dir`.
fn mnist_slice(dir: &Path, file: &str, step: usize) -> PathBuf {
    let csv = Csv::read_any(&root().join("datasets/mnist-5k").join(file));
    let out = dir.join(file.trim_end_matches(".gz"));
    let mut text = csv.header.clone() + "\n";
    for line in csv.lines.iter().step_by(step) {
        text += line;
        text += "\n";
    }
    std::fs::write(&out, text).unwrap();
    out
}

fn preset(name: &str) -> String {
    root()
        .join("models")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn logreg_vote_matches_predict() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let run = train(
        dir.path(),
        "logreg",
        &preset("logreg.toml"),
        &train_csv,
        &["--epochs", "4", "--aggregate", "vote"],
    );
    let ties = onnx_matches(dir.path(), &run, &test_csv, None, "vote");
    assert!(ties > 0, "no tied vote: the tie-break went untested");
}

/// The MLP on both backends and under every aggregation; after a deletion the export is the
/// new version's.
#[test]
fn mlp_every_aggregation_both_backends_matches_predict() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let mlp = preset("mlp.toml");
    let dense = train(dir.path(), "mlp", &mlp, &train_csv, &["--epochs", "4"]);
    for agg in [None, Some("vote"), Some("weighted")] {
        onnx_matches(dir.path(), &dense, &test_csv, agg, "mean");
    }
    let got = safetensors_matches(dir.path(), &dense, &test_csv, "mean");
    // PyTorch's layout: a linear layer's weight is [out, in].
    let tensors = &got["tensors"];
    assert_eq!(tensors["shard.0.0.weight"], serde_json::json!([128, 64]));
    assert_eq!(tensors["shard.0.2.weight"], serde_json::json!([10, 128]));
    assert_eq!(tensors["shard.0.norm.mean"], serde_json::json!([64]));

    let candle = train(
        dir.path(),
        "mlp-candle",
        &mlp,
        &train_csv,
        &[
            "--epochs",
            "4",
            "--backend",
            "candle",
            "--aggregate",
            "weighted",
        ],
    );
    onnx_matches(dir.path(), &candle, &test_csv, None, "weighted");
    safetensors_matches(dir.path(), &candle, &test_csv, "weighted");

    // Forget a user: the export is version 2, with the retrained shard's new lineage.
    let user = Csv::read(&train_csv).users()[0].0.clone();
    sisa_ok(&[
        "unlearn",
        "--run",
        dense.to_str().unwrap(),
        "--user",
        &user,
        "-q",
    ]);
    assert_eq!(status_version(&dense), 2);
    let model = dir.path().join("mlp-v2.onnx");
    assert_eq!(export(&dense, &model, &[])["version"], 2);
    let got = python("run_onnx.py", &model, &test_csv);
    assert_matches(
        "mlp after unlearning (onnx)",
        &predict(&dense, &test_csv, None),
        &got,
    );
    assert_metadata(&dense, &got["metadata"], "mean");
}

#[test]
fn mlp_image_matches_predict() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_slice(dir.path(), "train.csv.gz", 10);
    let rows = mnist_slice(dir.path(), "test.csv.gz", 16);
    let run = train(
        dir.path(),
        "mlp-image",
        &preset("mlp-image.toml"),
        &data,
        &["--epochs", "2"],
    );
    onnx_matches(dir.path(), &run, &rows, None, "mean");
}

/// The CNN on both backends: ONNX for each, and the safetensors rebuilt in NumPy for the
/// dense backend, whose channels-last tensors are the ones that must be reordered.
#[test]
fn cnn_matches_predict_on_both_backends() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_slice(dir.path(), "train.csv.gz", 10);
    let rows = mnist_slice(dir.path(), "test.csv.gz", 20);
    let cnn = preset("cnn.toml");
    let dense = train(dir.path(), "cnn", &cnn, &data, &["--epochs", "1"]);
    onnx_matches(dir.path(), &dense, &rows, None, "mean");
    let got = safetensors_matches(dir.path(), &dense, &rows, "mean");
    let tensors = &got["tensors"];
    assert_eq!(
        tensors["shard.0.0.weight"],
        serde_json::json!([32, 1, 3, 3])
    );
    assert_eq!(
        tensors["shard.0.3.weight"],
        serde_json::json!([64, 32, 3, 3])
    );
    assert_eq!(tensors["shard.0.7.weight"], serde_json::json!([128, 3136]));
    let candle = train(
        dir.path(),
        "cnn-candle",
        &cnn,
        &data,
        &[
            "--epochs",
            "1",
            "--backend",
            "candle",
            "--aggregate",
            "vote",
        ],
    );
    onnx_matches(dir.path(), &candle, &rows, None, "vote");
}

/// Refusals name the problem and change nothing; an export writes nothing in the run, and
/// the same version exports to the same bytes.
#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, _) = digits();
    let run = train(
        dir.path(),
        "run",
        &preset("logreg.toml"),
        &train_csv,
        &["--epochs", "1"],
    );
    let r = run.to_str().unwrap();
    let before = tree_digest(&run);
    let onnx = dir.path().join("m.onnx");
    let o = onnx.to_str().unwrap();
    sisa_ok(&["export", "--run", r, "--out", o, "-q"]);
    let first = std::fs::read(&onnx).unwrap();
    assert_eq!(tree_digest(&run), before, "export wrote into the run");

    // An existing --out is refused, and left as it was.
    std::fs::write(&onnx, b"keep me").unwrap();
    let out = sisa(&["export", "--run", r, "--out", o]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(o) && err.contains("already exists; pass --force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&onnx).unwrap(), b"keep me");
    // --force replaces it, with the same bytes as before: exports are deterministic.
    sisa_ok(&["export", "--run", r, "--out", o, "--force"]);
    assert_eq!(std::fs::read(&onnx).unwrap(), first);
    let st = dir.path().join("m.safetensors");
    let s = st.to_str().unwrap();
    sisa_ok(&["export", "--run", r, "--out", s]);
    let st_first = std::fs::read(&st).unwrap();
    sisa_ok(&["export", "--run", r, "--out", s, "--force"]);
    assert_eq!(std::fs::read(&st).unwrap(), st_first);
    // The safetensors header is JSON that begins with the metadata.
    let len = u64::from_le_bytes(st_first[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&st_first[8..8 + len]).unwrap();
    assert_eq!(header["__metadata__"]["sisa.format"], "sisa-export/1");
    assert_eq!(
        header["shard.0.0.weight"]["shape"],
        serde_json::json!([10, 64])
    );
    assert_eq!(header["shard.0.0.weight"]["dtype"], "F32");

    // --format against the extension: the flag wins.
    let odd = dir.path().join("model.bin");
    let ob = odd.to_str().unwrap();
    let out = sisa(&["export", "--run", r, "--out", ob]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot tell the format") && err.contains("--format"),
        "{err}"
    );
    assert!(!odd.exists());
    sisa_ok(&["export", "--run", r, "--out", ob, "--format", "onnx"]);
    assert_eq!(std::fs::read(&odd).unwrap(), first);

    // An unknown format is a usage error naming the ones there are.
    let out = sisa(&["export", "--run", r, "--out", o, "--format", "tflite"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown export format 'tflite'"), "{err}");
    assert!(err.contains("onnx or safetensors"), "{err}");

    // A directory that is not there.
    let nowhere = dir.path().join("no/such/dir/m.onnx");
    let out = sisa(&["export", "--run", r, "--out", nowhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");

    // A run with no published version.
    let unpublished = dir.path().join("unpublished");
    copy_dir(&run, &unpublished);
    std::fs::remove_file(unpublished.join("CURRENT")).unwrap();
    let u_before = tree_digest(&unpublished);
    let fresh = dir.path().join("fresh.onnx");
    let out = sisa(&[
        "export",
        "--run",
        unpublished.to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no published version"), "{err}");
    assert!(!fresh.exists());
    assert_eq!(tree_digest(&unpublished), u_before);
    assert_eq!(tree_digest(&run), before, "the run changed");
}

#[test]
fn a_run_on_class_names_exports_them_in_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, _) = digits();
    // The digits with names for labels, in the order of the digits (`d0` < `d1` < ...).
    let csv = Csv::read(&train_csv);
    let mut text = csv.header.clone() + "\n";
    for l in &csv.lines {
        let mut f: Vec<&str> = l.split(',').collect();
        let name = format!("d{}", f[1]);
        f[1] = &name;
        text += &(f.join(",") + "\n");
    }
    let named = dir.path().join("named.csv");
    std::fs::write(&named, text).unwrap();
    let run = train(dir.path(), "named", &preset("logreg.toml"), &named, &[]);
    let out = dir.path().join("named.safetensors");
    export(&run, &out, &[]);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("the export has metadata");
    let names: Vec<String> = serde_json::from_str(&meta["sisa.class_names"]).unwrap();
    let want: Vec<String> = (0..10).map(|d| format!("d{d}")).collect();
    assert_eq!(names, want);
    let status = sisa_json(&["status", "--run", run.to_str().unwrap()]);
    assert_eq!(status["class_names"], serde_json::json!(want));
}
