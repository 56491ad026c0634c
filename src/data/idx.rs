//! IDX ingest (the format of MNIST and Fashion-MNIST), and the seeded rule that gives rows
//! without a user column their users.
//!
//! An IDX file is a 4-byte magic (`0, 0, type, dims`), `dims` big-endian `u32` sizes, then the
//! values in row-major order, big-endian. Files may be gzipped (detected by their magic bytes,
//! whatever their name). An images file `X-images-idx3-ubyte[.gz]` pairs with the labels file
//! `X-labels-idx1-ubyte[.gz]` beside it, or with an explicit `--labels` file. Every value becomes
//! an `f32` feature (pixels keep their 0..255 range; standardization is the shard's business).
//!
//! IDX files hold no users, so rows are assigned to users by a [`UserRule`]:
//! `uniform:U` or `zipf:U:s`. Row `i` of a file draws `x = h(seed, role, i)`, the first 53
//! bits of `SHA-256("sisa/users" ‖ seed ‖ role ‖ i)` as a fraction in `[0, 1)`; `uniform:U`
//! gives it user `⌊x·U⌋`, `zipf:U:s` the smallest rank `k` (0-based) whose cumulative weight
//! `Σ_{j≤k} (j+1)^(−s) / Σ_{j<U} (j+1)^(−s)` exceeds `x`. The user id is the role's prefix and
//! the rank: `u17` for a training row, `h17` for a held-out row, so no user has rows on both
//! sides (as in the bundled datasets) and the same data and seed always give the same users.

use crate::data::csv::{open_with_length, MAX_LABEL};
use crate::data::rows::MAX_FEATURES;
use crate::data::{Event, Label, Labelled};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Largest number of values an IDX file may declare (2^31: 8 GiB of `f32`).
pub const MAX_VALUES: u64 = 1 << 31;
/// Largest number of users a [`UserRule`] may name.
pub const MAX_USERS: u32 = 100_000_000;
/// Most users of a zipf rule (its table of cumulative weights is 8 bytes a user: 32 MiB).
pub const MAX_ZIPF_USERS: u32 = 1 << 22;

/// A rule that assigns the rows of a file without a user column to users.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UserRule {
    /// `uniform:U`: every row picks one of `U` users with equal probability.
    Uniform {
        /// Number of users U.
        users: u32,
    },
    /// `zipf:U:s`: user of rank k (0-based) is picked with probability ∝ (k+1)^(−s).
    Zipf {
        /// Number of users U.
        users: u32,
        /// Exponent s ≥ 0 (0 is uniform).
        exponent: f64,
    },
}

/// Which side of the data a file is: it prefixes the user ids the rule gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Training data: users `u<k>`.
    Train,
    /// Held-out data: users `h<k>`.
    HeldOut,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Train => "u",
            Role::HeldOut => "h",
        }
    }
}

impl FromStr for UserRule {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let users = |raw: &str| -> std::result::Result<u32, String> {
            match raw.trim().parse::<u32>() {
                Ok(u) if (1..=MAX_USERS).contains(&u) => Ok(u),
                _ => Err(format!(
                    "the number of users must be an integer in 1..={MAX_USERS}, got '{raw}'"
                )),
            }
        };
        match parts.as_slice() {
            ["uniform", u] => Ok(UserRule::Uniform { users: users(u)? }),
            ["zipf", u, e] => {
                let exponent = match e.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() && (0.0..=10.0).contains(&x) => x,
                    _ => return Err(format!("the zipf exponent must be in 0..=10, got '{e}'")),
                };
                let users = users(u)?;
                // The rule keeps a table of one cumulative weight per user.
                if users > MAX_ZIPF_USERS {
                    return Err(format!(
                        "a zipf rule takes at most {MAX_ZIPF_USERS} users, got {users}"
                    ));
                }
                Ok(UserRule::Zipf { users, exponent })
            }
            _ => Err(format!(
                "'{s}' is not a user rule: expected uniform:U or zipf:U:s (e.g. uniform:10000, zipf:10000:1.1)"
            )),
        }
    }
}

impl fmt::Display for UserRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRule::Uniform { users } => write!(f, "uniform:{users}"),
            UserRule::Zipf { users, exponent } => write!(f, "zipf:{users}:{exponent}"),
        }
    }
}

/// The fraction in `[0, 1)` that row `index` of a `role` file draws under `seed`.
fn draw(seed: u64, role: Role, index: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(b"sisa/users");
    h.update(seed.to_le_bytes());
    h.update(role.prefix().as_bytes());
    h.update(index.to_le_bytes());
    let out = h.finalize();
    let bits = u64::from_le_bytes(out[..8].try_into().expect("sha256 output has 32 bytes")) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

impl UserRule {
    /// Number of users the rule names.
    pub fn users(&self) -> u32 {
        match *self {
            UserRule::Uniform { users } | UserRule::Zipf { users, .. } => users,
        }
    }

    /// The 0-based user rank of rows `0..rows` of a `role` file.
    pub fn ranks(&self, seed: u64, role: Role, rows: usize) -> Vec<u32> {
        let a = Assigner::new(self, seed, role);
        (0..rows as u64).map(|i| a.rank(i)).collect()
    }

    /// The user ids of rows `0..rows` of a `role` file: `u<rank>` or `h<rank>`.
    pub fn assign(&self, seed: u64, role: Role, rows: usize) -> Vec<String> {
        let a = Assigner::new(self, seed, role);
        (0..rows as u64).map(|i| a.id(i)).collect()
    }
}

/// A [`UserRule`] applied row by row, for files read as a stream.
pub struct Assigner {
    users: u32,
    seed: u64,
    role: Role,
    /// Cumulative weights of the ranks (zipf only).
    cdf: Vec<f64>,
}

impl Assigner {
    /// The rule's assignment for a `role` file under `seed`.
    pub fn new(rule: &UserRule, seed: u64, role: Role) -> Assigner {
        let cdf = match *rule {
            UserRule::Uniform { .. } => Vec::new(),
            UserRule::Zipf { users, exponent } => {
                let mut total = 0f64;
                (0..users)
                    .map(|k| {
                        total += ((k + 1) as f64).powf(-exponent);
                        total
                    })
                    .collect()
            }
        };
        Assigner {
            users: rule.users(),
            seed,
            role,
            cdf,
        }
    }

    /// The 0-based user rank of row `index`.
    pub fn rank(&self, index: u64) -> u32 {
        let x = draw(self.seed, self.role, index);
        let rank = match self.cdf.last() {
            None => (x * self.users as f64) as u32,
            Some(total) => {
                let x = x * total;
                self.cdf.partition_point(|&c| c <= x) as u32
            }
        };
        rank.min(self.users - 1)
    }

    /// The user id of row `index`: the role's prefix and the rank.
    pub fn id(&self, index: u64) -> String {
        format!("{}{}", self.role.prefix(), self.rank(index))
    }
}

/// An IDX array: its sizes and its values as `f32`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    /// Size of each dimension; the first counts the records.
    pub dims: Vec<usize>,
    /// The values.
    pub values: Vec<f32>,
}

fn elem_size(code: u8) -> Option<usize> {
    match code {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// The checked header of an IDX file.
struct Header {
    /// Value type code.
    code: u8,
    /// Bytes per value.
    size: usize,
    /// Sizes; the first counts the records.
    dims: Vec<usize>,
    /// Values in all.
    count: usize,
    /// Header length in bytes.
    len: usize,
}

impl Header {
    /// Values per record.
    fn per_record(&self) -> usize {
        self.count.checked_div(self.dims[0]).unwrap_or(0)
    }

    /// File length the sizes declare.
    fn expected(&self) -> u64 {
        self.len as u64 + (self.count * self.size) as u64
    }
}

/// Read as many bytes as fill `buf` or the stream holds; returns how many.
fn fill(reader: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(got)
}

fn read_header(path: &Path, reader: &mut impl Read) -> Result<Header> {
    let bad = |m: String| Error::input(path, None, None, m);
    let mut magic = [0u8; 4];
    let got = fill(reader, &mut magic, path)?;
    if got < 4 || magic[0] != 0 || magic[1] != 0 {
        return Err(bad(
            "not an IDX file (its first two bytes are not zero)".into()
        ));
    }
    let code = magic[2];
    let size =
        elem_size(code).ok_or_else(|| bad(format!("unknown IDX value type 0x{code:02x}")))?;
    let ndim = magic[3] as usize;
    if !(1..=4).contains(&ndim) {
        return Err(bad(format!("{ndim} dimensions; expected 1 to 4")));
    }
    let len = 4 + 4 * ndim;
    let mut sizes = vec![0u8; 4 * ndim];
    let got = fill(reader, &mut sizes, path)?;
    if got < sizes.len() {
        return Err(bad(format!(
            "cut short: {} bytes, but the header alone needs {len}",
            4 + got
        )));
    }
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let count = match count {
        Some(c) if c <= MAX_VALUES => c as usize,
        _ => {
            return Err(bad(format!(
                "sizes {dims:?} declare more than {MAX_VALUES} values"
            )))
        }
    };
    Ok(Header {
        code,
        size,
        dims,
        count,
        len,
    })
}

/// The error for a file whose length is not what its sizes declare; reads the rest of the
/// stream to count its bytes.
fn length_error(path: &Path, h: &Header, reader: &mut impl Read, read: u64) -> Error {
    let rest = std::io::copy(reader, &mut std::io::sink()).unwrap_or(0);
    length_message(path, h, read + rest)
}

/// The error for a file of `total` bytes whose sizes declare another length.
fn length_message(path: &Path, h: &Header, total: u64) -> Error {
    let expected = h.expected();
    Error::input(
        path,
        None,
        None,
        format!(
            "{total} bytes, but sizes {:?} of {}-byte values need exactly {expected}{}",
            h.dims,
            h.size,
            if total < expected {
                " (the file is cut short)"
            } else {
                " (trailing bytes)"
            }
        ),
    )
}

/// Decode one record's big-endian values of type `code` into `out`.
fn decode(code: u8, body: &[u8], out: &mut [f32]) {
    match code {
        0x08 => out.iter_mut().zip(body).for_each(|(o, &b)| *o = b as f32),
        0x09 => out
            .iter_mut()
            .zip(body)
            .for_each(|(o, &b)| *o = b as i8 as f32),
        0x0B => out
            .iter_mut()
            .zip(body.chunks_exact(2))
            .for_each(|(o, c)| *o = i16::from_be_bytes([c[0], c[1]]) as f32),
        0x0C => out
            .iter_mut()
            .zip(body.chunks_exact(4))
            .for_each(|(o, c)| *o = i32::from_be_bytes(c.try_into().expect("4 bytes")) as f32),
        0x0D => out
            .iter_mut()
            .zip(body.chunks_exact(4))
            .for_each(|(o, c)| *o = f32::from_be_bytes(c.try_into().expect("4 bytes"))),
        _ => out
            .iter_mut()
            .zip(body.chunks_exact(8))
            .for_each(|(o, c)| *o = f64::from_be_bytes(c.try_into().expect("8 bytes")) as f32),
    }
}

/// An IDX file read record by record, one record in memory. Every check of [`read_idx`]
/// applies; a file whose length disagrees with its sizes is refused when the stream shows it,
/// after the records before the disagreement were handed over.
struct Records {
    path: PathBuf,
    reader: Box<dyn Read>,
    header: Header,
    body: Vec<u8>,
    values: Vec<f32>,
    next: usize,
    read: u64,
}

impl Records {
    fn open(path: &Path) -> Result<Records> {
        let (mut reader, length) = open_with_length(path)?;
        let header = read_header(path, &mut reader)?;
        // Sizes the file cannot hold are refused before anything is allocated from them: a
        // plain file's length is known, a gzipped file's is counted in one streaming pass
        // (constant memory), since ingest sizes its shards from the record count.
        let len = match length {
            Some(len) => len,
            None => {
                let mut whole = crate::data::csv::open_maybe_gz(path)?;
                std::io::copy(&mut whole, &mut std::io::sink()).map_err(|e| Error::io(path, e))?
            }
        };
        if len != header.expected() {
            return Err(length_message(path, &header, len));
        }
        let per_record = header.per_record();
        if per_record > MAX_FEATURES {
            return Err(Error::input(
                path,
                None,
                None,
                format!(
                    "sizes {:?}: records of {per_record} values, more than the {MAX_FEATURES} features a row of a run holds",
                    header.dims
                ),
            ));
        }
        Ok(Records {
            path: path.to_path_buf(),
            reader,
            // Grown as bytes arrive.
            body: Vec::new(),
            values: Vec::new(),
            read: header.len as u64,
            header,
            next: 0,
        })
    }

    fn dims(&self) -> &[usize] {
        &self.header.dims
    }

    /// The next record's values, or `None` after the last (checking that nothing follows it).
    fn next_record(&mut self) -> Result<Option<&[f32]>> {
        let path = &self.path;
        if self.next == self.header.dims[0] {
            let mut extra = [0u8; 1];
            if fill(&mut self.reader, &mut extra, path)? > 0 {
                return Err(length_error(
                    path,
                    &self.header,
                    &mut self.reader,
                    self.read + 1,
                ));
            }
            return Ok(None);
        }
        let want = self.header.per_record() * self.header.size;
        self.body.clear();
        let got = (&mut self.reader)
            .take(want as u64)
            .read_to_end(&mut self.body)
            .map_err(|e| Error::io(path, e))?;
        self.read += got as u64;
        if got < want {
            return Err(length_error(
                path,
                &self.header,
                &mut self.reader,
                self.read,
            ));
        }
        self.values.resize(self.header.per_record(), 0.0);
        decode(self.header.code, &self.body, &mut self.values);
        self.next += 1;
        if let Some(i) = self.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(
                path,
                None,
                None,
                format!("record {}, value {}: not a finite number", self.next, i + 1),
            ));
        }
        Ok(Some(&self.values))
    }
}

/// Read and check an IDX file: magic, sizes, an exact length and finite values.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let mut records = Records::open(path)?;
    let dims = records.dims().to_vec();
    let mut values = Vec::with_capacity(records.header.count);
    while let Some(r) = records.next_record()? {
        values.extend_from_slice(r);
    }
    Ok(IdxArray { dims, values })
}

/// The labels file that pairs with an images file by the standard naming
/// (`X-images-idx3-ubyte[.gz]` → `X-labels-idx1-ubyte[.gz]`, also `X-images.idx3-ubyte`), gzipped
/// or not; `None` when no such file exists.
pub fn labels_path_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let base = name.strip_suffix(".gz").unwrap_or(name);
    let candidates = [
        base.replace("images-idx3", "labels-idx1"),
        base.replace("images.idx3", "labels.idx1"),
    ];
    let dir = images.parent().unwrap_or(Path::new(""));
    for c in candidates.iter().filter(|c| c.as_str() != base) {
        for suffix in ["", ".gz"] {
            let p = dir.join(format!("{c}{suffix}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Feature names for records of shape `dims[1..]`: `p<row>_<col>` for images (as in the
/// bundled MNIST CSV), `f<i>` otherwise.
fn feature_names(dims: &[usize]) -> Vec<String> {
    match dims {
        [_, rows, cols] => (0..rows * cols)
            .map(|i| format!("p{}_{}", i / cols, i % cols))
            .collect(),
        _ => {
            let d: usize = dims[1..].iter().product();
            (0..d).map(|i| format!("f{i}")).collect()
        }
    }
}

/// Stream an IDX images file and its labels (the file beside it by the standard name, or
/// `labels`) as labelled rows whose users `users` assigns under `seed`: `on_event` first gets
/// [`Event::Start`] with every user id, then one [`Event::Row`] per record (its `line` is the
/// 1-based record number). Holds one image at a time; returns the feature names.
pub fn for_each_labelled(
    images: &Path,
    labels: Option<&Path>,
    users: &UserRule,
    seed: u64,
    role: Role,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    let mut records = Records::open(images)?;
    let labels_path = match labels {
        Some(p) => p.to_path_buf(),
        None => labels_path_for(images).ok_or_else(|| {
            Error::input(
                images,
                None,
                None,
                "no labels file beside it (expected the standard name, X-labels-idx1-ubyte[.gz]); pass --labels FILE",
            )
        })?,
    };
    let dims = records.dims().to_vec();
    if dims.len() < 2 || dims[1..].iter().product::<usize>() == 0 {
        return Err(Error::input(
            images,
            None,
            None,
            format!("sizes {dims:?}: an images file needs records of at least one value"),
        ));
    }
    let y = read_idx(&labels_path)?;
    if y.dims.len() != 1 {
        return Err(Error::input(
            &labels_path,
            None,
            None,
            format!("sizes {:?}: a labels file has one dimension", y.dims),
        ));
    }
    let n = dims[0];
    if y.dims[0] != n {
        return Err(Error::input(
            &labels_path,
            None,
            None,
            format!(
                "{} labels, but {} has {n} records",
                y.dims[0],
                images.display()
            ),
        ));
    }
    if n == 0 {
        return Err(Error::input(images, None, None, "no records"));
    }
    let mut label_values = Vec::with_capacity(n);
    for (i, &v) in y.values.iter().enumerate() {
        if v < 0.0 || v.fract() != 0.0 || v > MAX_LABEL as f32 {
            return Err(Error::input(
                &labels_path,
                None,
                None,
                format!(
                    "record {}: label {v} is not an integer in 0..={MAX_LABEL}",
                    i + 1
                ),
            ));
        }
        label_values.push(v as u32);
    }
    let ids = users.assign(seed, role, n);
    let names = feature_names(&dims);
    on_event(Event::Start {
        dim: names.len(),
        users: &ids,
    })?;
    let mut i = 0;
    while let Some(features) = records.next_record()? {
        on_event(Event::Row(Labelled {
            line: i as u64 + 1,
            user: &ids[i],
            label: Label::Index(label_values[i]),
            features,
        }))?;
        i += 1;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An IDX file of unsigned bytes with the given sizes.
    pub(crate) fn idx_bytes(dims: &[u32], values: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(values);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn reads_images_and_labels_plain_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..3 * 2 * 2).map(|v| v as u8 * 10).collect();
        let img = dir.path().join("train-images-idx3-ubyte.gz");
        std::fs::write(&img, gz(&idx_bytes(&[3, 2, 2], &pixels))).unwrap();
        // The labels file is found by name, gzipped or not.
        let lab = dir.path().join("train-labels-idx1-ubyte");
        std::fs::write(&lab, idx_bytes(&[3], &[7, 0, 9])).unwrap();
        assert_eq!(labels_path_for(&img), Some(lab.clone()));
        let idx = crate::data::format::Format::Idx;
        assert!(crate::data::format::sniff(&img).unwrap() == idx);
        assert!(crate::data::format::sniff(&lab).unwrap() == idx);
        let rule = UserRule::Uniform { users: 2 };
        let spec = crate::data::InputSpec::file(&img).with_users(crate::data::Users::Rule(rule));
        let t =
            crate::data::read_labelled(&spec, crate::data::Features::All, 7, Role::Train).unwrap();
        assert_eq!(t.feature_names, ["p0_0", "p0_1", "p1_0", "p1_1"]);
        assert_eq!(t.labels.as_deref(), Some(&[7, 0, 9][..]));
        assert_eq!(t.row(1), [40.0, 50.0, 60.0, 70.0]);
        assert_eq!(t.lines, [1, 2, 3]);
        let users = t.user_ids.unwrap();
        assert!(users.iter().all(|u| u == "u0" || u == "u1"), "{users:?}");
        assert_eq!(users, rule.assign(7, Role::Train, 3));
        let held = rule.assign(7, Role::HeldOut, 3);
        assert!(held.iter().all(|u| u.starts_with('h')));
    }

    #[test]
    fn a_csv_is_not_idx() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "user_id,label,a\nu,1,2\n").unwrap();
        let sniff = crate::data::format::sniff;
        assert_eq!(sniff(&p).unwrap(), crate::data::format::Format::Csv);
        let short = dir.path().join("short");
        std::fs::write(&short, [0u8, 0]).unwrap();
        assert_eq!(sniff(&short).unwrap(), crate::data::format::Format::Idx);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let cut = write("cut", idx_bytes(&[2, 2, 2], &[1; 7]));
        let e = read_idx(&cut).unwrap_err().to_string();
        assert!(e.contains("cut") && e.contains("cut short"), "{e}");
        let long = write("long", idx_bytes(&[1, 1], &[1, 2]));
        assert!(read_idx(&long)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        let mut t = idx_bytes(&[1], &[1]);
        t[2] = 0x42;
        let typ = write("type", t);
        assert!(read_idx(&typ).unwrap_err().to_string().contains("0x42"));
        let huge = write("huge", idx_bytes(&[65535, 65535, 65535], &[]));
        assert!(read_idx(&huge)
            .unwrap_err()
            .to_string()
            .contains("more than"));
        // Labels that disagree with the images in count.
        let img = write("x-images-idx3-ubyte", idx_bytes(&[2, 1, 1], &[1, 2]));
        write("x-labels-idx1-ubyte", idx_bytes(&[3], &[1, 2, 3]));
        let rule = UserRule::Uniform { users: 1 };
        let error = |images: &Path| {
            let spec =
                crate::data::InputSpec::file(images).with_users(crate::data::Users::Rule(rule));
            crate::data::read_labelled(&spec, crate::data::Features::All, 1, Role::Train)
                .unwrap_err()
                .to_string()
        };
        let e = error(&img);
        assert!(e.contains("3 labels") && e.contains("2 records"), "{e}");
        let lonely = write("y-images-idx3-ubyte", idx_bytes(&[1, 1, 1], &[1]));
        let e = error(&lonely);
        assert!(e.contains("--labels"), "{e}");
    }

    #[test]
    fn user_rules_parse_and_follow_their_distribution() {
        assert_eq!(
            "uniform:10".parse::<UserRule>(),
            Ok(UserRule::Uniform { users: 10 })
        );
        assert_eq!(
            "zipf:100:1.5".parse::<UserRule>(),
            Ok(UserRule::Zipf {
                users: 100,
                exponent: 1.5
            })
        );
        for bad in [
            "uniform",
            "uniform:0",
            "uniform:x",
            "zipf:10",
            "zipf:10:-1",
            "row",
        ] {
            assert!(bad.parse::<UserRule>().is_err(), "{bad}");
        }
        assert_eq!(UserRule::Uniform { users: 3 }.to_string(), "uniform:3");
        let n = 20_000;
        let uniform = UserRule::Uniform { users: 4 }.ranks(1, Role::Train, n);
        for k in 0..4 {
            let c = uniform.iter().filter(|&&r| r == k).count();
            assert!((4_600..5_400).contains(&c), "user {k}: {c}");
        }
        // zipf:U:1 with U = 3: probabilities 6/11, 3/11, 2/11.
        let zipf = UserRule::Zipf {
            users: 3,
            exponent: 1.0,
        }
        .ranks(1, Role::Train, n);
        let share = |k: u32| zipf.iter().filter(|&&r| r == k).count() as f64 / n as f64;
        assert!((share(0) - 6.0 / 11.0).abs() < 0.02, "{}", share(0));
        assert!((share(2) - 2.0 / 11.0).abs() < 0.02, "{}", share(2));
        // Pure: the same seed gives the same users, another seed others.
        assert_eq!(
            uniform,
            UserRule::Uniform { users: 4 }.ranks(1, Role::Train, n)
        );
        assert_ne!(
            uniform,
            UserRule::Uniform { users: 4 }.ranks(2, Role::Train, n)
        );
    }
}
