//! Regression tests for the promises an attack on the CLI broke, one test per finding, named
//! after it: each drives the real binary on real files, the way the hostile or careless user
//! did, and checks the fix holds (a clear error naming the file or flag, nothing left behind).

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Big-endian IDX bytes: magic `0, 0, 0x08, dims` (unsigned bytes), sizes, then `values`.
fn idx(dims: &[u32], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// What a measured run of the binary did.
struct Measured {
    code: Option<i32>,
    stderr: String,
    peak_kib: i64,
    seconds: f64,
}

/// Run `sisa args` in `dir` and measure its own peak resident memory (wait4's rusage).
// The child is reaped by wait4, which std does not see.
#[allow(clippy::zombie_processes)]
fn measured(dir: &Path, args: &[&str]) -> Measured {
    let err_path = dir.join("stderr.txt");
    let err = std::fs::File::create(&err_path).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers; the Child is not waited again.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Measured {
        code,
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        peak_kib: usage.ru_maxrss,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn logreg() -> String {
    root().join("models/logreg.toml").display().to_string()
}

/// Directories `.<name>.partial-<pid>` in `dir`.
fn partials(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.contains(".partial-"))
        })
        .collect()
}

/// A small digits run for the tests that open runs: S=2, R=2, logreg.
fn small_run(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let (train, test) = digits();
    let sub = dir.join("train-sub.csv");
    Csv::read(&train).write_first(300, &sub);
    let run = dir.join(name);
    let mut args = vec![
        "train",
        "--data",
        sub.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--shards",
        "2",
        "--slices",
        "2",
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
        "-q",
    ];
    args.extend(extra);
    sisa_ok(&args);
    run
}

fn first_user(dir: &Path) -> String {
    Csv::read(&dir.join("train-sub.csv")).users()[0].0.clone()
}

/// Every command that opens a run, as argument lists for the run at `r`.
fn opening_commands(r: &str, user: &str, data: &str, receipt: &str) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["status", "--run", r]),
        v(&["eval", "--run", r]),
        v(&["predict", "--run", r, "--data", data]),
        v(&["unlearn", "--run", r, "--user", user, "-q"]),
        v(&["unlearn", "--run", r, "--user", user, "--dry-run"]),
        v(&["verify", "--run", r, "-q"]),
        v(&["recover", "--run", r, "-q"]),
        v(&["add", "--run", r, "--data", data, "-q"]),
        v(&["receipt", "verify", "--run", r, receipt]),
        v(&["serve", "--run", r, "--addr", "127.0.0.1:0"]),
    ]
}

/// Each command in `commands` exits 1 naming `needle`, and the run's bytes do not change.
fn every_command_refuses(run: &Path, commands: &[Vec<String>], needle: &str) {
    let before = tree_digest(run);
    for args in commands {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sisa(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains(needle), "{a:?} should name {needle}: {err}");
        assert_eq!(tree_digest(run), before, "{a:?} changed the run");
    }
}

#[test]
fn an_89_byte_idx_file_is_refused_as_cut_short_without_a_large_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Sizes [1, 32768, 65536] (2³¹ pixels) in an 80-byte file, and a 9-byte labels file.
    let mut images = idx(&[1, 32768, 65536], &[]);
    images.resize(80, 0);
    std::fs::write(d.join("x-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(d.join("x-labels-idx1-ubyte"), idx(&[1], &[3])).unwrap();
    std::fs::write(d.join("y-images-idx3-ubyte.gz"), gz(&images)).unwrap();
    std::fs::write(d.join("y-labels-idx1-ubyte.gz"), gz(&idx(&[1], &[3]))).unwrap();
    // A gzipped file whose sizes fit a row but whose records are missing: cut short, found
    // before any shard is sized from its record count.
    std::fs::write(
        d.join("z-images-idx3-ubyte.gz"),
        gz(&idx(&[500, 2048, 2048], &[0; 100])),
    )
    .unwrap();
    std::fs::write(
        d.join("z-labels-idx1-ubyte.gz"),
        gz(&idx(&[500], &[3; 500])),
    )
    .unwrap();
    for (file, want) in [
        ("x-images-idx3-ubyte", "cut short"),
        ("y-images-idx3-ubyte.gz", "cut short"),
        ("z-images-idx3-ubyte.gz", "cut short"),
    ] {
        let m = measured(
            d,
            &[
                "train",
                "--data",
                file,
                "--users",
                "uniform:10",
                "--model",
                &logreg(),
                "--out",
                "run",
            ],
        );
        eprintln!(
            "{file}: refused in {:.3} s with a peak of {} KiB",
            m.seconds, m.peak_kib
        );
        assert_eq!(m.code, Some(1), "{}", m.stderr);
        assert!(
            m.stderr.contains(file) && m.stderr.contains(want),
            "{}",
            m.stderr
        );
        assert!(m.peak_kib < 100 * 1024, "peak {} KiB", m.peak_kib);
        assert!(!d.join("run").exists());
        assert!(partials(d).is_empty());
    }
}

#[test]
fn a_row_wider_than_the_row_store_is_refused_at_train_not_at_unlearn() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A complete IDX file of one record of 2²² + 1 values: one feature more than a row holds.
    let wide = (1u32 << 22) + 1;
    std::fs::write(
        d.join("w-images-idx3-ubyte"),
        idx(&[1, 1, wide], &vec![1; wide as usize]),
    )
    .unwrap();
    std::fs::write(d.join("w-labels-idx1-ubyte"), idx(&[1], &[1])).unwrap();
    let out = sisa(&[
        "train",
        "--data",
        d.join("w-images-idx3-ubyte").to_str().unwrap(),
        "--users",
        "uniform:1",
        "--model",
        &logreg(),
        "--out",
        d.join("run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("w-images-idx3-ubyte") && err.contains("4194305 values"),
        "{err}"
    );
    assert!(!d.join("run").exists(), "nothing is published");
    // A model too large to hold is refused before training, naming the preset's field.
    std::fs::write(
        d.join("huge.toml"),
        "name = \"huge\"\noptimizer = \"sgd\"\nlr = 0.1\nbatch_size = 8\nepochs = 1\nhidden = [65536, 65536]\n",
    )
    .unwrap();
    let (train, _) = digits();
    let out = sisa(&[
        "train",
        "--data",
        train.to_str().unwrap(),
        "--model",
        d.join("huge.toml").to_str().unwrap(),
        "--out",
        d.join("run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("huge.toml: model has") && err.contains("parameters"),
        "{err}"
    );
    assert!(!d.join("run").exists());
}

#[test]
fn count_flags_are_bounded_and_no_failed_train_leaves_its_partial_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (train, _) = digits();
    let data = train.to_str().unwrap();
    let out = d.join("run");
    let o = out.to_str().unwrap();
    for (flag, value, want) in [
        (
            "--classes",
            "18446744073709551615",
            "--classes must be in 2..=65536",
        ),
        ("--classes", "4000000000", "--classes must be in 2..=65536"),
        ("--classes", "1", "--classes must be in 2..=65536"),
        ("--threads", "2000", "'--threads <N>': must be in 1..=1024"),
        ("--threads", "0", "'--threads <N>': must be in 1..=1024"),
        ("--shards", "5000", "--shards must be in 1..=4096"),
        ("--slices", "2000", "--slices must be in 1..=1024"),
        ("--epochs", "100001", "--epochs must be in 1..=100000"),
        ("--batch-size", "70000", "--batch-size must be in 1..=65536"),
    ] {
        let m = measured(
            d,
            &[
                "train",
                "--data",
                data,
                "--model",
                &logreg(),
                "--out",
                o,
                flag,
                value,
            ],
        );
        // A flag out of range is a usage error.
        assert_eq!(m.code, Some(2), "{flag} {value}: {}", m.stderr);
        assert!(m.stderr.contains(want), "{flag} {value}: {}", m.stderr);
        assert!(
            m.peak_kib < 200 * 1024,
            "{flag} {value}: peak {} KiB",
            m.peak_kib
        );
        assert!(!out.exists() && partials(d).is_empty());
    }
    // A train that fails after its partial directory exists (an injected fsync error while
    // writing a checkpoint) removes it, secret and rows included.
    let failed = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args([
            "train",
            "--data",
            data,
            "--model",
            &logreg(),
            "--out",
            o,
            "-q",
        ])
        .env("SISA_FAILPOINT", "error:checkpoint.fsync")
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(!out.exists() && partials(d).is_empty(), "{:?}", partials(d));
    // A train killed mid-way leaves its partial directory; the next train beside it removes
    // it, and leaves alone one whose builder still holds its lock.
    let killed = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args([
            "train",
            "--data",
            data,
            "--model",
            &logreg(),
            "--out",
            o,
            "-q",
        ])
        .env("SISA_FAILPOINT", "checkpoint.write")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let left = partials(d);
    assert_eq!(left.len(), 1, "the killed train left its partial directory");
    assert!(left[0].join("secret").exists());
    let busy = d.join(".other.partial-1");
    std::fs::create_dir(&busy).unwrap();
    let lock = std::fs::File::create(busy.join("LOCK")).unwrap();
    lock.try_lock().unwrap();
    let next = sisa(&[
        "train",
        "--data",
        data,
        "--model",
        "models/logreg.toml",
        "--out",
        o,
        "--shards",
        "2",
        "--slices",
        "1",
        "--epochs",
        "1",
        "-q",
    ]);
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert!(String::from_utf8_lossy(&next.stderr)
        .contains("an unfinished run left by an earlier train"));
    assert_eq!(
        partials(d),
        vec![busy.clone()],
        "only the one in progress is left"
    );
    drop(lock);
}

#[test]
fn a_flipped_bit_in_the_secret_is_refused_by_every_command_that_opens_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path(), "run", &[]);
    let r = run.to_str().unwrap();
    let user = first_user(tmp.path());
    let receipt = sisa_json(&["unlearn", "--run", r, "--user", &user, "-q"]);
    let rf = run.join(format!(
        "receipts/{:06}.json",
        receipt["request"].as_u64().unwrap()
    ));
    let secret = run.join("secret");
    let mut bytes = std::fs::read(&secret).unwrap();
    bytes[5] ^= 0x10;
    std::fs::write(&secret, &bytes).unwrap();
    let second = Csv::read(&tmp.path().join("train-sub.csv")).users()[1]
        .0
        .clone();
    let data = tmp.path().join("train-sub.csv");
    let commands = opening_commands(r, &second, data.to_str().unwrap(), rf.to_str().unwrap());
    every_command_refuses(&run, &commands, &format!("{}: corrupt", secret.display()));
}

#[test]
fn an_edited_run_json_is_refused_as_corruption_of_run_json() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path(), "run", &[]);
    let r = run.to_str().unwrap();
    let user = first_user(tmp.path());
    let receipt = sisa_json(&["unlearn", "--run", r, "--user", &user, "-q"]);
    let rf = run.join(format!(
        "receipts/{:06}.json",
        receipt["request"].as_u64().unwrap()
    ));
    let config = run.join("run.json");
    let original = std::fs::read_to_string(&config).unwrap();
    let data = tmp.path().join("train-sub.csv");
    let second = Csv::read(&data).users()[1].0.clone();
    let commands = opening_commands(r, &second, data.to_str().unwrap(), rf.to_str().unwrap());
    for (from, to) in [
        ("\"p2_0\"", "\"p2_1\""),
        ("\"aggregation\": \"mean\"", "\"aggregation\": \"vote\""),
        (
            "\"user_column\": \"user_id\"",
            "\"user_column\": \"user_ie\"",
        ),
        ("\"label_column\": \"label\"", "\"label_column\": \"labem\""),
        ("\"check\": \"", "\"check\": \"0"),
        ("\"format\": \"sisa-run/3\"", "\"format\": \"sisa-run/2\""),
        ("\"slice_by\": \"user\"", "\"slice_by\": \"row\""),
        // A digit that leaves the f32 as it was is still an edit (found by the fuzz suite).
        (
            "\"momentum\": 0.8999999761581421",
            "\"momentum\": 0.89999997610581421",
        ),
    ] {
        assert!(original.contains(from), "run.json has {from}");
        std::fs::write(&config, original.replacen(from, to, 1)).unwrap();
        every_command_refuses(&run, &commands, &format!("{}: corrupt", config.display()));
    }
    // Whitespace is not content: a reformatted run.json still opens.
    std::fs::write(&config, original.replace("\n", "\n  ")).unwrap();
    sisa_ok(&["status", "--run", r]);
}

#[test]
fn line_numbers_are_right_in_crlf_and_cr_only_files() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text, line) in [
        ("crlf.csv", "user_id,label,a\r\nu,1,2\r\nu,1,x\r\n", 3),
        ("cr.csv", "user_id,label,a\ru,1,2\ru,1,x\r", 3),
        (
            "blank.csv",
            "user_id,label,a\r\nu,1,2\r\n\r\n\r\nu,1,x\r\n",
            5,
        ),
        (
            "quoted.csv",
            "user_id,label,a\r\nu,1,\"2\r\n\"\r\nu,1,x\r\n",
            4,
        ),
        ("mixed.csv", "user_id,label,a\n\ru,1,2\r\n\nu,1\r", 5),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = sisa(&[
            "train",
            "--data",
            p.to_str().unwrap(),
            "--model",
            "models/logreg.toml",
            "--out",
            tmp.path().join("run").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}, line {line}")),
            "{name}: expected line {line}: {err}"
        );
    }
}

/// Every file and directory under `dir` that group or others may read, write or enter.
fn not_private(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push((d.clone(), mode));
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    out.push((p, mode));
                }
            }
        }
    }
    out
}

/// Run `sisa args` under umask 022 and insist on success.
fn under_umask_022(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sisa"));
    cmd.args(args).current_dir(root());
    // SAFETY: umask is async-signal-safe and touches nothing but the child's file mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn run_ledger_and_receipt_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (train, test) = digits();
    let sub = d.join("train-sub.csv");
    Csv::read(&train).write_first(300, &sub);
    let run = d.join("runs/run");
    let ledgers = d.join("ledgers");
    std::fs::create_dir(&ledgers).unwrap();
    let ledger = ledgers.join("ledger.jsonl");
    let (r, l) = (run.to_str().unwrap(), ledger.to_str().unwrap());
    under_umask_022(&[
        "train",
        "--data",
        sub.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--shards",
        "2",
        "--slices",
        "2",
        "--epochs",
        "2",
        "--out",
        r,
        "--ledger",
        l,
        "-q",
    ]);
    assert_eq!(not_private(&run), vec![], "after train");
    let user = first_user(d);
    under_umask_022(&["unlearn", "--run", r, "--ledger", l, "--user", &user, "-q"]);
    assert_eq!(not_private(&run), vec![], "after unlearn");
    let more = d.join("more.csv");
    let csv = Csv::read(&train);
    std::fs::write(&more, format!("{}\n{}\n", csv.header, csv.lines[400])).unwrap();
    under_umask_022(&[
        "add",
        "--run",
        r,
        "--ledger",
        l,
        "--data",
        more.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(not_private(&run), vec![], "after add");
    let mode = std::fs::metadata(&ledger).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the ledger");
    // The serving process writes through the same functions; start it, let it open the run
    // (recovery included), and stop it.
    std::fs::remove_file(run.join("ledger-location.json")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sisa"));
    cmd.args(["serve", "--run", r, "--ledger", l, "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let listening = std::io::BufRead::lines(stdout)
        .take(50)
        .any(|l| l.is_ok_and(|l| l.contains("listening on")));
    assert!(listening, "sisa serve did not start");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while !run.join("ledger-location.json").exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        run.join("ledger-location.json").exists(),
        "serve recorded the ledger again"
    );
    assert_eq!(not_private(&run), vec![], "after serve");
}

#[test]
fn a_restored_backup_whose_ledger_lives_elsewhere_refuses_to_open_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ledger = d.join("ledger.jsonl");
    let l = ledger.to_str().unwrap();
    let run = small_run(d, "run", &["--ledger", l]);
    let r = run.to_str().unwrap();
    let backup = d.join("backup");
    copy_dir(&run, &backup);
    let user = first_user(d);
    sisa_ok(&["unlearn", "--run", r, "--ledger", l, "--user", &user, "-q"]);
    let ledger_after = std::fs::read(&ledger).unwrap();
    // Restore the pre-deletion backup and open it as a careless operator would.
    std::fs::remove_dir_all(&run).unwrap();
    copy_dir(&backup, &run);
    let before = tree_digest(&run);
    for args in [
        vec!["status", "--run", r],
        vec!["unlearn", "--run", r, "--user", &user, "--dry-run"],
        vec!["ledger", "verify", "--run", r],
    ] {
        let out = sisa(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("its deletion ledger lives at") && err.contains(l),
            "{err}"
        );
        assert_eq!(tree_digest(&run), before);
    }
    // With the ledger, the deletion is re-applied before anything else.
    let status = sisa_json(&["status", "--run", r, "--ledger", l]);
    assert!(status["version"].as_u64().unwrap() >= 2, "{status}");
    // An older copy of the ledger (from before the deletion) is refused once the run has seen
    // the deletion.
    let old = d.join("old-ledger.jsonl");
    std::fs::write(&old, b"").unwrap();
    let out = sisa(&["status", "--run", r, "--ledger", old.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not hold entry"), "{err}");
    assert!(
        std::fs::read(&ledger).unwrap().len() > ledger_after.len(),
        "the re-application was recorded in the ledger"
    );
    // A run whose own ledger holds requests refuses another file as its ledger.
    let own = small_run(d, "own", &[]);
    let o = own.to_str().unwrap();
    sisa_ok(&["unlearn", "--run", o, "--user", &user, "-q"]);
    let out = sisa(&["status", "--run", o, "--ledger", old.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("which holds requests"));
    // A new run refuses a ledger that already holds another run's requests.
    let out = sisa(&[
        "train",
        "--data",
        d.join("train-sub.csv").to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--out",
        d.join("third").to_str().unwrap(),
        "--ledger",
        l,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a new run needs a new ledger"));
    assert!(!d.join("third").exists());
}

#[test]
fn a_file_in_a_format_sisa_does_not_read_is_named_as_such() {
    // Formats sisa reads, cut short in their headers, are named as damaged files of that
    // format; formats it does not read are named, with the list of those it does.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut bad_magic = idx(&[1, 2, 2], &[1, 2, 3, 4]);
    bad_magic[2] = 0x42;
    for (name, bytes, want) in [
        (
            "bad-images-idx3-ubyte",
            bad_magic,
            "unknown IDX value type 0x42",
        ),
        (
            "train.parquet",
            b"PAR1\x15\x04\x15\x00".to_vec(),
            "not a readable Parquet file",
        ),
        (
            "train.npy",
            b"\x93NUMPY\x01\x00v\x00{'descr'".to_vec(),
            "cut short in its header",
        ),
        (
            "train.npz",
            b"PK\x03\x04\x14\x00\x00\x00".to_vec(),
            "not a readable .npz (zip) archive",
        ),
        (
            "train.h5",
            b"\x89HDF\r\n\x1a\n\0\0".to_vec(),
            "a HDF5 file, which sisa does not read",
        ),
        (
            "train.bin",
            vec![0x7f, b'E', b'L', b'F', 0xff, 0xfe, 0, 1],
            "a binary file",
        ),
    ] {
        let p = d.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let run_dir = d.join("run");
        let mut args = vec![
            "train",
            "--data",
            p.to_str().unwrap(),
            "--users",
            "uniform:2",
            "--model",
            "models/logreg.toml",
            "--out",
            run_dir.to_str().unwrap(),
        ];
        if name.ends_with(".npy") {
            // A .npy of features needs its labels; they are the (damaged) file itself here.
            args.extend(["--labels", p.to_str().unwrap()]);
        }
        let out = sisa(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        assert!(!err.contains("invalid utf-8"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        if name.ends_with(".h5") || name.ends_with(".bin") {
            assert!(
                err.contains("sisa reads CSV and TSV files (text with a header), Parquet, NumPy"),
                "{err}"
            );
        }
        assert!(!d.join("run").exists(), "{name}");
    }
    // predict reads every format too, and names the damage the same way.
    let run = small_run(d, "r", &[]);
    let out = sisa(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        d.join("train.parquet").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a readable Parquet file"));
}

#[test]
fn an_acknowledged_deletion_completes_past_a_damaged_checkpoint_it_would_resume_from() {
    // Found by the fuzz suite: a flipped byte in the stage-1 checkpoint of a shard whose user
    // sits in stage 2 left the request accepted and the rows erased, and every later command
    // failed on the same checkpoint. The checkpoint is a cache: retraining from an earlier
    // stage (here from scratch) gives the same bits.
    let tmp = tempfile::tempdir().unwrap();
    let (train, _) = digits();
    let csv = Csv::read(&train);
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let args = |data: &str, out: &str| {
        vec![
            "train".to_string(),
            "--data".into(),
            data.into(),
            "--model".into(),
            "models/logreg.toml".into(),
            "--shards".into(),
            "2".into(),
            "--slices".into(),
            "2".into(),
            "--epochs".into(),
            "2".into(),
            "--out".into(),
            out.into(),
            "-q".into(),
        ]
    };
    let a = args(train.to_str().unwrap(), r);
    sisa_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    // A user all of whose rows sit in slice 2 of their shard.
    let (user, shard) = csv
        .users()
        .into_iter()
        .find_map(|(u, _)| {
            let plan = sisa_json(&["unlearn", "--run", r, "--user", &u, "--dry-run"]);
            let s = &plan["shards"][0];
            (s["first_stage"] == 2).then(|| (u, s["shard"].as_u64().unwrap()))
        })
        .expect("some user sits in the second slice only");
    let opened = sisa::run::Run::open(&run).unwrap();
    let stage1 = &opened.manifest.shards[shard as usize].stages[0];
    let target = run.join(format!(
        "checkpoints/shard-{shard}/{}.safetensors",
        stage1.lineage.to_hex()
    ));
    assert!(target.is_file());
    let mut bytes = std::fs::read(&target).unwrap();
    let at = bytes.len() - 9;
    bytes[at] ^= 0x40;
    std::fs::write(&target, bytes).unwrap();
    let out = sisa(&["unlearn", "--run", r, "--user", &user, "-q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    sisa_ok(&["status", "--run", r]);
    let reduced = tmp.path().join("reduced.csv");
    csv.write_without(&[&user], &reduced);
    let oracle = tmp.path().join("oracle");
    let b = args(reduced.to_str().unwrap(), oracle.to_str().unwrap());
    sisa_ok(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        digests(&run),
        digests(&oracle),
        "the same bits as training without the user"
    );
}

#[test]
fn a_zipf_rule_for_more_users_than_its_table_holds_is_refused() {
    // Found by the fuzz suite: zipf:100000000:1.1 built a 800 MB table of weights.
    let (train, _) = digits();
    let tmp = tempfile::tempdir().unwrap();
    let m = measured(
        tmp.path(),
        &[
            "train",
            "--data",
            train.to_str().unwrap(),
            "--users",
            "zipf:100000000:1.1",
            "--model",
            "models/logreg.toml",
            "--out",
            "/nonexistent/never-created",
        ],
    );
    assert_eq!(m.code, Some(2), "{}", m.stderr);
    assert!(
        m.stderr.contains("a zipf rule takes at most 4194304 users"),
        "{}",
        m.stderr
    );
    assert!(m.peak_kib < 100 * 1024);
}

#[test]
fn a_current_that_names_a_missing_manifest_is_blamed() {
    // Found by the fuzz suite: the error named only the missing manifest, and printed the OS
    // error twice.
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path(), "run", &[]);
    let current = run.join("CURRENT");
    let text = std::fs::read_to_string(&current).unwrap();
    std::fs::write(
        &current,
        text.replacen("manifest-000001", "manifest-000102", 1),
    )
    .unwrap();
    let out = sisa(&["status", "--run", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("CURRENT: corrupt: names") && err.contains("manifest-000102"),
        "{err}"
    );
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
