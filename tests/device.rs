//! `--device`: a build without the cuda feature refuses `cuda` by name (exit 2, no panic); a
//! run's models are retrained on the device the run records, and any other is refused; and,
//! in a build with `--features cuda` on a machine with a GPU, training, unlearning and verify
//! on `cuda` are bitwise the same as training from scratch on the same GPU, with shards
//! trained side by side on one GPU equal to one at a time. Without a GPU that test is skipped
//! with its reason: ignored in a CPU build, and saying why in a cuda build on a machine whose
//! driver sees none.

mod common;
use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[track_caller]
fn refused(args: &[&str], want: &str) {
    let out = sisa(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn devices_are_refused_where_they_cannot_be_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, test_csv) = digits();
    let new = tmp.path().join("new");
    let base = [
        "train",
        "--data",
        s(&train_csv),
        "--model",
        "mlp",
        "--out",
        s(&new),
        "-q",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    if cfg!(not(feature = "cuda")) {
        refused(
            &with(&["--device", "cuda"]),
            "built without the cuda feature",
        );
    }
    refused(
        &with(&["--device", "cuda:1", "--backend", "dense"]),
        "the dense backend runs on the CPU only",
    );
    refused(&with(&["--device", "gpu"]), "'gpu' is not a device");
    assert!(!new.exists(), "nothing was written");
    // A CPU run: its run.json names no device (its digest is a CPU run's), and commands that
    // retrain refuse another device.
    let run = tmp.path().join("run");
    train_digits(&run, 3, 2, &[]);
    let config = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(!config.contains("\"device\""), "{config}");
    let r = s(&run);
    for args in [
        vec![
            "unlearn", "--run", r, "--user", "u00286", "--device", "cuda",
        ],
        vec!["verify", "--run", r, "--device", "cuda"],
        vec!["recover", "--run", r, "--device", "cuda:0"],
        vec![
            "add",
            "--run",
            r,
            "--data",
            s(&test_csv),
            "--device",
            "cuda",
        ],
        vec!["serve", "--run", r, "--device", "cuda"],
    ] {
        refused(&args, "was trained on cpu");
    }
    // Inference may name the device it runs on.
    sisa_ok(&["eval", "--run", r, "--device", "cpu", "-q"]);
}

/// The run's model digests, and the machine kind the manifest records for each shard.
fn kinds(run: &Path) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            run.join(
                std::fs::read_to_string(run.join("CURRENT"))
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap(),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["machine"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a build with --features cuda and an NVIDIA GPU"
)]
fn on_cuda_unlearning_equals_training_from_scratch_on_the_same_gpu() {
    if let Err(e) = "cuda"
        .parse::<sisa::model::device::DeviceSpec>()
        .unwrap()
        .candle()
    {
        println!("skipped: no usable GPU here: {e}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let preset = cnn_preset(tmp.path());
    let (train_csv, _) = digits();
    let train = |data: &Path, out: &Path, threads: &str| {
        sisa_ok(&[
            "train",
            "--data",
            s(data),
            "--model",
            s(&preset),
            "--shards",
            "4",
            "--slices",
            "3",
            "--device",
            "cuda",
            "--threads",
            threads,
            "--out",
            s(out),
            "-q",
        ]);
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    train(&train_csv, &a, "4");
    // Four shards side by side on one GPU (a stream each) equal one at a time.
    train(&train_csv, &b, "1");
    assert_eq!(digests(&a), digests(&b));
    let kind = &kinds(&a)[0];
    assert!(kind.starts_with("cuda | "), "{kind}");
    // Forget two users; train from scratch without them on the same GPU.
    let csv = Csv::read(&train_csv);
    let users: Vec<String> = csv.users().into_iter().take(2).map(|(u, _)| u).collect();
    sisa_ok(&[
        "unlearn",
        "--run",
        s(&a),
        "--user",
        &users[0],
        "--user",
        &users[1],
        "-q",
    ]);
    let without = tmp.path().join("without.csv");
    csv.write_without(&[&users[0], &users[1]], &without);
    let c = tmp.path().join("c");
    train(&without, &c, "4");
    assert_eq!(digests(&a), digests(&c));
    let verdict = sisa_json(&["verify", "--run", s(&a)]);
    assert_eq!(verdict["identical"], true, "{verdict}");
    assert_eq!(verdict["shards"][0]["same_machine_kind"], true);
}
