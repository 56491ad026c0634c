//! Following the deletion ledger from the server, so that a deletion acknowledged by any
//! process (`sisa unlearn`, another server, a recovery) leaves its shards out of every answer
//! at once, not only when the version that forgot its users is published.
//!
//! [`LedgerTail`] reads what was appended to the ledger since its last look: a `stat` when
//! nothing changed, and only the new bytes when something did, so a poll costs the same
//! however long the ledger grows. Entries are parsed but not verified here (the hash chain is
//! verified by every command that opens the run); acting on an entry only ever leaves more
//! shards out, never fewer, so a damaged line cannot make the server answer from a shard that
//! holds a deleted user.

use crate::unlearn::ledger::{Entry, Event};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes read from the ledger in one poll; the rest is read by the next polls.
const MAX_READ: u64 = 4 << 20;
/// Longest ledger line kept while waiting for its end; a longer one is skipped.
const MAX_LINE: usize = 16 << 20;

/// What a poll of the ledger found that the server acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Requests accepted, with the shards that hold their users (`None`: not recorded, so
    /// every shard must be left out).
    pub accepted: Vec<(u64, Option<Vec<usize>>)>,
    /// Whether a request was published (the served version may be behind).
    pub published: bool,
    /// Lines that could not be read as ledger entries.
    pub unreadable: usize,
}

/// The ledger file and how much of it has been read.
#[derive(Debug)]
pub struct LedgerTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    skipping: bool,
}

impl LedgerTail {
    /// Follow `path` from its beginning (the first poll reads what it already holds).
    pub fn new(path: &Path) -> LedgerTail {
        LedgerTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// The ledger's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read what was appended since the last poll. A ledger that shrank (a recovery cut a torn
    /// last line) is read again from its start; a missing one is empty.
    pub fn poll(&mut self) -> std::io::Result<Appended> {
        let mut found = Appended::default();
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        if len == self.offset {
            return Ok(found);
        }
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = Vec::new();
        file.take((len - self.offset).min(MAX_READ))
            .read_to_end(&mut chunk)?;
        self.offset += chunk.len() as u64;
        let mut rest = chunk.as_slice();
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            rest = &after[1..];
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                found.unreadable += 1;
                continue;
            }
            if self.partial.is_empty() {
                take(line, &mut found);
            } else {
                self.partial.extend_from_slice(line);
                let whole = std::mem::take(&mut self.partial);
                take(&whole, &mut found);
            }
        }
        if !self.skipping {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = true;
            }
        }
        Ok(found)
    }
}

/// Note what one complete ledger line says.
fn take(line: &[u8], found: &mut Appended) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<Entry>(line) {
        Ok(e) => match e.event {
            Event::Accepted { place, .. } => {
                found.accepted.push((e.request, place.map(|t| t.shards)));
            }
            Event::Published { .. } => found.published = true,
            _ => {}
        },
        Err(_) => found.unreadable += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::UserKey;
    use crate::unlearn::ledger::{Ledger, Touched};

    #[test]
    fn polls_read_only_what_was_appended_and_survive_torn_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.jsonl");
        let mut tail = LedgerTail::new(&path);
        assert_eq!(tail.poll().unwrap(), Appended::default(), "no ledger yet");
        let mut ledger = Ledger::open(&path).unwrap();
        let key = UserKey([7; 32]);
        let place = Touched {
            shards: vec![2, 4],
            buckets: vec![],
        };
        ledger
            .append(
                1,
                Event::Accepted {
                    users: vec![key],
                    place: Some(place),
                    deferred: false,
                },
            )
            .unwrap();
        let first = tail.poll().unwrap();
        assert_eq!(first.accepted, [(1, Some(vec![2, 4]))]);
        assert_eq!(tail.poll().unwrap(), Appended::default(), "nothing new");
        // Half a line, then the rest: read once it is whole.
        let text = std::fs::read(&path).unwrap();
        let line = text.clone();
        let (a, b) = line.split_at(line.len() / 2);
        std::fs::write(&path, [text.as_slice(), a].concat()).unwrap();
        assert_eq!(tail.poll().unwrap(), Appended::default());
        std::fs::write(&path, [text.as_slice(), a, b].concat()).unwrap();
        assert_eq!(tail.poll().unwrap().accepted, [(1, Some(vec![2, 4]))]);
        // Garbage is counted, not acted on; a shorter file is read again from its start.
        std::fs::write(
            &path,
            [text.as_slice(), text.as_slice(), b"{oops\n"].concat(),
        )
        .unwrap();
        assert_eq!(tail.poll().unwrap().unreadable, 1);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(tail.poll().unwrap().accepted, [(1, Some(vec![2, 4]))]);
    }
}
