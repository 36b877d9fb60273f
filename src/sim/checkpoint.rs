//! `checkpoint.msgpack`: what a stopped run resumes from, replaced (atomically) after every
//! round — the server's state ([`ServerSnapshot`]), the running `summary.json`, the round log's
//! lengths, and two fingerprints that a resumed run checks: the effective scenario's and the
//! prepared inputs' (shards, tokens, base model), so a run never continues on other data.
//!
//! MessagePack keeps every number exact (NaN included) and the adapters as raw bytes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::prepare::Prepared;
use crate::actors::server::ServerSnapshot;
use crate::report::{LogLengths, ReportError, RunDir, Summary, CHECKPOINT};

/// The checkpoint format this build writes and reads.
pub(super) const FORMAT: u32 = 1;

/// A checkpoint as read back.
#[derive(Debug, Deserialize)]
pub(super) struct Checkpoint {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// The run marker's scenario fingerprint.
    pub fingerprint: String,
    /// [`inputs_fingerprint`] of the prepared run.
    pub inputs: String,
    /// The round log's lengths after the round.
    pub logs: LogLengths,
    /// `summary.json` after the round.
    pub summary: Summary,
    /// The server after the round.
    pub server: ServerSnapshot,
}

/// A checkpoint as written (borrowing what the run holds).
#[derive(Serialize)]
pub(super) struct CheckpointRef<'a> {
    pub format: u32,
    pub fingerprint: &'a str,
    pub inputs: &'a str,
    pub logs: LogLengths,
    pub summary: &'a Summary,
    pub server: &'a ServerSnapshot,
}

impl CheckpointRef<'_> {
    /// Replace the run directory's checkpoint with this one.
    pub(super) fn write(&self, dir: &RunDir) -> Result<(), ReportError> {
        let bytes = rmp_serde::to_vec_named(self).expect("a checkpoint always serialises");
        dir.write_bytes(CHECKPOINT, &bytes)
    }
}

impl Checkpoint {
    /// The checkpoint of run directory `dir`, or `None` when it has none (the run stopped
    /// before its first round was recorded).
    pub(super) fn read(dir: &Path) -> Result<Option<Self>, ReportError> {
        let path = dir.join(CHECKPOINT);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ReportError::Io { path, source }),
        };
        let cp: Checkpoint = rmp_serde::from_slice(&bytes).map_err(|e| ReportError::Format {
            path: path.clone(),
            message: format!("is not a checkpoint this fedsim can read ({e})"),
        })?;
        if cp.format != FORMAT {
            return Err(ReportError::Format {
                path,
                message: format!(
                    "is checkpoint format {}, this fedsim reads format {FORMAT}",
                    cp.format
                ),
            });
        }
        Ok(Some(cp))
    }
}

/// A fingerprint of what preparation produced: the shards, the tokenised examples, the base
/// model's source. Same scenario and same data files give the same fingerprint.
pub(crate) fn inputs_fingerprint(prep: &Prepared) -> String {
    // FNV-1a over the values' little-endian bytes, streamed (millions of tokens).
    let mut h = crate::hash::Fnv1a::new();
    let mut put = |v: u64| h.write_u64(v);
    for shard in &prep.shards {
        put(shard.len() as u64);
        shard.iter().for_each(|&i| put(u64::from(i)));
    }
    if let Some(l) = &prep.lora {
        for e in l.train.iter().chain(l.eval.iter()) {
            put(e.ids.len() as u64);
            put(e.prompt_len as u64);
            e.ids.iter().for_each(|&t| put(u64::from(t)));
        }
        if let Some(m) = &l.source {
            m.sha256.bytes().for_each(|b| put(u64::from(b)));
        }
    }
    format!("{:016x}", h.finish())
}
