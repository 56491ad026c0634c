//! Deletion that holds: the ledger catches tampering, a restored backup or an old checkpoint
//! cannot bring a user back, re-importing refuses forgotten users, receipts prove the deletion
//! and hold no raw id, and corruption is caught and named without anything being overwritten.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Train a small run from `csv` (the digits training file by default).
fn train(dir: &Path, name: &str, csv: Option<&Path>, extra: &[&str]) -> PathBuf {
    let (train, test) = digits();
    let data = csv.map(Path::to_path_buf).unwrap_or(train);
    let run = dir.join(name);
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/mlp.toml",
        "--shards",
        "4",
        "--slices",
        "3",
        "--epochs",
        "6",
        "--out",
        run.to_str().unwrap(),
        "-q",
    ];
    args.extend(extra);
    sisa_ok(&args);
    run
}

fn first_users(n: usize) -> Vec<String> {
    Csv::read(&digits().0)
        .users()
        .into_iter()
        .take(n)
        .map(|(u, _)| u)
        .collect()
}

#[track_caller]
fn fails_with(args: &[&str], want: &[&str]) -> String {
    let out = sisa(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected {w:?} in {err}");
    }
    err
}

#[test]
fn ledger_verify_names_every_kind_of_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", None, &[]);
    let r = run.to_str().unwrap();
    for u in first_users(2) {
        sisa_ok(&["unlearn", "--run", r, "--user", &u, "-q"]);
    }
    let ledger = run.join("ledger.jsonl");
    let good: Vec<String> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(good.len() >= 16, "two requests of eight steps each");
    let v = sisa_json(&["ledger", "verify", "--run", r]);
    assert_eq!(v["requests"], 2);
    assert_eq!(v["done"], 2);
    let write = |lines: &[String]| {
        std::fs::write(
            &ledger,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap()
    };
    let before = tree_digest(&run);

    let mut edited = good.clone();
    edited[4] = edited[4].replacen("\"at\":", "\"at\":1", 1);
    write(&edited);
    fails_with(
        &["ledger", "verify", "--run", r],
        &["ledger.jsonl", "line 5", "edited"],
    );

    let mut deleted = good.clone();
    deleted.remove(3);
    write(&deleted);
    fails_with(&["ledger", "verify", "--run", r], &["line 4", "removed"]);

    let mut swapped = good.clone();
    swapped.swap(6, 7);
    write(&swapped);
    fails_with(&["ledger", "verify", "--run", r], &["line 7"]);

    let mut text = good.iter().map(|l| format!("{l}\n")).collect::<String>();
    text.truncate(text.len() - 25);
    std::fs::write(&ledger, &text).unwrap();
    fails_with(
        &["ledger", "verify", "--run", r],
        &[&format!("line {}", good.len()), "truncated"],
    );
    // A damaged ledger stops every command that opens the run, and nothing is overwritten.
    fails_with(&["status", "--run", r], &[&format!("line {}", good.len())]);
    assert_eq!(tree_digest(&run).len(), before.len());
    write(&good);
    assert_eq!(tree_digest(&run), before);
    sisa_ok(&["ledger", "verify", "--run", r]);
}

#[test]
fn a_restored_backup_is_brought_back_in_line_before_use() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", None, &[]);
    let ledger = tmp.path().join("ledger-elsewhere.jsonl");
    let (r, l) = (run.to_str().unwrap(), ledger.to_str().unwrap());
    let backup = tmp.path().join("backup");
    copy_dir(&run, &backup);
    let users = first_users(3);
    let receipt = sisa_json(&[
        "unlearn", "--run", r, "--ledger", l, "--user", &users[0], "--user", &users[2], "-q",
    ]);
    let digests_with_ledger = |run: &Path| -> Vec<String> {
        let s = sisa_json(&["status", "--run", run.to_str().unwrap(), "--ledger", l]);
        s["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["model_digest"].as_str().unwrap().to_string())
            .collect()
    };
    let unlearned = digests_with_ledger(&run);
    assert!(
        !run.join("ledger.jsonl").exists(),
        "the ledger lives where --ledger says"
    );

    // Restore the pre-deletion backup, keep the current ledger, open it.
    std::fs::remove_dir_all(&run).unwrap();
    copy_dir(&backup, &run);
    let out = sisa(&["status", "--run", r, "--ledger", l, "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("completed interrupted or rolled-back requests [1]"));
    assert_eq!(
        digests_with_ledger(&run),
        unlearned,
        "the deletion was re-applied before anything else"
    );
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(ledger_text.contains("\"event\":\"reapplied\""));
    // The users are gone from the restored data, and the receipt still verifies.
    let rf = run.join("receipts/000001.json");
    let check = sisa_json(&[
        "receipt",
        "verify",
        "--run",
        r,
        "--ledger",
        l,
        rf.to_str().unwrap(),
        "--user",
        &users[0],
    ]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["rows_absent"], true);
    assert_eq!(receipt["request"], 1);
    // The restored run knows its ledger lives elsewhere: without --ledger it refuses, naming it.
    fails_with(
        &["status", "--run", r],
        &["its deletion ledger lives at", l],
    );
}

#[test]
fn an_old_checkpoint_copied_back_is_refused_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", None, &[]);
    let r = run.to_str().unwrap();
    let backup = tmp.path().join("backup");
    copy_dir(&run, &backup);
    let users = first_users(1);
    let receipt = sisa_json(&["unlearn", "--run", r, "--user", &users[0], "-q"]);
    let shard = receipt["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stages_retrained"] != 0)
        .unwrap()["shard"]
        .as_u64()
        .unwrap();
    let old_dir = backup.join(format!("checkpoints/shard-{shard}"));
    let cur_dir = run.join(format!("checkpoints/shard-{shard}"));
    let old: Vec<PathBuf> = std::fs::read_dir(&old_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let tainted: Vec<&PathBuf> = old
        .iter()
        .filter(|p| !cur_dir.join(p.file_name().unwrap()).exists())
        .collect();
    assert!(!tainted.is_empty(), "the deletion retired some checkpoints");
    // (1) Copied back under its own name: not referenced, removed on the next open.
    for p in &tainted {
        std::fs::copy(p, cur_dir.join(p.file_name().unwrap())).unwrap();
    }
    let out = sisa(&["status", "--run", r]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed"));
    for p in &tainted {
        assert!(!cur_dir.join(p.file_name().unwrap()).exists());
    }
    // (2) Copied over the name of the current last stage: refused, named, nothing overwritten.
    let status = sisa_json(&["status", "--run", r]);
    let lineage = status["shards"][shard as usize]["lineage"]
        .as_str()
        .unwrap()
        .to_string();
    let target = cur_dir.join(format!("{lineage}.safetensors"));
    std::fs::copy(tainted[tainted.len() - 1], &target).unwrap();
    let before = tree_digest(&run);
    fails_with(
        &["eval", "--run", r],
        &[&format!("{lineage}.safetensors"), "corrupt"],
    );
    fails_with(
        &["verify", "--run", r],
        &[&format!("{lineage}.safetensors")],
    );
    assert_eq!(tree_digest(&run), before);
    // The lineage check itself refuses a checkpoint of another lineage, whatever its digest.
    let opened = sisa::run::Run::open(&run).unwrap();
    let bytes = std::fs::read(&target).unwrap();
    let err = sisa::checkpoint::Checkpoint::decode(
        &target,
        &bytes,
        &opened.config.model_config(shard as usize).unwrap(),
        shard as usize,
        &sisa::plan::Lineage::from_hex(&lineage).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn add_refuses_forgotten_users_and_equals_training_on_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let all = Csv::read(&digits().0);
    // Users of the first 1,000 rows train the run; the remaining rows arrive later.
    let first = tmp.path().join("first.csv");
    let rest = tmp.path().join("rest.csv");
    all.write_first(1000, &first);
    let mut text = all.header.clone() + "\n";
    for l in &all.lines[1000..] {
        text += l;
        text += "\n";
    }
    std::fs::write(&rest, &text).unwrap();
    let run = train(tmp.path(), "run", Some(&first), &[]);
    let r = run.to_str().unwrap();
    // Forget a user whose rows continue in the later file, then try to re-import them.
    let later: Vec<String> = Csv::read(&rest)
        .users()
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    let early = Csv::read(&first).users();
    let (victim, _) = early
        .iter()
        .find(|(u, _)| later.contains(u))
        .unwrap()
        .clone();
    sisa_ok(&["unlearn", "--run", r, "--user", &victim, "-q"]);
    let victim_rows_later = Csv::read(&rest)
        .lines
        .iter()
        .filter(|l| Csv::user(l) == victim)
        .count();
    let report = sisa_json(&["add", "--run", r, "--data", rest.to_str().unwrap(), "-q"]);
    assert_eq!(
        report["rows_refused"].as_u64().unwrap() as usize,
        victim_rows_later
    );
    assert_eq!(report["users_refused"], 1);
    // The same batch again is refused as a duplicate; added on purpose, it trains twice.
    let again = sisa(&["add", "--run", r, "--data", rest.to_str().unwrap(), "-q"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--allow-duplicate"));
    let out = sisa_ok(&[
        "add",
        "--run",
        r,
        "--data",
        rest.to_str().unwrap(),
        "--allow-duplicate",
        "-q",
    ]);
    assert!(out.contains("refused"), "{out}");
    // The oracle: everything except the victim, trained from scratch... minus the rows added twice.
    let _ = out;
    let everything = tmp.path().join("everything.csv");
    let mut both = all.header.clone() + "\n";
    for l in all.lines.iter().chain(all.lines[1000..].iter()) {
        if Csv::user(l) != victim {
            both += l;
            both += "\n";
        }
    }
    std::fs::write(&everything, both).unwrap();
    let oracle = train(tmp.path(), "oracle", Some(&everything), &[]);
    assert_eq!(
        digests(&run),
        digests(&oracle),
        "adding equals training from scratch on all the data"
    );
}

#[test]
fn receipts_prove_the_deletion_and_no_file_holds_the_raw_id() {
    let tmp = tempfile::tempdir().unwrap();
    // A distinctive user id, so a search for it cannot hit by chance.
    let csv = Csv::read(&digits().0);
    let secret_id = "alice.liddell@example.org";
    let (target, _) = csv.users()[5].clone();
    let renamed = tmp.path().join("train.csv");
    let mut text = csv.header.clone() + "\n";
    for l in &csv.lines {
        if Csv::user(l) == target {
            text += &l.replacen(&target, secret_id, 1);
        } else {
            text += l;
        }
        text += "\n";
    }
    std::fs::write(&renamed, text).unwrap();
    let run = train(tmp.path(), "run", Some(&renamed), &[]);
    let r = run.to_str().unwrap();
    let ledger = tmp.path().join("ledger.jsonl");
    let l = ledger.to_str().unwrap();
    let json = sisa_json(&[
        "unlearn", "--run", r, "--ledger", l, "--user", secret_id, "-q",
    ]);
    let receipt = PathBuf::from(json["receipt_file"].as_str().unwrap());
    let handed = tmp.path().join("receipt-for-alice.json");
    std::fs::copy(&receipt, &handed).unwrap();

    let ok = sisa_json(&[
        "receipt",
        "verify",
        "--run",
        r,
        "--ledger",
        l,
        handed.to_str().unwrap(),
        "--user",
        secret_id,
    ]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["user_in_receipt"], true);
    assert_eq!(ok["models_match_current"], true);
    // Another user's id is not in this receipt.
    let out = sisa(&[
        "receipt",
        "verify",
        "--run",
        r,
        "--ledger",
        l,
        handed.to_str().unwrap(),
        "--user",
        &csv.users()[0].0,
    ]);
    assert_eq!(out.status.code(), Some(3));
    // A receipt edited after the fact fails.
    let forged = tmp.path().join("forged.json");
    let text = std::fs::read_to_string(&handed).unwrap().replacen(
        "\"train_rows_removed\": ",
        "\"train_rows_removed\": 1",
        1,
    );
    std::fs::write(&forged, text).unwrap();
    let out = sisa(&[
        "receipt",
        "verify",
        "--run",
        r,
        "--ledger",
        l,
        forged.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));

    // Zero hits for the raw id in every file of the run, the ledger and the receipt.
    let mut files: Vec<PathBuf> = tree_digest(&run).into_keys().map(|p| run.join(p)).collect();
    files.push(ledger.clone());
    files.push(handed.clone());
    let mut hits = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        hits += bytes
            .windows(secret_id.len())
            .filter(|w| *w == secret_id.as_bytes())
            .count();
    }
    assert!(files.len() > 10);
    assert_eq!(hits, 0, "the raw user id appears in no file");
}

#[test]
fn corruption_is_detected_named_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", None, &[]);
    let r = run.to_str().unwrap();
    let pristine = tree_digest(&run);
    let flip = |p: &Path, at: usize| {
        let mut b = std::fs::read(p).unwrap();
        let i = at.min(b.len() - 1);
        b[i] ^= 0x01;
        std::fs::write(p, b).unwrap();
    };
    let restore = |p: &Path, from: &[u8]| std::fs::write(p, from).unwrap();
    let users = first_users(1);

    // A checkpoint.
    let ck = std::fs::read_dir(run.join("checkpoints/shard-1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let orig = std::fs::read(&ck).unwrap();
    flip(&ck, orig.len() - 5);
    let damaged = tree_digest(&run);
    fails_with(
        &["verify", "--run", r],
        &[ck.file_name().unwrap().to_str().unwrap(), "digest"],
    );
    assert_eq!(tree_digest(&run), damaged);
    restore(&ck, &orig);

    // The data file of the shard that holds the user (a request reads no other shard).
    let config = sisa::run::RunConfig::load(&run.join("run.json")).unwrap();
    let shard = config.rules().place(&users[0], 0, false).shard;
    let data = std::fs::read_dir(run.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("shard-{shard}-"))
        })
        .unwrap();
    let orig = std::fs::read(&data).unwrap();
    flip(&data, 100);
    let damaged = tree_digest(&run);
    fails_with(
        &["unlearn", "--run", r, "--user", &users[0]],
        &[data.file_name().unwrap().to_str().unwrap(), "corrupt"],
    );
    fails_with(
        &["verify", "--run", r],
        &[data.file_name().unwrap().to_str().unwrap()],
    );
    assert_eq!(
        tree_digest(&run),
        damaged,
        "nothing was written in response"
    );
    restore(&data, &orig);

    // The manifest.
    let manifest = run.join("manifest-000001.json");
    let orig = std::fs::read(&manifest).unwrap();
    flip(&manifest, 200);
    let damaged = tree_digest(&run);
    fails_with(
        &["status", "--run", r],
        &["manifest-000001.json", "corrupt"],
    );
    fails_with(&["eval", "--run", r], &["manifest-000001.json"]);
    assert_eq!(tree_digest(&run), damaged);
    restore(&manifest, &orig);

    // A corrupt ledger line.
    sisa_ok(&["unlearn", "--run", r, "--user", &users[0], "-q"]);
    let ledger = run.join("ledger.jsonl");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let broken = text.replacen("\"event\":\"erased\"", "\"event\":\"erasedX\"", 1);
    std::fs::write(&ledger, &broken).unwrap();
    let damaged = tree_digest(&run);
    fails_with(
        &["status", "--run", r],
        &["ledger.jsonl", "line 3", "unreadable entry"],
    );
    assert_eq!(tree_digest(&run), damaged);
    std::fs::write(&ledger, &text).unwrap();
    sisa_ok(&["verify", "--run", r, "-q"]);
    assert_ne!(tree_digest(&run), pristine);
}

#[test]
fn replaying_a_request_gives_the_same_result_as_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", None, &[]);
    let users = first_users(2);
    sisa_ok(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &users[1],
        "-q",
    ]);
    let once = tree_digest(&run);
    let d = digests(&run);
    let opts = sisa::unlearn::Options {
        threads: 2,
        progress: false,
    };
    let (mut opened, mut ledger, _lock, _) = sisa::unlearn::open(&run, None, &opts).unwrap();
    let entries = ledger.entries().len();
    let first = sisa::unlearn::complete(&mut opened, &mut ledger, 1, &opts).unwrap();
    let second = sisa::unlearn::complete(&mut opened, &mut ledger, 1, &opts).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        ledger.entries().len(),
        entries,
        "a done request adds no entries when replayed"
    );
    drop(_lock);
    sisa_ok(&["recover", "--run", run.to_str().unwrap()]);
    sisa_ok(&["recover", "--run", run.to_str().unwrap()]);
    assert_eq!(digests(&run), d);
    assert_eq!(tree_digest(&run), once);
}

#[test]
fn add_and_receipt_verify_refuse_bad_files_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", None, &[]);
    let r = run.to_str().unwrap();
    let before = tree_digest(&run);
    let wrong = tmp.path().join("more.csv");
    std::fs::write(&wrong, "user_id,label,x\nnew-user,1,2\n").unwrap();
    fails_with(
        &["add", "--run", r, "--data", wrong.to_str().unwrap()],
        &[
            "more.csv",
            "line 1",
            "missing 64 of the 64 feature columns: 'p0_0'",
        ],
    );
    let csv = Csv::read(&digits().0);
    let line = csv.lines[0].splitn(3, ',').collect::<Vec<_>>();
    let bad_label = tmp.path().join("label.csv");
    std::fs::write(
        &bad_label,
        format!("{}\nnew-user,{},{}\n", csv.header, 42, line[2]),
    )
    .unwrap();
    fails_with(
        &["add", "--run", r, "--data", bad_label.to_str().unwrap()],
        &["label.csv", "line 2", "label 42 is not a class"],
    );
    let garbage = tmp.path().join("receipt.json");
    std::fs::write(&garbage, "{\"not\": \"a receipt\"}").unwrap();
    fails_with(
        &["receipt", "verify", "--run", r, garbage.to_str().unwrap()],
        &["receipt.json", "not a sisa receipt"],
    );
    assert_eq!(tree_digest(&run), before);
}
