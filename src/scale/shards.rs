//! The shard tasks of one plan, and the shard list a task is given on its command line.
//!
//! A shard list is shard numbers, ascending, each once, comma separated, with runs of
//! consecutive numbers written as ranges: `0-199`, `3,7,12-15`. [`format_shard_list`] writes
//! the shortest such form of a list and [`parse_shard_list`] reads any valid one back, so
//! `parse(format(v)) == v` for every valid `v`, and `format(parse(s)) == s` for every `s` that
//! `format` wrote. Task index `i` of a generated job trains the `i`-th shard of its list.

use crate::train::MAX_SHARDS;
use std::path::PathBuf;

/// The shard tasks of one plan, as a generated job runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskList {
    /// The run's directory as every node (or pod) sees it.
    pub run: PathBuf,
    /// The sisa command each task runs: the binary's absolute path for Slurm, the command in
    /// the image for Kubernetes.
    pub sisa: String,
    /// Shards to train; task index i trains `shards[i]`. Never empty.
    pub shards: Vec<usize>,
    /// The plan's id (hex), written into the files so a user can tell which plan they run.
    pub plan: String,
    /// The run's name (run.json's `name`), for job names.
    pub name: String,
}

impl TaskList {
    /// Checks what every generator relies on: a valid shard list, a hex plan id, and no
    /// control character (a newline above all) in the command, the run's path or its name,
    /// which are written into job files line by line. Returns the shard list as
    /// [`format_shard_list`] writes it.
    pub fn check(&self) -> Result<String, String> {
        let list = format_shard_list(&self.shards)?;
        if self.plan.is_empty() || !self.plan.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "plan: `{}` is not a plan id (hexadecimal digits)",
                self.plan.escape_debug()
            ));
        }
        plain_text("sisa", &self.sisa)?;
        plain_text("run", self.run_str()?)?;
        if self.name.chars().any(char::is_control) {
            return Err(format!(
                "name: `{}` holds a control character",
                self.name.escape_debug()
            ));
        }
        Ok(list)
    }

    /// The run's path as text (job files are text).
    pub fn run_str(&self) -> Result<&str, String> {
        self.run.to_str().ok_or_else(|| {
            format!(
                "run: the path {} is not valid UTF-8, and cannot be written into a job file",
                self.run.display()
            )
        })
    }
}

/// Refuses an empty value or one with a control character (newline, tab, carriage return),
/// naming `field`.
pub(crate) fn plain_text(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{field}: `{}` holds a control character (a newline or tab); job files are written line by line",
            value.escape_debug()
        ));
    }
    Ok(())
}

/// The shortest shard list for `shards`, which must be ascending without repeats and below
/// [`MAX_SHARDS`]: runs of two or more consecutive shards become ranges (`3,7,12-15`).
pub fn format_shard_list(shards: &[usize]) -> Result<String, String> {
    if shards.is_empty() {
        return Err("shards: the list is empty".to_string());
    }
    check_order(shards)?;
    Ok(crate::plan::shard_ranges(shards))
}

/// Refuses shards that are not strictly ascending or not below [`MAX_SHARDS`].
fn check_order(shards: &[usize]) -> Result<(), String> {
    for (i, &s) in shards.iter().enumerate() {
        if s >= MAX_SHARDS {
            return Err(format!(
                "shards: shard {s} (position {}) is not below {MAX_SHARDS}, the most shards a run has",
                i + 1
            ));
        }
        if i > 0 && s <= shards[i - 1] {
            return Err(format!(
                "shards: shard {s} (position {}) is not above the one before it, {}: shards must be ascending, each once",
                i + 1,
                shards[i - 1]
            ));
        }
    }
    Ok(())
}

/// Reads a shard list (`0-199`, `3,7,12-15`): shard numbers and ranges `a-b` (a <= b),
/// comma separated, ascending, each shard once, every shard below [`MAX_SHARDS`]. Spaces
/// around items are allowed. Anything else is refused with the item that is wrong.
pub fn parse_shard_list(list: &str) -> Result<Vec<usize>, String> {
    if list.trim().is_empty() {
        return Err(
            "shard list: empty; give shard numbers and ranges, like 0-199 or 3,7,12-15".to_string(),
        );
    }
    let mut shards: Vec<usize> = Vec::new();
    for (k, raw) in list.split(',').enumerate() {
        let item = raw.trim();
        let at = || {
            format!(
                "shard list `{}`, item {} `{item}`",
                list.escape_debug(),
                k + 1
            )
        };
        if item.is_empty() {
            return Err(format!(
                "{}: empty (two commas in a row, or a comma at an end)",
                at()
            ));
        }
        let (start, end) = match item.split_once('-') {
            None => {
                let s = shard_number(item).map_err(|why| format!("{}: {why}", at()))?;
                (s, s)
            }
            Some((a, b)) => {
                let a = shard_number(a.trim()).map_err(|why| format!("{}: {why}", at()))?;
                let b = shard_number(b.trim()).map_err(|why| format!("{}: {why}", at()))?;
                if b < a {
                    return Err(format!(
                        "{}: the range runs backwards ({a} to {b}); write {b}-{a}",
                        at()
                    ));
                }
                (a, b)
            }
        };
        if let Some(&last) = shards.last() {
            if start <= last {
                return Err(format!(
                    "{}: shard {start} is not above shard {last} before it; shards must be ascending, each once",
                    at()
                ));
            }
        }
        // Bounded: every shard is below MAX_SHARDS and ascending, so at most MAX_SHARDS.
        shards.extend(start..=end);
    }
    Ok(shards)
}

/// One shard number: decimal digits only, below [`MAX_SHARDS`].
fn shard_number(text: &str) -> Result<usize, String> {
    if text.is_empty() {
        return Err("a range needs a shard number on each side of `-`".to_string());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a shard number (decimal digits)"));
    }
    match text.parse::<usize>() {
        Ok(n) if n < MAX_SHARDS => Ok(n),
        _ => Err(format!(
            "shard {text} is not below {MAX_SHARDS}, the most shards a run has"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn tasks() -> TaskList {
        TaskList {
            run: PathBuf::from("/runs/big"),
            sisa: "/opt/sisa/bin/sisa".to_string(),
            shards: vec![0, 1, 2],
            plan: "0123456789abcdef0123".to_string(),
            name: "big".to_string(),
        }
    }

    #[test]
    fn formats_runs_as_ranges() {
        let all: Vec<usize> = (0..200).collect();
        assert_eq!(format_shard_list(&all).unwrap(), "0-199");
        assert_eq!(
            format_shard_list(&[3, 7, 12, 13, 14, 15]).unwrap(),
            "3,7,12-15"
        );
        assert_eq!(format_shard_list(&[5]).unwrap(), "5");
        assert_eq!(format_shard_list(&[1, 2]).unwrap(), "1-2");
        assert_eq!(format_shard_list(&[0, 2, 4]).unwrap(), "0,2,4");
        assert_eq!(
            format_shard_list(&[MAX_SHARDS - 1]).unwrap(),
            (MAX_SHARDS - 1).to_string()
        );
    }

    #[test]
    fn format_refuses_what_no_list_can_say() {
        assert!(format_shard_list(&[]).unwrap_err().contains("empty"));
        let e = format_shard_list(&[1, 5, 3]).unwrap_err();
        assert!(
            e.contains("shard 3 (position 3)") && e.contains("ascending"),
            "{e}"
        );
        let e = format_shard_list(&[1, 1]).unwrap_err();
        assert!(e.contains("shard 1 (position 2)"), "{e}");
        let e = format_shard_list(&[MAX_SHARDS]).unwrap_err();
        assert!(e.contains(&MAX_SHARDS.to_string()), "{e}");
    }

    #[test]
    fn parses_numbers_and_ranges() {
        assert_eq!(
            parse_shard_list("0-199").unwrap(),
            (0..200).collect::<Vec<_>>()
        );
        assert_eq!(
            parse_shard_list("3,7,12-15").unwrap(),
            vec![3, 7, 12, 13, 14, 15]
        );
        assert_eq!(parse_shard_list("4").unwrap(), vec![4]);
        assert_eq!(parse_shard_list("4-4").unwrap(), vec![4]);
        assert_eq!(parse_shard_list(" 1, 3 - 5 ").unwrap(), vec![1, 3, 4, 5]);
        assert_eq!(parse_shard_list("1-2,3").unwrap(), vec![1, 2, 3]);
        assert_eq!(
            parse_shard_list(&format!("0-{}", MAX_SHARDS - 1))
                .unwrap()
                .len(),
            MAX_SHARDS
        );
    }

    #[test]
    fn parse_refuses_bad_lists_by_item() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("  ", "empty"),
            ("3,", "item 2 ``: empty"),
            (",3", "item 1 ``: empty"),
            ("3,,4", "item 2 ``: empty"),
            ("x", "`x` is not a shard number"),
            ("1,two", "item 2 `two`: `two` is not a shard number"),
            ("+3", "`+3` is not a shard number"),
            ("-3", "on each side"),
            ("3-", "on each side"),
            ("3-x", "`x` is not a shard number"),
            ("1-2-3", "`2-3` is not a shard number"),
            ("3 4", "`3 4` is not a shard number"),
            ("7-3", "runs backwards (7 to 3); write 3-7"),
            ("3,3", "shard 3 is not above shard 3"),
            ("5,3", "shard 3 is not above shard 5"),
            ("1-5,4", "shard 4 is not above shard 5"),
            ("4096", "not below 4096"),
            ("0-99999999999999999999999", "not below 4096"),
        ];
        for (list, want) in cases {
            let e = parse_shard_list(list).unwrap_err();
            assert!(e.contains(want), "{list:?}: {e}");
        }
    }

    #[test]
    fn lists_round_trip() {
        let mut rng = SplitMix64::new(16);
        for case in 0..500 {
            let n = 1 + (rng.next_u64() % 300) as usize;
            // Denser and sparser sets, so both ranges and single shards occur.
            let keep = 1 + rng.next_u64() % 4;
            let mut shards: Vec<usize> = (0..n)
                .filter(|_| rng.next_u64().is_multiple_of(keep))
                .collect();
            if shards.is_empty() {
                shards.push(n);
            }
            let list = format_shard_list(&shards).unwrap();
            assert_eq!(
                parse_shard_list(&list).unwrap(),
                shards,
                "case {case}: {list}"
            );
            assert_eq!(
                format_shard_list(&parse_shard_list(&list).unwrap()).unwrap(),
                list
            );
        }
        for list in ["0", "0-1", "3,7,12-15", "0,2-3,5,4000-4095"] {
            assert_eq!(
                format_shard_list(&parse_shard_list(list).unwrap()).unwrap(),
                list
            );
        }
    }

    #[test]
    fn task_list_check_names_the_field() {
        assert_eq!(tasks().check().unwrap(), "0-2");
        let mut t = tasks();
        t.shards.clear();
        assert!(t.check().unwrap_err().contains("empty"));
        let mut t = tasks();
        t.plan = "xyz".into();
        assert!(t.check().unwrap_err().starts_with("plan:"));
        let mut t = tasks();
        t.run = PathBuf::from("/runs/a\nb");
        assert!(t.check().unwrap_err().starts_with("run:"));
        let mut t = tasks();
        t.sisa = String::new();
        assert!(t.check().unwrap_err().starts_with("sisa: empty"));
        let mut t = tasks();
        t.name = "a\tb".into();
        assert!(t.check().unwrap_err().starts_with("name:"));
    }
}
