//! Which kind of file an input is, told from its first bytes (after gunzipping), never from
//! its name: text (CSV, TSV), Parquet, NumPy `.npy` and `.npz`, and IDX are read; other formats
//! are named in the refusal, so an HDF5 or pickle file is not reported as a CSV with bad UTF-8.

use crate::data::csv::open_maybe_gz;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// How many leading bytes are looked at.
const SNIFF: usize = 4096;

/// What a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text: read as CSV or TSV.
    Csv,
    /// Starts with two zero bytes, as every IDX file does (its header is checked on read).
    Idx,
    /// Starts with `PAR1`.
    Parquet,
    /// Starts with `\x93NUMPY`.
    Npy,
    /// A zip archive (`PK\x03\x04`, or `PK\x05\x06` when empty): read as NumPy `.npz`.
    Npz,
    /// Another format, named for the message (`"HDF5"`, `"Python pickle"`, `"binary"`).
    Other(&'static str),
}

/// What sisa reads, for messages that refuse a file.
pub const READ_FORMATS: &str = "sisa reads CSV and TSV files (text with a header), Parquet, \
     NumPy .npy and .npz, and IDX images files (`*-images-idx3-ubyte`); text, .npy and IDX may \
     be gzipped";

/// Tell the format of `path` from its first bytes.
pub fn sniff(path: &Path) -> Result<Format> {
    let mut head = Vec::with_capacity(SNIFF);
    open_maybe_gz(path)?
        .take(SNIFF as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    Ok(from_head(Some(path), &head))
}

/// The format of a file (named `path`, when it has a name) whose first bytes, after
/// gunzipping, are `head`.
pub fn from_head(path: Option<&Path>, head: &[u8]) -> Format {
    let format = classify(head);
    // Text under an IDX file's name (`…-idx3-ubyte`) is a damaged IDX file far more often than
    // a CSV someone named so: say that, rather than complain about its CSV header.
    if format == Format::Csv && path.is_some_and(named_like_idx) {
        return Format::Other("damaged IDX (its name is an IDX file's, its first bytes are text)");
    }
    format
}

/// How many leading bytes [`from_head`] wants to see.
pub const SNIFF_BYTES: usize = SNIFF;

/// Whether the file name follows the IDX convention: `…-idx<d>-ubyte`, maybe `.gz`.
fn named_like_idx(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(name);
    name.strip_suffix("-ubyte")
        .and_then(|n| n.get(n.len().saturating_sub(5)..))
        .is_some_and(|tail| tail.starts_with("-idx") && tail.as_bytes()[4].is_ascii_digit())
}

/// The format of a file whose first bytes (after gunzipping) are `head`.
pub fn classify(head: &[u8]) -> Format {
    if head.starts_with(b"PAR1") {
        return Format::Parquet;
    }
    if head.starts_with(b"\x93NUMPY") {
        return Format::Npy;
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Format::Npz;
    }
    let known: [(&[u8], &'static str); 3] = [
        (b"\x89HDF\r\n\x1a\n", "HDF5"),
        (b"ARROW1", "Arrow IPC"),
        (b"\x80", "Python pickle"),
    ];
    if head.len() >= 2 && head[0] == 0 && head[1] == 0 {
        return Format::Idx;
    }
    if let Some((_, name)) = known.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Format::Other(name);
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // Cut in the middle of a character by the sniffing window: still text.
        Err(e) => e.error_len().is_none(),
    };
    if !text || head.contains(&0) {
        return Format::Other("binary");
    }
    Format::Csv
}

/// The refusal for a file of format `other` where `wanted` was expected.
pub fn unreadable(path: &Path, other: Format, wanted: &str) -> Error {
    if matches!(other, Format::Other(n) if n.starts_with("damaged IDX")) {
        return Error::input(
            path,
            None,
            None,
            format!(
                "its name is an IDX file's, but its first bytes are text, not an IDX header: \
                 the file is damaged or misnamed; {READ_FORMATS}"
            ),
        );
    }
    let what = match other {
        Format::Csv => "a CSV file".to_string(),
        Format::Idx => "an IDX file".to_string(),
        Format::Parquet => "a Parquet file".to_string(),
        Format::Npy => "a NumPy .npy file".to_string(),
        Format::Npz => "a NumPy .npz (zip) file".to_string(),
        Format::Other("binary") => "a binary file of a kind sisa does not read".to_string(),
        Format::Other(name) => format!("a {name} file, which sisa does not read yet"),
    };
    Error::input(
        path,
        None,
        None,
        format!("this is {what}, where {wanted} was expected; {READ_FORMATS}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_under_an_idx_name_is_a_damaged_idx_file() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["x-images-idx3-ubyte", "y-labels-idx1-ubyte.gz"] {
            let p = dir.path().join(name);
            std::fs::write(&p, b"}").unwrap();
            assert!(matches!(sniff(&p).unwrap(), Format::Other(n) if n.starts_with("damaged IDX")));
        }
        let p = dir.path().join("x-idx3.csv");
        std::fs::write(&p, b"user_id,label,a\n").unwrap();
        assert_eq!(sniff(&p).unwrap(), Format::Csv);
    }

    #[test]
    fn formats_are_told_by_content() {
        assert_eq!(classify(b"user_id,label,x\nu,1,2\n"), Format::Csv);
        assert_eq!(classify(b"\0\0\x08\x03\0\0\0\x01"), Format::Idx);
        assert_eq!(classify(b"\0\0\x42\x03"), Format::Idx);
        assert_eq!(classify(b"PAR1\x15\x04"), Format::Parquet);
        assert_eq!(classify(b"\x93NUMPY\x01\x00"), Format::Npy);
        assert_eq!(classify(b"PK\x03\x04"), Format::Npz);
        assert_eq!(classify(b"\x89HDF\r\n\x1a\n"), Format::Other("HDF5"));
        assert_eq!(classify(b"a,b\n\xff\xfe"), Format::Other("binary"));
        assert_eq!(classify(b"a,b\n1,\0"), Format::Other("binary"));
        // A multi-byte character cut by the window is still text.
        assert_eq!(
            classify("a,é".as_bytes().split_last().unwrap().1),
            Format::Csv
        );
    }
}
