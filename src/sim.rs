//! `run(scenario, options, shutdown)`: prepares data, tokenizer and model off the executor,
//! writes the run directory, starts the slots and the actors, and records every round.
//!
//! The run directory always says where the run stands: `summary.json` is written with status
//! `running` before round 1 and after each round, and replaced (atomically) with the final
//! status — completed, interrupted, budget_exhausted or failed — at the end.

pub(crate) mod checkpoint;
mod prepare;
mod recorder;
mod resume;
mod setup;
mod summary;
mod teardown;
pub(crate) mod wiring;
pub mod worker;
mod workers;

pub use prepare::{prepare, prepare_with, prompt_text, Prepared};
pub use resume::{resume, ResumeError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ractor::Actor;
use tokio::sync::oneshot;

use crate::actors::server::{Resume, Server, ServerArgs, ServerConfig, ServerMsg, ServerOutcome};
use crate::data::DataError;
use crate::devices::TraceError;
use crate::messages::RoundSummary;
use crate::model::{AdapterLayout, ModelError};
use crate::report::{DirKind, Marker, ReportError, RunDir, RunStatus, Summary};
use crate::scenario::Scenario;
use crate::shutdown::{Shutdown, StopLevel};
use crate::slots::SlotError;
use crate::telemetry::{RunInfo, Telemetry};
use crate::tokenizer::TokenizerError;
use recorder::{round_sink, Observers, Recorder};
use setup::setup_lines;
use summary::Book;

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Data could not be loaded or split.
    #[error(transparent)]
    Data(DataError),
    /// Tokenizer training failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The run directory could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Slots could not start.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// Workers on other hosts could not join the run.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Secure aggregation's settings do not fit the run's data.
    #[error("strategy.secure_aggregation")]
    SecAgg(#[source] crate::secagg::SecAggError),
    /// The scenario does not fit the data it was given (a SecAgg+ ring too narrow for it).
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// Homomorphic aggregation's settings do not fit the run.
    #[error("strategy.secure_aggregation")]
    He(#[source] crate::he::HeError),
    /// The device trace could not be used.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The hierarchical topology cannot be set up for the run.
    #[error("topology")]
    Topology(#[source] crate::topology::TopologyError),
    /// An actor could not start or answer.
    #[error("actor system: {0}")]
    Actor(String),
    /// The task of the scenario's `eval` section could not be read, or overlaps the training
    /// data.
    #[error("eval.task")]
    Task(#[source] Box<crate::eval::EvalError>),
    /// The planted backdoor could not be measured on the final model.
    #[error("measuring the backdoor")]
    Backdoor(#[source] Box<crate::eval::EvalError>),
    /// The run failed part-way; what it wrote is in `dir` (its `summary.json` says why).
    #[error("run failed (partial results in {dir}): {message}")]
    Failed {
        /// Run directory.
        dir: PathBuf,
        /// The error.
        message: String,
    },
    /// A stopped run cannot be resumed.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// A stop was requested before the run directory existed: nothing was written.
    #[error("interrupted while preparing the data and model; nothing was written")]
    InterruptedBeforeStart,
}

/// A stop heard during preparation is [`SimError::InterruptedBeforeStart`], however deep.
impl From<crate::data::Stopped> for SimError {
    fn from(_: crate::data::Stopped) -> Self {
        SimError::InterruptedBeforeStart
    }
}

impl From<DataError> for SimError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Stopped(_) => SimError::InterruptedBeforeStart,
            e => SimError::Data(e),
        }
    }
}

/// How to run.
#[derive(Default)]
pub struct RunOptions {
    /// Run directory; default `runs/<name>-<timestamp>`.
    pub out: Option<PathBuf>,
    /// Called with set-up lines and each round (the CLI prints them).
    pub progress: Option<ProgressFn>,
    /// Prometheus metrics of the run (the CLI serves them over HTTP).
    pub telemetry: Option<Telemetry>,
    /// Minimum wall seconds per round (live demos); `None` runs flat out.
    pub pace: Option<std::time::Duration>,
}

/// Receives progress events.
pub type ProgressFn = Box<dyn FnMut(Progress<'_>) + Send>;

/// Progress events.
pub enum Progress<'a> {
    /// A line about the set-up.
    Setup(&'a str),
    /// Preparation under way: `done` of `total` in `stage` (records, examples).
    Stage {
        /// What is being done.
        stage: &'a str,
        /// Units done.
        done: usize,
        /// Units in all.
        total: usize,
    },
    /// A round finished.
    Round(&'a RoundSummary),
}

/// A finished (or interrupted) run.
#[derive(Debug)]
pub struct RunReport {
    /// Where it was written.
    pub dir: PathBuf,
    /// `summary.json`.
    pub summary: Summary,
    /// Every round.
    pub rounds: Vec<RoundSummary>,
}

/// Run `scenario` to the end, or until `shutdown` asks to stop: at
/// [`StopLevel::FinishRound`] the current round finishes, at [`StopLevel::Abandon`] it is
/// abandoned; either way the completed rounds' results are written.
///
/// # Errors
/// Set-up failures before the run directory exists; [`SimError::Failed`] after (the
/// directory's `summary.json` then has status `failed` and the error).
pub async fn run(
    scenario: &Scenario,
    mut opts: RunOptions,
    shutdown: Shutdown,
) -> Result<RunReport, SimError> {
    let started = Instant::now();
    let s = scenario;
    // Claim --out before hours of preparation, not after: a second process on the same
    // directory, or a directory that is not ours to replace, is refused now.
    let claim = RunDir::claim(opts.out.as_deref(), &run_marker(s))?;
    workers::worker_set(s)?; // the cookie and TLS files, before the preparation
                             // Preparation hears the stop itself (every stage report), so nothing runs on after it.
    let prep = prepare_off_executor(s, &mut opts, &shutdown).await?;
    let layout = layout_of(s);
    for line in setup_lines(s, &prep) {
        say(&mut opts, &line);
    }
    let dir = claim.begin()?;
    dir.write("scenario.ron", &s.to_ron())?;
    prep.write(&dir)?;
    let book = Book::new(s, &prep, started);
    dir.write_json("summary.json", book.summary())?;
    say(
        &mut opts,
        &format!("run directory: {}", dir.path().display()),
    );
    let log = dir.round_log()?;
    let stamp = Stamp {
        fingerprint: run_marker(s).fingerprint,
        inputs: checkpoint::inputs_fingerprint(&prep),
    };
    let begin = Begin {
        book,
        log,
        stamp,
        resume: None,
    };
    execute(s, &prep, layout, &dir, opts, shutdown, begin).await
}

/// Where the rounds start: a new run's, or a stopped run's continued.
struct Begin {
    /// The running summary.
    book: Book,
    /// The round log to append to.
    log: crate::report::RoundLog,
    /// What each checkpoint is stamped with.
    stamp: Stamp,
    /// The state a resumed run continues from.
    resume: Option<crate::actors::server::Resume>,
}

/// The fingerprints every checkpoint carries.
struct Stamp {
    fingerprint: String,
    inputs: String,
}

/// The adapter layout of `s`'s trainer.
pub(crate) fn layout_of(s: &Scenario) -> Arc<AdapterLayout> {
    Arc::new(s.trainer.layout(&s.model, &s.lora))
}

/// Run the rounds (the actors) from `begin` and write what the run leaves behind.
async fn execute(
    s: &Scenario,
    prep: &Prepared,
    layout: Arc<AdapterLayout>,
    dir: &RunDir,
    mut opts: RunOptions,
    shutdown: Shutdown,
    begin: Begin,
) -> Result<RunReport, SimError> {
    let info = RunInfo {
        scenario: s.name.clone(),
        strategy: s.strategy().name().to_string(),
        model: s.model_name.clone(),
        dp: s
            .dp
            .as_ref()
            .map_or("none".to_string(), |d| d.mechanism.name().to_string()),
        task: s.task_eval.as_ref().map(|e| e.task.name()),
        server_lr: match s.strategy() {
            crate::strategy::Strategy::ServerOpt(o) => Some(o.server_lr()),
            _ => None,
        },
    };
    if let Some(t) = &opts.telemetry {
        t.run_info(&info);
        // A resumed run's earlier rounds count in its metrics too.
        for r in begin.resume.iter().flat_map(|r| &r.rounds) {
            t.round(r, &begin.book.summary().slot_busy_seconds);
        }
    }
    let observers = Observers {
        pace: opts.pace,
        progress: opts.progress.take(),
        telemetry: opts.telemetry.clone(),
    };
    let Begin {
        book,
        log,
        stamp,
        resume,
    } = begin;
    let book = Arc::new(std::sync::Mutex::new(Some(book)));
    let recorder = Recorder {
        dir: dir.clone(),
        book: book.clone(),
        log,
        stamp,
    };
    let result = run_actors(s, prep, layout, observers, shutdown, recorder, resume).await;
    let book = book
        .lock()
        .ok()
        .and_then(|mut b| b.take())
        .expect("the round sink is gone once the actors have stopped");
    finish_run(s, prep, dir, &info, book, result)
}

/// What a run directory of `s` is marked with.
pub fn run_marker(s: &Scenario) -> Marker {
    Marker {
        kind: DirKind::Run,
        name: s.name.clone(),
        fingerprint: format!("{:016x}", crate::hash::fnv1a(s.to_ron().as_bytes())),
    }
}

/// Write what a run leaves behind once its rounds are over — completed, interrupted, out of
/// budget or failed (rounds.jsonl already holds each round as it happened).
fn finish_run(
    s: &Scenario,
    prep: &Prepared,
    dir: &RunDir,
    info: &RunInfo,
    mut book: Book,
    result: Result<(ServerOutcome, Vec<f64>, Vec<crate::cluster::WorkerRecord>), SimError>,
) -> Result<RunReport, SimError> {
    let failed = |message: String| SimError::Failed {
        dir: dir.path().to_path_buf(),
        message,
    };
    let (outcome, busy, workers) = match result {
        Ok(v) => v,
        Err(e) => {
            let message = crate::fmt::chain(&e);
            dir.write_json("summary.json", book.fail(message.clone()))?;
            return Err(failed(message));
        }
    };
    dir.write(
        "metrics.om",
        &crate::telemetry::openmetrics::render(&outcome.rounds, info),
    )?;
    // The adapter of the last good round is written even when the run failed part-way
    // (the synthetic trainer has no model to adapt: nothing to save).
    if prep.lora.is_some() {
        outcome
            .global
            .save_peft(dir.path(), &s.lora, &s.model, &s.model_name)
            .map_err(|e| failed(crate::fmt::chain(&e)))?;
    }
    let mut summary = book.finish(s, &outcome, busy);
    summary.workers = workers;
    summary.backdoor = summary::backdoor(s, prep, &outcome.global)?;
    dir.write_json("summary.json", &summary)?;
    if !summary.status.resumable() {
        // An ended run has nothing to resume: its checkpoint and journal go.
        dir.remove(crate::report::CHECKPOINT)?;
        dir.remove(crate::report::JOURNAL)?;
    }
    if summary.status == RunStatus::Failed {
        return Err(failed(summary.error.clone().unwrap_or_default()));
    }
    Ok(RunReport {
        dir: dir.path().to_path_buf(),
        summary,
        rounds: outcome.rounds,
    })
}

fn say(opts: &mut RunOptions, line: &str) {
    if let Some(p) = opts.progress.as_mut() {
        p(Progress::Setup(line));
    }
}

/// [`prepare_with`] on a blocking thread, forwarding its progress to `opts.progress` and
/// stopping at the next stage report (at most ~10,000 records of work) once a stop is asked.
async fn prepare_off_executor(
    s: &Scenario,
    opts: &mut RunOptions,
    shutdown: &Shutdown,
) -> Result<Prepared, SimError> {
    let scenario = s.clone();
    let mut progress = opts.progress.take();
    let shutdown = shutdown.clone();
    let (prep, progress) = tokio::task::spawn_blocking(move || {
        let prep = prepare_with(&scenario, &mut |stage, done, total| {
            if shutdown.level() >= StopLevel::FinishRound {
                return Err(crate::data::Stopped);
            }
            if let Some(p) = progress.as_mut() {
                p(Progress::Stage { stage, done, total });
            }
            Ok(())
        });
        (prep, progress)
    })
    .await
    .map_err(|e| SimError::Actor(format!("set-up task: {e}")))?;
    opts.progress = progress;
    prep
}

async fn run_actors(
    s: &Scenario,
    prep: &Prepared,
    layout: Arc<AdapterLayout>,
    observers: Observers,
    shutdown: Shutdown,
    recorder: Recorder,
    resume: Option<Resume>,
) -> Result<(ServerOutcome, Vec<f64>, Vec<crate::cluster::WorkerRecord>), SimError> {
    let dir = recorder.dir.clone();
    let (initial, mut pool) = wiring::slot_pool(s, prep, &layout)?;
    let telemetry = observers.telemetry.clone();
    let (cluster, _sampler) = workers::start(s, prep, &layout, &mut pool, telemetry).await?;
    let pace = observers.pace;
    let sink = round_sink(recorder, observers, pool.busy());
    let hierarchy = wiring::hierarchy(s, prep)?;
    let (edges, edge_handles) = wiring::spawn_edges(s, &layout, hierarchy.as_deref()).await?;
    let compressing = wiring::compressing(s, &layout, resume.as_ref());
    let upload_bytes = compressing.0.as_ref().map(|c| c.encoded_len());
    let (aggregator, agg_handle) =
        wiring::spawn_aggregator(s, layout, compressing.0.clone(), resume.as_ref()).await?;
    let routes = wiring::edge_routes(hierarchy.as_deref(), &edges);
    let clients = wiring::client_context(
        s,
        prep,
        (pool.handle(), &initial),
        aggregator.clone(),
        routes,
        compressing,
    )?;
    let split_bytes = clients.split.as_ref().map(|p| p.adapter_bytes);
    let (tx, rx) = oneshot::channel();
    let args = ServerArgs {
        config: ServerConfig {
            secure: wiring::secure_params(s, prep)?,
            hierarchy,
            upload_bytes: upload_bytes.or(split_bytes),
            download_bytes: split_bytes,
            ..wiring::server_config(s, prep.lora.is_some(), pace)
        },
        shards: prep
            .shards
            .iter()
            .map(|v| Arc::from(v.as_slice()))
            .collect(),
        slots: pool.handle(),
        aggregator: aggregator.clone(),
        edges: edges.clone(),
        clients,
        initial,
        sink,
        dp: s.dp.clone(),
        shutdown: shutdown.clone(),
        done: tx,
        resume,
    };
    let outcome = serve(args, rx, &shutdown).await;
    teardown::save_server_state(&aggregator, &dir).await?;
    teardown::stop_aggregators((aggregator, agg_handle), edges.iter().zip(edge_handles)).await;
    let busy = teardown::release_slots(pool, &shutdown).await?;
    let workers = cluster.map(|c| c.records()).unwrap_or_default();
    Ok((outcome?, busy, workers))
}

fn actor_err(e: &dyn std::fmt::Display) -> SimError {
    SimError::Actor(e.to_string())
}

/// Start the server and wait for its outcome; a second stop request abandons the round in
/// progress.
async fn serve(
    args: ServerArgs,
    outcome: oneshot::Receiver<ServerOutcome>,
    shutdown: &Shutdown,
) -> Result<ServerOutcome, SimError> {
    let (server, server_handle) = Actor::spawn(None, Server, args)
        .await
        .map_err(|e| actor_err(&e))?;
    let abandon = {
        let (server, mut shutdown) = (server.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.reached(StopLevel::Abandon).await;
            let _ = server.send_message(ServerMsg::Abandon);
        })
    };
    server
        .send_message(ServerMsg::Start)
        .map_err(|e| actor_err(&e))?;
    let outcome = outcome
        .await
        .map_err(|_| SimError::Actor("the server stopped without a result".into()));
    let _ = server_handle.await;
    abandon.abort();
    outcome
}
