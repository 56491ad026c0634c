//! Pure functions that decide where every row goes and what every stage is called.
//!
//! Nothing here reads a file or a clock. Where a row goes ([`Rules::place`]) is a function of
//! (seed, user id, row tag, whether the user is a likely requester), stage epochs of (epochs,
//! slices), and a stage's [`Lineage`] of the rows it was trained on. A deletion therefore
//! moves no other row, and a run trained from scratch on the remaining data makes exactly the
//! same decisions.

pub mod formula;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Version of the rules in this module; part of every lineage hash. Version 2 added
/// user-level slices and deletion-aware placement.
pub const PLAN_FORMAT: u32 = 2;

/// How rows are assigned to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShardBy {
    /// All rows of a user share one shard (default): one user's deletion touches one shard.
    User,
    /// Each row independently, as in the SISA paper; a user's rows may span shards.
    Row,
}

/// How rows are assigned to slices inside their shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SliceBy {
    /// All rows of a user share one slice (default): forgetting a user retrains from the one
    /// slice that holds them.
    #[default]
    User,
    /// Each row independently, by its identity tag: a user with m rows reaches back to the
    /// earliest of m slices.
    Row,
}

/// Every rule that places a row: the run's seed, shard and slice counts, both assignment
/// rules and the number of shards set aside for likely requesters.
///
/// A *likely requester* is a user whose prior probability of asking to be forgotten is at
/// least the run's threshold (see `data::prior`). Their rows go to the last slice of their
/// shard, so forgetting them retrains one stage, and, with `risk_shards` K > 0, to one of the
/// last K shards, which hold no one else. Everyone else is placed over the other shards
/// (all of them when K = 0) and every slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The run's seed.
    pub seed: u64,
    /// Number of shards S.
    pub shards: usize,
    /// Number of slices R.
    pub slices: usize,
    /// Shard assignment rule.
    pub shard_by: ShardBy,
    /// Slice assignment rule.
    pub slice_by: SliceBy,
    /// Shards dedicated to likely requesters (0: none); less than `shards`.
    pub risk_shards: usize,
}

/// Where one row goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Its shard.
    pub shard: usize,
    /// Its slice (0-based).
    pub slice: usize,
}

impl Rules {
    /// The place of the row with identity `tag` of user `user_id`.
    pub fn place(&self, user_id: &str, tag: u64, likely: bool) -> Place {
        let (base, count) = self.shard_range(likely);
        let shard = base
            + match self.shard_by {
                ShardBy::User => shard_of_user(self.seed, user_id, count),
                ShardBy::Row => shard_of_row(self.seed, tag, count),
            };
        let slice = if likely {
            self.slices - 1
        } else {
            match self.slice_by {
                SliceBy::User => slice_of_user(self.seed, user_id, self.slices),
                SliceBy::Row => slice_of(self.seed, tag, self.slices),
            }
        };
        Place { shard, slice }
    }

    /// The first shard and the number of shards that rows of a (likely or other) user may go to.
    fn shard_range(&self, likely: bool) -> (usize, usize) {
        let k = self.risk_shards.min(self.shards.saturating_sub(1));
        if k == 0 {
            (0, self.shards)
        } else if likely {
            (self.shards - k, k)
        } else {
            (0, self.shards - k)
        }
    }

    /// The shards that may hold rows of user `user_id` under user sharding: one, or two when
    /// shards are set aside for likely requesters (the user's place among the others and among
    /// the set-aside ones). `None` under row sharding, where any shard may.
    pub fn candidate_shards(&self, user_id: &str) -> Option<Vec<usize>> {
        if self.shard_by == ShardBy::Row {
            return None;
        }
        let mut out = vec![self.place(user_id, 0, false).shard];
        if self.risk_shards > 0 && self.shards > 1 {
            let likely = self.place(user_id, 0, true).shard;
            if !out.contains(&likely) {
                out.push(likely);
            }
        }
        Some(out)
    }

    /// The held-out bucket of user `user_id`: held-out rows are stored in S buckets by user,
    /// so forgetting a user reads and rewrites only the bucket that holds their held-out rows.
    pub fn test_bucket(&self, user_id: &str) -> usize {
        shard_of_user(self.seed, user_id, self.shards)
    }
}

fn hash_u64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let out = h.finalize();
    u64::from_le_bytes(out[..8].try_into().expect("sha256 output has 32 bytes"))
}

/// A row's tag: a 64-bit hash of (seed, user id, the row's position among that user's rows).
///
/// The tag identifies the row for slicing, batch order and lineage. It does not depend on the
/// run's secret, so a run trained from scratch on the same data computes the same tags, and it
/// survives the deletion of other users.
pub fn row_tag(seed: u64, user_id: &str, seq: u32) -> u64 {
    hash_u64(&[
        b"sisa/row",
        &seed.to_le_bytes(),
        user_id.as_bytes(),
        &seq.to_le_bytes(),
    ])
}

/// The shard of a user's rows under [`ShardBy::User`].
pub fn shard_of_user(seed: u64, user_id: &str, shards: usize) -> usize {
    (hash_u64(&[b"sisa/shard", &seed.to_le_bytes(), user_id.as_bytes()]) % shards as u64) as usize
}

/// The shard of one row under [`ShardBy::Row`].
pub fn shard_of_row(seed: u64, tag: u64, shards: usize) -> usize {
    (hash_u64(&[b"sisa/shard-row", &seed.to_le_bytes(), &tag.to_le_bytes()]) % shards as u64)
        as usize
}

/// The slice (0-based) of a row inside its shard.
pub fn slice_of(seed: u64, tag: u64, slices: usize) -> usize {
    (hash_u64(&[b"sisa/slice", &seed.to_le_bytes(), &tag.to_le_bytes()]) % slices as u64) as usize
}

/// The slice (0-based) of every row of a user under [`SliceBy::User`].
pub fn slice_of_user(seed: u64, user_id: &str, slices: usize) -> usize {
    (hash_u64(&[b"sisa/slice-user", &seed.to_le_bytes(), user_id.as_bytes()]) % slices as u64)
        as usize
}

/// A seed for one purpose of one (shard, stage, epoch): weight init, batch order.
pub fn derive_seed(seed: u64, shard: usize, stage: usize, epoch: usize, purpose: &str) -> u64 {
    hash_u64(&[
        b"sisa/seed",
        &seed.to_le_bytes(),
        &(shard as u64).to_le_bytes(),
        &(stage as u64).to_le_bytes(),
        &(epoch as u64).to_le_bytes(),
        purpose.as_bytes(),
    ])
}

/// Epochs of each stage under SISA's recalibration.
///
/// Stage r (1-based) trains on r/R of the shard, so `epochs` of unsliced training cost about as
/// much as `2·epochs/(R+1)` epochs at every stage: `floor(2e/(R+1))`, at least 1. With one slice
/// this is `epochs` itself.
pub fn stage_epochs(epochs: u32, slices: usize) -> Vec<u32> {
    let per = ((2 * epochs as u64) / (slices as u64 + 1)).max(1) as u32;
    let per = if slices == 1 { epochs } else { per };
    vec![per; slices]
}

/// Rows×epochs of sliced training with `stage_epochs`, as a fraction of `epochs` of unsliced
/// training on the same rows (slices of equal size): `Σ_r e_r · r/R / epochs`. The rounding in
/// [`stage_epochs`] moves it away from 1 (10 epochs over 10 slices give 0.55).
pub fn sliced_fraction(epochs: u32, stage_epochs: &[u32]) -> f64 {
    let slices = stage_epochs.len() as f64;
    let visits: f64 = stage_epochs
        .iter()
        .enumerate()
        .map(|(r, &e)| e as f64 * (r + 1) as f64 / slices)
        .sum();
    visits / epochs.max(1) as f64
}

/// Rows×epochs of training stages `first..=R` (1-based), given the rows in each slice.
pub fn stage_cost(slice_rows: &[u64], epochs: &[u32], first: usize) -> u64 {
    let mut cumulative = 0u64;
    let mut cost = 0u64;
    for (r, (&rows, &e)) in slice_rows.iter().zip(epochs).enumerate() {
        cumulative += rows;
        if r + 1 >= first {
            cost += cumulative * e as u64;
        }
    }
    cost
}

/// The name of a stage's checkpoint: a hash of everything that determined its weights.
///
/// Stage 0 (no training yet) hashes the plan format, the config digest, the seed and the shard;
/// stage r chains stage r-1's lineage with r, its epochs and the digest of slice r's rows. A
/// deletion changes the lineage of exactly the stages whose slices held the deleted rows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lineage(pub [u8; 32]);

impl Lineage {
    /// Lineage of the untrained shard model.
    pub fn root(config_digest: &[u8; 32], seed: u64, shard: usize) -> Lineage {
        let mut h = Sha256::new();
        h.update(b"sisa/lineage/root");
        h.update(PLAN_FORMAT.to_le_bytes());
        h.update(config_digest);
        h.update(seed.to_le_bytes());
        h.update((shard as u64).to_le_bytes());
        Lineage(h.finalize().into())
    }

    /// Lineage after training stage `stage` (1-based) for `epochs` on a slice with `slice_digest`.
    pub fn extend(&self, stage: usize, epochs: u32, slice_digest: &[u8; 32]) -> Lineage {
        let mut h = Sha256::new();
        h.update(b"sisa/lineage/stage");
        h.update(self.0);
        h.update((stage as u64).to_le_bytes());
        h.update(epochs.to_le_bytes());
        h.update(slice_digest);
        Lineage(h.finalize().into())
    }

    /// Lowercase hex, as used in file names and manifests.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse the hex form; `None` unless it is 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Lineage> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Lineage(out))
    }
}

impl fmt::Debug for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lineage({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Lineage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Lineage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lineage::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("lineage is not 64 hex digits"))
    }
}

/// The SISA paper's expected cost formulas, for comparing with measured costs.
pub mod expected {
    /// Rows retrained by K batched requests with S shards and no slicing: `N·(1 − (1 − 1/S)^K)`.
    pub fn batched_shard_rows(n: f64, shards: f64, requests: f64) -> f64 {
        n * (1.0 - (1.0 - 1.0 / shards).powf(requests))
    }

    /// Expected rows×epochs to unlearn one row of a shard with `shard_rows` rows, R slices and
    /// `e_stage` epochs per stage: the deleted row's slice is uniform over 1..R, and stages from
    /// that slice on are retrained. Equals `e0·(N/S)·(2/3 + 1/(3R))` when `e_stage = 2e0/(R+1)`.
    pub fn one_request_rows_epochs(shard_rows: f64, slices: usize, e_stage: f64) -> f64 {
        let r = slices as f64;
        // Σ_{j=1..R} (1/R) Σ_{r=j..R} e·(r/R)·n = e·n·(R+1)(2R+1)/(6R)
        e_stage * shard_rows * (r + 1.0) * (2.0 * r + 1.0) / (6.0 * r)
    }
}

/// Shards as the shortest list of numbers and ranges (`3,7,12-15`): runs of two or more
/// consecutive shards become ranges. `shards` must be ascending without repeats.
pub fn shard_ranges(shards: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        let mut j = i;
        while j + 1 < shards.len() && shards[j + 1] == shards[j] + 1 {
            j += 1;
        }
        out.push(if j == i {
            shards[i].to_string()
        } else {
            format!("{}-{}", shards[i], shards[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn recalibrated_epochs_match_unsliced_cost() {
        assert_eq!(stage_epochs(20, 1), vec![20]);
        assert_eq!(stage_epochs(20, 4), vec![8; 4]);
        assert_eq!(stage_epochs(20, 5), vec![6; 5]);
        assert_eq!(stage_epochs(1, 50), vec![1; 50]);
        assert_eq!(sliced_fraction(20, &stage_epochs(20, 1)), 1.0);
        assert!((sliced_fraction(10, &stage_epochs(10, 10)) - 0.55).abs() < 1e-12);
        assert!((sliced_fraction(20, &stage_epochs(20, 4)) - 1.0).abs() < 1e-12);
        assert!((sliced_fraction(1, &stage_epochs(1, 10)) - 5.5).abs() < 1e-12);
        // Stage cost with equal slices is e_r·n·(R+1)/2, close to e·n.
        let rows = vec![10u64; 4];
        assert_eq!(
            stage_cost(&rows, &stage_epochs(20, 4), 1),
            8 * (10 + 20 + 30 + 40)
        );
        assert_eq!(stage_cost(&rows, &stage_epochs(20, 4), 3), 8 * (30 + 40));
        assert_eq!(stage_cost(&rows, &stage_epochs(20, 4), 5), 0);
    }

    #[test]
    fn assignment_is_pure_and_in_range() {
        for u in 0..200 {
            let id = format!("user-{u}");
            let s = shard_of_user(7, &id, 10);
            assert!(s < 10);
            assert_eq!(s, shard_of_user(7, &id, 10));
            let t = row_tag(7, &id, 3);
            assert_eq!(t, row_tag(7, &id, 3));
            assert!(slice_of(7, t, 5) < 5);
        }
        assert_ne!(row_tag(7, "a", 0), row_tag(7, "a", 1));
        assert_ne!(row_tag(7, "a", 0), row_tag(8, "a", 0));
        // Length-prefixing keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(hash_u64(&[b"ab", b"c"]), hash_u64(&[b"a", b"bc"]));
    }

    #[test]
    fn placement_follows_the_rules() {
        let rules = Rules {
            seed: 3,
            shards: 10,
            slices: 4,
            shard_by: ShardBy::User,
            slice_by: SliceBy::User,
            risk_shards: 2,
        };
        for u in 0..500 {
            let id = format!("u{u}");
            let places: Vec<Place> = (0..5)
                .map(|q| rules.place(&id, row_tag(3, &id, q), false))
                .collect();
            // One shard and one slice per user, never a set-aside shard.
            assert!(places.iter().all(|p| *p == places[0] && p.shard < 8));
            let likely = rules.place(&id, row_tag(3, &id, 0), true);
            assert!(likely.shard >= 8 && likely.slice == 3);
            let candidates = rules.candidate_shards(&id).unwrap();
            assert_eq!(candidates, vec![places[0].shard, likely.shard]);
            assert!(rules.test_bucket(&id) < 10);
        }
        let by_row = Rules {
            slice_by: SliceBy::Row,
            shard_by: ShardBy::Row,
            risk_shards: 0,
            ..rules
        };
        assert_eq!(by_row.candidate_shards("a"), None);
        let slices: HashSet<usize> = (0..50)
            .map(|q| by_row.place("a", row_tag(3, "a", q), false).slice)
            .collect();
        assert_eq!(slices.len(), 4, "a user's rows spread over slices by row");
    }

    #[test]
    fn shards_are_roughly_balanced() {
        let mut counts = [0usize; 5];
        for u in 0..5000 {
            counts[shard_of_user(1, &format!("u{u}"), 5)] += 1;
        }
        for c in counts {
            assert!((900..1100).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn lineage_chains_and_round_trips() {
        let root = Lineage::root(&[1; 32], 7, 0);
        let a = root.extend(1, 5, &[2; 32]);
        assert_ne!(a, root.extend(1, 5, &[3; 32]));
        assert_ne!(a, root.extend(1, 6, &[2; 32]));
        assert_ne!(root, Lineage::root(&[1; 32], 7, 1));
        assert_eq!(Lineage::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Lineage::from_hex("zz"), None);
    }

    #[test]
    fn expected_cost_formula_matches_paper_form() {
        // e_stage = 2e0/(R+1) gives e0·n·(2/3 + 1/(3R)).
        let (e0, n, r) = (20.0, 300.0, 5usize);
        let e_stage = 2.0 * e0 / (r as f64 + 1.0);
        let got = expected::one_request_rows_epochs(n, r, e_stage);
        let paper = e0 * n * (2.0 / 3.0 + 1.0 / (3.0 * r as f64));
        assert!((got - paper).abs() < 1e-9, "{got} vs {paper}");
        assert!((expected::batched_shard_rows(1000.0, 10.0, 1.0) - 100.0).abs() < 1e-9);
    }
}
