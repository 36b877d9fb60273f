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
/// Task accuracy on the fixed subset after the last round that scored it (label `task`).
pub const EVAL_ACCURACY: &str = "fedsim_eval_accuracy";
/// Task macro-F1 on the fixed subset after the last round that scored it (label `task`).
pub const EVAL_MACRO_F1: &str = "fedsim_eval_macro_f1";
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
/// Whether each worker answers (1) or is lost (0), by `worker`.
pub const WORKER_UP: &str = "fedsim_worker_up";
/// Slots each worker offers.
pub const WORKER_SLOTS: &str = "fedsim_worker_slots";
/// Jobs sent to each worker and not answered yet (its busy slots).
pub const WORKER_IN_FLIGHT: &str = "fedsim_worker_jobs_in_flight";
/// Jobs each worker answered.
pub const WORKER_JOBS: &str = "fedsim_worker_jobs_total";
/// Seconds the coordinator's slots waited on each worker's answers.
pub const WORKER_BUSY: &str = "fedsim_worker_busy_seconds_total";
/// Job bytes to and from each worker, by direction.
pub const WORKER_BYTES: &str = "fedsim_worker_bytes_total";
/// Each job's round trip to a worker: serialise, send, run, answer.
pub const WORKER_ROUND_TRIP: &str = "fedsim_worker_job_round_trip_seconds";
/// Times each worker was lost.
pub const WORKER_LOSSES: &str = "fedsim_worker_losses_total";
/// Times each worker came back and was set up again.
pub const WORKER_REJOINS: &str = "fedsim_worker_rejoins_total";
/// Constant 1, labelled with what the run is.
pub const RUN_INFO: &str = "fedsim_run_info";
/// Clients online when the last round started.
pub const CLIENTS_AVAILABLE: &str = "fedsim_clients_available";
/// Sampled (or offline) clients without an update, by reason.
pub const DROPOUTS: &str = "fedsim_client_dropouts_total";
/// Simulated duration of each round (virtual clock).
pub const ROUND_DURATION: &str = "fedsim_round_duration_seconds";
/// Simulated download / compute / upload time of each client that trained.
pub const CLIENT_PHASE: &str = "fedsim_client_phase_seconds";
/// The virtual clock at the end of the last round.
pub const SIM_TIME: &str = "fedsim_sim_time_seconds";
/// Largest lateness of a dropped straggler in the last round.
pub const LATE_MAX: &str = "fedsim_straggler_late_max_seconds";
/// Host seconds not spent training clients dropped before training, cumulative.
pub const HOST_SAVED: &str = "fedsim_host_seconds_saved";
/// The server optimiser's learning rate (FedAvgM, FedAdagrad, FedAdam, FedYogi).
pub const SERVER_LR: &str = "fedsim_server_learning_rate";
/// Byzantine clients among the last round's sampled clients.
pub const BYZANTINE_SAMPLED: &str = "fedsim_byzantine_sampled";
/// L2 distance between the last aggregate and the honest-only one.
pub const AGG_DEVIATION: &str = "fedsim_aggregate_deviation";

/// Bytes per tier of a hierarchical federation, by `tier` (client_edge, edge_cloud) and
/// `direction`.
pub const TIER_BYTES: &str = "fedsim_tier_bytes_total";
/// Simulated seconds of each tier per cloud round, by `tier` (edge: the edge rounds;
/// edge_cloud: the WAN legs).
pub const TIER_SECONDS: &str = "fedsim_tier_seconds";
/// Edge-rounds whose contribution was lost (offline, crashed or late edges).
pub const EDGES_LOST: &str = "fedsim_edges_lost_total";
/// Bytes of each secure aggregation phase, both ways, by `phase`.
pub const SECAGG_BYTES: &str = "fedsim_secure_aggregation_bytes_total";
/// Simulated seconds each secure aggregation phase added to a round, by `phase`.
pub const SECAGG_SECONDS: &str = "fedsim_secure_aggregation_seconds";
/// Split learning's messages, by `direction` (up: activations, labels and U-shaped's top
/// gradients; down: gradients and U-shaped's top activations).
pub const SPLIT_BYTES: &str = "fedsim_split_bytes_total";
/// Secure rounds that released nothing (`secagg_threshold`).
pub const SECAGG_FAILED: &str = "fedsim_secure_aggregation_failed_rounds_total";

/// A metric's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotone.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed observations (live exporter only; `metrics.om` leaves them out).
    Histogram,
}

/// One metric: name, kind, unit, help — defined once, for the live exporter and `metrics.om`.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// Name (counters end in `_total`).
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Seconds or bytes, when the name says so.
    pub unit: Option<Unit>,
    /// Help text.
    pub help: &'static str,
}

const fn def(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Def {
    Def {
        name,
        kind,
        unit,
        help,
    }
}

/// Every metric fedsim exports.
pub const DEFS: &[Def] = &[
    def(ROUND, Kind::Gauge, None, "Current federated round (1-based)."),
    def(ROUNDS_COMPLETED, Kind::Counter, None, "Rounds finished."),
    def(CLIENTS_SAMPLED, Kind::Gauge, None, "Clients sampled in the last round."),
    def(CLIENT_UPDATES, Kind::Counter, None, "Client results by outcome (completed, failed)."),
    def(ROUND_WALL, Kind::Histogram, Some(Unit::Seconds), "Host wall-clock seconds per round."),
    def(NETWORK_BYTES, Kind::Counter, Some(Unit::Bytes), "Serialised adapter bytes sent (down) and received (up)."),
    def(UPDATE_NORM, Kind::Histogram, None, "L2 norm of each client update before clipping."),
    def(TRAIN_LOSS, Kind::Gauge, None, "Example-weighted mean local training loss of the last round (nats/token)."),
    def(EVAL_LOSS, Kind::Gauge, None, "Held-out loss after the last round (nats/token)."),
    def(EVAL_PERPLEXITY, Kind::Gauge, None, "Held-out perplexity after the last round."),
    def(EVAL_ACCURACY, Kind::Gauge, None, "Task accuracy on the fixed subset after the last round that scored it, by task."),
    def(EVAL_MACRO_F1, Kind::Gauge, None, "Task macro-F1 on the fixed subset after the last round that scored it, by task."),
    def(TOKENS, Kind::Counter, None, "Tokens trained on, all clients."),
    def(SLOT_BUSY, Kind::Counter, Some(Unit::Seconds), "Seconds each compute slot spent on jobs (whole seconds)."),
    def(DP_EPSILON, Kind::Gauge, None, "Epsilon after the last round, by accountant (rdp, pld)."),
    def(DP_DELTA, Kind::Gauge, None, "Delta of the reported epsilon."),
    def(DP_NOISE, Kind::Gauge, None, "Std of the DP noise on the averaged update (z*C/m)."),
    def(DP_CLIP, Kind::Gauge, None, "Clipping norm in force."),
    def(DP_CLIPPED, Kind::Counter, None, "Client updates whose norm exceeded the clip."),
    def(DP_CLIPPED_RATIO, Kind::Gauge, None, "Share of the last round's updates that were clipped."),
    def(RUN_INFO, Kind::Gauge, None, "Constant 1, labelled with the scenario, strategy, model and DP mechanism."),
    def(CLIENTS_AVAILABLE, Kind::Gauge, None, "Clients online when the last round started."),
    def(DROPOUTS, Kind::Counter, None, "Clients without an update, by reason: unavailable (offline at the round's start), crashed, deadline (straggler dropped), failed, edge_lost (their edge aggregator offline, crashed or late)."),
    def(ROUND_DURATION, Kind::Histogram, Some(Unit::Seconds), "Simulated duration of each round on the virtual clock."),
    def(CLIENT_PHASE, Kind::Histogram, Some(Unit::Seconds), "Simulated seconds of each trained client's download, compute and upload."),
    def(SIM_TIME, Kind::Gauge, Some(Unit::Seconds), "The virtual clock at the end of the last round."),
    def(LATE_MAX, Kind::Gauge, Some(Unit::Seconds), "Largest lateness of a straggler dropped in the last round (virtual seconds)."),
    def(HOST_SAVED, Kind::Gauge, Some(Unit::Seconds), "Host seconds not spent training clients dropped before training, cumulative (estimated)."),
    def(SERVER_LR, Kind::Gauge, None, "Learning rate of the server optimiser (FedAvgM, FedAdagrad, FedAdam, FedYogi)."),
    def(BYZANTINE_SAMPLED, Kind::Gauge, None, "Byzantine clients among the last round's sampled clients."),
    def(AGG_DEVIATION, Kind::Gauge, None, "L2 distance between the last round's aggregate update and the same rule over the honest updates alone."),
    def(TIER_BYTES, Kind::Counter, Some(Unit::Bytes), "Bytes per tier of a hierarchical federation (tier client_edge: clients and their edge aggregators; edge_cloud: edges and the cloud, the WAN), by direction."),
    def(TIER_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Simulated seconds per cloud round of each tier (edge: the slowest edge's edge rounds; edge_cloud: the WAN legs)."),
    def(EDGES_LOST, Kind::Counter, None, "Edges whose round contribution was lost: offline, crashed before forwarding, or late (hierarchical topology)."),
    def(SECAGG_BYTES, Kind::Counter, Some(Unit::Bytes), "Bytes of each secure aggregation phase (keys, shares, masked, unmask; key_holders: between the server and the key holders under homomorphic encryption), both directions, by phase."),
    def(SECAGG_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Simulated seconds each secure aggregation phase took per round, by phase (masked: the mean client's masking compute; unmask: transfers and server compute)."),
    def(SPLIT_BYTES, Kind::Counter, Some(Unit::Bytes), "Split learning: bytes of the cut's messages, every step of every client, by direction (up: activations, labels, U-shaped's top gradients; down: gradients, U-shaped's top activations)."),
    def(SECAGG_FAILED, Kind::Counter, None, "Secure rounds whose sum could not be unmasked (secagg_threshold)."),
    def(WORKER_UP, Kind::Gauge, None, "Whether each slot worker answers (1) or is lost (0), by worker."),
    def(WORKER_SLOTS, Kind::Gauge, None, "Slots each worker offers."),
    def(WORKER_IN_FLIGHT, Kind::Gauge, None, "Jobs sent to each worker and not answered yet (its busy slots)."),
    def(WORKER_JOBS, Kind::Counter, None, "Jobs each worker answered (training and evaluation)."),
    def(WORKER_BUSY, Kind::Counter, Some(Unit::Seconds), "Seconds the coordinator's remote slots waited on each worker (whole seconds)."),
    def(WORKER_BYTES, Kind::Counter, Some(Unit::Bytes), "Job bytes sent to and received from each worker, by direction."),
    def(WORKER_ROUND_TRIP, Kind::Histogram, Some(Unit::Seconds), "Round trip of each job to a worker: encode, send, run, answer, decode."),
    def(WORKER_LOSSES, Kind::Counter, None, "Times each worker was lost (connection closed, heartbeat missed, malformed answer)."),
    def(WORKER_REJOINS, Kind::Counter, None, "Times each worker came back and was set up again."),
];

/// The help text of `name`.
pub fn help(name: &str) -> &'static str {
    DEFS.iter().find(|d| d.name == name).map_or("", |d| d.help)
}

const WALL_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Virtual seconds: a phone on a slow link can take hours.
const SIM_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0,
];
/// Job round trips: a synthetic job on loopback takes about a millisecond, a real one minutes.
const TRIP_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0, 600.0,
];
const NORM_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 100.0, 1000.0,
];

/// A run's metrics: the recorder, a handle to render it, and (for the CLI) the HTTP exporter.
#[derive(Clone)]
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// The run's task (the `task` label of the accuracy gauges), from [`Telemetry::run_info`].
    task: Arc<std::sync::Mutex<Option<String>>>,
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
    /// The server optimiser's learning rate, when the strategy has one.
    pub server_lr: Option<f64>,
    /// The task scored during the run (`fpb`, `fiqa`, `tfns`, `pubmedqa`, `classification`).
    pub task: Option<String>,
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
            task: Arc::default(),
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
            if let Some(lr) = info.server_lr {
                gauge!(SERVER_LR).set(lr);
            }
        });
        if let Ok(mut t) = self.task.lock() {
            t.clone_from(&info.task);
        }
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
            if r.eval_loss.is_finite() {
                gauge!(EVAL_LOSS).set(r.eval_loss);
                gauge!(EVAL_PERPLEXITY).set(r.eval_perplexity);
            }
            let task = self.task.lock().ok().and_then(|t| t.clone());
            if let (Some(task), Some(a), Some(f)) = (task, r.task_accuracy, r.task_macro_f1) {
                gauge!(EVAL_ACCURACY, "task" => task.clone()).set(a);
                gauge!(EVAL_MACRO_F1, "task" => task).set(f);
            }
            counter!(TOKENS).increment(r.tokens as u64);
            for (slot, &s) in slot_busy_seconds.iter().enumerate() {
                counter!(SLOT_BUSY, "slot" => slot.to_string()).absolute(s as u64);
            }
            self.system(r);
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

impl Telemetry {
    /// The slot workers' counters now (sampled every second while they serve the run).
    pub fn workers(&self, live: &[crate::cluster::coordinator::WorkerLive]) {
        self.with(|| {
            for w in live {
                let worker = || ("worker", w.addr.clone());
                gauge!(WORKER_UP, &[worker()]).set(if w.up { 1.0 } else { 0.0 });
                gauge!(WORKER_SLOTS, &[worker()]).set(w.slots as f64);
                gauge!(WORKER_IN_FLIGHT, &[worker()]).set(w.in_flight as f64);
                counter!(WORKER_JOBS, &[worker()]).absolute(w.jobs);
                counter!(WORKER_BUSY, &[worker()]).absolute(w.busy_seconds as u64);
                for (direction, n) in [("sent", w.bytes_sent), ("received", w.bytes_received)] {
                    counter!(
                        WORKER_BYTES,
                        &[worker(), ("direction", direction.to_string())]
                    )
                    .absolute(n);
                }
                counter!(WORKER_LOSSES, &[worker()]).absolute(w.losses);
                counter!(WORKER_REJOINS, &[worker()]).absolute(w.rejoins);
                let trip = histogram!(WORKER_ROUND_TRIP, &[worker()]);
                for &t in &w.round_trips {
                    trip.record(t);
                }
            }
        });
    }

    /// The systems side of a round: availability, dropouts, virtual time, phases.
    fn system(&self, r: &RoundSummary) {
        gauge!(CLIENTS_AVAILABLE).set(r.available as f64);
        for (reason, n) in dropouts(r) {
            counter!(DROPOUTS, "reason" => reason).increment(n as u64);
        }
        histogram!(ROUND_DURATION).record(r.sim_duration_s);
        for p in &r.phases {
            for (phase, v) in ["download", "compute", "upload"].iter().zip(p) {
                histogram!(CLIENT_PHASE, "phase" => *phase).record(*v);
            }
        }
        gauge!(SIM_TIME).set(r.sim_start_s + r.sim_duration_s);
        gauge!(LATE_MAX).set(r.late_max_s);
        gauge!(HOST_SAVED).increment(r.host_seconds_saved);
        if let Some(b) = &r.byzantine {
            gauge!(BYZANTINE_SAMPLED).set(b.byzantine_sampled as f64);
            if let Some(d) = b.aggregate_deviation {
                gauge!(AGG_DEVIATION).set(d);
            }
        }
        if let Some(h) = &r.hierarchy {
            let tiers = [
                ("client_edge", "down", h.lan_bytes_down),
                ("client_edge", "up", h.lan_bytes_up),
                ("edge_cloud", "down", h.wan_bytes_down),
                ("edge_cloud", "up", h.wan_bytes_up),
            ];
            for (tier, direction, n) in tiers {
                counter!(TIER_BYTES, "tier" => tier, "direction" => direction).increment(n);
            }
            histogram!(TIER_SECONDS, "tier" => "edge").record(h.edge_s);
            histogram!(TIER_SECONDS, "tier" => "edge_cloud").record(h.wan_s);
            counter!(EDGES_LOST).increment(h.edges_lost as u64);
        }
        if let Some(s) = &r.split {
            counter!(SPLIT_BYTES, "direction" => "up").increment(s.up_bytes);
            counter!(SPLIT_BYTES, "direction" => "down").increment(s.down_bytes);
        }
        if let Some(c) = &r.secure_aggregation {
            for (phase, p) in c.phases() {
                counter!(SECAGG_BYTES, "phase" => phase).increment(p.up_bytes + p.down_bytes);
                histogram!(SECAGG_SECONDS, "phase" => phase).record(p.seconds);
            }
            if c.key_holder_bytes > 0 {
                counter!(SECAGG_BYTES, "phase" => "key_holders").increment(c.key_holder_bytes);
            }
            counter!(SECAGG_FAILED).increment(u64::from(r.skipped.is_some()));
        }
    }
}

/// Reasons a client has no update (labels of the dropouts counter).
pub const DROP_REASONS: usize = 5;

/// A round's clients without an update, by reason label (every reason, zeros included, so
/// the series exist from round 1).
pub fn dropouts(r: &RoundSummary) -> [(&'static str, usize); DROP_REASONS] {
    [
        ("unavailable", r.unavailable),
        ("crashed", r.crashed),
        ("deadline", r.missed_deadline),
        ("edge_lost", r.edge_lost),
        ("failed", r.failed),
    ]
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ROUND_WALL.into()), &WALL_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UPDATE_NORM.into()), &NORM_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ROUND_DURATION.into()), &SIM_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLIENT_PHASE.into()), &SIM_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SECAGG_SECONDS.into()), &SIM_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TIER_SECONDS.into()), &SIM_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(WORKER_ROUND_TRIP.into()), &TRIP_BUCKETS)
        })
        .expect("bucket lists are non-empty")
}

fn describe() {
    for d in DEFS {
        match (d.kind, d.unit) {
            (Kind::Counter, Some(u)) => describe_counter!(d.name, u, d.help),
            (Kind::Counter, None) => describe_counter!(d.name, d.help),
            (Kind::Gauge, Some(u)) => describe_gauge!(d.name, u, d.help),
            (Kind::Gauge, None) => describe_gauge!(d.name, d.help),
            (Kind::Histogram, Some(u)) => describe_histogram!(d.name, u, d.help),
            (Kind::Histogram, None) => describe_histogram!(d.name, d.help),
        }
    }
}
