//! `sisa serve` in operation: the access log, `/metrics`, the connection cap, header deadlines,
//! a shutdown with half-open clients, and throttled admin authentication. The real binary, a
//! real run, raw TCP clients on loopback.

mod serving;

use serving::http::Client;
use serving::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-ops");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        train_digits(&dir, "ops", 3)
    })
}

fn infer_ok(c: &mut Client, server: &Server, rows: usize) {
    let r = c
        .post(
            &server.path("/infer"),
            &[("Content-Type", "application/json")],
            &infer_body(&digits_rows(rows), None),
        )
        .expect("infer");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Samples of a Prometheus text exposition, checked line by line against the format: every
/// family has HELP and TYPE before its samples, every sample is `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split(' ');
            let name = w.next().unwrap();
            let kind = w.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = l
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (head.to_string(), Vec::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(&name);
        assert!(typed.contains(family), "no TYPE before {line}");
        samples.push((name, labels, value));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .2
}

#[test]
fn every_request_is_logged_and_counted_and_metrics_parse() {
    let server = Server::start(run(), &[], &[]);
    let mut c = server.client();
    for _ in 0..7 {
        infer_ok(&mut c, &server, 2);
    }
    let bad = c.post(&server.path("/infer"), &[], b"{not json").unwrap();
    assert_eq!(bad.status, 400);
    let r = c.get("/metrics", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let samples = parse_metrics(&text);
    let route = "/v2/models/{name}/infer";
    assert_eq!(
        sample(
            &samples,
            "sisa_requests_total",
            &[("route", route), ("status", "200")]
        ),
        7.0
    );
    assert_eq!(
        sample(
            &samples,
            "sisa_requests_total",
            &[("route", route), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "sisa_request_duration_seconds_count",
            &[("route", route)]
        ),
        8.0
    );
    assert_eq!(sample(&samples, "sisa_served_version", &[]), 1.0);
    assert_eq!(sample(&samples, "sisa_excluded_shards", &[]), 0.0);
    assert_eq!(sample(&samples, "sisa_version_swaps_total", &[]), 1.0);
    assert!(sample(&samples, "sisa_open_connections", &[]) >= 1.0);
    // A second parser where CI installs it: the Prometheus client library's own.
    python_parses(&text);

    // One access-log line per request, naming route, status and version, and no payload.
    assert!(server.wait_stderr("route=/metrics", Duration::from_secs(5)));
    let log = server.stderr();
    let infer_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("route={route}")))
        .collect();
    assert_eq!(infer_lines.len(), 8, "{log}");
    assert_eq!(
        infer_lines
            .iter()
            .filter(|l| l.contains("status=200 ") && l.contains("version=1 excluded_shards=[]"))
            .count(),
        7
    );
    let row = digits_rows(1).remove(0);
    let value = format!("{}", row.iter().find(|v| **v > 1.0).unwrap());
    for l in &infer_lines {
        assert!(
            l.contains("peer=127.0.0.1:") && l.contains("latency_ms="),
            "{l}"
        );
        assert!(!l.contains(&format!("{value},")), "a feature value in {l}");
    }
}

fn python_parses(text: &str) {
    if !python_has(
        &["prometheus_client.parser"],
        "pip install prometheus-client",
    ) {
        return;
    }
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; from prometheus_client.parser import text_string_to_metric_families as p; \
             fams = list(p(sys.stdin.read())); print(len(fams))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(families >= 10, "{families} families");
}

#[test]
fn json_access_log_lines_are_json() {
    let server = Server::start(run(), &["--log-format", "json"], &[]);
    let mut c = server.client();
    infer_ok(&mut c, &server, 1);
    assert!(server.wait_stderr(
        "\"route\":\"/v2/models/{name}/infer\"",
        Duration::from_secs(5)
    ));
    let line = server
        .stderr()
        .lines()
        .find(|l| l.contains("/infer"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["version"], 1);
    assert_eq!(v["excluded_shards"], serde_json::json!([]));
}

/// Open a connection and send the start of a request header, never its end.
fn half_open(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"POST /v2/models/ops/infer HTTP/1.1\r\nHost: x\r\nContent-")
        .unwrap();
    s
}

#[test]
fn slow_clients_do_not_stop_a_normal_one_and_are_closed_at_the_header_deadline() {
    let server = Server::start(run(), &["--header-timeout-s", "1"], &[]);
    let slow: Vec<TcpStream> = (0..100).map(|_| half_open(&server)).collect();
    let mut c = server.client();
    let t = Instant::now();
    infer_ok(&mut c, &server, 1);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Each slow connection is closed by the server once its header deadline passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    for mut s in slow {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a slow connection was not closed at its deadline: {e}"),
        }
    }
    // A kept-alive connection that sends nothing more is closed too.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match idle.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("an idle connection stayed open: {e}"),
        }
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[test]
fn connections_over_the_cap_get_503_and_the_rest_are_served() {
    let server = Server::start(run(), &["--max-connections", "4"], &[]);
    // The readiness probe's connection is closed; give the server a moment to see it.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..4).map(|_| half_open(&server)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = TcpStream::connect(server.addr).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    over.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many open connections"));
    drop(held);
    // Once they are gone, the server answers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = server.client();
        if let Ok(r) = c.get("/v2/health/live", &[]) {
            if r.status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = server.client();
    let m = String::from_utf8(c.get("/metrics", &[]).unwrap().body).unwrap();
    assert!(sample(&parse_metrics(&m), "sisa_refused_connections_total", &[]) >= 1.0);
}

#[test]
fn a_stop_with_half_open_clients_exits_within_the_grace() {
    let mut server = Server::start(run(), &["--shutdown-grace-s", "2"], &[]);
    let _slow: Vec<TcpStream> = (0..10).map(|_| half_open(&server)).collect();
    let mut c = server.client();
    infer_ok(&mut c, &server, 1);
    let t = Instant::now();
    let status = server.terminate();
    let took = t.elapsed();
    assert!(status.success(), "{status}: {}", server.stderr());
    // The grace, the runtime's own second, and slack for a loaded machine.
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
}

#[test]
fn failed_admin_authentication_is_throttled_per_address_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let (tokens, token) = token_file(tmp.path());
    let server = Server::start(
        run(),
        &["--admin-token-file", tokens.to_str().unwrap()],
        &[],
    );
    let mut c = server.client();
    let path = server.path("/unlearn/1");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let auth = format!("Bearer wrong-token-{i:02}-xxxxxxxxxxxx");
        let r = c.get(&path, &[("Authorization", &auth)]).unwrap();
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
        }
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    // While throttled, even the right token from that address waits: guessing stays slow.
    let auth = format!("Bearer {token}");
    assert_eq!(
        c.get(&path, &[("Authorization", &auth)]).unwrap().status,
        429
    );
    let log = server.stderr();
    assert!(
        log.contains("failed admin authentication from 127.0.0.1 (5 this minute)"),
        "{log}"
    );
    assert!(!log.contains("wrong-token"), "a token in the log");
    let m = String::from_utf8(c.get("/metrics", &[]).unwrap().body).unwrap();
    let s = parse_metrics(&m);
    assert_eq!(sample(&s, "sisa_admin_auth_failures_total", &[]), 5.0);
    assert!(sample(&s, "sisa_admin_auth_throttled_total", &[]) >= 3.0);
}

#[test]
fn limits_out_of_range_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--max-connections", "0"),
        ("--header-timeout-s", "0"),
        ("--header-timeout-s", "3601"),
        ("--shutdown-grace-s", "3601"),
        ("--admin-auth-failures", "0"),
    ] {
        let err = Server::spawn(run(), &[flag, value], &[])
            .err()
            .unwrap_or_else(|| panic!("{flag} {value} was taken"));
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    let err = Server::spawn(run(), &["--log-format", "xml"], &[])
        .err()
        .expect("--log-format xml was taken");
    assert!(err.contains("invalid value 'xml'"), "{err}");
}
