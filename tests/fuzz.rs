//! Bounded, seeded fuzzing of everything `sisa` reads, through the real binary on real files.
//!
//! Each test mutates one kind of input and runs one real command on it, in a temporary
//! directory:
//!
//! - `fuzz_csv_train`: the first 40 lines of `datasets/digits/train.csv` (LF or CRLF, plain or
//!   gzipped, mutated before or after gzipping) as `train --data`, as `train --test`, or as
//!   `predict --data` on a run trained from the unmutated file; plus known-answer cases (one bad
//!   value on line k) whose message must name line k and the column.
//! - `fuzz_idx_train`: small IDX images and labels files (plain or gzipped), the header's magic
//!   and sizes in particular (huge ones, and ones that declare the most values a reader takes),
//!   to `sisa train --users uniform:5`.
//! - `fuzz_run_files`: one file of a trained and once-unlearned run (shard or held-out rows, a
//!   checkpoint, the manifest, `CURRENT`, `run.json`, `secret`, a ledger line, the receipt),
//!   then one of `status`, `verify`, `unlearn --user`, `eval`, `receipt verify`.
//! - `fuzz_http`: mutated OIP v2 inference bodies (and a few mutated paths) to one `sisa serve`,
//!   mutated deletion requests (bodies, tokens, request numbers) to a second one.
//! - `fuzz_train_flags`: every numeric flag of `sisa train` (and `--users`) set to each of a
//!   fixed list of awkward values.
//!
//! Mutations: bit flips, overwrites and insertions of interesting bytes and tokens (NUL, 0xff,
//! `\r`, `\n`, `,`, `"`, digits, `nan`, `1e39`, huge integers), replacing a number or a field,
//! big- and little-endian size fields set to extreme values, truncation, duplication of a byte
//! range, line swaps; one to three stacked.
//!
//! Every case asserts: no panic (exit 101) or death by a signal; no hang (each command is
//! killed after 20 s); every child stays under [`MAX_RSS_KIB`] resident and runs with its
//! address space limited to [`ADDRESS_SPACE_LIMIT`], so a tiny file that makes the binary reserve
//! gigabytes (even untouched) aborts and is reported; a refusal (non-zero exit) names the mutated
//! file and leaves the run directory's bytes unchanged (for `train`: no `--out`, nothing else
//! beside it, no `.*.partial-*`); where a command must read a mutated file, succeeding anyway is
//! a failure ("accepted silently"). Over HTTP: a complete response, 2xx or 4xx, JSON errors, a
//! damaged token never accepted, the server alive and without a logged panic, every accepted
//! deletion done, and a valid request still answered 200. At the end of each test,
//! `getrusage(RUSAGE_CHILDREN)` max RSS is printed and bounded too.
//!
//! Budget: every test stops after `SISA_FUZZ_CASES` cases or `SISA_FUZZ_SECONDS` seconds of
//! wall clock, whichever comes first (defaults: [`DEFAULT_CASES`] cases and [`DEFAULT_SECONDS`]
//! seconds per test, the flags' fixed list excepted; the whole file takes about 20 s on an idle
//! 2-core machine and up to about 35 s on a busy one, tests running two at a time). `SISA_FUZZ_SEED` (decimal or 0x-hex) changes the seed;
//! each case draws from its own generator seeded by (seed, test, case number), so a case is the
//! same whatever ran before it, and `SISA_FUZZ_CASE=N` runs case N alone. A longer run:
//!
//! ```sh
//! SISA_FUZZ_SECONDS=600 SISA_FUZZ_CASES=1000000 SISA_FUZZ_SEED=0x1234 \
//!     cargo test --release --test fuzz -- --nocapture --test-threads 2
//! ```
//!
//! A failing case prints the seed, the case number, the test, the exact mutations, the command
//! it ran and a command that reruns that case alone, and saves the mutated file (for a run, the
//! whole mutated run) under `target/tmp/fuzz-failures/<test>/case-<N>/`; the test then fails
//! listing every failing case. `--nocapture` also prints a summary per test: cases run, how
//! they ended (exit codes, HTTP statuses), the largest child's peak RSS.

mod common;
mod serving;

use common::{copy_dir, root, tree_digest, Csv};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Cases per test unless `SISA_FUZZ_CASES` says otherwise (`fuzz_http`: twenty times as many,
/// a case there being one request; `fuzz_train_flags` has fewer cases than this).
const DEFAULT_CASES: u64 = 1000;
/// Wall-clock seconds per test unless `SISA_FUZZ_SECONDS` says otherwise.
const DEFAULT_SECONDS: f64 = 10.0;
/// Seed unless `SISA_FUZZ_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5153_4146_555a_0001;
/// A command running longer than this hangs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest resident set any child may reach, in KiB. Commands on the fuzzed files peak near
/// 20 MiB (the inputs are a few kilobytes); the largest honest child is `train --classes=65536`
/// (the documented maximum: a 64 x 65536 model) at about 250 MiB. Twice that is the bound.
const MAX_RSS_KIB: i64 = 512 * 1024;
/// `RLIMIT_AS` of every child. Honest commands on the fuzzed files run in under 50 MiB of
/// address space, the server in under 400 MiB, `train --classes=65536` in under 512 MiB
/// (measured with `ulimit -v`); a reservation of gigabytes for a tiny file fails instead of
/// being lazily mapped and never touched, the binary aborts, and the harness reports it.
const ADDRESS_SPACE_LIMIT: u64 = 1 << 30;
/// Failures printed in full per test (all are counted).
const MAX_PRINTED: usize = 25;

// ---------------------------------------------------------------------------------------------
// Budget, seeds and failures.

struct Budget {
    seed: u64,
    cases: u64,
    seconds: f64,
    only: Option<u64>,
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")))
}

impl Budget {
    fn from_env(default_cases: u64, default_seconds: f64) -> Budget {
        let seconds = std::env::var("SISA_FUZZ_SECONDS").ok().map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("SISA_FUZZ_SECONDS={v:?}: {e}"))
        });
        Budget {
            seed: env_number("SISA_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
            cases: env_number("SISA_FUZZ_CASES").unwrap_or(default_cases),
            seconds: seconds.unwrap_or(default_seconds),
            only: env_number("SISA_FUZZ_CASE"),
        }
    }
}

/// SplitMix64: small, seedable, and the same on every platform.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// The generator of one case: a pure function of (seed, test, case).
fn case_rng(seed: u64, target: &str, case: u64) -> Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut r = Rng(seed ^ h ^ case.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next();
    r
}

/// One test's bookkeeping: which cases to run, failures, the largest child seen.
struct Fuzz {
    target: &'static str,
    test: &'static str,
    budget: Budget,
    started: Instant,
    next_case: u64,
    ran: u64,
    failures: Vec<String>,
    failed_cases: BTreeSet<u64>,
    max_rss_kib: i64,
    artefacts: PathBuf,
    /// How the cases ended: (outcome, count), e.g. ("exit 1", 120).
    outcomes: std::collections::BTreeMap<String, u64>,
}

impl Fuzz {
    fn new(
        target: &'static str,
        test: &'static str,
        default_cases: u64,
        default_seconds: f64,
    ) -> Fuzz {
        let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fuzz-failures")
            .join(test);
        if artefacts.exists() {
            std::fs::remove_dir_all(&artefacts).expect("clear old fuzz artefacts");
        }
        let budget = Budget::from_env(default_cases, default_seconds);
        Fuzz {
            target,
            test,
            started: Instant::now(),
            next_case: budget.only.unwrap_or(0),
            budget,
            ran: 0,
            failures: Vec::new(),
            failed_cases: BTreeSet::new(),
            max_rss_kib: 0,
            artefacts,
            outcomes: Default::default(),
        }
    }

    /// The next case number, or `None` once the budget is spent.
    fn next_case(&mut self) -> Option<u64> {
        if let Some(only) = self.budget.only {
            if self.ran > 0 {
                return None;
            }
            self.ran = 1;
            return Some(only);
        }
        if self.ran >= self.budget.cases
            || self.started.elapsed().as_secs_f64() >= self.budget.seconds
        {
            return None;
        }
        let c = self.next_case;
        self.next_case += 1;
        self.ran += 1;
        Some(c)
    }

    fn rng(&self, case: u64) -> Rng {
        case_rng(self.budget.seed, self.target, case)
    }

    fn repro(&self, case: u64) -> String {
        format!(
            "SISA_FUZZ_SEED={:#x} SISA_FUZZ_CASE={case} cargo test --release --test fuzz {} -- --nocapture",
            self.budget.seed, self.test
        )
    }

    /// Where to keep what reproduces `case`.
    fn artefact_dir(&self, case: u64) -> PathBuf {
        let d = self.artefacts.join(format!("case-{case}"));
        std::fs::create_dir_all(&d).expect("create the artefact folder");
        d
    }

    /// Record a failure of `case`: what it did (`what`: mutations and command) and what broke.
    fn fail(&mut self, case: u64, what: &str, problem: &str) {
        let msg = format!(
            "FAIL {} seed={:#x} case={case}\n  case: {what}\n  problem: {problem}\n  rerun: {}\n  artefacts: {}",
            self.target,
            self.budget.seed,
            self.repro(case),
            self.artefacts.join(format!("case-{case}")).display()
        );
        if self.failures.len() < MAX_PRINTED {
            eprintln!("{msg}\n");
        }
        self.failures.push(msg);
        self.failed_cases.insert(case);
    }

    /// Record a failure found after all cases (it may depend on all of them): the rerun is the
    /// whole test with the same seed and budget.
    fn fail_after(&mut self, what: &str, problem: &str) {
        let msg = format!(
            "FAIL {} seed={:#x} after {} case(s)\n  case: {what}\n  problem: {problem}\n  rerun: \
             SISA_FUZZ_SEED={:#x} SISA_FUZZ_CASES={} cargo test --release --test fuzz {} -- --nocapture",
            self.target, self.budget.seed, self.ran, self.budget.seed, self.ran, self.test
        );
        eprintln!("{msg}\n");
        self.failures.push(msg);
    }

    fn note_rss(&mut self, kib: i64) {
        self.max_rss_kib = self.max_rss_kib.max(kib);
    }

    /// Count how a case ended (for the summary: a target whose cases all end alike tests
    /// little).
    fn note(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }

    fn note_run(&mut self, o: &Outcome) {
        self.note_rss(o.max_rss_kib);
        self.note(o.status.to_string());
    }

    /// Print the summary, bound the children's peak memory, and fail if any case failed.
    fn finish(self) {
        let children = children_max_rss_kib();
        eprintln!(
            "fuzz {}: {} case(s) in {:.1} s (seed {:#x}), outcomes {:?}, {} failure(s) in {} case(s); \
             largest child of this test {} KiB, getrusage(RUSAGE_CHILDREN) max RSS {} KiB (bound {} KiB)",
            self.target,
            self.ran,
            self.started.elapsed().as_secs_f64(),
            self.budget.seed,
            self.outcomes,
            self.failures.len(),
            self.failed_cases.len(),
            self.max_rss_kib,
            children,
            MAX_RSS_KIB
        );
        assert!(self.ran > 0, "{}: the budget allowed no case", self.target);
        if !self.failures.is_empty() {
            let cases: Vec<String> = self.failed_cases.iter().map(u64::to_string).collect();
            panic!(
                "{}: {} failure(s) in case(s) {}; first:\n{}",
                self.target,
                self.failures.len(),
                cases.join(", "),
                self.failures[0]
            );
        }
        // getrusage(RUSAGE_CHILDREN) is process-wide and the tests of this file run side by
        // side: past the bound, it fails the test whose own child it was (whose per-case check
        // has named the case, above); the others only say so.
        if children >= MAX_RSS_KIB && self.max_rss_kib < MAX_RSS_KIB {
            eprintln!(
                "fuzz {}: the {children} KiB child belongs to another test of this file",
                self.target
            );
        } else {
            assert!(
                children < MAX_RSS_KIB,
                "{}: getrusage(RUSAGE_CHILDREN): a child reached {children} KiB resident (bound \
                 {MAX_RSS_KIB} KiB)",
                self.target
            );
        }
    }
}

fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    let r = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(r, 0, "getrusage: {}", std::io::Error::last_os_error());
    ru.ru_maxrss
}

// ---------------------------------------------------------------------------------------------
// Running the binary: a timeout, an address-space limit, and each child's own peak RSS.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Status {
    Exited(i32),
    Signaled(i32),
    TimedOut,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(c) => write!(f, "exit code {c}"),
            Status::Signaled(s) => write!(f, "killed by signal {s}"),
            Status::TimedOut => write!(f, "still running after {COMMAND_TIMEOUT:?} (killed)"),
        }
    }
}

struct Outcome {
    status: Status,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        match self.status {
            Status::Exited(c) => Some(c),
            _ => None,
        }
    }
}

/// `sisa` with every child's address space limited.
fn sisa_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sisa"));
    cmd.current_dir(root()).env("RAYON_NUM_THREADS", "1");
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_LIMIT as libc::rlim_t,
                rlim_max: ADDRESS_SPACE_LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// Reap `child`, waiting at most `timeout` before killing it; returns how it ended and its
/// peak resident set in KiB. Reaping with `wait4` (never `Child::wait`) gives each child's
/// own rusage.
fn reap(child: &mut Child, timeout: Duration) -> (Status, i64) {
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(500);
    let mut timed_out = false;
    loop {
        let mut raw = 0;
        // SAFETY: getrusage-style out-parameter, zeroed plain data.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut raw, flags, &mut ru) };
        if r == pid {
            let status = if timed_out {
                Status::TimedOut
            } else if libc::WIFEXITED(raw) {
                Status::Exited(libc::WEXITSTATUS(raw))
            } else if libc::WIFSIGNALED(raw) {
                Status::Signaled(libc::WTERMSIG(raw))
            } else {
                Status::Signaled(-1)
            };
            return (status, ru.ru_maxrss);
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("wait4({pid}): {e}");
        }
        if Instant::now() >= deadline {
            // Not reaped yet, so the pid is still ours.
            let _ = child.kill();
            timed_out = true;
            continue;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

fn read_capped(mut f: std::fs::File) -> String {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).expect("rewind");
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf).expect("read output");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Run `sisa ARGS` to completion (or the timeout).
fn run_sisa(args: &[OsString]) -> Outcome {
    run_sisa_for(args, COMMAND_TIMEOUT)
}

/// Run `sisa ARGS`, killing it after `timeout`.
fn run_sisa_for(args: &[OsString], timeout: Duration) -> Outcome {
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let mut cmd = sisa_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    let mut child = cmd.spawn().expect("start sisa");
    let (status, max_rss_kib) = reap(&mut child, timeout);
    Outcome {
        status,
        stdout: read_capped(out),
        stderr: read_capped(err),
        max_rss_kib,
    }
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

fn show_args(args: &[OsString]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains([' ', '"', '\'', '\\']) {
                format!("{s:?}")
            } else {
                s.into_owned()
            }
        })
        .collect();
    format!("sisa {}", words.join(" "))
}

/// The checks every command gets: no panic, no signal, no hang, bounded memory, an expected
/// exit code. Returns the problems.
fn process_problems(o: &Outcome, allowed_codes: &[i32]) -> Vec<String> {
    let mut p = Vec::new();
    match o.status {
        Status::Exited(101) => p.push(format!("panicked (exit 101); stderr:\n{}", o.stderr)),
        Status::Exited(c) if !allowed_codes.contains(&c) => p.push(format!(
            "unexpected exit code {c} (allowed {allowed_codes:?}); stderr:\n{}",
            o.stderr
        )),
        Status::Exited(_) => {}
        Status::Signaled(s) => p.push(format!("killed by signal {s}; stderr:\n{}", o.stderr)),
        Status::TimedOut => p.push(format!("hang: {}; stderr so far:\n{}", o.status, o.stderr)),
    }
    if o.max_rss_kib >= MAX_RSS_KIB {
        p.push(format!(
            "peak resident memory {} KiB, bound {MAX_RSS_KIB} KiB",
            o.max_rss_kib
        ));
    }
    p
}

/// The first `line N` in `text`.
fn line_number(text: &str) -> Option<u64> {
    let mut rest = text;
    while let Some(i) = rest.find("line ") {
        rest = &rest[i + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            return Some(n);
        }
    }
    None
}

/// True when `text` says `line {n}` (not `line {n}0`).
fn names_line(text: &str, n: u64) -> bool {
    let needle = format!("line {n}");
    text.match_indices(&needle).any(|(i, _)| {
        !text[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// One exact change to a file's bytes. Offsets are into the bytes as they are when this
/// mutation applies (after the mutations before it).
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    Overwrite {
        at: usize,
        with: Vec<u8>,
    },
    Insert {
        at: usize,
        with: Vec<u8>,
    },
    Replace {
        at: usize,
        len: usize,
        with: Vec<u8>,
    },
    Truncate {
        len: usize,
    },
    Duplicate {
        from: usize,
        len: usize,
        to: usize,
    },
    /// `times` more copies of bytes `from..from + len`, right after them.
    Repeat {
        from: usize,
        len: usize,
        times: usize,
    },
    SwapLines {
        a: usize,
        b: usize,
    },
    SetU32 {
        at: usize,
        value: u32,
        big_endian: bool,
    },
    SetU64 {
        at: usize,
        value: u64,
        big_endian: bool,
    },
    /// `inner` applied to bytes `start..start + len` only (`what` says which part that is).
    Within {
        start: usize,
        len: usize,
        what: String,
        inner: Box<Mutation>,
    },
    /// Every `\n` becomes `\r\n` (the file is still valid; a base for other mutations).
    Crlf,
}

fn esc(b: &[u8]) -> String {
    format!("b\"{}\"", b.escape_ascii())
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mutation::FlipBit { at, bit } => write!(f, "flip bit {bit} of byte {at}"),
            Mutation::Overwrite { at, with } => {
                write!(f, "overwrite from byte {at} with {}", esc(with))
            }
            Mutation::Insert { at, with } => write!(f, "insert {} at byte {at}", esc(with)),
            Mutation::Replace { at, len, with } => {
                write!(f, "replace bytes {at}..{} with {}", at + len, esc(with))
            }
            Mutation::Truncate { len } => write!(f, "truncate to {len} bytes"),
            Mutation::Duplicate { from, len, to } => {
                write!(
                    f,
                    "copy bytes {from}..{} to byte {to} (inserted)",
                    from + len
                )
            }
            Mutation::Repeat { from, len, times } => {
                write!(f, "repeat bytes {from}..{} {times} more times", from + len)
            }
            Mutation::SwapLines { a, b } => write!(f, "swap lines {} and {}", a + 1, b + 1),
            Mutation::SetU32 {
                at,
                value,
                big_endian,
            } => write!(
                f,
                "set the {} u32 at byte {at} to {value} ({value:#x})",
                if *big_endian {
                    "big-endian"
                } else {
                    "little-endian"
                }
            ),
            Mutation::SetU64 {
                at,
                value,
                big_endian,
            } => write!(
                f,
                "set the {} u64 at byte {at} to {value} ({value:#x})",
                if *big_endian {
                    "big-endian"
                } else {
                    "little-endian"
                }
            ),
            Mutation::Within {
                start,
                len,
                what,
                inner,
            } => write!(f, "in bytes {start}..{} ({what}): {inner}", start + len),
            Mutation::Crlf => write!(f, "convert every \\n to \\r\\n"),
        }
    }
}

impl Mutation {
    fn apply(&self, data: &[u8]) -> Vec<u8> {
        let mut d = data.to_vec();
        match self {
            Mutation::FlipBit { at, bit } => d[*at] ^= 1 << bit,
            Mutation::Overwrite { at, with } => {
                for (i, b) in with.iter().enumerate() {
                    match d.get_mut(at + i) {
                        Some(x) => *x = *b,
                        None => d.push(*b),
                    }
                }
            }
            Mutation::Insert { at, with } => {
                d.splice(*at..*at, with.iter().copied());
            }
            Mutation::Replace { at, len, with } => {
                d.splice(*at..at + len, with.iter().copied());
            }
            Mutation::Truncate { len } => d.truncate(*len),
            Mutation::Duplicate { from, len, to } => {
                let chunk = d[*from..from + len].to_vec();
                d.splice(*to..*to, chunk);
            }
            Mutation::Repeat { from, len, times } => {
                let chunk = d[*from..from + len].to_vec();
                let copies: Vec<u8> = chunk.iter().copied().cycle().take(len * times).collect();
                d.splice(from + len..from + len, copies);
            }
            Mutation::SwapLines { a, b } => {
                let mut lines: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
                lines.swap(*a, *b);
                d = lines.join(&b'\n');
            }
            Mutation::SetU32 {
                at,
                value,
                big_endian,
            } => {
                let b = if *big_endian {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                d[*at..at + 4].copy_from_slice(&b);
            }
            Mutation::SetU64 {
                at,
                value,
                big_endian,
            } => {
                let b = if *big_endian {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                d[*at..at + 8].copy_from_slice(&b);
            }
            Mutation::Within {
                start, len, inner, ..
            } => {
                let part = inner.apply(&data[*start..start + len]);
                d.splice(*start..start + len, part);
            }
            Mutation::Crlf => {
                d = Vec::with_capacity(data.len() + data.len() / 20);
                for &c in data {
                    if c == b'\n' {
                        d.push(b'\r');
                    }
                    d.push(c);
                }
            }
        }
        d
    }
}

/// A list of mutations applied in order.
#[derive(Clone, Default)]
struct Mutations(Vec<Mutation>);

impl Mutations {
    fn apply(&self, data: &[u8]) -> Vec<u8> {
        self.0.iter().fold(data.to_vec(), |d, m| m.apply(&d))
    }

    /// Draw `1..=max` mutations from `gen`, each on the bytes the ones before it left.
    fn draw(
        rng: &mut Rng,
        data: &[u8],
        max: usize,
        mut gen: impl FnMut(&mut Rng, &[u8]) -> Mutation,
    ) -> Mutations {
        let n = match rng.below(20) {
            0..=11 => 1,
            12..=16 => 2,
            _ => 3,
        }
        .min(max);
        let mut out = Vec::new();
        let mut cur = data.to_vec();
        for _ in 0..n {
            let m = gen(rng, &cur);
            cur = m.apply(&cur);
            out.push(m);
        }
        Mutations(out)
    }
}

impl fmt::Display for Mutations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no mutation");
        }
        let parts: Vec<String> = self.0.iter().map(Mutation::to_string).collect();
        write!(f, "{}", parts.join("; then "))
    }
}

/// Index of the first byte where `a` and `b` differ (`None` when equal).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// 1-based line (counting `\n`) of byte `at`.
fn line_of(data: &[u8], at: usize) -> u64 {
    data[..at.min(data.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count() as u64
        + 1
}

const BYTES: &[u8] = &[
    0, 0xff, b'\r', b'\n', b',', b'"', b'0', b'1', b'9', b'-', b'+', b'.', b'e', b' ', b'\t', 0x7f,
    0x80, 0xc3, b'\\', b'{', b'}', b'[', b']', b':', b'a',
];

const TOKENS: &[&str] = &[
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e39",
    "-1e39",
    "1e-46",
    "1e400",
    "0",
    "-0",
    "-1",
    "1.5",
    "65535",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "99999999999999999999999999999999999999999",
    "0x10",
    "\r\n",
    "\r",
    "\"",
    "\"\"",
    ",",
    ",,",
    "\0",
    "\u{e9}",
    "\u{feff}",
    "\u{fffd}",
    "null",
    "true",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[",
    "  ",
];

const U32S: &[u32] = &[
    0,
    1,
    2,
    3,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    46_340,
    46_341,
    0x00ff_ffff,
    0x0100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

const U64S: &[u64] = &[
    0,
    1,
    8,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX - 7,
    u64::MAX,
];

/// A short byte range of `data`: (start, len), len >= 1 unless `data` is empty.
fn some_range(rng: &mut Rng, data: &[u8], max_len: usize) -> (usize, usize) {
    if data.is_empty() {
        return (0, 0);
    }
    let from = rng.below(data.len());
    let len = 1 + rng.below(max_len.min(data.len() - from));
    (from, len)
}

/// Byte ranges of runs of number characters (`0-9`, `-`, `+`, `.`, `e`, `E` starting with a
/// digit or sign).
fn number_tokens(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        if c.is_ascii_digit()
            || ((c == b'-' || c == b'+') && data.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < data.len()
                && (data[i].is_ascii_digit() || matches!(data[i], b'.' | b'e' | b'E' | b'-' | b'+'))
            {
                i += 1;
            }
            out.push((start, i - start));
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the fields of a CSV-like text (between `,` and line ends).
fn fields(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in data.iter().enumerate() {
        if c == b',' || c == b'\n' {
            let end = if c == b'\n' && i > start && data[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            out.push((start, end - start));
            start = i + 1;
        }
    }
    if start < data.len() {
        out.push((start, data.len() - start));
    }
    out
}

fn line_count(data: &[u8]) -> usize {
    data.split(|&c| c == b'\n').count()
}

/// A mutation of a text file (CSV, JSON, CURRENT, the ledger).
fn text_mutation(rng: &mut Rng, data: &[u8]) -> Mutation {
    if data.is_empty() {
        return Mutation::Insert {
            at: 0,
            with: rng.pick(TOKENS).as_bytes().to_vec(),
        };
    }
    loop {
        match rng.below(12) {
            0 => {
                return Mutation::FlipBit {
                    at: rng.below(data.len()),
                    bit: rng.below(8) as u8,
                }
            }
            1 => {
                return Mutation::Overwrite {
                    at: rng.below(data.len()),
                    with: vec![*rng.pick(BYTES)],
                }
            }
            2 => {
                return Mutation::Overwrite {
                    at: rng.below(data.len()),
                    with: rng.pick(TOKENS).as_bytes().to_vec(),
                }
            }
            3 => {
                return Mutation::Insert {
                    at: rng.below(data.len() + 1),
                    with: if rng.chance(1, 2) {
                        vec![*rng.pick(BYTES)]
                    } else {
                        rng.pick(TOKENS).as_bytes().to_vec()
                    },
                }
            }
            4 | 5 => {
                let toks = number_tokens(data);
                if toks.is_empty() {
                    continue;
                }
                let (at, len) = *rng.pick(&toks);
                return Mutation::Replace {
                    at,
                    len,
                    with: rng.pick(TOKENS).as_bytes().to_vec(),
                };
            }
            6 => {
                let f = fields(data);
                let (at, len) = *rng.pick(&f);
                return Mutation::Replace {
                    at,
                    len,
                    with: rng.pick(TOKENS).as_bytes().to_vec(),
                };
            }
            7 => {
                return Mutation::Truncate {
                    len: rng.below(data.len()),
                }
            }
            8 => {
                let (from, len) = some_range(rng, data, 64);
                return Mutation::Duplicate {
                    from,
                    len,
                    to: rng.below(data.len() + 1),
                };
            }
            9 => {
                let n = line_count(data);
                if n < 2 {
                    continue;
                }
                let a = rng.below(n);
                let b = rng.below(n);
                if a == b {
                    continue;
                }
                return Mutation::SwapLines {
                    a: a.min(b),
                    b: a.max(b),
                };
            }
            10 => {
                let (at, len) = some_range(rng, data, 16);
                return Mutation::Replace {
                    at,
                    len,
                    with: Vec::new(),
                };
            }
            _ => {
                let toks = number_tokens(data);
                if toks.is_empty() {
                    continue;
                }
                let (at, len) = *rng.pick(&toks);
                let with = if rng.chance(1, 2) {
                    rng.pick(U32S).to_string()
                } else {
                    rng.pick(U64S).to_string()
                };
                return Mutation::Replace {
                    at,
                    len,
                    with: with.into_bytes(),
                };
            }
        }
    }
}

/// A mutation of a binary file with `big_endian` size fields; `hot` lists offsets of size
/// fields worth hitting more often.
fn binary_mutation(rng: &mut Rng, data: &[u8], big_endian: bool, hot: &[usize]) -> Mutation {
    if data.is_empty() {
        return Mutation::Insert {
            at: 0,
            with: vec![*rng.pick(BYTES)],
        };
    }
    loop {
        match rng.below(10) {
            0 | 1 => {
                return Mutation::FlipBit {
                    at: rng.below(data.len()),
                    bit: rng.below(8) as u8,
                }
            }
            2 => {
                return Mutation::Overwrite {
                    at: rng.below(data.len()),
                    with: vec![*rng.pick(BYTES)],
                }
            }
            3 | 4 => {
                let at = if !hot.is_empty() && rng.chance(2, 3) {
                    *rng.pick(hot)
                } else {
                    rng.below(data.len()) & !3
                };
                if at + 4 > data.len() {
                    continue;
                }
                return Mutation::SetU32 {
                    at,
                    value: *rng.pick(U32S),
                    big_endian,
                };
            }
            5 => {
                let at = rng.below(data.len()) & !7;
                if at + 8 > data.len() {
                    continue;
                }
                return Mutation::SetU64 {
                    at,
                    value: *rng.pick(U64S),
                    big_endian,
                };
            }
            6 => {
                return Mutation::Truncate {
                    len: rng.below(data.len()),
                }
            }
            7 => {
                let (from, len) = some_range(rng, data, 64);
                return Mutation::Duplicate {
                    from,
                    len,
                    to: rng.below(data.len() + 1),
                };
            }
            8 => {
                return Mutation::Insert {
                    at: rng.below(data.len() + 1),
                    with: vec![*rng.pick(BYTES); 1 + rng.below(4)],
                }
            }
            _ => {
                let (at, len) = some_range(rng, data, 16);
                return Mutation::Replace {
                    at,
                    len,
                    with: Vec::new(),
                };
            }
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip in memory");
    e.finish().expect("gzip in memory")
}

/// How an input file reaches the binary.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Packing {
    Plain,
    /// Mutated, then gzipped.
    GzipAfter,
    /// Gzipped, then the compressed bytes mutated.
    GzipBefore,
}

impl Packing {
    fn draw(rng: &mut Rng) -> Packing {
        match rng.below(8) {
            0..=4 => Packing::Plain,
            5 | 6 => Packing::GzipAfter,
            _ => Packing::GzipBefore,
        }
    }
    fn suffix(self) -> &'static str {
        if self == Packing::Plain {
            ""
        } else {
            ".gz"
        }
    }
}

/// Names in `dir` other than `keep`.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list the case folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let model = root().join("models/logreg.toml");
    let mut a = os(&[
        &"train",
        &"--data",
        &data,
        &"--model",
        &model,
        &"--shards",
        &"2",
        &"--slices",
        &"2",
        &"--epochs",
        &"1",
        &"--quiet",
        &"--threads",
        &"1",
        &"--out",
        &out,
    ]);
    a.extend(extra.iter().map(OsString::from));
    a
}

/// The checks of a `train` that read `inputs` from `dir` into `dir/run`: process health, and
/// on refusal the file named, no `--out`, nothing else left in `dir`.
fn train_problems(o: &Outcome, dir: &Path, inputs: &[&str], mutated: &str) -> Vec<String> {
    let mut p = process_problems(o, &[0, 1]);
    let out = dir.join("run");
    if o.code() == Some(1) {
        if !o.stderr.contains(mutated) {
            p.push(format!(
                "the refusal does not name the mutated file {mutated}: {}",
                o.stderr.trim()
            ));
        }
        if out.exists() {
            p.push("a refused train left --out behind".into());
        }
    }
    if o.code() == Some(0) && !out.join("run.json").exists() {
        p.push("train succeeded but --out holds no run.json".into());
    }
    let mut keep: Vec<&str> = inputs.to_vec();
    keep.push("run");
    let extra = leftovers(dir, &keep);
    if !extra.is_empty() {
        p.push(format!("left beside --out: {extra:?}"));
    }
    p
}

fn describe_input(packing: Packing, base: &str, muts: &Mutations) -> String {
    match packing {
        Packing::Plain => format!("{base}: {muts}"),
        Packing::GzipAfter => format!("{base}: {muts}; then gzip"),
        Packing::GzipBefore => format!("{base}, gzipped: {muts} (on the compressed bytes)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Target 1: CSV input to `sisa train`.

fn digits_head(lines: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(common::digits().0).expect("read digits");
    let mut out = String::new();
    for l in text.lines().take(lines) {
        out.push_str(l);
        out.push('\n');
    }
    out.into_bytes()
}

/// Which command reads the mutated CSV.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CsvRole {
    /// `train --data MUTATED`.
    TrainData,
    /// `train --data VALID --test MUTATED`.
    TrainTest,
    /// `predict --run RUN --data MUTATED` on a run trained from the unmutated file.
    Predict,
}

#[test]
fn fuzz_csv_train() {
    let mut fz = Fuzz::new("csv", "fuzz_csv_train", DEFAULT_CASES, DEFAULT_SECONDS);
    let lf = digits_head(40);
    let header: Vec<String> = String::from_utf8_lossy(&lf)
        .lines()
        .next()
        .expect("header")
        .split(',')
        .map(str::to_string)
        .collect();
    let work = tempfile::tempdir().expect("temp dir");
    let valid = work.path().join("valid.csv");
    std::fs::write(&valid, &lf).expect("write");
    let predict_run = work.path().join("predict-run");
    let o = run_sisa(&train_args(&valid, &predict_run, &[]));
    assert_eq!(
        o.code(),
        Some(0),
        "train the run predict reads: {}",
        o.stderr
    );
    let predict_digest = tree_digest(&predict_run);
    while let Some(case) = fz.next_case() {
        let mut rng = fz.rng(case);
        let role = match rng.below(10) {
            0..=5 => CsvRole::TrainData,
            6 | 7 => CsvRole::TrainTest,
            _ => CsvRole::Predict,
        };
        let crlf = rng.chance(1, 4);
        let base = if crlf {
            Mutation::Crlf.apply(&lf)
        } else {
            lf.clone()
        };
        let base_name = if crlf {
            "digits head (40 lines, CRLF)"
        } else {
            "digits head (40 lines)"
        };
        let packing = Packing::draw(&mut rng);
        // Known answer: one bad value on line k; the message must say line k and the column.
        let known = packing != Packing::GzipBefore && rng.chance(1, 5);
        let mut expect: Option<(u64, String)> = None;
        let muts = if known {
            let k = 2 + rng.below(39);
            // predict reads features only; train checks the label column too.
            let col = if role == CsvRole::Predict {
                2 + rng.below(header.len() - 2)
            } else {
                1 + rng.below(header.len() - 1)
            };
            let bad: &[&str] = if col == 1 && role == CsvRole::TrainData {
                // A training label that is not an integer is a class name; these are neither.
                &["", "99999999999", "1e300", "a\tb"]
            } else if col == 1 {
                &["1.5", "-1", "abc", "", "99999999999", "1e300", "nan"]
            } else {
                &[
                    "abc", "nan", "inf", "-inf", "1e39", "1e400", "", "1..2", "0x10", "- 1",
                ]
            };
            let f = fields(&base);
            let (at, len) = f[(k - 1) * header.len() + col];
            expect = Some((k as u64, header[col].clone()));
            Mutations(vec![Mutation::Replace {
                at,
                len,
                with: rng.pick(bad).as_bytes().to_vec(),
            }])
        } else if packing == Packing::GzipBefore {
            Mutations::draw(&mut rng, &gzip(&base), 2, |r, d| {
                binary_mutation(r, d, false, &[])
            })
        } else {
            Mutations::draw(&mut rng, &base, 3, text_mutation)
        };
        let name = match role {
            CsvRole::TrainTest => format!("fuzz-test.csv{}", packing.suffix()),
            _ => format!("fuzz-input.csv{}", packing.suffix()),
        };
        let (bytes, plain) = match packing {
            Packing::Plain => {
                let m = muts.apply(&base);
                (m.clone(), Some(m))
            }
            Packing::GzipAfter => {
                let m = muts.apply(&base);
                (gzip(&m), Some(m))
            }
            Packing::GzipBefore => (muts.apply(&gzip(&base)), None),
        };
        let dir = work.path().join(format!("case-{case}"));
        std::fs::create_dir(&dir).expect("case folder");
        let input = dir.join(&name);
        std::fs::write(&input, &bytes).expect("write input");
        let args = match role {
            CsvRole::TrainData => train_args(&input, &dir.join("run"), &[]),
            CsvRole::TrainTest => {
                let mut a = train_args(&valid, &dir.join("run"), &[]);
                a.extend([OsString::from("--test"), input.clone().into()]);
                a
            }
            CsvRole::Predict => os(&[&"predict", &"--run", &predict_run, &"--data", &input]),
        };
        let o = run_sisa(&args);
        fz.note_run(&o);
        let mut p = if role == CsvRole::Predict {
            let mut p = process_problems(&o, &[0, 1]);
            if o.code() == Some(1) && !o.stderr.contains(&name) {
                p.push(format!(
                    "the refusal does not name the mutated file {name}: {}",
                    o.stderr.trim()
                ));
            }
            if tree_digest(&predict_run) != predict_digest {
                p.push("predict changed the run".into());
            }
            p
        } else {
            train_problems(&o, &dir, &[&name], &name)
        };
        if o.code() == Some(1) {
            if let Some((k, col)) = &expect {
                if !names_line(&o.stderr, *k) || !o.stderr.contains(&format!("column '{col}'")) {
                    p.push(format!(
                        "expected the message to name line {k} and column '{col}': {}",
                        o.stderr.trim()
                    ));
                }
            } else if let (Some(plain), Some(n)) = (&plain, line_number(&o.stderr)) {
                // Lines before the first changed byte are the valid original's: blaming one of
                // them is wrong (this is what catches CRLF line numbers that are off by one).
                if let Some(at) = first_difference(&base, plain) {
                    let first = line_of(plain, at);
                    if n < first {
                        p.push(format!(
                            "the message names line {n}, but lines before {first} are unchanged: {}",
                            o.stderr.trim()
                        ));
                    }
                }
            }
        } else if expect.is_some() && o.code() == Some(0) {
            p.push("a known-bad value was accepted".into());
        }
        if !p.is_empty() {
            let art = fz.artefact_dir(case);
            std::fs::write(art.join(&name), &bytes).expect("save input");
            let what = format!(
                "{:?}: {}{}; ran `{}`",
                role,
                describe_input(packing, base_name, &muts),
                if expect.is_some() {
                    " (known answer)"
                } else {
                    ""
                },
                show_args(&args)
            );
            fz.fail(case, &what, &p.join("\n  "));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    fz.finish();
}

// ---------------------------------------------------------------------------------------------
// Target 2: IDX input to `sisa train --users uniform:5`.

fn idx_file(code: u8, dims: &[u32], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

/// A mutation of an IDX file: its header most of the time.
fn idx_mutation(rng: &mut Rng, data: &[u8]) -> Mutation {
    let ndim = data.get(3).map_or(0, |&n| n as usize).min(4);
    let dims: Vec<usize> = (0..ndim)
        .map(|i| 4 + 4 * i)
        .filter(|o| o + 4 <= data.len())
        .collect();
    match rng.below(10) {
        0..=3 if !dims.is_empty() => {
            let at = *rng.pick(&dims);
            let cur = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            // The product of the other sizes: a value that makes the whole header declare
            // just about the most values a reader accepts (2^31) in a file of a few hundred
            // bytes is the one that tempts a reader into allocating gigabytes up front.
            let others: u64 = dims
                .iter()
                .filter(|&&o| o != at)
                .map(|&o| u64::from(u32::from_be_bytes(data[o..o + 4].try_into().expect("4"))))
                .product::<u64>()
                .max(1);
            let value = match rng.below(5) {
                0 => cur.wrapping_add(1),
                1 => cur.wrapping_sub(1),
                2 => cur.wrapping_mul(1 << (1 + rng.below(20))),
                3 => ((1u64 << (28 + rng.below(4))) / others).min(u64::from(u32::MAX)) as u32,
                _ => *rng.pick(U32S),
            };
            Mutation::SetU32 {
                at,
                value,
                big_endian: true,
            }
        }
        4 | 5 if data.len() >= 4 => {
            let at = rng.below(4);
            let with = match at {
                2 => *rng.pick(&[0x00u8, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0xff]),
                3 => *rng.pick(&[0u8, 1, 2, 3, 4, 5, 0xff]),
                _ => *rng.pick(&[1u8, 0x1f, 0x8b, 0xff, b'u']),
            };
            Mutation::Overwrite {
                at,
                with: vec![with],
            }
        }
        _ => binary_mutation(rng, data, true, &dims),
    }
}

#[test]
fn fuzz_idx_train() {
    let mut fz = Fuzz::new("idx", "fuzz_idx_train", DEFAULT_CASES, DEFAULT_SECONDS);
    let n = 40u32;
    let pixels: Vec<u8> = (0..n * 16).map(|i| ((i * 37) % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let images = idx_file(0x08, &[n, 4, 4], &pixels);
    let label_file = idx_file(0x08, &[n], &labels);
    let work = tempfile::tempdir().expect("temp dir");
    while let Some(case) = fz.next_case() {
        let mut rng = fz.rng(case);
        let packing = Packing::draw(&mut rng);
        let mutate_labels = rng.chance(1, 4);
        let suffix = packing.suffix();
        let img_name = format!("x-images-idx3-ubyte{suffix}");
        let lab_name = format!("x-labels-idx1-ubyte{suffix}");
        let (target, other) = if mutate_labels {
            (&label_file, &images)
        } else {
            (&images, &label_file)
        };
        let pack = |b: &[u8]| {
            if packing == Packing::Plain {
                b.to_vec()
            } else {
                gzip(b)
            }
        };
        let (muts, mutated_bytes) = match packing {
            Packing::GzipBefore => {
                let packed = gzip(target);
                let m = Mutations::draw(&mut rng, &packed, 2, |r, d| {
                    binary_mutation(r, d, true, &[])
                });
                let b = m.apply(&packed);
                (m, b)
            }
            _ => {
                let m = Mutations::draw(&mut rng, target, 2, idx_mutation);
                let b = pack(&m.apply(target));
                (m, b)
            }
        };
        let dir = work.path().join(format!("case-{case}"));
        std::fs::create_dir(&dir).expect("case folder");
        let (mutated_name, other_name) = if mutate_labels {
            (&lab_name, &img_name)
        } else {
            (&img_name, &lab_name)
        };
        std::fs::write(dir.join(mutated_name), &mutated_bytes).expect("write mutated");
        std::fs::write(dir.join(other_name), pack(other)).expect("write other");
        let args = train_args(
            &dir.join(&img_name),
            &dir.join("run"),
            &["--users", "uniform:5"],
        );
        let o = run_sisa(&args);
        fz.note_run(&o);
        let mut p = train_problems(&o, &dir, &[&img_name, &lab_name], mutated_name);
        // Both files are IDX files (or were, before the mutation): a refusal must not come
        // from parsing one as a CSV (a line and column, "unreadable CSV").
        if o.code() == Some(1)
            && (o.stderr.contains("unreadable CSV")
                || o.stderr.contains("column '")
                || line_number(&o.stderr).is_some())
        {
            p.push(format!(
                "an IDX file was parsed as a CSV: {}",
                o.stderr.trim()
            ));
        }
        if !p.is_empty() {
            let art = fz.artefact_dir(case);
            std::fs::write(art.join(mutated_name), &mutated_bytes).expect("save");
            std::fs::write(art.join(other_name), pack(other)).expect("save");
            let base = if mutate_labels {
                "labels [40] u8"
            } else {
                "images [40, 4, 4] u8"
            };
            let what = format!(
                "{} ({mutated_name}); ran `{}`",
                describe_input(packing, base, &muts),
                show_args(&args)
            );
            fz.fail(case, &what, &p.join("\n  "));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    fz.finish();
}

// ---------------------------------------------------------------------------------------------
// Target 3: the files of a run.

#[derive(Clone, Copy, Debug, PartialEq)]
enum RunFileKind {
    ShardRows(usize),
    TestRows,
    Checkpoint { shard: usize, last: bool },
    Manifest,
    Current,
    RunJson,
    Secret,
    Ledger,
    Receipt,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RunCommand {
    Status,
    Verify,
    Unlearn,
    Eval,
    ReceiptVerify,
}

/// One mutable file of the base run.
struct RunFile {
    rel: PathBuf,
    kind: RunFileKind,
}

/// Whether `cmd` must read (and so refuse) a mutated file of `kind`; `user_shard` is the
/// shard of the user `unlearn` is asked to forget.
fn must_detect(kind: RunFileKind, cmd: RunCommand, user_shard: usize) -> bool {
    use RunCommand::*;
    use RunFileKind::*;
    match kind {
        // Every command opens the run: run.json, the secret, CURRENT, the manifest and the
        // ledger are read (and the ledger replayed) before anything else.
        RunJson | Secret | Current | Manifest | Ledger => true,
        // Verify retrains every shard from its rows; unlearn rewrites the user's shard.
        ShardRows(k) => cmd == Verify || (cmd == Unlearn && k == user_shard),
        // Only eval reads the held-out rows for sure.
        TestRows => cmd == Eval,
        // Verify compares every stage; eval loads every shard's model (the last stage).
        Checkpoint { last, .. } => cmd == Verify || (cmd == Eval && last),
        Receipt => cmd == ReceiptVerify,
    }
}

/// Whether `mutated` still says what `original` says, so accepting it is right: the same
/// JSON (`run.json`, the manifest, the receipt, ledger lines: white space between tokens is no
/// change), the same version and digest (`CURRENT`), or for the ledger a prefix ending on a
/// line boundary (a crash before an append leaves exactly that).
fn same_meaning(kind: RunFileKind, original: &[u8], mutated: &[u8]) -> bool {
    if original == mutated {
        return true;
    }
    let json_lines = |b: &[u8]| -> Option<Vec<serde_json::Value>> {
        std::str::from_utf8(b)
            .ok()?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    match kind {
        RunFileKind::Current => {
            // "manifest-<version>.json <sha256>": the same version (`manifest-0002.json` is
            // version 2 too) and the same digest open the same manifest.
            let meaning = |b: &[u8]| -> Option<(u64, String)> {
                let text = std::str::from_utf8(b).ok()?;
                let (name, digest) = text.trim().split_once(' ')?;
                let version = name.strip_prefix("manifest-")?.strip_suffix(".json")?;
                Some((version.parse().ok()?, digest.to_string()))
            };
            meaning(original).is_some() && meaning(original) == meaning(mutated)
        }
        RunFileKind::Ledger => match (json_lines(original), json_lines(mutated)) {
            (Some(a), Some(b)) => b.len() <= a.len() && a[..b.len()] == b[..],
            _ => false,
        },
        RunFileKind::Receipt | RunFileKind::RunJson | RunFileKind::Manifest => {
            let a: Option<serde_json::Value> = serde_json::from_slice(original).ok();
            let b: Option<serde_json::Value> = serde_json::from_slice(mutated).ok();
            a.is_some() && a == b
        }
        _ => false,
    }
}

/// A mutation fitted to the file kind.
fn run_file_mutation(rng: &mut Rng, kind: RunFileKind, data: &[u8]) -> Mutation {
    match kind {
        RunFileKind::ShardRows(_) | RunFileKind::TestRows => {
            // Header: magic, version (u32 at 8), feature count (u32 at 12), rows (u64 at 16).
            if rng.chance(1, 4) && data.len() >= 24 {
                if rng.chance(1, 2) {
                    Mutation::SetU64 {
                        at: 16,
                        value: *rng.pick(U64S),
                        big_endian: false,
                    }
                } else {
                    Mutation::SetU32 {
                        at: *rng.pick(&[8usize, 12]),
                        value: *rng.pick(U32S),
                        big_endian: false,
                    }
                }
            } else {
                binary_mutation(rng, data, false, &[8, 12, 16, 20])
            }
        }
        RunFileKind::Checkpoint { .. } => {
            // Safetensors: a little-endian u64 header length, a JSON header, the tensors.
            let hlen = data
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
                .filter(|&h| h.checked_add(8).is_some_and(|end| end <= data.len()));
            match (rng.below(4), hlen) {
                (0, _) if data.len() >= 8 => Mutation::SetU64 {
                    at: 0,
                    value: *rng.pick(U64S),
                    big_endian: false,
                },
                (1, Some(h)) => Mutation::Within {
                    start: 8,
                    len: h,
                    what: "the safetensors JSON header".into(),
                    inner: Box::new(text_mutation(rng, &data[8..8 + h])),
                },
                _ => binary_mutation(rng, data, false, &[0, 4]),
            }
        }
        RunFileKind::Secret => binary_mutation(rng, data, false, &[]),
        RunFileKind::Ledger => {
            let lines: Vec<(usize, usize)> = {
                let mut v = Vec::new();
                let mut start = 0;
                for (i, &c) in data.iter().enumerate() {
                    if c == b'\n' {
                        v.push((start, i - start));
                        start = i + 1;
                    }
                }
                if start < data.len() {
                    v.push((start, data.len() - start));
                }
                v
            };
            if !lines.is_empty() && rng.chance(3, 4) {
                let i = rng.below(lines.len());
                let (start, len) = lines[i];
                Mutation::Within {
                    start,
                    len,
                    what: format!("ledger line {}", i + 1),
                    inner: Box::new(text_mutation(rng, &data[start..start + len])),
                }
            } else {
                text_mutation(rng, data)
            }
        }
        _ => text_mutation(rng, data),
    }
}

fn file_name(rel: &Path) -> String {
    rel.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// The base run of the run-file target: digits (120 training rows, 40 held out), logreg,
/// S=2, R=2, with one user forgotten (so a ledger and a receipt exist).
struct BaseRun {
    _dir: tempfile::TempDir,
    run: PathBuf,
    files: Vec<RunFile>,
    /// Users still in the run, with their shard.
    users: Vec<(String, usize)>,
}

fn base_run() -> BaseRun {
    let dir = tempfile::tempdir().expect("temp dir");
    let train = dir.path().join("train.csv");
    let test = dir.path().join("test.csv");
    std::fs::write(&train, digits_head(121)).expect("write");
    let test_text = std::fs::read_to_string(common::digits().1).expect("read test");
    let head: Vec<&str> = test_text.lines().take(41).collect();
    std::fs::write(&test, head.join("\n") + "\n").expect("write");
    let run = dir.path().join("base");
    let model = root().join("models/logreg.toml");
    let o = run_sisa(&os(&[
        &"train",
        &"--data",
        &train,
        &"--test",
        &test,
        &"--model",
        &model,
        &"--shards",
        &"2",
        &"--slices",
        &"2",
        &"--epochs",
        &"2",
        &"--quiet",
        &"--threads",
        &"1",
        &"--out",
        &run,
    ]));
    assert_eq!(o.code(), Some(0), "base train: {}", o.stderr);
    let csv = Csv::read(&train);
    let users: Vec<String> = csv.users().into_iter().map(|(u, _)| u).collect();
    let o = run_sisa(&os(&[
        &"unlearn",
        &"--run",
        &run,
        &"--user",
        &users[0],
        &"--quiet",
        &"--threads",
        &"1",
    ]));
    assert_eq!(o.code(), Some(0), "base unlearn: {}", o.stderr);
    let status = run_sisa(&os(&[&"status", &"--run", &run, &"--json"]));
    assert_eq!(status.code(), Some(0), "base status: {}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let last: Vec<String> = status["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["lineage"].as_str().expect("lineage").to_string())
        .collect();
    let mut files = Vec::new();
    for rel in tree_digest(&run).into_keys() {
        let name = rel.to_string_lossy().into_owned();
        let file = rel
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let shard_number = |rest: &str, sep: char| -> usize {
            rest.split(sep)
                .next()
                .and_then(|k| k.parse().ok())
                .expect("shard number")
        };
        let kind = if let Some(rest) = name.strip_prefix("data/shard-") {
            RunFileKind::ShardRows(shard_number(rest, '-'))
        } else if name.starts_with("data/test-") {
            RunFileKind::TestRows
        } else if let Some(rest) = name.strip_prefix("checkpoints/shard-") {
            let k = shard_number(rest, '/');
            let lineage = file.trim_end_matches(".safetensors");
            RunFileKind::Checkpoint {
                shard: k,
                last: last.get(k).is_some_and(|l| l == lineage),
            }
        } else if file.starts_with("manifest-") {
            RunFileKind::Manifest
        } else if name.starts_with("receipts/") {
            RunFileKind::Receipt
        } else {
            match name.as_str() {
                "CURRENT" => RunFileKind::Current,
                "run.json" => RunFileKind::RunJson,
                "secret" => RunFileKind::Secret,
                "ledger.jsonl" => RunFileKind::Ledger,
                _ => continue, // LOCK: empty, never read
            }
        };
        files.push(RunFile { rel, kind });
    }
    let shards = last.len();
    let remaining = users[1..]
        .iter()
        .map(|u| (u.clone(), sisa::plan::shard_of_user(7, u, shards)))
        .collect();
    BaseRun {
        _dir: dir,
        run,
        files,
        users: remaining,
    }
}

#[test]
fn fuzz_run_files() {
    let mut fz = Fuzz::new(
        "run-files",
        "fuzz_run_files",
        DEFAULT_CASES,
        DEFAULT_SECONDS,
    );
    let base = base_run();
    let kinds: Vec<&str> = vec![
        "shard rows",
        "test rows",
        "checkpoint",
        "manifest",
        "CURRENT",
        "run.json",
        "secret",
        "ledger",
        "receipt",
    ];
    let of_kind = |k: &str| -> Vec<&RunFile> {
        base.files
            .iter()
            .filter(|f| {
                matches!(
                    (k, f.kind),
                    ("shard rows", RunFileKind::ShardRows(_))
                        | ("test rows", RunFileKind::TestRows)
                        | ("checkpoint", RunFileKind::Checkpoint { .. })
                        | ("manifest", RunFileKind::Manifest)
                        | ("CURRENT", RunFileKind::Current)
                        | ("run.json", RunFileKind::RunJson)
                        | ("secret", RunFileKind::Secret)
                        | ("ledger", RunFileKind::Ledger)
                        | ("receipt", RunFileKind::Receipt)
                )
            })
            .collect()
    };
    for k in &kinds {
        assert!(!of_kind(k).is_empty(), "the base run has a {k} file");
    }
    let receipt_rel = of_kind("receipt")[0].rel.clone();
    let work = tempfile::tempdir().expect("temp dir");
    let commands = [
        RunCommand::Status,
        RunCommand::Verify,
        RunCommand::Unlearn,
        RunCommand::Eval,
        RunCommand::ReceiptVerify,
    ];
    while let Some(case) = fz.next_case() {
        let mut rng = fz.rng(case);
        let kind = *rng.pick(&kinds);
        let choices = of_kind(kind);
        let file = *rng.pick(&choices);
        let cmd = *rng.pick(&commands);
        let (user, user_shard) = rng.pick(&base.users).clone();
        let original = std::fs::read(base.run.join(&file.rel)).expect("read base file");
        let muts = Mutations::draw(&mut rng, &original, 2, |r, d| {
            run_file_mutation(r, file.kind, d)
        });
        let mutated = muts.apply(&original);
        let case_dir = work.path().join(format!("case-{case}"));
        let run = case_dir.join("base");
        copy_dir(&base.run, &run);
        std::fs::write(run.join(&file.rel), &mutated).expect("write mutated file");
        let receipt = run.join(&receipt_rel);
        let args = match cmd {
            RunCommand::Status => os(&[&"status", &"--run", &run]),
            RunCommand::Verify => os(&[&"verify", &"--run", &run, &"--quiet", &"--threads", &"1"]),
            RunCommand::Unlearn => os(&[
                &"unlearn",
                &"--run",
                &run,
                &"--user",
                &user,
                &"--quiet",
                &"--threads",
                &"1",
            ]),
            RunCommand::Eval => os(&[&"eval", &"--run", &run, &"--threads", &"1"]),
            RunCommand::ReceiptVerify => os(&[&"receipt", &"verify", &"--run", &run, &receipt]),
        };
        let allowed: &[i32] = match cmd {
            RunCommand::Verify | RunCommand::ReceiptVerify => &[0, 1, 3],
            _ => &[0, 1],
        };
        let before = tree_digest(&run);
        let o = run_sisa(&args);
        fz.note_rss(o.max_rss_kib);
        fz.note(format!("{kind}: {}", o.status));
        let mut p = process_problems(&o, allowed);
        let name = file_name(&file.rel);
        let refused = matches!(o.code(), Some(1) | Some(3));
        if refused {
            // The file is named by its own path, except that a manifest may be named through
            // CURRENT (which holds its digest). `receipt verify` failing (exit 3) on the
            // receipt it was given is a verdict on that very file, printed check by check on
            // stdout: it need not repeat the name.
            let verdict_on_receipt = cmd == RunCommand::ReceiptVerify
                && file.kind == RunFileKind::Receipt
                && o.code() == Some(3)
                && o.stdout.contains("FAILED");
            let named = verdict_on_receipt
                || o.stderr.contains(&name)
                || (file.kind == RunFileKind::Manifest && o.stderr.contains("CURRENT"));
            if !named {
                p.push(format!(
                    "the refusal (exit {}) does not name the mutated file {name}: stderr: {} stdout: {}",
                    o.code().unwrap_or(-1),
                    o.stderr.trim(),
                    o.stdout.trim()
                ));
            }
            let after = tree_digest(&run);
            if after != before {
                let changed: Vec<String> = before
                    .keys()
                    .chain(after.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| before.get(*k) != after.get(*k))
                    .map(|k| k.display().to_string())
                    .collect();
                p.push(format!("the run changed on refusal: {changed:?}"));
            }
        } else if o.code() == Some(0)
            && must_detect(file.kind, cmd, user_shard)
            && !same_meaning(file.kind, &original, &mutated)
        {
            p.push(format!(
                "accepted silently: `{cmd:?}` reads {name}, but succeeded on the mutated file; stdout: {}",
                o.stdout.trim()
            ));
        }
        if !p.is_empty() {
            let art = fz.artefact_dir(case);
            let saved = art.join("run");
            copy_dir(&base.run, &saved);
            std::fs::write(saved.join(&file.rel), &mutated).expect("save mutated file");
            let what = format!(
                "{} ({:?}): {muts}; ran `{}`",
                file.rel.display(),
                file.kind,
                show_args(&args)
            );
            fz.fail(case, &what, &p.join("\n  "));
        }
        let _ = std::fs::remove_dir_all(&case_dir);
    }
    fz.finish();
}

// ---------------------------------------------------------------------------------------------
// Target 4: HTTP bodies to `sisa serve`.

/// One answer, read in full.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Send one request on a fresh loopback connection (`Connection: close`) and read the whole
/// answer; `Err` says how the answer was incomplete.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &[u8],
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    assert!(addr.ip().is_loopback(), "only ever connect to loopback");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(COMMAND_TIMEOUT)).expect("timeout");
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    // The server may answer and close before reading all of a body it refuses.
    let written = s.write_all(&req);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        return Err(format!(
            "no answer (write: {written:?}, read: {read:?}): the connection was dropped"
        ));
    }
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!("incomplete head: {}", esc(&raw)));
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let rest = &raw[head_end + 4..];
    let body = if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if rest.len() < len {
            return Err(format!(
                "status {status}: body cut short: {} of {len} bytes ({read:?})",
                rest.len()
            ));
        }
        rest[..len].to_vec()
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut r = rest;
        loop {
            let Some(eol) = r.windows(2).position(|w| w == b"\r\n") else {
                return Err(format!("status {status}: chunked body cut short"));
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&r[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| format!("status {status}: bad chunk size"))?;
            r = &r[eol + 2..];
            if size == 0 {
                break;
            }
            if r.len() < size + 2 {
                return Err(format!("status {status}: chunk cut short"));
            }
            body.extend_from_slice(&r[..size]);
            r = &r[size + 2..];
        }
        body
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

/// A `sisa serve` child: its address, stderr, and peak memory once reaped.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    model: String,
    stderr: std::fs::File,
    reaped: Option<(Status, i64)>,
}

impl ServeProcess {
    fn start(run: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> ServeProcess {
        let err = tempfile::tempfile().expect("stderr file");
        let mut cmd = sisa_command();
        cmd.arg("serve")
            .arg("--run")
            .arg(run)
            .args(["--addr", "127.0.0.1:0", "--threads", "1", "--quiet"])
            .args(extra.iter().map(|a| a.as_ref()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err.try_clone().expect("dup"));
        let mut child = cmd.spawn().expect("start sisa serve");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // "sisa serve: model 'NAME' listening on ADDR"
                if let Some(i) = line.find("listening on ") {
                    let name = line.split('\'').nth(1).unwrap_or("").to_string();
                    let _ = tx.send((name, line[i + "listening on ".len()..].trim().to_string()));
                }
            }
        });
        let (model, addr) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((name, a)) => (name, a.parse().expect("a socket address")),
            Err(_) => {
                let _ = child.kill();
                let (status, _) = reap(&mut child, COMMAND_TIMEOUT);
                panic!(
                    "sisa serve printed no address ({status}): {}",
                    read_capped(err)
                );
            }
        };
        let mut p = ServeProcess {
            child,
            addr,
            model,
            stderr: err,
            reaped: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = http(addr, "GET", b"/v2/health/ready", &[], b"") {
                if a.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline && p.alive().is_none(),
                "sisa serve not ready: {}",
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    /// `None` while running; how it ended otherwise.
    fn alive(&mut self) -> Option<Status> {
        if let Some((s, _)) = self.reaped {
            return Some(s);
        }
        let pid = self.child.id() as libc::pid_t;
        let mut raw = 0;
        // SAFETY: plain data out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child, valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut ru) };
        if r == pid {
            let s = if libc::WIFEXITED(raw) {
                Status::Exited(libc::WEXITSTATUS(raw))
            } else {
                Status::Signaled(libc::WTERMSIG(raw))
            };
            self.reaped = Some((s, ru.ru_maxrss));
            return Some(s);
        }
        None
    }

    fn stderr_text(&self) -> String {
        read_capped(self.stderr.try_clone().expect("dup"))
    }

    /// Kill and reap; returns the peak RSS in KiB.
    fn stop(&mut self) -> i64 {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            self.reaped = Some(reap(&mut self.child, COMMAND_TIMEOUT));
        }
        self.reaped.map_or(0, |(_, rss)| rss)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks of one HTTP answer: complete, 2xx or 4xx, JSON where the protocol says so.
fn answer_problems(a: &Result<Answer, String>, json_errors: bool, infer: bool) -> Vec<String> {
    let a = match a {
        Ok(a) => a,
        Err(e) => return vec![format!("not a complete HTTP answer: {e}")],
    };
    let mut p = Vec::new();
    let text = String::from_utf8_lossy(&a.body);
    if !(200..300).contains(&a.status) && !(400..500).contains(&a.status) {
        p.push(format!(
            "status {} (only 2xx and 4xx allowed): {text}",
            a.status
        ));
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&a.body).ok();
    if (400..500).contains(&a.status)
        && json_errors
        && !json.as_ref().is_some_and(|j| j["error"].is_string())
    {
        p.push(format!(
            "a {} refusal whose body is not {{\"error\": ...}}: {text}",
            a.status
        ));
    }
    if a.status == 200 && infer && !json.as_ref().is_some_and(|j| j["outputs"].is_array()) {
        p.push(format!("a 200 inference answer without outputs: {text}"));
    }
    p
}

/// A mutation of a request path: printable ASCII only, so the request line stays one line.
fn path_mutation(rng: &mut Rng, path: &[u8]) -> Mutation {
    let printable: Vec<u8> = (0x21u8..0x7f).collect();
    match rng.below(4) {
        0 => Mutation::Overwrite {
            at: rng.below(path.len()),
            with: vec![*rng.pick(&printable)],
        },
        1 => Mutation::Insert {
            at: rng.below(path.len() + 1),
            with: rng
                .pick(&[
                    "/",
                    "..",
                    "%00",
                    "%ff",
                    "18446744073709551616",
                    "0",
                    "-1",
                    "?x=1",
                    "//",
                ])
                .as_bytes()
                .to_vec(),
        },
        2 => Mutation::Truncate {
            len: 1 + rng.below(path.len() - 1),
        },
        _ => {
            let toks = number_tokens(path);
            if toks.is_empty() {
                return Mutation::Insert {
                    at: path.len(),
                    with: b"/".to_vec(),
                };
            }
            let (at, len) = *rng.pick(&toks);
            Mutation::Replace {
                at,
                len,
                with: rng
                    .pick(&["0", "-1", "4294967296", "18446744073709551616", "1e3", "01"])
                    .as_bytes()
                    .to_vec(),
            }
        }
    }
}

/// A mutation of a JSON body: the text mutations, plus structure-aware ones.
fn json_mutation(rng: &mut Rng, data: &[u8]) -> Mutation {
    if rng.chance(1, 3) {
        let toks = number_tokens(data);
        if !toks.is_empty() {
            let (at, len) = *rng.pick(&toks);
            let with = *rng.pick(&[
                "NaN",
                "Infinity",
                "-Infinity",
                "1e39",
                "-1e39",
                "1e400",
                "1e-400",
                "-0",
                "0",
                "-1",
                "4294967296",
                "18446744073709551615",
                "18446744073709551616",
                "1099511627776",
                "9007199254740993",
                "1.5",
                "\"1\"",
                "null",
                "[]",
                "[1,2]",
                "{}",
            ]);
            return Mutation::Replace {
                at,
                len,
                with: with.as_bytes().to_vec(),
            };
        }
    }
    if rng.chance(1, 12) {
        // Many copies of a piece (a row, an element, a bracket): big batches, long arrays.
        let (from, len) = some_range(rng, data, 400);
        return Mutation::Repeat {
            from,
            len,
            times: *rng.pick(&[10, 1000, 1100, 20_000]),
        };
    }
    if rng.chance(1, 6) {
        // Repeat a bracketed piece: deeper nesting, more inputs, more rows.
        let opens: Vec<usize> = data
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == b'[' || c == b'{')
            .map(|(i, _)| i)
            .collect();
        if let Some(&at) = opens.get(rng.below(opens.len())) {
            let n = 1 + rng.below(64);
            return Mutation::Insert {
                at,
                with: vec![data[at]; n],
            };
        }
    }
    text_mutation(rng, data)
}

fn valid_row() -> Vec<f32> {
    serving::digits_rows(1).remove(0)
}

#[test]
fn fuzz_http() {
    let mut fz = Fuzz::new("http", "fuzz_http", 20 * DEFAULT_CASES, DEFAULT_SECONDS);
    let work = tempfile::tempdir().expect("temp dir");
    let train = work.path().join("train.csv");
    std::fs::write(&train, digits_head(121)).expect("write");
    let base = work.path().join("served");
    let o = run_sisa(&train_args(&train, &base, &[]));
    assert_eq!(o.code(), Some(0), "train: {}", o.stderr);
    let users: Vec<String> = Csv::read(&train)
        .users()
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    // Inference and deletion go to two servers of two copies: accepted deletions leave shards
    // out of the vote, and with S=2 two of them at once would rightly answer 503.
    let admin_run = work.path().join("admin");
    copy_dir(&base, &admin_run);
    let (tokens, token) = serving::token_file(work.path());
    let mut infer_server = ServeProcess::start(&base, &[]);
    let mut admin_server = ServeProcess::start(
        &admin_run,
        &[
            &"--admin-token-file",
            &tokens,
            &"--admin-rate",
            &"1000000",
            &"--admin-auth-failures",
            &"1000000",
        ],
    );
    let row = valid_row();
    let rows2 = serving::digits_rows(2);
    let model = infer_server.model.clone();
    let admin_model = admin_server.model.clone();
    let bodies: Vec<Vec<u8>> =
        vec![
        serving::infer_body(&rows2, Some(serde_json::json!({"aggregation": "vote", "top_k": 3}))),
        serde_json::to_vec(&serde_json::json!({
            "id": "r1",
            "inputs": [{"name": "input", "shape": [1, row.len()], "datatype": "FP32", "data": row}],
        }))
        .expect("json"),
        serving::infer_body(&rows2, Some(serde_json::json!({"output": "top_k", "top_k": 2}))),
    ];
    let infer_path = format!("/v2/models/{model}/infer");
    let auth = format!("Bearer {token}");
    let mut accepted: Vec<u64> = Vec::new();
    while let Some(case) = fz.next_case() {
        let mut rng = fz.rng(case);
        let admin = case % 4 == 3;
        let (what, answer, json_errors, infer, server_is_admin) = if !admin {
            let body = rng.pick(&bodies).clone();
            let mutate_path = rng.chance(1, 10);
            let (path, path_muts, body_muts) = if mutate_path {
                let m = Mutations::draw(&mut rng, infer_path.as_bytes(), 2, path_mutation);
                (
                    m.apply(infer_path.as_bytes()),
                    Some(m),
                    Mutations::default(),
                )
            } else {
                let m = Mutations::draw(&mut rng, &body, 3, json_mutation);
                (infer_path.clone().into_bytes(), None, m)
            };
            let sent = body_muts.apply(&body);
            let a = http(
                infer_server.addr,
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                &sent,
            );
            let what = match &path_muts {
                Some(m) => format!(
                    "POST {infer_path} with the path mutated: {m} (path {})",
                    esc(&path)
                ),
                None => format!(
                    "POST {infer_path}, body {} mutated: {body_muts}; sent {}",
                    esc(&body),
                    esc(&sent)
                ),
            };
            (what, a, path_muts.is_none(), path_muts.is_none(), false)
        } else {
            let user = rng.pick(&users).clone();
            let body = serde_json::to_vec(&serde_json::json!({ "users": [user] })).expect("json");
            let unlearn = format!("/v2/models/{admin_model}/unlearn");
            match rng.below(10) {
                0 => {
                    // A damaged token must never be accepted.
                    let m = Mutations::draw(&mut rng, token.as_bytes(), 2, text_mutation);
                    let bad = String::from_utf8_lossy(&m.apply(token.as_bytes()))
                        .replace(['\r', '\n', '\0'], "?");
                    let header = format!("Bearer {bad}");
                    let a = http(
                        admin_server.addr,
                        "POST",
                        unlearn.as_bytes(),
                        &[
                            ("Authorization", &header),
                            ("Content-Type", "application/json"),
                        ],
                        &body,
                    );
                    let what = format!("POST {unlearn} {} with the token mutated: {m}", esc(&body));
                    let mut a = a;
                    if let Ok(ans) = &a {
                        // 429 once this address has failed five times this minute: the
                        // server then refuses before comparing any token.
                        let throttled = ans.status == 429
                            && String::from_utf8_lossy(&ans.body)
                                .contains("too many failed authentications from this address");
                        if bad.trim() != token && ![400, 401].contains(&ans.status) && !throttled {
                            a = Err(format!(
                                "a mutated token got status {} (want 401, or 429 once throttled): {}",
                                ans.status,
                                String::from_utf8_lossy(&ans.body)
                            ));
                        }
                    }
                    // A header value with control bytes is refused by the HTTP layer (400, no
                    // body) before the server sees it: only a well-formed one must get JSON.
                    let well_formed = bad.bytes().all(|b| (0x20..0x7f).contains(&b));
                    (what, a, well_formed, false, true)
                }
                1 => {
                    let path = format!("/v2/models/{admin_model}/unlearn/1");
                    let m = Mutations::draw(&mut rng, path.as_bytes(), 1, path_mutation);
                    let p = m.apply(path.as_bytes());
                    let a = http(
                        admin_server.addr,
                        "GET",
                        &p,
                        &[("Authorization", &auth)],
                        b"",
                    );
                    (
                        format!("GET {path} with the path mutated: {m} (path {})", esc(&p)),
                        a,
                        false,
                        false,
                        true,
                    )
                }
                _ => {
                    let m = Mutations::draw(&mut rng, &body, 3, json_mutation);
                    let sent = m.apply(&body);
                    let a = http(
                        admin_server.addr,
                        "POST",
                        unlearn.as_bytes(),
                        &[
                            ("Authorization", &auth),
                            ("Content-Type", "application/json"),
                        ],
                        &sent,
                    );
                    if let Ok(ans) = &a {
                        if ans.status == 202 {
                            if let Some(n) = serde_json::from_slice::<serde_json::Value>(&ans.body)
                                .ok()
                                .and_then(|j| j["request"].as_u64())
                            {
                                accepted.push(n);
                            }
                        }
                    }
                    (
                        format!(
                            "POST {unlearn} body {} mutated: {m}; sent {}",
                            esc(&body),
                            esc(&sent)
                        ),
                        a,
                        true,
                        false,
                        true,
                    )
                }
            }
        };
        let mut p = answer_problems(&answer, json_errors, infer);
        fz.note(match &answer {
            Ok(a) => format!(
                "{} {}",
                if server_is_admin { "admin" } else { "infer" },
                a.status
            ),
            Err(_) => "no answer".to_string(),
        });
        let server = if server_is_admin {
            &mut admin_server
        } else {
            &mut infer_server
        };
        if let Some(s) = server.alive() {
            p.push(format!(
                "the server died: {s}; stderr: {}",
                server.stderr_text()
            ));
        }
        if !p.is_empty() {
            let art = fz.artefact_dir(case);
            std::fs::write(art.join("request.txt"), &what).expect("save");
            fz.fail(case, &what, &p.join("\n  "));
            if server.alive().is_some() {
                break;
            }
        }
    }
    // After the fuzzing: every accepted deletion completes, and valid requests get 200.
    let mut after = Vec::new();
    for n in &accepted {
        let path = format!("/v2/models/{admin_model}/unlearn/{n}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http(
                admin_server.addr,
                "GET",
                path.as_bytes(),
                &[("Authorization", &auth)],
                b"",
            ) {
                Ok(a) if a.status == 200 => {
                    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                    if j["state"] == "done" {
                        break;
                    }
                    if j["state"] == "failed" {
                        after.push(format!("accepted deletion {n} failed: {j}"));
                        break;
                    }
                }
                Ok(a) => {
                    after.push(format!("GET {path}: status {}", a.status));
                    break;
                }
                Err(e) => {
                    after.push(format!("GET {path}: {e}"));
                    break;
                }
            }
            if Instant::now() > deadline {
                after.push(format!("accepted deletion {n} not done in 30 s"));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (server, name) in [
        (&mut infer_server, &model),
        (&mut admin_server, &admin_model),
    ] {
        let path = format!("/v2/models/{name}/infer");
        match http(
            server.addr,
            "POST",
            path.as_bytes(),
            &[("Content-Type", "application/json")],
            &bodies[0],
        ) {
            Ok(a) if a.status == 200 => {}
            Ok(a) => after.push(format!(
                "{name}: a valid request after the fuzzing got {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            )),
            Err(e) => after.push(format!("{name}: a valid request after the fuzzing: {e}")),
        }
        if let Some(s) = server.alive() {
            after.push(format!("{name}: the server died: {s}"));
        }
        let err = server.stderr_text();
        if err.contains("panicked") {
            after.push(format!("{name}: the server logged a panic: {err}"));
        }
        let rss = server.stop();
        fz.note_rss(rss);
        if rss >= MAX_RSS_KIB {
            after.push(format!("{name}: server peak RSS {rss} KiB"));
        }
    }
    if !after.is_empty() {
        fz.fail_after(
            &format!(
                "accepted deletions {accepted:?}: waited for them, then sent a valid inference request"
            ),
            &after.join("\n  "),
        );
    }
    fz.finish();
}

// ---------------------------------------------------------------------------------------------
// Target 5: flags of `sisa train`.

#[test]
fn fuzz_train_flags() {
    let mut fz = Fuzz::new(
        "flags",
        "fuzz_train_flags",
        DEFAULT_CASES,
        // A fixed list of about 220 cases (6 to 9 s here, some train a 65536-class model):
        // time enough to finish it.
        3.0 * DEFAULT_SECONDS,
    );
    let values: &[&str] = &[
        "0",
        "1",
        "3",
        "-1",
        "-0",
        "+2",
        "0x10",
        "1.5",
        "1e3",
        "1e39",
        "nan",
        "inf",
        "-inf",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999",
        " 2",
        "2 ",
        "",
        "\u{e9}",
    ];
    // (flag, words a refusal must contain one of)
    let flags: &[(&str, &[&str])] = &[
        ("--classes", &["classes"]),
        ("--shards", &["shards"]),
        ("--slices", &["slices"]),
        ("--epochs", &["epochs"]),
        ("--batch-size", &["batch-size", "batch_size"]),
        ("--lr", &["--lr", "lr ", "learning rate"]),
        ("--seed", &["seed"]),
        ("--threads", &["threads"]),
    ];
    let users: &[&str] = &[
        "uniform:0",
        "uniform:1",
        "uniform:-1",
        "uniform:4294967296",
        "uniform:18446744073709551615",
        "uniform:100000001",
        "uniform:",
        "uniform",
        "zipf:5",
        "zipf:5:0",
        "zipf:5:-1",
        "zipf:5:nan",
        "zipf:5:inf",
        "zipf:5:1e39",
        "zipf:0:1.1",
        "zipf:18446744073709551615:1.1",
        "zipf:100000000:1.1",
        "zipf:5:1.1:3",
        "normal:5",
        ":",
        "",
    ];
    let work = tempfile::tempdir().expect("temp dir");
    let csv = work.path().join("train.csv");
    std::fs::write(&csv, digits_head(40)).expect("write");
    let n = 40u32;
    let pixels: Vec<u8> = (0..n * 16).map(|i| ((i * 37) % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let images = work.path().join("x-images-idx3-ubyte");
    std::fs::write(&images, idx_file(0x08, &[n, 4, 4], &pixels)).expect("write");
    std::fs::write(
        work.path().join("x-labels-idx1-ubyte"),
        idx_file(0x08, &[n], &labels),
    )
    .expect("write");
    let total = (flags.len() * values.len() + users.len()) as u64;
    while let Some(case) = fz.next_case() {
        if case >= total {
            break;
        }
        let i = case as usize;
        let (data, flag, value, words): (&Path, &str, &str, &[&str]) =
            if i < flags.len() * values.len() {
                let (flag, words) = flags[i / values.len()];
                (&csv, flag, values[i % values.len()], words)
            } else {
                (
                    &images,
                    "--users",
                    users[i - flags.len() * values.len()],
                    &["users"],
                )
            };
        // Valid epoch counts in the thousands would train for minutes: not a bug, skipped.
        if flag == "--epochs"
            && value
                .trim()
                .parse::<u64>()
                .is_ok_and(|e| (1000..=100_000).contains(&e))
        {
            continue;
        }
        let dir = work.path().join(format!("case-{case}"));
        std::fs::create_dir(&dir).expect("case folder");
        let out = dir.join("run");
        let mut args = train_args(data, &out, &[]);
        let setting = format!("{flag}={value}");
        // The later flag wins with clap; put ours last, replacing the defaults.
        if let Some(pos) = args.iter().position(|a| a.to_str() == Some(flag)) {
            args.drain(pos..pos + 2);
        }
        args.push(setting.clone().into());
        if data == images.as_path() && flag != "--users" {
            args.extend(["--users".into(), "uniform:5".into()]);
        }
        let o = run_sisa(&args);
        fz.note_run(&o);
        let mut p = process_problems(&o, &[0, 1, 2]);
        if matches!(o.code(), Some(1) | Some(2)) {
            if !words.iter().any(|w| o.stderr.contains(w)) {
                p.push(format!(
                    "the refusal does not name {flag} (looked for {words:?}): {}",
                    o.stderr.trim()
                ));
            }
            if out.exists() {
                p.push("a refused train left --out behind".into());
            }
        }
        let extra = leftovers(&dir, &["run"]);
        if !extra.is_empty() {
            p.push(format!("left beside --out: {extra:?}"));
        }
        if !p.is_empty() {
            let what = format!("train with {setting:?}; ran `{}`", show_args(&args));
            fz.fail(case, &what, &p.join("\n  "));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    fz.finish();
}

// ---------------------------------------------------------------------------------------------
// The harness checks itself: the checks above can fail.

#[test]
fn harness_detects_what_it_claims_to() {
    // Mutations do exactly what they print.
    let text = b"a,b\n1,2\n3,4\n".to_vec();
    let cases: Vec<(Mutation, &[u8])> = vec![
        (Mutation::FlipBit { at: 0, bit: 0 }, b"`,b\n1,2\n3,4\n"),
        (
            Mutation::Overwrite {
                at: 10,
                with: b"99".to_vec(),
            },
            b"a,b\n1,2\n3,99",
        ),
        (
            Mutation::Insert {
                at: 4,
                with: b"\r".to_vec(),
            },
            b"a,b\n\r1,2\n3,4\n",
        ),
        (
            Mutation::Replace {
                at: 4,
                len: 1,
                with: b"nan".to_vec(),
            },
            b"a,b\nnan,2\n3,4\n",
        ),
        (Mutation::Truncate { len: 3 }, b"a,b"),
        (
            Mutation::Duplicate {
                from: 0,
                len: 2,
                to: 4,
            },
            b"a,b\na,1,2\n3,4\n",
        ),
        (Mutation::SwapLines { a: 1, b: 2 }, b"a,b\n3,4\n1,2\n"),
        (
            Mutation::Repeat {
                from: 4,
                len: 2,
                times: 2,
            },
            b"a,b\n1,1,1,2\n3,4\n",
        ),
        (Mutation::Crlf, b"a,b\r\n1,2\r\n3,4\r\n"),
        (
            Mutation::Within {
                start: 4,
                len: 3,
                what: "line 2".into(),
                inner: Box::new(Mutation::Truncate { len: 1 }),
            },
            b"a,b\n1\n3,4\n",
        ),
    ];
    for (m, want) in cases {
        assert_eq!(m.apply(&text), want, "{m}");
    }
    let header = idx_file(0x08, &[1, 2], &[0, 0]);
    let m = Mutation::SetU32 {
        at: 4,
        value: 0x0102_0304,
        big_endian: true,
    };
    assert_eq!(&m.apply(&header)[4..8], &[1, 2, 3, 4]);
    assert_eq!(line_number("x.csv, line 12, column 'a'"), Some(12));
    assert!(names_line("line 4: bad", 4) && !names_line("line 40: bad", 4));
    assert_eq!(line_of(b"a\nb\nc", 4), 3);
    assert!(same_meaning(
        RunFileKind::Current,
        b"manifest-000002.json abc\n",
        b"manifest-2.json abc"
    ));
    assert!(!same_meaning(
        RunFileKind::Current,
        b"manifest-000002.json abc\n",
        b"manifest-000003.json abc\n"
    ));
    assert!(same_meaning(
        RunFileKind::RunJson,
        b"{\"a\": 1}",
        b"{\"a\":1}\r"
    ));
    assert!(!same_meaning(RunFileKind::Secret, b"k", b"j"));

    // A refusal is told apart from a success, and a hang is killed and reported.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "user_id,label,a\nu1,0,nan\n").expect("write");
    let o = run_sisa(&train_args(&bad, &dir.path().join("run"), &[]));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(o.max_rss_kib > 0, "wait4 reports the child's peak RSS");
    assert!(train_problems(&o, dir.path(), &["bad.csv"], "other.csv")
        .iter()
        .any(|p| p.contains("does not name")));
    let good = dir.path().join("good.csv");
    std::fs::write(&good, digits_head(40)).expect("write");
    let run = dir.path().join("run");
    let o = run_sisa(&train_args(&good, &run, &[]));
    assert_eq!(o.code(), Some(0), "{}", o.stderr);
    // `serve` never exits by itself: a stand-in for a hang.
    let started = Instant::now();
    let o = run_sisa_for(
        &os(&[&"serve", &"--run", &run, &"--addr", &"127.0.0.1:0"]),
        Duration::from_millis(1500),
    );
    assert_eq!(o.status, Status::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(process_problems(&o, &[0])
        .iter()
        .any(|p| p.starts_with("hang")));
    let panicked = Outcome {
        status: Status::Exited(101),
        stdout: String::new(),
        stderr: "thread 'main' panicked".into(),
        max_rss_kib: 1,
    };
    assert!(process_problems(&panicked, &[0, 1])
        .iter()
        .any(|p| p.starts_with("panicked")));
    let big = Outcome {
        status: Status::Exited(0),
        stdout: String::new(),
        stderr: String::new(),
        max_rss_kib: MAX_RSS_KIB,
    };
    assert!(process_problems(&big, &[0])
        .iter()
        .any(|p| p.contains("peak resident")));
}
