//! What an operator sees: one access-log line per request on stderr, and `GET /metrics` in the
//! Prometheus text format.
//!
//! The access log names the time, the client address, the method, the route (the URL's
//! template, such as `/v2/models/{name}/infer`, never its raw path), the status, the latency,
//! and for answers from the model the version and the shards left out. It never holds feature
//! values, tokens or user ids. `--log-format json` writes each line as one JSON object.
//!
//! Metrics (all prefixed `sisa_`): requests by route and status, a latency histogram by route,
//! the served version, the shards left out, deletion requests by state (those this server's
//! admin endpoint tracks, and the requests other processes acknowledged that are not yet
//! served), version swaps, versions refused, open and refused connections, and failed admin
//! authentications.

use super::swap::Serving;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How access-log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `key=value` words on one line.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Latencies of one route.
#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Which version answered a request, attached to its response by the handler.
#[derive(Clone, Debug)]
pub struct Answered {
    /// The version.
    pub version: u64,
    /// Shards left out of its vote.
    pub excluded: Vec<usize>,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Connections closed at once because `--max-connections` were open.
    pub refused_connections: AtomicU64,
    /// Admin requests with a missing or wrong token.
    pub auth_failures: AtomicU64,
    /// Admin requests refused with 429 after too many failed authentications.
    pub auth_throttled: AtomicU64,
}

impl Metrics {
    /// Count one answered request.
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_insert(0) += 1;
        let mut latency = lock(&self.latency);
        let h = latency.entry(route.to_string()).or_default();
        for (c, &upper) in h.counts.iter_mut().zip(&BUCKETS) {
            if seconds <= upper {
                *c += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The Prometheus text exposition of every counter, with the serving state.
    pub fn render(&self, serving: &Serving, deletions: &BTreeMap<&'static str, u64>) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP sisa_{name} {help}\n# TYPE sisa_{name} {kind}");
        };
        let one = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            head(out, name, kind, help);
            let _ = writeln!(out, "sisa_{name} {v}");
        };
        head(
            &mut out,
            "requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "sisa_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        head(
            &mut out,
            "request_duration_seconds",
            "histogram",
            "Time from a request's head to its response, by route.",
        );
        for (route, h) in lock(&self.latency).iter() {
            let r = escape(route);
            for (c, upper) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "sisa_request_duration_seconds_bucket{{route=\"{r}\",le=\"{upper}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "sisa_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "sisa_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "sisa_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let served = serving.current();
        let counters = serving.counters();
        let gauge = "gauge";
        let counter = "counter";
        one(
            &mut out,
            "served_version",
            gauge,
            "The ensemble version answers come from (0 while loading).",
            served.as_ref().map_or(0, |s| s.version()),
        );
        one(
            &mut out,
            "excluded_shards",
            gauge,
            "Shards left out of every answer while a deletion that touches them is applied.",
            served.as_ref().map_or(0, |s| s.excluded.len() as u64),
        );
        head(
            &mut out,
            "deletion_requests",
            gauge,
            "Deletion requests by state.",
        );
        for (state, n) in deletions {
            let _ = writeln!(out, "sisa_deletion_requests{{state=\"{state}\"}} {n}");
        }
        let relaxed = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "version_swaps_total",
                counter,
                "Versions swapped in.",
                counters.swaps,
            ),
            (
                "versions_refused_total",
                counter,
                "Published versions that could not be served (the old one kept serving).",
                counters.refused,
            ),
            (
                "open_connections",
                gauge,
                "HTTP connections open now.",
                relaxed(&self.open_connections),
            ),
            (
                "refused_connections_total",
                counter,
                "Connections closed at once because --max-connections were open.",
                relaxed(&self.refused_connections),
            ),
            (
                "admin_auth_failures_total",
                counter,
                "Admin requests with a missing or wrong bearer token.",
                relaxed(&self.auth_failures),
            ),
            (
                "admin_auth_throttled_total",
                counter,
                "Admin requests refused with 429 after too many failed authentications.",
                relaxed(&self.auth_throttled),
            ),
        ] {
            one(&mut out, name, kind, help, v);
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each update is one insert or increment: a panic cannot leave a value half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the access log and the metrics need from the app.
#[derive(Clone, Debug)]
pub struct Ops {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// How log lines are written.
    pub format: LogFormat,
}

/// The middleware: time every request, count it, and write its access-log line.
pub async fn observe(State(ops): State<Ops>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let response = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    ops.metrics.record(&route, status, seconds);
    let answered = response.extensions().get::<Answered>();
    let line = access_line(
        ops.format,
        peer.as_deref().unwrap_or("-"),
        method.as_str(),
        &route,
        status,
        seconds,
        answered,
    );
    eprintln!("{line}");
    response
}

/// One access-log line.
pub fn access_line(
    format: LogFormat,
    peer: &str,
    method: &str,
    route: &str,
    status: u16,
    seconds: f64,
    answered: Option<&Answered>,
) -> String {
    let time = rfc3339_millis(SystemTime::now());
    match format {
        LogFormat::Text => {
            let mut line = format!(
                "sisa serve: access time={time} peer={peer} method={method} route={route} status={status} latency_ms={:.3}",
                seconds * 1e3
            );
            if let Some(a) = answered {
                let ex: Vec<String> = a.excluded.iter().map(|k| k.to_string()).collect();
                let _ = write!(
                    line,
                    " version={} excluded_shards=[{}]",
                    a.version,
                    ex.join(",")
                );
            }
            line
        }
        LogFormat::Json => {
            let mut v = serde_json::json!({
                "time": time,
                "peer": peer,
                "method": method,
                "route": route,
                "status": status,
                "latency_ms": (seconds * 1e6).round() / 1e3,
            });
            if let Some(a) = answered {
                v["version"] = a.version.into();
                v["excluded_shards"] = serde_json::json!(a.excluded);
            }
            v.to_string()
        }
    }
}

/// `GET /metrics`.
pub fn metrics_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `2026-12-01T13:40:00.123Z` for `t`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_131_200_123);
        assert_eq!(rfc3339_millis(t), "2026-12-01T13:20:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_histogram_is_cumulative_and_lines_hold_no_payload() {
        let m = Metrics::default();
        m.record("/v2/models/{name}/infer", 200, 0.0003);
        m.record("/v2/models/{name}/infer", 200, 0.003);
        m.record("/v2/models/{name}/infer", 400, 2.0);
        let text = m.render(&Serving::new(), &BTreeMap::new());
        assert!(text
            .contains("sisa_requests_total{route=\"/v2/models/{name}/infer\",status=\"200\"} 2"));
        assert!(text.contains(
            "sisa_request_duration_seconds_bucket{route=\"/v2/models/{name}/infer\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "sisa_request_duration_seconds_bucket{route=\"/v2/models/{name}/infer\",le=\"+Inf\"} 3"
        ));
        let a = Answered {
            version: 3,
            excluded: vec![1, 4],
        };
        let line = access_line(
            LogFormat::Text,
            "127.0.0.1:9",
            "POST",
            "/x",
            200,
            0.001,
            Some(&a),
        );
        assert!(line.ends_with("version=3 excluded_shards=[1,4]"), "{line}");
        let json: serde_json::Value = serde_json::from_str(&access_line(
            LogFormat::Json,
            "127.0.0.1:9",
            "POST",
            "/x",
            200,
            0.001,
            Some(&a),
        ))
        .unwrap();
        assert_eq!(json["excluded_shards"], serde_json::json!([1, 4]));
    }
}
