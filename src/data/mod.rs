//! Data in and out: CSV and IDX ingest, the checksummed row store, user keys.
//!
//! Ingest turns a CSV or IDX file into rows with an identity (user key, position among the
//! user's rows, tag), refusing bad input with the file, line and column; the row store keeps a
//! shard's rows in one checksummed file.

pub mod csv;
pub mod idx;
pub mod keys;
pub mod rows;

pub use idx::{Role, UserRule};
pub use keys::{Secret, UserKey};
pub use rows::{Rows, SliceIndex};
pub mod ingest;

use crate::error::{Error, Result};
use std::path::Path;

/// Read a labelled file of rows with users: a CSV with a user column, a CSV without one and a
/// `users` rule, or an IDX images file (its labels file beside it or `labels`) and a `users`
/// rule. The rule assigns users under `seed`, with ids prefixed by `role` (see [`idx`]).
pub fn read_labelled(
    path: &Path,
    labels: Option<&Path>,
    columns: &csv::Columns,
    users: Option<&UserRule>,
    seed: u64,
    role: Role,
) -> Result<csv::Table> {
    if idx::is_idx(path)? {
        let rule = users.ok_or_else(|| {
            Error::input(
                path,
                None,
                None,
                "an IDX file has no user column: pass --users uniform:U or --users zipf:U:s",
            )
        })?;
        return idx::read_idx_table(path, labels, rule, seed, role);
    }
    if let Some(l) = labels {
        return Err(Error::Config(format!(
            "--labels {} is for IDX images files, and {} is a CSV file",
            l.display(),
            path.display()
        )));
    }
    let Some(rule) = users else {
        return csv::read_csv(path, columns, csv::Need::Required, csv::Need::Required);
    };
    let mut table = csv::read_csv(path, columns, csv::Need::Optional, csv::Need::Required)?;
    if table.user_ids.is_some() {
        return Err(Error::input(
            path,
            Some(1),
            Some(&columns.user),
            "the file has a user column; --users is for data without one",
        ));
    }
    table.user_ids = Some(rule.assign(seed, role, table.len()));
    Ok(table)
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
