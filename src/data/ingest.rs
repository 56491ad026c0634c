//! From parsed CSV rows to shard row stores: identity, keys, shard assignment.

use crate::data::csv::Table;
use crate::data::{Rows, Secret, UserKey};
use crate::error::{Error, Result};
use crate::plan::{self, ShardBy};
use std::collections::HashMap;

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

/// The rows of `table` as row stores, one per shard, each in tag order.
///
/// A row's position among its user's rows counts from `existing[key]` (rows of that user the
/// run already holds), so rows added later get identities of their own.
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
    let mut next_seq: HashMap<&str, u32> = HashMap::new();
    let mut keys: HashMap<&str, UserKey> = HashMap::new();
    let mut out: Vec<Rows> = (0..placement.shards)
        .map(|_| Rows::new(table.dim()))
        .collect();
    for i in 0..table.len() {
        let id = ids[i].as_str();
        let key = *keys.entry(id).or_insert_with(|| secret.key(id));
        let seq = next_seq
            .entry(id)
            .or_insert_with(|| existing.get(&key).copied().unwrap_or(0));
        let tag = plan::row_tag(placement.seed, id, *seq);
        *seq += 1;
        let shard = match placement.shard_by {
            ShardBy::User => plan::shard_of_user(placement.seed, id, placement.shards),
            ShardBy::Row => plan::shard_of_row(placement.seed, tag, placement.shards),
        };
        out[shard].push(key, *seq - 1, tag, labels[i], table.row(i));
    }
    for rows in &mut out {
        rows.sort();
        if let Some(tag) = rows.duplicate_tag() {
            return Err(Error::input(
                &table.path,
                None,
                None,
                format!("two rows share the identity tag {tag:016x}; rename one user"),
            ));
        }
    }
    Ok(out)
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
