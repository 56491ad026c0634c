//! The row store: the rows of one shard (or of the held-out set) in one checksummed file.
//!
//! A file holds, column by column, each row's user key, its position among its user's rows,
//! its tag, its slice, its label and its features, sorted by tag, followed by the SHA-256 of
//! everything before it. The user keys come first, so the users a file holds can be read
//! without its features ([`Rows::decode_keys`]). Reading checks the magic, the version, the exact size and the digest before a
//! single value is used. Rows are removed by writing a new file without them: there is no
//! deleted flag.

use crate::data::keys::UserKey;
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;

/// Feed `values` to `h` as little-endian bytes, a block at a time (one `update` per value
/// costs more than the hashing itself).
pub fn update_f32(h: &mut Sha256, values: &[f32]) {
    let mut block = [0u8; 4096];
    for chunk in values.chunks(block.len() / 4) {
        for (b, v) in block.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&block[..chunk.len() * 4]);
    }
}

const MAGIC: &[u8; 8] = b"SISAROWS";
/// Version 2 added the slice column.
const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 4 + 8;
/// Bytes per row besides its features: key, position, tag, slice, label.
const ROW_FIXED: usize = 32 + 4 + 8 + 4 + 4;
/// Largest feature count a row file may declare.
pub const MAX_FEATURES: usize = 1 << 22;

/// Rows with their identity, label and features, in tag order once [`Rows::sort`] has run.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    /// Number of features per row.
    pub dim: usize,
    /// Owning user of each row.
    pub keys: Vec<UserKey>,
    /// Position of each row among its user's rows.
    pub seqs: Vec<u32>,
    /// Each row's tag (see [`crate::plan::row_tag`]).
    pub tags: Vec<u64>,
    /// Each row's slice (0-based), placed at ingest by [`crate::plan::Rules::place`].
    pub slices: Vec<u32>,
    /// Class label of each row.
    pub labels: Vec<u32>,
    /// Features, row-major, `len() * dim` values.
    pub x: Vec<f32>,
}

/// A row's identity: its user's key, its position among that user's rows, and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowId {
    /// The owning user's key.
    pub key: UserKey,
    /// Position among the user's rows.
    pub seq: u32,
    /// The row's tag ([`crate::plan::row_tag`]).
    pub tag: u64,
}

/// What each slice of a shard holds (each row's slice is [`Rows::slices`]).
#[derive(Clone, Debug)]
pub struct SliceIndex {
    /// Rows per slice.
    pub counts: Vec<u64>,
    /// Digest of each slice's rows (tag, label, features, in tag order).
    pub digests: Vec<[u8; 32]>,
}

impl Rows {
    /// No rows, `dim` features each.
    pub fn new(dim: usize) -> Rows {
        Rows {
            dim,
            keys: Vec::new(),
            seqs: Vec::new(),
            tags: Vec::new(),
            slices: Vec::new(),
            labels: Vec::new(),
            x: Vec::new(),
        }
    }

    /// Make room for `n` more rows, exactly.
    pub fn reserve(&mut self, n: usize) {
        self.keys.reserve_exact(n);
        self.seqs.reserve_exact(n);
        self.tags.reserve_exact(n);
        self.slices.reserve_exact(n);
        self.labels.reserve_exact(n);
        self.x.reserve_exact(n * self.dim);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// Append one row.
    pub fn push(&mut self, row: RowId, slice: u32, label: u32, features: &[f32]) {
        debug_assert_eq!(features.len(), self.dim);
        self.keys.push(row.key);
        self.seqs.push(row.seq);
        self.tags.push(row.tag);
        self.slices.push(slice);
        self.labels.push(label);
        self.x.extend_from_slice(features);
    }

    /// Append row `i` of `other`.
    pub fn push_from(&mut self, other: &Rows, i: usize) {
        self.push(other.id(i), other.slices[i], other.labels[i], other.row(i));
    }

    /// The identity of row `i`.
    pub fn id(&self, i: usize) -> RowId {
        RowId {
            key: self.keys[i],
            seq: self.seqs[i],
            tag: self.tags[i],
        }
    }

    /// Put rows in tag order, the canonical order of every row file.
    pub fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| self.tags[i]);
        let mut out = Rows::new(self.dim);
        out.reserve(order.len());
        for i in order {
            out.push_from(self, i);
        }
        *self = out;
    }

    /// The first tag that occurs twice, if any (two rows with one identity).
    pub fn duplicate_tag(&self) -> Option<u64> {
        self.tags.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
    }

    /// Number of distinct users.
    pub fn users(&self) -> usize {
        self.keys.iter().collect::<HashSet<_>>().len()
    }

    /// These rows without the rows of `users`; order is kept.
    pub fn without(&self, users: &HashSet<UserKey>) -> Rows {
        let mut out = Rows::new(self.dim);
        for i in 0..self.len() {
            if !users.contains(&self.keys[i]) {
                out.push_from(self, i);
            }
        }
        out
    }

    /// Number of rows owned by `users`.
    pub fn count_of(&self, users: &HashSet<UserKey>) -> usize {
        self.keys.iter().filter(|k| users.contains(k)).count()
    }

    /// The first slice number that is not below `slices`, if any (a row file of another run).
    pub fn slice_out_of_range(&self, slices: usize) -> Option<u32> {
        self.slices.iter().copied().find(|&s| s as usize >= slices)
    }

    /// Group the rows into `slices` slices by their stored slice and digest each slice.
    /// Every stored slice must be below `slices` ([`Rows::slice_out_of_range`]).
    pub fn slice_index(&self, slices: usize) -> SliceIndex {
        self.slice_index_reusing(slices, None)
    }

    /// [`Rows::slice_index`], taking the digest of every slice that `known` marks clean from
    /// `known` instead of hashing its rows again: `known` is the digests of these rows' slices
    /// before a change, and which slices the change touched (rows removed or added).
    pub fn slice_index_reusing(
        &self,
        slices: usize,
        known: Option<(&[[u8; 32]], &[bool])>,
    ) -> SliceIndex {
        let reuse = |s: usize| known.filter(|(d, dirty)| d.len() == slices && !dirty[s]);
        let mut hashers: Vec<Option<Sha256>> = (0..slices)
            .map(|s| reuse(s).is_none().then(Sha256::new))
            .collect();
        let mut counts = vec![0u64; slices];
        for i in 0..self.len() {
            let s = self.slices[i] as usize;
            counts[s] += 1;
            if let Some(h) = &mut hashers[s] {
                h.update(self.tags[i].to_le_bytes());
                h.update(self.labels[i].to_le_bytes());
                update_f32(h, self.row(i));
            }
        }
        let digests = hashers
            .into_iter()
            .enumerate()
            .map(|(s, h)| match h {
                Some(h) => h.finalize().into(),
                None => reuse(s).expect("a clean slice has a known digest").0[s],
            })
            .collect();
        SliceIndex { counts, digests }
    }

    /// The file form: header, columns, SHA-256 trailer.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.len();
        let mut out = Vec::with_capacity(HEADER + n * (ROW_FIXED + 4 * self.dim) + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.0);
        }
        for s in &self.seqs {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for t in &self.tags {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for s in &self.slices {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for l in &self.labels {
            out.extend_from_slice(&l.to_le_bytes());
        }
        for v in &self.x {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// The digest that [`Rows::encode`] writes as its trailer.
    pub fn digest_of_encoded(bytes: &[u8]) -> [u8; 32] {
        bytes[bytes.len() - 32..]
            .try_into()
            .expect("encoded rows end with a 32-byte digest")
    }

    /// Parse and check a row file read from `path`.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Rows> {
        let bad = |m: String| Error::corrupt(path, m);
        if bytes.len() < HEADER + 32 || &bytes[..8] != MAGIC {
            return Err(bad("not a sisa row file (bad magic or too short)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "row file version {version}, expected {VERSION}"
            )));
        }
        let dim = u32_at(12) as usize;
        let n = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        if dim == 0 || dim > MAX_FEATURES {
            return Err(bad(format!("feature count {dim} out of range")));
        }
        let expected = (n as u128) * (ROW_FIXED as u128 + 4 * dim as u128) + (HEADER + 32) as u128;
        if expected != bytes.len() as u128 {
            return Err(bad(format!(
                "size {} bytes does not match {n} rows of {dim} features",
                bytes.len()
            )));
        }
        let body = &bytes[..bytes.len() - 32];
        if Sha256::digest(body).as_slice() != &bytes[bytes.len() - 32..] {
            return Err(bad(
                "digest mismatch: the file was modified or damaged".into()
            ));
        }
        let n = n as usize;
        let mut o = HEADER;
        let mut take = |len: usize| {
            let s = &bytes[o..o + len];
            o += len;
            s
        };
        let keys = take(n * 32)
            .chunks_exact(32)
            .map(|c| UserKey(c.try_into().expect("32 bytes")))
            .collect();
        let seqs = take(n * 4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        let tags = take(n * 8)
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let slices = take(n * 4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        let labels = take(n * 4)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        let x = take(n * dim * 4)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        Ok(Rows {
            dim,
            keys,
            seqs,
            tags,
            slices,
            labels,
            x,
        })
    }

    /// The byte length of the header and the user-key column of a row file of `n` rows: the
    /// prefix that [`Rows::decode_keys`] reads.
    pub fn keys_prefix_len(n: u64) -> u64 {
        HEADER as u64 + 32 * n
    }

    /// SHA-256 of the user-key column of `bytes` (an encoded row file or its key prefix).
    pub fn keys_digest_of_encoded(bytes: &[u8]) -> [u8; 32] {
        let n = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) as usize;
        Sha256::digest(&bytes[HEADER..HEADER + 32 * n]).into()
    }

    /// The user keys of a row file, from its header and key column alone (`bytes` is that
    /// prefix, [`Rows::keys_prefix_len`] long). The caller checks
    /// [`Rows::keys_digest_of_encoded`] against the manifest.
    pub fn decode_keys(path: &Path, bytes: &[u8], rows: u64) -> Result<Vec<UserKey>> {
        let bad = |m: &str| Error::corrupt(path, m.to_string());
        if (bytes.len() as u64) != Self::keys_prefix_len(rows) || &bytes[..8] != MAGIC {
            return Err(bad(
                "not a sisa row file of the manifest's size (bad magic or length)",
            ));
        }
        if u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) != VERSION
            || u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) != rows
        {
            return Err(bad(
                "row file version or row count disagrees with the manifest",
            ));
        }
        Ok(bytes[HEADER..]
            .chunks_exact(32)
            .map(|c| UserKey(c.try_into().expect("32 bytes")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan;

    fn sample() -> Rows {
        let mut r = Rows::new(3);
        for i in 0..10u32 {
            let key = UserKey([(i % 4) as u8; 32]);
            let tag = plan::row_tag(1, &format!("u{}", i % 4), i / 4);
            r.push(
                RowId {
                    key,
                    seq: i / 4,
                    tag,
                },
                plan::slice_of(9, tag, 3) as u32,
                i % 3,
                &[i as f32, 1.5, -2.0],
            );
        }
        r.sort();
        r
    }

    #[test]
    fn round_trip_and_digest() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(Rows::decode(Path::new("x"), &bytes).unwrap(), r);
        assert_eq!(
            Rows::digest_of_encoded(&bytes),
            *<&[u8; 32]>::try_from(&Sha256::digest(&bytes[..bytes.len() - 32])[..]).unwrap()
        );
    }

    #[test]
    fn the_key_column_reads_alone() {
        let r = sample();
        let bytes = r.encode();
        let prefix = &bytes[..Rows::keys_prefix_len(r.len() as u64) as usize];
        assert_eq!(
            Rows::decode_keys(Path::new("x"), prefix, r.len() as u64).unwrap(),
            r.keys
        );
        assert_eq!(
            Rows::keys_digest_of_encoded(prefix),
            Rows::keys_digest_of_encoded(&bytes)
        );
        assert!(Rows::decode_keys(Path::new("x"), prefix, r.len() as u64 + 1).is_err());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let err = Rows::decode(Path::new("shard-0.rows"), &b).unwrap_err();
            assert!(err.to_string().contains("shard-0.rows"), "{err}");
        }
        for cut in [0, 10, bytes.len() - 1] {
            assert!(Rows::decode(Path::new("x"), &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn removing_users_keeps_other_slices() {
        let r = sample();
        let before = r.slice_index(3);
        let gone: HashSet<UserKey> = [UserKey([1; 32])].into();
        let after_rows = r.without(&gone);
        assert_eq!(after_rows.len(), r.len() - r.count_of(&gone));
        let after = after_rows.slice_index(3);
        // Reusing the digests of the slices that lost no row gives the same index.
        let dirty: Vec<bool> = (0..3)
            .map(|s| (0..r.len()).any(|i| r.keys[i] == UserKey([1; 32]) && r.slices[i] == s as u32))
            .collect();
        let reused = after_rows.slice_index_reusing(3, Some((&before.digests, &dirty)));
        assert_eq!(reused.digests, after_rows.slice_index(3).digests);
        assert_eq!(reused.counts, after_rows.slice_index(3).counts);
        // Slices that held none of user 1's rows keep their digest.
        for s in 0..3 {
            let held =
                (0..r.len()).any(|i| r.keys[i] == UserKey([1; 32]) && r.slices[i] == s as u32);
            assert_eq!(before.digests[s] == after.digests[s], !held, "slice {s}");
        }
    }
}
