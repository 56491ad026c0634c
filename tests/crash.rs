//! Crash tests: the real binary is stopped at every fault point of unlearning and publishing
//! (process abort), with torn writes and injected fsync errors, and by SIGKILL at random
//! moments; after `sisa recover` the request is never lost, the users' rows are gone from every
//! file, no tainted checkpoint or model remains, and every digest equals an uncrashed run's.

mod common;

use common::*;
use sisa::data::Rows;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Files of a run that make up its published state: data, checkpoints, manifests, receipts.
fn file_set(run: &Path) -> BTreeSet<PathBuf> {
    tree_digest(run)
        .into_keys()
        .filter(|p| !p.starts_with("ledger.jsonl") && !p.starts_with("LOCK"))
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    base: PathBuf,
    users: Vec<String>,
    digests: Vec<String>,
    files: BTreeSet<PathBuf>,
}

fn unlearn_args<'a>(run: &'a str, users: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["unlearn", "--run", run, "-q", "--threads", "2"];
    for u in users {
        args.extend(["--user", u.as_str()]);
    }
    args
}

/// A trained run and the outcome of unlearning two users (in different shards) uncrashed.
/// With `placed`, the run slices by row and has a deletion prior that sets a shard aside for
/// every third user.
fn fixture(epochs: &str, placed: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (train, test) = digits();
    let base = dir.join("base");
    let csv = Csv::read(&train);
    let priors = dir.join("priors.csv");
    let mut text = "user_id,p\n".to_string();
    for (i, (u, _)) in csv.users().iter().enumerate() {
        text.push_str(&format!("{u},{}\n", if i % 3 == 0 { 0.9 } else { 0.0 }));
    }
    std::fs::write(&priors, text).unwrap();
    let extra = [
        "--slice-by",
        "row",
        "--deletion-prior",
        priors.to_str().unwrap(),
        "--risk-shards",
        "1",
    ];
    let mut args = vec![
        "train",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/mlp.toml",
        "--shards",
        "3",
        "--slices",
        "2",
        "--epochs",
        epochs,
        "--out",
        base.to_str().unwrap(),
        "-q",
    ];
    if placed {
        args.extend(extra);
    }
    sisa_ok(&args);
    let mut users: Vec<String> = Vec::new();
    let mut shards = HashSet::new();
    for (u, _) in csv.users() {
        let plan = sisa_json(&[
            "unlearn",
            "--run",
            base.to_str().unwrap(),
            "--user",
            &u,
            "--dry-run",
        ]);
        if shards.insert(plan["shards"][0]["shard"].as_u64().unwrap()) {
            users.push(u);
        }
        if users.len() == 2 {
            break;
        }
    }
    let reference = dir.join("reference");
    copy_dir(&base, &reference);
    sisa_ok(&unlearn_args(reference.to_str().unwrap(), &users));
    Fixture {
        digests: digests(&reference),
        files: file_set(&reference),
        _tmp: tmp,
        dir,
        base,
        users,
    }
}

/// After recovery: request done, rows gone everywhere, same files and digests as uncrashed.
#[track_caller]
fn assert_recovered(f: &Fixture, run: &Path, what: &str) {
    let r = run.to_str().unwrap();
    let out = sisa(&["recover", "--run", r, "-q"]);
    assert!(
        out.status.success(),
        "{what}: recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = sisa::unlearn::Ledger::open(&run.join("ledger.jsonl")).unwrap();
    if ledger.requests().is_empty() {
        // The crash came before the acknowledgement: the client never heard back and retries.
        sisa_ok(&unlearn_args(r, &f.users));
    }
    let ledger = sisa::unlearn::Ledger::open(&run.join("ledger.jsonl")).unwrap();
    assert_eq!(
        ledger.requests(),
        [1],
        "{what}: exactly one request, not lost"
    );
    assert!(ledger.is_done(1), "{what}: request completed");
    assert_eq!(
        digests(run),
        f.digests,
        "{what}: digests equal the uncrashed run's"
    );
    assert_eq!(
        file_set(run),
        f.files,
        "{what}: no tainted or stray file remains"
    );
    let opened = sisa::run::Run::open(run).unwrap();
    let keys: HashSet<_> = f.users.iter().map(|u| opened.key(u)).collect();
    for p in tree_digest(&run.join("data")).keys() {
        let path = run.join("data").join(p);
        let rows = Rows::decode(&path, &std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            rows.count_of(&keys),
            0,
            "{what}: {} still holds the users' rows",
            path.display()
        );
    }
}

/// Run the fixture's unlearn request on `run` with `SISA_FAILPOINT=spec`.
fn unlearn_with_failpoint(f: &Fixture, run: &Path, spec: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(unlearn_args(run.to_str().unwrap(), &f.users))
        .env("SISA_FAILPOINT", spec)
        .output()
        .unwrap()
}

fn crashed(out: &std::process::Output) -> bool {
    !out.status.success() && out.status.code().is_none()
}

#[test]
fn every_fault_point_of_unlearn_and_publish_recovers() {
    every_fault_point_recovers(fixture("4", false));
}

#[test]
fn every_fault_point_recovers_with_row_slices_and_a_shard_set_aside_by_a_deletion_prior() {
    every_fault_point_recovers(fixture("4", true));
}

fn every_fault_point_recovers(f: Fixture) {
    let base = f.base.to_str().unwrap().to_string();
    // List the fault points one uncrashed request passes through.
    let probe = f.dir.join("probe");
    copy_dir(&f.base, &probe);
    let log = f.dir.join("points.log");
    let out = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(unlearn_args(probe.to_str().unwrap(), &f.users))
        .env("SISA_FAILPOINT_LOG", &log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let points: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let names: BTreeSet<&str> = points
        .iter()
        .map(|p| p.rsplit_once(':').unwrap().0)
        .collect();
    assert!(points.len() > 40, "{points:?}");
    for needed in [
        "ledger.accepted.write",
        "rows.rename",
        "checkpoint.rename",
        "publish.manifest.rename",
        "publish.current.rename",
        "gc.remove",
        "receipt.rename",
        "ledger.done.done",
    ] {
        assert!(
            names.contains(needed),
            "fault point {needed} is passed: {names:?}"
        );
    }
    let mut covered = 0;
    for (i, point) in points.iter().enumerate() {
        let run = f.dir.join(format!("crash-{i}"));
        copy_dir(Path::new(&base), &run);
        let out = unlearn_with_failpoint(&f, &run, point);
        assert!(
            crashed(&out),
            "{point}: the process was aborted there: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_recovered(&f, &run, point);
        covered += 1;
        std::fs::remove_dir_all(&run).unwrap();
    }
    // Torn writes: half a temp file reaches the disk, then the process dies.
    let torn: BTreeSet<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".rename"))
        .map(|p| format!("torn:{p}"))
        .collect();
    for spec in &torn {
        let run = f.dir.join("torn");
        copy_dir(Path::new(&base), &run);
        let out = unlearn_with_failpoint(&f, &run, spec);
        assert!(crashed(&out), "{spec}");
        assert_recovered(&f, &run, spec);
        covered += 1;
        std::fs::remove_dir_all(&run).unwrap();
    }
    // Injected fsync errors: the command fails cleanly (exit 1, the file named), and the next
    // start recovers.
    let fsyncs: BTreeSet<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".write"))
        .map(|p| format!("error:{p}.fsync"))
        .collect();
    for spec in &fsyncs {
        let run = f.dir.join("fsync");
        copy_dir(Path::new(&base), &run);
        let out = unlearn_with_failpoint(&f, &run, spec);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{spec}: {err}");
        assert!(err.contains("injected failure"), "{spec}: {err}");
        assert_recovered(&f, &run, spec);
        covered += 1;
        std::fs::remove_dir_all(&run).unwrap();
    }
    println!(
        "crash test: {} fault-point hits ({} distinct points), {} torn writes, {} fsync errors: {covered} crashes, all recovered",
        points.len(),
        names.len(),
        torn.len(),
        fsyncs.len()
    );
}

#[test]
fn sigkill_at_twenty_random_moments_recovers() {
    let f = fixture("120", false);
    // How long an uncrashed unlearn takes here, to spread the kills over it.
    let timing = f.dir.join("timing");
    copy_dir(&f.base, &timing);
    let start = Instant::now();
    sisa_ok(&unlearn_args(timing.to_str().unwrap(), &f.users));
    let span = start.elapsed();
    let mut state = 0x5eed_u64;
    let mut killed = 0;
    let mut moments = BTreeMap::new();
    for i in 0..20 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let frac = (state >> 11) as f64 / (1u64 << 53) as f64;
        let delay = span.mul_f64(frac * 1.1);
        let run = f.dir.join(format!("kill-{i}"));
        copy_dir(&f.base, &run);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sisa"))
            .args(unlearn_args(run.to_str().unwrap(), &f.users))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed += 1;
        }
        moments.insert(i, format!("{:.0} ms", delay.as_secs_f64() * 1e3));
        assert_recovered(&f, &run, &format!("SIGKILL after {delay:?}"));
        std::fs::remove_dir_all(&run).unwrap();
    }
    assert!(
        killed >= 1,
        "kills land while the request runs ({killed} of 20)"
    );
    println!("SIGKILL test: uncrashed unlearn took {span:?}; {killed} of 20 runs killed mid-way at {moments:?}; all recovered");
}

/// The steps of a deferred deletion on a cluster: accept and erase (`--no-retrain`), the shard
/// tasks of the plan, and publish.
fn deferred_steps(run: &str, users: &[String], pending: &str) -> Vec<Vec<String>> {
    let mut unlearn: Vec<String> = unlearn_args(run, users)
        .into_iter()
        .map(String::from)
        .collect();
    unlearn.push("--no-retrain".into());
    vec![
        unlearn,
        ["train-shard", "--run", run, "-q", "--shards", pending]
            .map(String::from)
            .to_vec(),
        ["publish", "--run", run, "-q"].map(String::from).to_vec(),
    ]
}

/// Finish a deferred deletion after a crash the way an operator does: open the run
/// (`recover`), ask again if the request was never acknowledged, run the plan's remaining
/// tasks, publish.
fn finish_deferred(f: &Fixture, run: &Path, what: &str) {
    let r = run.to_str().unwrap();
    let out = sisa(&["recover", "--run", r, "-q"]);
    assert!(
        out.status.success(),
        "{what}: recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = sisa::unlearn::Ledger::open(&run.join("ledger.jsonl")).unwrap();
    if ledger.requests().is_empty() {
        let mut args = unlearn_args(r, &f.users);
        args.push("--no-retrain");
        sisa_ok(&args);
    }
    let status = sisa_json(&["status", "--run", r]);
    if let Some(shards) = status["plan"]["shards"].as_array() {
        let list: Vec<String> = shards.iter().map(|s| s["shard"].to_string()).collect();
        if !list.is_empty() {
            sisa_ok(&["train-shard", "--run", r, "-q", "--shards", &list.join(",")]);
        }
        sisa_ok(&["publish", "--run", r, "-q"]);
    }
}

#[test]
fn every_fault_point_of_a_deferred_unlearn_its_shard_tasks_and_publish_recovers() {
    let f = fixture("4", false);
    let probe = f.dir.join("probe");
    copy_dir(&f.base, &probe);
    // The plan's shards, from an uncrashed deferral of the fixture's users.
    let mut args = unlearn_args(probe.to_str().unwrap(), &f.users);
    args.push("--no-retrain");
    args.push("--json");
    let deferred: serde_json::Value = serde_json::from_str(&sisa_ok(&args)).unwrap();
    let pending: Vec<String> = deferred["pending_shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.to_string())
        .collect();
    let pending = pending.join(",");
    std::fs::remove_dir_all(&probe).unwrap();
    // The fault points each step passes through, uncrashed.
    copy_dir(&f.base, &probe);
    let mut points: Vec<(usize, String)> = Vec::new();
    for (i, step) in deferred_steps(probe.to_str().unwrap(), &f.users, &pending)
        .iter()
        .enumerate()
    {
        let log = f.dir.join(format!("points-{i}.log"));
        let out = Command::new(env!("CARGO_BIN_EXE_sisa"))
            .args(step)
            .env("SISA_FAILPOINT_LOG", &log)
            .output()
            .unwrap();
        assert!(out.status.success(), "{step:?}");
        points.extend(
            std::fs::read_to_string(&log)
                .unwrap()
                .lines()
                .map(|p| (i, p.to_string())),
        );
    }
    assert_recovered(&f, &probe, "uncrashed");
    assert!(points.len() > 40, "{points:?}");
    println!("{} fault points over the three steps", points.len());
    let names: BTreeSet<&str> = points
        .iter()
        .map(|(_, p)| p.rsplit_once(':').unwrap().0)
        .collect();
    for needed in [
        "ledger.accepted.write",
        "defer.erased",
        "plan.rename",
        "ledger.deferred.write",
        "task.checkpoint",
        "task.result",
        "publish.current.rename",
        "publish.published",
        "receipt.rename",
        "ledger.done.done",
    ] {
        assert!(
            names.contains(needed),
            "fault point {needed} is passed: {names:?}"
        );
    }
    for (n, (i, point)) in points.iter().enumerate() {
        let run = f.dir.join(format!("crash-{n}"));
        copy_dir(&f.base, &run);
        let steps = deferred_steps(run.to_str().unwrap(), &f.users, &pending);
        for step in &steps[..*i] {
            let out = sisa(&step.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{point}: {step:?} before the crash");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_sisa"))
            .args(&steps[*i])
            .env("SISA_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(
            crashed(&out),
            "{point}: the process was aborted there: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let what = format!("{:?} at {point}", steps[*i][0]);
        finish_deferred(&f, &run, &what);
        assert_recovered(&f, &run, &what);
        std::fs::remove_dir_all(&run).unwrap();
    }
}
