//! What the benchmarks share: worker count, accuracy, and the facts a report states about the
//! machine and the build it measured.

// Each benchmark is its own crate and uses part of this module.
#![allow(dead_code)]

/// Append formatted text to a `String` (which cannot fail), and a newline.
macro_rules! wln {
    ($s:expr, $($arg:tt)*) => {{
        $s.push_str(&format!($($arg)*));
        $s.push('\n');
    }};
}
// In scope in each benchmark through `use common::*`.
pub(crate) use wln;

use sisa::data::csv::Table;
use sisa::ensemble::Ensemble;
use sisa::run::{Aggregation, Run};
use std::path::Path;

/// Worker threads: `SISA_BENCH_THREADS`, else 2.
pub fn threads() -> usize {
    std::env::var("SISA_BENCH_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2usize)
        .max(1)
}

/// Held-out accuracy of `run`'s ensemble on `test`, mean aggregation.
pub fn accuracy(run: &Run, test: &Table) -> anyhow::Result<f64> {
    let y = test.labels.as_deref().unwrap_or_default();
    Ok(Ensemble::load(run)?
        .evaluate(&test.x, y, Aggregation::Mean)
        .accuracy)
}

/// Write every dirty page back (sync(2)), so that the next fsyncs wait on their own writes
/// only (not on what training or other processes wrote).
pub fn flush_page_cache() {
    // SAFETY: sync(2) takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::sync() };
}

/// The core count and the CPU model.
pub fn machine() -> (String, String) {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    (nproc, sisa::run::config::cpu_model())
}

/// The commit the library was built from, as far as git tells it, and the files under `src/`
/// that differ from it.
pub fn git_state(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let changed = git(&["diff", "--name-only", "HEAD", "--", "src"]).unwrap_or_default();
    let changed: Vec<&str> = changed.lines().filter(|l| !l.is_empty()).collect();
    if changed.is_empty() {
        format!("commit {head}, with no uncommitted change under src/")
    } else {
        format!(
            "commit {head} plus uncommitted changes to {}",
            changed.join(", ")
        )
    }
}

/// The load averages from `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
