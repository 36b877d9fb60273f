//! `sim run --resume DIR`: continue a stopped run — interrupted by a signal, killed, or failed
//! — from its last completed round, to the same end as a run never stopped. The scenario is the
//! one the directory recorded; the data and model are prepared again and must fingerprint the
//! same; the round log is cut back to the checkpoint (dropping a round a kill left half
//! written) and appended to.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::checkpoint::{self, Checkpoint};
use super::summary::Book;
use super::{
    execute, layout_of, prepare_off_executor, run_marker, say, Begin, RunOptions, RunReport,
    SimError, Stamp,
};
use crate::actors::server::{Resume, ServerSnapshot};
use crate::model::AdapterLayout;
use crate::report::{read_journal, RunDir, RunStatus, Summary};
use crate::scenario::{Scenario, ScenarioError};
use crate::shutdown::Shutdown;

/// Why a run directory cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The run reached an end that more rounds cannot change.
    #[error("{dir}: the run ended with status {status}; there is nothing to resume")]
    Finished {
        /// The run directory.
        dir: PathBuf,
        /// Its status.
        status: RunStatus,
    },
    /// The recorded scenario cannot be read.
    #[error("{dir}: the recorded scenario cannot be used")]
    Scenario {
        /// The run directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: ScenarioError,
    },
    /// The directory's files disagree with each other or with what preparation produced.
    #[error("{dir}: {message}; the run cannot be resumed")]
    Mismatch {
        /// The run directory.
        dir: PathBuf,
        /// What disagrees.
        message: String,
    },
}

/// Continue the stopped run in `dir` until it ends, or until `shutdown` asks to stop (as
/// [`super::run`]).
///
/// # Errors
/// [`ResumeError`] (and preparation's errors) before any file changes; after, as
/// [`super::run`].
pub async fn resume(
    dir: &Path,
    mut opts: RunOptions,
    shutdown: Shutdown,
) -> Result<RunReport, SimError> {
    let started = Instant::now();
    let (run_dir, marker) = RunDir::reopen(dir)?;
    let summary = Summary::read(dir)?;
    if summary.status.is_final() && !summary.status.resumable() {
        return Err(ResumeError::Finished {
            dir: dir.to_path_buf(),
            status: summary.status,
        }
        .into());
    }
    let mismatch = |message: String| ResumeError::Mismatch {
        dir: dir.to_path_buf(),
        message,
    };
    let s =
        Scenario::load(&dir.join("scenario.ron"), &[]).map_err(|source| ResumeError::Scenario {
            dir: dir.to_path_buf(),
            source,
        })?;
    if run_marker(&s).fingerprint != marker.fingerprint {
        return Err(mismatch("scenario.ron was changed after the run started".into()).into());
    }
    let cp = Checkpoint::read(dir)?;
    if cp
        .as_ref()
        .is_some_and(|cp| cp.fingerprint != marker.fingerprint)
    {
        return Err(mismatch("the checkpoint belongs to another scenario".into()).into());
    }
    super::workers::worker_set(&s)?; // the cookie and TLS files, before the preparation
    let prep = prepare_off_executor(&s, &mut opts, &shutdown).await?;
    let inputs = checkpoint::inputs_fingerprint(&prep);
    let layout = layout_of(&s);
    let stamp = Stamp {
        fingerprint: marker.fingerprint,
        inputs,
    };
    let begin = match cp {
        Some(cp) => continue_from(&run_dir, &s, cp, stamp, &layout, &prep, started)?,
        None => start_again(&run_dir, &s, stamp, &prep, started)?,
    };
    say(
        &mut opts,
        &match &begin.resume {
            Some(r) => format!(
                "resuming {} after round {} of {} (checkpoint); the rounds after it run again",
                dir.display(),
                r.snapshot.rounds_done,
                s.rounds
            ),
            None => format!(
                "resuming {} from round 1: it stopped before a round was checkpointed",
                dir.display()
            ),
        },
    );
    execute(&s, &prep, layout, &run_dir, opts, shutdown, begin).await
}

/// A run stopped before its first round was checkpointed: nothing to keep, so it starts again
/// in place (its round log, if any, is replaced).
fn start_again(
    run_dir: &RunDir,
    s: &Scenario,
    stamp: Stamp,
    prep: &super::Prepared,
    started: Instant,
) -> Result<Begin, SimError> {
    prep.write(run_dir)?;
    let book = Book::new(s, prep, started);
    run_dir.write_json("summary.json", book.summary())?;
    Ok(Begin {
        book,
        log: run_dir.round_log()?,
        stamp,
        resume: None,
    })
}

/// Where a checkpointed run continues: its inputs checked against the checkpoint, its round
/// log cut back to it, its summary running again.
fn continue_from(
    run_dir: &RunDir,
    s: &Scenario,
    cp: Checkpoint,
    stamp: Stamp,
    layout: &AdapterLayout,
    prep: &super::Prepared,
    started: Instant,
) -> Result<Begin, SimError> {
    let dir = run_dir.path();
    let mismatch = |message: String| ResumeError::Mismatch {
        dir: dir.to_path_buf(),
        message,
    };
    if stamp.inputs != cp.inputs {
        return Err(mismatch(
            "the data or the base model differ from the run's (a data file or the model \
             cache changed since it started)"
                .into(),
        )
        .into());
    }
    check_snapshot(&cp.server, layout, prep.shards.len()).map_err(mismatch)?;
    let rounds = read_journal(dir, cp.logs.journal)?;
    if rounds.len() != cp.server.rounds_done || rounds.len() > s.rounds {
        return Err(mismatch(format!(
            "the journal holds {} rounds, the checkpoint {}",
            rounds.len(),
            cp.server.rounds_done
        ))
        .into());
    }
    // Nothing has changed in the directory so far; from here on it is the run's again.
    let log = run_dir.round_log_at(cp.logs)?;
    let book = Book::resumed(cp.summary, started);
    run_dir.write_json("summary.json", book.summary())?;
    Ok(Begin {
        book,
        log,
        stamp,
        resume: Some(Resume {
            snapshot: cp.server,
            rounds,
        }),
    })
}

/// Whether a snapshot fits the run it is to continue.
fn check_snapshot(
    snap: &ServerSnapshot,
    layout: &AdapterLayout,
    clients: usize,
) -> Result<(), String> {
    if snap.global.len() != layout.len() {
        return Err(format!(
            "the checkpoint's adapter has {} values, the scenario's layout {}",
            snap.global.len(),
            layout.len()
        ));
    }
    if let Some(o) = &snap.optimizer {
        let v_ok = o.v.is_empty() || o.v.len() == layout.len();
        if o.m.len() != layout.len() || !v_ok {
            return Err("the checkpoint's server-optimiser state has the wrong length".into());
        }
    }
    if let Some(c) = snap.dead.iter().find(|&&c| c >= clients) {
        return Err(format!(
            "the checkpoint names client {c}, the run has {clients}"
        ));
    }
    if let Some(a) = &snap.asyn {
        let missing = a
            .flights
            .iter()
            .any(|f| f.client >= clients || !a.payloads.iter().any(|(v, _)| *v == f.v_start));
        if missing {
            return Err("the checkpoint's clients in flight do not fit the run".into());
        }
        let layout = std::sync::Arc::new(layout.clone());
        for (v, bytes) in &a.payloads {
            if let Err(e) = crate::model::AdapterSet::from_safetensors(layout.clone(), bytes) {
                return Err(format!(
                    "the checkpoint's model version {v} does not decode: {e}"
                ));
            }
        }
    }
    Ok(())
}
