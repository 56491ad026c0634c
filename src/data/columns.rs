//! Which column of a file with named columns (CSV, TSV, Parquet) is what: the user id, the
//! label, the features. The mapping is computed once from the header, so a row costs
//! O(features) to pick apart whatever the order of the file's columns.
//!
//! Training takes every column that is not the user, label or prior column as a feature, in
//! file order. A file read against a run (`predict`, `eval`, `add`, `audit`, a held-out file)
//! has its features found by name, in any order: columns the run does not use are ignored
//! (said once on stderr), and a feature the run needs and the file lacks is named in the error.

use crate::data::classes::{Classes, Label};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Names of the special columns. Defaults: `user_id` and `label`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    /// Column holding the owning user's id.
    pub user: String,
    /// Column holding the integer class label.
    pub label: String,
    /// A column that is not a feature when a file has it (the deletion prior's column).
    pub ignore: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            user: "user_id".into(),
            label: "label".into(),
            ignore: None,
        }
    }
}

/// What a caller needs of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The column must be present.
    Required,
    /// The column is used when present.
    Optional,
    /// The file must not have the column: its values come from elsewhere (a user rule, a
    /// labels file).
    Forbidden,
}

/// Which columns are features.
#[derive(Clone, Copy, Debug)]
pub enum Features<'a> {
    /// Every column that is not the user, label or ignored column, in file order (training).
    All,
    /// These features, found by name in any order (a file read against a run); files without
    /// names (NumPy) must hold exactly this many, in this order.
    Named(&'a [String]),
}

/// What a caller wants from an input file.
#[derive(Clone, Copy, Debug)]
pub struct Want<'a> {
    /// The user id.
    pub user: Need,
    /// The label.
    pub label: Need,
    /// The features.
    pub features: Features<'a>,
    /// When set, every label is read as one of these classes (a run's, by index or name)
    /// and one that is not is refused; see [`crate::data::source::read_table`].
    pub classes: Option<&'a Classes>,
}

/// One row of an input file, as handed over by a reader.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// 1-based line (text) or row (Parquet, NumPy), for messages.
    pub line: u64,
    /// The user id, when the file has one.
    pub user: Option<&'a str>,
    /// The label as the file holds it (an integer, or a field's text), when it has one;
    /// [`Classes`] turns it into a class index.
    pub label: Option<Label<'a>>,
    /// The features, in the order the caller asked for.
    pub features: &'a [f32],
}

/// The columns of one file mapped to what a caller wants.
#[derive(Clone, Debug)]
pub struct ColumnMap {
    /// Index of the user column.
    pub user: Option<usize>,
    /// Index of the label column.
    pub label: Option<usize>,
    /// Index of each feature's column, in the order features are handed over.
    pub features: Vec<usize>,
    /// The feature names, in that order.
    pub names: Vec<String>,
}

impl ColumnMap {
    /// Map the columns `header` of the file at `path`. `line` is the header's line (text
    /// files) for messages; `what` says where the names come from ("the header", "the
    /// Parquet schema").
    pub fn new(
        path: &Path,
        header: &[String],
        columns: &Columns,
        want: &Want<'_>,
        line: Option<u64>,
        what: &str,
    ) -> Result<ColumnMap> {
        let bad = |column: Option<&str>, m: String| Error::input(path, line, column, m);
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(header.len());
        for (i, name) in header.iter().enumerate() {
            if name.is_empty() {
                return Err(bad(None, format!("a name in {what} is empty")));
            }
            if at.insert(name.as_str(), i).is_some() {
                return Err(bad(Some(name), "duplicate column name".into()));
            }
        }
        let find = |name: &str, need: Need, role: &str| -> Result<Option<usize>> {
            match (at.get(name).copied(), need) {
                (None, Need::Required) => Err(bad(
                    Some(name),
                    format!("no {role} column named '{name}' in {what}"),
                )),
                (Some(_), Need::Forbidden) if role == "user id" => Err(bad(
                    Some(name),
                    "the file has a user column; --users and --user-ids are for data without one"
                        .into(),
                )),
                (Some(_), Need::Forbidden) => Err(bad(
                    Some(name),
                    "the file has a label column; --labels is for data without one".into(),
                )),
                (i, _) => Ok(i.filter(|_| need != Need::Forbidden)),
            }
        };
        let user = find(&columns.user, want.user, "user id")?;
        let label = find(&columns.label, want.label, "label")?;
        let ignored = columns.ignore.as_deref().and_then(|c| at.get(c).copied());
        let special = |i: usize| {
            header[i] == columns.user || header[i] == columns.label || Some(i) == ignored
        };
        let (features, names) = match want.features {
            Features::All => {
                let f: Vec<usize> = (0..header.len()).filter(|&i| !special(i)).collect();
                let names = f.iter().map(|&i| header[i].clone()).collect();
                (f, names)
            }
            Features::Named(expected) => {
                let missing: Vec<&str> = expected
                    .iter()
                    .filter(|n| !at.contains_key(n.as_str()))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(bad(
                        None,
                        format!(
                            "missing {} of the {} feature columns: {}",
                            missing.len(),
                            expected.len(),
                            name_list(&missing)
                        ),
                    ));
                }
                let f: Vec<usize> = expected.iter().map(|n| at[n.as_str()]).collect();
                let used: HashSet<usize> = f.iter().copied().collect();
                let extra: Vec<&str> = (0..header.len())
                    .filter(|&i| !used.contains(&i) && !special(i))
                    .map(|i| header[i].as_str())
                    .collect();
                if !extra.is_empty() {
                    eprintln!(
                        "sisa: note: {}: ignoring {} column(s) the run does not use: {}",
                        path.display(),
                        extra.len(),
                        name_list(&extra)
                    );
                }
                (f, expected.to_vec())
            }
        };
        if features.is_empty() {
            return Err(bad(None, "no feature columns".into()));
        }
        Ok(ColumnMap {
            user,
            label,
            features,
            names,
        })
    }
}

/// Names for a message: quoted, the first ten, then how many more.
pub fn name_list(names: &[&str]) -> String {
    let mut out: Vec<String> = names.iter().take(10).map(|n| format!("'{n}'")).collect();
    if names.len() > 10 {
        out.push(format!("and {} more", names.len() - 10));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn features_are_found_by_name_in_any_order() {
        let p = Path::new("f.csv");
        let header = names(&["b", "label", "x", "a", "user_id"]);
        let run = names(&["a", "b"]);
        let want = Want {
            user: Need::Optional,
            label: Need::Required,
            features: Features::Named(&run),
            classes: None,
        };
        let m = ColumnMap::new(
            p,
            &header,
            &Columns::default(),
            &want,
            Some(1),
            "the header",
        )
        .unwrap();
        assert_eq!(m.features, [3, 0]);
        assert_eq!((m.user, m.label), (Some(4), Some(1)));
        let all = Want {
            features: Features::All,
            ..want
        };
        let m =
            ColumnMap::new(p, &header, &Columns::default(), &all, Some(1), "the header").unwrap();
        assert_eq!(m.names, ["b", "x", "a"]);
        let run = names(&["a", "c", "d"]);
        let want = Want {
            features: Features::Named(&run),
            ..want
        };
        let e = ColumnMap::new(
            p,
            &header,
            &Columns::default(),
            &want,
            Some(1),
            "the header",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("missing 2 of the 3 feature columns: 'c', 'd'"),
            "{e}"
        );
        let forbid = Want {
            user: Need::Forbidden,
            ..all
        };
        let e = ColumnMap::new(
            p,
            &header,
            &Columns::default(),
            &forbid,
            Some(1),
            "the header",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--users"), "{e}");
    }
}
