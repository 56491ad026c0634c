//! Real inference clients against the real server: `tests/clients/http_clients.py` drives
//! `sisa serve` with `tritonclient.http` and kserve's `InferenceRESTClient`, called as their
//! documentation shows, and every answer is compared with `sisa predict --json` on the same
//! rows: labels equal, probabilities within 1e-6. The README's example with both clients is
//! run as written, and must print what the README says.
//!
//! Needs `python3` with `pip install "tritonclient[http]" kserve numpy`. Without them the test
//! says why and passes, unless the environment variable `CI` is set: then it fails.

mod serving;

use serde_json::Value;
use serving::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Rows of the held-out digits the clients send.
const ROWS: usize = 16;

/// Run `cmd` to its end, killing it after `limit`; its stdout, or a panic with its stderr.
fn run_to_end(mut cmd: Command, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).map(|_| s)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().expect("kill the command");
            child.wait().expect("wait for the killed command");
            panic!("{cmd:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().expect("stdout reader").expect("read stdout");
    let err = err_reader
        .join()
        .expect("stderr reader")
        .expect("read stderr");
    assert!(status.success(), "{cmd:?} failed ({status}): {err}");
    out
}

/// The README's Python example that uses tritonclient and kserve (a `python` block of its
/// "Serving" section).
fn readme_clients_example() -> String {
    readme_serving_python()
        .into_iter()
        .find(|b| b.contains("import tritonclient.http"))
        .expect("a Python example with tritonclient")
}

/// The first `n` held-out digits rows as a CSV file of their own.
fn write_rows(dir: &Path, n: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo("datasets/digits/test.csv")).expect("read test.csv");
    let lines: Vec<&str> = text.lines().take(n + 1).collect();
    let path = dir.join("rows.csv");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write rows.csv");
    path
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6
}

#[test]
fn tritonclient_and_kserve_get_the_answers_sisa_predict_gives() {
    if !python_has(
        &["tritonclient.http", "kserve", "numpy"],
        "pip install \"tritonclient[http]\" kserve numpy",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", 5);
    let rows = write_rows(dir.path(), ROWS);

    // What the CLI predicts for the same rows.
    let mut predict = Command::new(BIN);
    predict
        .arg("predict")
        .arg("--run")
        .arg(&run)
        .arg("--data")
        .arg(&rows)
        .arg("--json");
    let predicted: Value =
        serde_json::from_str(&run_to_end(predict, Duration::from_secs(60))).unwrap();
    let predictions = predicted["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), ROWS);
    let labels: Vec<i64> = predictions
        .iter()
        .map(|p| p["label"].as_i64().unwrap())
        .collect();
    let probs: Vec<Vec<f64>> = predictions
        .iter()
        .map(|p| {
            p["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();

    let server = Server::start(&run, &[], &[]);
    let mut python = Command::new("python3");
    python
        .arg(repo("tests/clients/http_clients.py"))
        .arg(server.addr.to_string())
        .arg(&server.model)
        .arg(&rows);
    let out = run_to_end(python, Duration::from_secs(180));
    let answer: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: the clients printed {out}"));
    assert_eq!(answer["rows"], ROWS);

    // The README's example, as written, from the repository's folder.
    let example = readme_clients_example().replace("127.0.0.1:8080", &server.addr.to_string());
    let mut python = Command::new("python3");
    python.args(["-c", &example]).current_dir(repo("."));
    let printed = run_to_end(python, Duration::from_secs(120));
    let first: Vec<String> = labels[..4].iter().map(i64::to_string).collect();
    let first = format!("[{}]", first.join(", "));
    assert_eq!(printed, format!("{first} (4, 10)\n{first}\n"));
    // And what the README says it prints is what it printed for the README's run.
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    assert!(
        readme.contains(&format!("prints `{first} (4, 10)` and `{first}`")),
        "the README should say the example prints {first}"
    );
    let cases = answer["cases"].as_object().unwrap();

    // Each case, and the outputs the answer held as binary data.
    let both = ["label", "probabilities"];
    let expected: [(&str, &[&str]); 9] = [
        ("triton_default", &both),
        ("triton_json_input", &both),
        ("triton_outputs_binary", &both),
        ("triton_outputs_json", &[]),
        ("triton_outputs_mixed", &["label"]),
        ("triton_gzip", &both),
        ("triton_deflate", &both),
        ("triton_classification", &both),
        ("triton_options", &both),
    ];
    let kserve = [
        ("kserve_default", false),
        ("kserve_json_input", false),
        ("kserve_binary_output", true),
    ];
    // Every case is one of these (or the loop below panics), so the count says all are there.
    assert_eq!(
        cases.len(),
        expected.len() + kserve.len(),
        "{:?}",
        cases.keys()
    );
    for (name, case) in cases {
        let got: Vec<i64> = case["label"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no labels"))
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(got, labels, "{name}: labels");
        if let Some(p) = case.get("probabilities") {
            let p = p.as_array().unwrap();
            assert_eq!(p.len(), ROWS, "{name}");
            for (row, (got, want)) in p.iter().zip(&probs).enumerate() {
                let got = got.as_array().unwrap();
                assert_eq!(got.len(), want.len(), "{name}: row {row}");
                for (g, w) in got.iter().zip(want) {
                    let g = g.as_f64().unwrap();
                    assert!(close(g, *w), "{name}: row {row}: {g} vs {w}");
                }
            }
        }
        if let Some((_, binary)) = expected.iter().find(|(n, _)| n == name) {
            let got: Vec<&str> = case["binary"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(got, *binary, "{name}: binary outputs");
        } else {
            let (_, binary) = kserve
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("unexpected case {name}"));
            assert_eq!(case["binary_answer"], *binary, "{name}: binary answer");
            // httpx asks for gzip by default, and gets it.
            assert_eq!(case["content_encoding"], "gzip", "{name}");
        }
    }
    assert_eq!(cases["triton_options"]["id"], "r-1");
    assert_eq!(cases["kserve_default"]["id"], "k-1");

    // Classification: the 3 best classes, best first, with their probabilities.
    let classes = cases["triton_classification"]["classes"]
        .as_array()
        .unwrap();
    assert_eq!(classes.len(), ROWS);
    for (row, strings) in classes.iter().enumerate() {
        let strings = strings.as_array().unwrap();
        assert_eq!(strings.len(), 3, "row {row}");
        let mut sorted = probs[row].clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (k, s) in strings.iter().enumerate() {
            let s = s.as_str().unwrap();
            let (p, class) = s.split_once(':').unwrap_or_else(|| panic!("'{s}'"));
            let (p, class): (f64, usize) = (p.parse().unwrap(), class.parse().unwrap());
            assert!(close(p, probs[row][class]), "row {row}: '{s}'");
            assert!(close(p, sorted[k]), "row {row}: '{s}' is not the best {k}");
        }
        assert!(strings[0]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", labels[row])));
    }
}
