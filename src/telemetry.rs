//! Prometheus metrics: names, units, descriptions and histogram buckets in one place, and the
//! per-run recorder that the server's round sink feeds.
//!
//! Each run owns its recorder (a `PrometheusRecorder` used through `metrics`'
//! `with_local_recorder`), so runs in one process — tests in parallel — never mix their
//! series; the CLI serves it over HTTP on loopback. Names follow DESIGN §6: `fedsim_` prefix,
//! base units, counters end in `_total`, bounded labels only (`outcome`, `direction`,
//! `accountant`, `slot`), explicit buckets so histograms export as histograms.

pub mod openmetrics;

use std::net::SocketAddr;
use std::sync::Arc;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{
    ExporterFuture, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::messages::RoundSummary;

/// Errors of the metrics exporter.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The listen address cannot be bound.
    #[error("cannot serve metrics on {addr}: {message}; pick another address with --metrics-addr HOST:PORT, or --metrics-addr none")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The exporter could not be configured.
    #[error("metrics exporter: {0}")]
    Build(String),
}

/// Current round number.
pub const ROUND: &str = "fedsim_round";
/// Rounds finished.
pub const ROUNDS_COMPLETED: &str = "fedsim_rounds_completed_total";
/// Clients sampled in the last round.
pub const CLIENTS_SAMPLED: &str = "fedsim_clients_sampled";
/// Client results by outcome.
pub const CLIENT_UPDATES: &str = "fedsim_client_updates_total";
/// Host wall time per round.
pub const ROUND_WALL: &str = "fedsim_round_wall_seconds";
/// Serialised adapter bytes by direction.
pub const NETWORK_BYTES: &str = "fedsim_network_bytes_total";
/// Pre-clip L2 norm of each client update.
pub const UPDATE_NORM: &str = "fedsim_client_update_norm";
/// Example-weighted mean training loss of the last round.
pub const TRAIN_LOSS: &str = "fedsim_train_loss";
/// Held-out loss after the last round.
pub const EVAL_LOSS: &str = "fedsim_eval_loss";
/// Held-out perplexity after the last round.
pub const EVAL_PERPLEXITY: &str = "fedsim_eval_perplexity";
/// Tokens trained on.
pub const TOKENS: &str = "fedsim_tokens_trained_total";
/// Seconds each slot spent on jobs.
pub const SLOT_BUSY: &str = "fedsim_slot_busy_seconds_total";
/// ε after the last round.
pub const DP_EPSILON: &str = "fedsim_dp_epsilon";
/// δ of the reported ε.
pub const DP_DELTA: &str = "fedsim_dp_delta";
/// Std of the noise on the averaged update.
pub const DP_NOISE: &str = "fedsim_dp_noise_stddev";
/// Clipping norm in force.
pub const DP_CLIP: &str = "fedsim_dp_clip_norm";
/// Updates that were clipped.
pub const DP_CLIPPED: &str = "fedsim_dp_clipped_updates_total";
/// Share of the last round's updates that were clipped.
pub const DP_CLIPPED_RATIO: &str = "fedsim_dp_clipped_ratio";
/// Constant 1, labelled with what the run is.
pub const RUN_INFO: &str = "fedsim_run_info";

const WALL_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
const NORM_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 100.0, 1000.0,
];

/// A run's metrics: the recorder, a handle to render it, and (for the CLI) the HTTP exporter.
#[derive(Clone)]
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

/// What `fedsim_run_info` says about the run.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Strategy name.
    pub strategy: String,
    /// Model name.
    pub model: String,
    /// DP mechanism, or "none".
    pub dp: String,
}

impl Telemetry {
    /// A recorder without an HTTP listener (tests, `--metrics-addr none`).
    pub fn unserved() -> Self {
        let recorder = builder().build_recorder();
        Self::from_recorder(recorder)
    }

    /// A recorder served at `addr`; the returned future serves HTTP and must be spawned on a
    /// tokio runtime. Must be called inside one. Returns the address actually bound (port 0
    /// picks a free port).
    ///
    /// # Errors
    /// [`TelemetryError::Bind`] when the address is taken or not available.
    pub fn served(addr: SocketAddr) -> Result<(Self, ExporterFuture, SocketAddr), TelemetryError> {
        let bind_err = |e: &dyn std::fmt::Display| TelemetryError::Bind {
            addr,
            message: e.to_string(),
        };
        // Bind first to report a taken address clearly (the exporter would say less), and to
        // learn the port the OS picks for port 0; the exporter then binds that port.
        let bound = std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|e| bind_err(&e))?;
        let (recorder, future) = builder()
            .with_http_listener(bound)
            .build()
            .map_err(|e| bind_err(&e))?;
        Ok((Self::from_recorder(recorder), future, bound))
    }

    fn from_recorder(recorder: PrometheusRecorder) -> Self {
        let handle = recorder.handle();
        let t = Self {
            recorder: Arc::new(recorder),
            handle,
        };
        t.with(describe);
        t
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&*self.recorder, f)
    }

    /// The exposition text, as a scrape would see it.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Set `fedsim_run_info{…} 1`.
    pub fn run_info(&self, info: &RunInfo) {
        self.with(|| {
            gauge!(
                RUN_INFO,
                "scenario" => info.scenario.clone(),
                "strategy" => info.strategy.clone(),
                "model" => info.model.clone(),
                "dp" => info.dp.clone()
            )
            .set(1.0);
        });
    }

    /// Record one finished round (and each slot's busy time so far).
    pub fn round(&self, r: &RoundSummary, slot_busy_seconds: &[f64]) {
        self.with(|| {
            gauge!(ROUND).set(r.round as f64);
            counter!(ROUNDS_COMPLETED).increment(1);
            gauge!(CLIENTS_SAMPLED).set(r.sampled as f64);
            counter!(CLIENT_UPDATES, "outcome" => "completed").increment(r.completed as u64);
            counter!(CLIENT_UPDATES, "outcome" => "failed").increment(r.failed as u64);
            histogram!(ROUND_WALL).record(r.wall_seconds);
            counter!(NETWORK_BYTES, "direction" => "down").increment(r.bytes_down);
            counter!(NETWORK_BYTES, "direction" => "up").increment(r.bytes_up);
            for &n in &r.update_norms {
                histogram!(UPDATE_NORM).record(n);
            }
            if r.train_loss.is_finite() {
                gauge!(TRAIN_LOSS).set(r.train_loss);
            }
            gauge!(EVAL_LOSS).set(r.eval_loss);
            gauge!(EVAL_PERPLEXITY).set(r.eval_perplexity);
            counter!(TOKENS).increment(r.tokens as u64);
            for (slot, &s) in slot_busy_seconds.iter().enumerate() {
                counter!(SLOT_BUSY, "slot" => slot.to_string()).absolute(s as u64);
            }
            if let Some(dp) = &r.dp {
                gauge!(DP_EPSILON, "accountant" => "rdp").set(dp.dp_epsilon);
                if let Some(e) = dp.dp_epsilon_pld {
                    gauge!(DP_EPSILON, "accountant" => "pld").set(e);
                }
                gauge!(DP_DELTA).set(dp.dp_delta);
                gauge!(DP_NOISE).set(dp.dp_noise_stddev);
                gauge!(DP_CLIP).set(dp.dp_clip_norm);
                gauge!(DP_CLIPPED_RATIO).set(dp.dp_clipped_fraction);
                let clipped = (dp.dp_clipped_fraction * r.update_norms.len() as f64).round() as u64;
                counter!(DP_CLIPPED).increment(clipped);
            }
        });
    }
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ROUND_WALL.into()), &WALL_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UPDATE_NORM.into()), &NORM_BUCKETS))
        .expect("bucket lists are non-empty")
}

fn describe() {
    describe_gauge!(ROUND, "Current federated round (1-based).");
    describe_counter!(ROUNDS_COMPLETED, "Rounds finished.");
    describe_gauge!(CLIENTS_SAMPLED, "Clients sampled in the last round.");
    describe_counter!(
        CLIENT_UPDATES,
        "Client results by outcome (completed, failed)."
    );
    describe_histogram!(
        ROUND_WALL,
        Unit::Seconds,
        "Host wall-clock seconds per round."
    );
    describe_counter!(
        NETWORK_BYTES,
        Unit::Bytes,
        "Serialised adapter bytes sent (down) and received (up)."
    );
    describe_histogram!(
        UPDATE_NORM,
        "L2 norm of each client update before clipping."
    );
    describe_gauge!(
        TRAIN_LOSS,
        "Example-weighted mean local training loss of the last round (nats/token)."
    );
    describe_gauge!(
        EVAL_LOSS,
        "Held-out loss after the last round (nats/token)."
    );
    describe_gauge!(EVAL_PERPLEXITY, "Held-out perplexity after the last round.");
    describe_counter!(TOKENS, "Tokens trained on, all clients.");
    describe_counter!(
        SLOT_BUSY,
        Unit::Seconds,
        "Seconds each compute slot spent on jobs (whole seconds)."
    );
    describe_gauge!(
        DP_EPSILON,
        "Epsilon after the last round, by accountant (rdp, pld)."
    );
    describe_gauge!(DP_DELTA, "Delta of the reported epsilon.");
    describe_gauge!(
        DP_NOISE,
        "Std of the DP noise on the averaged update (z*C/m)."
    );
    describe_gauge!(DP_CLIP, "Clipping norm in force.");
    describe_counter!(DP_CLIPPED, "Client updates whose norm exceeded the clip.");
    describe_gauge!(
        DP_CLIPPED_RATIO,
        "Share of the last round's updates that were clipped."
    );
    describe_gauge!(
        RUN_INFO,
        "Constant 1, labelled with the scenario, strategy, model and DP mechanism."
    );
}
