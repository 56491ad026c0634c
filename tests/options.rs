//! The training options through the real binary: preprocessing, augmentation and `min_steps`
//! are recorded and change what trains, unlearning with them on stays bitwise exact (`verify`
//! retrains from scratch and compares), and `eval` reports every aggregation.

mod common;

use common::*;
use std::path::Path;

fn run_json(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap()
}

fn train(preset: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (train, test) = digits();
    let mut args = vec![
        "train",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        preset.to_str().unwrap(),
        "--shards",
        "3",
        "--slices",
        "2",
        "--epochs",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sisa(&args)
}

#[track_caller]
fn train_ok(preset: &Path, out: &Path, extra: &[&str]) -> String {
    let r = train(preset, out, extra);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stderr).into_owned()
}

/// Forget two users and let `verify` retrain every shard from scratch and compare bitwise.
fn unlearn_and_verify(run: &Path) {
    let r = run.to_str().unwrap();
    sisa_ok(&[
        "unlearn", "--run", r, "--user", "u00003", "--user", "u00111",
    ]);
    sisa_ok(&["verify", "--run", r]);
}

#[test]
fn scaled_and_shifted_images_are_recorded_change_the_model_and_unlearn_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cnn = cnn_preset(tmp.path());
    let (plain, shifted) = (tmp.path().join("plain"), tmp.path().join("shifted"));
    train_ok(&cnn, &plain, &["--scale", "1/16"]);
    train_ok(&cnn, &shifted, &["--scale", "1/16", "--augment-shift", "1"]);
    let (p, s) = (run_json(&plain), run_json(&shifted));
    assert_eq!(p["model"]["standardize"], false, "{}", p["model"]);
    assert_eq!(p["model"]["scale"].as_f64(), Some(1.0 / 16.0));
    assert!(p["model"].get("augment").is_none());
    assert_eq!(s["model"]["augment"]["shift"], 1);
    assert_ne!(
        digests(&plain),
        digests(&shifted),
        "shifts change the models"
    );
    unlearn_and_verify(&shifted);
}

#[test]
fn global_standardization_and_min_steps_are_recorded_and_unlearn_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mlp = root().join("models/mlp.toml");
    let (feature, global) = (tmp.path().join("feature"), tmp.path().join("global"));
    train_ok(&mlp, &feature, &[]);
    // A preset written before the string form says `standardize = true`; it stays that.
    assert_eq!(run_json(&feature)["model"]["standardize"], true);
    // 1,412 rows over 3 shards: 471 a shard; 100 steps of 64 rows need 14 epochs.
    let err = train_ok(
        &mlp,
        &global,
        &["--standardize", "global", "--min-steps", "100"],
    );
    assert!(
        err.contains("min_steps 100 raises the epochs from 3 to 14"),
        "{err}"
    );
    let g = run_json(&global);
    assert_eq!(g["model"]["standardize"], "global");
    assert_eq!(g["model"]["min_steps"], 100);
    assert_eq!(g["model"]["epochs"], 14);
    assert_eq!(g["stage_epochs"], serde_json::json!([9, 9]));
    assert_ne!(digests(&feature), digests(&global));
    unlearn_and_verify(&global);
    assert_eq!(run_json(&global)["stage_epochs"], serde_json::json!([9, 9]));
}

#[test]
fn eval_reports_every_aggregation_and_weighted_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_ok(&root().join("models/logreg.toml"), &run, &[]);
    let r = run.to_str().unwrap();
    let ev = sisa_json(&["eval", "--run", r]);
    let by = ev["by_aggregation"].as_object().unwrap();
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["mean", "vote", "weighted"],
        "{ev}"
    );
    assert_eq!(ev["accuracy"], by["mean"]);
    let weighted = sisa_json(&["eval", "--run", r, "--aggregate", "weighted"]);
    assert_eq!(weighted["aggregate"], "weighted");
    assert_eq!(weighted["accuracy"], by["weighted"]);
    let (_, test) = digits();
    let p = sisa_json(&[
        "predict",
        "--run",
        r,
        "--data",
        test.to_str().unwrap(),
        "--aggregate",
        "weighted",
    ]);
    assert_eq!(p["aggregate"], "weighted");
    let text = sisa_ok(&["eval", "--run", r]);
    assert!(text.contains("by aggregation: mean "), "{text}");
}

#[test]
fn options_that_cannot_apply_are_refused_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mlp = root().join("models/mlp.toml");
    // Each is a usage error (exit 2): a flag out of range, at odds with another flag or with
    // the preset it adjusts.
    for (extra, code, want) in [
        (
            &["--augment-shift", "1"][..],
            2,
            "shifts images, but the preset has no input",
        ),
        (
            &["--scale", "abc"][..],
            2,
            "expected a number or a fraction",
        ),
        (&["--scale", "0"][..], 2, "must be a positive number"),
        (
            &["--scale", "1/255", "--standardize", "feature"][..],
            2,
            "applies to features that are not standardized",
        ),
        (&["--standardize", "pixel"][..], 2, "invalid value 'pixel'"),
    ] {
        let r = train(&mlp, &out, extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!out.exists());
    }
}
