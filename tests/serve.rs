//! `sisa serve` end to end: the real binary on an ephemeral loopback port, real runs trained by
//! the real binary on the bundled digits, and a plain HTTP/1.1 client.

mod serving;

use serde_json::{json, Value};
use serving::http::Client;
use serving::*;
use sisa::ensemble::Ensemble;
use sisa::plan::shard_of_user;
use sisa::run::Run;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const SHARDS: usize = 5;

/// One digits run shared by the tests that never change it (several servers may serve it).
fn shared_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-shared");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the old shared run");
        }
        std::fs::create_dir_all(&dir).expect("create the shared run's folder");
        train_digits(&dir, "digits", SHARDS)
    })
}

/// Users of digits, one per shard for the first `n` shards, in shard order.
fn users_in_distinct_shards(n: usize) -> Vec<(usize, String)> {
    let mut chosen: Vec<(usize, String)> = Vec::new();
    for u in digits_users() {
        let k = shard_of_user(SEED, &u, SHARDS);
        if k < n && !chosen.iter().any(|(s, _)| *s == k) {
            chosen.push((k, u));
        }
    }
    chosen.sort();
    assert_eq!(chosen.len(), n);
    chosen
}

fn infer(c: &mut Client, server: &Server, body: &[u8]) -> Value {
    let r = c
        .post(
            &server.path("/infer"),
            &[("Content-Type", "application/json")],
            body,
        )
        .expect("infer request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The mean of `members`' probabilities in member order, as `aggregate` defines it.
fn mean_of(ensemble: &Ensemble, x: &[f32], n: usize, keep: impl Fn(usize) -> bool) -> Vec<f32> {
    let probs: Vec<Vec<f32>> = ensemble
        .members
        .iter()
        .filter(|m| keep(m.shard))
        .map(|m| m.predict_proba(x, n))
        .collect();
    let mut sum = vec![0f32; n * ensemble.classes];
    for p in &probs {
        for (s, v) in sum.iter_mut().zip(p) {
            *s += v;
        }
    }
    let share = 1.0 / probs.len() as f32;
    sum.iter().map(|s| s * share).collect()
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

// ---------------------------------------------------------------------------------------------
// Hot swap under load.

#[test]
fn hot_swap_under_load_answers_only_from_published_versions() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let (tokens, token) = token_file(dir.path());
    let server = Server::start(
        &run,
        &[
            "--admin-token-file",
            tokens.to_str().unwrap(),
            "--watch-interval-ms",
            "50",
        ],
        &[],
    );
    let rows = digits_rows(16);
    let bodies: Vec<Vec<u8>> = (0..rows.len())
        .map(|i| infer_body(&rows[i..=i], None))
        .collect();
    let users = users_in_distinct_shards(3);

    const CLIENTS: usize = 4;
    const MIN_PER_CLIENT: usize = 500;
    const AFTER_FINAL: usize = 100;
    const MAX_PER_CLIENT: usize = 20_000;
    let answered = Arc::new(AtomicUsize::new(0));
    let final_done: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    // (sent at, status, version, excluded shards)
    type Log = Vec<(Instant, u16, Option<u64>, Vec<u64>)>;
    let logs: Arc<Mutex<Vec<Log>>> = Arc::new(Mutex::new(Vec::new()));

    let published = std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (answered, final_done, logs, bodies) = (&answered, &final_done, &logs, &bodies);
            let mut client = server.client();
            let path = server.path("/infer");
            s.spawn(move || {
                let mut log: Log = Vec::new();
                let mut after_final = 0;
                for i in 0..MAX_PER_CLIENT {
                    let sent = Instant::now();
                    let body = &bodies[(i + c) % bodies.len()];
                    match client.post(&path, &[("Content-Type", "application/json")], body) {
                        Ok(r) if r.status == 200 => {
                            let a = r.json();
                            let excluded = a["parameters"]["excluded_shards"]
                                .as_array()
                                .expect("excluded_shards")
                                .iter()
                                .map(|v| v.as_u64().expect("shard"))
                                .collect();
                            log.push((sent, 200, Some(version_of(&a)), excluded));
                        }
                        Ok(r) => log.push((sent, r.status, None, Vec::new())),
                        Err(_) => log.push((sent, 0, None, Vec::new())),
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    if final_done.get().is_some_and(|t| sent > *t) {
                        after_final += 1;
                    }
                    if i + 1 >= MIN_PER_CLIENT && after_final >= AFTER_FINAL {
                        break;
                    }
                }
                logs.lock().unwrap().push(log);
            });
        }

        // The admin: three requests, each accepted and published while the clients predict.
        let mut admin = server.client();
        let mut published = vec![1u64];
        while answered.load(Ordering::Relaxed) < 200 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for (k, user) in &users {
            let r = unlearn(&mut admin, &server, &token, &[user]);
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            let ack = r.json();
            assert_eq!(ack["excluded_shards"], json!([k]));
            let request = ack["request"].as_u64().unwrap();
            let state = wait_state(&mut admin, &server, &token, request, "done");
            assert_eq!(state["state"], "done", "{state}");
            published.push(state["model_version"].as_str().unwrap().parse().unwrap());
        }
        final_done.set(Instant::now()).unwrap();
        published
    });

    assert_eq!(
        published,
        [1, 2, 3, 4],
        "three requests, three new versions"
    );
    let last = *published.last().unwrap();
    let final_done = *final_done.get().unwrap();
    let logs = logs.lock().unwrap();
    let total: usize = logs.iter().map(Vec::len).sum();
    let mut seen = BTreeSet::new();
    let mut excluded_answers = 0;
    let mut after_final = 0;
    for log in logs.iter() {
        let mut previous = 0;
        for (sent, status, version, excluded) in log {
            assert_eq!(*status, 200, "a non-2xx answer (0 is a transport error)");
            let v = version.expect("a version");
            assert!(published.contains(&v), "version {v} was never published");
            assert!(v >= previous, "a client saw version {v} after {previous}");
            previous = v;
            seen.insert(v);
            if !excluded.is_empty() {
                excluded_answers += 1;
            }
            if *sent > final_done {
                after_final += 1;
                assert_eq!(
                    v, last,
                    "an answer after the final publish came from version {v}"
                );
                assert!(excluded.is_empty());
            }
        }
    }
    println!(
        "{total} answers from {CLIENTS} clients; versions seen {seen:?}; {excluded_answers} with a \
         shard left out; {after_final} after the final publish"
    );
    assert!(total >= 2000, "only {total} answers");
    assert!(seen.contains(&1) && seen.contains(&last));
    assert!(after_final >= CLIENTS * AFTER_FINAL);
}

// ---------------------------------------------------------------------------------------------
// Between acknowledgement and publish.

#[test]
fn between_acknowledgement_and_publish_the_affected_shard_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let (tokens, token) = token_file(dir.path());
    let resume = dir.path().join("resume");
    // The worker stops inside the request, after acknowledging it and before erasing anything.
    let server = Server::start(
        &run,
        &["--admin-token-file", tokens.to_str().unwrap()],
        &[
            ("SISA_FAILPOINT", "pause:unlearn.planned"),
            ("SISA_FAILPOINT_RESUME", resume.to_str().unwrap()),
        ],
    );
    let mut c = server.client();
    let rows = digits_rows(24);
    let x: Vec<f32> = rows.concat();
    let n = rows.len();
    let body = infer_body(&rows, None);
    let vote = infer_body(&rows, Some(json!({"aggregation": "vote"})));

    let v1 = Ensemble::load(&Run::open(&run).unwrap()).unwrap();
    let before = infer(&mut c, &server, &body);
    assert_eq!(version_of(&before), 1);
    assert_eq!(before["parameters"]["excluded_shards"], json!([]));
    assert_eq!(
        as_f32(&output(&before, "probabilities")),
        mean_of(&v1, &x, n, |_| true)
    );

    let (k, user) = users_in_distinct_shards(3).remove(2);
    let r = unlearn(&mut c, &server, &token, &[&user]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["excluded_shards"], json!([k]));
    let request = r.json()["request"].as_u64().unwrap();
    assert!(server.wait_stderr("failpoint unlearn.planned reached", Duration::from_secs(30)));

    // Acknowledged, not published: still version 1, without shard k, exactly the mean of the rest.
    let during = infer(&mut c, &server, &body);
    assert_eq!(version_of(&during), 1);
    assert_eq!(during["parameters"]["excluded_shards"], json!([k]));
    assert_eq!(during["parameters"]["shards_voting"], json!(SHARDS - 1));
    let rest = mean_of(&v1, &x, n, |s| s != k);
    let probs = as_f32(&output(&during, "probabilities"));
    assert_eq!(
        probs, rest,
        "probabilities are the mean of the remaining shards"
    );
    assert_ne!(
        probs,
        mean_of(&v1, &x, n, |_| true),
        "shard {k} really is left out"
    );
    let labels: Vec<f64> = rest
        .chunks(10)
        .map(|p| sisa::ensemble::argmax(p) as f64)
        .collect();
    assert_eq!(output(&during, "label"), labels);
    let voted = infer(&mut c, &server, &vote);
    let expected = v1.predict_excluding(&x, n, sisa::run::Aggregation::Vote, &[k]);
    assert_eq!(as_f32(&output(&voted, "probabilities")), expected.probs);
    assert_eq!(
        wait_state(&mut c, &server, &token, request, "running")["state"],
        "running"
    );
    // The run on disk still publishes version 1: nothing was erased yet.
    assert_eq!(Run::open(&run).unwrap().manifest.version, 1);

    std::fs::write(&resume, b"").unwrap();
    let done = wait_state(&mut c, &server, &token, request, "done");
    assert_eq!(done["model_version"], "2");
    let after = infer(&mut c, &server, &body);
    assert_eq!(version_of(&after), 2);
    assert_eq!(after["parameters"]["excluded_shards"], json!([]));
    let v2 = Ensemble::load(&Run::open(&run).unwrap()).unwrap();
    assert_eq!(
        as_f32(&output(&after, "probabilities")),
        mean_of(&v2, &x, n, |_| true)
    );
}

#[test]
fn deletions_that_arrive_while_another_retrains_are_forgotten_together() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let (tokens, token) = token_file(dir.path());
    let resume = dir.path().join("resume");
    let server = Server::start(
        &run,
        &["--admin-token-file", tokens.to_str().unwrap()],
        &[
            ("SISA_FAILPOINT", "pause:unlearn.planned"),
            ("SISA_FAILPOINT_RESUME", resume.to_str().unwrap()),
        ],
    );
    let mut c = server.client();
    let users = users_in_distinct_shards(3);
    let r = unlearn(&mut c, &server, &token, &[&users[0].1]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert!(server.wait_stderr("failpoint unlearn.planned reached", Duration::from_secs(30)));
    // Two more deletions while the first retrains: both wait in the queue.
    let acks: Vec<Value> = std::thread::scope(|scope| {
        let waiting: Vec<_> = users[1..]
            .iter()
            .map(|(_, u)| {
                let (server, token) = (&server, &token);
                scope.spawn(move || {
                    let mut c = server.client();
                    let r = unlearn(&mut c, server, token, &[u]);
                    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
                    r.json()
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while server
            .stderr()
            .matches("queued for the unlearn worker")
            .count()
            < 3
        {
            assert!(Instant::now() < deadline, "{}", server.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(&resume, b"").unwrap();
        waiting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // One request for both, which leaves out both users' shards until it is served.
    assert_eq!(acks[0]["request"], 2);
    assert_eq!(acks[1]["request"], 2);
    let both = json!([users[1].0.min(users[2].0), users[1].0.max(users[2].0)]);
    assert_eq!(acks[0]["excluded_shards"], both);
    wait_state(&mut c, &server, &token, 2, "done");
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(run.join("receipts/000002.json")).unwrap()).unwrap();
    assert_eq!(receipt["user_keys"].as_array().unwrap().len(), 2);
    let retrained: Vec<u64> = receipt["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stages_retrained"] != 0)
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(json!(retrained), both, "each touched shard retrained once");
    let ledger = sisa::unlearn::Ledger::open(&run.join("ledger.jsonl")).unwrap();
    assert_eq!(ledger.requests(), vec![1, 2]);
    assert_eq!(
        version_of(&infer(&mut c, &server, &infer_body(&digits_rows(2), None))),
        3
    );
}

#[test]
fn when_every_shard_is_left_out_answers_wait_with_503_until_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", 1);
    let (tokens, token) = token_file(dir.path());
    let resume = dir.path().join("resume");
    let server = Server::start(
        &run,
        &["--admin-token-file", tokens.to_str().unwrap()],
        &[
            ("SISA_FAILPOINT", "pause:unlearn.planned"),
            ("SISA_FAILPOINT_RESUME", resume.to_str().unwrap()),
        ],
    );
    let mut c = server.client();
    let body = infer_body(&digits_rows(2), None);
    let r = unlearn(&mut c, &server, &token, &["u00219"]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["excluded_shards"], json!([0]));
    // The one shard saw the user: no answer until the retrained version is served.
    let r = c.post(&server.path("/infer"), &[], &body).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("every shard with rows"));
    std::fs::write(&resume, b"").unwrap();
    wait_state(&mut c, &server, &token, 1, "done");
    assert_eq!(version_of(&infer(&mut c, &server, &body)), 2);
}

// ---------------------------------------------------------------------------------------------
// Bad input: 4xx naming the problem, serving state undisturbed.

/// Send `body` to the shared run's server started with `flags`; expect `status` and an error
/// naming `needle`; then check the server still answers from version 1.
fn refused(flags: &[&str], path: Option<&str>, body: &[u8], status: u16, needle: &str) {
    let server = Server::start(shared_run(), flags, &[]);
    let mut c = server.client();
    let path = path.map_or_else(|| server.path("/infer"), str::to_string);
    let r = c
        .post(&path, &[("Content-Type", "application/json")], body)
        .unwrap();
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let error = r.json()["error"]
        .as_str()
        .expect("an error message")
        .to_string();
    assert!(error.contains(needle), "'{error}' does not name '{needle}'");
    let good = infer(
        &mut server.client(),
        &server,
        &infer_body(&digits_rows(2), None),
    );
    assert_eq!(version_of(&good), 1);
    assert_eq!(c.get("/v2/health/ready", &[]).unwrap().status, 200);
}

fn one_row(data: &str, shape: &str, datatype: &str) -> Vec<u8> {
    format!(
        r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
    )
    .into_bytes()
}

/// The first held-out row as JSON text, with element `i` replaced by `s` if asked, and only
/// the first `len` features.
fn row_text(replace: Option<(usize, &str)>, len: usize) -> String {
    let mut v: Vec<String> = digits_rows(1)[0].iter().map(|x| x.to_string()).collect();
    if let Some((i, s)) = replace {
        v[i] = s.to_string();
    }
    format!("[{}]", v[..len].join(","))
}

#[test]
fn malformed_json_is_400() {
    refused(
        &[],
        None,
        br#"{"inputs": [{"name": "input", "#,
        400,
        "malformed JSON",
    );
}

#[test]
fn wrong_datatype_is_400() {
    refused(
        &[],
        None,
        &one_row(&row_text(None, 64), "[1,64]", "INT64"),
        400,
        "datatype 'INT64'",
    );
}

#[test]
fn shape_that_disagrees_with_data_is_400() {
    refused(
        &[],
        None,
        &one_row(&row_text(None, 64), "[2,64]", "FP32"),
        400,
        "shape [2, 64] holds 128 values, but data holds 64",
    );
}

#[test]
fn wrong_feature_count_is_400() {
    let short = row_text(None, 63);
    refused(
        &[],
        None,
        &one_row(&short, "[1,63]", "FP32"),
        400,
        "rows have 63 features, but this model takes 64",
    );
}

#[test]
fn nan_is_400() {
    refused(
        &[],
        None,
        &one_row(&row_text(Some((5, "NaN")), 64), "[1,64]", "FP32"),
        400,
        "NaN",
    );
}

#[test]
fn infinity_is_400() {
    refused(
        &[],
        None,
        &one_row(&row_text(Some((5, "Infinity")), 64), "[1,64]", "FP32"),
        400,
        "Infinity",
    );
    // Finite in JSON, infinite as FP32.
    refused(
        &[],
        None,
        &one_row(&row_text(Some((5, "1e39")), 64), "[1,64]", "FP32"),
        400,
        "row 0, feature 5 ('p0_5') is infinite",
    );
}

#[test]
fn empty_batch_is_400() {
    refused(
        &[],
        None,
        &one_row("[]", "[0,64]", "FP32"),
        400,
        "the batch is empty",
    );
}

#[test]
fn more_rows_than_max_batch_is_400() {
    let body = infer_body(&digits_rows(5), None);
    refused(
        &["--max-batch", "4"],
        None,
        &body,
        400,
        "5 rows exceed this server's limit of 4",
    );
}

#[test]
fn unknown_model_is_404() {
    let body = infer_body(&digits_rows(1), None);
    refused(
        &[],
        Some("/v2/models/nope/infer"),
        &body,
        404,
        "unknown model 'nope'",
    );
}

#[test]
fn body_over_the_limit_is_413() {
    let body = infer_body(&digits_rows(64), None);
    assert!(body.len() > 4096);
    refused(
        &["--max-body-bytes", "4096"],
        None,
        &body,
        413,
        "larger than 4096 bytes",
    );
}

#[test]
fn labels_only_answers_labels_and_refuses_probabilities() {
    let server = Server::start(shared_run(), &["--labels-only"], &[]);
    let mut c = server.client();
    let rows = digits_rows(3);
    let a = infer(&mut c, &server, &infer_body(&rows, None));
    let names: Vec<&str> = a["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["label"]);
    for p in [json!({"output": "probabilities"}), json!({"top_k": 2})] {
        let r = c
            .post(&server.path("/infer"), &[], &infer_body(&rows, Some(p)))
            .unwrap();
        assert_eq!(r.status, 403);
        assert!(r.json()["error"].as_str().unwrap().contains("labels only"));
    }
    let meta = c.get(&server.path(""), &[]).unwrap().json();
    assert_eq!(meta["outputs"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Protocol surface.

#[test]
fn metadata_health_and_parameters_follow_the_protocol() {
    let run = shared_run();
    let server = Server::start(run, &["--name", "digits-v2"], &[]);
    assert_eq!(server.model, "digits-v2");
    let mut c = server.client();
    assert_eq!(c.get("/v2/health/live", &[]).unwrap().status, 200);
    assert_eq!(c.get("/v2/health/ready", &[]).unwrap().status, 200);
    let meta = c.get("/v2", &[]).unwrap().json();
    assert_eq!(meta["name"], "sisa");
    assert_eq!(
        meta["extensions"],
        json!(["binary_tensor_data", "classification"])
    );
    let model = c.get(&server.path(""), &[]).unwrap().json();
    assert_eq!(model["name"], "digits-v2");
    assert_eq!(model["versions"], json!(["1"]));
    assert_eq!(model["platform"], "sisa");
    assert_eq!(
        model["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
    );
    assert_eq!(
        model["outputs"][0],
        json!({"name": "label", "datatype": "INT64", "shape": [-1]})
    );
    assert_eq!(
        model["outputs"][1],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]})
    );
    let ready = c.get(&server.path("/ready"), &[]).unwrap();
    assert_eq!(
        (ready.status, ready.json()["ready"].clone()),
        (200, json!(true))
    );
    assert_eq!(
        c.get(&server.path("/versions/1/ready"), &[])
            .unwrap()
            .status,
        200
    );
    assert_eq!(c.get(&server.path("/versions/7"), &[]).unwrap().status, 404);
    assert_eq!(c.get("/v2/models/digits", &[]).unwrap().status, 404);
    assert_eq!(c.get("/v2/nothing/here", &[]).unwrap().status, 404);

    // Answers equal the library's prediction; parameters choose aggregation and outputs.
    let rows = digits_rows(7);
    let x: Vec<f32> = rows.concat();
    let ensemble = Ensemble::load(&Run::open(run).unwrap()).unwrap();
    let mut body: Value = serde_json::from_slice(&infer_body(&rows, None)).unwrap();
    body["id"] = json!("req-7");
    body["inputs"][0]["data"] = json!(x); // flat data
    let a = infer(&mut c, &server, &serde_json::to_vec(&body).unwrap());
    assert_eq!(a["id"], "req-7");
    assert_eq!(a["model_name"], "digits-v2");
    assert_eq!(a["outputs"][0]["shape"], json!([7]));
    assert_eq!(a["outputs"][1]["shape"], json!([7, 10]));
    let mean = ensemble.predict(&x, 7, sisa::run::Aggregation::Mean);
    assert_eq!(as_f32(&output(&a, "probabilities")), mean.probs);
    assert_eq!(
        output(&a, "label"),
        mean.labels.iter().map(|&l| l as f64).collect::<Vec<_>>()
    );
    let v = infer(
        &mut c,
        &server,
        &infer_body(&rows, Some(json!({"aggregation": "vote", "top_k": 3}))),
    );
    let vote = ensemble.predict(&x, 7, sisa::run::Aggregation::Vote);
    assert_eq!(v["parameters"]["aggregation"], "vote");
    assert_eq!(
        output(&v, "label"),
        vote.labels.iter().map(|&l| l as f64).collect::<Vec<_>>()
    );
    let top = output(&v, "top_k_labels");
    assert_eq!(top.len(), 21);
    for r in 0..7 {
        assert_eq!(
            top[r * 3],
            vote.labels[r] as f64,
            "the best of top_k is the label"
        );
    }
    let l = infer(
        &mut c,
        &server,
        &infer_body(&rows, Some(json!({"output": "label"}))),
    );
    assert_eq!(l["outputs"].as_array().unwrap().len(), 1);
    let mut only: Value = serde_json::from_slice(&infer_body(&rows, None)).unwrap();
    only["outputs"] = json!([{"name": "probabilities"}]);
    let o = infer(&mut c, &server, &serde_json::to_vec(&only).unwrap());
    assert_eq!(o["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(o["outputs"][0]["name"], "probabilities");
    let at = c
        .post(
            &server.path("/versions/1/infer"),
            &[],
            &infer_body(&rows, None),
        )
        .unwrap();
    assert_eq!(at.status, 200);
    // Without --admin-token-file the unlearn endpoints do not exist.
    let r = c
        .post(&server.path("/unlearn"), &[], br#"{"users": ["u00219"]}"#)
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(c.get(&server.path("/unlearn/1"), &[]).unwrap().status, 404);
}

// ---------------------------------------------------------------------------------------------
// Deletion over the wire: authentication, validation, bounds.

#[test]
fn unlearn_needs_a_valid_token_and_a_known_user_and_writes_nothing_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let (tokens, token) = token_file(dir.path());
    let server = Server::start(
        &run,
        &[
            "--admin-token-file",
            tokens.to_str().unwrap(),
            "--admin-rate",
            "4",
        ],
        &[],
    );
    let mut c = server.client();
    let ledger = run.join("ledger.jsonl");
    let body = br#"{"users": ["u00219"]}"#;

    let r = c.post(&server.path("/unlearn"), &[], body).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let wrong = format!("Bearer {token}x");
    let r = c
        .post(&server.path("/unlearn"), &[("Authorization", &wrong)], body)
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("not valid"));
    let r = c.get(&server.path("/unlearn/1"), &[]).unwrap();
    assert_eq!(r.status, 401);

    let r = unlearn(&mut c, &server, &token, &["nobody-at-all"]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown user 'nobody-at-all'"));
    let auth = format!("Bearer {token}");
    let r = c
        .post(
            &server.path("/unlearn"),
            &[("Authorization", &auth)],
            br#"{"user": "u00219"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown field `user`"));
    assert!(!ledger.exists(), "nothing was written for refused requests");
    let r = c
        .get(&server.path("/unlearn/1"), &[("Authorization", &auth)])
        .unwrap();
    assert_eq!(r.status, 404);

    // A good request gets number 1: the refusals used no number.
    let r = unlearn(&mut c, &server, &token, &["u00219"]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["request"], 1);
    assert_eq!(r.header("location").unwrap(), server.path("/unlearn/1"));
    assert_eq!(
        wait_state(&mut c, &server, &token, 1, "done")["state"],
        "done"
    );
    let r = unlearn(&mut c, &server, &token, &["u00219"]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("already forgotten by request 1"));

    // Four submissions a minute for this token; the fifth waits.
    let r = unlearn(&mut c, &server, &token, &["nobody"]);
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    let o = std::process::Command::new(BIN)
        .args(["ledger", "verify", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 request(s) (1 done)"));
}

// ---------------------------------------------------------------------------------------------
// Versions published by other processes, and versions that cannot be served.

#[test]
fn a_version_that_fails_to_load_keeps_the_old_one_and_a_cli_publish_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let server = Server::start(&run, &["--watch-interval-ms", "20"], &[]);
    let mut c = server.client();
    let body = infer_body(&digits_rows(4), None);

    let current = run.join("CURRENT");
    let good = std::fs::read(&current).unwrap();
    let bogus = run.join("CURRENT.bogus");
    std::fs::write(&bogus, "manifest-000002.json 00\n").unwrap();
    std::fs::rename(&bogus, &current).unwrap();
    assert!(
        server.wait_stderr("keeping version 1", Duration::from_secs(10)),
        "{}",
        server.stderr()
    );
    assert_eq!(version_of(&infer(&mut c, &server, &body)), 1);
    std::fs::write(&bogus, &good).unwrap();
    std::fs::rename(&bogus, &current).unwrap();

    let o = std::process::Command::new(BIN)
        .args(["unlearn", "-q", "--user", "u00219", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(server.wait_stderr("serving version 2 (was 1)", Duration::from_secs(10)));
    assert_eq!(version_of(&infer(&mut c, &server, &body)), 2);
}

#[test]
fn start_up_completes_an_interrupted_request_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let o = std::process::Command::new(BIN)
        .args(["unlearn", "-q", "--user", "u00219", "--run"])
        .arg(&run)
        .env("SISA_FAILPOINT", "unlearn.erased")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the failpoint stops the request");
    assert_eq!(Run::open(&run).unwrap().manifest.version, 1);
    let mut server = Server::start(&run, &[], &[]);
    assert!(server.wait_stderr(
        "completed interrupted or rolled-back requests [1]",
        Duration::from_secs(10)
    ));
    let a = infer(
        &mut server.client(),
        &server,
        &infer_body(&digits_rows(2), None),
    );
    assert_eq!(version_of(&a), 2);
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status}"
    );
}

#[test]
fn a_directory_that_is_not_a_run_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let e = Server::spawn(dir.path(), &[], &[]).err().expect("it exits");
    assert!(e.contains("not a sisa run (no run.json)"), "{e}");
    let (tokens, _) = token_file(dir.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Server::spawn(
            shared_run(),
            &["--admin-token-file", tokens.to_str().unwrap()],
            &[],
        )
        .err()
        .expect("it exits");
        assert!(e.contains("chmod 600"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The README's curl examples, run as written.

/// The shell lines of the README's "Serving" section that call curl.
fn readme_curl_lines() -> Vec<String> {
    let section = readme_serving_section();
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if in_sh && line.starts_with("curl ") {
            lines.push(line.to_string());
        }
    }
    lines
}

/// The README's first Python example (the Serving section's first `python` block).
fn readme_python() -> String {
    readme_serving_python()
        .into_iter()
        .next()
        .expect("a Python example")
}

/// Split a curl line the way sh would (single quotes literal; in double quotes only
/// `$(cat runs/admin.token)` is expanded), then read method, URL, headers and body from it.
fn parse_curl(line: &str, token: &str) -> (String, String, Vec<(String, String)>, Vec<u8>) {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                quoted = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                quoted = true;
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    inner.push(c);
                }
                assert!(
                    !inner.contains('$') || inner.contains("$(cat runs/admin.token)"),
                    "{inner}"
                );
                word.push_str(&inner.replace("$(cat runs/admin.token)", token));
            }
            ' ' if !word.is_empty() || quoted => {
                words.push(std::mem::take(&mut word));
                quoted = false;
            }
            ' ' => {}
            c => word.push(c),
        }
    }
    if !word.is_empty() || quoted {
        words.push(word);
    }
    let (mut method, mut url, mut headers, mut body) = (None, None, Vec::new(), None);
    let mut it = words.into_iter().skip(1);
    while let Some(w) = it.next() {
        match w.as_str() {
            "-s" | "-sS" => {}
            "-X" => method = it.next(),
            "-H" => {
                let h = it.next().unwrap();
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            "-d" | "--data" => body = it.next(),
            u if u.starts_with("http://") => url = Some(u.to_string()),
            other => panic!("the README's curl line uses '{other}', which this test cannot read"),
        }
    }
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    let url = url.expect("a URL");
    let path = url
        .strip_prefix("http://127.0.0.1:8080")
        .expect("the README's address")
        .to_string();
    (method, path, headers, body.unwrap_or_default().into_bytes())
}

fn check_readme_answer(path: &str, status: u16, body: &Value) {
    assert!((200..300).contains(&status), "{path}: {status} {body}");
    if path.ends_with("/infer") {
        assert_eq!(body["model_version"], "1", "{body}");
        assert_eq!(body["outputs"][0]["name"], "label");
    } else if path.ends_with("/unlearn") {
        assert_eq!((status, body["request"].clone()), (202, json!(1)), "{body}");
    } else if path.contains("/unlearn/") {
        let s = body["state"].as_str().unwrap();
        assert!(
            ["accepted", "running", "published", "done"].contains(&s),
            "{body}"
        );
    }
}

#[test]
fn the_readme_examples_work_against_the_server() {
    let lines = readme_curl_lines();
    assert!(
        lines.iter().any(|l| l.contains("/infer")),
        "an infer example"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/unlearn'") || l.contains("/unlearn ")),
        "an unlearn example"
    );

    // The README trains runs/digits and keeps the token in runs/admin.token beside it.
    let start = |dir: &Path| {
        let run = train_digits(&dir.join("runs"), "digits", SHARDS);
        let (tokens, token) = token_file(&dir.join("runs"));
        let server = Server::start(&run, &["--admin-token-file", tokens.to_str().unwrap()], &[]);
        (server, token)
    };

    // The same requests through the Rust client, so the test cannot pass without curl.
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path());
    let mut c = server.client();
    for line in &lines {
        let (method, path, headers, body) = parse_curl(line, &token);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = c.request(&method, &path, &headers, &body).unwrap();
        check_readme_answer(&path, r.status, &r.json());
    }
    wait_state(&mut c, &server, &token, 1, "done");

    // The Python example, if python3 with requests is here.
    let python = std::process::Command::new("python3")
        .args(["-c", "import requests"])
        .output();
    if python.is_ok_and(|o| o.status.success()) {
        let script = readme_python().replace("127.0.0.1:8080", &server.addr.to_string());
        let o = std::process::Command::new("python3")
            .args(["-c", &script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(
            out.starts_with("2 "),
            "the Python client sees version 2: {out}"
        );
    } else {
        println!(
            "note: python3 with requests is not here; the README's Python example did not run"
        );
    }

    // The exact lines, run by sh and curl, in the folder that holds runs/admin.token.
    let curl = std::process::Command::new("curl").arg("--version").output();
    if !curl.is_ok_and(|o| o.status.success()) {
        println!(
            "note: curl is not installed; the README's lines ran through the Rust client only"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, token) = start(dir.path());
    for line in &lines {
        let (_, path, _, _) = parse_curl(line, &token);
        let command = line.replace("127.0.0.1:8080", &server.addr.to_string());
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{command} -w '\\n%{{http_code}}'"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8(o.stdout).unwrap();
        let (body, status) = out.rsplit_once('\n').unwrap();
        let body: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{line}: {e}: {body}"));
        check_readme_answer(&path, status.parse().unwrap(), &body);
    }
}
