//! `cargo bench --bench unlearn_vs_retrain`: the standard suite of `sisa bench`.
//!
//! Fashion-MNIST (from Debian's `dataset-fashion-mnist`) when it is installed, else the bundled
//! `datasets/mnist-5k` (the report says so); the MLP preset at the standard suite's epochs;
//! S = 1, 5, 10, 20, R = 1, 5, 10, K = 1, 8; sharding by row beside sharding by user; the
//! membership audit. The report goes to `target/bench/unlearn_vs_retrain/` (replaced on every
//! run). Set `SISA_BENCH_THREADS` to change the worker count (default: every core).

use std::path::{Path, PathBuf};

/// Epochs of the standard suite: 2·6/(R+1) is exact for R = 1 and 5 and within 10% for R = 10,
/// and the sweep stays within 30 minutes on 2 cores.
const EPOCHS: u32 = 6;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let standard = sisa::bench::standard_data(&root.join("datasets"));
    if let Some(note) = &standard.note {
        eprintln!("unlearn_vs_retrain: {note}");
    }
    let model_path = root.join("models/mlp.toml");
    let mut model = sisa::model::ModelSpec::load(&model_path)?;
    let preset_epochs = model.epochs;
    model.epochs = EPOCHS;
    let out = root.join("target/bench/unlearn_vs_retrain");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let threads = match std::env::var("SISA_BENCH_THREADS") {
        Ok(t) => t.parse()?,
        Err(_) => sisa::train::default_threads(),
    };
    let opts = sisa::bench::BenchOptions {
        device: Default::default(),
        data: standard.data,
        test: Some(standard.test),
        labels: None,
        test_labels: None,
        users: standard.users,
        dataset_name: standard.name,
        dataset_note: standard.note,
        model_path,
        model,
        preset_epochs,
        presets: ["logreg", "mlp"]
            .iter()
            .map(|name| sisa::model::presets::built_in(name).unwrap().spec())
            .collect::<sisa::Result<_>>()
            .unwrap(),
        shards: vec![1, 5, 10, 20],
        slices: vec![1, 5, 10],
        requests: vec![1, 8],
        samples: 50,
        seed: 7,
        row_sharding: true,
        slice_by: sisa::plan::SliceBy::User,
        audit: true,
        membership: Default::default(),
        keep_runs: false,
        out: out.clone(),
        threads,
        progress: true,
    };
    let (report, written) = sisa::bench::run(&opts)?;
    print!("{}", sisa::bench::report::markdown(&report));
    let plots: Vec<PathBuf> = written.plots;
    eprintln!(
        "unlearn_vs_retrain: report in {} ({} plots), {:.0} s",
        out.display(),
        plots.len(),
        report.seconds
    );
    Ok(())
}
