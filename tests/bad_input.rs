//! Bad input of every kind gets a message naming the file, line and column, a non-zero exit,
//! and the run on disk unchanged (or `--out` never created).

mod common;

use common::*;
use std::path::Path;

const GOOD: &str = "user_id,label,a,b\nu1,0,1.0,2.0\nu2,1,3.0,4.0\nu3,0,5.0,6.0\nu4,1,7.0,8.0\n";

/// `sisa train` of a small logistic regression on `data` into `out`.
fn train_small(data: &Path, out: &Path) -> std::process::Output {
    sisa(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--shards",
        "2",
        "--slices",
        "1",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ])
}

/// `sisa train` on `text` fails, names `want`, and creates nothing.
#[track_caller]
fn train_refuses(text: &str, want: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.csv");
    std::fs::write(&data, text).unwrap();
    let out = tmp.path().join("run");
    let o = train_small(&data, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text:?}: {err}");
    assert!(err.contains("bad.csv"), "names the file: {err}");
    for w in want {
        assert!(err.contains(w), "{text:?}: expected {w:?} in {err}");
    }
    assert!(!out.exists(), "--out must not be created");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no partial run left behind: {leftovers:?}"
    );
}

#[test]
fn ragged_row() {
    train_refuses(
        "user_id,label,a,b\nu1,0,1,2\nu2,1,3\n",
        &["line 3", "expected 4 fields", "found 3"],
    );
}

#[test]
fn non_numeric_value() {
    train_refuses(
        "user_id,label,a,b\nu1,0,1,2\nu2,1,3,abc\n",
        &["line 3", "column 'b'", "not a number"],
    );
}

#[test]
fn nan_and_infinity() {
    train_refuses(
        "user_id,label,a,b\nu1,0,NaN,2\n",
        &["line 2", "column 'a'", "not finite"],
    );
    train_refuses(
        "user_id,label,a,b\nu1,0,1,2\nu1,1,-inf,2\n",
        &["line 3", "column 'a'", "not finite"],
    );
    train_refuses(
        "user_id,label,a,b\nu1,0,1,2\nu1,1,1e400,2\n",
        &["line 3", "column 'a'", "not finite"],
    );
}

#[test]
fn empty_files() {
    train_refuses("", &["empty file"]);
    train_refuses("user_id,label,a,b\n", &["no data rows"]);
}

#[test]
fn bad_labels() {
    // Labels that are not all non-negative integers are class names (tests/classes.rs); these
    // can be neither.
    train_refuses(
        "user_id,label,a,b\nu1,0,1,2\nu2,,3,4\n",
        &["line 3", "column 'label'", "empty label"],
    );
    train_refuses(
        "user_id,label,a,b\nu1,0,1,2\nu2,70000,3,4\n",
        &[
            "line 3",
            "column 'label'",
            "label 70000 is larger than 65535",
        ],
    );
    train_refuses(
        "user_id,label,a,b\nu1,cat,1,2\nu2,\"c\na\nt\",3,4\n",
        &["line 3", "column 'label'", "control character"],
    );
    train_refuses(
        "user_id,label,a,b\nu1,cat,1,2\nu2,cat ,3,4\n",
        &[
            "column 'label'",
            "every label is 'cat'",
            "two or more classes",
        ],
    );
}

#[test]
fn classes_flag_with_class_names_must_count_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("names.csv");
    std::fs::write(&data, GOOD.replace(",0,", ",cat,").replace(",1,", ",dog,")).unwrap();
    let out = tmp.path().join("run");
    let args = |classes: &'static str| {
        vec![
            "train".to_string(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--model".into(),
            "models/logreg.toml".into(),
            "--shards".into(),
            "2".into(),
            "--slices".into(),
            "1".into(),
            "--classes".into(),
            classes.into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "-q".into(),
        ]
    };
    let o = sisa(&args("3").iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--classes 3 does not fit the data")
            && err.contains("its 2 distinct names are the classes"),
        "{err}"
    );
    assert!(!out.exists());
    // The number of names is accepted.
    sisa_ok(&args("2").iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn duplicate_and_missing_columns() {
    train_refuses(
        "user_id,label,a,a\nu1,0,1,2\n",
        &["line 1", "column 'a'", "duplicate"],
    );
    train_refuses(
        "user,label,a,b\nu1,0,1,2\n",
        &["line 1", "column 'user_id'", "no user id column"],
    );
    train_refuses(
        "user_id,class,a,b\nu1,0,1,2\n",
        &["line 1", "column 'label'", "no label column"],
    );
}

#[test]
fn test_file_with_other_features() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.csv");
    std::fs::write(&data, GOOD).unwrap();
    let test = tmp.path().join("test.csv");
    std::fs::write(&test, "user_id,label,a,c\nu9,0,1,2\n").unwrap();
    let out = tmp.path().join("run");
    let o = sisa(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--model",
        "models/logreg.toml",
        "--shards",
        "2",
        "--slices",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("test.csv")
            && err.contains("line 1")
            && err.contains("missing 1 of the 2 feature columns: 'b'"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn existing_out_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.csv");
    std::fs::write(&data, GOOD).unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let before = tree_digest(&out);
    let o = train_small(&data, &out);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(tree_digest(&out), before);
}

#[test]
fn bad_flags_and_presets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.csv");
    std::fs::write(&data, GOOD).unwrap();
    let out = tmp.path().join("run");
    let d = data.to_str().unwrap();
    let o = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--shards", "0"], "--shards must be"),
        (vec!["--slices", "0"], "--slices must be"),
        (vec!["--lr=-1"], "lr must be"),
        (
            vec!["--batch-size", "0"],
            "--batch-size must be in 1..=65536, got 0",
        ),
        (vec!["--epochs", "0"], "epochs must be"),
    ] {
        let mut all = vec![
            "train",
            "--data",
            d,
            "--model",
            "models/logreg.toml",
            "--out",
            o,
        ];
        all.extend(args);
        let r = sisa(&all);
        // A flag out of range is a usage error.
        assert_eq!(r.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&r.stderr).contains(want),
            "{want}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!out.exists());
    }
    let preset = tmp.path().join("m.toml");
    std::fs::write(
        &preset,
        "name = \"x\"\noptimizer = \"adam\"\nlr = 0.1\nbatch_size = 8\nepochs = 2\nhiden = [3]\n",
    )
    .unwrap();
    let r = sisa(&[
        "train",
        "--data",
        d,
        "--model",
        preset.to_str().unwrap(),
        "--out",
        o,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1));
    assert!(err.contains("m.toml") && err.contains("hiden"), "{err}");
}

fn small_run(dir: &Path) -> std::path::PathBuf {
    let (train, test) = digits();
    let run = dir.join("run");
    sisa_ok(&[
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
        "-q",
    ]);
    run
}

#[test]
fn unknown_user_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let before = tree_digest(&run);
    let csv = Csv::read(&digits().0);
    let known = csv.users()[0].0.clone();
    let o = sisa(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &known,
        "--user",
        "nobody-such",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("unknown user 'nobody-such'"), "{err}");
    assert_eq!(
        tree_digest(&run),
        before,
        "the run on disk is unchanged, ledger included"
    );
    // An empty request, and a dry run, change nothing either.
    // No user at all is a usage error; a users file that names none is an empty request.
    let o = sisa(&["unlearn", "--run", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--user"));
    let empty = run.parent().unwrap().join("nobody.txt");
    std::fs::write(&empty, "# no one\n").unwrap();
    let o = sisa(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--users-file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no users given"));
    sisa_ok(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &known,
        "--dry-run",
    ]);
    assert_eq!(tree_digest(&run), before);
    // Forgetting the same user twice names the first request.
    sisa_ok(&[
        "unlearn",
        "--run",
        run.to_str().unwrap(),
        "--user",
        &known,
        "-q",
    ]);
    let o = sisa(&["unlearn", "--run", run.to_str().unwrap(), "--user", &known]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("already forgotten by request 1"));
}

#[test]
fn eval_and_predict_refuse_bad_files_and_missing_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let r = run.to_str().unwrap();
    let before = tree_digest(&run);
    let wrong = tmp.path().join("wrong.csv");
    std::fs::write(&wrong, "user_id,label,x\nu,1,2\n").unwrap();
    for cmd in ["eval", "predict"] {
        let o = sisa(&[cmd, "--run", r, "--data", wrong.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            err.contains("wrong.csv")
                && err.contains("line 1")
                && err.contains("missing 64 of the 64 feature columns: 'p0_0', 'p0_1'"),
            "{err}"
        );
    }
    let csv = Csv::read(&digits().1);
    let bad_label = tmp.path().join("label.csv");
    let line = csv.lines[0].splitn(3, ',').collect::<Vec<_>>();
    std::fs::write(
        &bad_label,
        format!("{}\n{},{},{}\n", csv.header, line[0], 42, line[2]),
    )
    .unwrap();
    let o = sisa(&["eval", "--run", r, "--data", bad_label.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("label 42 is not a class"),
        "{err}"
    );
    assert_eq!(tree_digest(&run), before);
    let o = sisa(&["status", "--run", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such run directory"));
    let o = sisa(&["status", "--run", tmp.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a sisa run"));
}

/// An IDX file of `code`-typed values (`values` already big-endian) with the given sizes.
fn idx(code: u8, dims: &[u32], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

#[test]
fn bad_idx_files_are_refused_while_streaming_and_create_nothing() {
    // Images stream into the shards record by record, so these problems surface after rows
    // were already placed; the run must still not appear.
    let pixels: Vec<u8> = (0..50 * 4).map(|v| v as u8).collect();
    let mut late_nan: Vec<u8> = (0..50 * 4).flat_map(|v| (v as f32).to_be_bytes()).collect();
    late_nan[(48 * 4 + 2) * 4..(48 * 4 + 3) * 4].copy_from_slice(&f32::NAN.to_be_bytes());
    let labels: Vec<u8> = (0..50).map(|i| (i % 3) as u8).collect();
    // (what, images, labels, words the message must hold)
    type Case<'a> = (&'a str, Vec<u8>, Vec<u8>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "cut short",
            idx(0x08, &[50, 2, 2], &pixels[..pixels.len() - 3]),
            idx(0x08, &[50], &labels),
            &["213 bytes", "need exactly 216", "cut short"],
        ),
        (
            "trailing bytes",
            idx(0x08, &[50, 2, 2], &[&pixels[..], &[1, 2]].concat()),
            idx(0x08, &[50], &labels),
            &["218 bytes", "trailing bytes"],
        ),
        (
            "not finite",
            idx(0x0D, &[50, 2, 2], &late_nan),
            idx(0x08, &[50], &labels),
            &["record 49, value 3", "not a finite number"],
        ),
        (
            "label count",
            idx(0x08, &[50, 2, 2], &pixels),
            idx(0x08, &[49], &labels[..49]),
            &["49 labels", "50 records"],
        ),
    ];
    for (what, images, label_bytes, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("bad-images-idx3-ubyte");
        std::fs::write(&img, images).unwrap();
        std::fs::write(tmp.path().join("bad-labels-idx1-ubyte"), label_bytes).unwrap();
        let out = tmp.path().join("run");
        let o = sisa(&[
            "train",
            "--data",
            img.to_str().unwrap(),
            "--users",
            "uniform:5",
            "--model",
            "models/logreg.toml",
            "--shards",
            "2",
            "--out",
            out.to_str().unwrap(),
            "-q",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("bad-"), "{what}: names the file: {err}");
        for w in want {
            assert!(err.contains(w), "{what}: expected {w:?} in {err}");
        }
        assert!(!out.exists(), "{what}: --out must not be created");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "{what}: only the two input files, no partial run"
        );
    }
}

#[test]
fn a_preset_with_a_bad_layer_is_refused_naming_the_preset_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, _) = digits();
    let out = tmp.path().join("run");
    for (layers, want) in [
        (
            "input = [1, 8, 8]\nlayers = [{ kind = \"conv2d\", filters = 4, kernel = 9 }, { kind = \"flatten\" }]",
            "layers[0] (conv2d): kernel 9 is larger than its input 1×8×8",
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ kind = \"conv2d\", filters = 0, kernel = 3 }, { kind = \"flatten\" }]",
            "layers[0] (conv2d): filters must be in 1..=4096, got 0",
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ kind = \"conv3d\", filters = 4, kernel = 3 }]",
            "unknown variant `conv3d`",
        ),
        (
            "input = [1, 28, 28]\nlayers = [{ kind = \"flatten\" }]",
            "input is [1, 28, 28], which holds 784 features, but the data has 64",
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ kind = \"conv2d\", filters = 4, kernel = 3 }]",
            "the output layer needs a flat input",
        ),
        (
            "layers = [{ kind = \"maxpool2d\", size = 2 }]",
            "layers[0] (maxpool2d): takes an image",
        ),
        (
            "input = [1, 8, 8]\nlayers = [{ kind = \"dense\", units = 4 }]",
            "layers[0] (dense): takes a flat input, but gets an image",
        ),
        (
            "layers = [{ kind = \"dropout\", rate = 1.5 }]",
            "layers[0] (dropout): rate must be in [0, 1)",
        ),
        (
            "hidden = [4]\nlayers = [{ kind = \"relu\" }]",
            "layers and hidden are both given",
        ),
        (
            "standardize = \"maybe\"",
            "standardize is \"maybe\"; expected \"feature\", \"global\" or \"none\"",
        ),
        (
            "standardize = \"none\"\nscale = \"1/x\"",
            "scale is \"1/x\"; expected a number or a fraction",
        ),
        ("scale = 0.5", "scale applies to features that are not standardized, but standardize is \"feature\""),
        ("standardize = \"none\"\nscale = -1", "scale must be a positive number, got -1"),
        ("augment = { shift = 1 }", "augment shifts images, but the preset has no input"),
        (
            "input = [1, 8, 8]\naugment = { shift = 9 }",
            "augment shift must be in 1..=7 for 8×8 images, got 9",
        ),
        ("input = [1, 8, 8]\naugment = { shift = 1, turn = 2 }", "unknown field `turn`"),
        ("min_steps = 0", "min_steps must be in 1..=2^40, got 0"),
    ] {
        let preset = tmp.path().join("bad.toml");
        std::fs::write(
            &preset,
            format!("name = \"x\"\noptimizer = \"adam\"\nlr = 0.01\nbatch_size = 8\nepochs = 1\n{layers}\n"),
        )
        .unwrap();
        let before = tree_digest(tmp.path());
        let r = sisa(&[
            "train",
            "--data",
            train.to_str().unwrap(),
            "--model",
            preset.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(err.contains("bad.toml") && err.contains(want), "{want}: {err}");
        assert!(!out.exists());
        assert_eq!(tree_digest(tmp.path()), before, "nothing is created");
    }
}
