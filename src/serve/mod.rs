//! `sisa serve`: the ensemble behind the Open Inference Protocol (v2) REST API, swapped to each
//! new version without a failed request, and never answering from a ghost.
//!
//! Endpoints: `GET /v2/health/live`, `GET /v2/health/ready` (200 once an ensemble is loaded),
//! `GET /v2` (server metadata), `GET /v2/models/{name}` (inputs `[-1, d]` FP32, outputs),
//! `GET /v2/models/{name}/ready`, `POST /v2/models/{name}/infer`, the same three under
//! `/v2/models/{name}/versions/{version}` for the served version, and, with an admin token file,
//! `POST /v2/models/{name}/unlearn` and `GET /v2/models/{name}/unlearn/{request}`.
//!
//! - [`protocol`]: OIP request and response types; every check that turns bytes into rows or a
//!   4xx answer naming the problem.
//! - [`swap`]: the served version (ensemble plus excluded shards), replaced atomically; the
//!   thread that watches `CURRENT`.
//! - [`admin`]: bearer tokens, the rate limit, and the worker that accepts, applies and publishes
//!   deletion requests in order.
//! - [`grpc`]: with `--grpc-addr`, the same model over the protocol's gRPC service (deletion
//!   requests stay REST-only).
//!
//! Start-up: the address is bound and printed first (`listening on ADDR`), so liveness answers
//! at once; the run is then opened through [`crate::unlearn::open`] (completing any unfinished
//! request) and its ensemble loaded, after which readiness answers 200. Predictions run on
//! tokio's blocking pool, never on the reactor. Logs go to stderr.

pub mod admin;
pub mod follow;
pub mod grpc;
pub mod listen;
pub mod ops;
pub mod protocol;
pub mod swap;

use crate::ensemble::Ensemble;
use crate::error::{Error, Result};
use crate::run::{RunConfig, RunDir, RunFile};
use crate::unlearn::{self, Options};
use admin::{Admin, AdminTokens, Requests, Worker, WorkerSetup};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::{AnswerParameters, InferResponse, ModelShape, Refusal};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use swap::{Serving, Watcher};

/// The flags of `sisa serve` (besides `--run`, `--ledger` and `--threads`).
#[derive(clap::Args, Clone, Debug)]
pub struct ServeFlags {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Also serve the Open Inference Protocol's gRPC service (inference.GRPCInferenceService)
    /// on this address, its request messages bounded by --max-body-bytes; port 0 picks a free
    /// port (the bound address is printed). Default: off.
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// The model's name in URLs. Default: the run's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Most rows in one inference request.
    #[arg(long, default_value_t = 1024)]
    pub max_batch: usize,
    /// Largest request body in bytes; a larger one gets 413.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Answer labels only, never probabilities: a defence against attacks that compare two
    /// versions' answers to learn what a deletion removed. Default: off.
    #[arg(long)]
    pub labels_only: bool,
    /// File of bearer tokens, one per line (mode 600), that may submit deletion requests.
    /// Default: none, and the unlearn endpoints answer 404.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Most unlearn submissions per token per minute.
    #[arg(long, default_value_t = 30)]
    pub admin_rate: u32,
    /// Failed admin authentications one client address may make in a minute before it is
    /// answered 429 until the minute ends.
    #[arg(long, default_value_t = admin::AUTH_FAILURES_PER_MINUTE)]
    pub admin_auth_failures: u32,
    /// How often CURRENT is checked for a newly published version, in milliseconds (the
    /// ledger is followed every 20 ms whatever this is).
    #[arg(long, default_value_t = 500)]
    pub watch_interval_ms: u64,
    /// Access-log lines on stderr as text or as JSON objects.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: ops::LogFormat,
    /// Most connections open at once; more are answered 503 and closed. Default: half the
    /// process's open-file limit (at most 10000).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a connection may take to send a request's header (also the longest an idle
    /// kept-alive connection stays open).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a stop waits for the requests in flight before closing what is left.
    #[arg(long, default_value_t = 5)]
    pub shutdown_grace_s: u64,
}

/// Checked options the server runs on.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The run directory.
    pub run: PathBuf,
    /// `--ledger`, if given.
    pub ledger: Option<PathBuf>,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Address to serve gRPC on, if any.
    pub grpc_addr: Option<SocketAddr>,
    /// The model's name; the run's when `None`.
    pub name: Option<String>,
    /// Most rows in one request (at least 1).
    pub max_batch: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Answer labels only.
    pub labels_only: bool,
    /// Tokens for the admin endpoints; `None` turns them off.
    pub admin: Option<AdminTokens>,
    /// Unlearn submissions per token per minute (at least 1).
    pub admin_rate: u32,
    /// Failed authentications per client address per minute (at least 1).
    pub admin_auth_failures: u32,
    /// How often `CURRENT` is checked.
    pub watch_interval: Duration,
    /// How deletions retrain (threads; progress bars are always off).
    pub unlearn: Options,
    /// Access-log format.
    pub log_format: ops::LogFormat,
    /// Connection limits and deadlines.
    pub limits: listen::Limits,
    /// Announce the bound addresses as one JSON line on stdout (`--json`) instead of text.
    pub announce_json: bool,
}

impl ServeFlags {
    /// Check the flags and read the admin token file.
    pub fn options(
        self,
        run: PathBuf,
        ledger: Option<PathBuf>,
        unlearn: Options,
    ) -> Result<ServeOptions> {
        if self.max_batch == 0 {
            return Err(Error::Usage("--max-batch must be at least 1".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(Error::Usage(
                "--max-body-bytes must be at least 1024".into(),
            ));
        }
        if self.admin_rate == 0 {
            return Err(Error::Usage("--admin-rate must be at least 1".into()));
        }
        if self.admin_auth_failures == 0 {
            return Err(Error::Usage(
                "--admin-auth-failures must be at least 1".into(),
            ));
        }
        if self.watch_interval_ms < 10 {
            return Err(Error::Usage(
                "--watch-interval-ms must be at least 10".into(),
            ));
        }
        let max_connections = self
            .max_connections
            .unwrap_or_else(listen::default_max_connections);
        if max_connections == 0 {
            return Err(Error::Usage("--max-connections must be at least 1".into()));
        }
        if !(1..=3600).contains(&self.header_timeout_s) {
            return Err(Error::Usage(
                "--header-timeout-s must be in 1..=3600".into(),
            ));
        }
        if self.shutdown_grace_s > 3600 {
            return Err(Error::Usage(
                "--shutdown-grace-s must be at most 3600".into(),
            ));
        }
        let admin = self
            .admin_token_file
            .as_deref()
            .map(AdminTokens::load)
            .transpose()?;
        Ok(ServeOptions {
            run,
            ledger,
            addr: self.addr,
            grpc_addr: self.grpc_addr,
            name: self.name,
            max_batch: self.max_batch,
            max_body_bytes: self.max_body_bytes,
            labels_only: self.labels_only,
            admin,
            admin_rate: self.admin_rate,
            admin_auth_failures: self.admin_auth_failures,
            watch_interval: Duration::from_millis(self.watch_interval_ms),
            unlearn: Options {
                progress: false,
                ..unlearn
            },
            log_format: self.log_format,
            limits: listen::Limits {
                max_connections,
                header_timeout: Duration::from_secs(self.header_timeout_s),
                shutdown_grace: Duration::from_secs(self.shutdown_grace_s),
            },
            announce_json: false,
        })
    }
}

/// Log one line on stderr.
pub(crate) fn log(message: impl std::fmt::Display) {
    eprintln!("sisa serve: {message}");
}

/// `{"error": message}` with `status`.
pub(crate) fn refuse(status: StatusCode, message: &str) -> Response {
    Refusal::new(status, message).into_response()
}

/// The answer for every path the server does not know.
pub(crate) async fn not_found() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "no such endpoint: see GET /v2 and GET /v2/models/{name}",
    )
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The model's name.
    pub name: String,
    /// Inputs, classes and limits.
    pub model: ModelShape,
    /// Shards of the run.
    pub shards: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The served version.
    pub serving: Arc<Serving>,
    /// The admin endpoints, when turned on.
    pub admin: Option<Admin>,
    /// The access log and the metrics.
    pub ops: ops::Ops,
}

impl App {
    /// 404 unless `name` is this model's.
    pub(crate) fn check_name(&self, name: &str) -> std::result::Result<(), Refusal> {
        if name == self.name {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("unknown model '{name}': this server serves '{}'", self.name),
            ))
        }
    }

    /// The answer for a body that could not be read: 413 when it is too large.
    pub(crate) fn body_refusal(&self, e: &BytesRejection) -> Response {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is larger than {} bytes (--max-body-bytes)",
                    self.max_body_bytes
                ),
            )
        } else {
            refuse(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            )
        }
    }

    fn loading(&self) -> Refusal {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model '{}' is still loading", self.name),
        )
    }

    /// The served version, checked against a version named in the URL.
    fn served(
        &self,
        version: Option<&str>,
    ) -> std::result::Result<Arc<swap::ServedVersion>, Refusal> {
        let Some(served) = self.serving.current() else {
            return Err(self.loading());
        };
        match version {
            Some(v) if v != served.version().to_string() => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!(
                    "version '{v}' of model '{}' is not served; version {} is",
                    self.name,
                    served.version()
                ),
            )),
            _ => Ok(served),
        }
    }
}

fn router(app: Arc<App>) -> Router {
    let limit = app.max_body_bytes;
    let mut r = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(version_infer),
        );
    if app.admin.is_some() {
        r = r
            .route("/v2/models/{name}/unlearn", post(admin::submit))
            .route("/v2/models/{name}/unlearn/{request}", get(admin::state));
    }
    let ops = app.ops.clone();
    r.route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(ops, ops::observe))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut deletions = app
        .admin
        .as_ref()
        .map(|a| a.requests.counts(&app.serving))
        .unwrap_or_default();
    deletions.insert("waiting", app.serving.waiting() as u64);
    ops::metrics_response(app.ops.metrics.render(&app.serving, &deletions))
}

async fn live() -> Response {
    (StatusCode::OK, Json(json!({ "live": true }))).into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.serving.current() {
        Some(_) => (StatusCode::OK, Json(json!({ "ready": true }))).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false })),
        )
            .into_response(),
    }
}

async fn server_metadata(State(app): State<Arc<App>>) -> Response {
    let extensions: &[&str] = if app.admin.is_some() {
        &["binary_tensor_data", "classification", "unlearn"]
    } else {
        &["binary_tensor_data", "classification"]
    };
    Json(json!({
        "name": "sisa",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": extensions,
    }))
    .into_response()
}

async fn model_metadata(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    metadata(&app, &name, None)
}

async fn version_metadata(
    State(app): State<Arc<App>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    metadata(&app, &name, Some(&version))
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Response {
    if let Err(r) = app.check_name(name) {
        return r.into_response();
    }
    let served = match app.served(version) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let (d, c) = (app.model.features.len(), app.model.classes);
    let mut outputs = vec![json!({"name": protocol::LABEL, "datatype": "INT64", "shape": [-1]})];
    if !app.model.labels_only {
        outputs
            .push(json!({"name": protocol::PROBABILITIES, "datatype": "FP32", "shape": [-1, c]}));
        outputs
            .push(json!({"name": protocol::TOP_K_LABELS, "datatype": "INT64", "shape": [-1, -1]}));
        outputs.push(
            json!({"name": protocol::TOP_K_PROBABILITIES, "datatype": "FP32", "shape": [-1, -1]}),
        );
    }
    if app.model.class_names.is_some() {
        outputs.push(json!({"name": protocol::CLASS_NAME, "datatype": "BYTES", "shape": [-1]}));
    }
    let mut answer = json!({
        "name": app.name,
        "versions": [served.version().to_string()],
        "platform": "sisa",
        "inputs": [{"name": protocol::INPUT, "datatype": "FP32", "shape": [-1, d]}],
        "outputs": outputs,
        "parameters": {
            "shards": app.shards,
            "members": served.ensemble.members.len(),
            "shards_voting": served.voting,
            "excluded_shards": served.excluded,
            "applied_request": served.applied_request,
            "classes": c,
            "features": app.model.features,
            "aggregation": app.model.aggregation.name(),
            "max_batch": app.model.max_batch,
            "labels_only": app.model.labels_only,
        },
    });
    if let Some(names) = &app.model.class_names {
        answer["parameters"]["class_names"] = json!(names.as_ref());
    }
    Json(answer).into_response()
}

async fn model_ready(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    model_ready_at(&app, &name, None)
}

async fn version_ready(
    State(app): State<Arc<App>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    model_ready_at(&app, &name, Some(&version))
}

fn model_ready_at(app: &App, name: &str, version: Option<&str>) -> Response {
    if let Err(r) = app.check_name(name) {
        return r.into_response();
    }
    match app.served(version) {
        Ok(s) => Json(json!({"name": app.name, "ready": true, "version": s.version().to_string()}))
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn infer(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    infer_at(app, &name, None, headers, body).await
}

async fn version_infer(
    State(app): State<Arc<App>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    infer_at(app, &name, Some(&version), headers, body).await
}

/// Bodies larger than this, or compressed, are decompressed and parsed on tokio's blocking pool,
/// and answers larger than this compressed there: past it, the work would hold up the reactor.
const OFF_REACTOR_BYTES: usize = 64 << 10;

/// Run `f` on tokio's blocking pool.
async fn off_reactor<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        log(format!("a request's work on the blocking pool failed: {e}"));
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request could not be handled",
        )
    })
}

/// Undo the body's `Content-Encoding` and parse it as a REST inference request.
fn read_request(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
) -> std::result::Result<protocol::RestRequest, Refusal> {
    let body = protocol::decode_body(body, headers, app.max_body_bytes)?;
    protocol::parse_request(&body, headers, &app.model)
}

async fn infer_at(
    app: Arc<App>,
    name: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = app.check_name(name) {
        return r.into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return app.body_refusal(&e),
    };
    let coding = protocol::response_coding(&headers);
    let request =
        if body.len() > OFF_REACTOR_BYTES || headers.contains_key(header::CONTENT_ENCODING) {
            let app = app.clone();
            off_reactor(move || read_request(&app, &headers, &body))
                .await
                .and_then(|r| r)
        } else {
            let request = read_request(&app, &headers, &body);
            // The rows are parsed out of it: the body need not wait for the prediction.
            drop(body);
            request
        };
    let request = match request {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let answered = match answer(&app, version, request.ask).await {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let seen = answered.seen();
    let written = protocol::write_response(
        &answered.response(&app.name),
        &request.reply,
        app.model.class_names.as_deref(),
    );
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            log(format!("cannot write an answer: {e}"));
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the answer could not be written",
            );
        }
    };
    let content_type = written.content_type();
    let json_len = written.json_len;
    let (bytes, coding) = match coding {
        None => (written.bytes, None),
        Some(c) if written.bytes.len() <= OFF_REACTOR_BYTES => protocol::compress(written.bytes, c),
        Some(c) => {
            let bytes = written.bytes;
            match off_reactor(move || protocol::compress(bytes, c)).await {
                Ok(done) => done,
                Err(r) => return r.into_response(),
            }
        }
    };
    let mut r = (StatusCode::OK, bytes).into_response();
    r.extensions_mut().insert(seen);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(n) = json_len {
        h.insert(protocol::HEADER_LENGTH, HeaderValue::from(n));
    }
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.name()));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    r
}

/// One answered inference request: the version it came from, the request, and its outputs.
pub(crate) struct Answered {
    /// The version every row was predicted with.
    pub served: Arc<swap::ServedVersion>,
    /// The request.
    pub ask: protocol::Ask,
    /// Output tensors, as the request asked for them.
    pub outputs: Vec<protocol::OutputTensor>,
}

impl Answered {
    /// What the access log says of this answer.
    pub fn seen(&self) -> ops::Answered {
        ops::Answered {
            version: self.served.version(),
            excluded: self.served.excluded.clone(),
        }
    }

    /// The protocol's response for this answer.
    pub fn response(self, model_name: &str) -> InferResponse {
        InferResponse {
            model_name: model_name.to_string(),
            model_version: self.served.version().to_string(),
            id: self.ask.id,
            parameters: AnswerParameters {
                aggregation: self.ask.aggregation.name(),
                excluded_shards: self.served.excluded.clone(),
                shards_voting: self.served.voting,
            },
            outputs: self.outputs,
        }
    }
}

/// Answer one checked request from the served version (`version`, when given, must be it), on
/// tokio's blocking pool: the core every transport shares.
pub(crate) async fn answer(
    app: &App,
    version: Option<&str>,
    ask: protocol::Ask,
) -> std::result::Result<Answered, Refusal> {
    // The one version this answer comes from: every row is predicted with it, and it is named.
    let served = app.served(version)?;
    let classes = app.model.classes;
    let names = app.model.class_names.clone();
    let done = tokio::task::spawn_blocking(move || {
        let pred = served.predict(&ask.x, ask.rows, ask.aggregation);
        let outputs = pred.map(|p| protocol::outputs(p, classes, names.as_deref(), &ask));
        (served, ask, outputs)
    })
    .await;
    let (served, ask, outputs) = match done {
        Ok(x) => x,
        Err(e) => {
            log(format!("a prediction failed: {e}"));
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the prediction failed",
            ));
        }
    };
    let Some(outputs) = outputs else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "every shard with rows holds a user whose deletion is being applied (shards {:?}); \
                 answers resume when the retrained version is served",
                served.excluded
            ),
        )
        .with_header(header::RETRY_AFTER, header::HeaderValue::from(1)));
    };
    Ok(Answered {
        served,
        ask,
        outputs,
    })
}

/// The threads that run beside the HTTP server once the run is open.
struct Background {
    watcher: Watcher,
    worker: Option<JoinHandle<()>>,
}

/// Open the run (completing unfinished requests), load and serve its ensemble, and start the
/// watcher and the admin worker.
struct Startup {
    root: PathBuf,
    ledger: Option<PathBuf>,
    options: Options,
    watch_interval: Duration,
    serving: Arc<Serving>,
    requests: Option<Arc<Requests>>,
    worker: Option<WorkerSetup>,
}

impl Startup {
    fn run(self) -> Result<Background> {
        let (run, ledger, lock, report) =
            unlearn::open(&self.root, self.ledger.as_deref(), &self.options)?;
        if !report.completed.is_empty() {
            log(format!(
                "completed interrupted or rolled-back requests {:?}",
                report.completed
            ));
        }
        if !report.removed_files.is_empty() {
            log(format!(
                "removed {} file(s) the published version does not reference",
                report.removed_files.len()
            ));
        }
        let current = run.dir.path(RunFile::Current);
        let seen = std::fs::read(&current).map_err(|e| Error::io(&current, e))?;
        let ensemble = Ensemble::load(&run)?;
        let members = ensemble.members.len();
        self.serving.install(ensemble, run.manifest.applied_request);
        if let Some(requests) = &self.requests {
            requests.load_ledger(&ledger);
        }
        drop(lock);
        log(format!(
            "ready: serving version {} ({} shards, {members} with rows)",
            run.manifest.version, run.config.shards
        ));
        let ledger_path = unlearn::ledger_path(&self.root, self.ledger.as_deref());
        let watcher = Watcher::spawn(
            self.root.clone(),
            ledger_path,
            self.serving.clone(),
            self.watch_interval,
            seen,
        )?;
        let worker = match (self.worker, self.requests) {
            (Some(setup), Some(requests)) => Some(admin::spawn_worker(
                Worker {
                    root: self.root,
                    ledger: self.ledger,
                    options: self.options,
                    serving: self.serving,
                    requests,
                },
                setup,
            )?),
            _ => None,
        };
        Ok(Background { watcher, worker })
    }
}

/// Serve the run until SIGINT or SIGTERM. Returns an error if the address cannot be bound or
/// the run cannot be opened and loaded.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let root = opts.run.clone();
    if !root.is_dir() {
        return Err(Error::run(&root, "no such run directory"));
    }
    let config_path = RunDir::new(&root).path(RunFile::Config);
    if !config_path.exists() {
        return Err(Error::run(&root, "not a sisa run (no run.json)"));
    }
    let config = RunConfig::load(&config_path)?;
    let name = opts.name.clone().unwrap_or_else(|| config.name.clone());
    if name.is_empty() || name.contains('/') {
        return Err(Error::Usage(format!(
            "model name '{name}' must be non-empty and hold no '/' (pass --name)"
        )));
    }
    let cores = crate::train::default_threads();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sisa-serve")
        .max_blocking_threads((4 * cores).max(8))
        .build()
        .map_err(|e| Error::Serve {
            addr: opts.addr.to_string(),
            message: format!("cannot start the async runtime: {e}"),
        })?;
    let outcome = runtime.block_on(run_server(opts, config, name));
    // A start-up still replaying the ledger is left to finish or die with the process: every
    // step of it is durable and resumed on the next start.
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

async fn run_server(opts: ServeOptions, config: RunConfig, name: String) -> Result<()> {
    let addr = opts.addr.to_string();
    let serve_error = |message: String| Error::Serve {
        addr: addr.clone(),
        message,
    };
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| serve_error(format!("cannot listen: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| serve_error(format!("cannot read the bound address: {e}")))?;
    let grpc_listener = match opts.grpc_addr {
        Some(a) => Some(grpc::bind(a).await?),
        None => None,
    };
    let serving = Arc::new(Serving::new());
    let (admin, worker) = match opts.admin {
        Some(tokens) => {
            let (admin, setup) = Admin::new(tokens, opts.admin_rate, opts.admin_auth_failures);
            (Some(admin), Some(setup))
        }
        None => (None, None),
    };
    let requests = admin.as_ref().map(|a| a.requests.clone());
    let app = Arc::new(App {
        name,
        model: ModelShape {
            features: config.features.clone(),
            classes: config.classes,
            max_batch: opts.max_batch,
            labels_only: opts.labels_only,
            aggregation: config.aggregation,
            class_names: config.class_names.clone().map(Into::into),
        },
        shards: config.shards,
        max_body_bytes: opts.max_body_bytes,
        serving: serving.clone(),
        admin,
        ops: ops::Ops {
            metrics: Arc::default(),
            format: opts.log_format,
        },
    });
    // REST and gRPC connections share the --max-connections slots.
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.limits.max_connections));
    let grpc_local = grpc_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| Error::Serve {
            addr: opts.grpc_addr.map(|a| a.to_string()).unwrap_or_default(),
            message: format!("cannot read the bound gRPC address: {e}"),
        })?
        .map(|a| a.to_string());
    let grpc = grpc_listener.map(|l| grpc::spawn(l, app.clone(), slots.clone()));
    if opts.announce_json {
        println!(
            "{}",
            serde_json::json!({
                "model": app.name,
                "addr": local.to_string(),
                "grpc_addr": grpc_local,
            })
        );
    } else {
        println!("sisa serve: model '{}' listening on {local}", app.name);
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = app.ops.metrics.clone();
    let server = tokio::spawn(listen::serve(
        listener,
        router(app),
        opts.limits,
        slots.clone(),
        metrics,
        async move {
            // Either a stop was sent or its sender dropped: both mean stop.
            drop(stopped.await);
        },
    ));

    let startup = Startup {
        root: opts.run.clone(),
        ledger: opts.ledger.clone(),
        options: opts.unlearn.clone(),
        watch_interval: opts.watch_interval,
        serving,
        requests,
        worker,
    };
    let started = tokio::task::spawn_blocking(move || startup.run());
    let outcome = tokio::select! {
        r = started => match r {
            Ok(Ok(background)) => Ok(Some(background)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(serve_error(format!("start-up failed: {e}"))),
        },
        () = shutdown_signal() => Ok(None),
    };
    let background = match outcome {
        Ok(Some(background)) => {
            shutdown_signal().await;
            Some(background)
        }
        Ok(None) => None,
        Err(e) => {
            // Dropping the sender stops the server, as sending would.
            drop(stop);
            if let Err(e) = server.await {
                log(format!("the server failed while stopping: {e}"));
            }
            if let Err(served) = grpc::stop(grpc).await {
                log(format!("the gRPC server failed while stopping: {served}"));
            }
            return Err(e);
        }
    };
    log("stopping: finishing the requests in flight");
    // Dropping the sender stops the server, as sending would.
    drop(stop);
    // gRPC calls in flight get the same grace as HTTP requests; what is left after it ends
    // with the process.
    let grace = opts.limits.shutdown_grace + Duration::from_millis(500);
    let grpc_stopped = async move {
        match tokio::time::timeout(grace, grpc::stop(grpc)).await {
            Ok(r) => r,
            Err(_) => {
                log("gRPC calls still in flight after the grace: closing them");
                Ok(())
            }
        }
    };
    let (served, grpc_served) = tokio::join!(server, grpc_stopped);
    if let Some(b) = background {
        b.watcher.stop();
        if let Some(w) = b.worker {
            // The worker ends once its queue closes (the server dropped its sender); give an
            // idle one a moment, and leave a busy one to the process exit: every step of a
            // request is durable and resumed on the next start.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !w.is_finished() {
                log("an unlearn request is still being applied; it is completed on the next start");
            }
        }
    }
    match served {
        Ok(()) => grpc_served,
        Err(e) => Err(serve_error(format!("the server task failed: {e}"))),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log(format!("cannot listen for Ctrl-C: {e}"));
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log(format!("cannot listen for SIGTERM: {e}"));
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
