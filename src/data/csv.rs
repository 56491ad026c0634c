//! CSV and TSV ingest: a header, a user id column, a label column, numeric features.
//!
//! Files may be gzipped (detected by their magic bytes, whatever their name). The delimiter is
//! given, or told from the header line: a header with a tab and no comma is tab-separated.
//! Every problem is reported with the file, the 1-based line and the column: ragged rows,
//! values that are not finite numbers, labels that are not classes of the run ([`Classes`]),
//! duplicate or missing columns, empty files.

use crate::data::classes::{At, Classes, Label};
use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub use crate::data::classes::MAX_LABEL;

use crate::data::columns::{ColumnMap, Features, Want};
pub use crate::data::columns::{Columns, Need, Record};

/// A parsed CSV file.
#[derive(Clone, Debug)]
pub struct Table {
    /// The file it came from.
    pub path: PathBuf,
    /// Feature column names, in file order.
    pub feature_names: Vec<String>,
    /// User id of each row, when the file has a user column.
    pub user_ids: Option<Vec<String>>,
    /// Label of each row, when the file has a label column.
    pub labels: Option<Vec<u32>>,
    /// Features, row-major.
    pub x: Vec<f32>,
    /// 1-based line number of each row, for later messages.
    pub lines: Vec<u64>,
}

impl Table {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when the file has no rows.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.feature_names.len()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.dim();
        &self.x[i * d..(i + 1) * d]
    }

    /// Refuse unless this file's features are exactly `expected`, in order.
    pub fn check_features(&self, expected: &[String], what: &str) -> Result<()> {
        check_feature_names(&self.path, &self.feature_names, expected, what)
    }
}

/// Refuse unless the features `names` of the file at `path` are exactly `expected`, in order;
/// `what` names where `expected` came from.
pub fn check_feature_names(
    path: &Path,
    names: &[String],
    expected: &[String],
    what: &str,
) -> Result<()> {
    if names == expected {
        return Ok(());
    }
    let message = match names.iter().zip(expected).position(|(a, b)| a != b) {
        Some(i) => format!(
            "feature column {} is '{}' but the {what} has '{}' there",
            i + 1,
            names[i],
            expected[i]
        ),
        None => format!(
            "{} feature columns, but the {what} has {}",
            names.len(),
            expected.len()
        ),
    };
    Err(Error::input(path, Some(1), None, message))
}

impl Table {
    /// Refuse a label that is not a class of a run with `classes` classes.
    pub fn check_labels(&self, classes: usize, column: &str) -> Result<()> {
        let labels = self.labels.as_deref().unwrap_or_default();
        match labels.iter().position(|&l| l as usize >= classes) {
            None => Ok(()),
            Some(i) => Err(Error::input(
                &self.path,
                Some(self.lines[i]),
                Some(column),
                format!(
                    "label {} is not a class of this run (0..{})",
                    labels[i],
                    classes - 1
                ),
            )),
        }
    }

    /// The rows whose `keep` flag is set.
    pub fn filter(&self, keep: &[bool]) -> Table {
        let pick = |i: usize| keep[i];
        Table {
            path: self.path.clone(),
            feature_names: self.feature_names.clone(),
            user_ids: self.user_ids.as_ref().map(|v| {
                v.iter()
                    .enumerate()
                    .filter(|(i, _)| pick(*i))
                    .map(|(_, x)| x.clone())
                    .collect()
            }),
            labels: self.labels.as_ref().map(|v| {
                v.iter()
                    .enumerate()
                    .filter(|(i, _)| pick(*i))
                    .map(|(_, x)| *x)
                    .collect()
            }),
            x: (0..self.len())
                .filter(|&i| pick(i))
                .flat_map(|i| self.row(i).to_vec())
                .collect(),
            lines: self
                .lines
                .iter()
                .enumerate()
                .filter(|(i, _)| pick(*i))
                .map(|(_, x)| *x)
                .collect(),
        }
    }
}

/// Open a file, transparently gunzipping it when it starts with the gzip magic.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    Ok(open_with_length(path)?.0)
}

/// [`open_maybe_gz`], also returning the file's length when it is not gzipped (the length of
/// what the reader yields), so a reader can check sizes a header declares before reading.
pub fn open_with_length(path: &Path) -> Result<(Box<dyn Read>, Option<u64>)> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = file.read(&mut magic[got..]).at(path)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let len = file.metadata().at(path)?.len();
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let chained = head.chain(file);
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok((Box::new(flate2::read::MultiGzDecoder::new(chained)), None))
    } else {
        Ok((Box::new(chained), Some(len)))
    }
}

/// Line numbers of the records in a stream, counting `\n`, `\r\n` and a lone `\r` alike. The
/// csv crate counts only `\n` (a CR-only file was all "line 1") and puts a record's start
/// before the blank lines and line ends it skips, so the lines are tracked here from the bytes.
/// Holds only lines read but not yet asked about: bounded by the csv reader's buffer.
#[derive(Debug)]
struct LineStarts {
    /// Bytes seen so far.
    offset: u64,
    /// Lines not yet passed, the one holding the last position asked about first.
    lines: std::collections::VecDeque<Line>,
    /// 1-based number of `lines[0]`.
    first: u64,
    /// The last byte seen was `\r` (a `\n` may follow in the next read).
    pending_cr: bool,
}

/// One line of the stream: where it starts and where its line end begins.
#[derive(Clone, Copy, Debug)]
struct Line {
    start: u64,
    end: Option<u64>,
}

impl LineStarts {
    fn shared() -> std::rc::Rc<std::cell::RefCell<LineStarts>> {
        std::rc::Rc::new(std::cell::RefCell::new(LineStarts {
            offset: 0,
            lines: [Line {
                start: 0,
                end: None,
            }]
            .into(),
            first: 1,
            pending_cr: false,
        }))
    }

    fn new_line(&mut self, start: u64) {
        self.lines.push_back(Line { start, end: None });
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let p = self.offset;
            self.offset += 1;
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    self.new_line(p + 1);
                    continue;
                }
                self.new_line(p);
            }
            if b == b'\r' || b == b'\n' {
                if let Some(line) = self.lines.back_mut() {
                    line.end.get_or_insert(p);
                }
                if b == b'\r' {
                    self.pending_cr = true;
                } else {
                    self.new_line(p + 1);
                }
            }
        }
    }

    fn end(&mut self) {
        if std::mem::take(&mut self.pending_cr) {
            self.new_line(self.offset);
        }
    }

    /// The 1-based line of the first byte at or after `at` that is not a line end: where a
    /// record the csv crate says starts at `at` really starts. `at` never decreases.
    fn line_at(&mut self, mut at: u64) -> u64 {
        while self.lines.len() > 1 && self.lines[1].start <= at {
            self.lines.pop_front();
            self.first += 1;
        }
        loop {
            let line = self.lines[0];
            if line.end.is_none_or(|e| at < e) || self.lines.len() == 1 {
                return self.first;
            }
            self.lines.pop_front();
            self.first += 1;
            at = at.max(self.lines[0].start);
        }
    }
}

/// A reader that tells [`LineStarts`] every byte it hands on.
struct LineCounter<R> {
    inner: R,
    lines: std::rc::Rc<std::cell::RefCell<LineStarts>>,
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut lines = self.lines.borrow_mut();
        if n == 0 {
            lines.end();
        } else {
            lines.scan(&buf[..n]);
        }
        Ok(n)
    }
}

fn parse_feature(raw: &str) -> std::result::Result<f32, String> {
    let t = raw.trim();
    match t.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("value '{t}' is not finite")),
        Err(_) if t.is_empty() => Err("empty value".to_string()),
        Err(_) => Err(format!("value '{t}' is not a number")),
    }
}

/// The delimiter of a text file whose first bytes are `head`: a tab when its first line has a
/// tab and no comma, else a comma.
pub fn detect_delimiter(head: &[u8]) -> u8 {
    let end = head
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(head.len());
    let first = &head[..end];
    if first.contains(&b'\t') && !first.contains(&b',') {
        b'\t'
    } else {
        b','
    }
}

/// Read a comma-separated file (gzipped or not; another format is refused, naming it) with
/// integer labels. `user` and `label` say whether those columns must be present; every other
/// column is a feature.
pub fn read_csv(path: &Path, columns: &Columns, user: Need, label: Need) -> Result<Table> {
    match crate::data::format::sniff(path)? {
        crate::data::format::Format::Csv => {}
        other => return Err(crate::data::format::unreadable(path, other, "a CSV file")),
    }
    let mut table = Table {
        path: path.to_path_buf(),
        feature_names: Vec::new(),
        user_ids: None,
        labels: None,
        x: Vec::new(),
        lines: Vec::new(),
    };
    let want = Want {
        user,
        label,
        features: Features::All,
        classes: None,
    };
    let any = Classes::any_index();
    let names = read_rows(path, open_maybe_gz(path)?, b',', columns, &want, |r| {
        table.x.extend_from_slice(r.features);
        if let Some(u) = r.user {
            table
                .user_ids
                .get_or_insert_with(Vec::new)
                .push(u.to_string());
        }
        if let Some(l) = r.label {
            let at = At {
                path,
                line: r.line,
                column: &columns.label,
            };
            let index = any.index(l, at)?;
            table.labels.get_or_insert_with(Vec::new).push(index);
        }
        table.lines.push(r.line);
        Ok(())
    })?;
    table.feature_names = names;
    Ok(table)
}

/// Stream the text rows of `reader` (the file `path`, already gunzipped) separated by
/// `delimiter` into `on_row`, one row in memory; returns the feature names. The header is
/// mapped once to what `want` asks for ([`ColumnMap`]).
pub fn read_rows(
    path: &Path,
    reader: Box<dyn Read>,
    delimiter: u8,
    columns: &Columns,
    want: &Want<'_>,
    mut on_row: impl FnMut(Record<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    let lines = LineStarts::shared();
    let reader = LineCounter {
        inner: reader,
        lines: lines.clone(),
    };
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(reader);
    let line_at = |p: &csv::Position| lines.borrow_mut().line_at(p.byte());
    let map_csv = |e: csv::Error| {
        let line = e.position().map(line_at);
        Error::input(path, line, None, format!("unreadable CSV: {e}"))
    };
    let mut record = csv::StringRecord::new();
    if !csv.read_record(&mut record).map_err(map_csv)? {
        return Err(Error::input(path, None, None, "empty file: no header line"));
    }
    let names: Vec<String> = record.iter().map(|h| h.trim().to_string()).collect();
    if names.len() == 1 && delimiter == b',' && names[0].contains('\t') {
        // Told apart from a TSV only by content; a header mixing both is ambiguous.
        return Err(Error::input(
            path,
            Some(1),
            None,
            "the header has one comma-separated field holding tabs: pass --delimiter tab",
        ));
    }
    let map = ColumnMap::new(path, &names, columns, want, Some(1), "the header")?;
    let mut features = vec![0f32; map.features.len()];
    let mut rows = 0u64;
    while csv.read_record(&mut record).map_err(map_csv)? {
        let line = record.position().map(line_at).unwrap_or(0);
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue; // a blank line
        }
        if record.len() != names.len() {
            return Err(Error::input(
                path,
                Some(line),
                None,
                format!(
                    "expected {} fields as in the header, found {}",
                    names.len(),
                    record.len()
                ),
            ));
        }
        for (v, &c) in features.iter_mut().zip(&map.features) {
            *v = parse_feature(&record[c])
                .map_err(|m| Error::input(path, Some(line), Some(&names[c]), m))?;
        }
        let user = match map.user {
            Some(c) => {
                let id = record[c].trim();
                if id.is_empty() {
                    return Err(Error::input(
                        path,
                        Some(line),
                        Some(&names[c]),
                        "empty user id",
                    ));
                }
                Some(id)
            }
            None => None,
        };
        // The label's text: the caller's [`Classes`] (or a training run's learner) reads it.
        let label = map.label.map(|c| Label::Text(record[c].trim()));
        on_row(Record {
            line,
            user,
            label,
            features: &features,
        })?;
        rows += 1;
    }
    if rows == 0 {
        return Err(Error::input(
            path,
            None,
            None,
            "no data rows after the header",
        ));
    }
    Ok(map.names)
}

/// `text` as one CSV field: in double quotes (each quote doubled) when it holds a comma, a
/// quote or a line end, as written otherwise.
pub fn field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

/// Read user ids, one per line; blank lines and lines starting with '#' are skipped.
pub fn read_user_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "in.csv", text);
        read_csv(&p, &Columns::default(), Need::Required, Need::Required)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_plain_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let text = "user_id,a,label,b\nu1,1.5,2,3\nu2,-1,0,4e2\n";
        let p = write(&dir, "a.csv", text);
        let t = read_csv(&p, &Columns::default(), Need::Required, Need::Required).unwrap();
        assert_eq!(t.feature_names, ["a", "b"]);
        assert_eq!(t.x, [1.5, 3.0, -1.0, 400.0]);
        assert_eq!(t.labels.as_deref(), Some(&[2, 0][..]));
        assert_eq!(
            t.user_ids.as_deref(),
            Some(&["u1".to_string(), "u2".to_string()][..])
        );
        assert_eq!(t.lines, [2, 3]);
        let gz = dir.path().join("a.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let t2 = read_csv(&gz, &Columns::default(), Need::Required, Need::Required).unwrap();
        assert_eq!(t2.x, t.x);
    }

    #[test]
    fn bad_input_names_the_place() {
        let cases = [
            ("", "empty file"),
            ("user_id,label,a\n", "no data rows"),
            (
                "user_id,label,a,a\nu,1,2,3\n",
                "column 'a': duplicate column name",
            ),
            ("user_id,label,a\nu,1,2\nu,1\n", "line 3: expected 3 fields"),
            (
                "user_id,label,a\nu,1,x\n",
                "line 2, column 'a': value 'x' is not a number",
            ),
            (
                "user_id,label,a\nu,1,nan\n",
                "line 2, column 'a': value 'nan' is not finite",
            ),
            (
                "user_id,label,a\nu,1,inf\n",
                "line 2, column 'a': value 'inf' is not finite",
            ),
            (
                "user_id,label,a\nu,1,1e39\n",
                "line 2, column 'a': value '1e39' is not finite",
            ),
            (
                "user_id,label,a\nu,-1,2\n",
                "line 2, column 'label': label -1 is negative",
            ),
            (
                "user_id,label,a\nu,1.5,2\n",
                "line 2, column 'label': label '1.5' is not",
            ),
            (
                "user_id,label,a\n,1,2\n",
                "line 2, column 'user_id': empty user id",
            ),
            (
                "user,label,a\nu,1,2\n",
                "line 1, column 'user_id': no user id column",
            ),
            ("user_id,label\nu,1\n", "line 1: no feature columns"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains("in.csv"), "{got}");
            assert!(
                got.contains(want),
                "for {text:?}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn labels_are_read_as_the_run_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "a.csv", "user_id,label,a\nu,3.0,1\nu,cat,2\n");
        let cols = Columns::default();
        let e = read_csv(&p, &cols, Need::Required, Need::Required).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 3, column 'label': label 'cat' is not a non-negative integer"),
            "{e}"
        );
        let named = Classes::named(vec!["3.0".into(), "cat".into()]).unwrap();
        let spec = crate::data::InputSpec::file(&p);
        let want = Want {
            user: Need::Required,
            label: Need::Required,
            features: Features::All,
            classes: Some(&named),
        };
        let t = crate::data::source::read_table(&spec, &want, 0, crate::data::Role::Train).unwrap();
        assert_eq!(t.labels.as_deref(), Some(&[0, 1][..]));
    }
}
