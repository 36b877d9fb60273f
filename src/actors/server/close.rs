//! Closing a round: aggregate, check the new global, evaluate, account privacy, record — and
//! the rounds that have too few clients to run at all.

use std::time::Instant;

use ractor::{call, ActorProcessingErr, ActorRef};

use super::outcome::{Overflow, RunFailure};
use super::record::{dp_metrics, RoundFacts, RoundState};
use super::{evaluate, finish, retire_clients, EarlyStop, ServerMsg, ServerState};
use crate::actors::aggregator::{Aggregate, AggregatorMsg};
use crate::messages::RoundId;
use crate::privacy::{DpSampling, PrivacyLedger};
use crate::scenario::file::ShortRound;
use crate::shutdown::StopLevel;
use crate::train::cosine_annealing;

/// Virtual seconds a round with too few clients waits before the next one (without a deadline).
const SHORT_ROUND_WAIT: f64 = 60.0;

pub(super) async fn close_round(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<(), ActorProcessingErr> {
    let global = st.global.clone();
    let agg = call!(st.args.aggregator, |reply| AggregatorMsg::Finish {
        global,
        reply
    })?;
    let round = st.current.round;
    st.current.settle();
    for (client, why) in &agg.rejected {
        tracing::warn!("round {round}: update of client {client} rejected: {why}");
    }
    if let Some(failure) = non_finite(round, &agg) {
        // Keep the last finite global adapter: it is what the run directory saves.
        finish(me, st, Some(failure));
        return Ok(());
    }
    let changed = agg.folded > 0 || agg.noise_stddev.is_some();
    st.global = agg.global.clone();
    let eval = match (changed, st.last_eval) {
        _ if !st.args.evaluate => crate::messages::EvaluateRes {
            round,
            loss: f64::NAN,
            perplexity: f64::NAN,
            tokens: 0,
        },
        (false, Some(e)) => e,
        _ => match evaluate(&st.args.slots, round, Some(st.global.clone())).await {
            Ok(e) => e,
            Err(source) => {
                finish(me, st, Some(RunFailure::Evaluation { round, source }));
                return Ok(());
            }
        },
    };
    if st.args.evaluate && !eval.loss.is_finite() {
        let failure = RunFailure::Diverged {
            round,
            loss: eval.loss,
            server_lr: agg.server_lr,
        };
        finish(me, st, Some(failure));
        return Ok(());
    }
    st.last_eval = Some(eval);
    let dp = account(st, round, &agg);
    let facts = RoundFacts {
        folded: agg.folded,
        rejected: agg.rejected.len(),
        eval_loss: eval.loss,
        eval_perplexity: eval.perplexity,
        dp,
        host_per_token: host_per_token(st),
        skipped: None,
        byzantine: byzantine_round(st, &agg),
    };
    record(me, st, facts).await
}

/// What the round's Byzantine clients did, when the scenario has any.
fn byzantine_round(st: &ServerState, agg: &Aggregate) -> Option<crate::messages::ByzantineRound> {
    let b = st.args.clients.faults.byzantine.as_ref()?;
    Some(crate::messages::ByzantineRound {
        byzantine_sampled: st
            .current
            .records
            .iter()
            .filter(|r| b.is_attacker(r.client))
            .count(),
        byzantine_aggregated: agg.byzantine,
        aggregate_deviation: agg.deviation.unwrap_or(0.0),
    })
}

fn host_per_token(st: &ServerState) -> f64 {
    let (secs, tokens) = st.host_per_token;
    if tokens == 0 {
        0.0
    } else {
        secs / tokens as f64
    }
}

/// Record the round (sink, clock, pace) and start the next one.
async fn record(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    facts: RoundFacts,
) -> Result<(), ActorProcessingErr> {
    let round = st.current.round;
    if !st.is_async() {
        retire_clients(st);
    }
    let summary = st.current.summary(facts);
    st.clock = st.current.close_at;
    let snapshot = super::snapshot::take(st, st.summaries.len() + 1).await?;
    if let Err(source) = (st.args.sink)(&summary, &snapshot) {
        st.summaries.push(summary);
        finish(me, st, Some(RunFailure::Record { round, source }));
        return Ok(());
    }
    st.summaries.push(summary);
    if let (Some(pace), Some(started)) = (st.args.pace, st.current.started) {
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
    if !st.is_async() {
        me.send_message(ServerMsg::BeginRound)?;
    }
    Ok(())
}

/// A round with too few clients: recorded with its reason; the model does not change and no
/// privacy is spent. The run goes on, or stops, as `system.short_round` says.
pub(super) async fn short_round(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    round: RoundId,
    start: f64,
    alive: usize,
    available: usize,
    why: String,
) -> Result<(), ActorProcessingErr> {
    st.current = RoundState {
        round,
        lr: cosine_annealing(round, st.args.rounds, st.args.lr_max, st.args.lr_min),
        started: Some(Instant::now()),
        available,
        unavailable: alive - available,
        sim_start: start,
        close_at: start + st.args.system.deadline_s.unwrap_or(SHORT_ROUND_WAIT),
        ..Default::default()
    };
    let eval = st.last_eval.unwrap_or(crate::messages::EvaluateRes {
        round,
        loss: f64::NAN,
        perplexity: f64::NAN,
        tokens: 0,
    });
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
        host_per_token: host_per_token(st),
        skipped: Some(why.clone()),
        byzantine: None,
    };
    if st.args.system.short_round == ShortRound::Stop {
        let summary = st.current.summary(facts);
        st.clock = st.current.close_at;
        let snapshot = super::snapshot::take(st, st.summaries.len() + 1).await?;
        let _ = (st.args.sink)(&summary, &snapshot);
        st.summaries.push(summary);
        st.stop = Some(EarlyStop::TooFewClients { round, why });
        finish(me, st, None);
        return Ok(());
    }
    record(me, st, facts).await
}

/// Privacy accounting after a round (and the adaptive clip's update).
fn account(
    st: &mut ServerState,
    round: RoundId,
    agg: &Aggregate,
) -> Option<crate::messages::DpRoundMetrics> {
    let seed = st.args.seed;
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
