//! The content digest of a batch of labelled rows, so that `sisa add` can tell a batch it has
//! already added from new rows.
//!
//! The digest covers what a row is (its user id, label and features, in file order), not the
//! bytes of the file it came in: the same rows re-exported to another format, recompressed or
//! with reordered columns digest the same. It is a SHA-256 with length-prefixed fields, so no
//! two different batches share a preimage.

use sha2::{Digest, Sha256};

/// Domain tag of the digest: a new tag for any change in what is hashed.
const TAG: &[u8] = b"sisa-batch/1\0";

/// Builds the digest of a batch one row at a time.
#[derive(Clone)]
pub struct BatchDigest {
    hash: Sha256,
    rows: u64,
}

impl Default for BatchDigest {
    fn default() -> Self {
        BatchDigest::new()
    }
}

impl BatchDigest {
    /// The digest of no rows yet.
    pub fn new() -> Self {
        let mut hash = Sha256::new();
        hash.update(TAG);
        BatchDigest { hash, rows: 0 }
    }

    /// Add one row: its user id, label and features.
    pub fn push(&mut self, user: &str, label: u32, features: &[f32]) {
        self.hash.update((user.len() as u64).to_le_bytes());
        self.hash.update(user.as_bytes());
        self.hash.update(label.to_le_bytes());
        self.hash.update((features.len() as u64).to_le_bytes());
        crate::data::rows::update_f32(&mut self.hash, features);
        self.rows += 1;
    }

    /// The hex digest of every row pushed, with the row count (so that a prefix of a batch
    /// never digests like the batch).
    pub fn finish(mut self) -> String {
        self.hash.update(self.rows.to_le_bytes());
        hex::encode(self.hash.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(rows: &[(&str, u32, &[f32])]) -> String {
        let mut d = BatchDigest::new();
        for (u, l, x) in rows {
            d.push(u, *l, x);
        }
        d.finish()
    }

    #[test]
    fn equal_rows_digest_equal_and_any_change_shows() {
        let base = digest(&[("a", 1, &[0.5, 2.0]), ("b", 0, &[1.0, -3.0])]);
        assert_eq!(
            base,
            digest(&[("a", 1, &[0.5, 2.0]), ("b", 0, &[1.0, -3.0])])
        );
        for other in [
            digest(&[("b", 0, &[1.0, -3.0]), ("a", 1, &[0.5, 2.0])]),
            digest(&[("a", 1, &[0.5, 2.0])]),
            digest(&[("a", 0, &[0.5, 2.0]), ("b", 0, &[1.0, -3.0])]),
            digest(&[("a", 1, &[0.5, 2.5]), ("b", 0, &[1.0, -3.0])]),
            digest(&[("ab", 1, &[0.5, 2.0]), ("", 0, &[1.0, -3.0])]),
            digest(&[]),
        ] {
            assert_ne!(base, other);
        }
    }
}
