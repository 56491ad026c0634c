//! The HTTP accept loop: a cap on open connections, a deadline for each request's header and
//! for idle connections, and a shutdown that finishes the requests in flight within a bound.
//!
//! - **Connections.** At most `max_connections` are open; one more is answered `503` with
//!   `Connection: close` at once and closed, so slow or idle clients cannot use up the process's
//!   file descriptors (which the watcher and the admin worker need too).
//! - **Header deadline.** A request's header must arrive whole within `header_timeout` of the
//!   connection waiting for it, or the connection is closed: a client that sends half a header
//!   and waits, or keeps a connection open without sending the next request, holds nothing for
//!   long.
//! - **Shutdown.** On stop the listener closes, every connection finishes the request it is
//!   answering and closes, and after `shutdown_grace` the rest are dropped, so the server exits
//!   even with half-open clients.

use super::ops::Metrics;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

/// The limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request's whole header, on a new or an idle kept-alive connection.
    pub header_timeout: Duration,
    /// Longest shutdown waits for the requests in flight.
    pub shutdown_grace: Duration,
}

/// A default connection cap: half the process's open-file limit (the other half stays for
/// the run's files and the watcher), at least 16 and at most 10,000.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft: u64 = if ok { limit.rlim_cur } else { 1024 };
    (soft / 2).clamp(16, 10_000) as usize
}

/// Serve `router` on `listener` until `stop` resolves, within `limits`. `slots` holds the
/// connection slots this server shares with the gRPC one (`limits.max_connections` in all).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    let mut warned_full = None::<Instant>;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before it was taken):
                    // wait a moment rather than spin.
                    super::log(format!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
            if warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                super::log(format!(
                    "{} connections are open (--max-connections): closing new ones with 503",
                    limits.max_connections
                ));
                warned_full = Some(Instant::now());
            }
            refuse_connection(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            super::log(format!("cannot set TCP_NODELAY on a connection: {e}"));
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let io = TokioIo::new(tcp);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(io, service);
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // A connection ends with an error when its client misbehaves (a header cut short,
            // a deadline passed): nothing to report beyond closing it.
            let _ = conn.await;
            metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => super::log(format!(
            "connections still open {} s after the stop: closing them",
            limits.shutdown_grace.as_secs_f64()
        )),
    }
}

/// Answer a connection over the cap with a 503 and close it, without waiting on the client.
fn refuse_connection(tcp: TcpStream) {
    const BODY: &str = "{\"error\":\"the server has too many open connections; retry later\"}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // The socket's send buffer takes a few hundred bytes at once; if it does not, the client
    // just sees the connection close.
    let _ = tcp.try_write(answer.as_bytes());
}
