//! Closing a round, the same under either driver: aggregate, check the new global, evaluate,
//! account privacy, record — and the rounds that have too few clients to run at all.

use ractor::{call, ActorProcessingErr, ActorRef};

use super::config::ServerMsg;
use super::outcome::{EarlyStop, Overflow, RunFailure};
use super::record::{dp_metrics, RoundFacts, RoundState};
use super::snapshot::AsyncSnapshot;
use super::state::Core;
use crate::actors::aggregator::{Aggregate, AggregatorMsg};
use crate::messages::{RoundId, TaskScope};
use crate::privacy::{DpSampling, PrivacyLedger};
use crate::shutdown::StopLevel;
use crate::stragglers::ShortRound;

/// How a close went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(super) enum Closed {
    /// The round was recorded; the run goes on.
    Recorded,
    /// The run ended (its last round, a failure, or a stop).
    Ended,
}

/// Virtual seconds a round with too few clients waits before the next one (without a deadline).
const SHORT_ROUND_WAIT: f64 = 60.0;

/// Close the round in progress. `in_flight` is what the asynchronous driver has in flight
/// (saved with the checkpoint).
pub(super) async fn close_round(
    me: &ActorRef<ServerMsg>,
    st: &mut Core,
    in_flight: Option<AsyncSnapshot>,
) -> Result<Closed, ActorProcessingErr> {
    let global = st.global.clone();
    let agg = call!(st.args.aggregator, |reply| AggregatorMsg::Finish {
        global,
        reply
    })?;
    let round = st.current.round;
    st.current.settle();
    if let Some(u) = &agg.unmasking {
        let _ = super::secure::unmask(st, u);
    }
    if let Some(d) = &agg.decryption {
        super::secure::decrypt(st, d);
    }
    for (client, why) in &agg.rejected {
        tracing::warn!("round {round}: update of client {client} rejected: {why}");
    }
    if let Some(failure) = non_finite(round, &agg) {
        // Keep the last finite global adapter: it is what the run directory saves.
        st.finish(me, Some(failure));
        return Ok(Closed::Ended);
    }
    let changed = agg.folded > 0 || agg.noise_stddev.is_some();
    st.global = agg.global.clone();
    let scope = st.args.config.task_scope(round);
    let eval = match (changed, st.last_eval.clone()) {
        _ if !st.args.config.evaluate => crate::messages::EvaluateRes::none(round),
        (false, Some(e)) if covers(&e, scope) => e,
        _ => match st.evaluate(round, Some(st.global.clone()), scope).await {
            Ok(e) => e,
            Err(source) => {
                st.finish(me, Some(RunFailure::Evaluation { round, source }));
                return Ok(Closed::Ended);
            }
        },
    };
    if st.args.config.evaluate && !eval.loss.is_finite() {
        let failure = RunFailure::Diverged {
            round,
            loss: eval.loss,
            server_lr: agg.server_lr,
        };
        st.finish(me, Some(failure));
        return Ok(Closed::Ended);
    }
    let task = (scope != TaskScope::Skip)
        .then(|| eval.task.clone())
        .flatten();
    st.last_eval = Some(eval.clone());
    let dp = account(st, round, &agg);
    let facts = RoundFacts {
        folded: agg.folded,
        rejected: agg.rejected.len(),
        eval_loss: eval.loss,
        eval_perplexity: eval.perplexity,
        dp,
        host_per_token: st.host_per_token(),
        // A round that released nothing on purpose (`secagg_threshold`, …) says why.
        skipped: agg.withheld.as_ref().map(ToString::to_string),
        byzantine: byzantine_round(st, &agg),
        task,
    };
    record(me, st, facts, in_flight).await
}

/// Whether an earlier evaluation already holds what `scope` asks of the task (a round that
/// changed nothing reuses it).
fn covers(e: &crate::messages::EvaluateRes, scope: TaskScope) -> bool {
    match scope {
        TaskScope::Skip => true,
        TaskScope::Subset => e.task.is_some(),
        TaskScope::SubsetAndFull => e.task.as_ref().is_some_and(|t| t.full.is_some()),
    }
}

/// What the round's Byzantine clients did, when the scenario has any.
fn byzantine_round(st: &Core, agg: &Aggregate) -> Option<crate::messages::ByzantineRound> {
    let b = st.args.clients.faults.byzantine.as_ref()?;
    Some(crate::messages::ByzantineRound {
        // Distinct clients: under a hierarchy a client has a record per edge round.
        byzantine_sampled: (st.current.records.iter())
            .filter(|r| b.is_attacker(r.client))
            .map(|r| r.client)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        byzantine_aggregated: agg.byzantine,
        // Not computed under a hierarchy (the edges aggregate): absent from rounds.jsonl.
        aggregate_deviation: match (agg.deviation, &st.current.hierarchy) {
            (None, Some(_)) => None,
            (d, _) => Some(d.unwrap_or(0.0)),
        },
    })
}

/// Record the round (sink with the checkpoint, clock, pace).
async fn record(
    me: &ActorRef<ServerMsg>,
    st: &mut Core,
    facts: RoundFacts,
    in_flight: Option<AsyncSnapshot>,
) -> Result<Closed, ActorProcessingErr> {
    let round = st.current.round;
    let summary = st.current.summary(facts);
    st.clock = st.current.close_at;
    let snapshot = super::snapshot::take(st, st.summaries.len() + 1, in_flight).await?;
    if let Err(source) = (st.args.sink)(&summary, &snapshot) {
        st.summaries.push(summary);
        st.finish(me, Some(RunFailure::Record { round, source }));
        return Ok(Closed::Ended);
    }
    st.summaries.push(summary);
    if let (Some(pace), Some(started)) = (st.args.config.pace, st.current.started) {
        // Play rounds at a watchable rate; the simulation itself is unchanged.
        let elapsed = started.elapsed();
        if elapsed < pace {
            let mut stop = st.args.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(pace - elapsed) => {}
                _ = stop.reached(StopLevel::FinishRound) => {}
            }
        }
    }
    Ok(Closed::Recorded)
}

/// A round with too few clients: recorded with its reason; the model does not change and no
/// privacy is spent. The run goes on, or stops, as `system.short_round` says.
pub(super) async fn short_round(
    me: &ActorRef<ServerMsg>,
    st: &mut Core,
    round: RoundId,
    start: f64,
    available: usize,
    why: super::outcome::ShortReason,
    in_flight: Option<AsyncSnapshot>,
) -> Result<Closed, ActorProcessingErr> {
    let config = &st.args.config;
    let close_at = start + config.deadline_s.unwrap_or(SHORT_ROUND_WAIT);
    st.current = RoundState::open(round, config.lr(round), start, close_at);
    st.current.available = available;
    st.current.unavailable = st.alive_count() - available;
    let eval = st
        .last_eval
        .clone()
        .unwrap_or_else(|| crate::messages::EvaluateRes::none(round));
    let dp = st.ledger.as_ref().and_then(PrivacyLedger::last).map(|g| {
        let l = st.ledger.as_ref().expect("checked above");
        dp_metrics(g, 0.0, l.clip(), 0.0, &[])
    });
    let facts = RoundFacts {
        folded: 0,
        rejected: 0,
        eval_loss: eval.loss,
        eval_perplexity: eval.perplexity,
        dp,
        host_per_token: st.host_per_token(),
        skipped: Some(why.to_string()),
        byzantine: None,
        task: None,
    };
    if st.args.config.short_round == ShortRound::Stop {
        let summary = st.current.summary(facts);
        st.clock = st.current.close_at;
        let snapshot = super::snapshot::take(st, st.summaries.len() + 1, in_flight).await?;
        let _ = (st.args.sink)(&summary, &snapshot);
        st.summaries.push(summary);
        st.stop = Some(EarlyStop::TooFewClients { round, why });
        st.finish(me, None);
        return Ok(Closed::Ended);
    }
    record(me, st, facts, in_flight).await
}

/// Privacy accounting after a round (and the adaptive clip's update).
fn account(
    st: &mut Core,
    round: RoundId,
    agg: &Aggregate,
) -> Option<crate::messages::DpRoundMetrics> {
    let seed = st.args.config.seed;
    let cur = &st.current;
    st.ledger.as_mut().map(|ledger| {
        let g = ledger.record(cur.q);
        let clip = ledger.clip();
        let mut m = dp_metrics(g, cur.q, clip, agg.noise_stddev.unwrap_or(0.0), &cur.norms);
        // Adaptive clipping: the same denominator as the update average.
        let denom = match ledger.plan().sampling {
            DpSampling::Poisson => cur.q * cur.available as f64,
            DpSampling::Fixed => agg.folded as f64,
        };
        let mut noise = ledger
            .plan()
            .noise
            .generator(seed, round, 1, ledger.count_stddev());
        m.dp_noised_unclipped_fraction = ledger.adapt_clip(&cur.norms, denom, &mut noise);
        m.dp_epsilon_pld = ledger.pld_epsilon();
        m
    })
}

/// Why the aggregated adapter cannot become the global one, if it cannot.
fn non_finite(round: RoundId, agg: &Aggregate) -> Option<RunFailure> {
    let bad = agg.global.data().iter().filter(|x| !x.is_finite()).count();
    if bad == 0 {
        return None;
    }
    let cause = match (agg.noise_stddev, agg.server_lr) {
        (Some(sd), _) => Overflow::Noise(sd),
        (None, Some(lr)) => Overflow::ServerStep(lr),
        (None, None) => Overflow::Average,
    };
    Some(RunFailure::NonFinite {
        round,
        bad,
        of: agg.global.data().len(),
        cause,
    })
}
