//! Training throughput beside the machine's peak: samples per second per core for a model
//! preset, and the fp32 FLOP rate of a fused multiply-add loop measured in the same process.
//!
//! Throughput trains one in-memory shard on one thread with the real trainer
//! ([`crate::train::ShardData::train`]) and takes the best of three timings, so a moment of
//! contention from other processes does not count against it. Its FLOPs per sample are the dense
//! layers' multiply-adds: `2·in·out` forward, `2·in·out` for the weight gradient, and `2·in·out`
//! for the input gradient of every layer but the first (activations, softmax and the optimizer
//! are left out, so the fraction of peak is slightly understated).

use crate::data::csv::Table;
use crate::data::ingest::{self, Target};
use crate::data::Secret;
use crate::error::Result;
use crate::model::ModelSpec;
use crate::plan::{self, ShardBy};
use crate::run::config::{cpu_model, RUN_FORMAT};
use crate::run::{Aggregation, RunConfig};
use crate::train::ShardData;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// The machine's measured fp32 peak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// GFLOP/s of one thread.
    pub per_core_gflops: f64,
    /// GFLOP/s of `threads` threads at once.
    pub machine_gflops: f64,
    /// Threads used for the machine figure.
    pub threads: usize,
    /// How it was measured.
    pub method: String,
}

/// One preset's training throughput.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PresetThroughput {
    /// Preset name.
    pub preset: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// FLOPs of one sample's forward and backward pass (dense layers).
    pub flops_per_sample: f64,
    /// Rows trained per second on one thread.
    pub samples_per_second_per_core: f64,
    /// `samples/s × FLOPs per sample`, in GFLOP/s.
    pub gflops: f64,
    /// `gflops / per-core peak`.
    pub fraction_of_peak: f64,
    /// Rows and epochs of the timed training.
    pub rows: usize,
    /// Epochs of the timed training.
    pub epochs: u32,
}

/// FLOPs of one sample's forward and backward pass through the dense and convolution layers
/// of `arch`: 2 per multiply-add forward, 2 for the weight gradient, and 2 for the input
/// gradient of every such layer but the first.
pub fn flops_per_sample(arch: &crate::model::Architecture) -> f64 {
    arch.layer_macs()
        .iter()
        .filter(|&&m| m > 0)
        .enumerate()
        .map(|(l, &m)| {
            if l == 0 {
                4.0 * m as f64
            } else {
                6.0 * m as f64
            }
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// Accumulators in flight: enough to cover the FMA latency on two ports.
    pub const LANES: usize = 12;

    /// `iters` rounds of 12 independent 8-wide FMAs; returns a value that depends on all.
    ///
    /// # Safety
    /// The CPU must support AVX and FMA.
    #[target_feature(enable = "avx,fma")]
    pub unsafe fn run(iters: u64) -> f32 {
        // Opaque constants, and accumulators that start apart, so the compiler can neither fold
        // the chain nor merge the accumulators.
        let a = _mm256_set1_ps(std::hint::black_box(0.999_9));
        let b = _mm256_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm256_setzero_ps(); LANES];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm256_set1_ps(std::hint::black_box(i as f32));
        }
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut sum = _mm256_setzero_ps();
        for v in acc {
            sum = _mm256_add_ps(sum, v);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), sum);
        out.iter().sum()
    }
}

/// FLOPs done by `iters` rounds of the loop that [`peak_loop`] runs, and how.
fn peak_loop(iters: u64) -> (f64, f32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma") {
        // SAFETY: both target features were detected on this CPU just above.
        let v = unsafe { fma::run(std::hint::black_box(iters)) };
        return (
            iters as f64 * fma::LANES as f64 * 8.0 * 2.0,
            v,
            "AVX2 FMA loop (_mm256_fmadd_ps, 12 independent accumulators)",
        );
    }
    let mut acc: [f32; 16] = std::array::from_fn(|i| std::hint::black_box(i as f32));
    let (a, b) = (
        std::hint::black_box(0.999_9f32),
        std::hint::black_box(1e-3f32),
    );
    for _ in 0..std::hint::black_box(iters) {
        for v in acc.iter_mut() {
            *v = *v * a + b;
        }
    }
    (
        iters as f64 * 16.0 * 2.0,
        acc.iter().sum(),
        "scalar multiply-add loop (no FMA detected)",
    )
}

/// Measure the fp32 peak: one thread, then `threads` threads at once (best of three each).
pub fn measure_peak(threads: usize) -> Peak {
    // Calibrate to about 0.2 s per run.
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(peak_loop(iters));
        if t.elapsed().as_secs_f64() > 0.05 || iters > 1 << 34 {
            let scale = 0.2 / t.elapsed().as_secs_f64().max(1e-6);
            iters = ((iters as f64 * scale) as u64).max(1);
            break;
        }
        iters *= 4;
    }
    let best = |threads: usize| -> f64 {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let flops: f64 = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|_| s.spawn(|| std::hint::black_box(peak_loop(iters)).0))
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
                });
                flops / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    Peak {
        per_core_gflops: best(1),
        machine_gflops: best(threads.max(1)),
        threads: threads.max(1),
        method: peak_loop(1).2.to_string(),
    }
}

/// Train `spec` for `epochs` epochs on the first `rows` rows of `table` (one shard, one
/// thread, in memory) three times; report the best throughput against `peak_per_core`.
pub fn measure_preset(
    spec: &ModelSpec,
    table: &Table,
    rows: usize,
    epochs: u32,
    seed: u64,
    peak_per_core: f64,
) -> Result<PresetThroughput> {
    let rows = rows.min(table.len()).max(1);
    let sub = Table {
        path: table.path.clone(),
        feature_names: table.feature_names.clone(),
        user_ids: table.user_ids.as_ref().map(|u| u[..rows].to_vec()),
        labels: table.labels.as_ref().map(|l| l[..rows].to_vec()),
        x: table.x[..rows * table.dim()].to_vec(),
        lines: table.lines[..rows].to_vec(),
    };
    let classes = table
        .labels
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as usize
        + 1;
    let mut model = spec.clone();
    model.epochs = epochs;
    let config = RunConfig {
        format: RUN_FORMAT.to_string(),
        name: format!("throughput-{}", spec.name),
        stage_epochs: plan::stage_epochs(epochs, 1),
        model,
        shards: 1,
        slices: 1,
        seed,
        shard_by: ShardBy::User,
        slice_by: crate::plan::SliceBy::User,
        risk_shards: 0,
        risk_threshold: None,
        features: sub.feature_names.clone(),
        classes,
        class_names: None,
        backend: crate::model::Backend::Dense,
        device: Default::default(),
        gpu: None,
        user_column: "user_id".into(),
        label_column: "label".into(),
        prior_column: None,
        aggregation: Aggregation::Mean,
        cpu: cpu_model(),
        created_by: format!("sisa {}", env!("CARGO_PKG_VERSION")),
        secret_check: String::new(),
    };
    let placed = ingest::place_rows(
        &sub,
        config.rules(),
        Target::Train,
        None,
        &Secret::generate()?,
        &HashMap::new(),
    )?;
    let digest = config.digest();
    let data = ShardData::new(&config, &digest, 0, &placed[0]);
    let parameters = config.architecture()?.parameters() as usize;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        data.train(1, None, &ProgressBar::hidden(), &|_| {}, |_, _, _| Ok(()))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let samples = (rows as f64 * epochs as f64) / best.max(1e-9);
    let flops = flops_per_sample(&config.architecture()?);
    let gflops = samples * flops / 1e9;
    Ok(PresetThroughput {
        preset: spec.name.clone(),
        parameters,
        flops_per_sample: flops,
        samples_per_second_per_core: samples,
        gflops,
        fraction_of_peak: if peak_per_core > 0.0 {
            gflops / peak_per_core
        } else {
            0.0
        },
        rows,
        epochs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_by_hand() {
        let arch = |hidden: &str, f: usize| {
            let spec: crate::model::ModelSpec = toml::from_str(&format!(
                "name = \"t\"\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 8\nepochs = 2\n{hidden}\n"
            ))
            .unwrap();
            spec.architecture(f, 10).unwrap()
        };
        // 784→128→10: 4·784·128 + 6·128·10.
        assert_eq!(
            flops_per_sample(&arch("hidden = [128]", 784)),
            4.0 * 100_352.0 + 6.0 * 1_280.0
        );
        // Logistic regression: one layer, forward and weight gradient only.
        assert_eq!(flops_per_sample(&arch("hidden = []", 64)), 4.0 * 640.0);
        // A convolution counts its output positions × window: 8 filters of 3×3 over 1×4×4
        // with padding 1 is 16·8·9 multiply-adds, then 4·4·8 → 10.
        let conv = arch(
            "input = [1, 4, 4]\nlayers = [{ kind = \"conv2d\", filters = 8, kernel = 3, padding = 1 }, { kind = \"flatten\" }]",
            16,
        );
        assert_eq!(flops_per_sample(&conv), 4.0 * 1152.0 + 6.0 * 1280.0);
    }

    #[test]
    fn the_peak_loop_counts_its_flops() {
        let (flops, v, _) = peak_loop(10);
        assert!(flops >= 10.0 * 16.0 * 2.0);
        assert!(v.is_finite());
    }
}
