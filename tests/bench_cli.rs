//! End-to-end tests of `sisa train` on IDX data, `sisa bench` and `sisa audit`, driving the real
//! binary on the bundled digits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sisa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(args)
        .output()
        .expect("the sisa binary runs")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn idx(dims: &[u32], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

/// The bundled digits as IDX files (`train-images-idx3-ubyte` and its labels) in `dir`.
fn digits_as_idx(dir: &Path, csv: &str, prefix: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo(csv)).unwrap();
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        labels.push(fields[1].parse::<u8>().unwrap());
        pixels.extend(fields[2..].iter().map(|v| v.parse::<u8>().unwrap()));
    }
    let n = labels.len() as u32;
    let images = dir.join(format!("{prefix}-images-idx3-ubyte"));
    std::fs::write(&images, idx(&[n, 8, 8], &pixels)).unwrap();
    std::fs::write(
        dir.join(format!("{prefix}-labels-idx1-ubyte")),
        idx(&[n], &labels),
    )
    .unwrap();
    images
}

#[test]
fn train_reads_idx_with_a_user_rule() {
    let dir = tempfile::tempdir().unwrap();
    let train = digits_as_idx(dir.path(), "datasets/digits/train.csv", "train");
    let test = digits_as_idx(dir.path(), "datasets/digits/test.csv", "t10k");
    let run = dir.path().join("run");
    let o = sisa(&[
        "train",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--users",
        "zipf:100:1.1",
        "--model",
        repo("models/logreg.toml").to_str().unwrap(),
        "--shards",
        "3",
        "--slices",
        "2",
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rows"], 1412);
    assert_eq!(v["test_rows"], 385);
    let o = sisa(&["status", "--run", run.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["features"], 64);
    let users: u64 = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["users"].as_u64().unwrap())
        .sum();
    assert!((50..=100).contains(&users), "{users} users");
    // A user of the rule can be forgotten by its id.
    let o = sisa(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        "u0",
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // Without --users, an IDX file is refused with a message that says what to pass.
    let o = sisa(&[
        "train",
        "--data",
        train.to_str().unwrap(),
        "--model",
        repo("models/logreg.toml").to_str().unwrap(),
        "--out",
        dir.path().join("other").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("--users"),
        "{err}"
    );
    assert!(!dir.path().join("other").exists());
}

#[test]
fn bench_writes_a_complete_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let o = sisa(&[
        "bench",
        "--data",
        repo("datasets/digits/train.csv").to_str().unwrap(),
        "--test",
        repo("datasets/digits/test.csv").to_str().unwrap(),
        "--model",
        repo("models/logreg.toml").to_str().unwrap(),
        "--shards",
        "1,3",
        "--slices",
        "1,2",
        "--requests",
        "1,2",
        "--samples",
        "5",
        "--epochs",
        "2",
        "--no-audit",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(
        md,
        String::from_utf8_lossy(&o.stdout),
        "stdout is the Markdown report"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let configs = r["configs"].as_array().unwrap();
    // 2 × 2 by user, and S = 3 by row at the largest R.
    assert_eq!(configs.len(), 5);
    assert_eq!(configs[4]["shard_by"], "row");
    for c in configs {
        assert!(c["accuracy_mean"].as_f64().unwrap() > 0.5, "{c}");
        assert!(c["accuracy_vote"].as_f64().is_some());
        assert_eq!(c["formula_check"]["samples"], 5);
        assert_eq!(c["formula_check"]["plan_equals_receipt"], true, "{c}");
        // K = 1: random and worst; K = 2: sequential, batched, worst.
        let e = c["experiments"].as_array().unwrap();
        assert_eq!(e.len(), 5);
        for x in e {
            assert!(x["rows_epochs"].as_u64().unwrap() > 0);
            assert!(x["speedup"].as_f64().unwrap() >= 0.99, "{x}");
            assert!(x["seconds"].as_f64().unwrap() > 0.0);
        }
        assert_eq!(e[2]["mode"], "sequential");
        assert_eq!(e[2]["requests"], 2);
    }
    // S = 1, R = 1: every request retrains everything, as the formula says.
    let f = &configs[0]["formula_check"];
    assert!(
        (f["ratio_users"].as_f64().unwrap() - 1.0).abs() < 0.01,
        "{f}"
    );
    assert!(r["peak"]["per_core_gflops"].as_f64().unwrap() > 0.0);
    let presets: Vec<&str> = r["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["preset"].as_str().unwrap())
        .collect();
    assert_eq!(presets, ["logreg", "mlp"]);
    for plot in [
        "speedup_vs_shards",
        "accuracy_vs_shards",
        "measured_vs_expected",
    ] {
        for ext in ["svg", "png"] {
            let p = out.join(format!("{plot}.{ext}"));
            assert!(std::fs::metadata(&p).unwrap().len() > 1000, "{p:?}");
        }
    }
    // The trained runs are removed unless --keep-runs.
    assert!(!out.join("runs").exists());
}

#[test]
fn bench_refuses_nonsense_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let o = sisa(&[
        "bench",
        "--data",
        repo("datasets/digits/train.csv").to_str().unwrap(),
        "--model",
        repo("models/logreg.toml").to_str().unwrap(),
        "--shards",
        "0,2",
        "--out",
        dir.path().join("b").to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a flag out of range is a usage error"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shards"));
}

#[test]
fn audit_reports_auc_tpr_and_null_interval() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let train = repo("datasets/digits/train.csv");
    let test = repo("datasets/digits/test.csv");
    let o = sisa(&[
        "train",
        "--data",
        train.to_str().unwrap(),
        "--model",
        repo("models/mlp.toml").to_str().unwrap(),
        "--shards",
        "1",
        "--slices",
        "1",
        "--epochs",
        "40",
        "--out",
        run.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let audit = |members: &Path, nonmembers: &Path| {
        let o = sisa(&[
            "audit",
            "--run",
            run.to_str().unwrap(),
            "--members",
            members.to_str().unwrap(),
            "--nonmembers",
            nonmembers.to_str().unwrap(),
            "--bootstrap",
            "200",
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // Training rows against held-out rows: an overfit MLP's members have lower loss.
    let r = audit(&train, &test);
    assert_eq!(r["members"], 1412);
    assert_eq!(r["nonmembers"], 385);
    let auc = &r["auc"];
    let (lo, v, hi) = (
        auc["lo"].as_f64().unwrap(),
        auc["value"].as_f64().unwrap(),
        auc["hi"].as_f64().unwrap(),
    );
    assert!(lo <= v && v <= hi && v > 0.5, "{r}");
    let null = r["null_interval"].as_array().unwrap();
    assert!(null[0].as_f64().unwrap() < 0.5 && 0.5 < null[1].as_f64().unwrap());
    assert!(r["member_mean_loss"].as_f64().unwrap() < r["nonmember_mean_loss"].as_f64().unwrap());
    for k in ["tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"] {
        let t = r[k]["value"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&t), "{k}: {t}");
    }
    // A file of the wrong shape is named in the error.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "user_id,label,a\nu,1,2\n").unwrap();
    let o = sisa(&[
        "audit",
        "--run",
        run.to_str().unwrap(),
        "--members",
        bad.to_str().unwrap(),
        "--nonmembers",
        test.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.csv"));
}
