//! `sisa serve` with what inference clients send beyond plain JSON: Triton's binary tensor data
//! (binary inputs and outputs, classification), and compressed bodies and answers. The real
//! binary on an ephemeral loopback port, a run trained by the real binary on the bundled
//! digits, and a plain HTTP/1.1 client that sends exactly the bytes a test asks for.

mod serving;

use flate2::read::{MultiGzDecoder, ZlibDecoder};
use serde_json::{json, Value};
use serving::http::{Client, Response};
use serving::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One digits run shared by every test here (none changes it).
fn shared_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-binary-shared");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the old shared run");
        }
        std::fs::create_dir_all(&dir).expect("create the shared run's folder");
        train_digits(&dir, "digits", 5)
    })
}

const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// The elements of one output tensor; FP32 as bits, so that equality is bit for bit.
#[derive(Clone, Debug, PartialEq)]
enum Values {
    Int64(Vec<i64>),
    Fp32(Vec<u32>),
    Bytes(Vec<String>),
}

/// One output tensor of an answer, decoded from JSON `data` or from binary data.
#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    datatype: String,
    shape: Vec<usize>,
    values: Values,
}

/// An answer decoded as the binary tensor data extension says.
struct Decoded {
    /// The JSON part.
    head: Value,
    /// Output tensors by name.
    tensors: BTreeMap<String, Tensor>,
    /// Names of the outputs that came as binary data.
    binary: Vec<String>,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Decode a 200 answer: undo its Content-Encoding, split it at Inference-Header-Content-Length,
/// and read each output from its data or its binary bytes, in output order.
fn decode(r: &Response) -> Decoded {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut body = Vec::new();
    match r.header("content-encoding") {
        None => body.clone_from(&r.body),
        Some("gzip") => {
            MultiGzDecoder::new(&r.body[..])
                .read_to_end(&mut body)
                .unwrap();
        }
        Some("deflate") => {
            ZlibDecoder::new(&r.body[..])
                .read_to_end(&mut body)
                .unwrap();
        }
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    let (head, mut tail) = match r.header(HEADER_LENGTH) {
        Some(n) => {
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
            let n: usize = n.parse().unwrap();
            (&body[..n], &body[n..])
        }
        None => {
            assert_eq!(r.header("content-type"), Some("application/json"));
            (&body[..], &[][..])
        }
    };
    let head: Value = serde_json::from_slice(head).unwrap();
    let mut tensors = BTreeMap::new();
    let mut binary = Vec::new();
    for o in head["outputs"].as_array().expect("outputs") {
        let name = o["name"].as_str().unwrap().to_string();
        let datatype = o["datatype"].as_str().unwrap().to_string();
        let shape: Vec<usize> = o["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as usize)
            .collect();
        let values = if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            assert!(o.get("data").is_none(), "a binary output has no data: {o}");
            let (mine, rest) = tail.split_at(size as usize);
            tail = rest;
            binary.push(name.clone());
            match datatype.as_str() {
                "INT64" => Values::Int64(
                    mine.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                "FP32" => Values::Fp32(
                    mine.chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                "BYTES" => {
                    let mut strings = Vec::new();
                    let mut b = mine;
                    while !b.is_empty() {
                        let len = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
                        strings.push(String::from_utf8(b[4..4 + len].to_vec()).unwrap());
                        b = &b[4 + len..];
                    }
                    Values::Bytes(strings)
                }
                other => panic!("unexpected datatype {other}"),
            }
        } else {
            let data = o["data"].as_array().expect("data");
            match datatype.as_str() {
                "INT64" => Values::Int64(data.iter().map(|v| v.as_i64().unwrap()).collect()),
                "FP32" => Values::Fp32(
                    data.iter()
                        .map(|v| (v.as_f64().unwrap() as f32).to_bits())
                        .collect(),
                ),
                "BYTES" => Values::Bytes(
                    data.iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                ),
                other => panic!("unexpected datatype {other}"),
            }
        };
        tensors.insert(
            name,
            Tensor {
                datatype,
                shape,
                values,
            },
        );
    }
    assert!(tail.is_empty(), "{} bytes after the outputs", tail.len());
    Decoded {
        head,
        tensors,
        binary,
    }
}

/// A JSON request for `rows`, with `extra` fields (parameters, outputs) merged in.
fn json_request(rows: &[Vec<f32>], extra: Value) -> Vec<u8> {
    let mut req = json!({
        "inputs": [{"name": "input", "shape": [rows.len(), rows[0].len()], "datatype": "FP32", "data": rows}],
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    serde_json::to_vec(&req).unwrap()
}

/// The same request with the rows as binary data: the body and its JSON part's length.
fn binary_request(rows: &[Vec<f32>], extra: Value) -> (Vec<u8>, usize) {
    let data: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut req = json!({
        "inputs": [{"name": "input", "shape": [rows.len(), rows[0].len()], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len()}}],
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    let mut body = serde_json::to_vec(&req).unwrap();
    let n = body.len();
    body.extend_from_slice(&data);
    (body, n)
}

fn post(c: &mut Client, server: &Server, headers: &[(&str, &str)], body: &[u8]) -> Response {
    c.post(&server.path("/infer"), headers, body)
        .expect("infer request")
}

fn post_binary(c: &mut Client, server: &Server, body: &(Vec<u8>, usize)) -> Response {
    let n = body.1.to_string();
    post(c, server, &[(HEADER_LENGTH, &n)], &body.0)
}

#[test]
fn binary_inputs_are_answered_as_json_inputs_bit_for_bit() {
    let server = Server::start(shared_run(), &[], &[]);
    let mut c = server.client();
    let rows = digits_rows(12);
    for extra in [
        json!({}),
        json!({"parameters": {"top_k": 3}}),
        json!({"parameters": {"aggregation": "vote"}}),
        json!({"parameters": {"output": "label"}}),
    ] {
        let from_json = decode(&post(
            &mut c,
            &server,
            &[],
            &json_request(&rows, extra.clone()),
        ));
        let from_binary = decode(&post_binary(
            &mut c,
            &server,
            &binary_request(&rows, extra.clone()),
        ));
        assert!(from_json.binary.is_empty() && from_binary.binary.is_empty());
        assert_eq!(from_json.tensors, from_binary.tensors, "{extra}");
        assert_eq!(from_json.head, from_binary.head, "{extra}");
        assert_eq!(from_json.tensors["label"].shape, [12]);
    }
    // A request without binary data but with the header is plain JSON.
    let body = json_request(&rows, json!({}));
    let n = body.len().to_string();
    let framed = decode(&post(&mut c, &server, &[(HEADER_LENGTH, &n)], &body));
    let plain = decode(&post(&mut c, &server, &[], &body));
    assert_eq!(framed.tensors, plain.tensors);
}

#[test]
fn binary_outputs_decode_to_the_json_outputs() {
    let server = Server::start(shared_run(), &[], &[]);
    let mut c = server.client();
    let rows = digits_rows(7);
    for params in [json!({}), json!({"top_k": 4}), json!({"output": "label"})] {
        let json_answer = post(
            &mut c,
            &server,
            &[],
            &json_request(&rows, json!({ "parameters": params })),
        );
        let mut with_binary = params.clone();
        with_binary["binary_data_output"] = json!(true);
        let binary_answer = post(
            &mut c,
            &server,
            &[],
            &json_request(&rows, json!({ "parameters": with_binary })),
        );
        // The JSON answer is plain JSON, with no binary header.
        assert_eq!(json_answer.header(HEADER_LENGTH), None);
        let (j, b) = (decode(&json_answer), decode(&binary_answer));
        assert!(j.binary.is_empty());
        assert_eq!(
            b.binary,
            j.tensors.keys().cloned().collect::<Vec<_>>(),
            "every output binary"
        );
        assert_eq!(j.tensors, b.tensors, "{params}");
        // The binary header holds sizes, and the rest of the answer is the same.
        let n: usize = binary_answer
            .header(HEADER_LENGTH)
            .unwrap()
            .parse()
            .unwrap();
        assert!(n < binary_answer.body.len());
        assert_eq!(b.head["model_version"], j.head["model_version"]);
        assert_eq!(b.head["parameters"], j.head["parameters"]);
        let label = &b.head["outputs"][0];
        assert_eq!(label["parameters"]["binary_data_size"], 7 * 8);
    }
    // Binary in, binary out.
    let both = decode(&post_binary(
        &mut c,
        &server,
        &binary_request(&rows, json!({"parameters": {"binary_data_output": true}})),
    ));
    let plain = decode(&post(&mut c, &server, &[], &json_request(&rows, json!({}))));
    assert_eq!(both.tensors, plain.tensors);
    assert_eq!(both.binary, ["label", "probabilities"]);
}

#[test]
fn binary_and_json_outputs_mix_and_classification_names_the_best_classes() {
    let server = Server::start(shared_run(), &[], &[]);
    let mut c = server.client();
    let rows = digits_rows(5);
    let plain = decode(&post(&mut c, &server, &[], &json_request(&rows, json!({}))));
    let mixed = decode(&post(
        &mut c,
        &server,
        &[],
        &json_request(
            &rows,
            json!({"outputs": [
                {"name": "label", "parameters": {"binary_data": true}},
                {"name": "probabilities", "parameters": {"binary_data": false}},
            ]}),
        ),
    ));
    assert_eq!(mixed.binary, ["label"]);
    assert_eq!(mixed.tensors, plain.tensors);
    // binary_data: false overrides binary_data_output: true.
    let overridden = decode(&post(
        &mut c,
        &server,
        &[],
        &json_request(
            &rows,
            json!({"parameters": {"binary_data_output": true},
                   "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": false}}]}),
        ),
    ));
    assert_eq!(overridden.binary, ["label"]);
    assert_eq!(overridden.tensors, plain.tensors);
    // Only the named output, binary.
    let only = decode(&post(
        &mut c,
        &server,
        &[],
        &json_request(
            &rows,
            json!({"outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]}),
        ),
    ));
    assert_eq!(only.binary, ["probabilities"]);
    assert_eq!(only.tensors.len(), 1);
    assert_eq!(
        only.tensors["probabilities"],
        plain.tensors["probabilities"]
    );

    // Classification: the 3 best classes as "probability:class", best first; the same in JSON
    // and binary, and the same classes top_k gives.
    let top = decode(&post(
        &mut c,
        &server,
        &[],
        &json_request(&rows, json!({"parameters": {"top_k": 3}})),
    ));
    let Values::Int64(best) = &top.tensors["top_k_labels"].values else {
        panic!("INT64 top_k_labels")
    };
    let Values::Fp32(best_p) = &top.tensors["top_k_probabilities"].values else {
        panic!("FP32 top_k_probabilities")
    };
    for binary in [false, true] {
        let classified = decode(&post(
            &mut c,
            &server,
            &[],
            &json_request(
                &rows,
                json!({"outputs": [{"name": "label"},
                                   {"name": "probabilities", "parameters": {"classification": 3, "binary_data": binary}}]}),
            ),
        ));
        let t = &classified.tensors["probabilities"];
        assert_eq!(
            (t.datatype.as_str(), t.shape.as_slice()),
            ("BYTES", &[5, 3][..])
        );
        let Values::Bytes(strings) = &t.values else {
            panic!("BYTES")
        };
        for (i, s) in strings.iter().enumerate() {
            let (p, class) = s.split_once(':').unwrap();
            assert_eq!(class.parse::<i64>().unwrap(), best[i], "{s}");
            assert_eq!(p.parse::<f32>().unwrap().to_bits(), best_p[i], "{s}");
        }
        assert_eq!(
            classified.binary.contains(&"probabilities".to_string()),
            binary
        );
        assert_eq!(classified.tensors["label"], plain.tensors["label"]);
    }
}

#[test]
fn gzip_and_deflate_bodies_and_answers() {
    let server = Server::start(shared_run(), &[], &[]);
    let mut c = server.client();
    let rows = digits_rows(9);
    let plain = decode(&post(&mut c, &server, &[], &json_request(&rows, json!({}))));
    let body = json_request(&rows, json!({}));
    let (bin, n) = binary_request(&rows, json!({"parameters": {"binary_data_output": true}}));
    let n = n.to_string();
    for (coding, compress) in [("gzip", gzip as fn(&[u8]) -> Vec<u8>), ("deflate", zlib)] {
        // A compressed JSON body.
        let r = post(
            &mut c,
            &server,
            &[("Content-Encoding", coding)],
            &compress(&body),
        );
        assert_eq!(decode(&r).tensors, plain.tensors, "{coding}");
        // A compressed binary body: the header counts decompressed bytes.
        let r = post(
            &mut c,
            &server,
            &[("Content-Encoding", coding), (HEADER_LENGTH, &n)],
            &compress(&bin),
        );
        let d = decode(&r);
        assert_eq!(d.tensors, plain.tensors, "{coding}");
        assert_eq!(d.binary, ["label", "probabilities"]);
        // A compressed answer, when asked for; binary ones too.
        for request in [&body, &bin] {
            let mut headers = vec![("Accept-Encoding", coding)];
            if request == &bin {
                headers.push((HEADER_LENGTH, &n));
            }
            let r = post(&mut c, &server, &headers, request);
            assert_eq!(r.header("content-encoding"), Some(coding));
            assert_eq!(r.header("vary"), Some("accept-encoding"));
            assert_eq!(decode(&r).tensors, plain.tensors, "{coding}");
        }
    }
    // gzip preferred, weights honoured, nothing compressed unless asked.
    let answer_coding = |c: &mut Client, accept: &str| {
        post(c, &server, &[("Accept-Encoding", accept)], &body)
            .header("content-encoding")
            .map(str::to_string)
    };
    assert_eq!(
        answer_coding(&mut c, "gzip, deflate, br").as_deref(),
        Some("gzip")
    );
    assert_eq!(
        answer_coding(&mut c, "gzip;q=0.1, deflate").as_deref(),
        Some("deflate")
    );
    assert_eq!(answer_coding(&mut c, "br, identity"), None);
    assert_eq!(
        post(&mut c, &server, &[], &body).header("content-encoding"),
        None
    );
}

/// Peak resident memory of a process in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_body_that_inflates_past_the_limit_is_413_and_memory_stays_bounded() {
    let server = Server::start(shared_run(), &[], &[]);
    let mut c = server.client();
    // 1 GiB of spaces as 1024 gzip members of 1 MiB each: about a megabyte on the wire.
    let member = gzip(&vec![b' '; 1 << 20]);
    let bomb: Vec<u8> = member.repeat(1024);
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let before = peak_kib(server.pid());
    let r = post(&mut c, &server, &[("Content-Encoding", "gzip")], &bomb);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("larger than 16777216 bytes once decompressed (--max-body-bytes)"),
        "{error}"
    );
    if let (Some(before), Some(after)) = (before, peak_kib(server.pid())) {
        println!("peak resident memory: {before} KiB before the bomb, {after} KiB after");
        // The default limit is 16 MiB: inflating stops there, far below the bomb's 1 GiB.
        assert!(
            after < before + (128 << 10),
            "peak resident memory grew from {before} KiB to {after} KiB"
        );
    }
    // A compressed body within the limit still works.
    let rows = digits_rows(2);
    let ok = post(
        &mut c,
        &server,
        &[("Content-Encoding", "gzip")],
        &gzip(&json_request(&rows, json!({}))),
    );
    assert_eq!(version_of(&decode(&ok).head), 1);
}

/// Every file of the run directory, by path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// One request that must be refused: what it is, its headers and body, the status, and what
/// the error must say.
struct Bad {
    what: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    says: String,
}

fn bad(what: &'static str, headers: &[(&'static str, &str)], body: &[u8], says: &str) -> Bad {
    Bad {
        what,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        body: body.to_vec(),
        status: 400,
        says: says.to_string(),
    }
}

#[test]
fn malformed_requests_are_refused_by_name_and_change_nothing() {
    let run = shared_run();
    let server = Server::start(run, &["--max-body-bytes", "262144"], &[]);
    let before = snapshot(run);
    let mut c = server.client();
    let rows = digits_rows(3);
    let d = rows[0].len();
    let good = json_request(&rows, json!({}));
    let expected = decode(&post(&mut c, &server, &[], &good)).tensors;

    // A binary request's JSON part and binary data, and requests built from them.
    let (bin, n) = binary_request(&rows, json!({}));
    let bytes = bin.len() - n;
    let json_part = String::from_utf8(bin[..n].to_vec()).unwrap();
    let size = format!("\"binary_data_size\":{bytes}");
    // The JSON part edited, with the same binary data and a header that fits.
    let edited = |from: &str, to: &str| {
        let json = json_part.replace(from, to);
        assert_ne!(json, json_part);
        let mut b = json.clone().into_bytes();
        b.extend_from_slice(&bin[n..]);
        (b, json.len().to_string())
    };
    let over = edited(&size, &format!("\"binary_data_size\":{}", bytes + 4));
    let under = edited(&size, &format!("\"binary_data_size\":{}", bytes - 4));
    let not_count = edited(&size, "\"binary_data_size\":\"x\"");
    let two_rows = edited("[3,64]", "[2,64]");
    let both = edited("\"parameters\"", "\"data\":[1],\"parameters\"");
    let shm = edited(
        "\"binary_data_size\"",
        "\"shared_memory_region\":\"r\",\"binary_data_size\"",
    );
    let mut nan_rows = rows.clone();
    nan_rows[2][5] = f32::NAN;
    let nan = binary_request(&nan_rows, json!({}));
    let narrow = binary_request(&[rows[0][..d - 1].to_vec()], json!({}));
    let no_data = json_part.replace(&format!(",\"parameters\":{{{size}}}"), "");
    let hn = |n: usize| n.to_string();
    let cut = gzip(&good);
    let with_params = |p: Value| json_request(&rows, json!({ "parameters": p }));
    let with_outputs = |o: Value| json_request(&rows, json!({ "outputs": o }));

    let mut cases =
        vec![
        bad(
            "binary data without the header",
            &[],
            &bin,
            "input 'input' has parameters.binary_data_size, but the request has no header \
             Inference-Header-Content-Length",
        ),
        bad(
            "bytes after a JSON request, without the header",
            &[],
            &[good.clone(), vec![0, 0, 128, 63]].concat(),
            "4 bytes follow the JSON request: binary data after it needs the header \
             Inference-Header-Content-Length",
        ),
        bad(
            "binary_data_size on a JSON-only request",
            &[],
            json_part.as_bytes(),
            "input 'input' has parameters.binary_data_size, but the request has no header",
        ),
        bad(
            "a header that is not a number",
            &[(HEADER_LENGTH, "12a")],
            &bin,
            "the header Inference-Header-Content-Length must be the length in bytes of the JSON \
             part of the body (a non-negative integer), not '12a'",
        ),
        bad(
            "a negative header",
            &[(HEADER_LENGTH, "-5")],
            &bin,
            "not '-5'",
        ),
        bad(
            "a header longer than the body",
            &[(HEADER_LENGTH, &hn(bin.len() + 1))],
            &bin,
            &format!(
                "says the JSON part of the body is {} bytes, but the body (decompressed, if it \
                 was compressed) holds only {} bytes",
                bin.len() + 1,
                bin.len()
            ),
        ),
        bad(
            "a header that cuts the JSON",
            &[(HEADER_LENGTH, &hn(n - 1))],
            &bin,
            &format!(
                "malformed JSON: EOF while parsing an object at line 1 column {} (in the JSON \
                 part of the body: its first {} bytes",
                n - 1,
                n - 1
            ),
        ),
        bad(
            "sizes past the end",
            &[(HEADER_LENGTH, over.1.as_str())],
            &over.0,
            &format!(
                "input 'input': binary_data_size {} reaches past the end of the body: {bytes} of \
                 its {bytes} bytes",
                bytes + 4
            ),
        ),
        bad(
            "sizes short of the end",
            &[(HEADER_LENGTH, under.1.as_str())],
            &under.0,
            &format!(
                "the body holds {bytes} bytes of binary data after the JSON part, but the inputs' \
                 binary_data_size add up to {}: 4 bytes are left over",
                bytes - 4
            ),
        ),
        bad(
            "a size that is not a count",
            &[(HEADER_LENGTH, not_count.1.as_str())],
            &not_count.0,
            "input 'input': parameter 'binary_data_size' must be a byte count (a non-negative \
             integer), not \"x\"",
        ),
        bad(
            "a byte count that is not rows x d x 4",
            &[(HEADER_LENGTH, two_rows.1.as_str())],
            &two_rows.0,
            &format!(
                "input 'input': binary_data_size is {bytes} bytes, but shape [2, 64] of FP32 \
                 takes 512 (rows x features x 4)"
            ),
        ),
        bad(
            "both data and binary data",
            &[(HEADER_LENGTH, both.1.as_str())],
            &both.0,
            "input 'input' has both data and parameters.binary_data_size",
        ),
        bad(
            "no data at all",
            &[],
            no_data.as_bytes(),
            "input 'input' has no data: send its elements as 'data', or as binary data",
        ),
        bad(
            "NaN in binary data",
            &[(HEADER_LENGTH, &hn(nan.1))],
            &nan.0,
            "input 'input': row 2, feature 5 ('",
        ),
        bad(
            "a binary row one feature short",
            &[(HEADER_LENGTH, &hn(narrow.1))],
            &narrow.0,
            &format!(
                "input 'input': rows have {} features, but this model takes {d}",
                d - 1
            ),
        ),
        bad(
            "shared memory",
            &[(HEADER_LENGTH, shm.1.as_str())],
            &shm.0,
            "input 'input' has the parameter 'shared_memory_region': this server has no shared \
             memory",
        ),
        bad(
            "an unknown parameter",
            &[],
            &with_params(json!({"binary_data": true})),
            "unknown parameter 'binary_data'; this model takes aggregation, output, top_k, and \
             the protocol's binary_data_output",
        ),
        bad(
            "binary_data_output that is not a boolean",
            &[],
            &with_params(json!({"binary_data_output": "yes"})),
            "parameter 'binary_data_output' must be true or false, not \"yes\"",
        ),
        bad(
            "binary_data that is not a boolean",
            &[],
            &with_outputs(json!([{"name": "label", "parameters": {"binary_data": 1}}])),
            "output 'label': parameter 'binary_data' must be true or false, not 1",
        ),
        bad(
            "classification on the label",
            &[],
            &with_outputs(json!([{"name": "label", "parameters": {"classification": 2}}])),
            "output 'label': parameter 'classification' applies to output 'probabilities' only",
        ),
        bad(
            "classification past the classes",
            &[],
            &with_outputs(json!([{"name": "probabilities", "parameters": {"classification": 11}}])),
            "parameter 'classification' must be an integer from 1 to 10 (the number of \
             classes), not 11",
        ),
        bad(
            "a body that is not gzip",
            &[("Content-Encoding", "gzip")],
            &good,
            "the request body cannot be decompressed (Content-Encoding: gzip)",
        ),
        bad(
            "a cut gzip body",
            &[("Content-Encoding", "gzip")],
            &cut[..cut.len() / 2],
            "the request body cannot be decompressed (Content-Encoding: gzip)",
        ),
        bad(
            "a body that is not deflate",
            &[("Content-Encoding", "deflate")],
            &gzip(&good),
            "the request body cannot be decompressed (Content-Encoding: deflate)",
        ),
        bad(
            "binary data in a compressed body, with a header that counts compressed bytes",
            &[("Content-Encoding", "deflate"), (HEADER_LENGTH, &hn(bin.len() + 9))],
            &zlib(&bin),
            &format!("holds only {} bytes", bin.len()),
        ),
        Bad {
            status: 415,
            ..bad(
                "an unsupported coding",
                &[("Content-Encoding", "br")],
                &good,
                "Content-Encoding 'br' is not supported: send the body as it is, or compressed \
                 with gzip or deflate",
            )
        },
        Bad {
            status: 415,
            ..bad(
                "two codings",
                &[("Content-Encoding", "gzip, gzip")],
                &gzip(&gzip(&good)),
                "applies 2 codings one over another",
            )
        },
        Bad {
            status: 413,
            ..bad(
                "a body that inflates past the limit",
                &[("Content-Encoding", "gzip")],
                &gzip(&vec![b' '; 300 << 10]),
                "the request body is larger than 262144 bytes once decompressed \
                 (--max-body-bytes)",
            )
        },
    ];
    // The same checks hold for the JSON part of a compressed binary request.
    cases.push(bad(
        "NaN in compressed binary data",
        &[("Content-Encoding", "gzip"), (HEADER_LENGTH, &hn(nan.1))],
        &gzip(&nan.0),
        "input 'input': row 2, feature 5 ('",
    ));
    for case in &cases {
        let what = case.what;
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&mut c, &server, &headers, &case.body);
        assert_eq!(
            r.status,
            case.status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let error = r.json()["error"]
            .as_str()
            .expect("an error message")
            .to_string();
        assert!(
            error.contains(&case.says),
            "{what}: '{error}' does not say '{}'",
            case.says
        );
        if case.status == 415 {
            assert_eq!(r.header("accept-encoding"), Some("gzip, deflate"), "{what}");
        }
        // The server still answers as before, from the same version.
        let again = decode(&post(&mut c, &server, &[], &good));
        assert_eq!(again.tensors, expected, "{what}");
        assert_eq!(version_of(&again.head), 1);
    }
    assert_eq!(c.get("/v2/health/ready", &[]).unwrap().status, 200);
    assert!(snapshot(run) == before, "the run directory changed");
}

#[test]
fn the_parameters_clients_send_by_default_are_accepted() {
    let server = Server::start(shared_run(), &[], &[]);
    let mut c = server.client();
    let rows = digits_rows(4);
    let plain = decode(&post(&mut c, &server, &[], &json_request(&rows, json!({}))));
    for extra in [
        // tritonclient: id, sequence, priority and timeout.
        json!({"id": "r-9", "parameters": {"sequence_id": 42, "sequence_start": true, "sequence_end": false,
                                           "priority": 1, "timeout": 5000000}}),
        json!({"parameters": {"sequence_id": "user-7"}}),
        // kserve: a uuid id, the model's name, parameters on the input.
        json!({"id": "4bd0c8d6-7d57-4b5d-9a43-2f0d4a7b1c55", "model_name": "digits"}),
    ] {
        let a = decode(&post(
            &mut c,
            &server,
            &[],
            &json_request(&rows, extra.clone()),
        ));
        assert_eq!(a.tensors, plain.tensors, "{extra}");
        assert_eq!(
            a.head["id"],
            extra.get("id").cloned().unwrap_or(Value::Null)
        );
    }
    // An input parameter the server does not know (MLServer's content_type) is ignored.
    let mut req: Value = serde_json::from_slice(&json_request(&rows, json!({}))).unwrap();
    req["inputs"][0]["parameters"] = json!({"content_type": "np"});
    let a = decode(&post(
        &mut c,
        &server,
        &[],
        &serde_json::to_vec(&req).unwrap(),
    ));
    assert_eq!(a.tensors, plain.tensors);
}
