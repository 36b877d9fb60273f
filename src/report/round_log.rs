//! The round log: `rounds.jsonl` (one flushed line per round), `clients.jsonl` (one line per
//! sampled client and round) and `journal.msgpack` (every round in full and exact — the
//! per-update norms and phases the metrics need, NaN where a value is missing — so a resumed
//! run reports all its rounds). The log's lengths after each round go into the run's
//! checkpoint; a resumed run cuts the files back to them, dropping whatever a kill left after
//! the last checkpointed round.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io, ReportError};
use crate::messages::RoundSummary;

/// The journal's file name.
pub const JOURNAL: &str = "journal.msgpack";

/// How long each log file is after a round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLengths {
    /// `rounds.jsonl`, bytes.
    pub rounds: u64,
    /// `clients.jsonl`, bytes.
    pub clients: u64,
    /// `journal.msgpack`, bytes.
    pub journal: u64,
}

/// One append-only file and its length.
struct Sink {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ReportError> {
        self.out
            .write_all(bytes)
            .and_then(|()| self.out.flush())
            .map_err(io(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// The three files of the round log, appended as rounds finish.
pub struct RoundLog {
    rounds: Sink,
    clients: Sink,
    journal: Sink,
}

/// A journal entry as written (the summary's host-only fields included).
#[derive(Serialize)]
struct EntryRef<'a> {
    summary: &'a RoundSummary,
    update_norms: &'a [f64],
    phases: &'a [[f64; 3]],
    finished_at: f64,
}

/// A journal entry as read.
#[derive(Deserialize)]
struct Entry {
    summary: RoundSummary,
    update_norms: Vec<f64>,
    phases: Vec<[f64; 3]>,
    finished_at: f64,
}

impl RoundLog {
    /// New, empty files in `dir`.
    pub(super) fn create(dir: &Path) -> Result<Self, ReportError> {
        let open = |name: &str| -> Result<Sink, ReportError> {
            let path = dir.join(name);
            let f = File::create(&path).map_err(io(&path))?;
            Ok(Sink {
                path,
                out: BufWriter::new(f),
                len: 0,
            })
        };
        Ok(Self {
            rounds: open("rounds.jsonl")?,
            clients: open("clients.jsonl")?,
            journal: open(JOURNAL)?,
        })
    }

    /// The files in `dir` cut back to `lengths` (what a checkpoint recorded), for appending.
    pub(super) fn reopen(dir: &Path, lengths: LogLengths) -> Result<Self, ReportError> {
        let open = |name: &str, len: u64| -> Result<Sink, ReportError> {
            let path = dir.join(name);
            let mut f = File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            let have = f.metadata().map_err(io(&path))?.len();
            if have < len {
                return Err(ReportError::Format {
                    path,
                    message: format!(
                        "holds {have} bytes, fewer than the {len} the checkpoint recorded: the \
                         file was changed after the run stopped, and the run cannot be resumed"
                    ),
                });
            }
            f.set_len(len)
                .and_then(|()| f.seek(SeekFrom::End(0)))
                .map_err(io(&path))?;
            Ok(Sink {
                path,
                out: BufWriter::new(f),
                len,
            })
        };
        Ok(Self {
            rounds: open("rounds.jsonl", lengths.rounds)?,
            clients: open("clients.jsonl", lengths.clients)?,
            journal: open(JOURNAL, lengths.journal)?,
        })
    }

    /// Append one round: its clients, its line, its journal entry.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn append(&mut self, round: &RoundSummary) -> Result<(), ReportError> {
        let mut lines = String::new();
        for c in &round.clients {
            lines += &serde_json::to_string(c).expect("serialisable");
            lines.push('\n');
        }
        self.clients.write(lines.as_bytes())?;
        let line = serde_json::to_string(round).expect("serialisable") + "\n";
        self.rounds.write(line.as_bytes())?;
        let entry = EntryRef {
            summary: round,
            update_norms: &round.update_norms,
            phases: &round.phases,
            finished_at: round.finished_at,
        };
        let bytes = rmp_serde::to_vec_named(&entry).expect("a round always serialises");
        self.journal.write(&bytes)
    }

    /// The files' lengths now.
    pub fn lengths(&self) -> LogLengths {
        LogLengths {
            rounds: self.rounds.len,
            clients: self.clients.len,
            journal: self.journal.len,
        }
    }
}

/// The rounds in the first `len` bytes of `dir`'s journal.
///
/// # Errors
/// A missing or short journal, or an entry that does not decode.
pub fn read_journal(dir: &Path, len: u64) -> Result<Vec<RoundSummary>, ReportError> {
    let path = dir.join(JOURNAL);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let format = |message: String| ReportError::Format {
        path: path.clone(),
        message,
    };
    let mut rest = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(..n))
        .ok_or_else(|| {
            format(format!(
                "holds {} bytes, fewer than the {len} the checkpoint recorded",
                bytes.len()
            ))
        })?;
    let mut rounds = Vec::new();
    while !rest.is_empty() {
        let e: Entry = rmp_serde::from_read(&mut rest)
            .map_err(|e| format(format!("entry {} does not decode: {e}", rounds.len() + 1)))?;
        let mut r = e.summary;
        r.update_norms = e.update_norms;
        r.phases = e.phases;
        r.finished_at = e.finished_at;
        rounds.push(r);
    }
    Ok(rounds)
}
