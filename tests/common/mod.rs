//! Helpers shared by the integration tests: run the real binary, read its JSON, hash trees.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (bundled datasets and models live here).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run the real `sisa` binary with `args`.
pub fn sisa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the sisa binary runs")
}

/// Run `sisa` and insist on success; returns stdout.
#[track_caller]
pub fn sisa_ok(args: &[&str]) -> String {
    let out = sisa(args);
    assert!(
        out.status.success(),
        "sisa {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Run `sisa ... --json` and parse stdout.
#[track_caller]
pub fn sisa_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&sisa_ok(&all)).expect("--json prints one JSON document")
}

/// Model digests of every shard, from `sisa status --json`.
pub fn digests(run: &Path) -> Vec<String> {
    let s = sisa_json(&["status", "--run", run.to_str().unwrap()]);
    s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["model_digest"].as_str().unwrap().to_string())
        .collect()
}

/// Path and SHA-256 of every file under `dir`, for "nothing changed" checks.
pub fn tree_digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

/// Copy a directory tree (a run, for a backup or an experiment).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A CSV file split into header and lines.
pub struct Csv {
    pub header: String,
    pub lines: Vec<String>,
}

impl Csv {
    pub fn read(path: &Path) -> Csv {
        let text = std::fs::read_to_string(path).unwrap();
        let mut it = text.lines();
        let header = it.next().unwrap().to_string();
        Csv {
            header,
            lines: it.map(str::to_string).collect(),
        }
    }
    /// [`Csv::read`], gunzipping a `.gz` file.
    pub fn read_any(path: &Path) -> Csv {
        if path.extension().is_some_and(|e| e == "gz") {
            use std::io::Read;
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            let mut it = text.lines();
            let header = it.next().unwrap().to_string();
            return Csv {
                header,
                lines: it.map(str::to_string).collect(),
            };
        }
        Csv::read(path)
    }
    pub fn user(line: &str) -> &str {
        line.split(',').next().unwrap()
    }
    /// Users in first-appearance order with their row counts.
    pub fn users(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for l in &self.lines {
            let u = Csv::user(l);
            match out.iter_mut().find(|(x, _)| x == u) {
                Some((_, c)) => *c += 1,
                None => out.push((u.to_string(), 1)),
            }
        }
        out
    }
    pub fn write_without(&self, users: &[&str], path: &Path) {
        let mut text = self.header.clone() + "\n";
        for l in &self.lines {
            if !users.contains(&Csv::user(l)) {
                text += l;
                text += "\n";
            }
        }
        std::fs::write(path, text).unwrap();
    }
    pub fn write_first(&self, n: usize, path: &Path) {
        let mut text = self.header.clone() + "\n";
        for l in self.lines.iter().take(n) {
            text += l;
            text += "\n";
        }
        std::fs::write(path, text).unwrap();
    }
}

/// The bundled digits training and test files.
pub fn digits() -> (PathBuf, PathBuf) {
    (
        root().join("datasets/digits/train.csv"),
        root().join("datasets/digits/test.csv"),
    )
}

/// A small convolutional preset for the bundled 8×8 digits: the CNN preset's shape, scaled
/// down, with dropout, so every layer kind trains in the tests.
pub const CNN_8X8: &str = r#"name = "cnn8"
description = "conv 8 3x3 > relu > maxpool 2 > conv 16 3x3 > relu > maxpool 2 > dropout > dense 32 > relu"
input = [1, 8, 8]
layers = [
  { kind = "conv2d", filters = 8, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "conv2d", filters = 16, kernel = 3, padding = 1 },
  { kind = "relu" },
  { kind = "maxpool2d", size = 2 },
  { kind = "flatten" },
  { kind = "dropout", rate = 0.1 },
  { kind = "dense", units = 32 },
  { kind = "relu" },
]
optimizer = "adam"
lr = 0.003
batch_size = 32
epochs = 4
"#;

/// Write [`CNN_8X8`] into `dir`; returns its path.
pub fn cnn_preset(dir: &Path) -> PathBuf {
    let p = dir.join("cnn8.toml");
    std::fs::write(&p, CNN_8X8).unwrap();
    p
}

/// `sisa train` on the bundled digits (training and held-out files) with the MLP preset,
/// `shards` × `slices`, into `run`, plus `extra` flags; returns stdout.
#[track_caller]
pub fn train_digits(run: &Path, shards: usize, slices: usize, extra: &[&str]) -> String {
    let (train_csv, test_csv) = digits();
    let (shards, slices) = (shards.to_string(), slices.to_string());
    let mut args = vec![
        "train",
        "--data",
        train_csv.to_str().unwrap(),
        "--test",
        test_csv.to_str().unwrap(),
        "--model",
        "mlp",
        "--shards",
        &shards,
        "--slices",
        &slices,
        "--out",
        run.to_str().unwrap(),
        "-q",
    ];
    args.extend(extra);
    sisa_ok(&args)
}
