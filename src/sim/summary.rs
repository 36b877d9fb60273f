//! `summary.json` as the run goes: written with status `running` before round 1 and after
//! every round (atomically), so a killed run leaves a directory that says it is incomplete and
//! how far it got; rewritten with the final status at the end.

use crate::split::SplitTraffic;
use crate::topology::HierarchyTotals;
use std::time::Instant;

use super::prepare::Prepared;
use super::SimError;
use crate::actors::server::{EarlyStop, ServerOutcome};
use crate::eval::progress::RoundPoint;
use crate::messages::RoundSummary;
use crate::report::{DpSummary, Dropped, RunStatus, Summary};
use crate::scenario::Scenario;

/// The summary of a run in progress.
pub(super) struct Book {
    summary: Summary,
    started: Instant,
}

impl Book {
    /// Status `running`, nothing trained yet; held-out losses unknown (NaN, written as null).
    pub(super) fn new(s: &Scenario, prep: &Prepared, started: Instant) -> Self {
        let base = s.model.num_parameters();
        let trainable = s.lora.trainable_parameters(&s.model);
        let summary = Summary {
            scenario: s.name.clone(),
            status: RunStatus::Running,
            error: None,
            stop_reason: None,
            dp: None,
            seed: s.seed,
            model: s.model_name.clone(),
            base_parameters: base,
            base_precision: s.base_precision.name().to_string(),
            inference_activations: s.inference_activations.name().to_string(),
            compute_dtype: s.compute_dtype.name().to_string(),
            base_bytes: s.base_footprint.bytes() as u64,
            trainable_parameters: trainable,
            trainable_percent: 100.0 * trainable as f64 / (base + trainable) as f64,
            clients: prep.shards.len(),
            train_examples: prep.train_examples,
            eval_examples: prep.eval_examples,
            eval_fingerprint: eval_fingerprint(prep),
            rounds_planned: s.rounds,
            rounds_completed: 0,
            pretrained_eval_loss: f64::NAN,
            pretrained_eval_perplexity: f64::NAN,
            final_eval_loss: f64::NAN,
            final_eval_perplexity: f64::NAN,
            bytes_down_total: 0,
            bytes_up_total: 0,
            tokens_trained: 0,
            slots: s.slots,
            threads_per_slot: s.threads_per_slot,
            slot_busy_seconds: vec![0.0; s.slots],
            sim_seconds: 0.0,
            dropped: Dropped::default(),
            backdoor: None,
            task_eval: None,
            wall_seconds: 0.0,
            peak_rss_bytes: 0,
            workers: Vec::new(),
            secure_aggregation: None,
            hierarchy: None,
            split: None,
            compression: crate::compress::CompressionRecord::of(
                s.compression,
                std::sync::Arc::new(s.trainer.layout(&s.model, &s.lora)),
            ),
        };
        Self { summary, started }
    }

    /// A stopped run's summary (from its checkpoint), running again; its wall time goes on
    /// from where it stopped.
    pub(super) fn resumed(mut summary: Summary, started: Instant) -> Self {
        summary.status = RunStatus::Running;
        summary.error = None;
        summary.stop_reason = None;
        let before =
            std::time::Duration::try_from_secs_f64(summary.wall_seconds).unwrap_or_default();
        let started = started.checked_sub(before).unwrap_or(started);
        Self { summary, started }
    }

    /// The summary as it stands.
    pub(super) fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Count one more finished round.
    pub(super) fn round(&mut self, r: &RoundSummary, busy: Vec<f64>) {
        let m = &mut self.summary;
        m.rounds_completed += 1;
        m.final_eval_loss = r.eval_loss;
        m.final_eval_perplexity = r.eval_perplexity;
        m.bytes_down_total += r.bytes_down;
        m.bytes_up_total += r.bytes_up;
        if let Some(t) = r.split {
            m.split = Some(m.split.unwrap_or_default().plus(t));
        }
        m.tokens_trained += r.tokens;
        m.slot_busy_seconds = busy;
        m.sim_seconds = r.sim_start_s + r.sim_duration_s;
        m.dropped.crashed += r.crashed;
        m.dropped.deadline += r.missed_deadline;
        m.dropped.failed += r.failed;
        m.dropped.edge_lost += r.edge_lost;
        if let Some(h) = &r.hierarchy {
            m.hierarchy.get_or_insert_with(Default::default).add(h);
        }
        if let Some(c) = &r.secure_aggregation {
            let run = m.secure_aggregation.get_or_insert_with(Default::default);
            run.cost.accumulate(c);
            run.failed_rounds += usize::from(secure_failed(r));
        }
        m.wall_seconds = self.started.elapsed().as_secs_f64();
    }

    /// A failure outside the round loop (the actor system).
    pub(super) fn fail(&mut self, error: String) -> &Summary {
        self.summary.status = RunStatus::Failed;
        self.summary.error = Some(error);
        self.summary.wall_seconds = self.started.elapsed().as_secs_f64();
        &self.summary
    }

    /// The final summary from the server's outcome.
    pub(super) fn finish(mut self, s: &Scenario, o: &ServerOutcome, busy: Vec<f64>) -> Summary {
        let m = &mut self.summary;
        m.status = status_of(o);
        m.error = o.error.as_ref().map(|e| crate::fmt::chain(e));
        m.stop_reason = o.stop.as_ref().map(ToString::to_string);
        if let Some(b) = &o.baseline {
            m.pretrained_eval_loss = b.loss;
            m.pretrained_eval_perplexity = b.perplexity;
        }
        // With no round finished the final model is the untrained adapter.
        let last = o.rounds.last();
        m.final_eval_loss = last.map_or(m.pretrained_eval_loss, |r| r.eval_loss);
        m.final_eval_perplexity = last.map_or(m.pretrained_eval_perplexity, |r| r.eval_perplexity);
        m.rounds_completed = o.rounds.len();
        let bytes = |f: fn(&RoundSummary) -> u64| {
            o.rounds
                .iter()
                .try_fold(0u64, |acc, r| acc.checked_add(f(r)))
        };
        let (down, up) = (bytes(|r| r.bytes_down), bytes(|r| r.bytes_up));
        m.bytes_down_total = down.unwrap_or(u64::MAX);
        m.bytes_up_total = up.unwrap_or(u64::MAX);
        m.tokens_trained = o.rounds.iter().map(|r| r.tokens).sum();
        m.secure_aggregation = crate::secagg::cost::SecAggRun::of(
            (o.rounds.iter()).map(|r| (&r.secure_aggregation, secure_failed(r))),
        );
        m.sim_seconds = last.map_or(0.0, |r| r.sim_start_s + r.sim_duration_s);
        m.dropped = dropped(&o.rounds);
        m.hierarchy = HierarchyTotals::of(o.rounds.iter().map(|r| &r.hierarchy));
        m.split = o
            .rounds
            .iter()
            .filter_map(|r| r.split)
            .reduce(SplitTraffic::plus);
        m.slot_busy_seconds = busy;
        m.dp = s.dp.as_ref().map(|plan| DpSummary {
            mechanism: plan.mechanism.name().to_string(),
            clip_norm: o.final_clip.unwrap_or(plan.mechanism.initial_clip()),
            noise_multiplier: plan.mechanism.noise_multiplier(),
            epsilon: o.epsilon.map_or(0.0, |g| g.epsilon),
            epsilon_pld: o.epsilon_pld,
            delta: plan.delta,
            order: o.epsilon.map_or(0.0, |g| g.order),
            accountant: plan.assumption(),
            noise_source: plan.noise.label().to_string(),
        });
        m.task_eval = task_eval(s, o);
        m.wall_seconds = self.started.elapsed().as_secs_f64();
        m.peak_rss_bytes = crate::host::peak_rss_bytes().unwrap_or(0);
        // A number that cannot be trusted is never recorded as a success.
        if let (Some(why), false) = (
            untrustworthy(m, down.is_some() && up.is_some()),
            m.status == RunStatus::Failed,
        ) {
            m.status = RunStatus::Failed;
            m.error = Some(why.to_string());
        }
        self.summary
    }
}

/// The task figures, when the scenario scores a task and an evaluation scored it.
fn task_eval(s: &Scenario, o: &ServerOutcome) -> Option<crate::eval::progress::TaskEvalSummary> {
    let e = s.task_eval.as_ref()?;
    let pretrained = o.baseline.as_ref().and_then(|b| b.task.as_ref());
    let last = o
        .final_eval
        .as_ref()
        .and_then(|f| f.task.as_ref())
        .or(pretrained)?;
    let points: Vec<RoundPoint> = o
        .rounds
        .iter()
        .map(|r| RoundPoint {
            round: r.round,
            accuracy: r.task_accuracy,
            sim_end_s: r.sim_start_s + r.sim_duration_s,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
        })
        .collect();
    Some(crate::eval::progress::summarise(
        &e.task.name(),
        pretrained,
        last,
        &points,
        e.target_accuracy,
    ))
}

/// The held-out records' fingerprint (empty for the synthetic trainer).
fn eval_fingerprint(prep: &Prepared) -> String {
    prep.lora
        .as_ref()
        .map_or_else(String::new, |l| crate::data::fingerprint(&l.data.eval))
}

/// Prompt the final global model for the backdoor planted by data-poisoning Byzantine clients.
pub(super) fn backdoor(
    s: &Scenario,
    prep: &Prepared,
    global: &crate::model::AdapterSet,
) -> Result<Option<crate::byzantine::BackdoorSuccess>, SimError> {
    let (Some(b), Some(l)) = (&s.system.byzantine, &prep.lora) else {
        return Ok(None);
    };
    let crate::byzantine::ByzantineAttack::Backdoor { trigger, target } = &b.attack else {
        return Ok(None);
    };
    let vars = crate::model::LoraVars::fixed(global, &s.lora, l.model.device())?;
    let model = l.model.merged(&vars)?;
    let success = crate::byzantine::backdoor_success(
        &model,
        &l.tokenizer,
        &l.format,
        &l.data.eval,
        (trigger, target),
        BACKDOOR_PROMPTS,
    )
    .map_err(|e| SimError::Backdoor(Box::new(e)))?;
    Ok(Some(success))
}

/// Held-out questions the backdoor is measured on.
const BACKDOOR_PROMPTS: usize = 50;

/// Why a summary's numbers cannot be trusted, if they cannot.
fn untrustworthy(m: &Summary, bytes_fit: bool) -> Option<&'static str> {
    if !m.sim_seconds.is_finite() {
        Some("the simulated time is not finite")
    } else if !bytes_fit {
        Some("the byte count overflows 64 bits")
    } else if m.pretrained_eval_loss.is_finite() && !m.final_eval_loss.is_finite() {
        Some("the final held-out loss is not finite")
    } else {
        None
    }
}

/// Whether a secure round released nothing (its `skipped` reason is the protocol's).
fn secure_failed(r: &RoundSummary) -> bool {
    r.secure_aggregation.is_some() && r.skipped.is_some()
}

/// Clients without an update over `rounds`, by reason.
fn dropped(rounds: &[RoundSummary]) -> Dropped {
    Dropped {
        crashed: rounds.iter().map(|r| r.crashed).sum(),
        deadline: rounds.iter().map(|r| r.missed_deadline).sum(),
        failed: rounds.iter().map(|r| r.failed).sum(),
        edge_lost: rounds.iter().map(|r| r.edge_lost).sum(),
    }
}

/// How the run ended, from the server's outcome.
fn status_of(o: &ServerOutcome) -> RunStatus {
    if o.error.is_some() {
        RunStatus::Failed
    } else if let Some(stop) = &o.stop {
        match stop {
            EarlyStop::Budget { .. } => RunStatus::BudgetExhausted,
            EarlyStop::TooFewClients { .. } => RunStatus::TooFewClients,
            EarlyStop::WorkersLost { .. } => RunStatus::WorkersLost,
        }
    } else if o.interrupted {
        RunStatus::Interrupted
    } else {
        RunStatus::Completed
    }
}
