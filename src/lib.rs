//! fedsim: an actor-based, in-process simulator for federated fine-tuning of LLMs (LoRA) on
//! private data, with candle for the model and ractor for the actors.
//!
//! A scenario (RON) names a base model, a LoRA adapter, a data set and its partition over N
//! clients, a sampling strategy and a local-training recipe. [`sim::run`] prepares the data
//! and the tokenizer, starts compute slots and the actors, runs the rounds and writes a run
//! directory ([`report`]).
//!
//! # Layout
//! - [`scenario`]: RON file → `ScenarioFile` (syntax, defaults) → `--set` overrides →
//!   validated [`Scenario`].
//! - [`data`]: synthetic private records with planted canaries, Alpaca/MedAlpaca JSON, held-out
//!   split, IID / Dirichlet / size-skew partitioners.
//! - [`tokenizer`]: byte-level BPE trained on the corpus (the `tiny` model's tokenizer), a
//!   pretrained model's tokenizer from GGUF metadata, chat templates.
//! - [`model`]: our Llama forward (all positions, differentiable, fused CPU ops with their own
//!   backward), LoRA, DoRA and IA³ (`adapter:`), flat adapters in PEFT's format, GGUF and Hugging Face loading, the frozen
//!   base in bf16 or GGUF blocks dequantised inside the matmuls (`model.base_precision`), the
//!   model cache (`sim fetch-model`), KV-cache generation (optionally with 8-bit activations
//!   against a Q8_0/Q4_1 base, `model.inference_activations`).
//! - [`trainer`]: which local trainer a slot runs: LoRA, or seeded synthetic updates.
//! - [`train`]: local SFT (response-only loss, AdamW, cosine LR per round) and evaluation.
//! - [`slots`]: OS threads owning a device and a rayon pool; jobs over crossbeam channels.
//! - [`cluster`]: slot workers on other hosts over `ractor_cluster` (`sim worker`,
//!   `sim run --workers`): a remote slot takes jobs from the same queue.
//! - [`messages`]: `FitIns`, `FitRes`, `EvaluateIns`/`EvaluateRes`, `RoundSummary`.
//! - [`actors`]: server (round loop, sampling, supervision), client, aggregator.
//! - [`clock`], [`network`], [`devices`], [`faults`], [`stragglers`]: the systems simulation —
//!   per-client timelines on a virtual clock from FLOPs and link speeds, device/network profiles
//!   (fixed, drawn, tiers, CSV traces), availability and crashes, deadline policies.
//! - [`privacy`]: RDP accountant for the subsampled Gaussian (Poisson and fixed-size
//!   sampling), ε ↔ noise calibration.
//! - [`strategy`]: aggregation rules — exact streaming FedAvg, FedProx, server optimisers
//!   (FedAvgM, FedAdagrad, FedAdam, FedYogi), robust rules (median, trimmed mean, Krum),
//!   norm-bounded FedAvg — each declaring what it needs and whether it composes with DP.
//! - [`byzantine`]: Byzantine clients — update and data poisoning, backdoor success.
//! - [`secagg`]: SecAgg+ secure aggregation — the four phases as client and server state
//!   machines with real cryptography, summing FedAvg's exact terms in Z/2ᵇ.
//! - [`he`]: homomorphic aggregation — the same exact terms packed into BFV ciphertexts that
//!   the server adds and key holders decrypt only as a sum.
//! - [`compress`]: update compression before upload — fp16, 8/4-bit block quantisation
//!   (power-of-two scales, optional stochastic rounding), top-k with error feedback — decoding
//!   onto the exact fold's grid, clipped after decoding under DP.
//! - [`topology`]: flat, or hierarchical — clients under edge aggregators that forward exact
//!   partial sums to the cloud over a WAN (edge assignment, edge faults) — or split.
//! - [`split`]: split fine-tuning — the model cut between client and server, a step as two
//!   graphs joined by encoded activations and gradients, their codecs and their cost on the
//!   clock; [`batch`]: a batch of tokenised examples as the model takes it.
//! - [`shutdown`]: stop requests (finish the round, or abandon it) from signals or tests.
//! - [`sim`]: wires it all, records the run and resumes a stopped one from its last completed
//!   round; [`report`]: the run directory, its ownership and its checkpoint;
//!   [`compare`]: side-by-side table of runs.
//! - [`sweep`]: a grid of `--vary` values, one run each, one table.
//! - [`comm`]: communication cost of adapters vs. whole models (`sim comm`).
//! - [`html_report`], [`chart`]: `sim report`, an HTML page of SVG charts over run directories.
//! - [`eval`]: PubMedQA accuracy (log-likelihood and generation) and answers to prompts
//!   (`sim eval`).
//! - [`attack`]: what fine-tuning leaked (`sim attack`) — membership inference against the
//!   pretrained control, canary exposure, extraction, and a split run's activation inversion
//!   (`sim invert`); [`study`]: privacy studies over arms
//!   trained on the same data (`sim study`).
//! - [`telemetry`]: Prometheus metric names, buckets and the per-run recorder.
//! - [`rng`]: seed derivation, so results never depend on slot count or timing.
//! - [`fmt`]: compact numbers and error chains for messages; [`bytes`]: f32 vectors as bytes in
//!   serde formats; [`ids`] (client and round ids), [`hash`] (FNV-1a fingerprints) and
//!   [`fixed`] (the fixed-point grid of exact sums): leaves every layer may import.
//! - [`host`]: process-wide allocator settings that `sim run` applies for LoRA training.

pub mod actors;
pub mod attack;
pub mod batch;
pub mod bytes;
pub mod byzantine;
pub mod chart;
pub mod clock;
pub mod cluster;
pub mod comm;
pub mod compare;
pub mod compress;
pub mod data;
pub mod devices;
pub mod eval;
pub mod faults;
pub mod fixed;
pub mod fmt;
pub mod hash;
pub mod he;
pub mod host;
pub mod html_report;
pub mod ids;
pub mod messages;
pub mod model;
pub mod network;
pub mod privacy;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod secagg;
pub mod shutdown;
pub mod sim;
pub mod slots;
pub mod split;
pub mod stragglers;
pub mod strategy;
pub mod study;
pub mod sweep;
pub mod telemetry;
pub mod tokenizer;
pub mod topology;
pub mod train;
pub mod trainer;

pub use scenario::{Scenario, ScenarioError};
pub use shutdown::{Shutdown, ShutdownTrigger, StopLevel};
pub use sim::{run, RunOptions, RunReport, SimError};

/// Every error fedsim's library can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Scenario reading or validation.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A run.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// Run directories.
    #[error(transparent)]
    Report(#[from] report::ReportError),
}
