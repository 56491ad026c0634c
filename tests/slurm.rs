//! Scale-out under a real Slurm (the one-node cluster `.ci/slurm-setup.sh` starts from
//! Debian's packages): the script `sisa slurm` writes is submitted with sbatch, one array task
//! per shard and a dependent publish job, and the result is checked bitwise against training
//! in one process; then an array whose tasks are killed mid-shard, resubmitted with
//! `--pending`; then a deferred unlearn retrained by an array. Without Slurm the test says why
//! and passes, unless `CI` is set: then it fails, so CI always runs it.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SEED: u64 = 7;
const SHARDS: usize = 4;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Whether a Slurm controller answers here with a node that can run jobs.
fn slurm_present() -> bool {
    let why = match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
        Ok(o) if o.status.success() => {
            let states = String::from_utf8_lossy(&o.stdout).to_string();
            if states
                .lines()
                .any(|l| l.starts_with("idle") || l.starts_with("mixed") || l.starts_with("alloc"))
            {
                return true;
            }
            format!("sinfo shows no node that can run jobs: {states:?}")
        }
        Ok(o) => format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run sinfo: {e}"),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set and Slurm is not running: {why}; start it with .ci/slurm-setup.sh"
    );
    println!("skipped: {why}; run .ci/slurm-setup.sh (as root) to start a one-node Slurm");
    false
}

fn train(run: &Path, extra: &[&str]) {
    train_digits(run, SHARDS, 3, extra);
}

/// Write `sisa slurm --run RUN [extra]` to a file in `dir` and submit it with sbatch from
/// `dir` (where the publish job's log goes), with `env` set; returns the array's job id.
fn submit(dir: &Path, run: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let output = format!("{}/%x-%A_%a.out", logs.display());
    let mut args = vec!["slurm", "--run", s(run), "--output", &output];
    args.extend(extra);
    let script = sisa_ok(&args);
    let file = dir.join("train.sbatch");
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable").arg(&file).current_dir(dir);
    cmd.env_remove("SISA_FAILPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("sbatch runs");
    assert!(
        out.status.success(),
        "sbatch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Wait until no job of this run (the array and its publish job) is queued or running.
fn wait_for_jobs(dir: &Path, name: &str) {
    let started = Instant::now();
    // The publish job is submitted by the array's first task: give it the time to appear.
    std::thread::sleep(Duration::from_secs(1));
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%j %T"])
            .output()
            .expect("squeue runs");
        let queue = String::from_utf8_lossy(&out.stdout).to_string();
        if !queue.lines().any(|l| l.starts_with(name)) {
            return;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let mut logs = String::new();
            for e in std::fs::read_dir(dir.join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                logs += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
            panic!("the jobs did not finish in 600 s:\n{queue}\nlogs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every log the jobs wrote, for messages.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "out") {
            out += &format!(
                "== {}\n{}",
                p.display(),
                std::fs::read_to_string(&p).unwrap_or_default()
            );
        }
    }
    for e in std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out += &format!(
            "== {}\n{}",
            e.path().display(),
            std::fs::read_to_string(e.path()).unwrap_or_default()
        );
    }
    out
}

#[test]
fn slurm_arrays_train_and_retrain_bitwise_as_one_process_and_killed_tasks_converge() {
    if !slurm_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    train(&one, &[]);
    let run = tmp.path().join("big");
    train(&run, &["--plan-only"]);
    let job = "sisa-big";

    // 1. Every task is killed as it writes its second stage's checkpoint: the publish job
    //    never runs, and nothing is published.
    submit(
        tmp.path(),
        &run,
        &[],
        &[("SISA_FAILPOINT", "task.checkpoint:2")],
    );
    wait_for_jobs(tmp.path(), job);
    assert!(!run.join("CURRENT").exists(), "{}", logs(tmp.path()));
    let status = sisa_json(&["status", "--run", s(&run)]);
    assert_eq!(status["plan"]["trained"], 0, "{}", logs(tmp.path()));

    // 2. Resubmitted: the tasks resume from the checkpoints on disk; the publish job runs.
    submit(tmp.path(), &run, &["--pending"], &[]);
    wait_for_jobs(tmp.path(), job);
    assert!(run.join("CURRENT").exists(), "{}", logs(tmp.path()));
    assert!(logs(tmp.path()).contains("from an earlier attempt"));
    assert_eq!(digests(&run), digests(&one), "{}", logs(tmp.path()));

    // 3. A deferred unlearn of users in two shards, retrained by an array of two tasks.
    let (train_csv, _) = digits();
    let mut by = vec![Vec::new(); SHARDS];
    for (u, _) in Csv::read(&train_csv).users() {
        by[sisa::plan::shard_of_user(SEED, &u, SHARDS)].push(u);
    }
    let (a, b) = (&by[0][0], &by[3][0]);
    let deferred = sisa_json(&[
        "unlearn",
        "--run",
        s(&run),
        "--user",
        a,
        "--user",
        b,
        "--no-retrain",
    ]);
    assert_eq!(deferred["pending_shards"], serde_json::json!([0, 3]));
    let script = sisa_ok(&["slurm", "--run", s(&run), "--pending"]);
    assert!(script.contains("#SBATCH --array='0-1'"), "{script}");
    submit(tmp.path(), &run, &["--pending"], &[]);
    wait_for_jobs(tmp.path(), job);
    let status = sisa_json(&["status", "--run", s(&run)]);
    assert_eq!(status["version"], 2, "{}", logs(tmp.path()));
    sisa_ok(&["unlearn", "--run", s(&one), "--user", a, "--user", b, "-q"]);
    assert_eq!(digests(&run), digests(&one));
    assert!(run.join("receipts/000001.json").exists());
    assert_eq!(sisa_json(&["verify", "--run", s(&run)])["identical"], true);
}
