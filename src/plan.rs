//! Pure functions that decide where every row goes and what every stage is called.
//!
//! Nothing here reads a file or a clock. Shard assignment is a function of (seed, user id),
//! slice assignment of (seed, row tag), stage epochs of (epochs, slices), and a stage's
//! [`Lineage`] of the rows it was trained on. A deletion therefore moves no other row, and a
//! run trained from scratch on the remaining data makes exactly the same decisions.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Version of the rules in this module; part of every lineage hash.
pub const PLAN_FORMAT: u32 = 1;

/// How rows are assigned to shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShardBy {
    /// All rows of a user share one shard (default): one user's deletion touches one shard.
    User,
    /// Each row independently, as in the SISA paper; a user's rows may span shards.
    Row,
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

#[cfg(test)]
mod tests {
    use super::*;

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
