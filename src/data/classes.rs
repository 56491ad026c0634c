//! Class labels: from what a file holds (an integer or a name) to a class index.
//!
//! Every reader hands a row's label over as a [`Label`]: an integer (IDX, an integer column)
//! or the text of the field (CSV). [`Classes`] is the one place that turns a label into a class
//! index, for a run whose labels are integers (the index is the value) or names (the index is
//! the name's position among the run's class names, sorted in byte order). [`Learner`] finds a
//! new run's classes while its training rows stream past, handing out provisional ids that
//! [`Learned::relabel`] turns into class indices once every name has been seen.
//!
//! The rule: a training file whose labels are all non-negative integers (`3`, `3.0`, `1e2`) is
//! integer-labelled, its classes `0..=max`; any other label (`cat`, `-1`, `1.5`) makes every
//! label a name, and the classes are the distinct names, sorted. Integer labels behave exactly
//! as they did before names existed.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest integer label accepted; keeps a typo from allocating a huge output layer.
pub const MAX_LABEL: u32 = 65_535;

/// Most classes a run has: one more than the largest integer label, and the most names.
pub const MAX_CLASSES: usize = MAX_LABEL as usize + 1;

/// Longest class name, in bytes: names are kept in `run.json` and sent with every answer.
pub const MAX_NAME_BYTES: usize = 256;

/// One row's label as a reader found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label<'a> {
    /// An integer (an IDX labels file). Under class names it stands for its decimal text.
    Index(u32),
    /// The text of the label field, as written (a CSV field).
    Text(&'a str),
}

/// Where a label was read, for messages: the file, its line (or record) and the column.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    /// The input file.
    pub path: &'a Path,
    /// 1-based line, or record number.
    pub line: u64,
    /// The label column's name.
    pub column: &'a str,
}

impl At<'_> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::input(self.path, Some(self.line), Some(self.column), message)
    }
}

/// The value of an integer label: `Some(Ok(v))` for a non-negative integer up to
/// [`MAX_LABEL`] (`3`, `3.0`, `1e2`), `Some(Err(..))` for a larger one, `None` for any other
/// text (a name).
fn integer(text: &str) -> Option<std::result::Result<u32, String>> {
    let t = text.trim();
    let too_large = || Err(format!("label {t} is larger than {MAX_LABEL}"));
    if let Ok(v) = t.parse::<i64>() {
        if v < 0 {
            return None;
        }
        return Some(if v <= i64::from(MAX_LABEL) {
            Ok(v as u32)
        } else {
            too_large()
        });
    }
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v.fract() == 0.0 && v >= 0.0 => Some(if v <= MAX_LABEL as f64 {
            Ok(v as u32)
        } else {
            too_large()
        }),
        _ => None,
    }
}

/// Why a text cannot be an integer label of a run whose labels are integers.
fn not_integer(text: &str) -> String {
    let t = text.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v < 0.0 => format!("label {t} is negative"),
        _ => format!("label '{t}' is not a non-negative integer"),
    }
}

/// Refuse a text that cannot be a class name: empty, too long, or holding a control
/// character (names are written into CSV and JSON answers as they are).
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty label".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "label of {} bytes: a class name has at most {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "label {name:?} holds a control character, which no class name may"
        ));
    }
    Ok(())
}

/// Refuse a list that cannot be a run's class names: fewer than two, more than
/// [`MAX_CLASSES`], not strictly sorted in byte order, or a name [`check_name`] refuses.
pub fn check_names(names: &[String]) -> std::result::Result<(), String> {
    if names.len() < 2 || names.len() > MAX_CLASSES {
        return Err(format!(
            "{} class names; a run has 2 to {MAX_CLASSES}",
            names.len()
        ));
    }
    for n in names {
        check_name(n).map_err(|m| format!("class name {n:?}: {m}"))?;
        if n.trim() != n {
            return Err(format!("class name {n:?} has surrounding spaces"));
        }
    }
    if let Some(w) = names.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!(
            "class names {:?} and {:?} are not in strictly increasing byte order",
            w[0], w[1]
        ));
    }
    Ok(())
}

/// The first `shown` of `names` quoted and comma-separated, then how many there are in all.
pub fn list(names: &[String], shown: usize) -> String {
    let mut list: Vec<String> = names.iter().take(shown).map(|n| format!("'{n}'")).collect();
    if names.len() > shown {
        list.push(format!("... ({} in all)", names.len()));
    }
    list.join(", ")
}

/// A run's classes: how its labels become class indices, and what each index is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classes {
    count: usize,
    names: Option<Vec<String>>,
    by_name: HashMap<String, u32>,
}

impl Classes {
    /// `count` classes whose labels are the integers `0..count`.
    pub fn indices(count: usize) -> Classes {
        Classes {
            count,
            names: None,
            by_name: HashMap::new(),
        }
    }

    /// Integer labels of any class a run may have (`0..=`[`MAX_LABEL`]): for reading a file
    /// before the class count is known.
    pub fn any_index() -> Classes {
        Classes::indices(MAX_CLASSES)
    }

    /// Classes named `names` (sorted, distinct, as [`check_names`] wants them): the index of
    /// a name is its position.
    pub fn named(names: Vec<String>) -> std::result::Result<Classes, String> {
        check_names(&names)?;
        let by_name = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Ok(Classes {
            count: names.len(),
            names: Some(names),
            by_name,
        })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for no classes (never a run's).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The class names in index order, when the labels are names.
    pub fn names(&self) -> Option<&[String]> {
        self.names.as_deref()
    }

    /// The name of class `index`, when the labels are names.
    pub fn name(&self, index: u32) -> Option<&str> {
        self.names
            .as_ref()
            .and_then(|n| n.get(index as usize))
            .map(String::as_str)
    }

    /// The class index of `label`, read at `at`; refuses a label that is not one of these
    /// classes, naming the file, line and column.
    pub fn index(&self, label: Label<'_>, at: At<'_>) -> Result<u32> {
        match (&self.names, label) {
            (None, Label::Index(v)) => self.check_index(v, at),
            (None, Label::Text(t)) => match integer(t) {
                Some(Ok(v)) => self.check_index(v, at),
                Some(Err(m)) => Err(at.error(m)),
                None => Err(at.error(not_integer(t))),
            },
            (Some(_), Label::Text(t)) => self.index_of_name(t.trim(), at),
            (Some(_), Label::Index(v)) => self.index_of_name(&v.to_string(), at),
        }
    }

    fn check_index(&self, v: u32, at: At<'_>) -> Result<u32> {
        if (v as usize) < self.count {
            return Ok(v);
        }
        Err(at.error(format!(
            "label {v} is not a class of this run (0..{})",
            self.count.saturating_sub(1)
        )))
    }

    fn index_of_name(&self, name: &str, at: At<'_>) -> Result<u32> {
        if let Some(&i) = self.by_name.get(name) {
            return Ok(i);
        }
        let names = self.names.as_deref().unwrap_or_default();
        Err(at.error(format!(
            "label '{name}' is not a class of this run, whose classes are the names {}",
            list(names, 8)
        )))
    }
}

/// What a [`Learner`] found: the classes of a new run's training labels, and how to turn the
/// provisional ids it handed out into class indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The class names, sorted in byte order, when the labels were not all non-negative
    /// integers; `None` when they were (the class index of a label is then its value).
    pub names: Option<Vec<String>>,
    /// The largest class index of a training label.
    pub max_index: u32,
    /// The class index of each provisional id.
    remap: Vec<u32>,
}

impl Learned {
    /// Turn provisional ids into class indices, in place: O(rows).
    pub fn relabel(&self, labels: &mut [u32]) {
        for l in labels {
            *l = self.remap[*l as usize];
        }
    }

    /// How the run's other files (its held-out rows) read labels: by the training names, or
    /// as any integer (the held-out labels may extend the integer classes).
    pub fn classes(&self) -> Classes {
        match &self.names {
            Some(n) => Classes::named(n.clone()).expect("a Learner's names are checked"),
            None => Classes::any_index(),
        }
    }
}

/// One distinct label a [`Learner`] has seen.
#[derive(Clone, Debug)]
struct Seen {
    /// Its text (an integer label's decimal digits).
    text: String,
    /// Its value when it is an integer label, or why it cannot be one (too large).
    integer: Option<std::result::Result<u32, String>>,
    /// The line it was first seen on.
    line: u64,
}

/// Finds a new run's classes from its training labels as they stream past, holding one entry
/// per distinct label (at most [`MAX_CLASSES`]), never the rows.
///
/// [`Learner::learn`] gives each distinct label a provisional id, in order of first
/// appearance; once every label has been seen, [`Learner::finish`] says what the classes are and
/// [`Learned::relabel`] turns the provisional ids stored with the rows into class indices. The
/// classes depend only on the set of labels, never on their order in the file.
#[derive(Debug)]
pub struct Learner {
    path: PathBuf,
    column: String,
    by_text: HashMap<String, u32>,
    by_index: HashMap<u32, u32>,
    seen: Vec<Seen>,
}

impl Learner {
    /// A learner for the labels of `path`, in column `column` (for messages).
    pub fn new(path: &Path, column: &str) -> Learner {
        Learner {
            path: path.to_path_buf(),
            column: column.to_string(),
            by_text: HashMap::new(),
            by_index: HashMap::new(),
            seen: Vec::new(),
        }
    }

    /// The provisional id of the label on `line`; refuses a label that cannot be a class (an
    /// empty one, a name too long or with a control character) and a label beyond the
    /// [`MAX_CLASSES`]-th distinct one.
    pub fn learn(&mut self, label: Label<'_>, line: u64) -> Result<u32> {
        match label {
            Label::Index(v) => {
                if let Some(&id) = self.by_index.get(&v) {
                    return Ok(id);
                }
                let integer = Some(if v <= MAX_LABEL {
                    Ok(v)
                } else {
                    Err(format!("label {v} is larger than {MAX_LABEL}"))
                });
                let id = self.add(v.to_string(), integer, line)?;
                self.by_index.insert(v, id);
                Ok(id)
            }
            Label::Text(raw) => {
                let text = raw.trim();
                if let Some(&id) = self.by_text.get(text) {
                    return Ok(id);
                }
                let integer = integer(text);
                if integer.is_none() {
                    check_name(text).map_err(|m| self.error(Some(line), m))?;
                }
                let id = self.add(text.to_string(), integer, line)?;
                self.by_text.insert(text.to_string(), id);
                Ok(id)
            }
        }
    }

    fn add(
        &mut self,
        text: String,
        integer: Option<std::result::Result<u32, String>>,
        line: u64,
    ) -> Result<u32> {
        if self.seen.len() >= MAX_CLASSES {
            return Err(self.error(
                Some(line),
                format!(
                    "label '{text}' is the {}th distinct label; a run has at most {MAX_CLASSES} \
                     classes (is '{}' the class column?)",
                    MAX_CLASSES + 1,
                    self.column
                ),
            ));
        }
        self.seen.push(Seen {
            text,
            integer,
            line,
        });
        Ok((self.seen.len() - 1) as u32)
    }

    fn error(&self, line: Option<u64>, message: impl Into<String>) -> Error {
        Error::input(&self.path, line, Some(&self.column), message)
    }

    /// The classes of every label seen: integers when all were non-negative integers (one
    /// larger than [`MAX_LABEL`] is then refused, at its first line), names otherwise (fewer
    /// than two distinct names are refused).
    pub fn finish(self) -> Result<Learned> {
        if self.seen.iter().all(|s| s.integer.is_some()) {
            let mut remap = Vec::with_capacity(self.seen.len());
            for s in &self.seen {
                match &s.integer {
                    Some(Ok(v)) => remap.push(*v),
                    Some(Err(m)) => return Err(self.error(Some(s.line), m.clone())),
                    None => unreachable!("every label is an integer here"),
                }
            }
            return Ok(Learned {
                names: None,
                max_index: remap.iter().copied().max().unwrap_or(0),
                remap,
            });
        }
        let mut names: Vec<String> = self.seen.iter().map(|s| s.text.clone()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() < 2 {
            return Err(self.error(
                None,
                format!(
                    "every label is '{}': a run needs two or more classes",
                    names.first().map(String::as_str).unwrap_or_default()
                ),
            ));
        }
        let remap = self
            .seen
            .iter()
            .map(|s| {
                names
                    .binary_search(&s.text)
                    .expect("every label's text is among the names") as u32
            })
            .collect();
        Ok(Learned {
            max_index: (names.len() - 1) as u32,
            names: Some(names),
            remap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(labels: &[&str]) -> Result<(Learned, Vec<u32>)> {
        let mut l = Learner::new(Path::new("in.csv"), "label");
        let mut ids = Vec::new();
        for (i, t) in labels.iter().enumerate() {
            ids.push(l.learn(Label::Text(t), i as u64 + 2)?);
        }
        let learned = l.finish()?;
        learned.relabel(&mut ids);
        Ok((learned, ids))
    }

    #[test]
    fn integer_labels_are_their_values() {
        let (l, ids) = learn(&["3", "0", "3.0", " 1e1 ", "0"]).unwrap();
        assert_eq!(l.names, None);
        assert_eq!(ids, [3, 0, 3, 10, 0]);
        assert_eq!(l.max_index, 10);
        let e = learn(&["1", "70000"]).unwrap_err().to_string();
        assert!(
            e.contains("line 3, column 'label': label 70000 is larger than 65535"),
            "{e}"
        );
    }

    #[test]
    fn other_labels_make_every_label_a_name_sorted_in_byte_order() {
        let (l, ids) = learn(&["dog", "cat", "-1", "dog", "10", "9", "cat"]).unwrap();
        let names = ["-1", "10", "9", "cat", "dog"];
        assert_eq!(l.names.as_deref(), Some(&names.map(String::from)[..]));
        assert_eq!(ids, [4, 3, 0, 4, 1, 2, 3]);
        // The order of the file does not matter.
        let (again, _) = learn(&["9", "cat", "dog", "10", "-1"]).unwrap();
        assert_eq!(again.names, l.names);
        // One name is one class: too few.
        let e = learn(&["cat", "cat"]).unwrap_err().to_string();
        assert!(e.contains("every label is 'cat'"), "{e}");
        for (bad, want) in [
            ("", "line 3, column 'label': empty label"),
            ("a\tb", "control character"),
        ] {
            let e = learn(&["cat", bad]).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let e = learn(&["cat", &long]).unwrap_err().to_string();
        assert!(e.contains("at most 256"), "{e}");
    }

    #[test]
    fn distinct_labels_are_bounded() {
        let mut l = Learner::new(Path::new("in.csv"), "label");
        for i in 0..MAX_CLASSES {
            l.learn(Label::Text(&format!("n{i}")), 2).unwrap();
        }
        l.learn(Label::Text("n7"), 3).unwrap();
        let e = l.learn(Label::Text("new"), 4).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("at most 65536"), "{e}");
    }

    #[test]
    fn classes_map_labels_and_name_the_place_of_a_stranger() {
        let at = At {
            path: Path::new("eval.csv"),
            line: 7,
            column: "label",
        };
        let ints = Classes::indices(10);
        assert_eq!(ints.index(Label::Text("3"), at).unwrap(), 3);
        assert_eq!(ints.index(Label::Index(9), at).unwrap(), 9);
        for (bad, want) in [
            ("10", "label 10 is not a class of this run (0..9)"),
            ("-1", "label -1 is negative"),
            ("1.5", "label '1.5' is not a non-negative integer"),
            ("cat", "label 'cat' is not a non-negative integer"),
            ("70000", "label 70000 is larger than 65535"),
        ] {
            let e = ints.index(Label::Text(bad), at).unwrap_err().to_string();
            assert!(
                e.contains("eval.csv, line 7, column 'label'") && e.contains(want),
                "{bad}: {e}"
            );
        }
        let named = Classes::named(vec!["3".into(), "cat".into(), "dog".into()]).unwrap();
        assert_eq!(named.index(Label::Text(" dog "), at).unwrap(), 2);
        assert_eq!(named.index(Label::Index(3), at).unwrap(), 0);
        assert_eq!(named.name(1), Some("cat"));
        let e = named.index(Label::Text("cow"), at).unwrap_err().to_string();
        assert!(
            e.contains("line 7, column 'label': label 'cow' is not a class of this run")
                && e.contains("'3', 'cat', 'dog'"),
            "{e}"
        );
        assert!(Classes::named(vec!["b".into(), "a".into()]).is_err());
        assert!(Classes::named(vec!["a".into(), "a".into()]).is_err());
        assert!(Classes::named(vec!["a".into()]).is_err());
        assert!(Classes::named(vec!["a".into(), " b".into()]).is_err());
    }
}
