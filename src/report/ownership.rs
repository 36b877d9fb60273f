//! Who owns a directory fedsim writes into: an exclusive lock held for the writer's lifetime
//! (`.fedsim.lock`, naming the holder) and fedsim's marker (`.fedsim.json`, saying what the
//! directory holds). A directory is reused only when the marker says it holds an unfinished run
//! of the same scenario (or nothing yet); everything else that is not empty is refused and
//! never deleted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io, ReportError, RunStatus, Summary, CHECKPOINT, RUN_FILES};

/// The lock file: held (flock) while a process writes the directory; its text names the holder.
pub const LOCK_FILE: &str = ".fedsim.lock";
/// fedsim's marker: what the directory holds.
pub const MARKER_FILE: &str = ".fedsim.json";

/// What a directory fedsim owns holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirKind {
    /// One run (`sim run`, one arm of a study, one combination of a sweep).
    Run,
    /// A sweep: one run directory per combination, the table.
    Sweep,
    /// A privacy study: one run directory per arm, the attack table, the report.
    Study,
}

impl Marker {
    /// The marker of a sweep or study directory (whose runs carry their own fingerprints).
    pub fn new(kind: DirKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            fingerprint: String::new(),
        }
    }
}

impl DirKind {
    fn as_str(self) -> &'static str {
        match self {
            DirKind::Run => "run",
            DirKind::Sweep => "sweep",
            DirKind::Study => "study",
        }
    }
}

/// `.fedsim.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// What the directory holds.
    pub kind: DirKind,
    /// The scenario's (sweep's, study's) name.
    pub name: String,
    /// FNV-1a of the effective scenario text (`scenario.ron`), hex: a run directory is reused
    /// only by the same scenario.
    pub fingerprint: String,
}

/// The exclusive lock on a directory, released when the last clone of its owner is dropped
/// (or the process dies, however it dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Take `dir`'s lock, or say who holds it.
pub(super) fn lock(dir: &Path) -> Result<DirLock, ReportError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(ReportError::Busy {
                path: dir.to_path_buf(),
                holder: match holder.trim() {
                    "" => "another fedsim process".to_string(),
                    h => h.to_string(),
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = format!(
        "fedsim process {} (`{}`), since {started}\n",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(text.as_bytes()))
        .map_err(io(&path))?;
    Ok(DirLock { _file: file })
}

/// What a locked directory holds, and whether it may receive `want`.
pub(super) enum Inspection {
    /// Nothing but fedsim's lock and marker: ready.
    Empty,
    /// An unfinished run of the same scenario: its files are to be replaced.
    Unfinished(Vec<String>),
}

fn refusal(dir: &Path, message: String) -> ReportError {
    ReportError::Format {
        path: dir.to_path_buf(),
        message,
    }
}

/// Inspect locked `dir` for a new `want`: refuse anything fedsim may not replace.
/// `locked`: whether this process holds the lock (a run still in progress is refused by the
/// lock, with its holder named, before its checkpoint is taken for a stopped run's).
pub(super) fn inspect(dir: &Path, want: &Marker, locked: bool) -> Result<Inspection, ReportError> {
    let content: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|n| n != LOCK_FILE && n != MARKER_FILE)
        .collect();
    if content.is_empty() {
        return Ok(Inspection::Empty);
    }
    let Some(marker) = read_marker(dir)? else {
        return Err(refusal(
            dir,
            format!(
                "is not empty and fedsim did not create it (it holds {}); fedsim never deletes \
                 what it did not write: choose a new or empty directory for --out",
                listing(&content)
            ),
        ));
    };
    if marker.kind != want.kind {
        return Err(refusal(
            dir,
            format!(
                "holds a fedsim {} (`{}`), not a {}; choose another --out",
                marker.kind.as_str(),
                marker.name,
                want.kind.as_str()
            ),
        ));
    }
    if want.kind != DirKind::Run {
        return Err(refusal(
            dir,
            format!(
                "already holds a {} (`{}`); choose another --out",
                marker.kind.as_str(),
                marker.name
            ),
        ));
    }
    check_unfinished_run(dir, &marker, want, &content, locked)?;
    Ok(Inspection::Unfinished(content))
}

/// A marked run directory may be replaced only when its run is unfinished, of the same
/// scenario, and the directory holds nothing fedsim did not write.
fn check_unfinished_run(
    dir: &Path,
    marker: &Marker,
    want: &Marker,
    content: &[String],
    locked: bool,
) -> Result<(), ReportError> {
    if dir.join("summary.json").exists() {
        let summary = Summary::read(dir).map_err(|e| {
            refusal(
                dir,
                format!(
                    "holds a run whose summary.json cannot be read ({}); the directory is left \
                     as it is: inspect it, or choose another --out",
                    crate::fmt::chain(&e)
                ),
            )
        })?;
        if summary.status.is_final() && summary.status != RunStatus::Failed {
            return Err(refusal(
                dir,
                format!(
                    "already holds a finished run (status {}); {}choose another --out",
                    summary.status,
                    resume_hint(dir, summary.status == RunStatus::Interrupted)
                ),
            ));
        }
        if locked && dir.join(CHECKPOINT).exists() && summary.rounds_completed > 0 {
            // Starting over would throw away rounds that can be continued.
            return Err(refusal(
                dir,
                format!(
                    "holds an unfinished run (status {}) with {} rounds done; {}or remove the \
                     directory to start over, or choose another --out",
                    summary.status,
                    summary.rounds_completed,
                    resume_hint(dir, true)
                ),
            ));
        }
    }
    if marker.fingerprint != want.fingerprint {
        return Err(refusal(
            dir,
            format!(
                "holds an unfinished run of another scenario (`{}`); fedsim reuses a directory \
                 only for the same scenario: choose another --out",
                marker.name
            ),
        ));
    }
    let foreign: Vec<String> = content
        .iter()
        .filter(|n| !RUN_FILES.contains(&n.as_str()) && !n.ends_with(".tmp"))
        .cloned()
        .collect();
    if !foreign.is_empty() {
        return Err(refusal(
            dir,
            format!(
                "holds an unfinished run and files fedsim did not write ({}); move them away \
                 or choose another --out",
                listing(&foreign)
            ),
        ));
    }
    Ok(())
}

/// "continue it with `sim run --resume DIR`; " when `resumable`.
fn resume_hint(dir: &Path, resumable: bool) -> String {
    if resumable {
        format!("continue it with `sim run --resume {}`, ", dir.display())
    } else {
        String::new()
    }
}

/// Lock `dir`, a run directory fedsim marked, to continue its run (`sim run --resume`).
pub(super) fn reopen(dir: &Path) -> Result<(DirLock, Marker), ReportError> {
    if !dir.is_dir() {
        return Err(refusal(
            dir,
            "is not a directory; --resume takes the run directory of a stopped run".into(),
        ));
    }
    let marker = match read_marker(dir)? {
        Some(m) if m.kind == DirKind::Run => m,
        Some(m) => {
            return Err(refusal(
                dir,
                format!(
                    "holds a fedsim {} (`{}`), not a run; --resume takes a run directory",
                    m.kind.as_str(),
                    m.name
                ),
            ))
        }
        None => {
            return Err(refusal(
                dir,
                format!(
                    "has no fedsim marker ({MARKER_FILE}): it is not a run directory fedsim \
                     wrote, or one from a version before runs could be resumed"
                ),
            ))
        }
    };
    Ok((lock(dir)?, marker))
}

/// Make `--out` directory `dir` (its parents too); whether this call created it. Atomic, so
/// of two processes racing for a new directory only one believes it created it.
pub(super) fn make_dir(dir: &Path) -> Result<bool, ReportError> {
    if dir.exists() && !dir.is_dir() {
        return Err(ReportError::Format {
            path: dir.to_path_buf(),
            message: "exists and is not a directory; choose another --out".into(),
        });
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(dir)(e)),
    }
}

/// The marker, if fedsim wrote one.
pub fn read_marker(dir: &Path) -> Result<Option<Marker>, ReportError> {
    let path = dir.join(MARKER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ReportError::Format {
            path,
            message: format!(
                "is not a fedsim marker ({e}); the directory is left as it is: choose another \
                 --out"
            ),
        })
}

/// Sorted entry names of `dir`.
fn entries(dir: &Path) -> Result<Vec<String>, ReportError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn listing(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(3).map(|n| n.as_str()).collect();
    format!(
        "{}{}",
        shown.join(", "),
        if names.len() > 3 { ", …" } else { "" }
    )
}

/// Remove an unfinished run's files (never the lock, never anything not in `names`).
pub(super) fn clear(dir: &Path, names: &[String]) -> Result<(), ReportError> {
    for n in names {
        let q = dir.join(n);
        let removed = if q.is_dir() {
            std::fs::remove_dir_all(&q)
        } else {
            std::fs::remove_file(&q)
        };
        removed.map_err(io(&q))?;
    }
    Ok(())
}

/// Where `create` puts a directory with no `--out`: `runs/<name>-<UTC timestamp>`, suffixed
/// when taken; created here (atomically) so two processes never pick the same one.
pub(super) fn fresh_default(name: &str) -> Result<PathBuf, ReportError> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string();
    let runs = PathBuf::from("runs");
    std::fs::create_dir_all(&runs).map_err(io(&runs))?;
    let base = runs.join(format!("{name}-{stamp}"));
    let mut p = base.clone();
    for k in 2.. {
        match std::fs::create_dir(&p) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                p = PathBuf::from(format!("{}-{k}", base.display()));
            }
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(p)
}
