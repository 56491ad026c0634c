//! Data in and out: ingest of every input format, the checksummed row store, user keys.
//!
//! Ingest turns an input (CSV, TSV, Parquet, NumPy, IDX; see [`source`]) into rows with an
//! identity (user key, position among the user's rows, tag), refusing bad input with the file,
//! line or row and column; every label goes through [`Classes`] (integers or names) to its
//! class index; the row store keeps a shard's rows in one checksummed file.

pub mod batch;
pub mod bundled;
pub mod classes;
pub mod columns;
pub mod csv;
pub mod format;
pub mod idx;
pub mod keys;
pub mod npy;
pub mod parquet;
pub mod prior;
pub mod rows;
pub mod source;

pub use classes::{Classes, Label};
pub use columns::{Features, Need, Want};
pub use idx::{Role, UserRule};
pub use keys::{Secret, UserKey};
pub use prior::Priors;
pub use rows::{RowId, Rows, SliceIndex};
pub use source::{Delimiter, InputSpec, Users};
pub mod ingest;

use crate::error::Result;

/// One labelled row of a file, as [`for_each_labelled`] hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Labelled<'a> {
    /// 1-based line (text) or row (Parquet, NumPy, IDX), for messages.
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
    /// Before the rows, from formats that know them up front (IDX, NumPy): the feature count
    /// and every row's user id, in order.
    Start {
        /// Features per row.
        dim: usize,
        /// User id of every row.
        users: &'a [String],
    },
    /// One row.
    Row(Labelled<'a>),
}

/// Stream the labelled rows of `input`, every row with a user and a label, without holding
/// them in memory (see [`source::for_each_row`]); `features` says which. Users that a rule
/// gives are drawn under `seed` with ids prefixed by `role` (see [`idx`]). Returns the
/// feature names.
pub fn for_each_labelled(
    input: &InputSpec,
    features: Features<'_>,
    seed: u64,
    role: Role,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    let want = Want {
        user: Need::Required,
        label: Need::Required,
        features,
        classes: None,
    };
    source::for_each_row(input, &want, seed, role, |item| match item {
        source::Item::Start { dim, users } => on_event(Event::Start { dim, users }),
        source::Item::Row(r) => on_event(Event::Row(Labelled {
            line: r.line,
            user: r
                .user
                .expect("every reader hands over the user it was required to"),
            label: r
                .label
                .expect("every reader hands over the label it was required to"),
            features: r.features,
        })),
    })
}

/// Read the labelled rows of `input` (see [`for_each_labelled`]) into a table; its labels
/// must be integers ([`Classes::any_index`]).
pub fn read_labelled(
    input: &InputSpec,
    features: Features<'_>,
    seed: u64,
    role: Role,
) -> Result<csv::Table> {
    let want = Want {
        user: Need::Required,
        label: Need::Required,
        features,
        classes: None,
    };
    source::read_table(input, &want, seed, role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_without_users_gets_them_from_a_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "label,x\n1,0.5\n0,2\n1,3\n").unwrap();
        let rule = UserRule::Uniform { users: 2 };
        let ruled = InputSpec::file(&p).with_users(Users::Rule(rule));
        let t = read_labelled(&ruled, Features::All, 3, Role::HeldOut).unwrap();
        assert_eq!(t.user_ids, Some(rule.assign(3, Role::HeldOut, 3)));
        // Without a rule the user column is required, as before.
        let e = read_labelled(&InputSpec::file(&p), Features::All, 3, Role::Train).unwrap_err();
        assert!(e.to_string().contains("no user id column"), "{e}");
        // A rule for a file that has users, or labels for a CSV, is refused.
        let q = dir.path().join("b.csv");
        std::fs::write(&q, "user_id,label,x\nu,1,0.5\n").unwrap();
        let ruled = InputSpec::file(&q).with_users(Users::Rule(rule));
        let e = read_labelled(&ruled, Features::All, 3, Role::Train).unwrap_err();
        assert!(e.to_string().contains("--users"), "{e}");
        let labelled = InputSpec::file(&q).with_labels(Some(p.clone()));
        let e = read_labelled(&labelled, Features::All, 3, Role::Train).unwrap_err();
        assert!(e.to_string().contains("--labels"), "{e}");
    }
}
