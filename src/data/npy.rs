//! NumPy ingest: `.npy` arrays and `.npz` archives of them.
//!
//! A `.npy` file is the magic `\x93NUMPY`, a version (1, 2 or 3), the length of a header, and
//! the header: a Python dict literal naming the value type (`descr`), the order
//! (`fortran_order`) and the `shape`; the values follow in C (row-major) order, or in Fortran
//! (column-major) order, as `np.save` writes what pandas' `to_numpy()` returns. Features come
//! from an array of shape `(N, D)`, `(N, H, W)` or `(N, C, H, W)`, each row flattened row-major
//! (the order a preset's `input` expects); a C-order array is read one row at a time, never
//! whole, and a Fortran-order one (whose rows are not contiguous) is read whole once. Labels
//! and user ids are 1-D arrays of one value per row (`(N,)` or `(N, 1)`), read whole.
//!
//! Value types: little- or big-endian floats (`f4`, `f8`), signed and unsigned integers of 1,
//! 2, 4 and 8 bytes, booleans; user ids may also be unicode (`<U`) or byte (`|S`) strings.
//! Object arrays (pickles), structured types and half floats are refused by
//! name. Sizes a header declares are checked against the file's length before anything is
//! allocated from them, when the length is known (a plain file, an archive entry).
//!
//! A `.npz` file is a zip archive of `.npy` entries, stored or deflated (`np.savez`,
//! `np.savez_compressed`): the features are the array `X` or `features`, the labels `y` or the
//! label column's name (`label`), the user ids the user column's name (`user_id`).

use crate::data::classes::Label;
use crate::data::csv::MAX_LABEL;
use crate::data::rows::MAX_FEATURES;
use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::Path;

/// Largest header accepted (NumPy itself refuses more than 10,000 bytes by default).
pub const MAX_HEADER: usize = 1 << 16;
/// Most rows an array may declare (2^40): the row index stays exact, and nothing is allocated
/// from it before the data is seen.
pub const MAX_ROWS: u64 = 1 << 40;

/// The kind of an array's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Uint,
    Bool,
    /// UTF-32 code points (`U`), `size` bytes in all.
    Unicode,
    /// Bytes (`S`).
    Bytes,
}

/// A checked value type (`descr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dtype {
    kind: Kind,
    /// Bytes per value.
    size: usize,
    /// Big-endian.
    big: bool,
    /// As written in the header, for messages.
    descr: String,
}

impl Dtype {
    fn numeric(&self) -> bool {
        !matches!(self.kind, Kind::Unicode | Kind::Bytes)
    }
}

/// The checked header of a `.npy` array.
#[derive(Clone, Debug)]
pub struct Header {
    /// The value type.
    pub dtype: Dtype,
    /// The shape; the first size counts the rows.
    pub shape: Vec<u64>,
    /// Bytes before the values (magic, version, header).
    pub len: u64,
    /// The values are in Fortran (column-major) order, as `np.save` writes an array that
    /// pandas' `to_numpy()` returned.
    pub fortran: bool,
}

impl Header {
    /// Rows: the first size.
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Values per row: the product of the other sizes.
    pub fn per_row(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Bytes of the values the shape declares, if that fits in a `u64`.
    fn data_len(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.size as u64, |acc, &d| acc.checked_mul(d))
    }

    /// The shape as NumPy prints it: `(3, 4)`, `(3,)`.
    pub fn shape_text(&self) -> String {
        match self.shape.as_slice() {
            [one] => format!("({one},)"),
            s => format!(
                "({})",
                s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Refuse a file or entry of `length` bytes that is not what the header declares.
    fn check_length(&self, path: &Path, place: &str, length: u64) -> Result<()> {
        let want = self.data_len().map(|d| d + self.len);
        if want == Some(length) {
            return Ok(());
        }
        let need = want.map_or("more than 2^64".to_string(), |w| w.to_string());
        Err(Error::input(
            path,
            None,
            None,
            prefixed(
                place,
                format!(
                    "{length} bytes, but shape {} of {} values ({} bytes each) needs {need}{}",
                    self.shape_text(),
                    self.dtype.descr,
                    self.dtype.size,
                    if want.is_some_and(|w| length > w) {
                        " (trailing bytes)"
                    } else {
                        " (the file is cut short)"
                    }
                ),
            ),
        ))
    }
}

/// Parse a `descr` such as `<f4`, `|u1`, `>i8`, `<U12`.
fn parse_descr(descr: &str) -> std::result::Result<Dtype, String> {
    let mut chars = descr.chars();
    let (big, rest) = match chars.next() {
        Some('<') | Some('=') | Some('|') => (false, chars.as_str()),
        Some('>') => (true, chars.as_str()),
        _ => (false, descr),
    };
    let mut it = rest.chars();
    let code = it
        .next()
        .ok_or_else(|| format!("value type '{descr}' is empty"))?;
    let count: usize = match it.as_str() {
        "" => 0,
        digits => digits
            .parse()
            .map_err(|_| format!("value type '{descr}' is not one NumPy writes"))?,
    };
    let (kind, size) = match (code, count) {
        ('f', 4) | ('f', 8) => (Kind::Float, count),
        ('f', 2) => return Err("half floats ('f2') are not read: save the array as float32".into()),
        ('i', 1 | 2 | 4 | 8) => (Kind::Int, count),
        ('u', 1 | 2 | 4 | 8) => (Kind::Uint, count),
        ('b', 1) | ('?', 0) => (Kind::Bool, 1),
        ('U', n) if n > 0 && n <= 1 << 16 => (Kind::Unicode, 4 * n),
        ('S', n) if n > 0 && n <= 1 << 16 => (Kind::Bytes, n),
        ('O', _) => {
            return Err(
                "an object array (pickled Python objects) is not read: save plain arrays \
                 (np.savez with X and y); the README shows the one line that converts the SISA \
                 reference code's pickled dict"
                    .into(),
            )
        }
        _ => return Err(format!("value type '{descr}' is not read")),
    };
    Ok(Dtype {
        kind,
        size,
        big,
        descr: descr.to_string(),
    })
}

/// A value of the header's dict literal.
#[derive(Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    Other,
}

/// Parse the header's dict literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_dict(text: &str) -> std::result::Result<Vec<(String, Literal)>, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        let q = b[*i];
        let start = *i + 1;
        let end = text[start..]
            .find(q as char)
            .ok_or("an unterminated string")?;
        *i = start + end + 1;
        Ok(text[start..start + end].to_string())
    };
    skip(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err("the header is not a dict".into());
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        skip(&mut i);
        match b.get(i) {
            Some(b'}') => return Ok(out),
            Some(b'\'') | Some(b'"') => {}
            _ => return Err("a key of the header is not a string".into()),
        }
        let key = string(&mut i)?;
        skip(&mut i);
        if b.get(i) != Some(&b':') {
            return Err(format!("no ':' after '{key}'"));
        }
        i += 1;
        skip(&mut i);
        let value = match b.get(i) {
            Some(b'\'') | Some(b'"') => Literal::Str(string(&mut i)?),
            Some(b'(') => {
                let end = text[i..].find(')').ok_or("an unterminated tuple")? + i;
                let mut dims = Vec::new();
                for part in text[i + 1..end].split(',') {
                    let p = part.trim();
                    if p.is_empty() {
                        continue;
                    }
                    let p = p.strip_suffix('L').unwrap_or(p);
                    dims.push(p.parse::<u64>().map_err(|_| format!("shape size '{p}'"))?);
                }
                i = end + 1;
                Literal::Tuple(dims)
            }
            _ if text[i..].starts_with("True") => {
                i += 4;
                Literal::Bool(true)
            }
            _ if text[i..].starts_with("False") => {
                i += 5;
                Literal::Bool(false)
            }
            Some(b'[') => {
                // A structured type's field list: skipped to its end, refused by the caller.
                let mut depth = 0;
                while i < b.len() {
                    match b[i] {
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                Literal::Other
            }
            _ => return Err(format!("the value of '{key}' is not read")),
        };
        out.push((key, value));
        skip(&mut i);
        if b.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

/// Read exactly `buf.len()` bytes unless the stream ends first; returns how many were read.
fn fill(reader: &mut dyn Read, buf: &mut [u8], path: &Path) -> Result<usize> {
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

/// `m`, after the array's `place` when the file holds several (`array 'X': ...`).
fn prefixed(place: &str, m: String) -> String {
    if place.is_empty() {
        m
    } else {
        format!("{place}: {m}")
    }
}

/// The place for a row's message: the array of an archive, or nothing for a `.npy` file.
fn place_of(place: &str) -> Option<String> {
    (!place.is_empty()).then(|| place.to_string())
}

/// What a message calls the array at `place`.
fn array_name(place: &str) -> &str {
    if place.is_empty() {
        "the array"
    } else {
        place
    }
}

/// Read and check the header of the array `place` (`""` for a `.npy` file, `"array 'X'"`
/// in an archive) of `path`.
pub fn read_header(path: &Path, place: &str, reader: &mut dyn Read) -> Result<Header> {
    let bad = |m: String| Error::input(path, None, None, prefixed(place, m));
    let mut pre = [0u8; 8];
    let got = fill(reader, &mut pre, path)?;
    if got < 8 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad(if got >= 6 && &pre[..6] == b"\x93NUMPY" {
            "cut short in its header".into()
        } else {
            "not a NumPy .npy array (its first bytes are not \\x93NUMPY)".into()
        }));
    }
    let (major, minor) = (pre[6], pre[7]);
    let width = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(bad(format!(
                ".npy format version {major}.{minor} is not read"
            )))
        }
    };
    let mut size = [0u8; 4];
    if fill(reader, &mut size[..width], path)? < width {
        return Err(bad("cut short in its header".into()));
    }
    let hlen = u32::from_le_bytes(size) as usize;
    if hlen > MAX_HEADER {
        return Err(bad(format!(
            "a header of {hlen} bytes; at most {MAX_HEADER} are read"
        )));
    }
    let mut text = vec![0u8; hlen];
    if fill(reader, &mut text, path)? < hlen {
        return Err(bad("cut short in its header".into()));
    }
    let text =
        std::str::from_utf8(&text).map_err(|_| bad("the header is not UTF-8 text".into()))?;
    let dict = parse_dict(text).map_err(|m| bad(format!("unreadable header: {m}")))?;
    let get = |k: &str| dict.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let dtype = match get("descr") {
        Some(Literal::Str(d)) => parse_descr(d).map_err(bad)?,
        Some(_) => {
            return Err(bad(
                "a structured value type (named fields) is not read: save plain arrays".into(),
            ))
        }
        None => return Err(bad("the header has no 'descr'".into())),
    };
    let fortran = match get("fortran_order") {
        Some(Literal::Bool(f)) => *f,
        _ => return Err(bad("the header has no 'fortran_order'".into())),
    };
    let shape = match get("shape") {
        Some(Literal::Tuple(s)) => s.clone(),
        _ => return Err(bad("the header has no 'shape'".into())),
    };
    let header = Header {
        dtype,
        shape,
        len: (6 + 2 + width + hlen) as u64,
        fortran,
    };
    if header.rows() > MAX_ROWS {
        return Err(bad(format!(
            "shape {} declares more than {MAX_ROWS} rows",
            header.shape_text()
        )));
    }
    Ok(header)
}

/// Decode `out.len()` values of `dtype` from `body` into `f32`.
fn decode(dtype: &Dtype, body: &[u8], out: &mut [f32]) {
    macro_rules! each {
        ($n:expr, $conv:expr) => {
            for (o, c) in out.iter_mut().zip(body.chunks_exact($n)) {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                if dtype.big {
                    a.reverse();
                }
                *o = $conv(a);
            }
        };
    }
    match (dtype.kind, dtype.size) {
        (Kind::Float, 4) => each!(4, f32::from_le_bytes),
        (Kind::Float, _) => each!(8, |a| f64::from_le_bytes(a) as f32),
        (Kind::Int, 1) => each!(1, |a| i8::from_le_bytes(a) as f32),
        (Kind::Int, 2) => each!(2, |a| i16::from_le_bytes(a) as f32),
        (Kind::Int, 4) => each!(4, |a| i32::from_le_bytes(a) as f32),
        (Kind::Int, _) => each!(8, |a| i64::from_le_bytes(a) as f32),
        (Kind::Uint, 1) | (Kind::Bool, _) => each!(1, |a: [u8; 1]| a[0] as f32),
        (Kind::Uint, 2) => each!(2, |a| u16::from_le_bytes(a) as f32),
        (Kind::Uint, 4) => each!(4, |a| u32::from_le_bytes(a) as f32),
        (Kind::Uint, _) => each!(8, |a| u64::from_le_bytes(a) as f32),
        (Kind::Unicode | Kind::Bytes, _) => unreachable!("features are numeric, checked on open"),
    }
}

/// The feature rows of one array, read one row at a time: a `.npy` file or an `.npz` entry.
pub struct FeatureRows<'r> {
    path: &'r Path,
    place: String,
    reader: Box<dyn Read + 'r>,
    header: Header,
    body: Vec<u8>,
    values: Vec<f32>,
    next: u64,
    /// A Fortran-order array, read whole as `f32` in file order, and for each value of a row
    /// (in C order) its offset within one row's column-major layout.
    fortran: Option<(Vec<f32>, Vec<usize>)>,
}

impl<'r> FeatureRows<'r> {
    /// Open the array `place` of `path` (`""` for a `.npy` file) from `reader` (at the magic) as feature rows; `length`
    /// is the array's length in bytes when known, checked against its shape before reading.
    pub fn open(
        path: &'r Path,
        place: &str,
        mut reader: Box<dyn Read + 'r>,
        length: Option<u64>,
    ) -> Result<FeatureRows<'r>> {
        let header = read_header(path, place, &mut reader)?;
        let bad = |m: String| Error::input(path, None, None, prefixed(place, m));
        if !header.dtype.numeric() {
            return Err(bad(format!(
                "features of type '{}' (strings); features are numbers",
                header.dtype.descr
            )));
        }
        if !(2..=4).contains(&header.shape.len()) {
            return Err(bad(format!(
                "shape {}: features are (rows, features), (rows, height, width) or (rows, \
                 channels, height, width)",
                header.shape_text()
            )));
        }
        let per_row = header.per_row();
        if per_row == 0 || per_row > MAX_FEATURES as u64 {
            return Err(bad(format!(
                "shape {}: rows of {per_row} values; a row of a run holds 1 to {MAX_FEATURES} \
                 features",
                header.shape_text()
            )));
        }
        if let Some(len) = length {
            header.check_length(path, place, len)?;
        }
        if header.rows() == 0 {
            return Err(bad(format!("shape {}: no rows", header.shape_text())));
        }
        let mut rows = FeatureRows {
            path,
            place: place.to_string(),
            reader,
            values: vec![0.0; per_row as usize],
            body: vec![0; per_row as usize * header.dtype.size],
            header,
            next: 0,
            fortran: None,
        };
        if rows.header.fortran && rows.header.shape.len() > 1 {
            rows.read_fortran()?;
        }
        Ok(rows)
    }

    /// Read a Fortran-order array whole: its rows are not contiguous, so they cannot stream.
    /// This holds one more copy of the features (as `f32`) while they are read; memory grows
    /// with the bytes the file actually holds, never with what a damaged shape declares.
    fn read_fortran(&mut self) -> Result<()> {
        let path = self.path;
        let n = self.header.rows() as usize;
        let dims: Vec<usize> = self.header.shape[1..].iter().map(|&d| d as usize).collect();
        let per_row = self.values.len();
        let total = n * per_row;
        let size = self.header.dtype.size;
        let mut flat: Vec<f32> = Vec::new();
        let mut chunk = vec![0u8; (1 << 16) / size * size];
        let mut decoded = vec![0f32; chunk.len() / size];
        while flat.len() < total {
            let want = ((total - flat.len()) * size).min(chunk.len());
            let got = fill(&mut self.reader, &mut chunk[..want], path)?;
            if got < want {
                return Err(Error::input(
                    path,
                    None,
                    None,
                    prefixed(
                        &self.place,
                        format!(
                            "cut short: shape {} declares {} values, the data holds {}",
                            self.header.shape_text(),
                            total,
                            flat.len() + got / size
                        ),
                    ),
                ));
            }
            let count = got / size;
            decode(&self.header.dtype, &chunk[..got], &mut decoded[..count]);
            flat.extend_from_slice(&decoded[..count]);
        }
        // Value k of a row (C order over the row's sizes) sits at offset
        // j1 + d1*(j2 + d2*(j3 ...)) of the row's column-major layout, times the row count.
        let offsets: Vec<usize> = (0..per_row)
            .map(|k| {
                let mut rest = k;
                let mut index = vec![0usize; dims.len()];
                for (slot, &d) in index.iter_mut().zip(&dims).rev() {
                    *slot = rest % d;
                    rest /= d;
                }
                index
                    .iter()
                    .zip(&dims)
                    .rev()
                    .fold(0usize, |acc, (&j, &d)| acc * d + j)
            })
            .collect();
        self.fortran = Some((flat, offsets));
        Ok(())
    }

    /// The array's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Feature names for rows of this shape: `f<i>` for `(N, D)`, `p<row>_<col>` for images
    /// (as in the bundled CSVs), `c<channel>_p<row>_<col>` for several channels.
    pub fn names(&self) -> Vec<String> {
        match self.header.shape.as_slice() {
            [_, h, w] | [_, 1, h, w] => (0..h * w)
                .map(|i| format!("p{}_{}", i / w, i % w))
                .collect(),
            [_, c, h, w] => (0..c * h * w)
                .map(|i| format!("c{}_p{}_{}", i / (h * w), (i % (h * w)) / w, i % w))
                .collect(),
            _ => (0..self.header.per_row())
                .map(|i| format!("f{i}"))
                .collect(),
        }
    }

    /// The next row's features, or `None` after the last (checking that nothing follows).
    pub fn next_row(&mut self) -> Result<Option<&[f32]>> {
        let path = self.path;
        if self.next == self.header.rows() {
            let mut extra = [0u8; 1];
            if fill(&mut self.reader, &mut extra, path)? > 0 {
                return Err(Error::input(
                    path,
                    None,
                    None,
                    prefixed(
                        &self.place,
                        format!(
                            "trailing bytes after the {} rows its shape {} declares",
                            self.header.rows(),
                            self.header.shape_text()
                        ),
                    ),
                ));
            }
            return Ok(None);
        }
        self.next += 1;
        let row = self.next;
        if let Some((flat, offsets)) = &self.fortran {
            let n = self.header.rows() as usize;
            let i = (row - 1) as usize;
            for (v, &o) in self.values.iter_mut().zip(offsets) {
                *v = flat[i + n * o];
            }
            return self.checked_row(row);
        }
        let got = match fill(&mut self.reader, &mut self.body, path) {
            Ok(n) => n,
            Err(Error::Io { error, .. }) => {
                return Err(Error::input_row(
                    path,
                    row,
                    place_of(&self.place),
                    format!("unreadable: {error} (the file is damaged)"),
                ))
            }
            Err(e) => return Err(e),
        };
        if got < self.body.len() {
            return Err(Error::input_row(
                path,
                row,
                place_of(&self.place),
                format!(
                    "the data ends inside this row: shape {} declares {} rows (the file is cut \
                     short)",
                    self.header.shape_text(),
                    self.header.rows()
                ),
            ));
        }
        decode(&self.header.dtype, &self.body, &mut self.values);
        self.checked_row(row)
    }

    /// The row just decoded into `values`, if every value is finite.
    fn checked_row(&self, row: u64) -> Result<Option<&[f32]>> {
        if let Some(i) = self.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::input_row(
                self.path,
                row,
                place_of(&self.place),
                format!("value {} is not a finite number", i + 1),
            ));
        }
        Ok(Some(&self.values))
    }
}

/// A 1-D array read whole: labels or user ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    /// Signed integers (and booleans).
    Int(Vec<i64>),
    /// Unsigned integers.
    Uint(Vec<u64>),
    /// Floats.
    Float(Vec<f64>),
    /// Strings (`U`, `S`), with NumPy's padding removed.
    Text(Vec<String>),
}

impl Column {
    /// Values in the array.
    pub fn len(&self) -> usize {
        match self {
            Column::Int(v) => v.len(),
            Column::Uint(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }

    /// True when the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read the 1-D array `place` of `path` (`""` for a `.npy` file) whole from `reader`; `length` is its length in bytes
/// when known. Memory grows with the bytes read, never with the declared shape alone.
pub fn read_column(
    path: &Path,
    place: &str,
    mut reader: Box<dyn Read + '_>,
    length: Option<u64>,
) -> Result<(Header, Column)> {
    let header = read_header(path, place, &mut reader)?;
    let bad = |m: String| Error::input(path, None, None, prefixed(place, m));
    if !(header.shape.len() == 1 || header.shape.len() == 2 && header.shape[1] == 1) {
        return Err(bad(format!(
            "shape {}: labels and user ids are one value per row, (rows,) or (rows, 1)",
            header.shape_text()
        )));
    }
    if let Some(len) = length {
        header.check_length(path, place, len)?;
    }
    let want = header
        .data_len()
        .ok_or_else(|| bad("its shape declares more than 2^64 bytes".into()))?;
    let mut body = Vec::new();
    let got = (&mut reader)
        .take(want)
        .read_to_end(&mut body)
        .map_err(|e| bad(format!("unreadable: {e} (the file is damaged)")))?;
    if (got as u64) < want {
        return Err(bad(format!(
            "{got} bytes of values, but shape {} needs {want} (the file is cut short)",
            header.shape_text()
        )));
    }
    let mut extra = [0u8; 1];
    if fill(&mut reader, &mut extra, path)? > 0 {
        return Err(bad(format!(
            "trailing bytes after the values its shape {} declares",
            header.shape_text()
        )));
    }
    let d = &header.dtype;
    let n = d.size;
    let word = |c: &[u8]| {
        let mut a = [0u8; 8];
        if d.big {
            a[8 - n..].copy_from_slice(c);
            a.reverse();
        } else {
            a[..n].copy_from_slice(c);
        }
        a
    };
    let chunks = body.chunks_exact(n);
    let column = match d.kind {
        Kind::Float if n == 4 => Column::Float(
            chunks
                .map(|c| f32::from_le_bytes(word(c)[..4].try_into().expect("4 bytes")) as f64)
                .collect(),
        ),
        Kind::Float => Column::Float(chunks.map(|c| f64::from_le_bytes(word(c))).collect()),
        Kind::Int => Column::Int(
            chunks
                .map(|c| {
                    // Sign-extend from n bytes.
                    let v = u64::from_le_bytes(word(c));
                    let shift = 64 - 8 * n as u32;
                    ((v << shift) as i64) >> shift
                })
                .collect(),
        ),
        Kind::Uint | Kind::Bool => {
            Column::Uint(chunks.map(|c| u64::from_le_bytes(word(c))).collect())
        }
        Kind::Unicode => {
            let mut out = Vec::with_capacity(header.rows() as usize);
            for (i, c) in chunks.enumerate() {
                let mut s = String::new();
                for u in c.chunks_exact(4) {
                    let mut a = [u[0], u[1], u[2], u[3]];
                    if d.big {
                        a.reverse();
                    }
                    let code = u32::from_le_bytes(a);
                    if code == 0 {
                        break;
                    }
                    s.push(char::from_u32(code).ok_or_else(|| {
                        Error::input_row(
                            path,
                            i as u64 + 1,
                            place_of(place),
                            format!("U+{code:X} is not a character"),
                        )
                    })?);
                }
                out.push(s);
            }
            Column::Text(out)
        }
        Kind::Bytes => {
            let mut out = Vec::with_capacity(header.rows() as usize);
            for (i, c) in chunks.enumerate() {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                out.push(
                    std::str::from_utf8(&c[..end])
                        .map_err(|_| {
                            Error::input_row(
                                path,
                                i as u64 + 1,
                                place_of(place),
                                "a byte string that is not UTF-8",
                            )
                        })?
                        .to_string(),
                );
            }
            Column::Text(out)
        }
    };
    Ok((header, column))
}

/// The labels of a 1-D array, one per row: integers (class indices) or strings (class
/// names, which the run's classes read).
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// Class indices.
    Index(Vec<u32>),
    /// Label texts (`U` and `S` arrays), padding and surrounding spaces removed.
    Text(Vec<String>),
}

impl Labels {
    /// Labels in the array.
    pub fn len(&self) -> usize {
        match self {
            Labels::Index(v) => v.len(),
            Labels::Text(v) => v.len(),
        }
    }

    /// True for no labels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Label<'_>> {
        match self {
            Labels::Index(v) => v.get(i).map(|&l| Label::Index(l)),
            Labels::Text(v) => v.get(i).map(|t| Label::Text(t.trim())),
        }
    }
}

/// The labels of a 1-D array: where NumPy labels are parsed. Integers in `0..=MAX_LABEL`, or
/// floats that are such integers, as class indices; a string array as label texts (names).
pub fn parse_labels(path: &Path, place: &str, column: Column) -> Result<Labels> {
    let at = |i: usize, m: String| Error::input_row(path, i as u64 + 1, place_of(place), m);
    let check = |i: usize, v: f64| -> Result<u32> {
        if v.is_finite() && v.fract() == 0.0 && (0.0..=MAX_LABEL as f64).contains(&v) {
            Ok(v as u32)
        } else if v < 0.0 {
            Err(at(i, format!("label {v} is negative")))
        } else {
            Err(at(
                i,
                format!("label {v} is not an integer in 0..={MAX_LABEL}"),
            ))
        }
    };
    let indices: Result<Vec<u32>> = match column {
        Column::Int(v) => v
            .iter()
            .enumerate()
            .map(|(i, &x)| match u32::try_from(x) {
                Ok(l) if l <= MAX_LABEL => Ok(l),
                _ if x < 0 => Err(at(i, format!("label {x} is negative"))),
                _ => Err(at(i, format!("label {x} is larger than {MAX_LABEL}"))),
            })
            .collect(),
        Column::Uint(v) => v
            .iter()
            .enumerate()
            .map(|(i, &x)| match u32::try_from(x) {
                Ok(l) if l <= MAX_LABEL => Ok(l),
                _ => Err(at(i, format!("label {x} is larger than {MAX_LABEL}"))),
            })
            .collect(),
        Column::Float(v) => v.iter().enumerate().map(|(i, &x)| check(i, x)).collect(),
        Column::Text(v) => return Ok(Labels::Text(v)),
    };
    indices.map(Labels::Index)
}

/// The user ids of a 1-D array: integers (as decimal text) or strings, none empty.
pub fn parse_user_ids(path: &Path, place: &str, column: Column) -> Result<Vec<String>> {
    match column {
        Column::Int(v) => Ok(v.iter().map(i64::to_string).collect()),
        Column::Uint(v) => Ok(v.iter().map(u64::to_string).collect()),
        Column::Float(_) => Err(Error::input(
            path,
            None,
            None,
            format!(
                "{} holds floats: user ids are integers or strings",
                array_name(place)
            ),
        )),
        Column::Text(v) => {
            if let Some(i) = v.iter().position(|s| s.trim().is_empty()) {
                return Err(Error::input_row(
                    path,
                    i as u64 + 1,
                    place_of(place),
                    "empty user id",
                ));
            }
            Ok(v.into_iter().map(|s| s.trim().to_string()).collect())
        }
    }
}

/// An `.npz` archive opened for reading its arrays by name.
pub struct Npz {
    path: std::path::PathBuf,
    archive: zip::ZipArchive<std::fs::File>,
}

impl Npz {
    /// Open the archive at `path`, checking its directory.
    pub fn open(path: &Path) -> Result<Npz> {
        let file = std::fs::File::open(path).at(path)?;
        let archive = zip::ZipArchive::new(file).map_err(|e| {
            Error::input(
                path,
                None,
                None,
                format!(
                    "not a readable .npz (zip) archive: {e} (the file is damaged or cut short)"
                ),
            )
        })?;
        Ok(Npz {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// The names of the arrays, in archive order (`X` for the entry `X.npy`).
    pub fn arrays(&self) -> Vec<String> {
        self.archive
            .file_names()
            .map(|n| match n {
                Ok(n) => n.strip_suffix(".npy").unwrap_or(&n).to_string(),
                // A name the directory cannot decode is never one looked up.
                Err(_) => "<undecodable name>".to_string(),
            })
            .collect()
    }

    /// The first of `names` that the archive holds.
    pub fn find(&self, names: &[&str]) -> Option<String> {
        let have = self.arrays();
        names
            .iter()
            .find(|n| have.iter().any(|h| h == *n))
            .map(|n| n.to_string())
    }

    /// The array `name` as a stream (inflated as read) and its length in bytes.
    pub fn entry(&mut self, name: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let path = &self.path;
        let file = self.archive.by_name(&format!("{name}.npy")).map_err(|e| {
            Error::input(
                path,
                None,
                None,
                format!("array '{name}': unreadable archive entry: {e}"),
            )
        })?;
        let size = file.size();
        Ok((Box::new(file), size))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `.npy` file of `descr` values with `shape` and raw little-endian `body`.
    pub(crate) fn npy(descr: &str, shape: &[u64], body: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn rows_of(bytes: &[u8]) -> Result<Vec<Vec<f32>>> {
        let p = Path::new("x.npy");
        let mut r = FeatureRows::open(p, "", Box::new(bytes), Some(bytes.len() as u64))?;
        let mut out = Vec::new();
        while let Some(row) = r.next_row()? {
            out.push(row.to_vec());
        }
        Ok(out)
    }

    /// `npy` with `fortran_order: True`.
    fn fortran(descr: &str, shape: &[u64], body: &[u8]) -> Vec<u8> {
        let mut b = npy(descr, shape, body);
        let at = b.windows(5).position(|w| w == b"False").unwrap();
        b[at..at + 5].copy_from_slice(b"True ");
        b
    }

    #[test]
    fn fortran_order_arrays_read_as_their_c_order_twins() {
        // Shape (3, 2): C order rows [0 1] [2 3] [4 5]; column-major file order 0 2 4 1 3 5.
        let c = rows_of(&npy("<f4", &[3, 2], &f32s(&[0., 1., 2., 3., 4., 5.]))).unwrap();
        let f = rows_of(&fortran("<f4", &[3, 2], &f32s(&[0., 2., 4., 1., 3., 5.]))).unwrap();
        assert_eq!(c, f);
        // Shape (2, 2, 3): value (i, h, w) = 100 i + 10 h + w, in both layouts.
        let (n, hh, ww) = (2, 2, 3);
        let value = |i: usize, h: usize, w: usize| (100 * i + 10 * h + w) as f32;
        let mut c_order = Vec::new();
        for i in 0..n {
            for h in 0..hh {
                for w in 0..ww {
                    c_order.push(value(i, h, w));
                }
            }
        }
        let mut f_order = Vec::new();
        for w in 0..ww {
            for h in 0..hh {
                for i in 0..n {
                    f_order.push(value(i, h, w));
                }
            }
        }
        let shape = [n as u64, hh as u64, ww as u64];
        let c = rows_of(&npy("<f4", &shape, &f32s(&c_order))).unwrap();
        let f = rows_of(&fortran("<f4", &shape, &f32s(&f_order))).unwrap();
        assert_eq!(c, f);
        assert_eq!(f[1][4], value(1, 1, 1));
        // A non-finite value is named by its row.
        let bad = fortran(
            "<f8",
            &[2, 1],
            &[1f64.to_le_bytes(), f64::NAN.to_le_bytes()].concat(),
        );
        let e = rows_of(&bad).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("not a finite"), "{e}");
    }

    #[test]
    fn reads_rows_of_every_numeric_type() {
        let rows = rows_of(&npy("<f4", &[2, 3], &f32s(&[1., 2., 3., 4., 5., 6.]))).unwrap();
        assert_eq!(rows, [[1., 2., 3.], [4., 5., 6.]]);
        let be: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        assert_eq!(rows_of(&npy(">f8", &[1, 2], &be)).unwrap(), [[1.5, -2.0]]);
        assert_eq!(
            rows_of(&npy("|u1", &[1, 1, 2], &[7, 255])).unwrap(),
            [[7., 255.]]
        );
        let i8s: Vec<u8> = [-3i64, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(rows_of(&npy("<i8", &[2, 1], &i8s)).unwrap(), [[-3.], [9.]]);
        let i2: Vec<u8> = [-1i16].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(rows_of(&npy("<i2", &[1, 1], &i2)).unwrap(), [[-1.]]);
    }

    #[test]
    fn damaged_arrays_are_refused_by_name() {
        let good = npy("<f4", &[2, 2], &f32s(&[1., 2., 3., 4.]));
        let err = |b: &[u8]| rows_of(b).unwrap_err().to_string();
        // Cut short: the length disagrees with the shape before anything is read.
        let e = err(&good[..good.len() - 3]);
        assert!(e.contains("cut short") && e.contains("(2, 2)"), "{e}");
        let e = err(&[&good[..], &[0]].concat());
        assert!(e.contains("trailing bytes"), "{e}");
        // From a stream of unknown length the row that is cut is named.
        let p = Path::new("x.npy");
        let cut = &good[..good.len() - 3];
        let mut r = FeatureRows::open(p, "", Box::new(cut), None).unwrap();
        assert!(r.next_row().unwrap().is_some());
        let e = r.next_row().unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("cut short"), "{e}");
        // Header damage.
        assert!(err(&good[..12]).contains("cut short in its header"));
        assert!(err(b"\x93NUMPY\x09\x00").contains("version 9.0"));
        // A Fortran-order array cut short is named too.
        let mut fortran = npy("<f4", &[2, 2], &f32s(&[1., 2., 3.]));
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(err(&fortran).contains("cut short"), "{}", err(&fortran));
        assert!(err(&npy("|O", &[1, 1], &[0; 8])).contains("pickled"));
        assert!(err(&npy("<f2", &[1, 1], &[0; 2])).contains("half floats"));
        assert!(err(&npy("<f4", &[4], &f32s(&[1., 2., 3., 4.]))).contains("shape (4,)"));
        assert!(err(&npy("<U3", &[1, 1], &[0; 12])).contains("strings"));
        let nan = npy("<f4", &[1, 2], &f32s(&[1., f32::NAN]));
        let e = err(&nan);
        assert!(
            e.contains("row 1") && e.contains("value 2 is not a finite"),
            "{e}"
        );
        let huge = npy("<f4", &[1 << 50, 2], &[]);
        assert!(err(&huge).contains("more than"));
        let wide = npy("<f4", &[1, 1 << 30], &[]);
        assert!(err(&wide).contains("a row of a run holds"));
    }

    #[test]
    fn labels_and_user_ids_from_one_dimensional_arrays() {
        let p = Path::new("y.npy");
        let col = |b: Vec<u8>| {
            let n = b.len() as u64;
            read_column(p, "", Box::new(std::io::Cursor::new(b)), Some(n))
                .unwrap()
                .1
        };
        let ints: Vec<u8> = [3i32, 0, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let labels = parse_labels(p, "", col(npy("<i4", &[3], &ints))).unwrap();
        assert_eq!(labels, Labels::Index(vec![3, 0, 9]));
        let neg: Vec<u8> = [-1i64].iter().flat_map(|x| x.to_le_bytes()).collect();
        let e = parse_labels(p, "array 'y'", col(npy("<i8", &[1], &neg))).unwrap_err();
        assert!(
            e.to_string()
                .contains("row 1, array 'y': label -1 is negative"),
            "{e}"
        );
        let half: Vec<u8> = [2.5f64].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(parse_labels(p, "y", col(npy("<f8", &[1, 1], &half))).is_err());
        let mut u = Vec::new();
        for s in ["ab", "c"] {
            let mut cps: Vec<u32> = s.chars().map(|c| c as u32).collect();
            cps.resize(2, 0);
            u.extend(cps.iter().flat_map(|c| c.to_le_bytes()));
        }
        let ids = parse_user_ids(p, "", col(npy("<U2", &[2], &u))).unwrap();
        assert_eq!(ids, ["ab", "c"]);
        // A string array's labels are names, for the run's classes to read.
        let names = parse_labels(p, "array 'y'", col(npy("<U2", &[2], &u))).unwrap();
        assert_eq!(names.get(0), Some(Label::Text("ab")));
        assert_eq!((names.len(), names.get(2)), (2, None));
        let e = read_column(p, "", Box::new(&ints[..]), None).unwrap_err();
        assert!(e.to_string().contains("not a NumPy"), "{e}");
        let short = npy("<i4", &[3], &ints[..8]);
        let e = read_column(p, "", Box::new(std::io::Cursor::new(short)), None).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
    }
}
