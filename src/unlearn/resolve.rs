//! Resolving users: from ids to keys and to the rows of the shards and held-out buckets that
//! hold them, reading nothing else.

use crate::data::{Rows, UserKey};
use crate::error::{Error, Result};
use crate::run::durable::Io;
use crate::run::Run;
use crate::unlearn::{Ledger, RequestId, Touched};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

/// The rows a request reads: the shards that may hold its users and their held-out buckets,
/// read from the published version `version`.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The published version these rows are of.
    pub version: u64,
    /// Training rows of the shards read, by shard.
    pub shards: BTreeMap<usize, Rows>,
    /// Held-out rows of the buckets read, by bucket.
    pub buckets: BTreeMap<usize, Rows>,
}

impl Loaded {
    /// Read the shards and buckets `touched` names (every one when `None`: a request
    /// recorded before the ledger said where its users are).
    pub fn read(run: &Run, touched: Option<&Touched>) -> Result<Loaded> {
        let buckets_in_run = run.manifest.test.as_ref().map_or(0, Vec::len);
        let (shards, buckets): (Vec<usize>, Vec<usize>) = match touched {
            Some(t) => (t.shards.clone(), t.buckets.clone()),
            None => (
                (0..run.config.shards).collect(),
                (0..buckets_in_run).collect(),
            ),
        };
        if let Some(k) = shards.iter().find(|&&k| k >= run.config.shards) {
            return Err(Error::run(
                run.dir.root(),
                format!("a ledger entry names shard {k}, which the run does not have"),
            ));
        }
        let mut loaded = Loaded {
            version: run.manifest.version,
            ..Loaded::default()
        };
        for k in shards {
            loaded.shards.insert(k, run.shard_rows(k)?);
        }
        // A bucket beyond the run's is none of its held-out rows (the run may have none).
        for b in buckets.into_iter().filter(|&b| b < buckets_in_run) {
            if let Some(rows) = run.test_bucket(b)? {
                loaded.buckets.insert(b, rows);
            }
        }
        Ok(loaded)
    }

    /// Every shard's rows and every held-out row (audits and benchmarks; a request reads only
    /// what it touches).
    pub fn everything(run: &Run) -> Result<Loaded> {
        Loaded::read(run, None)
    }
}

/// Users resolved against a run: their keys, where their rows are, and those rows, read once.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The users' keys, in the order given, without repeats.
    pub keys: Vec<UserKey>,
    /// The shards and held-out buckets that hold their rows.
    pub touched: Touched,
    /// The rows read to find them (only the touched shards' and buckets', kept for the plan).
    pub loaded: Loaded,
    pub(crate) started: Instant,
    pub(crate) io_before: Io,
}

/// Turn user ids into keys, refusing ids the run does not hold and ids already forgotten, and
/// read the rows of the shards and held-out buckets that hold them.
///
/// With user sharding a user's shard is a pure function of (seed, user id): one candidate, or
/// two when shards are set aside for likely requesters, whose user-key columns tell which one
/// holds them. With row sharding any shard may, so every shard's user-key column (32 bytes a
/// row) is read, and then only the shards that hold the users in full. A user's held-out rows
/// are in the one bucket of their id.
pub fn resolve_users(run: &Run, ledger: &Ledger, ids: &[String]) -> Result<Resolved> {
    let started = Instant::now();
    let io_before = Io::now();
    if ids.is_empty() {
        return Err(Error::Request(
            "no users given (--user ID or --users-file FILE)".into(),
        ));
    }
    let rules = run.config.rules();
    let forgotten: HashMap<UserKey, RequestId> = ledger.deleted_users().into_iter().collect();
    let mut loaded = Loaded {
        version: run.manifest.version,
        ..Loaded::default()
    };
    // Keys present in each shard or bucket read so far.
    let mut shard_keys: HashMap<usize, HashSet<UserKey>> = HashMap::new();
    let mut bucket_keys: HashMap<usize, HashSet<UserKey>> = HashMap::new();
    let mut touched_shards = BTreeSet::new();
    let mut touched_buckets = BTreeSet::new();
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        let id = id.trim();
        if id.is_empty() {
            return Err(Error::Request("an empty user id was given".into()));
        }
        let key = run.key(id);
        if !seen.insert(key) {
            continue;
        }
        if let Some(r) = forgotten.get(&key) {
            return Err(Error::Request(format!(
                "user '{id}' was already forgotten by request {r}"
            )));
        }
        let candidates = rules
            .candidate_shards(id)
            .unwrap_or_else(|| (0..run.config.shards).collect());
        let mut holding = Vec::new();
        for &k in &candidates {
            let present = match shard_keys.entry(k) {
                Entry::Occupied(e) => e.into_mut(),
                // One candidate: it is read in full anyway if it holds the user.
                Entry::Vacant(e) if candidates.len() == 1 => {
                    let rows = run.shard_rows(k)?;
                    let present = e.insert(rows.keys.iter().copied().collect());
                    loaded.shards.insert(k, rows);
                    present
                }
                Entry::Vacant(e) => e.insert(run.shard_keys(k)?.into_iter().collect()),
            };
            if present.contains(&key) {
                holding.push(k);
            }
        }
        let mut in_test = false;
        if run.manifest.test.is_some() {
            let b = rules.test_bucket(id);
            let present = match bucket_keys.entry(b) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let rows = run
                        .test_bucket(b)?
                        .unwrap_or_else(|| Rows::new(run.config.features.len()));
                    let present = e.insert(rows.keys.iter().copied().collect());
                    loaded.buckets.insert(b, rows);
                    present
                }
            };
            if present.contains(&key) {
                in_test = true;
                touched_buckets.insert(b);
            }
        }
        if holding.is_empty() && !in_test {
            return Err(Error::Request(format!(
                "unknown user '{id}': the run holds no rows of this user; nothing was changed"
            )));
        }
        for k in holding {
            if let std::collections::btree_map::Entry::Vacant(e) = loaded.shards.entry(k) {
                e.insert(run.shard_rows(k)?);
            }
            touched_shards.insert(k);
        }
        keys.push(key);
    }
    // Keep only what holds the users: the plan and the executor use nothing else.
    loaded.shards.retain(|k, _| touched_shards.contains(k));
    loaded.buckets.retain(|b, _| touched_buckets.contains(b));
    Ok(Resolved {
        keys,
        touched: Touched {
            shards: touched_shards.into_iter().collect(),
            buckets: touched_buckets.into_iter().collect(),
        },
        loaded,
        started,
        io_before,
    })
}
