//! The deletion ledger: an append-only, hash-chained, fsync'd journal of requests.
//!
//! Each line is one JSON entry: a sequence number, the request it belongs to, what happened,
//! a timestamp, the hash of the previous entry and its own hash (SHA-256 of the previous hash
//! and the entry's body). A request is acknowledged only once its `accepted` entry is on disk.
//! The ledger holds user keys, never raw user ids. It may live outside the run (`--ledger`), so
//! that restoring a backup of the run cannot carry the ledger back in time.

use crate::data::UserKey;
use crate::error::{Error, IoContext, Result};
use crate::run::durable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A request's number, in the order requests are accepted and applied (an opstamp). Request
/// `n` is applied after every request `m < n`; a manifest's `applied_request` says that all
/// requests up to it are reflected in that version.
pub type RequestId = u64;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Per-shard facts recorded when a request is planned, before anything changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBefore {
    /// The shard.
    pub shard: usize,
    /// Rows of the request's users in this shard.
    pub rows_removed: u64,
    /// First stage retrained (1-based).
    pub first_stage: usize,
    /// Lineage of the shard's last stage before the request.
    pub lineage_before: String,
    /// Model digest before the request.
    pub model_digest_before: String,
}

/// The shards and held-out buckets that hold a request's users.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    /// Shards holding training rows of the users.
    pub shards: Vec<usize>,
    /// Held-out buckets holding their held-out rows.
    pub buckets: Vec<usize>,
}

/// Wall time of each phase of a request, in seconds. A request completed after a crash
/// reports the phases of the process that completed it (accepting then took no time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Resolving the users (finding and reading their shards) and the ledger's fsync.
    pub accept: f64,
    /// Planning and writing the data without the users' rows.
    pub erase: f64,
    /// Retraining the touched shards.
    pub retrain: f64,
    /// Writing the new version's manifest and `CURRENT`.
    pub publish: f64,
    /// Removing tainted files.
    pub clean: f64,
}

/// What happened to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The request is durable: this is the acknowledgement.
    Accepted {
        /// Keys of the users to forget.
        users: Vec<UserKey>,
        /// Where their rows are: the shards and held-out buckets that hold them, found when
        /// the request was resolved, so completing it after a crash reads only those. Absent
        /// in entries written before sisa recorded it (completing those reads every shard).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        place: Option<Touched>,
        /// Retraining is left to shard tasks (`sisa unlearn --no-retrain`): the request is
        /// erased into the run's plan, and `sisa publish` completes it. Absent when false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deferred: bool,
    },
    /// The plan, computed against the published version before the request.
    Planned {
        /// Ensemble version the plan was made against.
        version_before: u64,
        /// Affected shards.
        shards: Vec<ShardBefore>,
        /// Held-out rows of the users.
        test_rows_removed: u64,
        /// Rows×epochs the plan retrains.
        retrain_rows_epochs: u64,
        /// Rows×epochs of one model trained from scratch on the remaining rows.
        full_retrain_rows_epochs: u64,
        /// Rows×epochs of retraining every shard from scratch on the remaining rows.
        ensemble_retrain_rows_epochs: u64,
        /// The paper's expectation for a request like this one, rounded (absent in entries
        /// written before sisa recorded it). An integer: the entry's hash is over its JSON,
        /// which must read back to the same text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_rows_epochs: Option<u64>,
    },
    /// New data files without the users' rows are on disk.
    Erased,
    /// The request is in the run's plan (`plan.json`): its shards are left to shard tasks,
    /// and `sisa publish` publishes the version without the users.
    Deferred {
        /// The plan's id.
        plan: String,
        /// The shards the plan retrains (all of its pending shards, this request's among them).
        shards: Vec<usize>,
    },
    /// Affected shards are retrained and their checkpoints on disk.
    Retrained {
        /// Wall time of retraining, seconds.
        seconds: f64,
    },
    /// What completing the request cost this process, recorded before the receipt.
    Measured {
        /// Wall time of each phase.
        phases: Phases,
        /// Files read and written, rows read, fsyncs.
        io: durable::Io,
    },
    /// A version without the users is published.
    Published {
        /// The new ensemble version.
        version: u64,
    },
    /// Tainted data, checkpoints and models are removed.
    Cleaned {
        /// Files removed.
        removed: u64,
    },
    /// The receipt is on disk.
    ReceiptWritten {
        /// SHA-256 of the receipt file.
        digest: String,
    },
    /// The request is complete.
    Done,
    /// A completed request was applied again because the run had been rolled back (a backup
    /// restored) to a version that still held the users.
    Reapplied {
        /// The version published by the re-application.
        version: u64,
    },
}

impl Event {
    /// Short name of the event.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Accepted { .. } => "accepted",
            Event::Planned { .. } => "planned",
            Event::Erased => "erased",
            Event::Deferred { .. } => "deferred",
            Event::Retrained { .. } => "retrained",
            Event::Published { .. } => "published",
            Event::Cleaned { .. } => "cleaned",
            Event::ReceiptWritten { .. } => "receipt_written",
            Event::Measured { .. } => "measured",
            Event::Done => "done",
            Event::Reapplied { .. } => "reapplied",
        }
    }
}

/// One line of the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the ledger, from 1.
    pub seq: u64,
    /// The request this entry is about.
    pub request: RequestId,
    /// Unix time in seconds.
    pub at: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev: String,
    /// This entry's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    request: RequestId,
    at: u64,
    #[serde(flatten)]
    event: &'a Event,
    prev: &'a str,
}

fn entry_hash(seq: u64, request: RequestId, at: u64, event: &Event, prev: &str) -> String {
    let body = serde_json::to_vec(&Body {
        seq,
        request,
        at,
        event,
        prev,
    })
    .expect("plain data serializes");
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(&body);
    hex::encode(h.finalize())
}

/// The ledger file and its verified entries.
#[derive(Clone, Debug)]
pub struct Ledger {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Ledger {
    /// Read and verify the ledger at `path`; a missing file is an empty ledger.
    ///
    /// Any entry that was edited, removed, reordered or cut short stops here with its line.
    pub fn open(path: &Path) -> Result<Ledger> {
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let bad = |line: usize, m: String| Error::Ledger {
            path: path.to_path_buf(),
            line: line as u64,
            message: m,
        };
        if !text.is_empty() && !text.ends_with(b"\n") {
            let line = text.split(|&b| b == b'\n').count();
            return Err(bad(
                line,
                "last entry is cut short (no line end): the ledger was truncated".into(),
            ));
        }
        let text = String::from_utf8(text).map_err(|_| bad(0, "not UTF-8".into()))?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut prev = GENESIS.to_string();
        let mut next_request = 1;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let e: Entry = serde_json::from_str(line)
                .map_err(|err| bad(n, format!("unreadable entry: {err}")))?;
            if e.seq != n as u64 {
                return Err(bad(
                    n,
                    format!(
                        "sequence number {} where {n} was expected: an entry was removed or moved",
                        e.seq
                    ),
                ));
            }
            if e.prev != prev {
                return Err(bad(n, "does not chain to the entry before it: an entry was removed, reordered or edited".into()));
            }
            // The hash covers the entry as parsed; the line must also be byte for byte what
            // sisa writes, so an edit that parses to the same values (a hex digit's case,
            // spacing, key order) is refused too.
            if serde_json::to_string(&e).ok().as_deref() != Some(line) {
                return Err(bad(
                    n,
                    "is not byte for byte as written: the entry was edited".into(),
                ));
            }
            if entry_hash(e.seq, e.request, e.at, &e.event, &e.prev) != e.hash {
                return Err(bad(
                    n,
                    "hash does not match its content: the entry was edited".into(),
                ));
            }
            match &e.event {
                Event::Accepted { .. } => {
                    if e.request != next_request {
                        return Err(bad(
                            n,
                            format!(
                                "request {} accepted where {next_request} was expected",
                                e.request
                            ),
                        ));
                    }
                    next_request += 1;
                }
                _ if e.request >= next_request => {
                    return Err(bad(
                        n,
                        format!("event for request {} before it was accepted", e.request),
                    ));
                }
                _ => {}
            }
            prev = e.hash.clone();
            entries.push(e);
        }
        Ok(Ledger {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The ledger's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Hash of the last entry ([`GENESIS`] when empty).
    pub fn head(&self) -> &str {
        self.entries
            .last()
            .map(|e| e.hash.as_str())
            .unwrap_or(GENESIS)
    }

    /// The number the next accepted request gets.
    pub fn next_request(&self) -> RequestId {
        self.requests().last().map(|r| r + 1).unwrap_or(1)
    }

    /// Every accepted request, in order.
    pub fn requests(&self) -> Vec<RequestId> {
        self.entries
            .iter()
            .filter(|e| matches!(e.event, Event::Accepted { .. }))
            .map(|e| e.request)
            .collect()
    }

    /// The users of request `r`.
    pub fn users(&self, r: RequestId) -> Option<&[UserKey]> {
        self.entries.iter().find_map(|e| match &e.event {
            Event::Accepted { users, .. } if e.request == r => Some(users.as_slice()),
            _ => None,
        })
    }

    /// Where request `r`'s users are, if the ledger recorded it.
    pub fn touched(&self, r: RequestId) -> Option<&Touched> {
        self.entries.iter().find_map(|e| match &e.event {
            Event::Accepted { place, .. } if e.request == r => place.as_ref(),
            _ => None,
        })
    }

    /// True when request `r` was accepted with its retraining left to shard tasks.
    pub fn is_deferred(&self, r: RequestId) -> bool {
        self.entries
            .iter()
            .any(|e| e.request == r && matches!(e.event, Event::Accepted { deferred: true, .. }))
    }

    /// Every user key in any accepted request, with the request.
    pub fn deleted_users(&self) -> Vec<(UserKey, RequestId)> {
        self.entries
            .iter()
            .filter_map(|e| match &e.event {
                Event::Accepted { users, .. } => Some(users.iter().map(move |u| (*u, e.request))),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The entries of request `r`.
    pub fn events(&self, r: RequestId) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.request == r)
    }

    /// The first entry of request `r` whose event is named `name`.
    pub fn find(&self, r: RequestId, name: &str) -> Option<&Entry> {
        self.events(r).find(|e| e.event.name() == name)
    }

    /// True once request `r` has its `done` entry.
    pub fn is_done(&self, r: RequestId) -> bool {
        self.find(r, "done").is_some()
    }

    /// Append an entry for request `r` and fsync it; returns the new entry.
    pub fn append(&mut self, r: RequestId, event: Event) -> Result<&Entry> {
        let seq = self.entries.len() as u64 + 1;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let prev = self.head().to_string();
        let hash = entry_hash(seq, r, at, &event, &prev);
        let point = format!("ledger.{}", event.name());
        let entry = Entry {
            seq,
            request: r,
            at,
            event,
            prev,
            hash,
        };
        let line = serde_json::to_string(&entry).expect("plain data serializes");
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            durable::create_dir_all(dir)?;
        }
        durable::append_line(&self.path, &line, &point)?;
        self.entries.push(entry);
        Ok(self.entries.last().expect("just pushed"))
    }

    /// Re-read the file (after another process appended).
    pub fn reload(&mut self) -> Result<()> {
        *self = Ledger::open(&self.path)?;
        Ok(())
    }
}

/// Check that the ledger file exists or can be created (its directory exists).
pub fn check_location(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "ledger directory does not exist",
            ),
        ));
    }
    std::fs::metadata(dir).at(dir).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_floats_verify_after_reading_back() {
        // The hash is over the entry's JSON as serialized again after parsing: a float that
        // does not parse back to its own bits would read as an edited entry.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        l.append(
            1,
            Event::Accepted {
                users: vec![UserKey([3; 32])],
                place: None,
                deferred: false,
            },
        )
        .unwrap();
        let mut x = 0.1f64;
        for i in 0..200 {
            x = x * 1.618_033_988_749_895 + 1e-7 * i as f64;
            let phases = Phases {
                accept: x,
                erase: x / 3.0,
                retrain: 1.0 / (x + 7.0),
                publish: x.sqrt(),
                clean: x.ln_1p(),
            };
            l.append(
                1,
                Event::Measured {
                    phases,
                    io: durable::Io::default(),
                },
            )
            .unwrap();
        }
        assert_eq!(Ledger::open(&p).unwrap().entries().len(), 201);
    }

    fn sample(dir: &Path) -> PathBuf {
        let p = dir.join("ledger.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        l.append(
            1,
            Event::Accepted {
                users: vec![UserKey([1; 32])],
                place: None,
                deferred: false,
            },
        )
        .unwrap();
        l.append(1, Event::Erased).unwrap();
        l.append(1, Event::Done).unwrap();
        l.append(
            2,
            Event::Accepted {
                users: vec![UserKey([2; 32])],
                place: None,
                deferred: false,
            },
        )
        .unwrap();
        p
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn rewrite(p: &Path, lines: &[String]) {
        std::fs::write(
            p,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn chain_verifies_and_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = sample(dir.path());
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.requests(), [1, 2]);
        assert!(l.is_done(1) && !l.is_done(2));
        assert_eq!(l.next_request(), 3);
        let good = lines(&p);

        // An edited entry.
        let mut edited = good.clone();
        edited[3] = edited[3].replace(&UserKey([2; 32]).to_hex(), &UserKey([3; 32]).to_hex());
        rewrite(&p, &edited);
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("edited"), "{e}");

        // Edits that parse to the same values: a space, a user key's hex digits in capitals.
        let mut spaced = good.clone();
        spaced[0] = spaced[0].replacen(',', ", ", 1);
        rewrite(&p, &spaced);
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("byte for byte"), "{e}");
        let other = dir.path().join("other.jsonl");
        let key = UserKey([0xab; 32]);
        Ledger::open(&other)
            .unwrap()
            .append(
                1,
                Event::Accepted {
                    users: vec![key],
                    place: None,
                    deferred: false,
                },
            )
            .unwrap();
        let line = lines(&other).remove(0);
        let cased = line.replacen(&key.to_hex(), &key.to_hex().to_uppercase(), 1);
        assert_ne!(cased, line);
        rewrite(&other, &[cased]);
        let e = Ledger::open(&other).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("byte for byte"), "{e}");

        // A removed entry.
        let mut removed = good.clone();
        removed.remove(1);
        rewrite(&p, &removed);
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");

        // Two swapped entries.
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        rewrite(&p, &swapped);
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");

        // A truncated last line.
        let mut text = good.iter().map(|l| format!("{l}\n")).collect::<String>();
        text.truncate(text.len() - 10);
        std::fs::write(&p, text).unwrap();
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("truncated"), "{e}");
    }
}
