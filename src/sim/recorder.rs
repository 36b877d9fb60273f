//! What happens with each finished round: the round log, `summary.json` and the checkpoint in
//! the run directory (in that order, so a kill leaves a checkpoint whose log is complete), then
//! metrics and progress.

use std::sync::Arc;

use super::summary::Book;
use super::{checkpoint, Progress, ProgressFn, Stamp};
use crate::actors::server::{RoundSink, ServerSnapshot};
use crate::messages::RoundSummary;
use crate::report::{ReportError, RoundLog, RunDir};
use crate::telemetry::Telemetry;

/// Who hears about each round besides `rounds.jsonl`.
pub(super) struct Observers {
    pub pace: Option<std::time::Duration>,
    pub progress: Option<ProgressFn>,
    pub telemetry: Option<Telemetry>,
}

pub(super) type SharedBook = Arc<std::sync::Mutex<Option<Book>>>;

/// What records each round in the run directory: the round log, the running summary and the
/// checkpoint.
pub(super) struct Recorder {
    pub dir: RunDir,
    pub book: SharedBook,
    pub log: RoundLog,
    pub stamp: Stamp,
}

impl Recorder {
    /// Append the round, update `summary.json`, then replace the checkpoint — in that order,
    /// so a kill at any point leaves a checkpoint whose round log is complete.
    fn record(
        &mut self,
        r: &RoundSummary,
        snapshot: &ServerSnapshot,
        busy: Vec<f64>,
    ) -> Result<(), ReportError> {
        self.log.append(r)?;
        let mut guard = self
            .book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(book) = guard.as_mut() else {
            return Ok(());
        };
        book.round(r, busy);
        self.dir.write_json("summary.json", book.summary())?;
        checkpoint::CheckpointRef {
            format: checkpoint::FORMAT,
            fingerprint: &self.stamp.fingerprint,
            inputs: &self.stamp.inputs,
            logs: self.log.lengths(),
            summary: book.summary(),
            server: snapshot,
        }
        .write(&self.dir)
    }
}

/// The sink the server calls with each round: the run directory, metrics, progress.
pub(super) fn round_sink(
    mut recorder: Recorder,
    observers: Observers,
    busy: crate::slots::SlotBusy,
) -> RoundSink {
    let Observers {
        mut progress,
        telemetry,
        ..
    } = observers;
    Box::new(move |r: &RoundSummary, snapshot: &ServerSnapshot| {
        recorder.record(r, snapshot, busy.seconds())?;
        if let Some(t) = &telemetry {
            t.round(r, &busy.seconds());
        }
        if let Some(p) = progress.as_mut() {
            p(Progress::Round(r));
        }
        Ok(())
    })
}
