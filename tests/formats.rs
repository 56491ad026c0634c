//! Input formats by content and columns by name, through the real binary: the bundled digits
//! as CSV, TSV, Parquet, `.npz`, `.npy` with side arrays and standard input train to the same
//! models; predict, eval and add match features by name in any order.

mod common;
mod serving;

use common::{copy_dir, digests, digits, sisa, sisa_json, sisa_ok, Csv};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The rows of a bundled CSV: users, labels, feature names and features.
struct Data {
    users: Vec<String>,
    labels: Vec<i64>,
    names: Vec<String>,
    x: Vec<Vec<f64>>,
}

fn load(path: &Path) -> Data {
    let csv = Csv::read(path);
    let header: Vec<&str> = csv.header.split(',').collect();
    assert_eq!(&header[..2], ["user_id", "label"]);
    let mut d = Data {
        users: Vec::new(),
        labels: Vec::new(),
        names: header[2..].iter().map(|s| s.to_string()).collect(),
        x: Vec::new(),
    };
    for line in &csv.lines {
        let f: Vec<&str> = line.split(',').collect();
        d.users.push(f[0].to_string());
        d.labels.push(f[1].parse().unwrap());
        d.x.push(f[2..].iter().map(|v| v.parse().unwrap()).collect());
    }
    d
}

fn write_tsv(d: &Data, path: &Path) {
    let mut text = format!("user_id\tlabel\t{}\n", d.names.join("\t"));
    for i in 0..d.users.len() {
        let x: Vec<String> = d.x[i].iter().map(f64::to_string).collect();
        text += &format!("{}\t{}\t{}\n", d.users[i], d.labels[i], x.join("\t"));
    }
    std::fs::write(path, text).unwrap();
}

/// Parquet as pandas writes it: nullable columns, an index column, several row groups; the
/// label first and the user last, the features in the CSV's order. With `names`, each label
/// `l` is written as the string `names(l)`.
fn write_parquet(d: &Data, path: &Path, compression: Compression) {
    write_parquet_labelled(d, path, compression, None)
}

fn write_parquet_labelled(
    d: &Data,
    path: &Path,
    compression: Compression,
    names: Option<&dyn Fn(i64) -> String>,
) {
    let mut message = String::from(if names.is_some() {
        "message digits { REQUIRED BYTE_ARRAY label (UTF8); "
    } else {
        "message digits { OPTIONAL INT64 label; "
    });
    for n in &d.names {
        message += &format!("OPTIONAL DOUBLE {n}; ");
    }
    message += "REQUIRED BYTE_ARRAY user_id (UTF8); OPTIONAL INT64 __index_level_0__; }";
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&message).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let rows: Vec<usize> = (0..d.users.len()).collect();
    for chunk in rows.chunks(500) {
        let defs = vec![1i16; chunk.len()];
        let mut rg = w.next_row_group().unwrap();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            let n = d.names.len();
            if let (0, Some(name)) = (col, names) {
                let v: Vec<ByteArray> = chunk
                    .iter()
                    .map(|&i| name(d.labels[i]).as_str().into())
                    .collect();
                c.typed::<ByteArrayType>()
                    .write_batch(&v, None, None)
                    .unwrap();
            } else if col == 0 || col == n + 2 {
                let v: Vec<i64> = chunk
                    .iter()
                    .map(|&i| if col == 0 { d.labels[i] } else { i as i64 })
                    .collect();
                c.typed::<Int64Type>()
                    .write_batch(&v, Some(&defs), None)
                    .unwrap();
            } else if col == n + 1 {
                let v: Vec<ByteArray> = chunk.iter().map(|&i| d.users[i].as_str().into()).collect();
                c.typed::<ByteArrayType>()
                    .write_batch(&v, None, None)
                    .unwrap();
            } else {
                let v: Vec<f64> = chunk.iter().map(|&i| d.x[i][col - 1]).collect();
                c.typed::<DoubleType>()
                    .write_batch(&v, Some(&defs), None)
                    .unwrap();
            }
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

/// A `.npy` array: `descr`, `shape`, little-endian `body`.
fn npy(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(body);
    out
}

/// The arrays of `d`: features `(N, 8, 8)` as float32, labels as int64, users as unicode.
fn arrays(d: &Data) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let n = d.users.len();
    let x: Vec<u8> =
        d.x.iter()
            .flatten()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect();
    let y: Vec<u8> = d.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    (
        npy("<f4", &[n, 8, 8], &x),
        npy("<i8", &[n], &y),
        unicode_npy(&d.users),
    )
}

/// A 1-D unicode (`<U`) `.npy` array of `strings`, padded to the longest.
fn unicode_npy(strings: &[String]) -> Vec<u8> {
    let width = strings.iter().map(|s| s.chars().count()).max().unwrap();
    let mut body = Vec::new();
    for s in strings {
        let mut cps: Vec<u32> = s.chars().map(|c| c as u32).collect();
        cps.resize(width, 0);
        body.extend(cps.iter().flat_map(|c| c.to_le_bytes()));
    }
    npy(&format!("<U{width}"), &[strings.len()], &body)
}

fn write_npz(d: &Data, path: &Path, deflate: bool) {
    let (x, y, u) = arrays(d);
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in [("user_id.npy", u), ("X.npy", x), ("y.npy", y)] {
        z.start_file(name, opts).unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap();
}

fn train_args<'a>(data: &'a str, test: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--test",
        test,
        "--model",
        "models/logreg.toml",
        "--shards",
        "3",
        "--slices",
        "2",
        "--epochs",
        "4",
        "--out",
        out,
        "-q",
    ];
    args.extend_from_slice(extra);
    args
}

/// Train and return the shard models' digests and the held-out rows.
fn train(data: &Path, test: &Path, out: &Path, extra: &[&str]) -> (Vec<String>, u64) {
    let args = train_args(
        data.to_str().unwrap(),
        test.to_str().unwrap(),
        out.to_str().unwrap(),
        extra,
    );
    let v = sisa_json(&args);
    (digests(out), v["test_rows"].as_u64().unwrap())
}

/// Run `sisa` with `input` on its standard input.
fn sisa_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sisa"))
        .args(args)
        .current_dir(common::root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal may come before the input is read: the pipe then closes early.
    match child.stdin.take().unwrap().write_all(input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_same_data_in_every_format_trains_to_the_same_models() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (train_csv, test_csv) = digits();
    let (train_data, test_data) = (load(&train_csv), load(&test_csv));
    let (want, test_rows) = train(&train_csv, &test_csv, &d.join("csv"), &[]);
    let path = |n: &str| d.join(n);
    let check = |name: &str, got: (Vec<String>, u64)| {
        assert_eq!(
            got.0, want,
            "{name}: the shard models differ from the CSV's"
        );
        assert_eq!(got.1, test_rows, "{name}: held-out rows");
    };

    write_tsv(&train_data, &path("train.tsv"));
    write_tsv(&test_data, &path("test.tsv"));
    check(
        "tsv",
        train(&path("train.tsv"), &path("test.tsv"), &path("tsv"), &[]),
    );

    write_parquet(&train_data, &path("train.parquet"), Compression::SNAPPY);
    write_parquet(
        &test_data,
        &path("test.parquet"),
        Compression::ZSTD(ZstdLevel::default()),
    );
    check(
        "parquet",
        train(
            &path("train.parquet"),
            &path("test.parquet"),
            &path("parquet"),
            &[],
        ),
    );

    write_npz(&train_data, &path("train.npz"), false);
    write_npz(&test_data, &path("test.npz"), true);
    check(
        "npz",
        train(&path("train.npz"), &path("test.npz"), &path("npz"), &[]),
    );

    // A .npy of features with its labels and user ids in arrays beside it.
    let (x, y, u) = arrays(&train_data);
    std::fs::write(path("x.npy"), x).unwrap();
    std::fs::write(path("y.npy"), y).unwrap();
    std::fs::write(path("users.npy"), u).unwrap();
    let y = path("y.npy");
    let users = path("users.npy");
    check(
        "npy",
        train(
            &path("x.npy"),
            &path("test.npz"),
            &path("npy"),
            &[
                "--labels",
                y.to_str().unwrap(),
                "--user-ids",
                users.to_str().unwrap(),
            ],
        ),
    );

    // Standard input, gzipped, for --data; the held-out file is a Parquet file.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&std::fs::read(&train_csv).unwrap()).unwrap();
    let gz = gz.finish().unwrap();
    let out = path("stdin");
    let test_parquet = path("test.parquet");
    let args = train_args(
        "-",
        test_parquet.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let o = sisa_stdin(&args, &gz);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check("stdin", (digests(&out), test_rows));

    // Formats that seek are refused on standard input, and so is a second `-`.
    let o = sisa_stdin(
        &train_args("-", "-", path("none").to_str().unwrap(), &[]),
        b"",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("one of them at most"));
    let o = sisa_stdin(
        &train_args(
            "-",
            test_csv.to_str().unwrap(),
            path("none").to_str().unwrap(),
            &[],
        ),
        &std::fs::read(path("train.parquet")).unwrap(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("<stdin>") && err.contains("cannot be read from standard input"),
        "{err}"
    );
    assert!(!path("none").exists());
}

/// A CSV with the features of `csv` shuffled, an extra column and the label moved.
fn shuffled(csv: &Csv, path: &Path) {
    let header: Vec<&str> = csv.header.split(',').collect();
    let n = header.len();
    // Reverse the features; put the label last, an unknown column first.
    let order: Vec<usize> = std::iter::once(0)
        .chain((2..n).rev())
        .chain(std::iter::once(1))
        .collect();
    let mut text = format!(
        "notes,{}\n",
        order
            .iter()
            .map(|&i| header[i])
            .collect::<Vec<_>>()
            .join(",")
    );
    for line in &csv.lines {
        let f: Vec<&str> = line.split(',').collect();
        text += &format!(
            "x,{}\n",
            order.iter().map(|&i| f[i]).collect::<Vec<_>>().join(",")
        );
    }
    std::fs::write(path, text).unwrap();
}

fn small_run(dir: &Path) -> PathBuf {
    let (train_csv, test_csv) = digits();
    let out = dir.join("run");
    sisa_ok(&train_args(
        train_csv.to_str().unwrap(),
        test_csv.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    out
}

#[test]
fn predict_eval_and_add_find_features_by_name_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());
    let r = run.to_str().unwrap();
    let (_, test_csv) = digits();
    let original = test_csv.to_str().unwrap();
    let mixed = tmp.path().join("mixed.csv");
    shuffled(&Csv::read(&test_csv), &mixed);
    let m = mixed.to_str().unwrap();

    let out = sisa(&["predict", "--run", r, "--data", m, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ignoring 1 column(s)") && err.contains("'notes'"),
        "{err}"
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = sisa_json(&["predict", "--run", r, "--data", original]);
    assert_eq!(got, want, "predict on shuffled columns");

    let got = sisa_json(&["eval", "--run", r, "--data", m]);
    let want = sisa_json(&["eval", "--run", r, "--data", original]);
    assert_eq!(got, want, "eval on shuffled columns");
    assert!(want["rows"].as_u64().unwrap() > 300);

    // A missing feature is named; a file without names must have the run's count.
    let csv = Csv::read(&test_csv);
    let short = tmp.path().join("short.csv");
    let header = csv.header.replace(",p7_7", "");
    let lines: Vec<String> = csv
        .lines
        .iter()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    std::fs::write(&short, format!("{header}\n{}\n", lines.join("\n"))).unwrap();
    let o = sisa(&["predict", "--run", r, "--data", short.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("short.csv") && err.contains("missing 1 of the 64 feature columns: 'p7_7'"),
        "{err}"
    );

    // add: the same new rows, in either column order, give the same models.
    let new_rows = tmp.path().join("new.csv");
    let mut text = csv.header.clone() + "\n";
    for l in csv.lines.iter().take(40) {
        text += &format!("new-{l}\n");
    }
    std::fs::write(&new_rows, text).unwrap();
    let new_mixed = tmp.path().join("new-mixed.csv");
    shuffled(&Csv::read(&new_rows), &new_mixed);
    let copy = tmp.path().join("copy");
    copy_dir(&run, &copy);
    sisa_ok(&[
        "add",
        "--run",
        r,
        "--data",
        new_rows.to_str().unwrap(),
        "-q",
    ]);
    sisa_ok(&[
        "add",
        "--run",
        copy.to_str().unwrap(),
        "--data",
        new_mixed.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(digests(&run), digests(&copy), "add with shuffled columns");
}

#[test]
fn the_readme_line_turns_the_sisa_reference_pickle_into_an_npz_that_trains() {
    if !serving::python_has(&["numpy"], "python3 -m pip install numpy") {
        return;
    }
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("import numpy as np; d = np.load("))
        .expect("the README shows the conversion line");
    let tmp = tempfile::tempdir().unwrap();
    let python = |code: &str| {
        let o = Command::new("python3")
            .args(["-c", code])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{code}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // The reference code's layout (datasets/purchase/prepare_data.py): np.save of a dict of
    // integer arrays, here the bundled digits.
    let csv = digits().0;
    let csv = csv.to_str().unwrap();
    python(&format!(
        "import numpy as np\n\
         X = np.loadtxt('{csv}', delimiter=',', skiprows=1, usecols=range(2, 66), dtype=np.int64)\n\
         y = np.loadtxt('{csv}', delimiter=',', skiprows=1, usecols=1, dtype=np.int64)\n\
         np.save('purchase2_train.npy', {{'X': X, 'y': y}})\n"
    ));
    let pickled = tmp.path().join("purchase2_train.npy");
    let out = tmp.path().join("run");
    let args = |data: &Path| {
        vec![
            "train".to_string(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--users".into(),
            "uniform:50".into(),
            "--model".into(),
            "models/logreg.toml".into(),
            "--shards".into(),
            "2".into(),
            "--slices".into(),
            "1".into(),
            "--epochs".into(),
            "2".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "-q".into(),
        ]
    };
    let refused = sisa(
        &args(&pickled)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("purchase2_train.npy") && err.contains("pickled"),
        "{err}"
    );
    python(line);
    let npz = tmp.path().join("purchase2_train.npz");
    let v = sisa_json(&args(&npz).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        v["rows"].as_u64(),
        Some(Csv::read(&digits().0).lines.len() as u64)
    );
}

#[test]
fn class_names_read_the_same_from_csv_tsv_parquet_and_npz() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train_csv, test_csv) = digits();
    let name = |l: i64| format!("digit-{l}");
    let named = load(&train_csv);
    let test = load(&test_csv);
    // CSV and TSV with the names as labels.
    let write_named_csv = |data: &Data, path: &Path, sep: &str| {
        let mut text = format!("user_id{sep}label{sep}{}\n", data.names.join(sep));
        for i in 0..data.users.len() {
            let x: Vec<String> = data.x[i].iter().map(f64::to_string).collect();
            text += &format!(
                "{}{sep}{}{sep}{}\n",
                data.users[i],
                name(data.labels[i]),
                x.join(sep)
            );
        }
        std::fs::write(path, text).unwrap();
    };
    let (csv, tsv, pq) = (d.join("n.csv"), d.join("n.tsv"), d.join("n.parquet"));
    write_named_csv(&named, &csv, ",");
    write_named_csv(&named, &tsv, "\t");
    write_parquet_labelled(&named, &pq, Compression::SNAPPY, Some(&name));
    // An .npz whose labels are a unicode array of the names.
    let npz = d.join("n.npz");
    let (x, _, u) = arrays(&named);
    let names: Vec<String> = named.labels.iter().map(|&l| name(l)).collect();
    let y = unicode_npy(&names);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for (entry, bytes) in [("user_id.npy", u), ("X.npy", x), ("y.npy", y)] {
        z.start_file(entry, opts).unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap();
    let held = d.join("held.csv");
    write_named_csv(&test, &held, ",");
    let mut seen = Vec::new();
    for (i, file) in [&csv, &tsv, &pq, &npz].into_iter().enumerate() {
        let out = d.join(format!("run{i}"));
        let (digests, _) = train(file, &held, &out, &[]);
        let status = sisa_json(&["status", "--run", out.to_str().unwrap()]);
        let want: Vec<String> = (0..10).map(name).collect();
        assert_eq!(status["class_names"], serde_json::json!(want), "{file:?}");
        seen.push(digests);
    }
    assert_eq!(seen[0], seen[1], "TSV trains as the CSV does");
    assert_eq!(seen[0], seen[2], "Parquet trains as the CSV does");
    assert_eq!(
        seen[0], seen[3],
        "an .npz with a unicode labels array trains as the CSV does"
    );
    // A held-out Parquet file with a name the training file never had is refused, naming the
    // file and the label column, and nothing is created.
    let odd = |l: i64| if l == 9 { "nine".to_string() } else { name(l) };
    let bad = d.join("held-odd.parquet");
    write_parquet_labelled(&test, &bad, Compression::SNAPPY, Some(&odd));
    let out = d.join("refused");
    let args = train_args(
        pq.to_str().unwrap(),
        bad.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    );
    let o = sisa(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("held-odd.parquet") && err.contains("'label'") && err.contains("nine"),
        "{err}"
    );
    assert!(!out.exists());
    // Names in byte order equal the integer order here, so the integer run is the same too.
    let (ints, _) = train(&train_csv, &test_csv, &d.join("ints"), &[]);
    assert_eq!(seen[0], ints);
}
