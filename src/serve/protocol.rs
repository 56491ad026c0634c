//! The Open Inference Protocol (v2) REST messages that `sisa serve` speaks, and the checks that
//! turn a request body into a batch of rows, or into a refusal that names the problem.
//!
//! Pure: nothing here touches the network, the disk or the serving state, so every refusal is
//! tested on plain bytes. The model takes one FP32 input named `input` of shape `[n, d]`; `data`
//! may be flat (row-major) or nested (`[[...], [...]]`). Request `parameters`:
//!
//! | parameter     | values                                | default                        |
//! |---------------|---------------------------------------|--------------------------------|
//! | `aggregation` | `"mean"`, `"vote"`, `"weighted"`      | the run's (`mean` unless set)  |
//! | `output`      | `"label"`, `"probabilities"`, `"top_k"` | `"probabilities"` (`"label"` with `--labels-only`) |
//! | `top_k`       | 1 ..= classes (implies `"top_k"`)     | none                           |
//!
//! Outputs: `label` (INT64 `[n]`) always; `probabilities` (FP32 `[n, classes]`) with output
//! `probabilities`; `top_k_labels` (INT64 `[n, k]`) and `top_k_probabilities` (FP32 `[n, k]`),
//! best first, with output `top_k`. A request's `outputs` list, if given, keeps only the named
//! tensors.

use crate::ensemble::Prediction;
use crate::run::Aggregation;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use std::fmt;

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

/// Request parameters the server understands.
pub const PARAMETERS: [&str; 3] = ["aggregation", "output", "top_k"];

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
    /// Per-tensor parameters (ignored).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, flat or nested.
    pub data: TensorData,
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Output tensor name.
    pub name: String,
    /// Per-output parameters (ignored; `binary_data` is never used).
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

/// Parse and check an inference request body.
pub fn parse_infer(body: &[u8], model: &ModelShape) -> Result<Ask, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::bad_request(
            "the request body is empty: send an inference request as JSON",
        ));
    }
    let req: InferRequest = serde_json::from_slice(body).map_err(|e| json_refusal(body, &e))?;
    let (aggregation, output) = parse_parameters(req.parameters.as_ref(), model)?;
    let only = parse_outputs(req.outputs.as_deref(), output, model)?;
    let (x, rows) = check_input(req.inputs, model)?;
    Ok(Ask {
        id: req.id,
        x,
        rows,
        aggregation,
        output,
        only,
    })
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
            other => {
                return Err(Refusal::bad_request(format!(
                    "unknown parameter '{other}'; this model takes {}",
                    PARAMETERS.join(", ")
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

/// The output tensors `kind` produces.
pub fn produced(kind: OutputKind) -> &'static [&'static str] {
    match kind {
        OutputKind::Label => &[LABEL],
        OutputKind::Probabilities => &[LABEL, PROBABILITIES],
        OutputKind::TopK(_) => &[LABEL, TOP_K_LABELS, TOP_K_PROBABILITIES],
    }
}

fn parse_outputs(
    outputs: Option<&[RequestedOutput]>,
    kind: OutputKind,
    model: &ModelShape,
) -> Result<Option<Vec<String>>, Refusal> {
    let Some(outputs) = outputs.filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let available = produced(kind);
    let mut names = Vec::new();
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
        names.push(o.name.clone());
    }
    Ok(Some(names))
}

fn check_input(inputs: Vec<InputTensor>, model: &ModelShape) -> Result<(Vec<f32>, usize), Refusal> {
    let d = model.features.len();
    let count = inputs.len();
    let mut inputs = inputs.into_iter();
    let (Some(input), None) = (inputs.next(), inputs.next()) else {
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
    if input.datatype != "FP32" {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}' has datatype '{}': this model takes FP32",
            input.datatype
        )));
    }
    let data = &input.data;
    if let Some((i, kind)) = data.non_number {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': element {i} of data is {kind}: FP32 data must be numbers"
        )));
    }
    if let Some(why) = &data.ragged {
        return Err(Refusal::bad_request(format!("input '{INPUT}': {why}")));
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
    if cols != d {
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': rows have {cols} features, but this model takes {d}"
        )));
    }
    if let Some(i) = data.values.iter().position(|v| !v.is_finite()) {
        let what = if data.values[i].is_nan() {
            "NaN"
        } else {
            "infinite (too large for FP32)"
        };
        return Err(Refusal::bad_request(format!(
            "input '{INPUT}': row {}, feature {} ('{}') is {what}: features must be finite",
            i / d,
            i % d,
            model.features[i % d]
        )));
    }
    Ok((input.data.values, rows))
}

/// One output tensor of a response.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputTensor {
    /// Tensor name.
    pub name: &'static str,
    /// `INT64` or `FP32`.
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

/// The output tensors for `pred` (`rows × classes`) as `ask` wants them.
pub fn outputs(pred: Prediction, classes: usize, ask: &Ask) -> Vec<OutputTensor> {
    let n = ask.rows;
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
        let out = outputs(pred.clone(), 4, &a);
        assert_eq!(out[1].data, OutputData::Int64(vec![2, 1]));
        assert_eq!(out[2].data, OutputData::Fp32(vec![0.5, 0.3]));
        // Ties go to the smaller label, like argmax.
        assert_eq!(top_k(&[0.1, 0.4, 0.4, 0.1], 3), [1, 2, 0]);
        let mut only = a.clone();
        only.only = Some(vec![LABEL.into()]);
        assert_eq!(outputs(pred, 4, &only).len(), 1);
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
        parse_outputs(Some(&outputs), kind, model)
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
                data: TensorData {
                    dims: vec![i.values.len()],
                    values: i.values,
                    non_number: None,
                    ragged: None,
                },
            })
            .collect();
        check_input(tensors, model)
    }
}
