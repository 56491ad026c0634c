//! Data in and out: CSV and IDX ingest, class labels, the checksummed row store, user keys.
//!
//! Ingest turns a CSV or IDX file into rows with an identity (user key, position among the
//! user's rows, tag), refusing bad input with the file, line and column; every label goes
//! through [`Classes`] (integers or names) to its class index; the row store keeps a shard's
//! rows in one checksummed file.

pub mod batch;
pub mod bundled;
pub mod classes;
pub mod csv;
pub mod format;
pub mod idx;
pub mod keys;
pub mod prior;
pub mod rows;

pub use classes::{Classes, Label};
pub use idx::{Role, UserRule};
pub use keys::{Secret, UserKey};
pub use prior::Priors;
pub use rows::{RowId, Rows, SliceIndex};
pub mod ingest;

use crate::error::{Error, Result};
use std::path::Path;

/// One labelled row of a file, as [`for_each_labelled`] hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Labelled<'a> {
    /// 1-based line (CSV) or record number (IDX), for messages.
    pub line: u64,
    /// The row's user id.
    pub user: &'a str,
    /// The row's label, as the file holds it (an integer or a name): [`Classes`] or a
    /// [`classes::Learner`] turns it into a class index.
    pub label: Label<'a>,
    /// The row's features.
    pub features: &'a [f32],
}

/// What a labelled stream hands over.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// Before the rows, from formats that know them up front (IDX): the feature count and
    /// every row's user id, in order.
    Start {
        /// Features per row.
        dim: usize,
        /// User id of every row.
        users: &'a [String],
    },
    /// One row.
    Row(Labelled<'a>),
}

/// Stream a labelled file of rows with users, without holding it in memory: a CSV with a
/// user column, a CSV without one and a `users` rule, or an IDX images file (its labels file
/// beside it or `labels`) and a `users` rule. The rule assigns users under `seed`, with ids
/// prefixed by `role` (see [`idx`]). Returns the feature names.
pub fn for_each_labelled(
    path: &Path,
    labels: Option<&Path>,
    columns: &csv::Columns,
    users: Option<&UserRule>,
    seed: u64,
    role: Role,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    if format::sniff(path)? == format::Format::Idx {
        let rule = users.ok_or_else(|| {
            Error::input(
                path,
                None,
                None,
                "an IDX file has no user column: pass --users uniform:U or --users zipf:U:s",
            )
        })?;
        return idx::for_each_labelled(path, labels, rule, seed, role, on_event);
    }
    if let Some(l) = labels {
        return Err(Error::Config(format!(
            "--labels {} is for IDX images files, and {} is a CSV file",
            l.display(),
            path.display()
        )));
    }
    fn label<'r>(r: &csv::Record<'r>) -> Label<'r> {
        Label::Text(r.label.expect("the label column is required"))
    }
    let Some(rule) = users else {
        return csv::for_each_row(
            path,
            columns,
            csv::Need::Required,
            csv::Need::Required,
            |r| {
                on_event(Event::Row(Labelled {
                    line: r.line,
                    user: r.user.expect("the user column is required"),
                    label: label(&r),
                    features: r.features,
                }))
            },
        );
    };
    let assigner = idx::Assigner::new(rule, seed, role);
    let mut index = 0u64;
    csv::for_each_row(
        path,
        columns,
        csv::Need::Optional,
        csv::Need::Required,
        |r| {
            if r.user.is_some() {
                return Err(Error::input(
                    path,
                    Some(1),
                    Some(&columns.user),
                    "the file has a user column; --users is for data without one",
                ));
            }
            let user = assigner.id(index);
            index += 1;
            on_event(Event::Row(Labelled {
                line: r.line,
                user: &user,
                label: label(&r),
                features: r.features,
            }))
        },
    )
}

/// Read a labelled file of rows with users (see [`for_each_labelled`]) into a table; its labels
/// must be integers ([`Classes::any_index`]).
pub fn read_labelled(
    path: &Path,
    labels: Option<&Path>,
    columns: &csv::Columns,
    users: Option<&UserRule>,
    seed: u64,
    role: Role,
) -> Result<csv::Table> {
    let mut ids = Vec::new();
    let mut label_values = Vec::new();
    let mut x = Vec::new();
    let mut lines = Vec::new();
    let any = Classes::any_index();
    let feature_names = for_each_labelled(path, labels, columns, users, seed, role, |e| {
        match e {
            Event::Start { dim, users } => {
                ids.reserve_exact(users.len());
                label_values.reserve_exact(users.len());
                lines.reserve_exact(users.len());
                x.reserve_exact(users.len() * dim);
            }
            Event::Row(r) => {
                let at = classes::At {
                    path,
                    line: r.line,
                    column: &columns.label,
                };
                ids.push(r.user.to_string());
                label_values.push(any.index(r.label, at)?);
                x.extend_from_slice(r.features);
                lines.push(r.line);
            }
        }
        Ok(())
    })?;
    Ok(csv::Table {
        path: path.to_path_buf(),
        feature_names,
        user_ids: Some(ids),
        labels: Some(label_values),
        x,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_without_users_gets_them_from_a_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "label,x\n1,0.5\n0,2\n1,3\n").unwrap();
        let cols = csv::Columns::default();
        let rule = UserRule::Uniform { users: 2 };
        let t = read_labelled(&p, None, &cols, Some(&rule), 3, Role::HeldOut).unwrap();
        assert_eq!(t.user_ids, Some(rule.assign(3, Role::HeldOut, 3)));
        // Without a rule the user column is required, as before.
        let e = read_labelled(&p, None, &cols, None, 3, Role::Train).unwrap_err();
        assert!(e.to_string().contains("no user id column"), "{e}");
        // A rule for a file that has users, or labels for a CSV, is refused.
        let q = dir.path().join("b.csv");
        std::fs::write(&q, "user_id,label,x\nu,1,0.5\n").unwrap();
        let e = read_labelled(&q, None, &cols, Some(&rule), 3, Role::Train).unwrap_err();
        assert!(
            e.to_string().contains("--users is for data without one"),
            "{e}"
        );
        let e = read_labelled(&q, Some(&p), &cols, None, 3, Role::Train).unwrap_err();
        assert!(e.to_string().contains("--labels"), "{e}");
    }
}
