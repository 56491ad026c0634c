//! One place that reads an input, whatever its format: an [`InputSpec`] says where the rows
//! are (a file or standard input) and where their labels and users come from; its content,
//! never its name, says the format, and [`for_each_row`] dispatches to the reader.
//!
//! | format | told by | features | labels | users |
//! |---|---|---|---|---|
//! | CSV, TSV (gzip) | text | named columns | label column | user column, or a rule / `--user-ids` |
//! | Parquet | `PAR1` | named columns | label column | user column, or a rule / `--user-ids` |
//! | NumPy `.npy` (gzip) | `\x93NUMPY` | the array, by position | `--labels` | a rule or `--user-ids` |
//! | NumPy `.npz` | zip | array `X` or `features` | array `y` or `label`, or `--labels` | array `user_id`, or a rule / `--user-ids` |
//! | IDX (gzip) | two zero bytes | the images, by position | the labels file | a rule |
//!
//! Every format streams: a text or `.npy` file one row at a time, Parquet a batch of rows per
//! column at a time, an `.npz` entry as it is inflated. Labels and user ids that come from an
//! array of their own (one value per row) are read whole.
//!
//! Standard input (`-`) is sniffed from a buffered head and then read on as the same stream,
//! gunzipped when it starts with the gzip magic. Formats that need to seek (Parquet keeps its
//! index at the end, a zip archive its directory) and IDX (whose length is checked before
//! reading) are refused on standard input: write them to a file.

use crate::data::classes::{At, Classes};
use crate::data::columns::{Columns, Features, Need, Record, Want};
use crate::data::csv::{self, open_with_length, Table};
use crate::data::format::{self, Format};
use crate::data::idx::{self, Assigner, Role, UserRule};
use crate::data::{npy, parquet, Event};
use crate::error::{Error, Result};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where the rows are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A file (`-` is standard input).
    File(PathBuf),
    /// Standard input.
    Stdin,
}

/// The field delimiter of text input, checked: one ASCII character that is not a quote, a
/// line end or alphanumeric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delimiter(u8);

impl Delimiter {
    /// The byte.
    pub fn byte(self) -> u8 {
        self.0
    }
}

impl FromStr for Delimiter {
    type Err = String;

    /// `comma`, `tab`, `semicolon`, `pipe`, `space`, `\t`, or one ASCII character.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let b = match s {
            "comma" => b',',
            "tab" | "\\t" | "\t" => b'\t',
            "semicolon" => b';',
            "pipe" => b'|',
            "space" => b' ',
            one if one.len() == 1 => one.as_bytes()[0],
            _ => {
                return Err(format!(
                    "'{s}' is not a delimiter: give one ASCII character, or comma, tab, \
                     semicolon, pipe or space"
                ))
            }
        };
        if !b.is_ascii() || b.is_ascii_alphanumeric() || matches!(b, b'"' | b'\n' | b'\r') {
            return Err(format!(
                "'{s}' cannot separate fields: a delimiter is not a letter, a digit, a quote or \
                 a line end"
            ));
        }
        Ok(Delimiter(b))
    }
}

impl fmt::Display for Delimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b'\t' => write!(f, "tab"),
            b => write!(f, "{}", b as char),
        }
    }
}

/// Where the rows' users come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Users {
    /// The file's user column (`user_id` unless named otherwise), or its array of that name.
    Column,
    /// A seeded rule, for data without users: `uniform:U` or `zipf:U:s`.
    Rule(UserRule),
    /// A 1-D `.npy` of one user id per row (integers or strings).
    File(PathBuf),
}

/// How to read one input: where it is, its delimiter, where labels and users come from, and
/// the names of its special columns. Built once from the flags; [`for_each_row`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    location: Location,
    delimiter: Option<Delimiter>,
    labels: Option<PathBuf>,
    users: Users,
    columns: Columns,
}

impl InputSpec {
    /// The input at `path` (`-`: standard input), with the defaults: the delimiter told from
    /// the header, labels and users from the file's columns `user_id` and `label`.
    pub fn file(path: impl Into<PathBuf>) -> InputSpec {
        let path = path.into();
        let location = if path.as_os_str() == "-" {
            Location::Stdin
        } else {
            Location::File(path)
        };
        InputSpec {
            location,
            delimiter: None,
            labels: None,
            users: Users::Column,
            columns: Columns::default(),
        }
    }

    /// Separate text fields by `d`. Default: a tab when the header has tabs and no comma,
    /// else a comma.
    pub fn with_delimiter(mut self, d: Option<Delimiter>) -> InputSpec {
        self.delimiter = d;
        self
    }

    /// Take the labels from this file (a 1-D `.npy`, or an IDX labels file). Default: the
    /// file's own labels (for IDX, the labels file beside it).
    pub fn with_labels(mut self, labels: Option<PathBuf>) -> InputSpec {
        self.labels = labels;
        self
    }

    /// Take the users from `users`. Default: [`Users::Column`].
    pub fn with_users(mut self, users: Users) -> InputSpec {
        self.users = users;
        self
    }

    /// Name the special columns. Default: [`Columns::default`].
    pub fn with_columns(mut self, columns: Columns) -> InputSpec {
        self.columns = columns;
        self
    }

    /// Where the rows are.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The special columns' names.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// Where the users come from.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Where the labels are, for messages: the labels file given with `--labels`, else the
    /// label column's name.
    pub fn label_place(&self) -> String {
        match &self.labels {
            Some(p) => p.display().to_string(),
            None => self.columns.label.clone(),
        }
    }

    /// The path messages name: the file, or `<stdin>`.
    pub fn path(&self) -> &Path {
        match &self.location {
            Location::File(p) => p,
            Location::Stdin => Path::new("<stdin>"),
        }
    }

    /// True when the rows come from standard input.
    pub fn is_stdin(&self) -> bool {
        self.location == Location::Stdin
    }
}

/// An input opened and sniffed: its format and its (gunzipped) stream, head included.
struct Opened {
    format: Format,
    stream: Box<dyn Read>,
    /// The stream's length, when known (a plain file).
    length: Option<u64>,
    gzipped: bool,
    head: Vec<u8>,
}

/// Open `spec`'s rows and tell their format from the first bytes, keeping them in the stream.
fn open(spec: &InputSpec) -> Result<Opened> {
    let path = spec.path().to_path_buf();
    let (raw, length): (Box<dyn Read>, Option<u64>) = match &spec.location {
        Location::File(p) => open_with_length(p)?,
        Location::Stdin => {
            let mut stdin = std::io::stdin();
            let mut magic = [0u8; 2];
            let mut got = 0;
            while got < 2 {
                match stdin.read(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(&path, e)),
                }
            }
            let head = std::io::Cursor::new(magic[..got].to_vec()).chain(stdin);
            if got == 2 && magic == [0x1f, 0x8b] {
                (Box::new(flate2::read::MultiGzDecoder::new(head)), None)
            } else {
                (Box::new(head), None)
            }
        }
    };
    // Standard input never reaches a reader that cares (those that seek refuse it first).
    let gzipped = length.is_none() && !spec.is_stdin();
    let mut head = Vec::with_capacity(format::SNIFF_BYTES);
    let mut raw = raw;
    (&mut raw)
        .take(format::SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(&path, e))?;
    let name = match &spec.location {
        Location::File(p) => Some(p.as_path()),
        Location::Stdin => None,
    };
    let format = format::from_head(name, &head);
    let stream = Box::new(std::io::Cursor::new(head.clone()).chain(raw));
    Ok(Opened {
        format,
        stream,
        length,
        gzipped,
        head,
    })
}

/// Refuse a format that must be read from a plain file (it seeks) when `spec` is standard
/// input or gzipped.
fn plain_file<'a>(spec: &'a InputSpec, opened: &Opened, what: &str) -> Result<&'a Path> {
    match &spec.location {
        Location::Stdin => Err(Error::input(
            spec.path(),
            None,
            None,
            format!(
                "{what} cannot be read from standard input ({}): write it to a file and pass \
                 its path",
                match opened.format {
                    Format::Idx => "its length is checked before its records are read",
                    _ => "its index is at the end of the file, so reading it needs to seek",
                }
            ),
        )),
        Location::File(p) if opened.gzipped => Err(Error::input(
            p,
            None,
            None,
            format!("a gzipped {what} is not read: decompress it (it compresses itself)"),
        )),
        Location::File(p) => Ok(p),
    }
}

/// Open a text input (CSV, TSV) for a reader of its own columns (the deletion prior column):
/// its gunzipped stream and its delimiter. `what` names that reader for the refusal of
/// standard input, which cannot be read twice, and of other formats.
pub fn open_text(spec: &InputSpec, what: &str) -> Result<(Box<dyn Read>, u8)> {
    if spec.is_stdin() {
        return Err(Error::Config(format!(
            "{what} reads the training file a second time, and standard input cannot be read \
             twice: write the data to a file"
        )));
    }
    let opened = open(spec)?;
    if opened.format != Format::Csv {
        return Err(Error::input(
            spec.path(),
            None,
            None,
            format!("{what} is read from CSV and TSV files only; use a file of priors instead"),
        ));
    }
    let delimiter = spec
        .delimiter
        .map(Delimiter::byte)
        .unwrap_or_else(|| csv::detect_delimiter(&opened.head));
    Ok((opened.stream, delimiter))
}

/// Where a reader hands its items.
type OnItem<'a> = dyn FnMut(Item<'_>) -> Result<()> + 'a;

/// What [`for_each_row`] hands over.
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    /// Before the rows, from formats whose row count is known and checked up front (NumPy
    /// from a file, IDX): the feature count and every row's user id, in order.
    Start {
        /// Features per row.
        dim: usize,
        /// User id of every row.
        users: &'a [String],
    },
    /// One row, with the user and label `want` asked for.
    Row(Record<'a>),
}

/// Side arrays (labels, users) of one value per row, checked against the row count.
struct Side {
    labels: Option<(PathBuf, npy::Labels)>,
    users: Option<(PathBuf, Vec<String>)>,
}

/// Read a whole 1-D `.npy` side file (labels or user ids), gzipped or not.
fn read_side_column(path: &Path, flag: &str) -> Result<npy::Column> {
    if path.as_os_str() == "-" {
        return Err(Error::Config(format!(
            "{flag} -: only the rows themselves may come from standard input"
        )));
    }
    let (reader, length) = open_with_length(path)?;
    Ok(npy::read_column(path, "", reader, length)?.1)
}

/// The labels of `path`: a 1-D `.npy`, or an IDX labels file.
fn read_side_labels(path: &Path) -> Result<npy::Labels> {
    if path.as_os_str() != "-" && format::sniff(path)? == Format::Idx {
        let y = idx::read_idx(path)?;
        if y.dims.len() != 1 {
            return Err(Error::input(
                path,
                None,
                None,
                format!("sizes {:?}: a labels file has one dimension", y.dims),
            ));
        }
        let column = npy::Column::Float(y.values.iter().map(|&v| v as f64).collect());
        return npy::parse_labels(path, "", column);
    }
    npy::parse_labels(path, "", read_side_column(path, "--labels")?)
}

/// The message for data that needs users it does not have.
fn no_users(path: &Path, what: &str) -> Error {
    Error::input(
        path,
        None,
        None,
        format!(
            "{what} has no user column: pass --users uniform:U, --users zipf:U:s or --user-ids \
             FILE"
        ),
    )
}

/// Stream the rows of `spec` into `on_item`, with what `want` asks for: the user (from the
/// file, its rule under `seed` and `role`, or its user-id array), the label (from the file or
/// its labels file, as the file holds it: [`read_table`] reads it with `want.classes`), the features (all, or the run's by name).
/// Returns the feature names.
pub fn for_each_row(
    spec: &InputSpec,
    want: &Want<'_>,
    seed: u64,
    role: Role,
    mut on_item: impl FnMut(Item<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    let opened = open(spec)?;
    let path = spec.path().to_path_buf();
    if let Format::Other(_) = opened.format {
        return Err(format::unreadable(&path, opened.format, "rows of data"));
    }
    let text_or_parquet = matches!(opened.format, Format::Csv | Format::Parquet);
    if let (Some(l), true) = (&spec.labels, text_or_parquet) {
        return Err(Error::Config(format!(
            "--labels {} is for NumPy and IDX data, and {} is {}: its labels are its '{}' column",
            l.display(),
            path.display(),
            if opened.format == Format::Csv {
                "a text file"
            } else {
                "a Parquet file"
            },
            spec.columns.label
        )));
    }
    // What the file itself must hold.
    let file_want = Want {
        user: match spec.users {
            Users::Column => want.user,
            _ => Need::Forbidden,
        },
        label: if spec.labels.is_some() {
            Need::Forbidden
        } else {
            want.label
        },
        ..*want
    };
    let mut side = Side {
        labels: None,
        users: None,
    };
    if let Some(l) = &spec.labels {
        if opened.format != Format::Idx {
            side.labels = Some((l.clone(), read_side_labels(l)?));
        }
    }
    if let Users::File(u) = &spec.users {
        if opened.format == Format::Idx {
            return Err(Error::Config(format!(
                "--user-ids {}: IDX data takes its users from --users uniform:U or zipf:U:s",
                u.display()
            )));
        }
        let ids = npy::parse_user_ids(u, "", read_side_column(u, "--user-ids")?)?;
        side.users = Some((u.clone(), ids));
    }
    // An archive's own labels and users are read whole before its features stream.
    let mut archive = None;
    if opened.format == Format::Npz {
        let file = plain_file(spec, &opened, "an .npz archive")?.to_path_buf();
        let mut npz = npy::Npz::open(&file)?;
        let x = npz_arrays(&mut npz, &file, spec, &file_want, &mut side)?;
        archive = Some((npz, x, file));
    }
    let assigner = match &spec.users {
        Users::Rule(rule) => Some(Assigner::new(rule, seed, role)),
        _ => None,
    };
    let mut index = 0usize;
    let mut rule_user = String::new();
    let mut emit = |r: Record<'_>, on_item: &mut OnItem<'_>| {
        let i = index;
        index += 1;
        let user = match (&side.users, &assigner) {
            (Some((p, ids)), _) => Some(ids.get(i).map(String::as_str).ok_or_else(|| {
                Error::input(
                    p,
                    None,
                    None,
                    format!(
                        "{} user ids, but {} has more rows",
                        ids.len(),
                        path.display()
                    ),
                )
            })?),
            (None, Some(a)) => {
                rule_user = a.id(i as u64);
                Some(rule_user.as_str())
            }
            (None, None) => r.user,
        };
        let label = match &side.labels {
            Some((p, labels)) => Some(labels.get(i).ok_or_else(|| {
                Error::input(
                    p,
                    None,
                    None,
                    format!(
                        "{} labels, but {} has more rows",
                        labels.len(),
                        path.display()
                    ),
                )
            })?),
            None => r.label,
        };
        on_item(Item::Row(Record {
            line: r.line,
            user,
            label,
            features: r.features,
        }))
    };
    let names = match opened.format {
        Format::Csv => {
            let delimiter = spec
                .delimiter
                .map(Delimiter::byte)
                .unwrap_or_else(|| csv::detect_delimiter(&opened.head));
            csv::read_rows(
                &path,
                opened.stream,
                delimiter,
                &spec.columns,
                &file_want,
                |r| emit(r, &mut on_item),
            )?
        }
        Format::Parquet => {
            let file = plain_file(spec, &opened, "a Parquet file")?.to_path_buf();
            drop(opened);
            parquet::read_rows(&file, &spec.columns, &file_want, |r| emit(r, &mut on_item))?
        }
        Format::Npy => {
            // The header first: a pickle or a bad shape is what the file's owner must hear.
            let checked = opened.length.is_some();
            let rows = npy::FeatureRows::open(&path, "", opened.stream, opened.length)?;
            if file_want.label == Need::Required {
                return Err(Error::input(
                    &path,
                    None,
                    None,
                    "a .npy file holds one array, the features: pass its labels with --labels \
                     FILE (a 1-D .npy), or save X and y together in an .npz",
                ));
            }
            if file_want.user == Need::Required {
                return Err(no_users(&path, "a .npy file"));
            }
            let ctx = NpyContext {
                checked,
                want,
                side: &side,
                assigner: assigner.as_ref(),
                path: &path,
            };
            stream_npy(rows, &ctx, &mut emit, &mut on_item)?
        }
        Format::Npz => {
            let (mut npz, x, file) = archive.expect("opened above for an .npz");
            let (reader, len) = npz.entry(&x)?;
            let rows = npy::FeatureRows::open(&file, &format!("array '{x}'"), reader, Some(len))?;
            let ctx = NpyContext {
                checked: true,
                want,
                side: &side,
                assigner: assigner.as_ref(),
                path: &file,
            };
            stream_npy(rows, &ctx, &mut emit, &mut on_item)?
        }
        Format::Idx => {
            if spec.is_stdin() {
                plain_file(spec, &opened, "an IDX file")?;
            }
            drop(opened);
            let file = spec.path().to_path_buf();
            let dummy = UserRule::Uniform { users: 1 };
            let rule = match (&spec.users, want.user) {
                (Users::Rule(r), _) => r,
                (_, Need::Required) => return Err(no_users(&file, "an IDX file")),
                _ => &dummy,
            };
            let expected = match want.features {
                Features::Named(n) => Some(n.len()),
                Features::All => None,
            };
            idx::for_each_labelled(
                &file,
                spec.labels.as_deref(),
                rule,
                seed,
                role,
                |e| match e {
                    Event::Start { dim, users } => {
                        check_dim(&file, dim, expected)?;
                        on_item(Item::Start { dim, users })
                    }
                    Event::Row(l) => {
                        // IDX hands over its own users and labels.
                        on_item(Item::Row(Record {
                            line: l.line,
                            user: Some(l.user),
                            label: Some(l.label),
                            features: l.features,
                        }))
                    }
                },
            )?
        }
        Format::Other(_) => unreachable!("refused above"),
    };
    let rows = index;
    for (what, side_len) in [
        ("labels", side.labels.as_ref().map(|l| (&l.0, l.1.len()))),
        ("user ids", side.users.as_ref().map(|u| (&u.0, u.1.len()))),
    ] {
        if let Some((p, len)) = side_len {
            if len > rows {
                return Err(Error::input(
                    p,
                    None,
                    None,
                    format!("{len} {what}, but {} has {rows} rows", path.display()),
                ));
            }
        }
    }
    Ok(names)
}

/// Find an archive's features array, and read its labels and user ids (when it has them and
/// `want` takes them from the file) into `side`; returns the features array's name.
fn npz_arrays(
    npz: &mut npy::Npz,
    file: &Path,
    spec: &InputSpec,
    want: &Want<'_>,
    side: &mut Side,
) -> Result<String> {
    let list = npz.arrays().join(", ");
    let bad = |m: String| Error::input(file, None, None, m);
    let x = npz.find(&["X", "features", "x"]).ok_or_else(|| {
        bad(format!(
            "no features array: expected 'X' or 'features'; the archive holds {list}"
        ))
    })?;
    let label_names = [spec.columns.label.as_str(), "y", "labels"];
    match (npz.find(&label_names), want.label) {
        (Some(y), Need::Forbidden) => {
            return Err(bad(format!(
                "the archive has labels (array '{y}'); --labels is for data without them"
            )))
        }
        (Some(y), _) => {
            let (reader, len) = npz.entry(&y)?;
            let place = format!("array '{y}'");
            let col = npy::read_column(file, &place, reader, Some(len))?.1;
            side.labels = Some((file.to_path_buf(), npy::parse_labels(file, &place, col)?));
        }
        (None, Need::Required) => {
            return Err(bad(format!(
                "no labels array: expected 'y' or '{}'; the archive holds {list}",
                spec.columns.label
            )))
        }
        (None, _) => {}
    }
    match (npz.find(&[spec.columns.user.as_str()]), want.user) {
        (Some(u), Need::Forbidden) => {
            return Err(bad(format!(
                "the archive has user ids (array '{u}'); --users and --user-ids are for data \
                 without them"
            )))
        }
        (Some(u), _) => {
            let (reader, len) = npz.entry(&u)?;
            let place = format!("array '{u}'");
            let col = npy::read_column(file, &place, reader, Some(len))?.1;
            side.users = Some((file.to_path_buf(), npy::parse_user_ids(file, &place, col)?));
        }
        (None, Need::Required) => return Err(no_users(file, "the archive")),
        (None, _) => {}
    }
    Ok(x)
}

/// What streaming NumPy rows needs besides the rows.
struct NpyContext<'a> {
    /// The row count was checked against the length, so every row's user id can be handed
    /// over first.
    checked: bool,
    want: &'a Want<'a>,
    side: &'a Side,
    assigner: Option<&'a Assigner>,
    path: &'a Path,
}

/// Refuse rows of `dim` values where the run has `expected` features (formats without names).
fn check_dim(path: &Path, dim: usize, expected: Option<usize>) -> Result<()> {
    match expected {
        Some(e) if e != dim => Err(Error::input(
            path,
            None,
            None,
            format!(
                "rows of {dim} values, but the run has {e} features (a file without column \
                 names is read by position)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Stream NumPy feature rows through `emit`.
fn stream_npy(
    mut rows: npy::FeatureRows<'_>,
    ctx: &NpyContext<'_>,
    emit: &mut dyn FnMut(Record<'_>, &mut OnItem<'_>) -> Result<()>,
    on_item: &mut OnItem<'_>,
) -> Result<Vec<String>> {
    let n = rows.header().rows();
    let dim = rows.header().per_row() as usize;
    let expected = match ctx.want.features {
        Features::Named(names) => Some(names.len()),
        Features::All => None,
    };
    check_dim(ctx.path, dim, expected)?;
    for (what, len) in [
        (
            "labels",
            ctx.side.labels.as_ref().map(|l| (&l.0, l.1.len())),
        ),
        (
            "user ids",
            ctx.side.users.as_ref().map(|u| (&u.0, u.1.len())),
        ),
    ] {
        if let Some((p, len)) = len {
            if len as u64 != n {
                return Err(Error::input(
                    p,
                    None,
                    None,
                    format!(
                        "{len} {what}, but {} has {n} rows (shape {})",
                        ctx.path.display(),
                        rows.header().shape_text()
                    ),
                ));
            }
        }
    }
    if ctx.checked {
        if let Some((_, ids)) = &ctx.side.users {
            on_item(Item::Start { dim, users: ids })?;
        } else if let Some(a) = ctx.assigner {
            let ids: Vec<String> = (0..n).map(|i| a.id(i)).collect();
            on_item(Item::Start { dim, users: &ids })?;
        }
    }
    let names = rows.names();
    let mut line = 0u64;
    while let Some(features) = rows.next_row()? {
        line += 1;
        emit(
            Record {
                line,
                user: None,
                label: None,
                features,
            },
            on_item,
        )?;
    }
    Ok(names)
}

/// Read `spec` whole into a table (see [`for_each_row`]).
pub fn read_table(spec: &InputSpec, want: &Want<'_>, seed: u64, role: Role) -> Result<Table> {
    let mut table = Table {
        path: spec.path().to_path_buf(),
        feature_names: Vec::new(),
        user_ids: None,
        labels: None,
        x: Vec::new(),
        lines: Vec::new(),
    };
    // Labels are read as `want.classes` says, or as integers; a caller to whom labels are
    // optional and who names no classes (predict) gets none.
    let any = Classes::any_index();
    let classes = match (want.classes, want.label) {
        (Some(c), _) => Some(c),
        (None, Need::Optional) => None,
        (None, _) => Some(&any),
    };
    let path = spec.path().to_path_buf();
    let label_place = spec.label_place();
    let names = for_each_row(spec, want, seed, role, |item| {
        match item {
            Item::Start { dim, users } => {
                table.x.reserve_exact(users.len() * dim);
                table.lines.reserve_exact(users.len());
            }
            Item::Row(r) => {
                table.x.extend_from_slice(r.features);
                if let Some(u) = r.user {
                    table
                        .user_ids
                        .get_or_insert_with(Vec::new)
                        .push(u.to_string());
                }
                if let (Some(l), Some(classes)) = (r.label, classes) {
                    let at = At {
                        path: &path,
                        line: r.line,
                        column: &label_place,
                    };
                    let index = classes.index(l, at)?;
                    table.labels.get_or_insert_with(Vec::new).push(index);
                }
                table.lines.push(r.line);
            }
        }
        Ok(())
    })?;
    if table.lines.is_empty() {
        return Err(Error::input(spec.path(), None, None, "no data rows"));
    }
    table.feature_names = names;
    Ok(table)
}

/// Read `spec` against the run configured by `config`: its columns, its features by name (by
/// position for formats without names), labels read as its classes (indices or names). `user` and `label` say
/// what the caller needs.
pub fn read_for_run(
    spec: &InputSpec,
    config: &crate::run::RunConfig,
    user: Need,
    label: Need,
) -> Result<Table> {
    let spec = spec.clone().with_columns(config.columns());
    let classes = config.labels();
    let want = Want {
        user,
        label,
        features: Features::Named(&config.features),
        classes: (label != Need::Optional).then_some(&classes),
    };
    read_table(&spec, &want, config.seed, Role::Train)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::tests::npy;

    fn want_all() -> Want<'static> {
        Want {
            user: Need::Required,
            label: Need::Required,
            features: Features::All,
            classes: None,
        }
    }

    #[test]
    fn delimiters_parse_and_tsv_is_told_by_its_header() {
        assert_eq!("tab".parse::<Delimiter>().unwrap().byte(), b'\t');
        assert_eq!(";".parse::<Delimiter>().unwrap().byte(), b';');
        assert!("ab".parse::<Delimiter>().is_err());
        assert!("a".parse::<Delimiter>().is_err());
        assert!("\"".parse::<Delimiter>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("a.txt");
        std::fs::write(&tsv, "user_id\tlabel\tx\nu\t1\t0.5\n").unwrap();
        let t = read_table(&InputSpec::file(&tsv), &want_all(), 1, Role::Train).unwrap();
        assert_eq!(
            (t.x.as_slice(), t.feature_names.as_slice()),
            (&[0.5f32][..], &["x".to_string()][..])
        );
        let semi = dir.path().join("b.csv");
        std::fs::write(&semi, "user_id;label;x\nu;1;2\n").unwrap();
        let spec = InputSpec::file(&semi).with_delimiter(Some(";".parse().unwrap()));
        assert_eq!(
            read_table(&spec, &want_all(), 1, Role::Train).unwrap().x,
            [2.0]
        );
    }

    #[test]
    fn npy_features_with_side_labels_and_users() {
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x.npy");
        let body: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&x, npy("<f4", &[3, 2], &body)).unwrap();
        let y = dir.path().join("y.npy");
        std::fs::write(&y, npy("|u1", &[3], &[0, 1, 1])).unwrap();
        let spec = InputSpec::file(&x)
            .with_labels(Some(y.clone()))
            .with_users(Users::Rule(UserRule::Uniform { users: 2 }));
        let t = read_table(&spec, &want_all(), 1, Role::Train).unwrap();
        assert_eq!(t.labels.as_deref(), Some(&[0, 1, 1][..]));
        assert_eq!(t.row(2), [5., 6.]);
        assert_eq!(
            t.user_ids.unwrap(),
            UserRule::Uniform { users: 2 }.assign(1, Role::Train, 3)
        );
        // Read against a run, a file without names must have the run's feature count.
        let run = ["a".to_string(), "b".to_string(), "c".to_string()];
        let named = Want {
            features: Features::Named(&run),
            ..want_all()
        };
        let e = read_table(&spec, &named, 1, Role::Train)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rows of 2 values, but the run has 3 features"),
            "{e}"
        );
        // Without labels or users the message says what to pass.
        let e = read_table(&InputSpec::file(&x), &want_all(), 1, Role::Train).unwrap_err();
        assert!(e.to_string().contains("--labels"), "{e}");
        // A labels array of the wrong length is named.
        std::fs::write(&y, npy("|u1", &[2], &[0, 1])).unwrap();
        let e = read_table(&spec, &want_all(), 1, Role::Train)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("y.npy") && e.contains("2 labels") && e.contains("3 rows"),
            "{e}"
        );
    }

    #[test]
    fn damaged_npz_archives_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let write = |entries: &[(&str, Vec<u8>)], deflate: bool| {
            let f = std::fs::File::create(&p).unwrap();
            let mut z = zip::ZipWriter::new(f);
            let method = if deflate {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            for (name, bytes) in entries {
                z.start_file(*name, opts).unwrap();
                std::io::Write::write_all(&mut z, bytes).unwrap();
            }
            z.finish().unwrap();
        };
        let body: Vec<u8> = (0..8).flat_map(|v| (v as f64).to_le_bytes()).collect();
        let x = npy("<f8", &[4, 2], &body);
        let y = npy(
            "<i8",
            &[4],
            &(0..4i64)
                .flat_map(|v| (v % 2).to_le_bytes())
                .collect::<Vec<_>>(),
        );
        let mut u = Vec::new();
        for i in 0..4u32 {
            u.extend_from_slice(&(b'a' as u32 + i).to_le_bytes());
        }
        let users = npy("<U1", &[4], &u);
        for deflate in [false, true] {
            write(
                &[
                    ("X.npy", x.clone()),
                    ("y.npy", y.clone()),
                    ("user_id.npy", users.clone()),
                ],
                deflate,
            );
            let t = read_table(&InputSpec::file(&p), &want_all(), 1, Role::Train).unwrap();
            assert_eq!(t.user_ids.as_deref().unwrap(), ["a", "b", "c", "d"]);
            assert_eq!(t.labels.as_deref(), Some(&[0, 1, 0, 1][..]));
            assert_eq!(t.row(3), [6., 7.]);
        }
        // Cut short: the zip directory is gone.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_table(&InputSpec::file(&p), &want_all(), 1, Role::Train)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.npz") && e.contains("damaged or cut short"),
            "{e}"
        );
        // A flipped byte inside the deflated features: refused, never a panic.
        write(
            &[
                ("X.npy", x.clone()),
                ("y.npy", y.clone()),
                ("user_id.npy", users.clone()),
            ],
            true,
        );
        // Any flipped byte: a result or an error, never a panic (the CRC catches most).
        let good = std::fs::read(&p).unwrap();
        let mut refused = 0;
        for i in 0..good.len() {
            let mut bytes = good.clone();
            bytes[i] ^= 0x5a;
            std::fs::write(&p, &bytes).unwrap();
            refused +=
                read_table(&InputSpec::file(&p), &want_all(), 1, Role::Train).is_err() as usize;
        }
        assert!(
            refused > good.len() / 2,
            "{refused} of {} flips refused",
            good.len()
        );
        // No labels array, a string labels array.
        write(
            &[("X.npy", x.clone()), ("user_id.npy", users.clone())],
            false,
        );
        let e = read_table(&InputSpec::file(&p), &want_all(), 1, Role::Train)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no labels array") && e.contains("X, user_id"),
            "{e}"
        );
        write(
            &[
                ("X.npy", x.clone()),
                ("y.npy", users.clone()),
                ("user_id.npy", users),
            ],
            false,
        );
        let e = read_table(&InputSpec::file(&p), &want_all(), 1, Role::Train)
            .unwrap_err()
            .to_string();
        // Strings are names: read as integers (no run's classes), they are refused by row.
        assert!(
            e.contains("line 1") && e.contains("label 'a' is not a non-negative integer"),
            "{e}"
        );
    }
}
