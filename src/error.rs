//! One error type for the library, with the context a user needs to fix the problem.
//!
//! Every variant names where the problem is: a file, a line, a column, a shard, a stage or a
//! request. The binary prints the message and exits non-zero; nothing on disk has changed when
//! one of these is returned before a run is published.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `sisa`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named file.
    // The OS error is part of the message, not a separate cause in the chain, so `{:#}` does
    // not print it twice.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },

    /// An input file (text, Parquet, NumPy, IDX) that cannot be used, with the place of the
    /// problem: the line of a text file, the column.
    #[error("{path}{}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column '{c}'")).unwrap_or_default())]
    Input {
        /// The input file.
        path: PathBuf,
        /// 1-based line number, when the problem is on one line.
        line: Option<u64>,
        /// The column (header name), when the problem is in one column.
        column: Option<String>,
        /// What is wrong.
        message: String,
    },

    /// A row of an input file without lines (Parquet, NumPy) that cannot be used: the row
    /// (1-based) and, when the problem is in one, the column or array (`column 'x'`,
    /// `array 'y'`).
    #[error("{path}, row {row}{}: {message}", place.as_ref().map(|p| format!(", {p}")).unwrap_or_default())]
    InputRow {
        /// The input file.
        path: PathBuf,
        /// 1-based row number.
        row: u64,
        /// Where in the row: `column 'x'` or `array 'y'`.
        place: Option<String>,
        /// What is wrong.
        message: String,
    },

    /// A file of the run that fails a check on read (magic, version, size, digest).
    #[error("{path}: corrupt: {message}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Which check failed.
        message: String,
    },

    /// A model preset or a flag that makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A command-line flag whose value is wrong whatever the files say (out of range, or at
    /// odds with another flag); the message names the flag. The binary exits 2 for it, as for
    /// any usage error.
    #[error("{0}")]
    Usage(String),

    /// One setting (a count, a rate, a size) out of its range. The library names the field
    /// (`shards`, `classes`); the binary maps it to its flag.
    #[error("invalid configuration: {}", Error::field_text(field, message))]
    Field {
        /// The setting, as named in `run.json` and the presets (`shards`, `batch_size`).
        field: &'static str,
        /// What is wrong with it, e.g. "must be in 1..=4096, got 0".
        message: String,
    },

    /// A run directory that cannot be opened or used as asked.
    #[error("run {path}: {message}")]
    Run {
        /// The run directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// An unlearning request that cannot be carried out (unknown user, empty request).
    #[error("request: {0}")]
    Request(String),

    /// A checkpoint whose lineage does not match the data it would continue from.
    #[error("shard {shard}, stage {stage}: {message}")]
    Lineage {
        /// The shard.
        shard: usize,
        /// The stage (1-based).
        stage: usize,
        /// What did not match.
        message: String,
    },

    /// Training diverged (a non-finite loss or weight).
    #[error(
        "shard {shard}, stage {stage}: training diverged ({message}); lower the learning rate"
    )]
    Diverged {
        /// The shard.
        shard: usize,
        /// The stage (1-based).
        stage: usize,
        /// What was seen.
        message: String,
    },

    /// A benchmark report or plot that cannot be written.
    #[error("{path}: cannot write the report: {message}")]
    Report {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The ledger of deletion requests is damaged or does not chain.
    #[error("ledger {path}, line {line}: {message}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// 1-based line number of the bad entry.
        line: u64,
        /// What is wrong.
        message: String,
    },

    /// An export that cannot be written as asked (the output exists, the model is too large
    /// for the format).
    #[error("export {path}: {message}")]
    Export {
        /// The output file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The server cannot start or keep serving (the address is taken, the runtime fails).
    #[error("serve {addr}: {message}")]
    Serve {
        /// The address the server listens on, or was asked to.
        addr: String,
        /// What went wrong.
        message: String,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// A corrupt run file at `path`.
    pub fn corrupt(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// A bad input file, optionally with line and column.
    pub fn input(
        path: impl AsRef<Path>,
        line: Option<u64>,
        column: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            line,
            column: column.map(str::to_string),
            message: message.into(),
        }
    }

    /// A bad row `row` (1-based) of an input file without lines, at `place` (`column 'x'`,
    /// `array 'y'`) when the problem is in one.
    pub fn input_row(
        path: impl AsRef<Path>,
        row: u64,
        place: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::InputRow {
            path: path.as_ref().to_path_buf(),
            row,
            place,
            message: message.into(),
        }
    }

    /// The setting `field` out of its range.
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        Error::Field {
            field,
            message: message.into(),
        }
    }

    /// `field` and its message as one phrase: `shards must be in …`, or `layers[2] (conv2d): …`
    /// when the message starts with an index. `field` may be a flag or a preset file's field.
    pub fn field_text(field: &str, message: &str) -> String {
        let sep = if message.starts_with('[') { "" } else { " " };
        format!("{field}{sep}{message}")
    }

    /// Refuse `value` for `field` unless it lies in `range`.
    pub fn check_range(
        field: &'static str,
        value: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<()> {
        if range.contains(&value) {
            return Ok(());
        }
        Err(Error::field(
            field,
            format!(
                "must be in {}..={}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }

    /// A problem with the run directory at `path`.
    pub fn run(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Run {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

/// Attach a path to an `std::io::Result`.
pub(crate) trait IoContext<T> {
    /// Turn an I/O error into [`Error::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
