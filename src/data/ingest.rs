//! From labelled rows to shard row stores: identity, keys, shard assignment.

use crate::data::csv::Table;
use crate::data::{Rows, Secret, UserKey};
use crate::error::{Error, Result};
use crate::plan::{self, ShardBy};
use std::collections::HashMap;
use std::path::Path;

/// How rows are placed: the run's seed, shard count and sharding rule.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// The run's seed.
    pub seed: u64,
    /// Number of shards.
    pub shards: usize,
    /// Sharding rule.
    pub shard_by: ShardBy,
}

/// Places rows into shard row stores one at a time, so that ingest never holds a second copy
/// of the data: identity (position among the user's rows, tag), key and shard for each row.
pub struct Placer<'a> {
    placement: Placement,
    secret: &'a Secret,
    existing: &'a HashMap<UserKey, u32>,
    users: HashMap<String, (UserKey, u32)>,
    shards: Vec<Rows>,
}

impl<'a> Placer<'a> {
    /// An empty placer for rows of `dim` features. A row's position among its user's rows
    /// counts from `existing[key]` (rows of that user the run already holds), so rows added
    /// later get identities of their own.
    pub fn new(
        placement: Placement,
        secret: &'a Secret,
        existing: &'a HashMap<UserKey, u32>,
        dim: usize,
    ) -> Self {
        Placer {
            placement,
            secret,
            existing,
            users: HashMap::new(),
            shards: (0..placement.shards).map(|_| Rows::new(dim)).collect(),
        }
    }

    /// Size every shard exactly for rows of users `ids` (in the order they will be pushed),
    /// so that no shard grows by doubling and holds up to twice its rows.
    pub fn reserve_users<'i>(&mut self, ids: impl Iterator<Item = &'i str>) {
        let p = self.placement;
        let mut counts = vec![0usize; p.shards];
        let mut seqs: HashMap<&str, u32> = HashMap::new();
        for id in ids {
            let shard = match p.shard_by {
                ShardBy::User => plan::shard_of_user(p.seed, id, p.shards),
                ShardBy::Row => {
                    let seq = seqs.entry(id).or_insert_with(|| {
                        self.existing
                            .get(&self.secret.key(id))
                            .copied()
                            .unwrap_or(0)
                    });
                    let tag = plan::row_tag(p.seed, id, *seq);
                    *seq += 1;
                    plan::shard_of_row(p.seed, tag, p.shards)
                }
            };
            counts[shard] += 1;
        }
        for (rows, n) in self.shards.iter_mut().zip(counts) {
            rows.reserve(n);
        }
    }

    /// Place one row of user `id`.
    pub fn push(&mut self, id: &str, label: u32, features: &[f32]) {
        let (key, seq) = match self.users.get_mut(id) {
            Some(entry) => entry,
            None => {
                let key = self.secret.key(id);
                let start = self.existing.get(&key).copied().unwrap_or(0);
                self.users.entry(id.to_string()).or_insert((key, start))
            }
        };
        let tag = plan::row_tag(self.placement.seed, id, *seq);
        let shard = match self.placement.shard_by {
            ShardBy::User => plan::shard_of_user(self.placement.seed, id, self.placement.shards),
            ShardBy::Row => plan::shard_of_row(self.placement.seed, tag, self.placement.shards),
        };
        self.shards[shard].push(*key, *seq, tag, label, features);
        *seq += 1;
    }

    /// The shards, each in tag order; refuses two rows with one identity tag (`path` names
    /// the input in the message).
    pub fn finish(mut self, path: &Path) -> Result<Vec<Rows>> {
        for rows in &mut self.shards {
            rows.sort();
            if let Some(tag) = rows.duplicate_tag() {
                return Err(Error::input(
                    path,
                    None,
                    None,
                    format!("two rows share the identity tag {tag:016x}; rename one user"),
                ));
            }
        }
        Ok(self.shards)
    }
}

/// The rows of `table` as row stores, one per shard, each in tag order (see [`Placer`]).
pub fn place_rows(
    table: &Table,
    placement: Placement,
    secret: &Secret,
    existing: &HashMap<UserKey, u32>,
) -> Result<Vec<Rows>> {
    let ids = table
        .user_ids
        .as_ref()
        .expect("training tables have a user column");
    let labels = table
        .labels
        .as_ref()
        .expect("training tables have a label column");
    let mut placer = Placer::new(placement, secret, existing, table.dim());
    placer.reserve_users(ids.iter().map(String::as_str));
    for i in 0..table.len() {
        placer.push(&ids[i], labels[i], table.row(i));
    }
    placer.finish(&table.path)
}

/// Rows per user key in `rows`.
pub fn rows_per_user(rows: &[&Rows]) -> HashMap<UserKey, u32> {
    let mut out = HashMap::new();
    for r in rows {
        for k in &r.keys {
            *out.entry(*k).or_insert(0) += 1;
        }
    }
    out
}
