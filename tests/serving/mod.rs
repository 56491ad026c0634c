//! Shared by `tests/serve.rs` and `benches/serve_load.rs`: train runs with the real binary,
//! start the real server on an ephemeral loopback port, and talk to it.
#![allow(dead_code)]

pub mod http;

use http::Client;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The real `sisa` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_sisa");

/// A file of the source tree.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Seed every test run uses (the binary's default).
pub const SEED: u64 = 7;

/// Train a run on `data` (CSV, optionally gzipped) with `shards` shards and 4 slices into
/// `dir/name`; the run's (and model's) name is `name`.
pub fn train(dir: &Path, name: &str, data: &str, test: &str, shards: usize) -> PathBuf {
    let out = dir.join(name);
    let o = Command::new(BIN)
        .arg("train")
        .arg("--data")
        .arg(repo(data))
        .arg("--test")
        .arg(repo(test))
        .arg("--model")
        .arg(repo("models/mlp.toml"))
        .args(["--shards", &shards.to_string(), "--slices", "4", "-q"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run sisa train");
    assert!(
        o.status.success(),
        "sisa train failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A digits run (1,412 rows, 64 features, 10 classes) with `shards` shards.
pub fn train_digits(dir: &Path, name: &str, shards: usize) -> PathBuf {
    train(
        dir,
        name,
        "datasets/digits/train.csv",
        "datasets/digits/test.csv",
        shards,
    )
}

/// A token file with mode 600 holding one fresh token; returns its path and the token.
pub fn token_file(dir: &Path) -> (PathBuf, String) {
    let token = format!(
        "t{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos()
    );
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod token file");
    }
    (path, token)
}

/// Rows of a CSV with `user_id,label,features...` (optionally gzipped): (user, label, features).
pub fn read_rows(rel: &str) -> Vec<(String, u32, Vec<f32>)> {
    let path = repo(rel);
    let file = std::fs::File::open(&path).expect("open dataset");
    let reader: Box<dyn std::io::Read> = if rel.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    BufReader::new(reader)
        .lines()
        .skip(1)
        .map(|l| {
            let l = l.expect("read dataset");
            let mut f = l.split(',');
            let user = f.next().expect("user column").to_string();
            let label = f.next().expect("label column").parse().expect("label");
            let x = f.map(|v| v.parse().expect("feature")).collect();
            (user, label, x)
        })
        .collect()
}

/// The first `n` held-out digits rows' features.
pub fn digits_rows(n: usize) -> Vec<Vec<f32>> {
    read_rows("datasets/digits/test.csv")
        .into_iter()
        .take(n)
        .map(|(_, _, x)| x)
        .collect()
}

/// Training users of digits in file order, each once.
pub fn digits_users() -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    read_rows("datasets/digits/train.csv")
        .into_iter()
        .map(|(u, _, _)| u)
        .filter(|u| seen.insert(u.clone()))
        .collect()
}

/// The body of an inference request for `rows` (nested data), with request `parameters`.
pub fn infer_body(rows: &[Vec<f32>], parameters: Option<Value>) -> Vec<u8> {
    let d = rows.first().map_or(0, Vec::len);
    let mut req = json!({
        "inputs": [{"name": "input", "shape": [rows.len(), d], "datatype": "FP32", "data": rows}],
    });
    if let Some(p) = parameters {
        req["parameters"] = p;
    }
    serde_json::to_vec(&req).expect("JSON serializes")
}

/// A tensor's data from an inference answer, as f64 (FP32 values convert exactly).
pub fn output(answer: &Value, name: &str) -> Vec<f64> {
    answer["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {answer}"))["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

/// The answer's `model_version` as a number.
pub fn version_of(answer: &Value) -> u64 {
    answer["model_version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no model_version in {answer}"))
}

/// A running `sisa serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub model: String,
    stderr: Arc<Mutex<String>>,
}

fn drain(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let mut s = into.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl Server {
    /// Start `sisa serve --run RUN --addr 127.0.0.1:0 ARGS` with `envs`; wait until it is ready.
    pub fn start(run: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let server = Server::spawn(run, args, envs).unwrap_or_else(|e| panic!("{e}"));
        server.wait_ready();
        server
    }

    /// Start the server and wait for its address; `Err` with its output if it exits first.
    pub fn spawn(run: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Server, String> {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--run")
            .arg(run)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sisa serve");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        drain(child.stdout.take().expect("piped"), stdout.clone());
        drain(child.stderr.take().expect("piped"), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = stdout.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(line) = out.lines().find(|l| l.contains("listening on ")) {
                let addr = line
                    .rsplit("listening on ")
                    .next()
                    .and_then(|a| a.trim().parse().ok())
                    .unwrap_or_else(|| panic!("cannot parse the address in '{line}'"));
                let model = line
                    .split('\'')
                    .nth(1)
                    .unwrap_or_else(|| panic!("no model name in '{line}'"))
                    .to_string();
                return Ok(Server {
                    child,
                    addr,
                    model,
                    stderr,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the drain threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let err = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return Err(format!("sisa serve exited with {status}: {err}"));
            }
            assert!(
                Instant::now() < deadline,
                "sisa serve printed no address in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until `GET /v2/health/ready` answers 200.
    pub fn wait_ready(&self) {
        let mut c = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = c.get("/v2/health/ready", &[]) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "not ready in 30 s: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The path of an endpoint of this server's model.
    pub fn path(&self, rest: &str) -> String {
        format!("/v2/models/{}{rest}", self.model)
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until stderr holds `needle`; false after `timeout`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Send SIGTERM and wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().expect("wait for sisa serve")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process may have exited already (terminate()); then there is nothing to kill.
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                eprintln!("cannot kill sisa serve: {e}");
            }
            if let Err(e) = self.child.wait() {
                eprintln!("cannot wait for sisa serve: {e}");
            }
        }
    }
}

/// Submit an unlearn request and return the answer.
pub fn unlearn(c: &mut Client, server: &Server, token: &str, users: &[&str]) -> http::Response {
    let auth = format!("Bearer {token}");
    let body = serde_json::to_vec(&json!({ "users": users })).expect("JSON serializes");
    c.post(
        &server.path("/unlearn"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .expect("unlearn request")
}

/// Poll a request's state until it is `want` (or `failed`); returns the last state.
pub fn wait_state(c: &mut Client, server: &Server, token: &str, request: u64, want: &str) -> Value {
    let auth = format!("Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .get(
                &server.path(&format!("/unlearn/{request}")),
                &[("Authorization", &auth)],
            )
            .expect("state request");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let s = r.json();
        if s["state"] == want || s["state"] == "failed" {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "request {request} not {want} in 60 s: {s}; {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `python3` imports every one of `modules` (each in a process of its own:
/// `tritonclient.grpc` and `kserve` cannot share one). When it cannot, the test that asked
/// skips, printing why and `install`; under `CI` it fails instead, so CI always runs it.
pub fn python_has(modules: &[&str], install: &str) -> bool {
    for module in modules {
        let why = match Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
        {
            Ok(o) if o.status.success() => continue,
            // The traceback's last line says why (ModuleNotFoundError: ...).
            Ok(o) => format!(
                "python3 -c 'import {module}' failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no message")
                    .trim()
            ),
            Err(e) => format!("cannot run python3: {e}"),
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and this test cannot run: {why}; install with: {install}"
        );
        println!("skipped: {why}; {install} to run this test");
        return false;
    }
    true
}

/// The README's "Serving" section, up to the next section.
pub fn readme_serving_section() -> String {
    let readme = std::fs::read_to_string(repo("README.md")).expect("read README.md");
    let start = readme
        .lines()
        .position(|l| l == "## Serving")
        .expect("README has a Serving section");
    let lines: Vec<&str> = readme
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    lines.join("\n")
}

/// The `python` code blocks of the README's "Serving" section, in order.
pub fn readme_serving_python() -> Vec<String> {
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in readme_serving_section().lines() {
        match (&mut block, line) {
            (None, "```python") => block = Some(String::new()),
            (Some(_), "```") => blocks.extend(block.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}
