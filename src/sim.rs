//! `run(scenario, options, shutdown)`: prepares data, tokenizer and model off the executor,
//! writes the run directory, starts the slots and the actors, and records every round.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ractor::Actor;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::aggregator::Aggregator;
use crate::actors::server::{RoundSink, Server, ServerArgs, ServerMsg};
use crate::data::{DataError, FederatedData};
use crate::messages::RoundSummary;
use crate::model::{AdapterLayout, BaseModel, ModelError};
use crate::report::{DpSummary, ReportError, RunDir, Summary};
use crate::rng::{derive, purpose, rng_for};
use crate::scenario::Scenario;
use crate::slots::{SlotContext, SlotError, SlotPool};
use crate::telemetry::{RunInfo, Telemetry};
use crate::tokenizer::{TextTokenizer, TokenizedExample, TokenizerError};

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Data could not be loaded or split.
    #[error(transparent)]
    Data(#[from] DataError),
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
    /// An actor could not start or answer.
    #[error("actor system: {0}")]
    Actor(String),
    /// The run failed part-way; what it wrote is in `dir`.
    #[error("run failed (partial results in {dir}): {message}")]
    Failed {
        /// Run directory.
        dir: PathBuf,
        /// The error.
        message: String,
    },
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

/// Everything prepared before the actors start.
pub struct Prepared {
    /// Records, shards, canaries.
    pub data: FederatedData,
    /// The trained tokenizer.
    pub tokenizer: TextTokenizer,
    /// Tokenised training examples.
    pub train: Arc<Vec<TokenizedExample>>,
    /// Tokenised held-out examples.
    pub eval: Arc<Vec<TokenizedExample>>,
    /// Each client's example indices.
    pub shards: Vec<Vec<u32>>,
    /// Examples (training and held-out) cut to fit `data.max_seq_len`.
    pub truncated: usize,
    /// The frozen base (one copy, shared by every slot).
    pub model: Arc<BaseModel>,
}

#[derive(Serialize)]
struct ClientPartition {
    client: usize,
    examples: usize,
    topics: BTreeMap<String, usize>,
}

/// Load data, train the tokenizer, tokenise, build the base model (CPU-bound: call off the
/// async executor).
///
/// # Errors
/// Data, tokenizer or model failures.
pub fn prepare(s: &Scenario) -> Result<Prepared, SimError> {
    let data = s.data.prepare()?;
    let tokenizer = TextTokenizer::train(&data.train, s.model.vocab_size)?;
    let mut truncated = 0;
    let mut tokenize = |records: &[crate::data::Record]| {
        records
            .iter()
            .map(|r| {
                let (e, cut) = tokenizer.example(r, s.max_seq_len)?;
                truncated += usize::from(cut);
                Ok(e)
            })
            .collect::<Result<Vec<TokenizedExample>, TokenizerError>>()
    };
    let train = tokenize(&data.train)?;
    let eval = tokenize(&data.eval)?;
    let shards: Vec<Vec<u32>> = data
        .shards
        .iter()
        .map(|sh| sh.iter().map(|&i| i as u32).collect())
        .collect();
    let model = BaseModel::random(
        &s.model,
        derive(s.seed, &[purpose::MODEL]),
        &candle_core::Device::Cpu,
    )?;
    Ok(Prepared {
        data,
        tokenizer,
        train: Arc::new(train),
        eval: Arc::new(eval),
        shards,
        truncated,
        model: Arc::new(model),
    })
}

/// Run `scenario` to the end, or until `shutdown` resolves (the current round then finishes).
///
/// # Errors
/// Set-up failures before the run directory exists; [`SimError::Failed`] after.
pub async fn run(
    scenario: &Scenario,
    mut opts: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunReport, SimError> {
    let started = Instant::now();
    let mut say = |line: &str| {
        if let Some(p) = opts.progress.as_mut() {
            p(Progress::Setup(line));
        }
    };
    let s = scenario.clone();
    let prep = tokio::task::spawn_blocking(move || prepare(&s))
        .await
        .map_err(|e| SimError::Actor(format!("set-up task: {e}")))??;
    let s = scenario;
    let layout = Arc::new(AdapterLayout::new(&s.model, &s.lora));
    let base_params = s.model.num_parameters();
    let trainable = layout.len();
    let pct = 100.0 * trainable as f64 / (base_params + trainable) as f64;
    say(&format!(
        "model {}: {} base parameters (frozen), LoRA r={} alpha={} on [{}]",
        s.model_name,
        base_params,
        s.lora.r,
        s.lora.alpha,
        s.lora
            .target_modules
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    say(&format!(
        "trainable params: {trainable} || all params: {} || trainable%: {pct:.4}",
        base_params + trainable
    ));
    let sizes: Vec<usize> = prep.shards.iter().map(Vec::len).collect();
    say(&format!(
        "data: {} training examples over {} clients ({:?}), {} held out, {} canaries, {} truncated to {} tokens",
        prep.train.len(),
        sizes.len(),
        s.data.partition,
        prep.eval.len(),
        prep.data.canaries.len(),
        prep.truncated,
        s.max_seq_len
    ));
    say(&format!("partition sizes: {}", size_line(&sizes)));
    if let Some(dp) = &s.dp {
        let c = dp.mechanism.initial_clip();
        let z = dp.mechanism.noise_multiplier();
        say(&format!(
            "differential privacy: {} (C = {c}, z = {z}, noise std on the sum {}), delta = {:e}{}; {}; noise {}",
            dp.mechanism.name(),
            dp.mechanism.value_noise_multiplier() * c,
            dp.delta,
            dp.max_epsilon.map_or(String::new(), |m| format!(", max epsilon {m}")),
            dp.assumption(),
            dp.noise.label()
        ));
    }

    let dir = RunDir::create(opts.out.as_deref(), &s.name)?;
    dir.write("scenario.ron", &s.to_ron())?;
    prep.tokenizer.save(&dir.path().join("tokenizer.json"))?;
    let base_dir = dir.path().join("base_model");
    prep.model.save_hf(&base_dir, prep.tokenizer.eos_id())?;
    prep.tokenizer.save(&base_dir.join("tokenizer.json"))?;
    dir.write_json("canaries.json", &prep.data.canaries)?;
    let partitions: Vec<ClientPartition> = prep
        .data
        .shards
        .iter()
        .enumerate()
        .map(|(client, shard)| {
            let mut topics = BTreeMap::new();
            for &i in shard {
                *topics.entry(prep.data.train[i].topic.clone()).or_insert(0) += 1;
            }
            ClientPartition {
                client,
                examples: prep.shards[client].len(),
                topics,
            }
        })
        .collect();
    dir.write_json("partitions.json", &partitions)?;
    say(&format!("run directory: {}", dir.path().display()));

    let info = RunInfo {
        scenario: s.name.clone(),
        strategy: format!("{:?}", s.file.strategy.kind),
        model: s.model_name.clone(),
        dp: s
            .dp
            .as_ref()
            .map_or("none".to_string(), |d| d.mechanism.name().to_string()),
    };
    if let Some(t) = &opts.telemetry {
        t.run_info(&info);
    }
    let observers = Observers {
        pace: opts.pace,
        progress: opts.progress.take(),
        telemetry: opts.telemetry.clone(),
    };
    let result = run_actors(s, &prep, layout, &dir, observers, shutdown).await;
    let (outcome, busy) = match result {
        Ok(v) => v,
        Err(e) => {
            let message = e.to_string();
            let _ = dir.write("error.txt", &format!("{message}\n"));
            return Err(SimError::Failed {
                dir: dir.path().to_path_buf(),
                message,
            });
        }
    };
    let failed = |message: String| SimError::Failed {
        dir: dir.path().to_path_buf(),
        message,
    };
    // Written once the rounds are over — completed, interrupted, out of budget or failed
    // (rounds.jsonl already holds each round as it happened).
    dir.write(
        "metrics.om",
        &crate::telemetry::openmetrics::render(&outcome.rounds, &info),
    )?;
    // The adapter is written even when the run failed part-way: results are never lost.
    outcome
        .global
        .save_peft(dir.path(), &s.lora, &s.model_name)
        .map_err(|e| failed(e.to_string()))?;
    if let Some(err) = &outcome.error {
        let _ = dir.write("error.txt", &format!("{err}\n"));
        return Err(failed(err.clone()));
    }
    let baseline = outcome
        .baseline
        .ok_or_else(|| failed("the server finished without a baseline evaluation".into()))?;
    // With no round finished (interrupted at once) the final model is the untrained adapter.
    let (final_loss, final_ppl) = outcome
        .rounds
        .last()
        .map_or((baseline.loss, baseline.perplexity), |r| {
            (r.eval_loss, r.eval_perplexity)
        });
    let summary = Summary {
        scenario: s.name.clone(),
        status: if outcome.stop_reason.is_some() {
            "budget_exhausted"
        } else if outcome.interrupted {
            "interrupted"
        } else {
            "completed"
        }
        .to_string(),
        stop_reason: outcome.stop_reason.clone(),
        dp: s.dp.as_ref().map(|plan| {
            let g = outcome.epsilon;
            DpSummary {
                mechanism: plan.mechanism.name().to_string(),
                clip_norm: outcome.final_clip.unwrap_or(plan.mechanism.initial_clip()),
                noise_multiplier: plan.mechanism.noise_multiplier(),
                epsilon: g.map_or(0.0, |g| g.epsilon),
                epsilon_pld: outcome.epsilon_pld,
                delta: plan.delta,
                order: g.map_or(0.0, |g| g.order),
                accountant: plan.assumption(),
                noise_source: plan.noise.label().to_string(),
            }
        }),
        seed: s.seed,
        model: s.model_name.clone(),
        base_parameters: base_params,
        trainable_parameters: trainable,
        trainable_percent: pct,
        clients: prep.shards.len(),
        train_examples: prep.train.len(),
        eval_examples: prep.eval.len(),
        rounds_planned: s.rounds,
        rounds_completed: outcome.rounds.len(),
        pretrained_eval_loss: baseline.loss,
        pretrained_eval_perplexity: baseline.perplexity,
        final_eval_loss: final_loss,
        final_eval_perplexity: final_ppl,
        bytes_down_total: outcome.rounds.iter().map(|r| r.bytes_down).sum(),
        bytes_up_total: outcome.rounds.iter().map(|r| r.bytes_up).sum(),
        tokens_trained: outcome.rounds.iter().map(|r| r.tokens).sum(),
        slots: s.slots,
        threads_per_slot: s.threads_per_slot,
        slot_busy_seconds: busy,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    dir.write_json("summary.json", &summary)?;
    Ok(RunReport {
        dir: dir.path().to_path_buf(),
        summary,
        rounds: outcome.rounds,
    })
}

fn size_line(sizes: &[usize]) -> String {
    if sizes.len() <= 20 {
        return format!("{sizes:?}");
    }
    let mut v = sizes.to_vec();
    v.sort_unstable();
    format!(
        "min {} / median {} / max {} (all in partitions.json)",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// Who hears about each round besides `rounds.jsonl`.
struct Observers {
    pace: Option<std::time::Duration>,
    progress: Option<ProgressFn>,
    telemetry: Option<Telemetry>,
}

async fn run_actors(
    s: &Scenario,
    prep: &Prepared,
    layout: Arc<AdapterLayout>,
    dir: &RunDir,
    observers: Observers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(crate::actors::server::ServerOutcome, Vec<f64>), SimError> {
    let Observers {
        pace: observers_pace,
        mut progress,
        telemetry,
    } = observers;
    let initial = Arc::new(
        s.lora
            .init_adapter(&s.model, &mut rng_for(s.seed, &[purpose::ADAPTER])),
    );
    let ctx = Arc::new(SlotContext {
        model: prep.model.clone(),
        lora: s.lora.clone(),
        layout: layout.clone(),
        train: prep.train.clone(),
        eval: prep.eval.clone(),
        eval_batch_size: s.eval_batch_size,
        pad: prep.tokenizer.eos_id(),
        seed: s.seed,
    });
    let pool = SlotPool::start(ctx, s.slots, s.threads_per_slot)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::SeqCst);
    });
    let mut log = dir.round_log()?;
    let busy = pool.busy();
    let sink: RoundSink = Box::new(move |r: &RoundSummary| {
        log.append(r).map_err(|e| e.to_string())?;
        if let Some(t) = &telemetry {
            t.round(r, &busy.seconds());
        }
        if let Some(p) = progress.as_mut() {
            p(Progress::Round(r));
        }
        Ok(())
    });
    let actor_err = |e: &dyn std::fmt::Display| SimError::Actor(e.to_string());
    let (aggregator, agg_handle) = Actor::spawn(None, Aggregator, layout)
        .await
        .map_err(|e| actor_err(&e))?;
    let (tx, rx) = oneshot::channel();
    let args = ServerArgs {
        rounds: s.rounds,
        seed: s.seed,
        sampling: s.sampling,
        local: s.local.clone(),
        lr_max: s.lr_max,
        lr_min: s.lr_min,
        shards: prep
            .shards
            .iter()
            .map(|v| Arc::from(v.as_slice()))
            .collect(),
        slots: pool.handle(),
        aggregator: aggregator.clone(),
        initial,
        sink,
        dp: s.dp.clone(),
        pace: observers_pace,
        shutdown: stop,
        done: tx,
    };
    let (server, server_handle) = Actor::spawn(None, Server, args)
        .await
        .map_err(|e| actor_err(&e))?;
    server
        .send_message(ServerMsg::Start)
        .map_err(|e| actor_err(&e))?;
    let outcome = rx
        .await
        .map_err(|_| SimError::Actor("the server stopped without a result".into()));
    let _ = server_handle.await;
    aggregator.stop(None);
    let _ = agg_handle.await;
    watcher.abort();
    let busy = pool.busy_seconds();
    tokio::task::spawn_blocking(move || pool.shutdown())
        .await
        .map_err(|e| actor_err(&e))?;
    Ok((outcome?, busy))
}
