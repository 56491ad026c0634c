//! From labelled rows to shard row stores: identity, keys, shard and slice assignment.

use crate::data::csv::Table;
use crate::data::{Priors, RowId, Rows, Secret, UserKey};
use crate::error::{Error, Result};
use crate::plan::{self, Place, Rules};
use std::collections::HashMap;
use std::path::Path;

/// Which row stores a [`Placer`] fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Training shards, by [`Rules::place`].
    Train,
    /// Held-out buckets, one per shard, by [`Rules::test_bucket`].
    HeldOut,
}

/// Places rows into shard row stores one at a time, so that ingest never holds a second copy
/// of the data: identity (position among the user's rows, tag), key, shard and slice for each
/// row.
pub struct Placer<'a> {
    rules: Rules,
    target: Target,
    priors: Option<&'a Priors>,
    secret: &'a Secret,
    existing: &'a HashMap<UserKey, u32>,
    users: HashMap<String, (UserKey, u32, bool)>,
    shards: Vec<Rows>,
}

impl<'a> Placer<'a> {
    /// An empty placer for rows of `dim` features. A row's position among its user's rows
    /// counts from `existing[key]` (rows of that user the run already holds), so rows added
    /// later get identities of their own. `priors` marks the likely requesters.
    pub fn new(
        rules: Rules,
        target: Target,
        priors: Option<&'a Priors>,
        secret: &'a Secret,
        existing: &'a HashMap<UserKey, u32>,
        dim: usize,
    ) -> Self {
        Placer {
            rules,
            target,
            priors,
            secret,
            existing,
            users: HashMap::new(),
            shards: (0..rules.shards).map(|_| Rows::new(dim)).collect(),
        }
    }

    fn likely(&self, id: &str) -> bool {
        self.priors.is_some_and(|p| p.likely(id))
    }

    fn place(&self, id: &str, tag: u64, likely: bool) -> Place {
        match self.target {
            Target::Train => self.rules.place(id, tag, likely),
            Target::HeldOut => Place {
                shard: self.rules.test_bucket(id),
                slice: 0,
            },
        }
    }

    /// Size every shard exactly for rows of users `ids` (in the order they will be pushed),
    /// so that no shard grows by doubling and holds up to twice its rows.
    pub fn reserve_users<'i>(&mut self, ids: impl Iterator<Item = &'i str>) {
        let mut counts = vec![0usize; self.rules.shards];
        let mut seqs: HashMap<&str, u32> = HashMap::new();
        for id in ids {
            let seq = seqs.entry(id).or_insert_with(|| {
                self.existing
                    .get(&self.secret.key(id))
                    .copied()
                    .unwrap_or(0)
            });
            let tag = plan::row_tag(self.rules.seed, id, *seq);
            *seq += 1;
            counts[self.place(id, tag, self.likely(id)).shard] += 1;
        }
        for (rows, n) in self.shards.iter_mut().zip(counts) {
            rows.reserve(n);
        }
    }

    /// Place one row of user `id`.
    pub fn push(&mut self, id: &str, label: u32, features: &[f32]) {
        if !self.users.contains_key(id) {
            // A user's first row: their key, where their numbering starts, their prior.
            let key = self.secret.key(id);
            let start = self.existing.get(&key).copied().unwrap_or(0);
            let likely = self.likely(id);
            self.users.insert(id.to_string(), (key, start, likely));
        }
        let entry = self.users.get_mut(id).expect("inserted above");
        let (key, seq, likely) = *entry;
        entry.1 += 1;
        let tag = plan::row_tag(self.rules.seed, id, seq);
        let place = self.place(id, tag, likely);
        self.shards[place.shard].push(RowId { key, seq, tag }, place.slice as u32, label, features);
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
    rules: Rules,
    target: Target,
    priors: Option<&Priors>,
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
    let mut placer = Placer::new(rules, target, priors, secret, existing, table.dim());
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
