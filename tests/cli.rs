//! The command line keeps the README's word: the global flags work on every command, usage
//! errors exit 2, help says each default once, the README's examples do what they say, and
//! `add` refuses a batch it has added before.

mod common;

use common::{digits, root, sisa, sisa_ok, tree_digest, Csv};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A small run on the bundled digits, trained with the global flags before the command name.
fn small_run(dir: &Path) -> PathBuf {
    let (train, test) = digits();
    let run = dir.join("run");
    let out = sisa(&[
        "--json",
        "-q",
        "--threads",
        "2",
        "train",
        "--data",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--shards",
        "3",
        "--slices",
        "2",
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json before the command name");
    assert_eq!(v["shards"], 3);
    run
}

/// The first user id (in file order) of a CSV.
fn first_user(path: &Path) -> String {
    Csv::user(&Csv::read(path).lines[0]).to_string()
}

/// `sisa ARGS --json --quiet --threads 1` succeeds and prints exactly one JSON document.
#[track_caller]
fn json_of(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--quiet", "--threads", "1"]);
    let out = sisa_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn every_command_takes_json_quiet_and_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let r = run.to_str().unwrap();
    let (train, test) = digits();
    let (train_s, test_s) = (train.to_str().unwrap(), test.to_str().unwrap());
    let user = first_user(&train);

    assert_eq!(json_of(&["status", "--run", r])["version"], 1);
    assert!(json_of(&["eval", "--run", r])["accuracy"].is_number());
    assert!(json_of(&["predict", "--run", r, "--data", test_s])["predictions"].is_array());
    assert_eq!(
        json_of(&["unlearn", "--run", r, "--user", &user, "--dry-run"])["dry_run"],
        true
    );
    let receipt = json_of(&["unlearn", "--run", r, "--user", &user]);
    let receipt_file = receipt["receipt_file"].as_str().unwrap().to_string();
    assert_eq!(json_of(&["verify", "--run", r])["identical"], true);
    let recovered = json_of(&["recover", "--run", r]);
    assert_eq!(recovered["version"], 2);
    assert_eq!(recovered["pending"], 0);
    assert_eq!(json_of(&["ledger", "verify", "--run", r])["valid"], true);
    assert!(json_of(&["receipt", "verify", "--run", r, &receipt_file])["ledger_chain"] == true);
    assert!(json_of(&[
        "audit",
        "--run",
        r,
        "--members",
        train_s,
        "--nonmembers",
        test_s
    ])["auc"]
        .is_object());

    // A batch of a new user's rows, for add.
    let more = tmp.path().join("more.csv");
    new_user_rows(&test, "new-user", 5, &more);
    let added = json_of(&["add", "--run", r, "--data", more.to_str().unwrap()]);
    assert_eq!(added["rows_added"], 5);

    // serve announces its addresses as one JSON line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(["serve", "--run", r, "--addr", "127.0.0.1:0", "--json", "-q"])
        .args(["--threads", "1"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(v["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["model"], "run");

    // quickstart's report as JSON.
    let qs = tmp.path().join("qs");
    let v = json_of(&["quickstart", "--out", qs.to_str().unwrap()]);
    assert_eq!(v["identical"], true, "{v}");
    assert_eq!(v["users"].as_array().unwrap().len(), 3);

    // bench's report as JSON (the smallest sweep).
    let b = tmp.path().join("bench");
    let v = json_of(&[
        "bench",
        "--data",
        train_s,
        "--test",
        test_s,
        "--model",
        "models/logreg.toml",
        "--epochs",
        "1",
        "--shards",
        "1,2",
        "--slices",
        "1",
        "--requests",
        "1",
        "--samples",
        "2",
        "--no-audit",
        "--no-row-sharding",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(v.is_object(), "{v}");
}

/// Write `n` rows of `from` (a CSV) under the user id `user` to `to`.
fn new_user_rows(from: &Path, user: &str, n: usize, to: &Path) {
    let csv = Csv::read(from);
    let mut text = csv.header.clone() + "\n";
    for l in csv.lines.iter().take(n) {
        let rest = l.split_once(',').unwrap().1;
        text += &format!("{user},{rest}\n");
    }
    std::fs::write(to, text).unwrap();
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let r = run.to_str().unwrap();
    let (train, _) = digits();
    let out = tmp.path().join("new");
    let before = tree_digest(&run);
    for (args, want) in [
        (vec!["unlearn", "--run", r], "--user"),
        (vec!["status", "--run", r, "--threads", "0"], "--threads"),
        (
            vec!["predict", "--run", r, "--threads", "many"],
            "--threads",
        ),
        (
            vec!["status", "--run", r, "--no-such-flag"],
            "--no-such-flag",
        ),
        (vec!["verify", "--run", r, "--shard", "7"], "--shard 7"),
        (vec!["serve", "--run", r, "--max-batch", "0"], "--max-batch"),
        (
            vec![
                "train",
                "--data",
                train.to_str().unwrap(),
                "--model",
                "models/logreg.toml",
                "--shards",
                "0",
                "--out",
                out.to_str().unwrap(),
            ],
            "--shards",
        ),
    ] {
        let o = sisa(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?} should name {want}: {err}");
    }
    assert_eq!(tree_digest(&run), before, "a usage error changes nothing");
    assert!(!out.exists());
    // An error in a file is not a usage error.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "user_id,label,x\nu,1,oops\n").unwrap();
    let o = sisa(&["predict", "--run", r, "--data", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

/// Every command path: `sisa --help`'s commands, and the subcommands of those that have them.
fn command_paths() -> Vec<Vec<String>> {
    let help = sisa_ok(&["--help"]);
    let names = listed_commands(&help);
    assert!(names.len() >= 12, "{help}");
    let mut paths = Vec::new();
    for name in names {
        let sub = sisa_ok(&[&name, "--help"]);
        let inner = listed_commands(&sub);
        if inner.is_empty() {
            paths.push(vec![name]);
        } else {
            paths.extend(inner.into_iter().map(|i| vec![name.clone(), i]));
        }
    }
    paths
}

/// The command names under a help text's `Commands:` heading, without `help`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn help_says_each_default_once() {
    let mut checked = 0;
    for path in command_paths() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = sisa_ok(&args);
        // One block per flag: from a line that starts with a flag to the next.
        let mut blocks: Vec<String> = Vec::new();
        for line in help.lines() {
            let t = line.trim_start();
            if t.starts_with('-') && line.starts_with("  ") {
                blocks.push(String::new());
            }
            if let Some(b) = blocks.last_mut() {
                *b += line;
                *b += "\n";
            }
        }
        for b in &blocks {
            let said = b.matches("Default:").count() + b.matches("[default:").count();
            assert!(said <= 1, "{path:?}: a default said {said} times:\n{b}");
            checked += 1;
        }
        assert!(
            !help.contains("training shards side by side"),
            "{path:?}: --threads is described as training: {help}"
        );
    }
    assert!(checked > 50, "only {checked} flags seen");
}

/// The lines of the README's "Examples on the bundled data" block, with `runs/demo` moved to
/// `dir`.
fn readme_examples(dir: &Path) -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("Examples on the bundled data:")
        .nth(1)
        .and_then(|b| b.split("```").nth(1))
        .expect("the README has its examples block");
    let mut commands: Vec<String> = Vec::new();
    let mut joining = false;
    for line in block.lines() {
        let text = line.split(" # ").next().unwrap_or("").trim_end();
        if let Some(c) = text.trim_start().strip_prefix("$ ") {
            commands.push(c.to_string());
        } else if joining {
            let last = commands.last_mut().unwrap();
            *last += " ";
            *last += text.trim();
        }
        joining = commands
            .last()
            .is_some_and(|c| c.ends_with('\\') && !c.is_empty());
        if joining {
            let last = commands.last_mut().unwrap();
            last.pop();
        }
    }
    let demo = dir.join("demo");
    commands
        .iter()
        .map(|c| {
            c.split_whitespace()
                .map(|w| w.replace("runs/demo", demo.to_str().unwrap()))
                .collect()
        })
        .collect()
}

#[test]
fn the_readme_unlearn_example_forgets_users_the_run_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let examples = readme_examples(tmp.path());
    let train = examples
        .iter()
        .find(|c| c.get(1).is_some_and(|w| w == "train"))
        .expect("the examples train a run");
    let mut args: Vec<&str> = train[1..].iter().map(String::as_str).collect();
    args.push("-q");
    sisa_ok(&args);
    let unlearns: Vec<&Vec<String>> = examples
        .iter()
        .filter(|c| c.get(1).is_some_and(|w| w == "unlearn"))
        .collect();
    assert!(unlearns.len() >= 2);
    for c in unlearns {
        // Each example's users, as a dry run, so every example is checked on the same run.
        let mut args: Vec<&str> = c[1..]
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--json" && *a != "--dry-run")
            .collect();
        args.extend(["--dry-run", "--json"]);
        let plan: serde_json::Value = serde_json::from_str(&sisa_ok(&args)).unwrap();
        let users = c.iter().filter(|w| *w == "--user").count() as u64;
        assert!(
            plan["train_rows_removed"].as_u64().unwrap() >= users,
            "{c:?} forgets no training rows: {plan}"
        );
        assert!(!plan["shards"].as_array().unwrap().is_empty(), "{plan}");
    }
}

/// Whether `path` (relative to the repository) is ignored by one of `.gitignore`'s patterns
/// (the plain forms it uses: `/dir`, `dir`, `*.ext`).
fn ignored(path: &str) -> bool {
    let gitignore = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    gitignore.lines().map(str::trim).any(|p| {
        if p.is_empty() || p.starts_with('#') {
            return false;
        }
        if let Some(ext) = p.strip_prefix('*') {
            return path.ends_with(ext);
        }
        let anchored = p.strip_prefix('/');
        let dir = anchored.unwrap_or(p).trim_end_matches('/');
        path == dir
            || path.starts_with(&format!("{dir}/"))
            || (anchored.is_none() && path.contains(&format!("/{dir}/")))
    })
}

#[test]
fn the_readme_admin_token_example_writes_an_ignored_file() {
    assert!(ignored("runs/x") && ignored("target/y") && !ignored("src/lib.rs"));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut written = 0;
    for line in readme.lines().filter(|l| l.contains("/dev/urandom")) {
        let target = line
            .rsplit("> ")
            .next()
            .unwrap()
            .trim_end_matches(')')
            .trim();
        assert!(
            ignored(target),
            "the README writes {target}, which git would commit"
        );
        written += 1;
    }
    assert!(written >= 1, "the README shows how to make an admin token");
    for line in readme.lines().filter(|l| l.contains("--admin-token-file ")) {
        let file = line
            .split("--admin-token-file ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap()
            .trim_end_matches([']', ')', '`', ',', '.']);
        if file != "FILE" && !file.starts_with('`') {
            assert!(ignored(file), "{line}");
        }
    }
}

#[test]
fn add_refuses_a_batch_it_has_added_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let r = run.to_str().unwrap();
    let (_, test) = digits();
    let more = tmp.path().join("more.csv");
    new_user_rows(&test, "late-user", 6, &more);
    let m = more.to_str().unwrap();
    let first = json_of(&["add", "--run", r, "--data", m]);
    assert_eq!(first["rows_added"], 6);
    let before = tree_digest(&run);

    // The same file, and the same rows gzipped: refused, naming the file and the way out.
    let gz = tmp.path().join("more.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &std::fs::read(&more).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    for data in [m, gz.to_str().unwrap()] {
        let o = sisa(&["add", "--run", r, "--data", data, "-q"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(data) && err.contains("added to the run before"),
            "{err}"
        );
        assert!(err.contains("--allow-duplicate"), "{err}");
        assert_eq!(tree_digest(&run), before, "a refused add changes nothing");
    }

    // The same rows with their columns in another order (and one column more) are the same
    // batch: the digest is over what the rows are, not how the file lays them out.
    let csv = Csv::read(&more);
    let header: Vec<&str> = csv.header.split(',').collect();
    let mut order: Vec<usize> = (0..header.len()).collect();
    order.reverse();
    let mut text = order
        .iter()
        .map(|&i| header[i])
        .collect::<Vec<_>>()
        .join(",")
        + ",note\n";
    for l in &csv.lines {
        let f: Vec<&str> = l.split(',').collect();
        text += &(order.iter().map(|&i| f[i]).collect::<Vec<_>>().join(",") + ",x\n");
    }
    let shuffled = tmp.path().join("shuffled.csv");
    std::fs::write(&shuffled, text).unwrap();
    let o = sisa(&[
        "add",
        "--run",
        r,
        "--data",
        shuffled.to_str().unwrap(),
        "-q",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("added to the run before"), "{err}");
    assert_eq!(tree_digest(&run), before);

    // Other rows of the same user are a new batch.
    let other = tmp.path().join("other.csv");
    new_user_rows(&test, "late-user", 3, &other);
    let v = json_of(&["add", "--run", r, "--data", other.to_str().unwrap()]);
    assert_eq!(v["rows_added"], 3);
    assert_ne!(v["batch_digest"], first["batch_digest"]);

    // Allowed on purpose, the batch is added again and trains as one more copy.
    let v = json_of(&["add", "--run", r, "--data", m, "--allow-duplicate"]);
    assert_eq!(v["rows_added"], 6);
    assert_eq!(json_of(&["verify", "--run", r])["identical"], true);
    let status = json_of(&["status", "--run", r]);
    assert_eq!(status["version"], 4);
}

#[test]
fn eval_reports_log_loss_per_class_figures_and_the_confusion_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let r = run.to_str().unwrap();
    let (_, test) = digits();
    let t = test.to_str().unwrap();
    let ev = json_of(&["eval", "--run", r, "--data", t, "--aggregate", "vote"]);
    let pred = json_of(&["predict", "--run", r, "--data", t, "--aggregate", "vote"]);
    let csv = Csv::read(&test);
    let truth: Vec<usize> = csv
        .lines
        .iter()
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    // The same figures, computed here from predict's answers.
    let m = &ev["metrics"];
    let classes = m["confusion"].as_array().unwrap().len();
    assert_eq!(classes, 10);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut loss = 0.0;
    for (p, &y) in pred["predictions"].as_array().unwrap().iter().zip(&truth) {
        confusion[y][p["label"].as_u64().unwrap() as usize] += 1;
        let q = p["probabilities"][y].as_f64().unwrap().clamp(1e-15, 1.0);
        loss -= q.ln();
    }
    loss /= truth.len() as f64;
    let got: Vec<Vec<u64>> = serde_json::from_value(m["confusion"].clone()).unwrap();
    assert_eq!(got, confusion);
    assert!((m["log_loss"].as_f64().unwrap() - loss).abs() < 1e-6, "{m}");
    let f1: Vec<f64> = (0..classes)
        .map(|c| {
            let hit = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let (p, r) = (hit / predicted.max(1) as f64, hit / support.max(1) as f64);
            if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            }
        })
        .collect();
    let macro_f1 = f1.iter().sum::<f64>() / classes as f64;
    assert!(
        (m["macro_f1"].as_f64().unwrap() - macro_f1).abs() < 1e-9,
        "{m}"
    );
    assert_eq!(m["per_class"].as_array().unwrap().len(), classes);
    assert_eq!(ev["accuracy"], m["accuracy"]);
    // The text shows the table and the matrix.
    let text = sisa_ok(&["eval", "--run", r, "--data", t]);
    for want in [
        "log-loss",
        "precision",
        "recall",
        "macro",
        "confusion matrix",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}
