//! The Open Inference Protocol (v2) REST messages that `sisa serve` speaks, and the checks that
//! turn a request body into a batch of rows, or into a refusal that names the problem.
//!
//! Pure: nothing here touches the network, the disk or the serving state, so every refusal is
//! tested on plain bytes. The model takes one FP32 input named `input` of shape `[n, d]`; its
//! elements come as JSON `data` (flat, row-major, or nested `[[...], [...]]`) or as binary data
//! (below). Request `parameters`:
//!
//! | parameter     | values                                | default                        |
//! |---------------|---------------------------------------|--------------------------------|
//! | `aggregation` | `"mean"`, `"vote"`, `"weighted"`      | the run's (`mean` unless set)  |
//! | `output`      | `"label"`, `"probabilities"`, `"top_k"` | `"probabilities"` (`"label"` with `--labels-only`) |
//! | `top_k`       | 1 ..= classes (implies `"top_k"`)     | none                           |
//! | `binary_data_output` | `true`, `false`                | `false`                        |
//!
//! The protocol's `sequence_id` (integer or string), `sequence_start` and `sequence_end`
//! (booleans), `priority` and `timeout` (non-negative integers) are checked and then ignored:
//! the model keeps no state between requests, and every request is answered as it comes. Any
//! other request parameter is refused, naming it.
//!
//! Outputs: `label` (INT64 `[n]`) always; `probabilities` (FP32 `[n, classes]`) with output
//! `probabilities`; `top_k_labels` (INT64 `[n, k]`) and `top_k_probabilities` (FP32 `[n, k]`),
//! best first, with output `top_k`; and, when the run's labels are names, `class_name` (BYTES
//! `[n]`, the name of each row's `label`) last, whatever the output kind. A request's `outputs`
//! list, if given, keeps only the named tensors. Per-output parameters: `binary_data` (`true` or
//! `false`, below) and `classification` (Triton's classification extension, on `probabilities`
//! only: a count k from 1 to the number of classes turns the tensor into BYTES `[n, k]` strings
//! `"probability:class"`, best first, or `"probability:class:name"` when the classes have
//! names; the probability is written as the shortest decimal that reads back as the same FP32,
//! where Triton writes six decimals). Other per-input and per-output parameters are ignored, except
//! `shared_memory_region` and its companions, which are refused: the server has no shared memory.
//!
//! **Binary tensor data** (Triton's binary tensor data extension, which `tritonclient.http`
//! uses by default): with the request header `Inference-Header-Content-Length: N`, the first N
//! bytes of the body are the JSON request and the rest is binary data. An input with
//! `parameters.binary_data_size` takes that many bytes from the rest, in input order, as FP32
//! little-endian, row-major, instead of `data`; the sizes must add up to the rest exactly and be
//! `rows · d · 4`. The rows then pass the same checks as JSON `data`. An output is sent as raw
//! little-endian bytes after the JSON answer (INT64 labels, FP32 probabilities, BYTES as a
//! 4-byte length before each string) when it says `binary_data: true`, or when the request says
//! `binary_data_output: true` and the output does not say `binary_data: false`. Such an output
//! carries `parameters.binary_data_size` and no `data`; the answer then has the header
//! `Inference-Header-Content-Length` (the JSON answer's length) and `Content-Type:
//! application/octet-stream`. Without binary outputs the answer is plain JSON, as before.
//!
//! **Compression**: a request body with `Content-Encoding: gzip` (or `x-gzip`) or `deflate` (the
//! zlib format, as RFC 9110 defines it and `tritonclient` sends it) is decompressed before any
//! of the above, never past the body limit (a body that would is refused with 413), and
//! `Inference-Header-Content-Length` counts decompressed bytes. Other codings get 415 with
//! `Accept-Encoding: gzip, deflate`. Inflating stops one byte past the limit, so a small body
//! that would inflate to gigabytes costs a few times the limit in memory. An inference answer is
//! compressed with gzip or deflate when the request's `Accept-Encoding` accepts one (the one
//! with the higher weight; gzip when they are equal).

use crate::ensemble::Prediction;
use crate::run::Aggregation;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Write};

/// Name of the model's one input tensor.
pub const INPUT: &str = "input";
/// Output tensor: the predicted class of each row (INT64 `[n]`).
pub const LABEL: &str = "label";
/// Output tensor: class probabilities, or vote shares under `vote` (FP32 `[n, classes]`).
pub const PROBABILITIES: &str = "probabilities";
/// Output tensor: the `k` best classes of each row, best first (INT64 `[n, k]`).
pub const TOP_K_LABELS: &str = "top_k_labels";
/// Output tensor: the probabilities of the `k` best classes (FP32 `[n, k]`).
pub const TOP_K_PROBABILITIES: &str = "top_k_probabilities";
/// Output tensor: the class name of each row's label (BYTES `[n]`), when the run's labels are
/// names.
pub const CLASS_NAME: &str = "class_name";

/// Request parameters the server understands.
pub const PARAMETERS: [&str; 3] = ["aggregation", "output", "top_k"];

/// The protocol's request parameters the server accepts besides its own: `binary_data_output`
/// is acted on, the others are checked and ignored (see the module docs).
pub const PROTOCOL_PARAMETERS: [&str; 6] = [
    "binary_data_output",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
];

/// The header that gives the length of the JSON part of a body with binary tensor data.
pub const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// The content codings a request body may have, as `Accept-Encoding` names them.
pub const ACCEPTED_ENCODINGS: &str = "gzip, deflate";

/// A request the server will not answer: the HTTP status and a message naming the problem.
/// It is sent as `{"error": message}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 4xx (or 5xx) status.
    pub status: StatusCode,
    /// What is wrong, in words a client can act on.
    pub message: String,
    /// Headers to send with it (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    /// A refusal with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// The same refusal with one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Refusal {
        self.headers.push((name, value));
        self
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        for (name, value) in self.headers {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

/// An inference request (`POST /v2/models/{name}/infer`).
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Aggregation and output choice (see the module docs).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// Input tensors; exactly one, named [`INPUT`].
    pub inputs: Vec<InputTensor>,
    /// Output tensors to return; all that the output choice produces when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor of a request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    /// Tensor name.
    pub name: String,
    /// Shape, `[rows, features]`.
    pub shape: Vec<i64>,
    /// Element type; only `FP32` is accepted.
    pub datatype: String,
    /// Per-tensor parameters: `binary_data_size` says the elements are binary data after the
    /// JSON; others are ignored (shared memory ones refused).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, flat or nested; absent when they come as binary data.
    #[serde(default)]
    pub data: Option<TensorData>,
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Output tensor name.
    pub name: String,
    /// Per-output parameters: `binary_data` and `classification`; others are ignored (shared
    /// memory ones refused).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

/// The `data` of an input tensor, flattened while it is parsed (no intermediate JSON tree).
#[derive(Debug, Default, PartialEq)]
pub struct TensorData {
    /// Every number, row-major, as FP32 (a number too large for FP32 becomes infinite here and
    /// is refused by [`parse_infer`]).
    pub values: Vec<f32>,
    /// Length of the arrays at each nesting level: `[len]` for flat data, `[rows, features]`
    /// for nested rows.
    pub dims: Vec<usize>,
    /// The first element that is not a number: its position among the elements and its kind.
    pub non_number: Option<(usize, &'static str)>,
    /// Why the nesting is not rectangular, if it is not.
    pub ragged: Option<String>,
}

struct Level<'a> {
    data: &'a mut TensorData,
    depth: usize,
    leaf_depth: &'a mut Option<usize>,
}

impl Level<'_> {
    fn leaf(&mut self, v: f64) {
        self.check_leaf_depth();
        self.data.values.push(v as f32);
    }

    fn other(&mut self, kind: &'static str) {
        self.check_leaf_depth();
        if self.data.non_number.is_none() {
            self.data.non_number = Some((self.data.values.len(), kind));
        }
        // Keep positions right for later elements.
        self.data.values.push(0.0);
    }

    fn check_leaf_depth(&mut self) {
        match *self.leaf_depth {
            None => *self.leaf_depth = Some(self.depth),
            Some(d) if d != self.depth && self.data.ragged.is_none() => {
                self.data.ragged = Some("data mixes numbers and arrays at one level".into());
            }
            Some(_) => {}
        }
    }
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers, flat or nested")
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.leaf(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.leaf(v as f64);
        Ok(())
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.leaf(v as f64);
        Ok(())
    }

    fn visit_str<E: de::Error>(mut self, _: &str) -> Result<(), E> {
        self.other("a string");
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.other("a boolean");
        Ok(())
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.other("null");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.other("an object");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut count = 0usize;
        while seq
            .next_element_seed(Level {
                data: &mut *self.data,
                depth: self.depth + 1,
                leaf_depth: &mut *self.leaf_depth,
            })?
            .is_some()
        {
            count += 1;
        }
        let dims = &mut self.data.dims;
        if dims.len() <= self.depth {
            dims.resize(self.depth + 1, usize::MAX);
        }
        if dims[self.depth] == usize::MAX {
            dims[self.depth] = count;
        } else if dims[self.depth] != count && self.data.ragged.is_none() {
            self.data.ragged = Some(format!(
                "nested data is ragged: arrays at level {} hold {} and {count} elements",
                self.depth + 1,
                dims[self.depth]
            ));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TensorData, D::Error> {
        let mut data = TensorData::default();
        let mut leaf_depth = None;
        Level {
            data: &mut data,
            depth: 0,
            leaf_depth: &mut leaf_depth,
        }
        .deserialize(d)?;
        // An array level that was never reached (`[]`) leaves no placeholder behind.
        data.dims.retain(|&d| d != usize::MAX);
        Ok(data)
    }
}

/// What the served model looks like, and what the server allows.
#[derive(Clone, Debug)]
pub struct ModelShape {
    /// Feature names, in order (their count is `d`).
    pub features: Vec<String>,
    /// Number of classes.
    pub classes: usize,
    /// Most rows in one request (`--max-batch`).
    pub max_batch: usize,
    /// Answer labels only (`--labels-only`).
    pub labels_only: bool,
    /// Aggregation when the request names none (the run's).
    pub aggregation: Aggregation,
    /// The class names in index order, when the run's labels are names (`run.json`'s
    /// `class_names`): answers then carry [`CLASS_NAME`].
    pub class_names: Option<std::sync::Arc<[String]>>,
}

/// Which outputs a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// `label` only.
    Label,
    /// `label` and `probabilities`.
    Probabilities,
    /// `label`, `top_k_labels` and `top_k_probabilities`, with k.
    TopK(usize),
}

/// A checked inference request: the rows and how to answer them.
#[derive(Clone, Debug, PartialEq)]
pub struct Ask {
    /// The request's `id`, echoed.
    pub id: Option<String>,
    /// Rows, row-major, `rows × d` finite values.
    pub x: Vec<f32>,
    /// Number of rows (at least 1, at most `max_batch`).
    pub rows: usize,
    /// How the members are combined.
    pub aggregation: Aggregation,
    /// Which outputs are produced.
    pub output: OutputKind,
    /// Output tensors to return, if the request named them.
    pub only: Option<Vec<String>>,
}

/// What a requested output asks for itself, beyond being sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputForm {
    /// `binary_data`, when given: sent as binary data (`true`) or as JSON (`false`), whatever
    /// the request's `binary_data_output` says.
    pub binary: Option<bool>,
    /// `classification`: the k best classes as `"probability:class"` strings instead of the
    /// tensor (`probabilities` only).
    pub classification: Option<usize>,
}

/// How the answer to one REST request is written: which outputs go as binary data after the
/// JSON, and which as classification strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// `binary_data_output`: every output is binary unless it says `binary_data: false`.
    pub binary_output: bool,
    /// The outputs the request named, with what each asked for (empty when it named none).
    pub forms: Vec<(String, OutputForm)>,
}

impl Reply {
    /// Whether output `name` is sent as binary data, and its classification count.
    pub fn form(&self, name: &str) -> (bool, Option<usize>) {
        let own = self
            .forms
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        (own.binary.unwrap_or(self.binary_output), own.classification)
    }
}

/// A checked REST inference request: the rows and how to answer them, and how to write the
/// answer.
#[derive(Clone, Debug, PartialEq)]
pub struct RestRequest {
    /// The rows and the answer's content, as every transport has them.
    pub ask: Ask,
    /// How the answer's body is written.
    pub reply: Reply,
}

/// Parse and check a JSON inference request body (no binary data). The request's choices of
/// binary or classification outputs are checked but not kept: a REST server uses
/// [`parse_request`].
pub fn parse_infer(body: &[u8], model: &ModelShape) -> Result<Ask, Refusal> {
    parse_request(body, &HeaderMap::new(), model).map(|r| r.ask)
}

/// Parse and check a REST inference request: its body, already decompressed
/// ([`decode_body`]), and its headers, of which `Inference-Header-Content-Length` says where the
/// JSON ends and binary tensor data begins.
pub fn parse_request(
    body: &[u8],
    headers: &HeaderMap,
    model: &ModelShape,
) -> Result<RestRequest, Refusal> {
    let (json, binary) = split_body(body, headers)?;
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::bad_request(match binary {
            None => "the request body is empty: send an inference request as JSON".to_string(),
            Some(_) => format!(
                "the JSON part of the body (its first {} bytes, as the header \
                 {HEADER_LENGTH_NAME} says) is empty: it must hold the inference request",
                json.len()
            ),
        }));
    }
    let req: InferRequest = serde_json::from_slice(json).map_err(|e| {
        let r = json_refusal(json, &e);
        match binary {
            None => bytes_after_json(json).unwrap_or(r),
            Some(_) => Refusal {
                message: format!(
                    "{} (in the JSON part of the body: its first {} bytes, as the header \
                     {HEADER_LENGTH_NAME} says)",
                    r.message,
                    json.len()
                ),
                ..r
            },
        }
    })?;
    let (aggregation, output) = parse_parameters(req.parameters.as_ref(), model)?;
    let binary_output = req
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let forms = requested_outputs(req.outputs.as_deref(), output, model)?;
    let (x, rows) = check_input(req.inputs, binary, model)?;
    let only = forms
        .as_ref()
        .map(|f| f.iter().map(|(name, _)| name.clone()).collect());
    Ok(RestRequest {
        ask: Ask {
            id: req.id,
            x,
            rows,
            aggregation,
            output,
            only,
        },
        reply: Reply {
            binary_output,
            forms: forms.unwrap_or_default(),
        },
    })
}

/// When `body` is a whole inference request followed by more bytes (binary data sent without
/// the header that frames it), the refusal that says so.
fn bytes_after_json(body: &[u8]) -> Option<Refusal> {
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<InferRequest>();
    let req = stream.next()?.ok()?;
    let after = body.len() - stream.byte_offset();
    if let Err(r) = binary_slices(&req.inputs, None) {
        return Some(r);
    }
    Some(Refusal::bad_request(format!(
        "{after} bytes follow the JSON request: binary data after it needs the header \
         {HEADER_LENGTH_NAME} (the JSON part's length) and parameters.binary_data_size on its \
         input"
    )))
}

/// The header that gives the JSON part's length, as it is written in messages.
const HEADER_LENGTH_NAME: &str = "Inference-Header-Content-Length";

/// The JSON part of `body` and, when `Inference-Header-Content-Length` is given, the binary
/// data after it (possibly empty).
fn split_body<'a>(
    body: &'a [u8],
    headers: &HeaderMap,
) -> Result<(&'a [u8], Option<&'a [u8]>), Refusal> {
    let mut values = headers.get_all(HEADER_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok((body, None));
    };
    if values.next().is_some() {
        return Err(Refusal::bad_request(format!(
            "the header {HEADER_LENGTH_NAME} is given more than once: give it once, as the \
             length in bytes of the JSON part of the body"
        )));
    }
    let n = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            Refusal::bad_request(format!(
                "the header {HEADER_LENGTH_NAME} must be the length in bytes of the JSON part \
                 of the body (a non-negative integer), not '{}'",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })?;
    if n > body.len() {
        return Err(Refusal::bad_request(format!(
            "the header {HEADER_LENGTH_NAME} says the JSON part of the body is {n} bytes, but \
             the body (decompressed, if it was compressed) holds only {} bytes",
            body.len()
        )));
    }
    let (json, rest) = body.split_at(n);
    Ok((json, Some(rest)))
}

/// A refusal for a body that is not a valid request, naming bare `NaN` and `Infinity` tokens
/// (which some JSON writers emit, and JSON does not allow) as what they are.
pub fn json_refusal(body: &[u8], e: &serde_json::Error) -> Refusal {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Refusal::bad_request(format!("invalid inference request: {e}")),
        Category::Syntax | Category::Eof | Category::Io => {
            if let Some(token) = non_finite_token_near(body, e.line(), e.column()) {
                Refusal::bad_request(format!(
                    "input data holds {token} (line {}, column {}): features must be finite \
                     numbers, and JSON has no NaN or Infinity",
                    e.line(),
                    e.column()
                ))
            } else {
                Refusal::bad_request(format!("malformed JSON: {e}"))
            }
        }
    }
}

/// `NaN`, `Infinity` or `-Infinity` as a bare token near (line, column), 1-based.
fn non_finite_token_near(body: &[u8], line: usize, column: usize) -> Option<&'static str> {
    let start = body
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let at = (start + column).min(body.len());
    let from = at.saturating_sub(12);
    let to = (at + 12).min(body.len());
    let window = &body[from..to];
    for token in ["-Infinity", "Infinity", "NaN"] {
        if let Some(i) = window
            .windows(token.len())
            .position(|w| w == token.as_bytes())
        {
            let before = (from + i).checked_sub(1).map(|j| body[j]);
            let after = body.get(from + i + token.len()).copied();
            if before != Some(b'"') && after != Some(b'"') {
                return Some(token);
            }
        }
    }
    None
}

fn parse_parameters(
    params: Option<&Map<String, Value>>,
    model: &ModelShape,
) -> Result<(Aggregation, OutputKind), Refusal> {
    let mut aggregation = model.aggregation;
    let mut output: Option<&str> = None;
    let mut top_k: Option<usize> = None;
    for (key, value) in params.into_iter().flatten() {
        match key.as_str() {
            "aggregation" => {
                aggregation = match value.as_str() {
                    Some("mean") => Aggregation::Mean,
                    Some("vote") => Aggregation::Vote,
                    Some("weighted") => Aggregation::Weighted,
                    _ => {
                        return Err(Refusal::bad_request(format!(
                            "parameter 'aggregation' must be \"mean\", \"vote\" or \"weighted\", not {value}"
                        )))
                    }
                }
            }
            "output" => {
                output = match value.as_str() {
                    Some(o @ ("label" | "probabilities" | "top_k")) => Some(o),
                    _ => {
                        return Err(Refusal::bad_request(format!(
                            "parameter 'output' must be \"label\", \"probabilities\" or \"top_k\", not {value}"
                        )))
                    }
                }
            }
            "top_k" => {
                let k = value
                    .as_u64()
                    .filter(|&k| k >= 1 && k <= model.classes as u64);
                match k {
                    Some(k) => top_k = Some(k as usize),
                    None => {
                        return Err(Refusal::bad_request(format!(
                            "parameter 'top_k' must be an integer from 1 to {} (the number of classes), not {value}",
                            model.classes
                        )))
                    }
                }
            }
            "binary_data_output" | "sequence_start" | "sequence_end" => {
                if !value.is_boolean() {
                    return Err(Refusal::bad_request(format!(
                        "parameter '{key}' must be true or false, not {value}"
                    )));
                }
            }
            "sequence_id" => {
                if !(value.is_u64() || value.is_string()) {
                    return Err(Refusal::bad_request(format!(
                        "parameter 'sequence_id' must be a non-negative integer or a string, not {value}"
                    )));
                }
            }
            "priority" | "timeout" => {
                if !value.is_u64() {
                    return Err(Refusal::bad_request(format!(
                        "parameter '{key}' must be a non-negative integer, not {value}"
                    )));
                }
            }
            other => {
                return Err(Refusal::bad_request(format!(
                    "unknown parameter '{other}'; this model takes {}, and the protocol's {}",
                    PARAMETERS.join(", "),
                    PROTOCOL_PARAMETERS.join(", ")
                )))
            }
        }
    }
    let kind = match (output, top_k) {
        (None | Some("top_k"), Some(k)) => OutputKind::TopK(k),
        (Some("top_k"), None) => {
            return Err(Refusal::bad_request(
                "output \"top_k\" needs the parameter 'top_k' (how many classes)",
            ))
        }
        (Some(o), Some(_)) => {
            return Err(Refusal::bad_request(format!(
                "parameter 'top_k' asks for output \"top_k\", but 'output' is \"{o}\""
            )))
        }
        (Some("label"), None) => OutputKind::Label,
        (Some(_), None) => OutputKind::Probabilities,
        (None, None) if model.labels_only => OutputKind::Label,
        (None, None) => OutputKind::Probabilities,
    };
    if model.labels_only && kind != OutputKind::Label {
        return Err(labels_only());
    }
    Ok((aggregation, kind))
}

fn labels_only() -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "this server answers labels only (--labels-only): ask for output \"label\"",
    )
}

/// The output tensors `kind` produces for `model`: [`CLASS_NAME`] after the others when its
/// classes have names.
pub fn produced(kind: OutputKind, model: &ModelShape) -> Vec<&'static str> {
    let mut names = match kind {
        OutputKind::Label => vec![LABEL],
        OutputKind::Probabilities => vec![LABEL, PROBABILITIES],
        OutputKind::TopK(_) => vec![LABEL, TOP_K_LABELS, TOP_K_PROBABILITIES],
    };
    if model.class_names.is_some() {
        names.push(CLASS_NAME);
    }
    names
}

/// The outputs a request names, each with what it asks for; `None` when it names none.
fn requested_outputs(
    outputs: Option<&[RequestedOutput]>,
    kind: OutputKind,
    model: &ModelShape,
) -> Result<Option<Vec<(String, OutputForm)>>, Refusal> {
    let Some(outputs) = outputs.filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let available = produced(kind, model);
    let mut named: Vec<(String, OutputForm)> = Vec::new();
    for o in outputs {
        if !available.contains(&o.name.as_str()) {
            let known = [LABEL, PROBABILITIES, TOP_K_LABELS, TOP_K_PROBABILITIES];
            if model.labels_only && known.contains(&o.name.as_str()) {
                return Err(labels_only());
            }
            return Err(Refusal::bad_request(format!(
                "output '{}' is not produced for this request; it produces {}",
                o.name,
                available.join(", ")
            )));
        }
        if named.iter().any(|(n, _)| *n == o.name) {
            return Err(Refusal::bad_request(format!(
                "output '{}' is named twice in 'outputs'",
                o.name
            )));
        }
        let form = output_form(o, model)?;
        named.push((o.name.clone(), form));
    }
    Ok(Some(named))
}

/// What one requested output's parameters ask for.
fn output_form(o: &RequestedOutput, model: &ModelShape) -> Result<OutputForm, Refusal> {
    let mut form = OutputForm::default();
    for (key, value) in o.parameters.iter().flatten() {
        match key.as_str() {
            "binary_data" => {
                let Some(b) = value.as_bool() else {
                    return Err(Refusal::bad_request(format!(
                        "output '{}': parameter 'binary_data' must be true or false, not {value}",
                        o.name
                    )));
                };
                form.binary = Some(b);
            }
            "classification" => {
                if o.name != PROBABILITIES {
                    return Err(Refusal::bad_request(format!(
                        "output '{}': parameter 'classification' applies to output \
                         '{PROBABILITIES}' only (the parameter 'top_k' gives the best classes \
                         as tensors)",
                        o.name
                    )));
                }
                let k = value
                    .as_u64()
                    .filter(|&k| k >= 1 && k <= model.classes as u64);
                let Some(k) = k else {
                    return Err(Refusal::bad_request(format!(
                        "output '{PROBABILITIES}': parameter 'classification' must be an integer \
                         from 1 to {} (the number of classes), not {value}",
                        model.classes
                    )));
                };
                form.classification = Some(k as usize);
            }
            k if k.starts_with("shared_memory_") => {
                return Err(shared_memory(&format!("output '{}'", o.name), k))
            }
            _ => {}
        }
    }
    Ok(form)
}

fn shared_memory(what: &str, key: &str) -> Refusal {
    Refusal::bad_request(format!(
        "{what} has the parameter '{key}': this server has no shared memory; send the data in \
         the request, as JSON or as binary data"
    ))
}

/// The binary data of each input, cut from `binary` (the body after the JSON part) in input
/// order by their `binary_data_size`; `None` for an input without one.
fn binary_slices<'a>(
    inputs: &[InputTensor],
    binary: Option<&'a [u8]>,
) -> Result<Vec<Option<&'a [u8]>>, Refusal> {
    let total = binary.map_or(0, <[u8]>::len);
    let mut rest = binary;
    let mut slices = Vec::with_capacity(inputs.len());
    for input in inputs {
        let Some(size) = input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        else {
            slices.push(None);
            continue;
        };
        let name = &input.name;
        let Some(tail) = rest else {
            return Err(Refusal::bad_request(format!(
                "input '{name}' has parameters.binary_data_size, but the request has no header \
                 {HEADER_LENGTH_NAME}: binary data needs it, to say where the JSON part of the \
                 body ends"
            )));
        };
        let Some(n) = size.as_u64() else {
            return Err(Refusal::bad_request(format!(
                "input '{name}': parameter 'binary_data_size' must be a byte count (a \
                 non-negative integer), not {size}"
            )));
        };
        let n = match usize::try_from(n) {
            Ok(n) if n <= tail.len() => n,
            _ => {
                return Err(Refusal::bad_request(format!(
                    "input '{name}': binary_data_size {n} reaches past the end of the body: \
                     {} of its {total} bytes of binary data are left for this input",
                    tail.len()
                )))
            }
        };
        let (mine, left) = tail.split_at(n);
        rest = Some(left);
        slices.push(Some(mine));
    }
    if let Some(left) = rest.filter(|l| !l.is_empty()) {
        return Err(Refusal::bad_request(format!(
            "the body holds {total} bytes of binary data after the JSON part, but the inputs' \
             binary_data_size add up to {}: {} bytes are left over",
            total - left.len(),
            left.len()
        )));
    }
    Ok(slices)
}

/// An input's elements: parsed JSON `data`, or binary data still to be read.
enum Elements<'a> {
    Json(TensorData),
    Binary(&'a [u8]),
}

fn check_input(
    inputs: Vec<InputTensor>,
    binary: Option<&[u8]>,
    model: &ModelShape,
) -> Result<(Vec<f32>, usize), Refusal> {
    let d = model.features.len();
    let count = inputs.len();
    let slices = binary_slices(&inputs, binary)?;
    let mut inputs = inputs.into_iter().zip(slices);
    let (Some((input, bytes)), None) = (inputs.next(), inputs.next()) else {
        return Err(Refusal::bad_request(format!(
            "expected exactly one input tensor named '{INPUT}', got {count}"
        )));
    };
    if input.name != INPUT {
        return Err(Refusal::bad_request(format!(
            "unknown input '{}': this model takes one input named '{INPUT}'",
            input.name
        )));
    }
    if let Some(key) = input
        .parameters
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .find(|k| k.starts_with("shared_memory_"))
    {
        return Err(shared_memory(&format!("input '{INPUT}'"), key));
    }
    if input.datatype != "FP32" {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}' has datatype '{}': this model takes FP32",
            input.datatype
        )));
    }
    let elements = match (input.data, bytes) {
        (Some(_), Some(_)) => {
            return Err(Refusal::bad_request(format!(
                "input '{INPUT}' has both data and parameters.binary_data_size: send its \
                 elements one way"
            )))
        }
        (None, None) => {
            return Err(Refusal::bad_request(format!(
                "input '{INPUT}' has no data: send its elements as 'data', or as binary data \
                 after the JSON part of the body, with parameters.binary_data_size and the \
                 header {HEADER_LENGTH_NAME}"
            )))
        }
        (Some(data), None) => Elements::Json(data),
        (None, Some(b)) => Elements::Binary(b),
    };
    if let Elements::Json(data) = &elements {
        if let Some((i, kind)) = data.non_number {
            return Err(Refusal::bad_request(format!(
                "input '{INPUT}': element {i} of data is {kind}: FP32 data must be numbers"
            )));
        }
        if let Some(why) = &data.ragged {
            return Err(Refusal::bad_request(format!("input '{INPUT}': {why}")));
        }
    }
    let shape = &input.shape;
    if shape.len() != 2 || shape.iter().any(|&s| s < 0) {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}' has shape {shape:?}: expected [rows, features] = [n, {d}]"
        )));
    }
    let (rows, cols) = (shape[0] as usize, shape[1] as usize);
    if rows == 0 {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': the batch is empty (shape {shape:?}); send at least one row"
        )));
    }
    if rows > model.max_batch {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': {rows} rows exceed this server's limit of {} per request (--max-batch)",
            model.max_batch
        )));
    }
    let holds = rows.checked_mul(cols);
    match &elements {
        Elements::Json(data) => {
            if holds != Some(data.values.len()) {
                return Err(Refusal::bad_request(format!(
                    "input '{INPUT}': shape {shape:?} holds {} values, but data holds {}",
                    holds.map_or_else(|| "too many".to_string(), |h| h.to_string()),
                    data.values.len()
                )));
            }
            if data.dims.len() > 1 && data.dims != [rows, cols] {
                let dims: Vec<String> = data.dims.iter().map(usize::to_string).collect();
                return Err(Refusal::bad_request(format!(
                    "input '{INPUT}': nested data is {} but shape is {shape:?}",
                    dims.join(" x ")
                )));
            }
        }
        Elements::Binary(b) => {
            let takes = holds.and_then(|h| h.checked_mul(4));
            if takes != Some(b.len()) {
                return Err(Refusal::bad_request(format!(
                    "input '{INPUT}': binary_data_size is {} bytes, but shape {shape:?} of FP32 \
                     takes {} (rows x features x 4)",
                    b.len(),
                    takes.map_or_else(|| "too many".to_string(), |t| t.to_string()),
                )));
            }
        }
    }
    if cols != d {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': rows have {cols} features, but this model takes {d}"
        )));
    }
    let (values, too_large) = match elements {
        Elements::Json(data) => (data.values, " (too large for FP32)"),
        Elements::Binary(b) => (
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<f32>>(),
            "",
        ),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let what = if values[i].is_nan() {
            "NaN".to_string()
        } else {
            format!("infinite{too_large}")
        };
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': row {}, feature {} ('{}') is {what}: features must be finite",
            i / d,
            i % d,
            model.features[i % d]
        )));
    }
    Ok((values, rows))
}

/// One output tensor of a response.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputTensor {
    /// Tensor name.
    pub name: &'static str,
    /// `INT64`, `FP32` or `BYTES`.
    pub datatype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: OutputData,
}

/// The elements of an output tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OutputData {
    /// INT64 elements.
    Int64(Vec<i64>),
    /// FP32 elements.
    Fp32(Vec<f32>),
    /// BYTES elements (UTF-8 strings: class names).
    Bytes(Vec<String>),
}

/// What every answer says about how it was made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnswerParameters {
    /// Aggregation used.
    pub aggregation: &'static str,
    /// Shards left out of the vote because a deletion request that touches them is waiting for
    /// its retrained version (empty almost always).
    pub excluded_shards: Vec<usize>,
    /// Shard models that voted.
    pub shards_voting: usize,
}

/// An inference response.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The ensemble version that produced every row of this answer.
    pub model_version: String,
    /// The request's `id`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// How the answer was made.
    pub parameters: AnswerParameters,
    /// Output tensors.
    pub outputs: Vec<OutputTensor>,
}

/// The output tensors for `pred` (`rows × classes`) as `ask` wants them; with `class_names`
/// (the model's, if its classes have names) they end with [`CLASS_NAME`].
pub fn outputs(
    pred: Prediction,
    classes: usize,
    class_names: Option<&[String]>,
    ask: &Ask,
) -> Vec<OutputTensor> {
    let n = ask.rows;
    let names = class_names.map(|names| OutputTensor {
        name: CLASS_NAME,
        datatype: "BYTES",
        shape: vec![n],
        data: OutputData::Bytes(
            pred.labels
                .iter()
                .map(|&l| names.get(l as usize).cloned().unwrap_or_default())
                .collect(),
        ),
    });
    let mut out = vec![OutputTensor {
        name: LABEL,
        datatype: "INT64",
        shape: vec![n],
        data: OutputData::Int64(pred.labels.iter().map(|&l| l as i64).collect()),
    }];
    match ask.output {
        OutputKind::Label => {}
        OutputKind::Probabilities => out.push(OutputTensor {
            name: PROBABILITIES,
            datatype: "FP32",
            shape: vec![n, classes],
            data: OutputData::Fp32(pred.probs),
        }),
        OutputKind::TopK(k) => {
            let (mut labels, mut probs) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
            for row in pred.probs.chunks(classes) {
                for c in top_k(row, k) {
                    labels.push(c as i64);
                    probs.push(row[c]);
                }
            }
            out.push(OutputTensor {
                name: TOP_K_LABELS,
                datatype: "INT64",
                shape: vec![n, k],
                data: OutputData::Int64(labels),
            });
            out.push(OutputTensor {
                name: TOP_K_PROBABILITIES,
                datatype: "FP32",
                shape: vec![n, k],
                data: OutputData::Fp32(probs),
            });
        }
    }
    out.extend(names);
    if let Some(only) = &ask.only {
        out.retain(|t| only.iter().any(|o| o == t.name));
    }
    out
}

/// Indices of the `k` largest values, largest first; ties go to the smaller index (as
/// [`crate::ensemble::argmax`] does, so the first is always the label).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Triton's classification strings for FP32 `probs` (`rows × classes`): for each row, its `k`
/// best classes, best first, as `"probability:class"`, or `"probability:class:name"` with the
/// class `names`; the probability as the shortest decimal that reads back as the same FP32.
pub fn classification(
    probs: &[f32],
    classes: usize,
    k: usize,
    names: Option<&[String]>,
) -> Vec<String> {
    if classes == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(probs.len() / classes * k);
    for row in probs.chunks(classes) {
        for c in top_k(row, k) {
            match names.and_then(|n| n.get(c)) {
                Some(name) => out.push(format!("{}:{c}:{name}", row[c])),
                None => out.push(format!("{}:{c}", row[c])),
            }
        }
    }
    out
}

/// An answer's body as sent: the JSON answer, then the binary data of any binary outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerBody {
    /// The whole body.
    pub bytes: Vec<u8>,
    /// The JSON part's length when binary data follows it (the value of the answer's
    /// `Inference-Header-Content-Length`); `None` for a plain JSON answer.
    pub json_len: Option<usize>,
}

impl AnswerBody {
    /// The answer's `Content-Type`.
    pub fn content_type(&self) -> &'static str {
        if self.json_len.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        }
    }
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: &'a AnswerParameters,
    outputs: Vec<WireOutput<'a>>,
}

#[derive(Serialize)]
struct WireOutput<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<WireData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireData<'a> {
    Tensor(&'a OutputData),
    Strings(Vec<String>),
}

impl WireData<'_> {
    /// Append the elements as the binary tensor data extension lays them out: little-endian,
    /// row-major; a BYTES element as its length (4 bytes) and then its bytes.
    fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            WireData::Tensor(data) => write_raw(data, out),
            WireData::Strings(v) => write_strings(v, out),
        }
    }
}

/// Append `strings` as BYTES elements are laid out in binary and raw tensor data: each as its
/// length (4 bytes, little-endian) and then its bytes.
fn write_strings(strings: &[String], out: &mut Vec<u8>) {
    for s in strings {
        // A class name is at most 256 bytes and a classification string a few more, far
        // below 4 GiB.
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
}

/// Append the elements of `data` as binary (REST) and raw (gRPC) tensor data lay them out:
/// little-endian, row-major, a BYTES element as its 4-byte length and then its bytes.
pub fn write_raw(data: &OutputData, out: &mut Vec<u8>) {
    match data {
        OutputData::Int64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        OutputData::Fp32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        OutputData::Bytes(v) => write_strings(v, out),
    }
}

/// The body of the answer `response` to a request that asked for `reply`, from a model whose
/// classes have `class_names` (if any): exactly `serde_json::to_vec(response)` when no output
/// is binary or a classification.
pub fn write_response(
    response: &InferResponse,
    reply: &Reply,
    class_names: Option<&[String]>,
) -> Result<AnswerBody, serde_json::Error> {
    let mut binary = Vec::new();
    let mut any_binary = false;
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for t in &response.outputs {
        let (as_binary, classes) = reply.form(t.name);
        let (datatype, shape, data) = match (classes, &t.data, t.shape.as_slice()) {
            (Some(k), OutputData::Fp32(probs), &[rows, c]) => (
                "BYTES",
                vec![rows, k.min(c)],
                WireData::Strings(classification(probs, c, k, class_names)),
            ),
            _ => (t.datatype, t.shape.clone(), WireData::Tensor(&t.data)),
        };
        let (parameters, data) = if as_binary {
            let start = binary.len();
            data.write_binary(&mut binary);
            any_binary = true;
            (
                Some(BinarySize {
                    binary_data_size: binary.len() - start,
                }),
                None,
            )
        } else {
            (None, Some(data))
        };
        outputs.push(WireOutput {
            name: t.name,
            datatype,
            shape,
            parameters,
            data,
        });
    }
    let mut bytes = serde_json::to_vec(&WireResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        parameters: &response.parameters,
        outputs,
    })?;
    let json_len = any_binary.then_some(bytes.len());
    bytes.extend_from_slice(&binary);
    Ok(AnswerBody { bytes, json_len })
}

/// A content coding the server reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// gzip (RFC 1952).
    Gzip,
    /// `deflate`: the zlib format (RFC 1950), as RFC 9110 defines the coding.
    Deflate,
}

impl Coding {
    /// The coding's name in `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

fn unsupported_encoding(what: String) -> Refusal {
    Refusal::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("{what}: send the body as it is, or compressed with gzip or deflate"),
    )
    .with_header(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static(ACCEPTED_ENCODINGS),
    )
}

/// The request body with its `Content-Encoding` undone: gzip, deflate (zlib) or none
/// (`identity`). It is never inflated past `limit` bytes: a body that would be larger is
/// refused with 413.
pub fn decode_body<'a>(
    body: &'a [u8],
    headers: &HeaderMap,
    limit: usize,
) -> Result<Cow<'a, [u8]>, Refusal> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Err(unsupported_encoding(format!(
                "Content-Encoding '{}' is not supported",
                String::from_utf8_lossy(value.as_bytes())
            )));
        };
        codings.extend(
            text.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
                .map(str::to_ascii_lowercase),
        );
    }
    let coding = match codings.as_slice() {
        [] => return Ok(Cow::Borrowed(body)),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            other => {
                return Err(unsupported_encoding(format!(
                    "Content-Encoding '{other}' is not supported"
                )))
            }
        },
        more => {
            return Err(unsupported_encoding(format!(
                "Content-Encoding '{}' applies {} codings one over another, and only one is \
                 supported",
                more.join(", "),
                more.len()
            )))
        }
    };
    let mut out = Vec::new();
    // One byte past the limit tells a body at the limit from a larger one.
    let cap = (limit as u64).saturating_add(1);
    let read = match coding {
        Coding::Gzip => flate2::bufread::MultiGzDecoder::new(body)
            .take(cap)
            .read_to_end(&mut out)
            .map(|_| None),
        Coding::Deflate => {
            let mut d = flate2::bufread::ZlibDecoder::new(body);
            (&mut d)
                .take(cap)
                .read_to_end(&mut out)
                .map(|_| Some(d.get_ref().len()))
        }
    };
    if out.len() > limit {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {limit} bytes once decompressed \
                 (--max-body-bytes)"
            ),
        ));
    }
    let name = coding.name();
    match read {
        Err(e) => Err(Refusal::bad_request(format!(
            "the request body cannot be decompressed (Content-Encoding: {name}): {e}"
        ))),
        Ok(Some(left)) if left > 0 => Err(Refusal::bad_request(format!(
            "the request body holds {left} bytes after the end of its {name} data"
        ))),
        Ok(_) => Ok(Cow::Owned(out)),
    }
}

/// The coding to compress an answer with, from the request's `Accept-Encoding`: gzip or
/// deflate, whichever has the higher weight (gzip when equal); `None` when neither is
/// acceptable.
pub fn response_coding(headers: &HeaderMap) -> Option<Coding> {
    let (mut gzip, mut deflate, mut any) = (None, None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            // A weight that does not parse makes the coding unacceptable.
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().unwrap_or(0.0))
                })
                .unwrap_or(1.0);
            match name.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q),
                "deflate" => deflate = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
    }
    let gzip = gzip.or(any).unwrap_or(0.0);
    let deflate = deflate.or(any).unwrap_or(0.0);
    if gzip > 0.0 && gzip >= deflate {
        Some(Coding::Gzip)
    } else if deflate > 0.0 {
        Some(Coding::Deflate)
    } else {
        None
    }
}

/// `bytes` compressed with `coding` at the fastest level, or `bytes` as they are (and no
/// coding) if compressing fails, which writing into memory does not.
pub fn compress(bytes: Vec<u8>, coding: Coding) -> (Vec<u8>, Option<Coding>) {
    let level = flate2::Compression::fast();
    let out = Vec::with_capacity(bytes.len() / 4 + 64);
    let compressed = match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, level);
            e.write_all(&bytes).and_then(|()| e.finish())
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(out, level);
            e.write_all(&bytes).and_then(|()| e.finish())
        }
    };
    match compressed {
        Ok(c) => (c, Some(coding)),
        Err(_) => (bytes, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelShape {
        ModelShape {
            features: vec!["a".into(), "b".into(), "c".into()],
            classes: 4,
            max_batch: 2,
            labels_only: false,
            aggregation: Aggregation::Mean,
            class_names: None,
        }
    }

    fn refuse(body: &str) -> String {
        parse_infer(body.as_bytes(), &model()).unwrap_err().message
    }

    const ONE: &str =
        r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3.5]}]}"#;

    #[test]
    fn flat_and_nested_data_parse_to_the_same_rows() {
        let flat = parse_infer(
            br#"{"id":"x","inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#,
            &model(),
        )
        .unwrap();
        let nested = parse_infer(
            br#"{"id":"x","inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6]]}]}"#,
            &model(),
        )
        .unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(flat.rows, 2);
        assert_eq!(flat.id.as_deref(), Some("x"));
        assert_eq!(flat.output, OutputKind::Probabilities);
        assert_eq!(parse_infer(ONE.as_bytes(), &model()).unwrap().rows, 1);
    }

    #[test]
    fn every_bad_input_is_named() {
        assert!(refuse("").contains("body is empty"));
        assert!(refuse("{\"inputs\": [").contains("malformed JSON"));
        assert!(refuse(&ONE.replace("FP32", "INT32")).contains("datatype 'INT32'"));
        assert!(
            refuse(&ONE.replace("[1,2,3.5]", "[1,2]")).contains("holds 3 values, but data holds 2")
        );
        assert!(
            refuse(&ONE.replace("[1,3]", "[1,2]").replace("[1,2,3.5]", "[1,2]"))
                .contains("rows have 2 features, but this model takes 3")
        );
        assert!(refuse(&ONE.replace("3.5", "NaN")).contains("NaN"));
        assert!(refuse(&ONE.replace("3.5", "-Infinity")).contains("-Infinity"));
        assert!(refuse(&ONE.replace("3.5", "1e39")).contains("feature 2 ('c') is infinite"));
        assert!(
            refuse(&ONE.replace("[1,3]", "[0,3]").replace("[1,2,3.5]", "[]")).contains("empty")
        );
        assert!(refuse(
            &ONE.replace("[1,3]", "[3,3]")
                .replace("[1,2,3.5]", "[1,2,3,4,5,6,7,8,9]")
        )
        .contains("3 rows exceed"));
        assert!(refuse(&ONE.replace("[1,2,3.5]", "[[1,2],[3]]")).contains("ragged"));
        assert!(refuse(&ONE.replace("[1,2,3.5]", "[1,\"2\",3]"))
            .contains("element 1 of data is a string"));
        assert!(refuse(&ONE.replace("\"input\"", "\"x\"")).contains("unknown input 'x'"));
        assert!(refuse(&ONE.replace("[1,3]", "[3]")).contains("expected [rows, features]"));
        assert!(refuse(r#"{"inputs":[]}"#).contains("exactly one input"));
        assert!(refuse(r#"{"input":[]}"#).contains("missing field `inputs`"));
        let with =
            |p: &str| ONE.replace("{\"inputs\"", &format!("{{\"parameters\":{p},\"inputs\""));
        assert!(refuse(&with(r#"{"aggregation":"max"}"#)).contains("'aggregation'"));
        assert!(refuse(&with(r#"{"top_k":5}"#)).contains("from 1 to 4"));
        assert!(refuse(&with(r#"{"aggregate":"vote"}"#)).contains("unknown parameter 'aggregate'"));
        assert!(refuse(&with(r#"{"output":"top_k"}"#)).contains("needs the parameter 'top_k'"));
    }

    #[test]
    fn a_nan_inside_a_string_is_not_taken_for_a_number() {
        let body = ONE
            .replace("{\"inputs\"", "{\"id\":\"NaN\",\"inputs\"")
            .replace("3.5", "x");
        assert!(
            refuse(&body).contains("malformed JSON"),
            "{}",
            refuse(&body)
        );
    }

    #[test]
    fn parameters_choose_aggregation_and_outputs() {
        let with = |p: &str| {
            parse_infer(
                ONE.replace("{\"inputs\"", &format!("{{\"parameters\":{p},\"inputs\""))
                    .as_bytes(),
                &model(),
            )
            .unwrap()
        };
        let a = with(r#"{"aggregation":"vote","top_k":2}"#);
        assert_eq!(a.aggregation, Aggregation::Vote);
        assert_eq!(a.output, OutputKind::TopK(2));
        assert_eq!(with(r#"{"output":"label"}"#).output, OutputKind::Label);
        let pred = Prediction {
            labels: vec![2],
            probs: vec![0.1, 0.3, 0.5, 0.1],
        };
        let out = outputs(pred.clone(), 4, None, &a);
        assert_eq!(out[1].data, OutputData::Int64(vec![2, 1]));
        assert_eq!(out[2].data, OutputData::Fp32(vec![0.5, 0.3]));
        // Ties go to the smaller label, like argmax.
        assert_eq!(top_k(&[0.1, 0.4, 0.4, 0.1], 3), [1, 2, 0]);
        let mut only = a.clone();
        only.only = Some(vec![LABEL.into()]);
        assert_eq!(outputs(pred, 4, None, &only).len(), 1);
    }

    #[test]
    fn labels_only_refuses_probabilities() {
        let m = ModelShape {
            labels_only: true,
            ..model()
        };
        assert_eq!(
            parse_infer(ONE.as_bytes(), &m).unwrap().output,
            OutputKind::Label
        );
        for p in [r#"{"output":"probabilities"}"#, r#"{"top_k":1}"#] {
            let body = ONE.replace("{\"inputs\"", &format!("{{\"parameters\":{p},\"inputs\""));
            let r = parse_infer(body.as_bytes(), &m).unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN);
        }
        let body = ONE.replace(
            "{\"inputs\"",
            r#"{"outputs":[{"name":"probabilities"}],"inputs""#,
        );
        assert_eq!(
            parse_infer(body.as_bytes(), &m).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    /// Headers with `Inference-Header-Content-Length: n`.
    fn with_length(n: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, HeaderValue::from_str(n).unwrap());
        h
    }

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A binary request: `json` (with `SIZE` replaced by the byte count of `values`), then
    /// `values` as FP32 little-endian; and its headers.
    fn binary(json: &str, values: &[f32]) -> (Vec<u8>, HeaderMap) {
        let data = le(values);
        let json = json.replace("SIZE", &data.len().to_string());
        let headers = with_length(&json.len().to_string());
        let mut body = json.into_bytes();
        body.extend_from_slice(&data);
        (body, headers)
    }

    const BINARY_ONE: &str = r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":SIZE}}]}"#;

    fn refuse_binary(json: &str, values: &[f32]) -> String {
        let (body, headers) = binary(json, values);
        parse_request(&body, &headers, &model())
            .unwrap_err()
            .message
    }

    #[test]
    fn binary_data_parses_to_the_same_rows_as_json_data() {
        let json = parse_request(ONE.as_bytes(), &HeaderMap::new(), &model()).unwrap();
        let (body, headers) = binary(BINARY_ONE, &[1.0, 2.0, 3.5]);
        let bin = parse_request(&body, &headers, &model()).unwrap();
        assert_eq!(json, bin);
        assert_eq!(bin.reply, Reply::default());
        // The header may also frame a body without binary data.
        let framed = parse_request(
            ONE.as_bytes(),
            &with_length(&ONE.len().to_string()),
            &model(),
        )
        .unwrap();
        assert_eq!(framed, json);
        // Values JSON cannot write survive binary data bit for bit.
        let odd = [f32::MIN_POSITIVE / 2.0, -0.0, f32::MAX];
        let (body, headers) = binary(BINARY_ONE, &odd);
        let x = parse_request(&body, &headers, &model()).unwrap().ask.x;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&x), bits(&odd));
    }

    #[test]
    fn every_bad_binary_request_is_named() {
        let three = [1.0, 2.0, 3.0];
        let r = |n: &str| {
            let (body, _) = binary(BINARY_ONE, &three);
            parse_request(&body, &with_length(n), &model())
                .unwrap_err()
                .message
        };
        assert!(
            r("abc").contains("must be the length in bytes"),
            "{}",
            r("abc")
        );
        assert!(r("-1").contains("not '-1'"));
        assert!(r("").contains("Inference-Header-Content-Length"));
        assert!(r("100000").contains("holds only"));
        assert!(r("0").contains("JSON part of the body (its first 0 bytes"));
        assert!(r("10").contains("in the JSON part of the body: its first 10 bytes"));
        let mut twice = with_length("3");
        twice.append(HEADER_LENGTH, HeaderValue::from_static("3"));
        let (body, _) = binary(BINARY_ONE, &three);
        assert!(parse_request(&body, &twice, &model())
            .unwrap_err()
            .message
            .contains("more than once"));
        // binary_data_size without the header.
        let (body, _) = binary(BINARY_ONE, &three);
        let m = parse_request(&body, &HeaderMap::new(), &model())
            .unwrap_err()
            .message;
        assert!(
            m.contains(
                "input 'input' has parameters.binary_data_size, but the request has no header"
            ),
            "{m}"
        );
        // Bytes after a whole JSON request, without the header.
        let m = refuse(&format!("{ONE}\x01\x02\x03"));
        assert!(
            m.contains("3 bytes follow the JSON request: binary data after it needs the header"),
            "{m}"
        );
        // Sizes that do not add up, either way.
        let m = refuse_binary(&BINARY_ONE.replace("SIZE", "16"), &three);
        assert!(
            m.contains("input 'input': binary_data_size 16 reaches past the end"),
            "{m}"
        );
        let m = refuse_binary(&BINARY_ONE.replace("SIZE", "8"), &three);
        assert!(m.contains("add up to 8: 4 bytes are left over"), "{m}");
        let m = refuse_binary(ONE, &three);
        assert!(m.contains("add up to 0: 12 bytes are left over"), "{m}");
        // A byte count that is not rows x d x 4.
        let m = refuse_binary(&BINARY_ONE.replace("[1,3]", "[2,3]"), &three);
        assert!(
            m.contains("binary_data_size is 12 bytes, but shape [2, 3] of FP32 takes 24"),
            "{m}"
        );
        let m = refuse_binary(BINARY_ONE, &[1.0, 2.0]);
        assert!(m.contains("takes 12"), "{m}");
        let m = refuse_binary(&BINARY_ONE.replace("SIZE", "\"12\""), &three);
        assert!(m.contains("must be a byte count"), "{m}");
        let m = refuse_binary(&BINARY_ONE.replace("SIZE", "-12"), &three);
        assert!(m.contains("must be a byte count"), "{m}");
        // Both ways at once, and neither.
        let both = BINARY_ONE.replace("\"parameters\"", "\"data\":[1,2,3],\"parameters\"");
        assert!(refuse_binary(&both, &three).contains("both data and parameters.binary_data_size"));
        let m = refuse(r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32"}]}"#);
        assert!(m.contains("input 'input' has no data"), "{m}");
        // The checks JSON data gets.
        let m = refuse_binary(BINARY_ONE, &[1.0, f32::NAN, 3.0]);
        assert!(m.contains("row 0, feature 1 ('b') is NaN"), "{m}");
        let m = refuse_binary(BINARY_ONE, &[1.0, 2.0, f32::INFINITY]);
        assert!(m.contains("feature 2 ('c') is infinite: features"), "{m}");
        let m = refuse_binary(&BINARY_ONE.replace("[1,3]", "[1,2]"), &[1.0, 2.0]);
        assert!(
            m.contains("rows have 2 features, but this model takes 3"),
            "{m}"
        );
        let m = refuse_binary(&BINARY_ONE.replace("[1,3]", "[3,3]"), &[0.0; 9]);
        assert!(m.contains("3 rows exceed"), "{m}");
        let m = refuse_binary(&BINARY_ONE.replace("FP32", "FP16"), &three);
        assert!(m.contains("datatype 'FP16'"), "{m}");
        let m = refuse_binary(
            &BINARY_ONE.replace("[1,3]", "[4611686018427387904,4]"),
            &three,
        );
        assert!(m.contains("exceed") || m.contains("too many"), "{m}");
        // Shared memory is named, on inputs and outputs.
        let m = refuse(&ONE.replace(
            "\"data\"",
            "\"parameters\":{\"shared_memory_region\":\"r\"},\"data\"",
        ));
        assert!(
            m.contains("input 'input' has the parameter 'shared_memory_region'"),
            "{m}"
        );
    }

    #[test]
    fn two_binary_inputs_take_their_bytes_in_order() {
        let json = r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}},{"name":"extra","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let (body, headers) = binary(json, &[1.0, 2.0, 3.0, 4.0]);
        let m = parse_request(&body, &headers, &model())
            .unwrap_err()
            .message;
        assert!(m.contains("exactly one input"), "{m}");
        let (body, headers) = binary(json, &[1.0, 2.0, 3.0]);
        let m = parse_request(&body, &headers, &model())
            .unwrap_err()
            .message;
        assert!(
            m.contains("input 'extra': binary_data_size 4 reaches past the end"),
            "{m}"
        );
    }

    #[test]
    fn the_protocols_parameters_are_accepted_and_others_named() {
        let with =
            |p: &str| ONE.replace("{\"inputs\"", &format!("{{\"parameters\":{p},\"inputs\""));
        let ok = |p: &str| parse_request(with(p).as_bytes(), &HeaderMap::new(), &model());
        for p in [
            r#"{"binary_data_output":false}"#,
            r#"{"sequence_id":7,"sequence_start":true,"sequence_end":false}"#,
            r#"{"sequence_id":"s-7"}"#,
            r#"{"priority":1,"timeout":1000000}"#,
        ] {
            assert_eq!(
                ok(p).unwrap().ask,
                parse_infer(ONE.as_bytes(), &model()).unwrap(),
                "{p}"
            );
        }
        assert!(
            ok(r#"{"binary_data_output":true}"#)
                .unwrap()
                .reply
                .binary_output
        );
        for (p, needle) in [
            (r#"{"binary_data_output":1}"#, "'binary_data_output' must be true or false"),
            (r#"{"sequence_start":"yes"}"#, "'sequence_start' must be true or false"),
            (r#"{"sequence_id":-1}"#, "'sequence_id' must be a non-negative integer or a string"),
            (r#"{"priority":-1}"#, "'priority' must be a non-negative integer"),
            (r#"{"timeout":1.5}"#, "'timeout' must be a non-negative integer"),
            (r#"{"headers":{}}"#, "unknown parameter 'headers'; this model takes aggregation, output, top_k, and the protocol's binary_data_output"),
        ] {
            let m = ok(p).unwrap_err().message;
            assert!(m.contains(needle), "{p}: {m}");
        }
    }

    #[test]
    fn outputs_say_how_they_are_sent() {
        let with = |o: &str| {
            parse_request(
                ONE.replace("{\"inputs\"", &format!("{{\"outputs\":{o},\"inputs\""))
                    .as_bytes(),
                &HeaderMap::new(),
                &model(),
            )
        };
        let r = with(r#"[{"name":"label","parameters":{"binary_data":true}},{"name":"probabilities","parameters":{"binary_data":false,"classification":2}}]"#).unwrap();
        assert_eq!(
            r.ask.only,
            Some(vec![LABEL.to_string(), PROBABILITIES.to_string()])
        );
        assert_eq!(r.reply.form(LABEL), (true, None));
        assert_eq!(r.reply.form(PROBABILITIES), (false, Some(2)));
        for (o, needle) in [
            (
                r#"[{"name":"label","parameters":{"binary_data":"yes"}}]"#,
                "output 'label': parameter 'binary_data' must be true or false",
            ),
            (
                r#"[{"name":"label","parameters":{"classification":2}}]"#,
                "applies to output 'probabilities' only",
            ),
            (
                r#"[{"name":"probabilities","parameters":{"classification":5}}]"#,
                "'classification' must be an integer from 1 to 4",
            ),
            (
                r#"[{"name":"probabilities","parameters":{"classification":0}}]"#,
                "from 1 to 4",
            ),
            (
                r#"[{"name":"label"},{"name":"label"}]"#,
                "output 'label' is named twice",
            ),
            (
                r#"[{"name":"label","parameters":{"shared_memory_region":"r","shared_memory_byte_size":8}}]"#,
                "output 'label' has the parameter 'shared_memory_",
            ),
        ] {
            let m = with(o).unwrap_err().message;
            assert!(m.contains(needle), "{o}: {m}");
        }
        // Unknown per-output parameters are ignored, as before.
        assert!(with(r#"[{"name":"label","parameters":{"x":1}}]"#).is_ok());
        // Classification shows probabilities: refused by a labels-only server.
        let m = ModelShape {
            labels_only: true,
            ..model()
        };
        let body = ONE.replace(
            "{\"inputs\"",
            r#"{"outputs":[{"name":"probabilities","parameters":{"classification":1}}],"inputs""#,
        );
        assert_eq!(
            parse_request(body.as_bytes(), &HeaderMap::new(), &m)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }

    fn answer(reply: &Reply, ask: &Ask) -> (InferResponse, AnswerBody) {
        answer_from(&model(), reply, ask)
    }

    fn answer_from(model: &ModelShape, reply: &Reply, ask: &Ask) -> (InferResponse, AnswerBody) {
        let pred = Prediction {
            labels: vec![2, 0],
            probs: vec![0.1, 0.3, 0.5, 0.1, 0.7, 0.1, 0.1, 0.1],
        };
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "3".into(),
            id: Some("r".into()),
            parameters: AnswerParameters {
                aggregation: "mean",
                excluded_shards: vec![],
                shards_voting: 2,
            },
            outputs: outputs(pred, model.classes, model.class_names.as_deref(), ask),
        };
        let body = write_response(&response, reply, model.class_names.as_deref()).unwrap();
        (response, body)
    }

    fn two_rows(output: OutputKind) -> Ask {
        Ask {
            id: Some("r".into()),
            x: vec![0.0; 6],
            rows: 2,
            aggregation: Aggregation::Mean,
            output,
            only: None,
        }
    }

    #[test]
    fn a_plain_answer_is_the_json_it_always_was() {
        for kind in [
            OutputKind::Label,
            OutputKind::Probabilities,
            OutputKind::TopK(2),
        ] {
            let (response, body) = answer(&Reply::default(), &two_rows(kind));
            assert_eq!(body.bytes, serde_json::to_vec(&response).unwrap());
            assert_eq!(body.json_len, None);
            assert_eq!(body.content_type(), "application/json");
        }
    }

    #[test]
    fn binary_outputs_follow_the_json_with_their_sizes() {
        let reply = Reply {
            binary_output: true,
            forms: vec![],
        };
        let (response, body) = answer(&reply, &two_rows(OutputKind::Probabilities));
        let n = body.json_len.expect("binary");
        assert_eq!(body.content_type(), "application/octet-stream");
        let head: Value = serde_json::from_slice(&body.bytes[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 32);
        assert!(head["outputs"][0].get("data").is_none());
        assert_eq!(head["outputs"][1]["shape"], json!([2, 4]));
        assert_eq!(head["id"], "r");
        let tail = &body.bytes[n..];
        assert_eq!(tail.len(), 48);
        let labels: Vec<i64> = tail[..16]
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(labels, [2, 0]);
        let probs: Vec<f32> = tail[16..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(OutputData::Fp32(probs), response.outputs[1].data);
        // binary_data: false on one output keeps it in the JSON.
        let mixed = Reply {
            binary_output: true,
            forms: vec![(
                PROBABILITIES.into(),
                OutputForm {
                    binary: Some(false),
                    classification: None,
                },
            )],
        };
        let (_, body) = answer(&mixed, &two_rows(OutputKind::Probabilities));
        let n = body.json_len.unwrap();
        let head: Value = serde_json::from_slice(&body.bytes[..n]).unwrap();
        assert_eq!(body.bytes.len() - n, 16);
        assert_eq!(head["outputs"][1]["data"].as_array().unwrap().len(), 8);
        assert!(head["outputs"][1].get("parameters").is_none());
    }

    #[test]
    fn classification_writes_probability_and_class_best_first() {
        let form = |binary| Reply {
            binary_output: false,
            forms: vec![(
                PROBABILITIES.into(),
                OutputForm {
                    binary: Some(binary),
                    classification: Some(2),
                },
            )],
        };
        let (_, body) = answer(&form(false), &two_rows(OutputKind::Probabilities));
        let v: Value = serde_json::from_slice(&body.bytes).unwrap();
        let p = &v["outputs"][1];
        assert_eq!(
            (p["datatype"].clone(), p["shape"].clone()),
            (json!("BYTES"), json!([2, 2]))
        );
        assert_eq!(p["data"], json!(["0.5:2", "0.3:1", "0.7:0", "0.1:1"]));
        let (_, body) = answer(&form(true), &two_rows(OutputKind::Probabilities));
        let n = body.json_len.unwrap();
        let mut tail = &body.bytes[n..];
        let mut strings = Vec::new();
        while !tail.is_empty() {
            let len = u32::from_le_bytes(tail[..4].try_into().unwrap()) as usize;
            strings.push(String::from_utf8(tail[4..4 + len].to_vec()).unwrap());
            tail = &tail[4 + len..];
        }
        assert_eq!(strings, ["0.5:2", "0.3:1", "0.7:0", "0.1:1"]);
    }

    fn named() -> ModelShape {
        ModelShape {
            class_names: Some(["ant", "bee", "cat", "dog"].map(String::from).into()),
            ..model()
        }
    }

    /// The BYTES elements of binary data.
    fn strings_of(mut tail: &[u8]) -> Vec<String> {
        let mut strings = Vec::new();
        while !tail.is_empty() {
            let len = u32::from_le_bytes(tail[..4].try_into().unwrap()) as usize;
            strings.push(String::from_utf8(tail[4..4 + len].to_vec()).unwrap());
            tail = &tail[4 + len..];
        }
        strings
    }

    #[test]
    fn named_classes_answer_a_class_name_beside_the_label() {
        for kind in [
            OutputKind::Label,
            OutputKind::Probabilities,
            OutputKind::TopK(2),
        ] {
            let (response, body) = answer_from(&named(), &Reply::default(), &two_rows(kind));
            assert_eq!(body.bytes, serde_json::to_vec(&response).unwrap());
            let v: Value = serde_json::from_slice(&body.bytes).unwrap();
            let outputs = v["outputs"].as_array().unwrap();
            assert_eq!(outputs[0]["data"], json!([2, 0]), "{kind:?}");
            assert_eq!(
                outputs.last().unwrap(),
                &json!({"name": "class_name", "datatype": "BYTES", "shape": [2], "data": ["cat", "ant"]}),
                "{kind:?}"
            );
        }
        // As binary data: length-prefixed strings after the labels.
        let reply = Reply {
            binary_output: true,
            forms: vec![],
        };
        let (_, body) = answer_from(&named(), &reply, &two_rows(OutputKind::Label));
        let n = body.json_len.unwrap();
        let head: Value = serde_json::from_slice(&body.bytes[..n]).unwrap();
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 14);
        assert_eq!(strings_of(&body.bytes[n + 16..]), ["cat", "ant"]);
        // Named in `outputs`, it comes alone; a run without names does not produce it.
        let body = ONE.replace(
            "{\"inputs\"",
            r#"{"outputs":[{"name":"class_name"}],"inputs""#,
        );
        let ask = parse_infer(body.as_bytes(), &named()).unwrap();
        assert_eq!(ask.only, Some(vec![CLASS_NAME.to_string()]));
        let m = parse_infer(body.as_bytes(), &model()).unwrap_err().message;
        assert!(m.contains("output 'class_name' is not produced"), "{m}");
        // A labels-only server answers names too: they are the labels.
        let labels_only = ModelShape {
            labels_only: true,
            ..named()
        };
        assert!(parse_infer(body.as_bytes(), &labels_only).is_ok());
        // Classification strings carry the name: score:index:name.
        let form = Reply {
            binary_output: false,
            forms: vec![(
                PROBABILITIES.into(),
                OutputForm {
                    binary: None,
                    classification: Some(2),
                },
            )],
        };
        let (_, body) = answer_from(&named(), &form, &two_rows(OutputKind::Probabilities));
        let v: Value = serde_json::from_slice(&body.bytes).unwrap();
        assert_eq!(
            v["outputs"][1]["data"],
            json!(["0.5:2:cat", "0.3:1:bee", "0.7:0:ant", "0.1:1:bee"])
        );
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        compress(data.to_vec(), Coding::Gzip).0
    }

    fn encoded(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(coding).unwrap(),
        );
        h
    }

    #[test]
    fn compressed_bodies_are_decompressed_within_the_limit() {
        let body = ONE.as_bytes();
        let deflated = compress(body.to_vec(), Coding::Deflate);
        assert_eq!(deflated.1, Some(Coding::Deflate));
        for (coding, bytes) in [
            ("gzip", gzip(body)),
            ("x-gzip", gzip(body)),
            ("GZIP", gzip(body)),
            ("deflate", deflated.0.clone()),
            ("identity", body.to_vec()),
            ("identity, gzip", gzip(body)),
        ] {
            assert_eq!(
                &*decode_body(&bytes, &encoded(coding), 1024).unwrap(),
                body,
                "{coding}"
            );
        }
        // Two gzip members are one body.
        let mut two = gzip(b"{\"inputs\":");
        two.extend(gzip(&body[10..]));
        assert_eq!(&*decode_body(&two, &encoded("gzip"), 1024).unwrap(), body);
        // A body at the limit passes; one byte more is 413, however small it is compressed.
        let zeros = vec![b' '; 1 << 20];
        assert!(decode_body(&gzip(&zeros), &encoded("gzip"), 1 << 20).is_ok());
        for coding in [Coding::Gzip, Coding::Deflate] {
            let bomb = compress(vec![b' '; (1 << 20) + 1], coding).0;
            assert!(bomb.len() < 10 << 10, "{} bytes", bomb.len());
            let r = decode_body(&bomb, &encoded(coding.name()), 1 << 20).unwrap_err();
            assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert!(
                r.message
                    .contains("larger than 1048576 bytes once decompressed (--max-body-bytes)"),
                "{}",
                r.message
            );
        }
        // Damage is named.
        let g = gzip(body);
        for (coding, bytes, needle) in [
            (
                "gzip",
                &g[..g.len() - 3],
                "cannot be decompressed (Content-Encoding: gzip)",
            ),
            (
                "gzip",
                body,
                "cannot be decompressed (Content-Encoding: gzip)",
            ),
            (
                "deflate",
                &deflated.0[..deflated.0.len() / 2],
                "cannot be decompressed (Content-Encoding: deflate)",
            ),
            (
                "deflate",
                &g[..],
                "cannot be decompressed (Content-Encoding: deflate)",
            ),
        ] {
            let r = decode_body(bytes, &encoded(coding), 1024).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert!(r.message.contains(needle), "{}", r.message);
        }
        let mut trailing = deflated.0.clone();
        trailing.extend_from_slice(b"xyz");
        let m = decode_body(&trailing, &encoded("deflate"), 1024)
            .unwrap_err()
            .message;
        assert!(
            m.contains("3 bytes after the end of its deflate data"),
            "{m}"
        );
        // Codings that are not read: 415 saying which are.
        for coding in ["br", "gzip, deflate", "zstd"] {
            let r = decode_body(body, &encoded(coding), 1024).unwrap_err();
            assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert!(r.message.contains("gzip or deflate"), "{}", r.message);
            assert!(r.headers.contains(&(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, deflate")
            )));
        }
    }

    #[test]
    fn accept_encoding_chooses_the_answers_coding() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            response_coding(&h)
        };
        assert_eq!(response_coding(&HeaderMap::new()), None);
        assert_eq!(accept("gzip"), Some(Coding::Gzip));
        assert_eq!(accept("gzip, deflate, br"), Some(Coding::Gzip));
        assert_eq!(accept("deflate"), Some(Coding::Deflate));
        assert_eq!(accept("gzip;q=0.5, deflate"), Some(Coding::Deflate));
        assert_eq!(accept("gzip;q=0, deflate;q=0"), None);
        assert_eq!(accept("br, identity"), None);
        assert_eq!(accept("*"), Some(Coding::Gzip));
        assert_eq!(accept("*;q=0"), None);
        assert_eq!(accept("gzip;q=x"), None);
        // What is compressed reads back.
        let data = b"an answer, an answer, an answer".to_vec();
        for c in [Coding::Gzip, Coding::Deflate] {
            let (bytes, used) = compress(data.clone(), c);
            assert_eq!(used, Some(c));
            assert_eq!(
                &*decode_body(&bytes, &encoded(c.name()), 1024).unwrap(),
                &data[..]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The same checks for a transport that decodes requests itself (gRPC).

pub use decoded::{check_flat_inputs, check_output_names, check_parameter_map, FlatInput};

/// The checks of [`parse_infer`] for a transport that decodes requests itself (gRPC): it hands
/// over values already parsed, and gets the same refusals, word for word, as a JSON body would.
mod decoded {
    use super::*;

    /// One input tensor whose elements are already FP32 values, flat and row-major.
    #[derive(Clone, Debug, PartialEq)]
    pub struct FlatInput {
        /// Tensor name.
        pub name: String,
        /// Element type as the request named it.
        pub datatype: String,
        /// Shape, `[rows, features]`.
        pub shape: Vec<i64>,
        /// The elements.
        pub values: Vec<f32>,
    }

    /// Check request parameters already read into a map, as [`parse_infer`] checks a JSON body's
    /// `parameters`; returns the aggregation and which outputs are produced.
    pub fn check_parameter_map(
        params: &Map<String, Value>,
        model: &ModelShape,
    ) -> Result<(Aggregation, OutputKind), Refusal> {
        parse_parameters(Some(params), model)
    }

    /// Check the names of requested outputs, as [`parse_infer`] checks a JSON body's `outputs`;
    /// `None` when none were named (all that `kind` produces are returned).
    pub fn check_output_names(
        names: Vec<String>,
        kind: OutputKind,
        model: &ModelShape,
    ) -> Result<Option<Vec<String>>, Refusal> {
        let outputs: Vec<RequestedOutput> = names
            .into_iter()
            .map(|name| RequestedOutput {
                name,
                parameters: None,
            })
            .collect();
        Ok(requested_outputs(Some(&outputs), kind, model)?
            .map(|named| named.into_iter().map(|(name, _)| name).collect()))
    }

    /// Check input tensors given as flat FP32 values, as [`parse_infer`] checks a JSON body's
    /// `inputs` (one input named [`INPUT`], FP32, `[n, d]`, finite, 1 ..= max_batch rows); returns
    /// the rows, row-major, and their count.
    pub fn check_flat_inputs(
        inputs: Vec<FlatInput>,
        model: &ModelShape,
    ) -> Result<(Vec<f32>, usize), Refusal> {
        let tensors = inputs
            .into_iter()
            .map(|i| InputTensor {
                name: i.name,
                shape: i.shape,
                datatype: i.datatype,
                parameters: None,
                data: Some(TensorData {
                    dims: vec![i.values.len()],
                    values: i.values,
                    non_number: None,
                    ragged: None,
                }),
            })
            .collect();
        check_input(tensors, None, model)
    }
}
