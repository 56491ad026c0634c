//! Parquet ingest: flat columns read by name, a batch of rows at a time.
//!
//! Features are the float and integer columns (`FLOAT`, `DOUBLE`, `INT32`, `INT64`, booleans)
//! that are not the user, label or prior column, named by their column names in file order;
//! the user column is a string or an integer column, the label column an integer column (or a
//! float column of integers). pandas' index columns (`__index_level_0__`) are not features.
//! Nested columns, decimals, `INT96` timestamps and nulls are refused by name.
//!
//! Row groups are read one after another, and within one, every needed column advances a
//! batch of [`BATCH`] rows at a time, so memory holds one batch of values per column and each
//! column's current page, however large the row groups: reading costs O(rows × features).
//! Pages may be uncompressed, snappy (pandas' and pyarrow's default), gzip or zstd.

use crate::data::classes::Label;
use crate::data::columns::{ColumnMap, Columns, Record, Want};
use crate::data::csv::MAX_LABEL;
use crate::error::{Error, IoContext, Result};
use ::parquet::basic::{ConvertedType, Type as Physical};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::{ByteArray, DataType};
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::Path;

/// Rows read from every column at a time.
pub const BATCH: usize = 4096;

/// The values of one column for one batch.
enum Values {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
}

/// One column's reader in the current row group, with its buffers.
struct Column {
    reader: ColumnReader,
    /// Index in the header of the map.
    at: usize,
    values: Values,
    defs: Vec<i16>,
    max_def: i16,
    unsigned: bool,
}

/// Read up to `n` records of a typed column, appending its values and levels.
fn read_typed<T: DataType>(
    r: &mut ColumnReaderImpl<T>,
    n: usize,
    defs: &mut Vec<i16>,
    values: &mut Vec<T::T>,
    nullable: bool,
) -> ::parquet::errors::Result<usize> {
    let mut total = 0;
    while total < n {
        let (records, _, _) =
            r.read_records(n - total, nullable.then_some(&mut *defs), None, values)?;
        if records == 0 {
            break;
        }
        total += records;
    }
    Ok(total)
}

impl Column {
    /// Read the next `n` rows; returns how many the column held.
    fn read(&mut self, n: usize) -> ::parquet::errors::Result<usize> {
        self.defs.clear();
        let nullable = self.max_def > 0;
        let defs = &mut self.defs;
        macro_rules! go {
            ($r:expr, $v:expr) => {{
                $v.clear();
                read_typed($r, n, defs, $v, nullable)
            }};
        }
        match (&mut self.reader, &mut self.values) {
            (ColumnReader::BoolColumnReader(r), Values::Bool(v)) => go!(r, v),
            (ColumnReader::Int32ColumnReader(r), Values::I32(v)) => go!(r, v),
            (ColumnReader::Int64ColumnReader(r), Values::I64(v)) => go!(r, v),
            (ColumnReader::FloatColumnReader(r), Values::F32(v)) => go!(r, v),
            (ColumnReader::DoubleColumnReader(r), Values::F64(v)) => go!(r, v),
            (ColumnReader::ByteArrayColumnReader(r), Values::Bytes(v)) => go!(r, v),
            _ => unreachable!("values are made for the column's physical type"),
        }
    }

    /// The first null among the `n` rows just read, if any.
    fn first_null(&self, n: usize) -> Option<usize> {
        if self.max_def == 0 {
            return None;
        }
        self.defs[..n].iter().position(|&d| d < self.max_def)
    }

    /// Value `i` as a feature.
    fn feature(&self, i: usize) -> f32 {
        match &self.values {
            Values::Bool(v) => v[i] as u8 as f32,
            Values::I32(v) if self.unsigned => v[i] as u32 as f32,
            Values::I32(v) => v[i] as f32,
            Values::I64(v) if self.unsigned => v[i] as u64 as f32,
            Values::I64(v) => v[i] as f32,
            Values::F32(v) => v[i],
            Values::F64(v) => v[i] as f32,
            Values::Bytes(_) => unreachable!("string columns are never features"),
        }
    }

    /// Value `i` as a user id, into `out`.
    fn user(&self, i: usize, out: &mut String) -> std::result::Result<(), String> {
        use std::fmt::Write;
        out.clear();
        match &self.values {
            Values::Bytes(v) => out.push_str(
                v[i].as_utf8()
                    .map_err(|_| "a user id that is not UTF-8".to_string())?
                    .trim(),
            ),
            Values::I32(v) if self.unsigned => write!(out, "{}", v[i] as u32).expect("to a String"),
            Values::I32(v) => write!(out, "{}", v[i]).expect("writing to a String cannot fail"),
            Values::I64(v) if self.unsigned => write!(out, "{}", v[i] as u64).expect("to a String"),
            Values::I64(v) => write!(out, "{}", v[i]).expect("writing to a String cannot fail"),
            _ => unreachable!("user columns are strings or integers, checked on open"),
        }
        if out.is_empty() {
            return Err("empty user id".into());
        }
        Ok(())
    }

    /// Value `i` as a label: where Parquet labels are parsed. Integers in `0..=MAX_LABEL`, or
    /// floats that are such integers, as class indices; a string column's values as their
    /// text, which the run's classes read (names, or integers written as text).
    fn label(&self, i: usize) -> std::result::Result<Label<'_>, String> {
        let int = |x: i128| match u32::try_from(x) {
            Ok(l) if l <= MAX_LABEL => Ok(l),
            _ if x < 0 => Err(format!("label {x} is negative")),
            _ => Err(format!("label {x} is larger than {MAX_LABEL}")),
        };
        let float = |x: f64| {
            if x.is_finite() && x.fract() == 0.0 {
                int(x as i128)
            } else {
                Err(format!("label {x} is not a non-negative integer"))
            }
        };
        let index = match &self.values {
            Values::Bytes(v) => {
                let text = v[i]
                    .as_utf8()
                    .map_err(|_| "a label that is not UTF-8".to_string())?;
                return Ok(Label::Text(text.trim()));
            }
            Values::I32(v) if self.unsigned => int(v[i] as u32 as i128),
            Values::I32(v) => int(v[i] as i128),
            Values::I64(v) if self.unsigned => int(v[i] as u64 as i128),
            Values::I64(v) => int(v[i] as i128),
            Values::F32(v) => float(v[i] as f64),
            Values::F64(v) => float(v[i]),
            Values::Bool(_) => {
                unreachable!("label columns are numbers or strings, checked on open")
            }
        };
        index.map(Label::Index)
    }
}

/// Refuse a footer whose row groups or column chunks lie outside the file: the parquet crate
/// trusts these numbers (a negative offset panics in it), so a damaged footer is named here.
fn check_chunks(path: &Path, meta: &::parquet::file::metadata::ParquetMetaData) -> Result<()> {
    let len = std::fs::metadata(path).at(path)?.len();
    for (g, group) in meta.row_groups().iter().enumerate() {
        let bad = |m: String| {
            Error::input(
                path,
                None,
                None,
                format!(
                    "row group {}: {m} (the file is damaged or cut short)",
                    g + 1
                ),
            )
        };
        if group.num_rows() < 0 {
            return Err(bad(format!("{} rows", group.num_rows())));
        }
        for c in group.columns() {
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            let size = c.compressed_size();
            let inside = start >= 0
                && size >= 0
                && c.data_page_offset() >= 0
                && (start as u64)
                    .checked_add(size as u64)
                    .is_some_and(|end| end <= len);
            if !inside {
                return Err(bad(format!(
                    "column '{}' claims bytes {start}..+{size} of a file of {len}",
                    c.column_path().string()
                )));
            }
        }
    }
    Ok(())
}

/// What a column is used for, to check its type on open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Feature,
    User,
    Label,
}

/// Stream the rows of the Parquet file `path` into `on_row` (see the module doc); returns
/// the feature names. Rows are numbered from 1 across row groups.
pub fn read_rows(
    path: &Path,
    columns: &Columns,
    want: &Want<'_>,
    mut on_row: impl FnMut(Record<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).at(path)?;
    let bad = |m: String| Error::input(path, None, None, m);
    let reader = SerializedFileReader::new(file).map_err(|e| {
        bad(format!(
            "not a readable Parquet file: {e} (the file is damaged or cut short)"
        ))
    })?;
    let meta = reader.metadata();
    check_chunks(path, meta)?;
    let schema = meta.file_metadata().schema_descr();
    // The flat columns, pandas' index columns left out: (name, Parquet column index).
    let mut header = Vec::new();
    let mut index = Vec::new();
    for i in 0..schema.num_columns() {
        let c = schema.column(i);
        let parts = c.path().parts();
        if parts.len() != 1 || c.max_rep_level() > 0 {
            return Err(Error::input(
                path,
                None,
                Some(&c.path().string()),
                "a nested column (a list, map or struct); sisa reads flat columns",
            ));
        }
        let name = c.name();
        if name.starts_with("__index_level_") && name.ends_with("__") {
            continue;
        }
        header.push(name.to_string());
        index.push(i);
    }
    let map = ColumnMap::new(path, &header, columns, want, None, "the Parquet schema")?;
    // The columns read: features in order, then the user and the label.
    let mut used: Vec<(usize, Role)> = map.features.iter().map(|&f| (f, Role::Feature)).collect();
    used.extend(map.user.map(|u| (u, Role::User)));
    used.extend(map.label.map(|l| (l, Role::Label)));
    for &(at, role) in &used {
        let c = schema.column(index[at]);
        let name = &header[at];
        let refuse = |m: String| Err(Error::input(path, None, Some(name), m));
        let physical = c.physical_type();
        if c.converted_type() == ConvertedType::DECIMAL {
            return refuse("a decimal column; store it as float or integer".into());
        }
        let ok = match (role, physical) {
            (Role::Feature, Physical::BYTE_ARRAY | Physical::FIXED_LEN_BYTE_ARRAY) => {
                return refuse("holds strings or bytes, not numbers: not a feature".into())
            }
            (Role::Label, Physical::FIXED_LEN_BYTE_ARRAY) => {
                return refuse("holds fixed-length bytes: labels are integers or strings".into())
            }
            (Role::Feature, p) => p != Physical::INT96,
            (Role::User, p) => {
                matches!(p, Physical::BYTE_ARRAY | Physical::INT32 | Physical::INT64)
            }
            (Role::Label, p) => {
                matches!(
                    p,
                    Physical::INT32
                        | Physical::INT64
                        | Physical::FLOAT
                        | Physical::DOUBLE
                        | Physical::BYTE_ARRAY
                )
            }
        };
        if !ok {
            return refuse(format!(
                "a column of type {physical} is not read in this role"
            ));
        }
    }
    let rows_declared = meta.file_metadata().num_rows();
    if rows_declared <= 0 {
        return Err(bad("no data rows".into()));
    }
    let mut features = vec![0f32; map.features.len()];
    let mut user = String::new();
    let mut row = 0u64;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| {
            bad(format!(
                "row group {}: unreadable: {e} (the file is damaged)",
                g + 1
            ))
        })?;
        let n = usize::try_from(group.metadata().num_rows()).unwrap_or(0);
        let mut cols = Vec::with_capacity(used.len());
        for &(at, _) in &used {
            let i = index[at];
            let c = schema.column(i);
            let reader = group.get_column_reader(i).map_err(|e| {
                Error::input(path, None, Some(&header[at]), format!("unreadable: {e}"))
            })?;
            let values = match c.physical_type() {
                Physical::BOOLEAN => Values::Bool(Vec::new()),
                Physical::INT32 => Values::I32(Vec::new()),
                Physical::INT64 => Values::I64(Vec::new()),
                Physical::FLOAT => Values::F32(Vec::new()),
                Physical::DOUBLE => Values::F64(Vec::new()),
                _ => Values::Bytes(Vec::new()),
            };
            cols.push(Column {
                reader,
                at,
                values,
                defs: Vec::new(),
                max_def: c.max_def_level(),
                unsigned: matches!(
                    c.converted_type(),
                    ConvertedType::UINT_8
                        | ConvertedType::UINT_16
                        | ConvertedType::UINT_32
                        | ConvertedType::UINT_64
                ),
            });
        }
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(BATCH);
            let first = row + 1;
            for c in &mut cols {
                let name = &header[c.at];
                let got = c.read(batch).map_err(|e| {
                    Error::input_row(
                        path,
                        first,
                        Some(format!("column '{name}'")),
                        format!("unreadable from here on: {e} (the file is damaged)"),
                    )
                })?;
                if got < batch {
                    return Err(Error::input_row(
                        path,
                        first + got as u64,
                        Some(format!("column '{name}'")),
                        format!(
                            "the column ends early: row group {} declares {n} rows (the file \
                             is damaged)",
                            g + 1
                        ),
                    ));
                }
                if let Some(i) = c.first_null(batch) {
                    return Err(Error::input_row(
                        path,
                        first + i as u64,
                        Some(format!("column '{name}'")),
                        "a null value",
                    ));
                }
            }
            let nf = features.len();
            for i in 0..batch {
                row += 1;
                let at = |c: &Column| Some(format!("column '{}'", header[c.at]));
                for (v, c) in features.iter_mut().zip(&cols[..nf]) {
                    *v = c.feature(i);
                    if !v.is_finite() {
                        return Err(Error::input_row(
                            path,
                            row,
                            at(c),
                            "a value that is not a finite number (as a 32-bit float)",
                        ));
                    }
                }
                let mut k = nf;
                let has_user = map.user.is_some();
                if has_user {
                    let c = &cols[k];
                    c.user(i, &mut user)
                        .map_err(|m| Error::input_row(path, row, at(c), m))?;
                    k += 1;
                }
                let label = match map.label {
                    Some(_) => {
                        let c = &cols[k];
                        Some(
                            c.label(i)
                                .map_err(|m| Error::input_row(path, row, at(c), m))?,
                        )
                    }
                    None => None,
                };
                on_row(Record {
                    line: row,
                    user: has_user.then_some(user.as_str()),
                    label,
                    features: &features,
                })?;
            }
            done += batch;
        }
    }
    if row != rows_declared as u64 {
        return Err(bad(format!(
            "its footer declares {rows_declared} rows, its row groups hold {row} (the file is \
             damaged)"
        )));
    }
    Ok(map.names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::columns::{Features, Need};
    use ::parquet::data_type::{ByteArrayType, DoubleType, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    /// A file of `users`, integer `labels` (or string labels) and one nullable feature `a`
    /// (`None` writes a null), snappy-compressed.
    fn write(path: &Path, labels_as_text: bool, a: &[Option<f64>]) {
        let label = if labels_as_text {
            "REQUIRED BYTE_ARRAY label (UTF8);"
        } else {
            "REQUIRED INT64 label;"
        };
        let message = format!(
            "message t {{ REQUIRED BYTE_ARRAY user_id (UTF8); {label} OPTIONAL DOUBLE a; }}"
        );
        let schema = Arc::new(::parquet::schema::parser::parse_message_type(&message).unwrap());
        let props = WriterProperties::builder()
            .set_compression(::parquet::basic::Compression::SNAPPY)
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let n = a.len();
        let users: Vec<ByteArray> = (0..n).map(|i| format!("u{i}").as_str().into()).collect();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&users, None, None)
            .unwrap();
        c.close().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        if labels_as_text {
            let v: Vec<ByteArray> = (0..n).map(|_| "cat".into()).collect();
            c.typed::<ByteArrayType>()
                .write_batch(&v, None, None)
                .unwrap();
        } else {
            let v: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
            c.typed::<Int64Type>().write_batch(&v, None, None).unwrap();
        }
        c.close().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        let defs: Vec<i16> = a.iter().map(|v| v.is_some() as i16).collect();
        let values: Vec<f64> = a.iter().flatten().copied().collect();
        c.typed::<DoubleType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }

    fn read(path: &Path) -> Result<Vec<(String, String, f32)>> {
        let want = Want {
            user: Need::Required,
            label: Need::Required,
            features: Features::All,
            classes: None,
        };
        let mut out = Vec::new();
        read_rows(path, &Columns::default(), &want, |r| {
            let label = match r.label.unwrap() {
                Label::Index(v) => v.to_string(),
                Label::Text(t) => format!("text {t}"),
            };
            out.push((r.user.unwrap().to_string(), label, r.features[0]));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_rows_and_refuses_damaged_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let a: Vec<Option<f64>> = (0..50).map(|i| Some(i as f64 / 2.0)).collect();
        write(&p, false, &a);
        let rows = read(&p).unwrap();
        assert_eq!(rows.len(), 50);
        assert_eq!(rows[3], ("u3".to_string(), "0".to_string(), 1.5));
        // Every flipped byte and every cut gives a result or an error, never a panic; a cut
        // file (no footer) is named as damaged.
        let good = std::fs::read(&p).unwrap();
        let q = dir.path().join("bad.parquet");
        let mut refused = 0;
        for i in 0..good.len() {
            let mut bytes = good.clone();
            bytes[i] ^= 0xa5;
            std::fs::write(&q, &bytes).unwrap();
            refused += read(&q).is_err() as usize;
        }
        assert!(
            refused > good.len() / 4,
            "{refused} of {} flips refused",
            good.len()
        );
        for cut in [4, good.len() / 2, good.len() - 1] {
            std::fs::write(&q, &good[..cut]).unwrap();
            let e = read(&q).unwrap_err().to_string();
            assert!(
                e.contains("bad.parquet") && e.contains("damaged or cut short"),
                "{e}"
            );
        }
        // A null feature, string labels.
        let mut a = a.clone();
        a[7] = None;
        write(&p, false, &a);
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("row 8, column 'a': a null value"), "{e}");
        // String labels are handed over as their text, for the run's classes to read.
        let full: Vec<Option<f64>> = a.iter().map(|v| v.or(Some(0.0))).collect();
        write(&p, true, &full);
        let rows = read(&p).unwrap();
        assert!(rows.iter().all(|(_, l, _)| l == "text cat"), "{rows:?}");
    }
}
