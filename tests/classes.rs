//! Class names end to end: the bundled digits with their labels written as names train,
//! predict, evaluate, unlearn, add and verify with the real binary; the names sort in byte
//! order whatever the file's order; names in a byte order equal to the integer order give the
//! integer run's models bit for bit; a name the run does not know is refused naming the file,
//! line and column; and the server's answers (REST and gRPC) carry the names.

mod common;
#[path = "serving/grpc.rs"]
mod grpc_client;
mod serving;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Digit d as a name whose byte order is the integer order (one digit after the prefix).
fn digit_name(label: &str) -> String {
    format!("digit-{label}")
}

/// Animal names for the digits, in an order unlike the digits': byte order puts `Dog` first.
const ANIMALS: [&str; 10] = [
    "zebra", "ant", "cat", "Dog", "eel", "fox", "gnu", "hen", "ibis", "yak",
];

fn animal_name(label: &str) -> String {
    ANIMALS[label.parse::<usize>().expect("a digit")].to_string()
}

/// Write `lines` (a digits CSV's rows) to `dst` under `header`, each label replaced by
/// `name(label)`.
fn write_named(header: &str, lines: &[String], dst: &Path, name: &dyn Fn(&str) -> String) {
    let mut text = format!("{header}\n");
    for l in lines {
        let mut f = l.splitn(3, ',');
        let (user, label, rest) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        text += &format!("{user},{},{rest}\n", name(label));
    }
    std::fs::write(dst, text).unwrap();
}

/// The digits training and held-out files relabelled by `name`, in `dir`.
fn named_digits(dir: &Path, name: &dyn Fn(&str) -> String) -> (PathBuf, PathBuf) {
    let (train, test) = digits();
    let mut out = Vec::new();
    for (src, file) in [(train, "train.csv"), (test, "test.csv")] {
        let csv = Csv::read(&src);
        let dst = dir.join(file);
        write_named(&csv.header, &csv.lines, &dst, name);
        out.push(dst);
    }
    (out[0].clone(), out[1].clone())
}

/// `sisa train` of a small logistic regression (S=3, R=2) on `data` and `test`.
fn train_args<'a>(data: &'a str, test: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
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
        "6",
        "--out",
        out,
        "-q",
    ]
}

fn train(data: &Path, test: &Path, out: &Path) {
    sisa_ok(&train_args(
        data.to_str().unwrap(),
        test.to_str().unwrap(),
        out.to_str().unwrap(),
    ));
}

fn run_json(run: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One run on the digits named `digit-0`..`digit-9`, shared by the tests that never change it,
/// with its named held-out file.
fn shared_run() -> &'static (PathBuf, PathBuf) {
    static RUN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("classes-shared");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let (data, test) = named_digits(&dir, &digit_name);
        let run = dir.join("digits-named");
        train(&data, &test, &run);
        (run, test)
    })
}

#[test]
fn string_labels_train_predict_eval_unlearn_add_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, test) = named_digits(tmp.path(), &digit_name);
    let named = tmp.path().join("named");
    train(&data, &test, &named);
    let (int_data, int_test) = digits();
    let integer = tmp.path().join("integer");
    train(&int_data, &int_test, &integer);

    // The names are fixed in run.json; an integer run has none, as before.
    let names: Vec<String> = (0..10).map(|d| digit_name(&d.to_string())).collect();
    assert_eq!(run_json(&named)["class_names"], json!(names));
    assert_eq!(run_json(&named)["classes"], 10);
    assert!(run_json(&integer).get("class_names").is_none());
    // Names in the integer order are the integer run: the same models, bit for bit.
    assert_eq!(digests(&named), digests(&integer));
    let status = sisa_json(&["status", "--run", s(&named)]);
    assert_eq!(status["class_names"], json!(names));

    // predict: the class name beside the label, which stays the class index.
    let p = sisa_json(&["predict", "--run", s(&named), "--data", s(&test)]);
    let q = sisa_json(&["predict", "--run", s(&integer), "--data", s(&int_test)]);
    let (p, q) = (
        p["predictions"].as_array().unwrap(),
        q["predictions"].as_array().unwrap(),
    );
    assert_eq!(p.len(), 385);
    for (a, b) in p.iter().zip(q) {
        assert_eq!(a["label"], b["label"]);
        assert_eq!(a["probabilities"], b["probabilities"]);
        let label = a["label"].as_u64().unwrap();
        assert_eq!(a["class"], json!(format!("digit-{label}")));
        assert!(b.get("class").is_none(), "an integer run names no class");
    }
    let text = sisa_ok(&["predict", "--run", s(&named), "--data", s(&test)]);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("line,label,class,confidence"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[2], format!("digit-{}", first[1]), "{first:?}");

    // eval: on the held-out rows (stored as class indices) and on the named file.
    let e = sisa_json(&["eval", "--run", s(&named)]);
    let f = sisa_json(&["eval", "--run", s(&integer)]);
    assert_eq!(e["accuracy"], f["accuracy"]);
    assert_eq!(e["rows"], 385);
    assert_eq!(e["class_names"], json!(names));
    assert!(f.get("class_names").is_none());
    let g = sisa_json(&["eval", "--run", s(&named), "--data", s(&test)]);
    assert_eq!(g["accuracy"], e["accuracy"]);
    let text = sisa_ok(&["eval", "--run", s(&named)]);
    assert!(text.contains("classes: 'digit-0', 'digit-1'"), "{text}");

    // audit reads the names too: the same losses, so the same figures, as the integer run.
    let audit = |run: &Path, members: &Path, nonmembers: &Path| {
        let mut r = sisa_json(&[
            "audit",
            "--run",
            s(run),
            "--members",
            s(members),
            "--nonmembers",
            s(nonmembers),
            "--bootstrap",
            "50",
        ]);
        r.as_object_mut().unwrap().remove("options");
        r
    };
    assert_eq!(
        audit(&named, &data, &test),
        audit(&integer, &int_data, &int_test)
    );

    // unlearn and verify, then add rows of a new user with names, and verify again.
    let user = Csv::user(&Csv::read(&data).lines[0]).to_string();
    sisa_ok(&["unlearn", "--run", s(&named), "--user", &user, "-q"]);
    let v = sisa_json(&["verify", "--run", s(&named), "-q"]);
    assert_eq!(v["identical"], true, "{v}");
    let more = tmp.path().join("more.csv");
    let csv = Csv::read(&test);
    let lines: Vec<String> = csv.lines[..6]
        .iter()
        .map(|l| format!("newcomer{}", &l[l.find(',').unwrap()..]))
        .collect();
    std::fs::write(&more, format!("{}\n{}\n", csv.header, lines.join("\n"))).unwrap();
    let a = sisa_json(&["add", "--run", s(&named), "--data", s(&more), "-q"]);
    assert_eq!(a["rows_added"], 6, "{a}");
    let v = sisa_json(&["verify", "--run", s(&named), "-q"]);
    assert_eq!(v["identical"], true, "{v}");
}

#[test]
fn names_sort_in_byte_order_whatever_the_order_of_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, test) = named_digits(tmp.path(), &animal_name);
    // The same rows with the users in reverse order (each user's rows kept in their order):
    // the names are first seen in another order, and the rows land where they did.
    let csv = Csv::read(&data);
    let mut users: Vec<String> = csv.users().into_iter().map(|(u, _)| u).collect();
    users.reverse();
    let mut lines = Vec::new();
    for u in &users {
        lines.extend(csv.lines.iter().filter(|l| Csv::user(l) == u).cloned());
    }
    assert_ne!(lines, csv.lines);
    let reordered = tmp.path().join("reordered.csv");
    std::fs::write(
        &reordered,
        format!("{}\n{}\n", csv.header, lines.join("\n")),
    )
    .unwrap();

    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train(&data, &test, &a);
    train(&reordered, &test, &b);
    let mut sorted = ANIMALS.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(sorted[0], "Dog");
    assert_eq!(run_json(&a)["class_names"], json!(sorted));
    assert_eq!(run_json(&b)["class_names"], json!(sorted));
    assert_eq!(digests(&a), digests(&b));
    // Each row's class is the position of its name: a digit 1 ("ant") is class 1.
    let p = sisa_json(&["predict", "--run", s(&a), "--data", s(&test)]);
    for r in p["predictions"].as_array().unwrap() {
        let label = r["label"].as_u64().unwrap() as usize;
        assert_eq!(r["class"], json!(sorted[label]));
    }
}

/// `sisa` with `args` fails with exit 1 and a message holding every one of `want`.
#[track_caller]
fn refused(args: &[&str], want: &[&str]) {
    let o = sisa(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected {w:?} in {err}");
    }
}

#[test]
fn a_name_the_run_does_not_know_is_refused_naming_file_line_and_column() {
    let (run, test) = shared_run();
    let tmp = tempfile::tempdir().unwrap();
    let csv = Csv::read(test);
    let mut lines = csv.lines[..5].to_vec();
    // Line 4 of the file (the header is line 1) holds a name no training row has.
    let l = &lines[2];
    let comma = l.find(',').unwrap();
    let rest = &l[comma + 1..];
    lines[2] = format!(
        "{},digit-x,{}",
        &l[..comma],
        &rest[rest.find(',').unwrap() + 1..]
    );
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, format!("{}\n{}\n", csv.header, lines.join("\n"))).unwrap();
    let want = [
        "bad.csv",
        "line 4",
        "column 'label'",
        "label 'digit-x' is not a class of this run",
        "'digit-0', 'digit-1'",
    ];
    let before = tree_digest(run);
    refused(&["eval", "--run", s(run), "--data", s(&bad)], &want);
    refused(&["add", "--run", s(run), "--data", s(&bad)], &want);
    assert_eq!(tree_digest(run), before, "the run is unchanged");

    // The held-out file of a new run is read with the training names.
    let (data, _) = named_digits(tmp.path(), &digit_name);
    let out = tmp.path().join("new");
    refused(&train_args(s(&data), s(&bad), s(&out)), &want);
    assert!(!out.exists(), "--out is not created");

    // Integer labels in a named run are names too: "3" is no digit-3.
    let ints = tmp.path().join("ints.csv");
    let (_, int_test) = digits();
    Csv::read(&int_test).write_first(3, &ints);
    refused(
        &["eval", "--run", s(run), "--data", s(&ints)],
        &[
            "ints.csv",
            "line 2",
            "column 'label'",
            "is not a class of this run",
        ],
    );
}

#[test]
fn serving_answers_carry_class_names_over_rest_and_grpc() {
    use grpc_client::proto::model_infer_request::InferRequestedOutputTensor;
    use grpc_client::proto::ModelMetadataRequest;
    let (run, test) = shared_run();
    // The named held-out file's first rows: the bundled file's, labels aside.
    let rows = serving::digits_rows(4);
    let want = sisa_json(&["predict", "--run", s(run), "--data", s(test)]);
    let want: Vec<(u64, String)> = want["predictions"].as_array().unwrap()[..4]
        .iter()
        .map(|p| {
            (
                p["label"].as_u64().unwrap(),
                p["class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let names: Vec<String> = (0..10).map(|d| format!("digit-{d}")).collect();

    let server = serving::Server::start(run, &["--grpc-addr", "127.0.0.1:0"], &[]);
    let mut c = server.client();
    let meta = c.get(&server.path(""), &[]).unwrap().json();
    assert_eq!(meta["parameters"]["class_names"], json!(names));
    assert_eq!(
        meta["outputs"].as_array().unwrap().last().unwrap(),
        &json!({"name": "class_name", "datatype": "BYTES", "shape": [-1]})
    );
    let infer = |c: &mut serving::http::Client, body: Vec<u8>| -> Value {
        let r = c
            .post(
                &server.path("/infer"),
                &[("Content-Type", "application/json")],
                &body,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let answer = infer(&mut c, serving::infer_body(&rows, None));
    let outputs = answer["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["name"], "label");
    assert_eq!(outputs[1]["name"], "probabilities");
    let class_name = outputs.last().unwrap();
    assert_eq!(class_name["name"], "class_name");
    assert_eq!(class_name["datatype"], "BYTES");
    assert_eq!(class_name["shape"], json!([4]));
    let labels: Vec<u64> = outputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let got_names: Vec<String> = class_name["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let got: Vec<(u64, String)> = labels.into_iter().zip(got_names).collect();
    assert_eq!(got, want);
    // Triton's classification extension: score:index:name, best first.
    let mut req: Value = serde_json::from_slice(&serving::infer_body(&rows, None)).unwrap();
    req["outputs"] = json!([{"name": "probabilities", "parameters": {"classification": 2}}]);
    let answer = infer(&mut c, serde_json::to_vec(&req).unwrap());
    let strings = answer["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(strings.len(), 8);
    for (i, (label, name)) in want.iter().enumerate() {
        let best = strings[2 * i].as_str().unwrap();
        let parts: Vec<&str> = best.splitn(3, ':').collect();
        assert_eq!(parts[1], label.to_string(), "{best}");
        assert_eq!(parts[2], name, "{best}");
        assert!(parts[0].parse::<f32>().is_ok(), "{best}");
    }

    // gRPC: the same names, as BYTES in raw_output_contents (a 4-byte length before each).
    let addr = grpc_client::grpc_addr(&server);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = grpc_client::connect(addr).await;
        let meta = client
            .model_metadata(ModelMetadataRequest {
                name: server.model.clone(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let last = meta.outputs.last().unwrap();
        assert_eq!(
            (last.name.as_str(), last.datatype.as_str()),
            ("class_name", "BYTES")
        );
        let mut request = grpc_client::infer_request(&server.model, &rows, true);
        request.outputs = ["label", "class_name"]
            .map(|name| InferRequestedOutputTensor {
                name: name.into(),
                ..Default::default()
            })
            .to_vec();
        let r = client.model_infer(request).await.unwrap().into_inner();
        let (labels, _) = grpc_client::int64_output(&r, "label");
        let i = r
            .outputs
            .iter()
            .position(|o| o.name == "class_name")
            .unwrap();
        assert_eq!(r.outputs[i].datatype, "BYTES");
        assert_eq!(r.outputs[i].shape, [4]);
        let mut raw = &r.raw_output_contents[i][..];
        let mut got = Vec::new();
        for label in labels {
            let n = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
            got.push((
                label as u64,
                String::from_utf8(raw[4..4 + n].to_vec()).unwrap(),
            ));
            raw = &raw[4 + n..];
        }
        assert!(raw.is_empty());
        assert_eq!(got, want);
    });
}
