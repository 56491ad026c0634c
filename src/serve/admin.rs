//! Deletion over the wire: `POST /v2/models/{name}/unlearn` and the request's state.
//!
//! Both endpoints exist only when the server was given `--admin-token-file`, and answer only a
//! bearer token from that file (compared in constant time; submissions per token are bounded by
//! `--admin-rate` per minute). One worker thread applies requests in order. For each it takes the
//! run lock, replays the ledger (completing anything left unfinished), resolves the user ids
//! (an unknown user is a 400 and nothing is written), plans which shards hold the users, writes
//! the request to the ledger (fsync'd: the acknowledgement), leaves those shards out of the vote,
//! and only then answers 202 with the request number. It then erases, retrains and publishes,
//! and swaps the new version in; the exclusion ends when that version is served.
//!
//! States: `accepted` (durable, shards left out), `running` (erasing and retraining),
//! `published` (the new version is on disk, not yet served here), `done` (served),
//! `failed` (with the error; the request stays in the ledger, its shards stay out of the vote,
//! and it is completed on the next submission or restart).

use super::protocol::Refusal;
use super::swap::{self, Serving};
use super::{log, refuse, App};
use crate::data::UserKey;
use crate::error::{Error, IoContext, Result};
use crate::unlearn::{self, Ledger, Options, RequestId, Unlearner};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::sync::oneshot;

/// Shortest token accepted from the token file, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// Most user ids in one request.
pub const MAX_USERS: usize = 10_000;
/// Most submissions waiting for the worker; more are answered 503.
const QUEUE: usize = 64;

/// The bearer tokens that may use the admin endpoints, kept as SHA-256 digests.
#[derive(Clone)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} token(s))", self.digests.len())
    }
}

impl AdminTokens {
    /// Read the token file: one token per line, blank lines and `#` comments ignored, each at
    /// least [`MIN_TOKEN_LEN`] bytes. On Unix the file must not be readable by group or others.
    pub fn load(path: &Path) -> Result<AdminTokens> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).at(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::input(
                    path,
                    None,
                    None,
                    format!(
                        "the admin token file is open to group or others (mode {:o}); chmod 600 it",
                        mode & 0o777
                    ),
                ));
            }
        }
        let text = std::fs::read_to_string(path).at(path)?;
        let mut digests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()) {
                return Err(Error::input(
                    path,
                    Some(i as u64 + 1),
                    None,
                    format!(
                        "a token must be at least {MIN_TOKEN_LEN} characters with no spaces \
                         (e.g. `head -c 32 /dev/urandom | xxd -p -c 64`)"
                    ),
                ));
            }
            digests.push(Sha256::digest(token.as_bytes()).into());
        }
        if digests.is_empty() {
            return Err(Error::input(path, None, None, "holds no token"));
        }
        Ok(AdminTokens { digests })
    }

    /// Which token `presented` is, if any. Takes the same time whichever token matches, or
    /// none: digests of equal length are compared in constant time, and every one is compared.
    pub fn find(&self, presented: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = u32::MAX;
        for (i, d) in self.digests.iter().enumerate() {
            found = u32::conditional_select(&found, &(i as u32), d.ct_eq(&digest));
        }
        (found != u32::MAX).then_some(found as usize)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Never true for a loaded file.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// A token bucket per admin token: at most `per_minute` submissions in a minute, refilled
/// evenly.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    buckets: Mutex<Vec<(f64, Instant)>>,
}

impl RateLimit {
    /// Full buckets for `tokens` tokens.
    pub fn new(tokens: usize, per_minute: u32) -> RateLimit {
        RateLimit {
            per_minute,
            buckets: Mutex::new(vec![(per_minute as f64, Instant::now()); tokens]),
        }
    }

    /// Take one submission from token `who`'s bucket, or say how long until one is free.
    pub fn take(&self, who: usize) -> std::result::Result<(), Duration> {
        // Each update is two plain assignments: a panic cannot leave a bucket half-written.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (level, at) = &mut buckets[who];
        let rate = self.per_minute as f64 / 60.0;
        let now = Instant::now();
        *level =
            (*level + now.duration_since(*at).as_secs_f64() * rate).min(self.per_minute as f64);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / rate))
        }
    }
}

/// Failed authentications a client address may make in a minute by default; the next is
/// answered 429 (`--admin-auth-failures`).
pub const AUTH_FAILURES_PER_MINUTE: u32 = 5;
/// Client addresses whose failures are remembered; beyond this the oldest window is dropped.
const AUTH_CLIENTS: usize = 10_000;

/// Failed admin authentications per client address, in one-minute windows: a client that
/// guesses tokens is answered 429 (before its token is even compared) until its window ends.
#[derive(Debug)]
pub struct AuthThrottle {
    per_minute: u32,
    clients: Mutex<std::collections::HashMap<std::net::IpAddr, (Instant, u32)>>,
}

impl AuthThrottle {
    /// At most `per_minute` failures per address in a minute.
    pub fn new(per_minute: u32) -> AuthThrottle {
        AuthThrottle {
            per_minute,
            clients: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, (Instant, u32)>> {
        // Entries are replaced whole; a panic cannot leave one half-written.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while `ip` has used up its failures for the current window.
    pub fn check(&self, ip: std::net::IpAddr) -> std::result::Result<(), Duration> {
        let clients = self.lock();
        match clients.get(&ip) {
            Some(&(start, n))
                if n >= self.per_minute && start.elapsed() < Duration::from_secs(60) =>
            {
                Err(Duration::from_secs(60).saturating_sub(start.elapsed()))
            }
            _ => Ok(()),
        }
    }

    /// Count one failed authentication from `ip`; returns the failures in its window.
    pub fn fail(&self, ip: std::net::IpAddr) -> u32 {
        let mut clients = self.lock();
        if clients.len() >= AUTH_CLIENTS && !clients.contains_key(&ip) {
            let minute = Duration::from_secs(60);
            clients.retain(|_, (start, _)| start.elapsed() < minute);
            if clients.len() >= AUTH_CLIENTS {
                if let Some(oldest) = clients.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    clients.remove(&oldest);
                }
            }
        }
        let entry = clients.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1
    }
}

/// The client's address, when the connection recorded it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> std::result::Result<Peer, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Where a request stands, as far as this server knows.
#[derive(Clone, Debug, PartialEq)]
enum Progress {
    Accepted,
    Running,
    Published { version: u64 },
    Failed { error: String },
}

#[derive(Clone, Debug)]
struct Tracked {
    progress: Progress,
    excluded_shards: Vec<usize>,
    users: usize,
}

/// The answer of `GET /v2/models/{name}/unlearn/{request}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestState {
    /// The request number.
    pub request: RequestId,
    /// `accepted`, `running`, `published`, `done` or `failed`.
    pub state: &'static str,
    /// Users in the request.
    pub users: usize,
    /// Shards left out of the vote until the request's version is served.
    pub excluded_shards: Vec<usize>,
    /// The first version without the users, once published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Requests this server knows, by number.
#[derive(Debug, Default)]
pub struct Requests(Mutex<BTreeMap<RequestId, Tracked>>);

impl Requests {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<RequestId, Tracked>> {
        // Entries are replaced whole; a panic cannot leave one half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record every request of `ledger` that is complete, with the version that applied it.
    pub fn load_ledger(&self, ledger: &Ledger) {
        let mut map = self.lock();
        for r in ledger.requests() {
            let version = ledger
                .events(r)
                .filter_map(|e| match e.event {
                    unlearn::Event::Published { version } => Some(version),
                    unlearn::Event::Reapplied { version } => Some(version),
                    _ => None,
                })
                .last();
            if let (Some(version), true) = (version, ledger.is_done(r)) {
                map.entry(r)
                    .or_insert_with(|| Tracked {
                        progress: Progress::Accepted,
                        excluded_shards: Vec::new(),
                        users: ledger.users(r).map_or(0, <[UserKey]>::len),
                    })
                    .progress = Progress::Published { version };
            }
        }
    }

    /// How many requests this server knows in each state, judged against the served version.
    pub fn counts(&self, serving: &Serving) -> BTreeMap<&'static str, u64> {
        let known: Vec<RequestId> = self.lock().keys().copied().collect();
        let mut counts = BTreeMap::new();
        for r in known {
            if let Some(s) = self.state(r, serving) {
                *counts.entry(s.state).or_insert(0) += 1;
            }
        }
        counts
    }

    fn set(&self, r: RequestId, progress: Progress) {
        if let Some(t) = self.lock().get_mut(&r) {
            t.progress = progress;
        }
    }

    /// The state of request `r`, judged against the served version.
    pub fn state(&self, r: RequestId, serving: &Serving) -> Option<RequestState> {
        let t = self.lock().get(&r)?.clone();
        let served = serving.current().map_or(0, |s| s.applied_request);
        let (state, version, error) = match t.progress {
            Progress::Accepted => ("accepted", None, None),
            Progress::Running => ("running", None, None),
            Progress::Published { version } if served >= r => ("done", Some(version), None),
            Progress::Published { version } => ("published", Some(version), None),
            Progress::Failed { error } => ("failed", None, Some(error)),
        };
        Some(RequestState {
            request: r,
            state,
            users: t.users,
            excluded_shards: t.excluded_shards,
            model_version: version.map(|v| v.to_string()),
            error,
        })
    }
}

/// A request the worker acknowledged.
#[derive(Clone, Debug)]
pub struct Acknowledged {
    /// Its number.
    pub request: RequestId,
    /// Shards left out of the vote from now until its version is served.
    pub excluded_shards: Vec<usize>,
}

struct Job {
    users: Vec<String>,
    reply: oneshot::Sender<Result<Acknowledged>>,
}

/// The admin side of the server: tokens, rate limit, the worker's queue and request states.
#[derive(Debug)]
pub struct Admin {
    tokens: AdminTokens,
    rate: RateLimit,
    jobs: SyncSender<Job>,
    /// Requests known to this server.
    pub requests: Arc<Requests>,
    /// Failed authentications per client address.
    pub throttle: AuthThrottle,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} user(s))", self.users.len())
    }
}

/// What the worker needs, handed to it once the run is open.
#[derive(Debug)]
pub struct WorkerSetup {
    jobs: mpsc::Receiver<Job>,
}

impl Admin {
    /// The admin side, and the receiving end of its queue for [`spawn_worker`].
    pub fn new(tokens: AdminTokens, per_minute: u32, auth_failures: u32) -> (Admin, WorkerSetup) {
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let rate = RateLimit::new(tokens.len(), per_minute);
        (
            Admin {
                tokens,
                rate,
                throttle: AuthThrottle::new(auth_failures),
                jobs,
                requests: Arc::new(Requests::default()),
            },
            WorkerSetup { jobs: rx },
        )
    }
}

/// Everything the worker uses.
#[derive(Debug)]
pub struct Worker {
    /// The run directory.
    pub root: PathBuf,
    /// `--ledger`, if given.
    pub ledger: Option<PathBuf>,
    /// Retraining options.
    pub options: Options,
    /// The serving state to exclude shards from and swap versions into.
    pub serving: Arc<Serving>,
    /// Request states.
    pub requests: Arc<Requests>,
}

/// Start the worker thread; it runs until the queue's sender is dropped.
pub fn spawn_worker(worker: Worker, setup: WorkerSetup) -> Result<JoinHandle<()>> {
    let root = worker.root.clone();
    std::thread::Builder::new()
        .name("sisa-unlearn".into())
        .spawn(move || {
            // Deletions that arrived while the worker retrained wait in the queue; they are
            // taken together and forgotten as one request, one retrain per touched shard.
            while let Ok(first) = setup.jobs.recv() {
                let mut batch = vec![first];
                while batch.len() < QUEUE {
                    match setup.jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                worker.run(batch);
            }
        })
        .map_err(|e| Error::io(&root, e))
}

impl Worker {
    fn run(&self, batch: Vec<Job>) {
        let opened = Unlearner::open(&self.root, self.ledger.as_deref(), &self.options);
        let mut unlearner = match opened {
            Ok(x) => x,
            Err(e) => {
                let message = e.to_string();
                for job in batch {
                    reply(job.reply, Err(Error::run(&self.root, message.clone())));
                }
                return;
            }
        };
        if !unlearner.recovery().completed.is_empty() {
            log(format!(
                "completed interrupted requests {:?}",
                unlearner.recovery().completed
            ));
            self.requests.load_ledger(unlearner.ledger());
            self.serve_published();
        }
        // Each job is resolved on its own, so a job naming an unknown user fails alone.
        let mut accepted = Vec::new();
        let mut replies = Vec::new();
        for job in batch {
            match unlearner.resolve(&job.users) {
                Ok(resolved) => {
                    accepted.push(resolved);
                    replies.push(job.reply);
                }
                Err(e) => reply(job.reply, Err(e)),
            }
        }
        if accepted.is_empty() {
            return;
        }
        let jobs = accepted.len();
        let users: usize = accepted.iter().map(|r| r.keys.len()).sum();
        let shards = accepted
            .iter()
            .flat_map(|r| r.touched.shards.iter().copied())
            .collect::<std::collections::BTreeSet<usize>>()
            .into_iter()
            .collect::<Vec<_>>();
        let r = match unlearner.accept_together(accepted) {
            Ok(r) => r,
            Err(e) => {
                let message = e.to_string();
                for to in replies {
                    reply(to, Err(Error::run(&self.root, message.clone())));
                }
                return;
            }
        };
        // Durable: from here on, no answer may use these shards until the request is served.
        self.serving.exclude(r, &shards);
        self.requests.lock().insert(
            r,
            Tracked {
                progress: Progress::Accepted,
                excluded_shards: shards.clone(),
                users,
            },
        );
        log(format!(
            "request {r} accepted ({users} user(s){}); shards {shards:?} are out of the vote until it is served",
            if jobs > 1 {
                format!(", {jobs} deletions taken together")
            } else {
                String::new()
            }
        ));
        for to in replies {
            reply(
                to,
                Ok(Acknowledged {
                    request: r,
                    excluded_shards: shards.clone(),
                }),
            );
        }
        self.requests.set(r, Progress::Running);
        match unlearner.complete(r) {
            Ok(receipt) => {
                self.requests.set(
                    r,
                    Progress::Published {
                        version: receipt.ensemble_version,
                    },
                );
                self.serve_published();
            }
            Err(e) => {
                log(format!(
                    "request {r} failed: {e}; its shards stay out of the vote, and it is \
                     completed on the next request or restart"
                ));
                self.requests.set(
                    r,
                    Progress::Failed {
                        error: e.to_string(),
                    },
                );
            }
        }
        drop(unlearner);
    }

    /// Serve the published version (the worker holds the run lock, so it reads a settled run).
    fn serve_published(&self) {
        let ledger = unlearn::ledger_path(&self.root, self.ledger.as_deref());
        let was = self.serving.current().map_or(0, |s| s.version());
        match swap::load_published_locked(&self.root, &ledger, &self.serving) {
            Ok(Some(v)) => log(format!("serving version {v} (was {was})")),
            Ok(None) => {}
            Err(e) => {
                self.serving.note_refused();
                log(format!(
                    "keeping version {was}: the new version cannot be served: {e}"
                ))
            }
        }
    }
}

fn reply(to: oneshot::Sender<Result<Acknowledged>>, answer: Result<Acknowledged>) {
    if let Err(Err(e)) = to.send(answer) {
        log(format!("a client went away before hearing: {e}"));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlearnBody {
    users: Vec<String>,
}

/// Check the bearer token and, for a submission, take one from the token's rate. A client
/// address with too many failures this minute is answered 429 before its token is compared;
/// each failure is counted and logged (never the token).
fn authorize(
    app: &App,
    admin: &Admin,
    peer: Peer,
    headers: &HeaderMap,
    submit: bool,
) -> std::result::Result<(), Refusal> {
    let ip = peer.0.map(|a| a.ip());
    if let Some(ip) = ip {
        if let Err(wait) = admin.throttle.check(ip) {
            app.ops
                .metrics
                .auth_throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let secs = wait.as_secs().max(1);
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed authentications from this address; retry in {secs} s"),
            )
            .with_header(header::RETRY_AFTER, header::HeaderValue::from(secs)));
        }
    }
    let checked = check_token(admin, headers, submit);
    if let Err(r) = &checked {
        if r.status == StatusCode::UNAUTHORIZED {
            app.ops
                .metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let n = ip.map_or(0, |ip| admin.throttle.fail(ip));
            log(format!(
                "failed admin authentication from {} ({n} this minute): {}",
                peer.0
                    .map_or("an unknown address".into(), |a| a.ip().to_string()),
                r.message
            ));
        }
    }
    checked
}

fn check_token(
    admin: &Admin,
    headers: &HeaderMap,
    submit: bool,
) -> std::result::Result<(), Refusal> {
    let unauthorized = |m: &str| {
        Refusal::new(StatusCode::UNAUTHORIZED, m).with_header(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"sisa\""),
        )
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "this endpoint needs a bearer token (Authorization: Bearer TOKEN)",
        ));
    };
    let bytes = value.as_bytes();
    let token = match bytes.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => bytes[7..].trim_ascii(),
        _ => {
            return Err(unauthorized(
                "the Authorization header must be 'Bearer TOKEN'",
            ))
        }
    };
    let Some(who) = admin.tokens.find(token) else {
        return Err(unauthorized("the bearer token is not valid"));
    };
    if submit {
        if let Err(wait) = admin.rate.take(who) {
            let secs = wait.as_secs_f64().ceil() as u64;
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many unlearn requests for this token (--admin-rate); retry in {secs} s"
                ),
            )
            .with_header(header::RETRY_AFTER, header::HeaderValue::from(secs)));
        }
    }
    Ok(())
}

/// `POST /v2/models/{name}/unlearn` with `{"users": [...]}`.
pub async fn submit(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    peer: Peer,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let Some(admin) = app.admin.as_ref() else {
        return super::not_found().await;
    };
    if let Err(r) = authorize(&app, admin, peer, &headers, true) {
        return r.into_response();
    }
    if let Err(r) = app.check_name(&name) {
        return r.into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return app.body_refusal(&e),
    };
    let users = match serde_json::from_slice::<UnlearnBody>(&body) {
        Ok(b) => b.users,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"users\": [\"id\", ...]}}: {e}"),
            )
        }
    };
    if users.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "'users' is empty: name at least one user",
        );
    }
    if users.len() > MAX_USERS {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("{} users in one request; at most {MAX_USERS}", users.len()),
        );
    }
    if app.serving.current().is_none() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading",
        );
    }
    let (tx, rx) = oneshot::channel();
    let count = users.len();
    match admin.jobs.try_send(Job { users, reply: tx }) {
        Ok(()) => log(format!(
            "deletion of {count} user(s) queued for the unlearn worker"
        )),
        Err(TrySendError::Full(_)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many unlearn requests are waiting; retry later",
            )
        }
        Err(TrySendError::Disconnected(_)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the unlearn worker stopped",
            )
        }
    }
    match rx.await {
        Ok(Ok(ack)) => {
            let location = format!("/v2/models/{}/unlearn/{}", app.name, ack.request);
            let mut r = (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "request": ack.request,
                    "state": "accepted",
                    "excluded_shards": ack.excluded_shards,
                    "status": location,
                })),
            )
                .into_response();
            if let Ok(v) = header::HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Ok(Err(e @ Error::Request(_))) => refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(Err(e)) => {
            log(format!("an unlearn request was refused: {e}"));
            refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the unlearn worker stopped before answering",
        ),
    }
}

/// `GET /v2/models/{name}/unlearn/{request}`.
pub async fn state(
    State(app): State<Arc<App>>,
    UrlPath((name, request)): UrlPath<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let Some(admin) = app.admin.as_ref() else {
        return super::not_found().await;
    };
    if let Err(r) = authorize(&app, admin, peer, &headers, false) {
        return r.into_response();
    }
    if let Err(r) = app.check_name(&name) {
        return r.into_response();
    }
    let Ok(r) = request.parse::<RequestId>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("'{request}' is not a request number"),
        );
    };
    match admin.requests.state(r, &app.serving) {
        Some(s) => (StatusCode::OK, Json(s)).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            &format!(
                "request {r} is not known to this server (requests made by other processes \
                 since it started are in `sisa ledger verify`)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(
            &p,
            "# admins\n0123456789abcdef0123\n\nfedcba9876543210fedc\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = AdminTokens::load(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let t = AdminTokens::load(&p).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(b"0123456789abcdef0123"), Some(0));
        assert_eq!(t.find(b"fedcba9876543210fedc"), Some(1));
        assert_eq!(t.find(b"0123456789abcdef012"), None);
        assert_eq!(t.find(b""), None);
        std::fs::write(&p, "short\n").unwrap();
        let e = AdminTokens::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("at least 16"), "{e}");
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_waits() {
        let r = RateLimit::new(2, 3);
        for _ in 0..3 {
            r.take(0).unwrap();
        }
        let wait = r.take(0).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        r.take(1).unwrap();
    }
}
