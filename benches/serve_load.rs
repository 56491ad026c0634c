//! Load and latency of `sisa serve` (a benchmark, not a test): `cargo bench --bench serve_load`.
//!
//! Trains an S=20, R=4 MLP run on the bundled mnist-5k with the real binary, starts the real
//! server on loopback, and drives it with keep-alive HTTP/1.1 clients:
//! - throughput and p50/p99 latency of single-row and 64-row inference requests;
//! - for deletion requests over the wire: the time to the 202 acknowledgement, from the
//!   acknowledgement to the first answer that leaves the affected shard out, and from the
//!   acknowledgement to the first answer from the retrained version.
//!
//! `SISA_BENCH_SECONDS` (default 10) sets the length of each load phase, `SISA_BENCH_CLIENTS`
//! (default `1,4`) the numbers of concurrent clients, each measured in turn: one client gives
//! the latency of a request alone, more give it under load. The clients share the machine with
//! the server, so the figures are for the whole loopback system. Results print as a Markdown
//! table.

#[path = "../tests/serving/mod.rs"]
mod serving;

use serde_json::Value;
use serving::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 20;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Load {
    requests: usize,
    errors: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// `clients` keep-alive clients sending `batch`-row requests back to back for `seconds`.
fn load(server: &Server, rows: &[Vec<f32>], batch: usize, clients: usize, seconds: f64) -> Load {
    let bodies: Vec<Vec<u8>> = (0..32)
        .map(|i| {
            let start = (i * batch) % (rows.len() - batch);
            infer_body(&rows[start..start + batch], None)
        })
        .collect();
    let path = server.path("/infer");
    let run_for = |secs: f64, record: bool| {
        let all = Mutex::new((Vec::new(), 0usize, 0usize));
        let started = Instant::now();
        std::thread::scope(|s| {
            for c in 0..clients {
                let (bodies, path, all) = (&bodies, &path, &all);
                let mut client = server.client();
                s.spawn(move || {
                    let deadline = started + Duration::from_secs_f64(secs);
                    let (mut lat, mut n, mut errors) = (Vec::new(), 0, 0);
                    let mut i = c;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ok = client
                            .post(
                                path,
                                &[("Content-Type", "application/json")],
                                &bodies[i % bodies.len()],
                            )
                            .is_ok_and(|r| r.status == 200);
                        if record {
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                        n += 1;
                        errors += usize::from(!ok);
                        i += 1;
                    }
                    let mut a = all.lock().unwrap();
                    a.0.extend(lat);
                    a.1 += n;
                    a.2 += errors;
                });
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        let (mut latencies_us, requests, errors) = all.into_inner().unwrap();
        latencies_us.sort_unstable();
        Load {
            requests,
            errors,
            seconds,
            latencies_us,
        }
    };
    run_for(1.0, false); // warm-up
    run_for(seconds, true)
}

/// One probe answer: sent, received, version, excluded shards.
type Probe = (Instant, Instant, u64, Vec<u64>);

struct Forget {
    ack_ms: f64,
    to_excluded_ms: f64,
    to_new_version_ms: f64,
    leaked: usize,
}

/// Submit one deletion while a prober predicts back to back; time what the answers show.
fn forget(server: &Server, token: &str, user: &str, shard: usize, probe: &[u8]) -> Forget {
    let stop = AtomicBool::new(false);
    let answers: Mutex<Vec<Probe>> = Mutex::new(Vec::new());
    let before = {
        let a = server
            .client()
            .post(&server.path("/infer"), &[], probe)
            .unwrap()
            .json();
        version_of(&a)
    };
    let (sent, acked) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = server.client();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.post(&server.path("/infer"), &[], probe).unwrap();
                assert_eq!(r.status, 200);
                let a: Value = r.json();
                let excluded = a["parameters"]["excluded_shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                answers
                    .lock()
                    .unwrap()
                    .push((t, Instant::now(), version_of(&a), excluded));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let mut admin = server.client();
        let sent = Instant::now();
        let r = unlearn(&mut admin, server, token, &[user]);
        let acked = Instant::now();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let request = r.json()["request"].as_u64().unwrap();
        let state = wait_state(&mut admin, server, token, request, "done");
        assert_eq!(state["state"], "done", "{state}");
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        (sent, acked)
    });
    let answers = answers.into_inner().unwrap();
    let k = shard as u64;
    let first_excluded = answers
        .iter()
        .find(|(_, got, _, ex)| *got > acked && ex.contains(&k))
        .map(|(_, got, _, _)| *got)
        .expect("an answer without the shard");
    let first_new = answers
        .iter()
        .find(|(_, got, v, _)| *got > acked && *v > before)
        .map(|(_, got, _, _)| *got)
        .expect("an answer from the new version");
    // Answers to requests sent after the acknowledgement that still used the shard: must be 0.
    let leaked = answers
        .iter()
        .filter(|(t, _, v, ex)| *t > acked && *v == before && !ex.contains(&k))
        .count();
    Forget {
        ack_ms: (acked - sent).as_secs_f64() * 1e3,
        to_excluded_ms: (first_excluded - acked).as_secs_f64() * 1e3,
        to_new_version_ms: (first_new - acked).as_secs_f64() * 1e3,
        leaked,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let seconds = env_or("SISA_BENCH_SECONDS", 10) as f64;
    let clients: Vec<usize> = std::env::var("SISA_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("SISA_BENCH_CLIENTS is a list of counts")
        })
        .collect();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-bench");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the old benchmark run");
    }
    std::fs::create_dir_all(&dir).expect("create the benchmark folder");
    let t = Instant::now();
    let run = train(
        &dir,
        "mnist",
        "datasets/mnist-5k/train.csv.gz",
        "datasets/mnist-5k/test.csv.gz",
        SHARDS,
    );
    eprintln!(
        "trained S={SHARDS} on mnist-5k in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let (tokens, token) = token_file(&dir);
    let server = Server::start(
        &run,
        &[
            "--admin-token-file",
            tokens.to_str().unwrap(),
            "--admin-rate",
            "1000",
        ],
        &[],
    );
    let rows: Vec<Vec<f32>> = read_rows("datasets/mnist-5k/test.csv.gz")
        .into_iter()
        .map(|(_, _, x)| x)
        .collect();

    let cpu = sisa::run::config::cpu_model();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\n`sisa serve` on loopback: mnist-5k (784 features, 10 classes), MLP 784-128-10, S={SHARDS} shards, R=4.");
    println!("{cpu}, {cores} cores shared by server and clients; keep-alive clients, {seconds} s per row.\n");
    println!("| request | clients | requests/s | rows/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &c in &clients {
        for batch in [1usize, 64] {
            let l = load(&server, &rows, batch, c, seconds);
            println!(
                "| {batch} row{} | {c} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
                if batch == 1 { "" } else { "s" },
                l.requests as f64 / l.seconds,
                (l.requests * batch) as f64 / l.seconds,
                l.percentile(0.50),
                l.percentile(0.99),
                l.errors
            );
        }
    }

    // Deletions: one user per trial, each in another shard.
    let mut users: Vec<(usize, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (u, _, _) in read_rows("datasets/mnist-5k/train.csv.gz") {
        let k = sisa::plan::shard_of_user(SEED, &u, SHARDS);
        if seen.insert(u.clone()) && !users.iter().any(|(s, _)| *s == k) {
            users.push((k, u));
        }
    }
    let probe = infer_body(&rows[..1], None);
    let trials: Vec<Forget> = users
        .iter()
        .take(5)
        .map(|(k, u)| forget(&server, &token, u, *k, &probe))
        .collect();
    let col = |f: fn(&Forget) -> f64| {
        let v: Vec<f64> = trials.iter().map(f).collect();
        let max = v.iter().copied().fold(0.0, f64::max);
        (median(v), max)
    };
    let (ack, ack_max) = col(|f| f.ack_ms);
    let (ex, ex_max) = col(|f| f.to_excluded_ms);
    let (new, new_max) = col(|f| f.to_new_version_ms);
    let leaked: usize = trials.iter().map(|f| f.leaked).sum();
    println!("\n| unlearn over the wire ({} requests, one user each, one shard each) | median ms | max ms |", trials.len());
    println!("|---|---:|---:|");
    println!("| POST to 202 (ledger fsync'd, shard left out) | {ack:.2} | {ack_max:.2} |");
    println!("| 202 to the first answer without the shard | {ex:.2} | {ex_max:.2} |");
    println!("| 202 to the first answer from the retrained version | {new:.1} | {new_max:.1} |");
    println!("\nanswers to requests sent after a 202 that still used the shard: {leaked}");
}
