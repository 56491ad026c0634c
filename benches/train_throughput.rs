//! Training throughput per core: each model preset at batch 128 and 256, one shard on one core
//! and shards side by side on every core, beside the machine's fp32 peak measured in the same
//! run (an FMA loop, and the best single-threaded SGEMM of two libraries at 1024² and 2048²,
//! each measured before and after the training runs, the higher kept), as a fraction of peak. A shard's time is what `sisa` spends on it: slicing and hashing its
//! rows, then training (standardizing each batch as it is gathered).
//!
//! When `python3 -c "import torch"` works (or `SISA_PYTHON` names an interpreter where it
//! does), the same models, shapes, batch sizes and optimizer are trained in PyTorch by
//! `benches/pytorch_reference.py` in the same run, and the ratio is reported.
//!
//! Then the peak resident memory of `sisa train` on Fashion-MNIST (60,000 × 784) at S=20,
//! R=10, beside the size of the data and of the checkpoints being written, when the dataset
//! is installed (`apt-get install dataset-fashion-mnist`, or `SISA_FASHION_MNIST=DIR`).
//!
//! FLOPs are counted as 6 × the multiply-adds of one row's forward pass (forward, weight
//! gradient, input gradient): for dense layers that is about 6 × the parameters; for the CNN,
//! whose convolutions reuse their weights, the multiply-adds are what counts.
//!
//!     cargo bench --bench train_throughput            # everything
//!     cargo bench --bench train_throughput -- Purchase   # only cases whose name matches

use sisa::data::{RowId, Rows, UserKey};
use sisa::model::{Activation, LayerSpec, ModelSpec, OptimizerKind};
use sisa::plan::{ShardBy, SliceBy};
use sisa::run::config::RUN_FORMAT;
use sisa::run::{Aggregation, RunConfig};
use sisa::train::rng::SplitMix64;
use sisa::train::ShardData;
use std::process::Command;
use std::time::Instant;

/// One benchmarked shape.
struct Case {
    name: &'static str,
    inputs: usize,
    hidden: Vec<usize>,
    classes: usize,
    /// An image preset's input shape and layers (empty `layers`: dense `hidden`).
    image: Option<[usize; 3]>,
    layers: Vec<LayerSpec>,
    /// Rows and epochs of one timed run (the CNN costs about 60 times an MLP row).
    rows: usize,
    epochs: u32,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "mlp (Purchase: 600-128-100)",
            inputs: 600,
            hidden: vec![128],
            classes: 100,
            image: None,
            layers: vec![],
            rows: ROWS,
            epochs: EPOCHS,
        },
        Case {
            name: "mlp (MNIST: 784-128-10)",
            inputs: 784,
            hidden: vec![128],
            classes: 10,
            image: None,
            layers: vec![],
            rows: ROWS,
            epochs: EPOCHS,
        },
        Case {
            name: "logreg (600-100)",
            inputs: 600,
            hidden: vec![],
            classes: 100,
            image: None,
            layers: vec![],
            rows: ROWS,
            epochs: EPOCHS,
        },
        {
            let preset = ModelSpec::load(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cnn.toml"),
            )
            .expect("models/cnn.toml loads");
            Case {
                name: "cnn (models/cnn.toml: 1x28x28, 10 classes)",
                inputs: 784,
                hidden: vec![],
                classes: 10,
                image: preset.input,
                layers: preset.layers,
                rows: CNN_ROWS,
                epochs: CNN_EPOCHS,
            }
        },
    ]
}

fn config(case: &Case, batch: usize, shards: usize) -> RunConfig {
    RunConfig {
        format: RUN_FORMAT.to_string(),
        name: "bench".into(),
        model: ModelSpec {
            name: "bench".into(),
            description: String::new(),
            hidden: case.hidden.clone(),
            activation: Activation::Tanh,
            optimizer: OptimizerKind::Adam,
            lr: 0.001,
            momentum: 0.9,
            weight_decay: 0.01,
            batch_size: batch,
            epochs: 1,
            standardize: sisa::model::Standardize::None,
            scale: None,
            augment: None,
            min_steps: None,
            input: case.image,
            layers: case.layers.clone(),
            source: None,
        },
        shards,
        slices: 1,
        stage_epochs: vec![case.epochs],
        seed: 1,
        shard_by: ShardBy::User,
        slice_by: SliceBy::User,
        risk_shards: 0,
        risk_threshold: None,
        features: (0..case.inputs).map(|i| format!("f{i}")).collect(),
        classes: case.classes,
        class_names: None,
        backend: sisa::model::Backend::Dense,
        device: Default::default(),
        gpu: None,
        user_column: "user_id".into(),
        label_column: "label".into(),
        prior_column: None,
        aggregation: Aggregation::Mean,
        cpu: String::new(),
        created_by: String::new(),
        secret_check: String::new(),
    }
}

const ROWS: usize = 16_384;
const EPOCHS: u32 = 3;
const CNN_ROWS: usize = 4096;
const CNN_EPOCHS: u32 = 1;
/// Runs per measurement; the best is reported, here and by the PyTorch reference.
const REPEATS: usize = 5;

fn rows(case: &Case, seed: u64) -> Rows {
    let mut rng = SplitMix64::new(seed);
    let mut r = Rows::new(case.inputs);
    let mut x = vec![0f32; case.inputs];
    for i in 0..case.rows {
        x.iter_mut().for_each(|v| *v = rng.next_symmetric());
        let label = (rng.next_u64() % case.classes as u64) as u32;
        let row = RowId {
            key: UserKey([0; 32]),
            seq: i as u32,
            tag: rng.next_u64(),
        };
        r.push(row, 0, label, &x);
    }
    r.sort();
    r
}

/// Samples per second of training `shards` shards side by side, each on its own thread: the
/// best of `REPEATS` runs, as the peaks are best-of too (a run that shared the machine with
/// another tenant measures the tenant, not the trainer).
fn throughput(case: &Case, batch: usize, shards: usize) -> f64 {
    let config = config(case, batch, shards);
    let digest = config.digest();
    let data: Vec<Rows> = (0..shards).map(|k| rows(case, k as u64 + 10)).collect();
    let rates: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for (k, r) in data.iter().enumerate() {
                    let config = &config;
                    s.spawn(move || {
                        let shard = ShardData::new(config, &digest, k, r);
                        let bar = indicatif::ProgressBar::hidden();
                        shard
                            .train(1, None, &bar, &|_| {}, |_, _, _| Ok(()))
                            .expect("training runs");
                    });
                }
            });
            (shards * case.rows * case.epochs as usize) as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.into_iter().fold(0.0, f64::max)
}

/// fp32 FLOP/s of one core running independent fused multiply-adds.
fn fma_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features the function is compiled for were detected just above.
            return unsafe { fma_peak_avx2() };
        }
    }
    fma_peak_scalar()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_peak_avx2() -> f64 {
    use std::arch::x86_64::*;
    let iters = 40_000_000u64;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let start = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut sink = 0f32;
    for v in acc {
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), v);
        sink += out.iter().sum::<f32>();
    }
    std::hint::black_box(sink);
    (iters * 12 * 8 * 2) as f64 / secs
}

fn fma_peak_scalar() -> f64 {
    let iters = 100_000_000u64;
    let mut acc = [1f32; 8];
    let start = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters * 8 * 2) as f64 / start.elapsed().as_secs_f64()
}

/// fp32 FLOP/s of single-threaded SGEMM at n×n: `matrixmultiply` (the kernel training uses)
/// and the `gemm` crate (candle's), best of five each.
fn gemm_peaks(n: usize) -> (f64, f64) {
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let best = |f: &mut dyn FnMut()| {
        f();
        let secs = (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        2.0 * (n * n * n) as f64 / secs
    };
    let ni = n as isize;
    // SAFETY (both): all three buffers are n×n, row-major, as the strides say.
    let mm = best(&mut || unsafe {
        matrixmultiply::sgemm(
            n,
            n,
            n,
            1.0,
            a.as_ptr(),
            ni,
            1,
            b.as_ptr(),
            ni,
            1,
            0.0,
            c.as_mut_ptr(),
            ni,
            1,
        )
    });
    let gm = best(&mut || unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            ni,
            false,
            a.as_ptr(),
            1,
            ni,
            b.as_ptr(),
            1,
            ni,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    });
    std::hint::black_box(&c);
    (mm, gm)
}

/// Multiply-adds of one row's forward pass (dense and convolution layers).
fn macs(case: &Case) -> u64 {
    config(case, 128, 1)
        .architecture()
        .expect("the bench presets are valid")
        .layer_macs()
        .iter()
        .sum()
}

/// Samples/s from the PyTorch reference, keyed by (case index, batch, processes).
fn pytorch() -> Option<Vec<(usize, usize, usize, f64)>> {
    let python = std::env::var("SISA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("PyTorch is not importable by {python}; skipping the reference (pip install torch, or set SISA_PYTHON)");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pytorch_reference.py");
    let out = Command::new(&python)
        .args([
            script,
            "--rows",
            &ROWS.to_string(),
            "--epochs",
            &EPOCHS.to_string(),
            "--repeats",
            &REPEATS.to_string(),
            "--cnn-rows",
            &CNN_ROWS.to_string(),
            "--cnn-epochs",
            &CNN_EPOCHS.to_string(),
        ])
        .output()
        .expect("python runs");
    if !out.status.success() {
        eprintln!(
            "pytorch_reference.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.parse().ok()?,
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                ))
            })
            .collect(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters the cases by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // The peaks are measured before and after the training runs and the higher kept: a peak
    // caught in a slow moment of this machine would flatter every fraction.
    let peaks = || {
        let (mm1, gm1) = gemm_peaks(1024);
        let (mm2, gm2) = gemm_peaks(2048);
        [fma_peak(), mm1, mm2, gm1, gm2]
    };
    let before = peaks();
    let torch = pytorch();
    let cases = cases();
    let mut measured = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        if !selected(case.name) {
            continue;
        }
        for batch in [128, 256] {
            for shards in [1, cores] {
                measured.push((ci, case, batch, shards, throughput(case, batch, shards)));
            }
        }
    }
    let after = peaks();
    let [fma, mm1, mm2, gm1, gm2] = std::array::from_fn(|i| before[i].max(after[i]));
    let gemm = mm1.max(gm1).max(mm2).max(gm2);
    println!("# Training throughput ({cores} cores)\n");
    println!("fp32 peak, one core, GFLOP/s (higher of before and after the runs): FMA loop {:.1}; SGEMM matrixmultiply {:.1} (1024²) {:.1} (2048²), gemm {:.1} (1024²) {:.1} (2048²); best SGEMM {:.1}\n",
        fma / 1e9, mm1 / 1e9, mm2 / 1e9, gm1 / 1e9, gm2 / 1e9, gemm / 1e9);
    println!("| model | batch | shards × threads | samples/s | per core | GFLOP/s per core (6·MACs/sample) | of FMA peak | of best SGEMM | PyTorch samples/s | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (ci, case, batch, shards, sps) in measured {
        let per_core = sps / shards as f64;
        let flops = per_core * 6.0 * macs(case) as f64;
        let reference = torch
            .as_ref()
            .and_then(|t| {
                t.iter()
                    .find(|(c, b, p, _)| *c == ci && *b == batch && *p == shards)
            })
            .map(|t| t.3);
        println!(
            "| {} | {batch} | {shards} × 1 | {:.0} | {:.0} | {:.1} | {:.0}% | {:.0}% | {} | {} |",
            case.name,
            sps,
            per_core,
            flops / 1e9,
            100.0 * flops / fma,
            100.0 * flops / gemm,
            reference
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "n/a".into()),
            reference
                .map(|r| format!("{:.2}×", sps / r))
                .unwrap_or_else(|| "n/a".into()),
        );
    }
    if selected("memory") {
        memory();
    }
}

/// Peak resident memory of `sisa train` on Fashion-MNIST at S=20, R=10 (one epoch: memory
/// does not grow with epochs), beside the data and the checkpoints being written.
fn memory() {
    let dir = std::env::var_os("SISA_FASHION_MNIST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into());
    let images = dir.join("train-images-idx3-ubyte.gz");
    if !images.is_file() {
        println!("\nFashion-MNIST is not at {}; skipping the memory measurement (apt-get install dataset-fashion-mnist, or set SISA_FASHION_MNIST)", dir.display());
        return;
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let out = tmp.path().join("run");
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let output = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["train", "--data"])
        .arg(&images)
        .args(["--users", "uniform:12000", "--model", "models/mlp.toml"])
        .args([
            "--shards", "20", "--slices", "10", "--epochs", "1", "-q", "--json",
        ])
        .args(["--threads", &threads.to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("sisa runs");
    assert!(
        output.status.success(),
        "sisa train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("train --json prints JSON");
    let Some(peak) = report["peak_rss_bytes"].as_u64() else {
        println!("\nsisa train reported no peak resident memory on this platform");
        return;
    };
    let run = sisa::run::Run::open(&out).expect("the run opens");
    let rows = report["rows"].as_u64().expect("rows") as f64;
    let data = rows * run.config.features.len() as f64 * 4.0;
    let checkpoint = largest_file(&out.join("checkpoints")) as f64;
    let bound = 2.0 * data + threads as f64 * checkpoint;
    println!("\n## Memory: sisa train on Fashion-MNIST, S=20, R=10, {threads} threads\n");
    println!("| peak resident | data (rows × features × 4 B) | peak / data | largest checkpoint | bound 2 × data + {threads} checkpoints | within |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.0} MB | {:.0} MB | {:.2}× | {:.2} MB | {:.0} MB | {} |",
        peak as f64 / 1e6,
        data / 1e6,
        peak as f64 / data,
        checkpoint / 1e6,
        bound / 1e6,
        if (peak as f64) <= bound { "yes" } else { "no" }
    );
}

/// Size of the largest file under `dir`.
fn largest_file(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let meta = e.metadata().expect("metadata");
                    if meta.is_dir() {
                        largest_file(&e.path())
                    } else {
                        meta.len()
                    }
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}
