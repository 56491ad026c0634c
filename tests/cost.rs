//! A deletion costs what it touches: it reads the users' shards and held-out bucket and no
//! other data file, slices by user make a user's deletion retrain from their one slice, and a
//! deletion prior puts likely requesters where forgetting them is cheapest.

mod common;

use common::*;
use serde_json::Value;
use sisa::run::RunConfig;
use std::path::{Path, PathBuf};

fn train(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    train_on(&digits().0, dir, name, extra)
}

/// `sisa train` on `data` (with the digits' held-out file), logistic regression, S = 5, R = 4.
fn train_on(data: &Path, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let (_, test) = digits();
    let run = dir.join(name);
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--shards",
        "5",
        "--slices",
        "4",
        "--epochs",
        "8",
        "--out",
        run.to_str().unwrap(),
        "-q",
    ];
    args.extend(extra);
    sisa_ok(&args);
    run
}

fn config(run: &Path) -> RunConfig {
    RunConfig::load(&run.join("run.json")).unwrap()
}

fn data_files(run: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(run.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// Flip the last feature byte of a row file (before its 32-byte digest trailer): a reader of
/// the whole file refuses it, a reader of the user-key column alone does not notice.
fn damage_features(path: &Path) -> Vec<u8> {
    let orig = std::fs::read(path).unwrap();
    let mut b = orig.clone();
    let i = b.len() - 33;
    b[i] ^= 0x40;
    std::fs::write(path, b).unwrap();
    orig
}

/// Damage every `prefix` row file of `run` but those of the numbers in `keep` (see
/// [`damage_features`]); returns each damaged file and its original bytes.
fn damage_all_but(run: &Path, prefix: &str, keep: &[usize]) -> Vec<(PathBuf, Vec<u8>)> {
    data_files(run, prefix)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            !keep
                .iter()
                .any(|k| name.starts_with(&format!("{prefix}{k}-")))
        })
        .map(|p| {
            let orig = damage_features(&p);
            (p, orig)
        })
        .collect()
}

fn restore(damaged: &[(PathBuf, Vec<u8>)]) {
    for (p, orig) in damaged {
        std::fs::write(p, orig).unwrap();
    }
}

fn rows_of(status: &Value, shard: usize) -> u64 {
    status["shards"][shard]["rows"].as_u64().unwrap()
}

#[test]
fn a_deletion_reads_only_its_shard_and_held_out_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", &[]);
    let r = run.to_str().unwrap();
    let rules = config(&run).rules();
    let csv = Csv::read(&digits().0);
    let (user, rows) = csv.users().into_iter().find(|(_, c)| *c > 1).unwrap();
    let shard = rules.place(&user, 0, false).shard;
    let bucket = rules.test_bucket(&user);
    let status = sisa_json(&["status", "--run", r]);

    // Damage every other shard's and bucket's file: the deletion never reads them.
    let mut damaged = damage_all_but(&run, "shard-", &[shard]);
    damaged.extend(damage_all_but(&run, "test-", &[bucket]));
    assert_eq!(damaged.len(), 8);
    let receipt = sisa_json(&["unlearn", "--run", r, "--user", &user, "-q"]);
    let io = &receipt["measured"]["io"];
    assert_eq!(receipt["train_rows_removed"], rows as u64);
    assert_eq!(io["rows_read"].as_u64().unwrap(), rows_of(&status, shard));
    assert!(io["test_rows_read"].as_u64().unwrap() <= 360);
    for phase in ["accept", "erase", "retrain", "publish", "clean"] {
        assert!(receipt["measured"]["phases"][phase].as_f64().unwrap() >= 0.0);
    }
    assert!(io["fsyncs"].as_u64().unwrap() > 0);
    assert!(io["bytes_read"].as_u64().unwrap() > 0);
    // The damage is real: a command that reads every file refuses it.
    let out = sisa(&["verify", "--run", r, "-q"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restore(&damaged);
    let v = sisa_json(&["verify", "--run", r, "-q"]);
    assert_eq!(v["identical"], true);
}

#[test]
fn under_row_sharding_a_deletion_reads_the_user_key_columns_of_other_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", &["--shard-by", "row"]);
    let r = run.to_str().unwrap();
    let csv = Csv::read(&digits().0);
    let (user, _) = csv.users().into_iter().find(|(_, c)| *c == 1).unwrap();
    let dry = sisa_json(&["unlearn", "--run", r, "--user", &user, "--dry-run"]);
    let shard = dry["shards"][0]["shard"].as_u64().unwrap() as usize;
    let damaged = damage_all_but(&run, "shard-", &[shard]);
    let receipt = sisa_json(&["unlearn", "--run", r, "--user", &user, "-q"]);
    assert_eq!(receipt["train_rows_removed"], 1);
    let out = sisa(&["verify", "--run", r, "-q"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restore(&damaged);
    assert_eq!(sisa_json(&["verify", "--run", r, "-q"])["identical"], true);
    // A damaged user-key column is still refused, naming the file.
    let other = data_files(&run, "shard-")
        .into_iter()
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            !name.starts_with(&format!("shard-{shard}-"))
        })
        .unwrap();
    let mut b = std::fs::read(&other).unwrap();
    b[30] ^= 1;
    std::fs::write(&other, b).unwrap();
    let (next, _) = csv.users().into_iter().find(|(_, c)| *c == 2).unwrap();
    let out = sisa(&["unlearn", "--run", r, "--user", &next, "-q"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = other.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("corrupt"), "{err}");
}

#[test]
fn sliced_by_user_a_deletion_retrains_from_the_users_one_slice() {
    let tmp = tempfile::tempdir().unwrap();
    let by_user = train(tmp.path(), "user", &[]);
    let by_row = train(tmp.path(), "row", &["--slice-by", "row"]);
    let rules = config(&by_user).rules();
    let csv = Csv::read(&digits().0);
    let mut firsts = (Vec::new(), Vec::new());
    for (user, count) in csv.users().into_iter().filter(|(_, c)| *c >= 5).take(12) {
        let slice = rules.place(&user, 0, false).slice;
        for (run, out) in [(&by_user, &mut firsts.0), (&by_row, &mut firsts.1)] {
            let plan = sisa_json(&[
                "unlearn",
                "--run",
                run.to_str().unwrap(),
                "--user",
                &user,
                "--dry-run",
            ]);
            assert_eq!(plan["train_rows_removed"], count as u64);
            out.push(plan["shards"][0]["first_stage"].as_u64().unwrap());
        }
        assert_eq!(firsts.0.last(), Some(&(slice as u64 + 1)), "user {user}");
    }
    // By row, a user of five or more rows almost always reaches back to an early slice.
    let mean = |v: &Vec<u64>| v.iter().sum::<u64>() as f64 / v.len() as f64;
    assert!(
        mean(&firsts.0) > mean(&firsts.1),
        "first stages by user {:?}, by row {:?}",
        firsts.0,
        firsts.1
    );
    let status = sisa_json(&["status", "--run", by_row.to_str().unwrap()]);
    assert_eq!(status["shards"].as_array().unwrap().len(), 5);
}

#[test]
fn likely_requesters_go_to_the_last_slice_and_their_own_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = Csv::read(&digits().0);
    let users: Vec<String> = csv.users().into_iter().map(|(u, _)| u).collect();
    let likely: Vec<&String> = users.iter().step_by(10).collect();
    let priors = tmp.path().join("priors.csv");
    let mut text = "user_id,p\n".to_string();
    for u in &users {
        let p = if likely.contains(&u) { 0.8 } else { 0.02 };
        text.push_str(&format!("{u},{p}\n"));
    }
    std::fs::write(&priors, text).unwrap();
    let p = priors.to_str().unwrap();
    let run = train(
        tmp.path(),
        "run",
        &["--deletion-prior", p, "--risk-shards", "1"],
    );
    let r = run.to_str().unwrap();
    let c = config(&run);
    assert_eq!((c.risk_shards, c.risk_threshold), (1, Some(0.5)));
    // A likely requester: the set-aside shard 4, its last stage only.
    let plan = sisa_json(&["unlearn", "--run", r, "--user", likely[1], "--dry-run"]);
    assert_eq!(plan["shards"][0]["shard"], 4);
    assert_eq!(plan["shards"][0]["first_stage"], 4);
    assert_eq!(plan["shards"][0]["stages_retrained"], 1);
    let status = sisa_json(&["status", "--run", r]);
    let set_aside = status["shards"][4]["users"].as_u64().unwrap();
    assert_eq!(set_aside as usize, likely.len());
    // Anyone else: never shard 4.
    let other = &users[1];
    let plan = sisa_json(&["unlearn", "--run", r, "--user", other, "--dry-run"]);
    assert_ne!(plan["shards"][0]["shard"], 4);
    let receipt = sisa_json(&["unlearn", "--run", r, "--user", likely[1], "-q"]);
    assert_eq!(receipt["shards"][0]["shard"], 4);
    assert_eq!(receipt["shards"][0]["stages_retrained"], 1);
    assert_eq!(sisa_json(&["verify", "--run", r, "-q"])["identical"], true);
    // Training again with the same prior places every row the same way.
    let again = train(
        tmp.path(),
        "again",
        &["--deletion-prior", p, "--risk-shards", "1"],
    );
    let once = sisa_json(&["status", "--run", again.to_str().unwrap()]);
    assert_eq!(
        once["shards"][4]["model_digest"],
        status["shards"][4]["model_digest"]
    );
}

#[test]
fn bad_priors_are_refused_naming_the_file_line_or_flag_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_csv, _) = digits();
    let bad = tmp.path().join("priors.csv");
    let out_dir = tmp.path().join("never");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            train_csv.to_str().unwrap(),
            "--model",
            "models/logreg.toml",
            "--shards",
            "3",
            "--out",
            out_dir.to_str().unwrap(),
            "-q",
        ];
        args.extend_from_slice(extra);
        sisa(&args)
    };
    for (text, needle) in [
        (
            "user_id,p\nu00001,1.5\n",
            "line 2, column 'p': 1.5 is not a probability",
        ),
        ("user_id,p\nu00001,abc\n", "'abc' is not a number"),
        ("id,p\nu00001,0.5\n", "no user id column named 'user_id'"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = base(&["--deletion-prior", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && err.contains("priors.csv"), "{err}");
        assert!(!out_dir.exists());
    }
    let out = base(&["--risk-shards", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--risk-shards"), "{err}");
    assert!(!out_dir.exists());
    std::fs::write(&bad, "user_id,p\n").unwrap();
    let out = base(&[
        "--deletion-prior",
        bad.to_str().unwrap(),
        "--risk-shards",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--risk-shards") && err.contains("0..=2"),
        "{err}"
    );
    assert!(!out_dir.exists());
}

#[test]
fn add_reads_only_the_shards_its_rows_go_to_and_equals_training_on_everything() {
    add_reads_only_its_target_shards(&[]);
}

#[test]
fn under_row_sharding_add_reads_other_shards_user_key_columns_only() {
    add_reads_only_its_target_shards(&["--shard-by", "row"]);
}

fn add_reads_only_its_target_shards(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let csv = Csv::read(&digits().0);
    let first = tmp.path().join("first.csv");
    let rest = tmp.path().join("rest.csv");
    let users: Vec<String> = csv.users().into_iter().map(|(u, _)| u).collect();
    // The run starts without two users; `add` brings them.
    let (new_a, new_b) = (users[3].clone(), users[4].clone());
    csv.write_without(&[&new_a, &new_b], &first);
    let mut text = csv.header.clone() + "\n";
    for l in csv
        .lines
        .iter()
        .filter(|l| [&new_a, &new_b].contains(&&Csv::user(l).to_string()))
    {
        text += l;
        text += "\n";
    }
    std::fs::write(&rest, text).unwrap();
    let run = train_on(&first, tmp.path(), "run", extra);
    // The shards the new rows go to, from a dry copy of the add.
    let dry = tmp.path().join("dry");
    copy_dir(&run, &dry);
    let d = dry.to_str().unwrap();
    let before = sisa_json(&["status", "--run", d]);
    sisa_ok(&["add", "--run", d, "--data", rest.to_str().unwrap(), "-q"]);
    let after = sisa_json(&["status", "--run", d]);
    let targets: Vec<usize> = (0..5)
        .filter(|&k| before["shards"][k]["rows"] != after["shards"][k]["rows"])
        .collect();
    assert!(!targets.is_empty() && targets.len() < 5, "{targets:?}");
    let damaged = damage_all_but(&run, "shard-", &targets);
    assert!(!damaged.is_empty());
    let r = run.to_str().unwrap();
    let report = sisa_json(&["add", "--run", r, "--data", rest.to_str().unwrap(), "-q"]);
    assert!(report["rows_added"].as_u64().unwrap() > 0);
    restore(&damaged);
    // The same as training on everything at once.
    let whole = train_on(&digits().0, tmp.path(), "whole", extra);
    assert_eq!(digests(&run), digests(&whole));
}

#[test]
fn a_request_fsyncs_each_directory_once_and_each_file_it_writes_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", &[]);
    let r = run.to_str().unwrap();
    let rules = config(&run).rules();
    let csv = Csv::read(&digits().0);
    // Users in different shards whose one slice differs: they retrain 1 to 4 stages.
    let mut chosen: Vec<(String, usize)> = Vec::new();
    for (u, _) in csv.users() {
        let p = rules.place(&u, 0, false);
        if !chosen
            .iter()
            .any(|(c, s)| *s == p.slice || rules.place(c, 0, false).shard == p.shard)
        {
            chosen.push((u, p.slice));
        }
    }
    assert!(chosen.len() >= 3, "{chosen:?}");
    let mut fixed = Vec::new();
    for (u, slice) in &chosen {
        let receipt = sisa_json(&["unlearn", "--run", r, "--user", u, "-q"]);
        let stages = receipt["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stages_retrained"].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(stages, 4 - *slice as u64, "user {u}");
        let bucket = u64::from(receipt["test_rows_removed"].as_u64().unwrap() > 0);
        let fsyncs = receipt["measured"]["io"]["fsyncs"].as_u64().unwrap();
        // One fsync per checkpoint and row file written; the directories, the manifest and
        // the ledger lines are the same whatever the request retrains.
        fixed.push(fsyncs - stages - bucket);
    }
    // The first request also creates the ledger file, whose directory it fsyncs.
    assert_eq!(fixed[0], fixed[1] + 1, "{fixed:?}");
    assert!(fixed[1..].windows(2).all(|w| w[0] == w[1]), "{fixed:?}");
    assert!(fixed[1] <= 20, "{fixed:?}");
}

#[test]
fn a_prior_column_places_users_as_the_same_priors_in_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = Csv::read(&digits().0);
    let users: Vec<String> = csv.users().into_iter().map(|(u, _)| u).collect();
    let prior = |u: &str| {
        if users.iter().position(|x| x == u).unwrap() % 7 == 0 {
            "0.75"
        } else {
            "0.05"
        }
    };
    // The training CSV with a `p` column after the label, and the same priors as a file.
    let with_column = tmp.path().join("with-p.csv");
    let mut text = csv.header.replacen(",label,", ",label,p,", 1) + "\n";
    for l in &csv.lines {
        let u = Csv::user(l);
        let (head, rest) = l.split_at(l.find(',').unwrap() + 1);
        let (label, rest) = rest.split_at(rest.find(',').unwrap() + 1);
        text += &format!("{head}{label}{},{}\n", prior(u), &rest);
    }
    std::fs::write(&with_column, text).unwrap();
    assert!(csv.header.starts_with("user_id,label,"));
    let file = tmp.path().join("priors.csv");
    let mut list = "user_id,p\n".to_string();
    for u in &users {
        list += &format!("{u},{}\n", prior(u));
    }
    std::fs::write(&file, list).unwrap();
    let train_with = |data: &Path, out: &str, prior: &[&str]| {
        let mut extra = vec!["--risk-shards", "1"];
        extra.extend_from_slice(prior);
        train_on(data, tmp.path(), out, &extra)
    };
    let by_column = train_with(&with_column, "column", &["--deletion-prior-column", "p"]);
    let by_file = train_with(
        &digits().0,
        "file",
        &["--deletion-prior", file.to_str().unwrap()],
    );
    assert_eq!(digests(&by_column), digests(&by_file));
    assert_eq!(config(&by_column).features, config(&by_file).features);
    assert_eq!(config(&by_column).prior_column.as_deref(), Some("p"));
    // Later files may carry the column too: it is never a feature.
    let c = by_column.to_str().unwrap();
    let a = sisa_json(&[
        "predict",
        "--run",
        c,
        "--data",
        with_column.to_str().unwrap(),
    ]);
    let f = by_file.to_str().unwrap();
    let b = sisa_json(&[
        "predict",
        "--run",
        f,
        "--data",
        digits().0.to_str().unwrap(),
    ]);
    assert_eq!(a["predictions"], b["predictions"]);
    // A user with two priors is refused, naming the line.
    let bad = tmp.path().join("two-priors.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&with_column)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let first = Csv::user(&lines[1]).to_string();
    let again = (2..lines.len())
        .find(|&i| Csv::user(&lines[i]) == first)
        .unwrap();
    lines[again] = lines[again]
        .replacen(",0.75,", ",0.5,", 1)
        .replacen(",0.05,", ",0.5,", 1);
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let out = sisa(&[
        "train",
        "--data",
        bad.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--deletion-prior-column",
        "p",
        "--out",
        tmp.path().join("never").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("line {}, column 'p'", again + 1)) && err.contains("one prior"),
        "{err}"
    );
    assert!(!tmp.path().join("never").exists());
}

#[test]
fn a_ledger_entry_naming_a_shard_the_run_lacks_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path(), "run", &[]);
    // A well-chained entry (as a forger who recomputes hashes would write) that places a real
    // user's rows in shard 99 of a 5-shard run.
    let csv = Csv::read(&digits().0);
    let (user, _) = csv.users().remove(0);
    let secret = sisa::data::Secret::load(&run.join("secret")).unwrap();
    let mut ledger = sisa::unlearn::Ledger::open(&run.join("ledger.jsonl")).unwrap();
    ledger
        .append(
            1,
            sisa::unlearn::Event::Accepted {
                users: vec![secret.key(&user)],
                place: Some(sisa::unlearn::Touched {
                    shards: vec![99],
                    buckets: vec![],
                }),
                deferred: false,
            },
        )
        .unwrap();
    let before = tree_digest(&run);
    let out = sisa(&["status", "--run", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("names shard 99"), "{err}");
    assert_eq!(tree_digest(&run), before);
}
