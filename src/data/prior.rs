//! Deletion priors: how likely each user is to ask to be forgotten.
//!
//! A prior file is a CSV with a header naming the run's user column (`user_id` by default) and
//! `p`, one user per line, `p` in [0, 1]. Users not in the file have prior 0. A user whose
//! prior is at least the run's threshold is a *likely requester* and is placed where forgetting
//! is cheap ([`crate::plan::Rules::place`]). The placement depends on the user's own prior
//! only, never on other users', so a run trained from scratch with the same file places every
//! remaining user the same way.

use crate::error::{Error, IoContext, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest number of users a prior file may list.
pub const MAX_PRIOR_USERS: usize = 1 << 24;

/// Per-user deletion priors and the threshold that makes a user a likely requester.
#[derive(Clone, Debug, PartialEq)]
pub struct Priors {
    /// The file they came from, for messages.
    pub path: PathBuf,
    by_user: HashMap<String, f64>,
    /// Users with a prior of at least this are likely requesters.
    pub threshold: f64,
}

impl Priors {
    /// Read `path` (see the module doc), with `user_column` naming the user id column.
    pub fn read(path: &Path, user_column: &str, threshold: f64) -> Result<Priors> {
        check_threshold(threshold)?;
        let file = std::fs::File::open(path).at(path)?;
        let mut reader = ::csv::ReaderBuilder::new()
            .trim(::csv::Trim::All)
            .from_reader(std::io::BufReader::new(file));
        let bad =
            |line: u64, column: Option<&str>, m: String| Error::input(path, Some(line), column, m);
        let header = reader
            .headers()
            .map_err(|e| bad(1, None, format!("unreadable header: {e}")))?
            .clone();
        let find = |name: &str| header.iter().position(|h| h == name);
        let user = find(user_column).ok_or_else(|| {
            bad(
                1,
                None,
                format!(
                    "no user id column named '{user_column}' (the header must name it and 'p')"
                ),
            )
        })?;
        let p = find("p").ok_or_else(|| bad(1, None, "no column named 'p'".into()))?;
        let mut by_user = HashMap::new();
        for (i, record) in reader.records().enumerate() {
            let line = i as u64 + 2;
            let record = record.map_err(|e| bad(line, None, format!("unreadable row: {e}")))?;
            let id = record.get(user).unwrap_or_default();
            if id.is_empty() {
                return Err(bad(line, Some(user_column), "empty user id".into()));
            }
            let text = record.get(p).unwrap_or_default();
            let value = parse_prior(text).map_err(|m| bad(line, Some("p"), m))?;
            if by_user.insert(id.to_string(), value).is_some() {
                return Err(bad(
                    line,
                    Some(user_column),
                    format!("user '{id}' is listed twice"),
                ));
            }
            if by_user.len() > MAX_PRIOR_USERS {
                return Err(bad(
                    line,
                    None,
                    format!("more than {MAX_PRIOR_USERS} users"),
                ));
            }
        }
        Ok(Priors {
            path: path.to_path_buf(),
            by_user,
            threshold,
        })
    }

    /// Read the priors from column `column` of the CSV or TSV `input` (its user column
    /// `user_column`): every row of a user must carry the same prior. The column is then not
    /// a feature ([`crate::data::csv::Columns::ignore`]). A file without the column gives
    /// `None` unless `required`.
    pub fn from_column(
        input: &crate::data::InputSpec,
        user_column: &str,
        column: &str,
        threshold: f64,
        required: bool,
    ) -> Result<Option<Priors>> {
        check_threshold(threshold)?;
        let path = input.path();
        let (stream, delimiter) = crate::data::source::open_text(input, "a deletion prior column")?;
        let mut reader = ::csv::ReaderBuilder::new()
            .trim(::csv::Trim::All)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(stream);
        let bad =
            |line: u64, column: Option<&str>, m: String| Error::input(path, Some(line), column, m);
        let header = reader
            .headers()
            .map_err(|e| bad(1, None, format!("unreadable header: {e}")))?
            .clone();
        let find = |name: &str, role: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                bad(
                    1,
                    Some(name),
                    format!("no {role} column named '{name}' in the header"),
                )
            })
        };
        let user = find(user_column, "user id")?;
        if !required && !header.iter().any(|h| h == column) {
            return Ok(None);
        }
        let p = find(column, "deletion prior")?;
        let mut by_user: HashMap<String, f64> = HashMap::new();
        for (i, record) in reader.records().enumerate() {
            let line = i as u64 + 2;
            let record = record.map_err(|e| bad(line, None, format!("unreadable row: {e}")))?;
            let (Some(id), Some(text)) = (record.get(user), record.get(p)) else {
                continue; // a short row: the training reader names it
            };
            let value = parse_prior(text).map_err(|m| bad(line, Some(column), m))?;
            match by_user.get(id) {
                Some(&v) if v.to_bits() != value.to_bits() => {
                    return Err(bad(
                        line,
                        Some(column),
                        format!("user '{id}' has prior {v} on an earlier row and {value} here; a user has one prior"),
                    ))
                }
                Some(_) => {}
                None => {
                    if by_user.len() >= MAX_PRIOR_USERS {
                        return Err(bad(line, None, format!("more than {MAX_PRIOR_USERS} users")));
                    }
                    by_user.insert(id.to_string(), value);
                }
            }
        }
        Ok(Some(Priors {
            path: path.to_path_buf(),
            by_user,
            threshold,
        }))
    }

    /// Priors from a map (for benchmarks and tests).
    pub fn from_map(by_user: HashMap<String, f64>, threshold: f64) -> Priors {
        Priors {
            path: PathBuf::from("<priors>"),
            by_user,
            threshold,
        }
    }

    /// The prior of user `id` (0 when the file does not list them).
    pub fn prior(&self, id: &str) -> f64 {
        self.by_user.get(id).copied().unwrap_or(0.0)
    }

    /// Whether user `id` is a likely requester.
    pub fn likely(&self, id: &str) -> bool {
        self.prior(id) >= self.threshold
    }

    /// Number of users listed.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    /// True when no user is listed.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

fn check_threshold(threshold: f64) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(Error::field(
            "risk_threshold",
            format!("must be in (0, 1], not {threshold}"),
        ));
    }
    Ok(())
}

/// A prior's text as a probability in [0, 1].
fn parse_prior(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is not a probability in [0, 1]"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Priors> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("priors.csv");
        std::fs::write(&p, text).unwrap();
        Priors::read(&p, "user_id", 0.5)
    }

    #[test]
    fn reads_priors_from_a_column_of_the_training_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.csv");
        std::fs::write(
            &p,
            "user_id,label,p,a\nu1,0,0.9,1\nu2,1,0.1,2\nu1,1,0.9,3\n",
        )
        .unwrap();
        let pr = Priors::from_column(&crate::data::InputSpec::file(&p), "user_id", "p", 0.5, true)
            .unwrap()
            .unwrap();
        assert!(pr.likely("u1") && !pr.likely("u2") && pr.len() == 2);
        std::fs::write(&p, "user_id,label,p,a\nu1,0,0.9,1\nu1,1,0.8,3\n").unwrap();
        let e = Priors::from_column(&crate::data::InputSpec::file(&p), "user_id", "p", 0.5, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3, column 'p'") && e.contains("one prior"),
            "{e}"
        );
        let e = Priors::from_column(&crate::data::InputSpec::file(&p), "user_id", "q", 0.5, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no deletion prior column named 'q'"), "{e}");
        assert_eq!(
            Priors::from_column(
                &crate::data::InputSpec::file(&p),
                "user_id",
                "q",
                0.5,
                false
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn reads_priors_and_names_bad_lines() {
        let pr = read("user_id,p\nu1,0.9\nu2, 0.1\n").unwrap();
        assert!(pr.likely("u1") && !pr.likely("u2") && !pr.likely("u3"));
        assert_eq!(pr.prior("u2"), 0.1);
        for (text, want) in [
            ("user,p\nu1,0.9\n", "no user id column named 'user_id'"),
            ("user_id,q\nu1,0.9\n", "no column named 'p'"),
            (
                "user_id,p\nu1,x\n",
                "line 2, column 'p': 'x' is not a number",
            ),
            (
                "user_id,p\nu1,0.1\nu2,1.5\n",
                "line 3, column 'p': 1.5 is not",
            ),
            (
                "user_id,p\nu1,0.1\nu1,0.2\n",
                "line 3, column 'user_id': user 'u1' is listed twice",
            ),
            ("user_id,p\n,0.1\n", "empty user id"),
        ] {
            let e = read(text).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("priors.csv"),
                "{text:?}: {e}"
            );
        }
    }
}
