//! `sisa serve --grpc-addr` end to end: the real binary on ephemeral loopback ports, real runs
//! trained by the real binary on the bundled digits, a tonic client generated from the vendored
//! proto, and the Python clients `tritonclient.grpc` and KServe's `InferenceGRPCClient`.
//! Every answer is compared with `sisa predict --json` on the same rows and with the REST
//! answer.

#[path = "serving/grpc.rs"]
mod grpc_client;
mod serving;

use grpc_client::proto::infer_parameter::ParameterChoice;
use grpc_client::proto::model_infer_request::InferRequestedOutputTensor;
use grpc_client::proto::*;
use grpc_client::*;
use serde_json::{json, Value};
use serving::http::Client as RestClient;
use serving::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tonic::Code;

const SHARDS: usize = 5;

/// One digits run shared by the tests that never change it.
fn shared_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-shared");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the old shared run");
        }
        std::fs::create_dir_all(&dir).expect("create the shared run's folder");
        train_digits(&dir, "digits", SHARDS)
    })
}

/// A runtime for the client; its own threads keep the connections going while a test blocks.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `sisa serve --grpc-addr 127.0.0.1:0 ARGS` on `run`, ready; and its gRPC address.
fn start(run: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut all = vec!["--grpc-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Server::start(run, &all, envs);
    let addr = grpc_addr(&server);
    (server, addr)
}

/// `sisa predict --json` on the first `n` held-out digits rows (the rows of
/// [`digits_rows`]): labels and probabilities, row-major.
fn predict(run: &Path, n: usize, aggregate: Option<&str>) -> (Vec<i64>, Vec<f32>) {
    let test = std::fs::read_to_string(repo("datasets/digits/test.csv")).expect("test.csv");
    let csv: String = test.lines().take(n + 1).map(|l| format!("{l}\n")).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.csv");
    std::fs::write(&path, csv).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["predict", "--json", "--run"])
        .arg(run)
        .arg("--data")
        .arg(&path);
    if let Some(a) = aggregate {
        cmd.args(["--aggregate", a]);
    }
    let o = cmd.output().expect("run sisa predict");
    assert!(
        o.status.success(),
        "sisa predict failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("predict --json prints JSON");
    let predictions = v["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), n);
    let labels = predictions
        .iter()
        .map(|p| p["label"].as_i64().expect("label"))
        .collect();
    let probs = predictions
        .iter()
        .flat_map(|p| {
            p["probabilities"]
                .as_array()
                .expect("probabilities")
                .clone()
        })
        .map(|x| x.as_f64().expect("a probability") as f32)
        .collect();
    (labels, probs)
}

/// The REST answer for `rows` with request `parameters`.
fn rest_infer(
    c: &mut RestClient,
    server: &Server,
    rows: &[Vec<f32>],
    parameters: Option<Value>,
) -> Value {
    let r = c
        .post(
            &server.path("/infer"),
            &[("Content-Type", "application/json")],
            &infer_body(rows, parameters),
        )
        .expect("REST infer");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn as_i64(v: &[f64]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

fn string_parameter(a: &ModelInferResponse, name: &str) -> String {
    match parameter(a, name) {
        ParameterChoice::StringParam(s) => s,
        other => panic!("parameter '{name}' is {other:?}, not a string"),
    }
}

fn int_parameter(a: &ModelInferResponse, name: &str) -> i64 {
    match parameter(a, name) {
        ParameterChoice::Int64Param(i) => i,
        other => panic!("parameter '{name}' is {other:?}, not an int64"),
    }
}

fn output_names(a: &ModelInferResponse) -> Vec<&str> {
    a.outputs.iter().map(|o| o.name.as_str()).collect()
}

fn ready_request(name: &str, version: &str) -> ModelReadyRequest {
    ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    }
}

fn metadata_request(name: &str, version: &str) -> ModelMetadataRequest {
    ModelMetadataRequest {
        name: name.into(),
        version: version.into(),
    }
}

/// Expect `status` to carry `code` and a message that contains `needle`.
fn assert_status(status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{needle}: {status:?}");
    assert!(
        status.message().contains(needle),
        "the message '{}' does not name '{needle}'",
        status.message()
    );
}

// ---------------------------------------------------------------------------------------------
// Every call, and answers equal to `sisa predict` and to REST.

#[test]
fn every_call_answers_as_rest_and_sisa_predict_do() {
    let run = shared_run();
    let rows = digits_rows(7);
    let (mean_labels, mean_probs) = predict(run, 7, None);
    let (vote_labels, _) = predict(run, 7, Some("vote"));
    let (server, addr) = start(run, &[], &[]);
    let model = server.model.clone();
    let mut rest = server.client();
    let rest_mean = rest_infer(&mut rest, &server, &rows, None);
    assert_eq!(as_f32(&output(&rest_mean, "probabilities")), mean_probs);
    let rest_top = rest_infer(
        &mut rest,
        &server,
        &rows,
        Some(json!({"aggregation": "vote", "top_k": 3})),
    );

    runtime().block_on(async {
        let mut c = connect(addr).await;
        let live = c.server_live(ServerLiveRequest {}).await.unwrap();
        assert!(live.into_inner().live);
        let ready = c.server_ready(ServerReadyRequest {}).await.unwrap();
        assert!(ready.into_inner().ready);
        let meta = c.server_metadata(ServerMetadataRequest {}).await.unwrap();
        let meta = meta.into_inner();
        assert_eq!(meta.name, "sisa");
        assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
        assert!(meta.extensions.is_empty(), "{meta:?}");

        for version in ["", "1"] {
            let m = c.model_metadata(metadata_request(&model, version)).await;
            let m = m.unwrap().into_inner();
            assert_eq!(m.name, model);
            assert_eq!(m.versions, ["1"]);
            assert_eq!(m.platform, "sisa");
            let tensors = |t: &[model_metadata_response::TensorMetadata]| {
                t.iter()
                    .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                tensors(&m.inputs),
                [("input".to_string(), "FP32".to_string(), vec![-1, 64])]
            );
            assert_eq!(
                tensors(&m.outputs),
                [
                    ("label".to_string(), "INT64".to_string(), vec![-1]),
                    ("probabilities".into(), "FP32".into(), vec![-1, 10]),
                    ("top_k_labels".into(), "INT64".into(), vec![-1, -1]),
                    ("top_k_probabilities".into(), "FP32".into(), vec![-1, -1]),
                ]
            );
            let r = c.model_ready(ready_request(&model, version)).await;
            assert!(r.unwrap().into_inner().ready);
        }
        let e = c.model_ready(ready_request(&model, "7")).await.unwrap_err();
        assert_status(
            &e,
            Code::NotFound,
            "version '7' of model 'digits' is not served",
        );
        let e = c.model_ready(ready_request("nope", "")).await.unwrap_err();
        assert_status(&e, Code::NotFound, "unknown model 'nope'");
        let e = c.model_metadata(metadata_request(&model, "7")).await;
        assert_status(&e.unwrap_err(), Code::NotFound, "version '7'");
        let e = c.model_metadata(metadata_request("nope", "")).await;
        assert_status(&e.unwrap_err(), Code::NotFound, "unknown model 'nope'");

        // The same answer from fp32_contents and from raw_input_contents: sisa predict's, and
        // REST's, bit for bit.
        for raw in [false, true] {
            let mut req = infer_request(&model, &rows, raw);
            req.id = "req-7".into();
            let a = c.model_infer(req).await.unwrap().into_inner();
            assert_eq!(
                (
                    a.model_name.as_str(),
                    a.model_version.as_str(),
                    a.id.as_str()
                ),
                (model.as_str(), "1", "req-7")
            );
            assert_eq!(output_names(&a), ["label", "probabilities"]);
            let (labels, shape) = int64_output(&a, "label");
            assert_eq!(
                (labels.as_slice(), shape),
                (mean_labels.as_slice(), vec![7])
            );
            assert_eq!(labels, as_i64(&output(&rest_mean, "label")));
            let (probs, shape) = fp32_output(&a, "probabilities");
            assert_eq!(shape, [7, 10]);
            assert_eq!(probs, mean_probs, "raw input: {raw}");
            assert_eq!(string_parameter(&a, "aggregation"), "mean");
            assert_eq!(string_parameter(&a, "excluded_shards"), "[]");
            assert_eq!(int_parameter(&a, "shards_voting"), SHARDS as i64);
        }

        // Parameters choose the aggregation and the outputs, as over REST.
        let mut req = infer_request(&model, &rows, true);
        req.parameters = HashMap::from([
            ("aggregation".to_string(), string("vote")),
            ("top_k".to_string(), int(3)),
        ]);
        let a = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(
            output_names(&a),
            ["label", "top_k_labels", "top_k_probabilities"]
        );
        assert_eq!(string_parameter(&a, "aggregation"), "vote");
        assert_eq!(int64_output(&a, "label").0, vote_labels);
        let (top, shape) = int64_output(&a, "top_k_labels");
        assert_eq!(shape, [7, 3]);
        assert_eq!(top, as_i64(&output(&rest_top, "top_k_labels")));
        for r in 0..7 {
            assert_eq!(top[r * 3], vote_labels[r], "the best of top_k is the label");
        }
        let (top_p, shape) = fp32_output(&a, "top_k_probabilities");
        assert_eq!(shape, [7, 3]);
        assert_eq!(top_p, as_f32(&output(&rest_top, "top_k_probabilities")));

        let mut req = infer_request(&model, &rows, false);
        req.parameters = HashMap::from([("output".to_string(), string("label"))]);
        let a = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(output_names(&a), ["label"]);
        assert_eq!(int64_output(&a, "label").0, mean_labels);

        // Requested outputs keep only the tensors they name.
        let mut req = infer_request(&model, &rows, true);
        req.outputs = vec![InferRequestedOutputTensor {
            name: "probabilities".into(),
            ..Default::default()
        }];
        let a = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(output_names(&a), ["probabilities"]);
        assert_eq!(fp32_output(&a, "probabilities").0, mean_probs);

        // The served version by name; another version is not served.
        let mut req = infer_request(&model, &rows, true);
        req.model_version = "1".into();
        assert_eq!(
            c.model_infer(req).await.unwrap().into_inner().model_version,
            "1"
        );
        let mut req = infer_request(&model, &rows, true);
        req.model_version = "2".into();
        let e = c.model_infer(req).await.unwrap_err();
        assert_status(
            &e,
            Code::NotFound,
            "version '2' of model 'digits' is not served; version 1 is",
        );

        // Parameters the clients may send that change nothing here are accepted.
        let mut req = infer_request(&model, &rows, true);
        req.parameters = HashMap::from([
            ("binary_data_output".to_string(), boolean(true)),
            ("priority".to_string(), int(1)),
            ("timeout".to_string(), int(1_000_000)),
        ]);
        req.inputs[0].parameters = HashMap::from([("binary_data_size".to_string(), int(1792))]);
        req.outputs = vec![InferRequestedOutputTensor {
            name: "label".into(),
            parameters: HashMap::from([("binary_data".to_string(), boolean(true))]),
        }];
        let a = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(int64_output(&a, "label").0, mean_labels);

        // A call the protocol does not define (Triton's ModelConfig) is named in its refusal.
        let e = call_by_name(addr, "ModelConfig").await;
        assert_status(
            &e,
            Code::Unimplemented,
            "/inference.GRPCInferenceService/ModelConfig is not served: this server serves \
             inference.GRPCInferenceService's calls ServerLive, ServerReady",
        );

        // The model repository is not served.
        let e = c
            .repository_model_load(RepositoryModelLoadRequest {
                model_name: model.clone(),
            })
            .await
            .unwrap_err();
        assert_status(&e, Code::Unimplemented, "RepositoryModelLoad is not served");
        let e = c
            .repository_model_unload(RepositoryModelUnloadRequest {
                model_name: model.clone(),
            })
            .await
            .unwrap_err();
        assert_status(
            &e,
            Code::Unimplemented,
            "RepositoryModelUnload is not served",
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Bad requests: the REST message, the matching gRPC code, the server undisturbed.

#[test]
fn each_bad_request_gets_its_code_and_a_message_naming_the_problem() {
    let run = shared_run();
    let (server, addr) = start(run, &["--max-batch", "4", "--max-body-bytes", "4096"], &[]);
    let model = server.model.clone();
    let rows = digits_rows(2);
    let (labels, _) = predict(run, 2, None);
    let good = |raw: bool| infer_request(&model, &rows, raw);
    let with_parameter = |key: &str, value: InferParameter| {
        let mut r = good(true);
        r.parameters.insert(key.into(), value);
        r
    };
    let with_values = |shape: Vec<i64>, values: Vec<f32>| {
        let mut r = good(false);
        r.inputs[0].shape = shape;
        r.inputs[0].contents = Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        });
        r
    };
    let mut cases: Vec<(&str, ModelInferRequest, Code, &str)> = Vec::new();
    let mut r = good(true);
    r.model_name = "nope".into();
    cases.push((
        "model",
        r,
        Code::NotFound,
        "unknown model 'nope': this server serves 'digits'",
    ));
    let mut r = good(true);
    r.model_version = "9".into();
    cases.push((
        "version",
        r,
        Code::NotFound,
        "version '9' of model 'digits' is not served",
    ));
    let mut r = good(false);
    r.inputs[0].datatype = "INT32".into();
    cases.push((
        "datatype",
        r,
        Code::InvalidArgument,
        "input 'input' has datatype 'INT32': this model takes FP32",
    ));
    let short: Vec<Vec<f32>> = rows.iter().map(|r| r[..63].to_vec()).collect();
    cases.push((
        "features",
        infer_request(&model, &short, true),
        Code::InvalidArgument,
        "input 'input': rows have 63 features, but this model takes 64",
    ));
    cases.push((
        "shape against data",
        with_values(vec![3, 64], rows.concat()),
        Code::InvalidArgument,
        "input 'input': shape [3, 64] holds 192 values, but data holds 128",
    ));
    let mut r = good(true);
    r.raw_input_contents[0].pop();
    cases.push((
        "raw byte count",
        r,
        Code::InvalidArgument,
        "input 'input': raw_input_contents holds 511 bytes, but shape [2, 64] of FP32 takes 512",
    ));
    let mut nan = rows.clone();
    nan[1][5] = f32::NAN;
    cases.push((
        "NaN",
        infer_request(&model, &nan, true),
        Code::InvalidArgument,
        "input 'input': row 1, feature 5 ('p0_5') is NaN: features must be finite",
    ));
    let mut inf = rows.clone();
    inf[0][2] = f32::INFINITY;
    cases.push((
        "infinity",
        infer_request(&model, &inf, false),
        Code::InvalidArgument,
        "row 0, feature 2 ('p0_2') is infinite",
    ));
    cases.push((
        "empty batch",
        with_values(vec![0, 64], Vec::new()),
        Code::InvalidArgument,
        "input 'input': the batch is empty (shape [0, 64]); send at least one row",
    ));
    cases.push((
        "max batch",
        infer_request(&model, &digits_rows(5), true),
        Code::InvalidArgument,
        "input 'input': 5 rows exceed this server's limit of 4 per request (--max-batch)",
    ));
    cases.push((
        "flat shape",
        with_values(vec![128], rows.concat()),
        Code::InvalidArgument,
        "input 'input' has shape [128]: expected [rows, features] = [n, 64]",
    ));
    let mut r = good(false);
    r.inputs.push(r.inputs[0].clone());
    cases.push((
        "two inputs",
        r,
        Code::InvalidArgument,
        "expected exactly one input tensor named 'input', got 2",
    ));
    let mut r = good(true);
    r.inputs[0].name = "x".into();
    cases.push((
        "input name",
        r,
        Code::InvalidArgument,
        "unknown input 'x': this model takes one input named 'input'",
    ));
    cases.push((
        "unknown parameter",
        with_parameter("aggregate", string("vote")),
        Code::InvalidArgument,
        "unknown parameter 'aggregate'; this model takes aggregation, output, top_k",
    ));
    // The protocol's sequence parameters are accepted (and ignored) when well formed.
    cases.push((
        "a malformed sequence parameter",
        with_parameter("sequence_id", boolean(true)),
        Code::InvalidArgument,
        "parameter 'sequence_id' must be a non-negative integer or a string, not true",
    ));
    cases.push((
        "aggregation",
        with_parameter("aggregation", string("max")),
        Code::InvalidArgument,
        "parameter 'aggregation' must be \"mean\", \"vote\" or \"weighted\", not \"max\"",
    ));
    cases.push((
        "top_k range",
        with_parameter("top_k", int(11)),
        Code::InvalidArgument,
        "parameter 'top_k' must be an integer from 1 to 10 (the number of classes), not 11",
    ));
    cases.push((
        "top_k as a string",
        with_parameter("top_k", string("3")),
        Code::InvalidArgument,
        "parameter 'top_k' must be an integer from 1 to 10 (the number of classes), not \"3\"",
    ));
    cases.push((
        "a parameter without a value",
        with_parameter(
            "top_k",
            InferParameter {
                parameter_choice: None,
            },
        ),
        Code::InvalidArgument,
        "parameter 'top_k' holds no value this server reads",
    ));
    cases.push((
        "output top_k without k",
        with_parameter("output", string("top_k")),
        Code::InvalidArgument,
        "output \"top_k\" needs the parameter 'top_k' (how many classes)",
    ));
    let mut r = good(true);
    r.outputs = vec![InferRequestedOutputTensor {
        name: "nope".into(),
        ..Default::default()
    }];
    cases.push((
        "output name",
        r,
        Code::InvalidArgument,
        "output 'nope' is not produced for this request; it produces label, probabilities",
    ));
    let mut r = good(true);
    r.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        parameters: HashMap::from([("classification".to_string(), int(3))]),
    }];
    cases.push((
        "classification",
        r,
        Code::InvalidArgument,
        "output 'probabilities': parameter 'classification'",
    ));
    let mut r = good(true);
    r.inputs[0].parameters = HashMap::from([("shared_memory_region".to_string(), string("r"))]);
    cases.push((
        "shared memory",
        r,
        Code::InvalidArgument,
        "input 'input': parameter 'shared_memory_region'",
    ));
    let mut r = good(true);
    r.raw_input_contents.push(r.raw_input_contents[0].clone());
    cases.push((
        "raw tensor count",
        r,
        Code::InvalidArgument,
        "raw_input_contents holds 2 tensor(s), but the request has 1 input(s)",
    ));
    let mut r = good(true);
    r.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: rows.concat(),
        ..Default::default()
    });
    cases.push((
        "contents and raw",
        r,
        Code::InvalidArgument,
        "input 'input' has data both in contents.fp32_contents and in raw_input_contents",
    ));
    let mut r = good(false);
    r.inputs[0].contents = Some(InferTensorContents {
        int_contents: vec![1; 128],
        ..Default::default()
    });
    cases.push((
        "typed contents",
        r,
        Code::InvalidArgument,
        "input 'input' has its data in contents.int_contents: FP32 data goes in contents.fp32_contents",
    ));
    // 4 rows fit --max-batch, and their 1,024 bytes --max-body-bytes; 20 rows do not fit 4,096
    // bytes and are refused for their size before anything else is read.
    cases.push((
        "message size",
        infer_request(&model, &digits_rows(20), true),
        Code::ResourceExhausted,
        "larger than 4096 bytes (--max-body-bytes)",
    ));

    runtime().block_on(async {
        let mut c = connect(addr).await;
        for (what, request, code, needle) in cases {
            let e = c.model_infer(request).await.expect_err(what);
            assert_status(&e, code, needle);
        }
        // The server is undisturbed: the good request answers, on the same connection.
        let a = c.model_infer(good(true)).await.unwrap().into_inner();
        assert_eq!(int64_output(&a, "label").0, labels);
        let a = c
            .model_infer(infer_request(&model, &digits_rows(4), true))
            .await;
        assert_eq!(a.unwrap().into_inner().model_version, "1");
    });
}

#[test]
fn labels_only_answers_labels_and_refuses_probabilities() {
    let run = shared_run();
    let (server, addr) = start(run, &["--labels-only"], &[]);
    let model = server.model.clone();
    let rows = digits_rows(3);
    let (labels, _) = predict(run, 3, None);
    runtime().block_on(async {
        let mut c = connect(addr).await;
        let a = c.model_infer(infer_request(&model, &rows, true)).await;
        let a = a.unwrap().into_inner();
        assert_eq!(output_names(&a), ["label"]);
        assert_eq!(int64_output(&a, "label").0, labels);
        let m = c.model_metadata(metadata_request(&model, "")).await;
        assert_eq!(m.unwrap().into_inner().outputs.len(), 1);
        let mut r = infer_request(&model, &rows, true);
        r.parameters = HashMap::from([("output".to_string(), string("probabilities"))]);
        let e = c.model_infer(r).await.unwrap_err();
        assert_status(
            &e,
            Code::PermissionDenied,
            "this server answers labels only (--labels-only)",
        );
        let mut r = infer_request(&model, &rows, true);
        r.outputs = vec![InferRequestedOutputTensor {
            name: "probabilities".into(),
            ..Default::default()
        }];
        let e = c.model_infer(r).await.unwrap_err();
        assert_status(&e, Code::PermissionDenied, "labels only");
    });
}

// ---------------------------------------------------------------------------------------------
// The served version: deletions in progress, loading, shutdown.

#[test]
fn answers_leave_out_the_shards_of_a_deletion_in_progress_as_rest_does() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    let (tokens, token) = token_file(dir.path());
    let resume = dir.path().join("resume");
    let (server, addr) = start(
        &run,
        &[
            "--admin-token-file",
            tokens.to_str().unwrap(),
            "--watch-interval-ms",
            "50",
        ],
        &[
            ("SISA_FAILPOINT", "pause:unlearn.planned"),
            ("SISA_FAILPOINT_RESUME", resume.to_str().unwrap()),
        ],
    );
    let model = server.model.clone();
    let rows = digits_rows(4);
    let mut rest = server.client();
    let r = unlearn(&mut rest, &server, &token, &["u00219"]);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let excluded = r.json()["excluded_shards"].clone();
    assert_eq!(excluded.as_array().map(Vec::len), Some(1), "{excluded}");
    let rest_during = rest_infer(&mut rest, &server, &rows, None);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(addr).await;
        let meta = c.server_metadata(ServerMetadataRequest {}).await.unwrap();
        assert_eq!(meta.into_inner().extensions, ["unlearn"]);
        let a = c.model_infer(infer_request(&model, &rows, true)).await;
        let a = a.unwrap().into_inner();
        assert_eq!(a.model_version, "1");
        assert_eq!(
            string_parameter(&a, "excluded_shards"),
            excluded.to_string()
        );
        assert_eq!(int_parameter(&a, "shards_voting"), SHARDS as i64 - 1);
        assert_eq!(
            fp32_output(&a, "probabilities").0,
            as_f32(&output(&rest_during, "probabilities"))
        );
    });
    std::fs::write(&resume, b"").unwrap();
    wait_state(&mut rest, &server, &token, 1, "done");
    rt.block_on(async {
        let mut c = connect(addr).await;
        let a = c.model_infer(infer_request(&model, &rows, false)).await;
        let a = a.unwrap().into_inner();
        assert_eq!(a.model_version, "2");
        assert_eq!(string_parameter(&a, "excluded_shards"), "[]");
        assert_eq!(int_parameter(&a, "shards_voting"), SHARDS as i64);
        let r = c.model_ready(ready_request(&model, "2")).await;
        assert!(r.unwrap().into_inner().ready);
        let e = c.model_ready(ready_request(&model, "1")).await.unwrap_err();
        assert_status(
            &e,
            Code::NotFound,
            "version '1' of model 'digits' is not served; version 2 is",
        );
    });
}

#[test]
fn live_at_once_ready_after_loading_and_sigterm_stops_both_servers() {
    let dir = tempfile::tempdir().unwrap();
    let run = train_digits(dir.path(), "digits", SHARDS);
    // A deletion that dies after erasing: the next start completes it before serving.
    let o = Command::new(BIN)
        .args(["unlearn", "-q", "--user", "u00219", "--run"])
        .arg(&run)
        .env("SISA_FAILPOINT", "unlearn.erased")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the failpoint stops the request");
    let resume = dir.path().join("resume");
    let mut server = Server::spawn(
        &run,
        &["--grpc-addr", "127.0.0.1:0"],
        &[
            ("SISA_FAILPOINT", "pause:unlearn.retrained"),
            ("SISA_FAILPOINT_RESUME", resume.to_str().unwrap()),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = grpc_addr(&server);
    let model = server.model.clone();
    let rows = digits_rows(2);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(addr).await;
        // Completing the request is paused: live, not ready.
        let live = c.server_live(ServerLiveRequest {}).await.unwrap();
        assert!(live.into_inner().live);
        let ready = c.server_ready(ServerReadyRequest {}).await.unwrap();
        assert!(!ready.into_inner().ready);
        let ready = c.model_ready(ready_request(&model, "")).await.unwrap();
        assert!(!ready.into_inner().ready);
        let e = c.model_metadata(metadata_request(&model, "")).await;
        assert_status(
            &e.unwrap_err(),
            Code::Unavailable,
            "model 'digits' is still loading",
        );
        let e = c.model_infer(infer_request(&model, &rows, true)).await;
        assert_status(
            &e.unwrap_err(),
            Code::Unavailable,
            "model 'digits' is still loading",
        );

        std::fs::write(&resume, b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = c.server_ready(ServerReadyRequest {}).await.unwrap();
            if ready.into_inner().ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready in 60 s: {}",
                server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let a = c.model_infer(infer_request(&model, &rows, true)).await;
        assert_eq!(a.unwrap().into_inner().model_version, "2");
        // SIGTERM with this connection still open: both servers stop, the process exits 0.
        let status = server.terminate();
        assert!(
            status.success(),
            "SIGTERM stops the server cleanly: {status}"
        );
        let after = c.server_live(ServerLiveRequest {}).await;
        assert!(after.is_err(), "the gRPC server is gone");
    });
}

#[test]
fn a_grpc_address_that_is_taken_is_refused_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = Server::spawn(shared_run(), &["--grpc-addr", &addr], &[])
        .err()
        .expect("it exits");
    assert!(
        e.contains(&format!("serve {addr}: cannot listen for gRPC")),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// The Python clients, with their default calls.

/// The README's gRPC examples: the Python blocks of its "Serving" section that talk to the
/// gRPC address (127.0.0.1:8081).
fn readme_grpc_python() -> Vec<String> {
    let mut blocks = readme_serving_python();
    blocks.retain(|b| b.contains("127.0.0.1:8081"));
    blocks
}

#[test]
fn tritonclient_and_kserve_with_their_default_calls_answer_as_sisa_predict() {
    if !python_has(
        &["tritonclient.grpc", "kserve", "numpy"],
        "pip install 'tritonclient[grpc]' kserve numpy",
    ) {
        return;
    }
    let run = shared_run();
    let n = 5;
    let rows = digits_rows(n);
    let (labels, probs) = predict(run, n, None);
    let (server, addr) = start(run, &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let rows_file = dir.path().join("rows.json");
    std::fs::write(&rows_file, serde_json::to_vec(&rows).unwrap()).unwrap();
    // One process a client: the two packages cannot be loaded into one Python process.
    for client in [
        "tritonclient",
        "tritonclient-gzip",
        "tritonclient-deflate",
        "kserve",
        "kserve-contents",
    ] {
        let o = Command::new("python3")
            .arg(repo("tests/clients/grpc_clients.py"))
            .arg(client)
            .arg(addr.to_string())
            .arg(&server.model)
            .arg(&rows_file)
            .output()
            .expect("run python3");
        assert!(
            o.status.success(),
            "the Python client {client} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let a: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{client} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        });
        assert_eq!(a["model_version"], "1", "{client}: {a}");
        let got_labels: Vec<i64> = a["label"]
            .as_array()
            .unwrap_or_else(|| panic!("{client}: no labels in {a}"))
            .iter()
            .map(|l| l.as_i64().expect("an integer label"))
            .collect();
        assert_eq!(got_labels, labels, "{client}");
        let got_probs: Vec<f32> = a["probabilities"]
            .as_array()
            .unwrap_or_else(|| panic!("{client}: no probabilities in {a}"))
            .iter()
            .flat_map(|row| row.as_array().expect("a row of probabilities").clone())
            .map(|p| p.as_f64().expect("a probability") as f32)
            .collect();
        assert_eq!(got_probs, probs, "{client}");
    }

    // The README's two scripts, as written but for the address. Its row is a 0.
    let scripts = readme_grpc_python();
    assert!(
        scripts.iter().any(|s| s.contains("tritonclient.grpc"))
            && scripts.iter().any(|s| s.contains("InferenceGRPCClient")),
        "the README shows both clients: {scripts:?}"
    );
    for script in scripts {
        let script = script.replace("127.0.0.1:8081", &addr.to_string());
        let o = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("run python3");
        assert!(
            o.status.success(),
            "the README's script failed: {}\n{script}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.starts_with("1 [0] [["), "version 1, label 0: {out}");
    }
}

#[test]
fn grpc_connections_share_the_connection_cap_with_rest() {
    let (server, addr) = start(shared_run(), &["--max-connections", "2"], &[]);
    // The readiness probe's connection is closed; give the server a moment to see it.
    std::thread::sleep(Duration::from_millis(300));
    // Two half-sent REST headers hold both slots.
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            std::io::Write::write_all(&mut s, b"GET /v2/health/live HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    runtime().block_on(async {
        let refused = async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c =
                proto::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
            c.server_live(ServerLiveRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        .await;
        assert!(
            refused.is_err(),
            "a gRPC connection beyond the cap was served"
        );
    });
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    runtime().block_on(async {
        let mut c = connect(addr).await;
        let live = c.server_live(ServerLiveRequest {}).await.unwrap();
        assert!(live.into_inner().live);
    });
    assert!(server.wait_stderr(
        "every connection slot is taken (--max-connections): closing new gRPC connections",
        Duration::from_secs(5)
    ));
}
