//! `ScenarioFile`: the RON text as written, with defaults; nothing is checked here but syntax.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{DataSource, Partition};
use crate::devices::Profiles;
use crate::model::LlamaConfig;
use crate::privacy::{DpSampling, FracSeries, Mechanism, NoiseSource};
use crate::stragglers::Stragglers;
use crate::trainer::TrainerKind;

pub use crate::strategy::StrategyKind;
pub use adapter::{
    AdapterSection, Ia3Section, LoraSection, PrefixTuningSection, PromptTuningSection,
};
pub use secure::{HeScheme, SecureAggregation};

mod adapter;
mod secure;

/// A scenario file as written (`scenarios/*.ron`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Name used for the run directory.
    pub name: String,
    /// Master seed: every random draw derives from it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Federated rounds.
    pub rounds: usize,
    /// Base model.
    #[serde(default)]
    pub model: ModelSection,
    /// LoRA adapter (the same as `adapter: Lora(…)`).
    #[serde(default)]
    pub lora: LoraSection,
    /// The adapter's method: `Lora(r: 8, …)`, `Dora(r: 8, …)` or `Ia3(target_modules: [...],
    /// feedforward_modules: [...])`; when absent, the `lora` section.
    #[serde(default)]
    pub adapter: Option<AdapterSection>,
    /// Data set and how it is prepared.
    pub data: DataSection,
    /// How training records are split over clients.
    #[serde(default = "default_partition")]
    pub partition: Partition,
    /// The client population.
    pub clients: ClientsSection,
    /// Aggregation strategy and client sampling.
    #[serde(default)]
    pub strategy: StrategySection,
    /// Local training.
    #[serde(default)]
    pub train: TrainSection,
    /// What trains: LoRA on the model, or synthetic updates (scale studies).
    #[serde(default)]
    pub trainer: TrainerKind,
    /// Compute slots.
    #[serde(default)]
    pub slots: SlotsSection,
    /// Client-level differential privacy (`None`: off).
    #[serde(default)]
    pub dp: Option<DpSection>,
    /// The federation as a system: device and network profiles, availability, crashes,
    /// deadline and straggler policy, on the virtual clock.
    #[serde(default)]
    pub system: SystemSection,
    /// Task accuracy during the run (classification by constrained scoring), if any.
    #[serde(default)]
    pub eval: Option<EvalSection>,
    /// Flat, or clients under edge aggregators (`Hierarchical(edges: 3, …)`).
    #[serde(default)]
    pub topology: crate::topology::Topology,
    /// What a client does to its update before upload: `None`, `Fp16`,
    /// `Quantize(bits: 8, stochastic_rounding: true)`, `TopK(fraction: 0.01, error_feedback: true)`.
    #[serde(default)]
    pub compression: crate::compress::Compression,
}

/// Task evaluation during a run: a classification task scored on a fixed stratified subset
/// every `every` rounds, and on its whole test split before round 1 and after the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// The task and its test file, e.g. `Fpb("../shared/data/finance/fpb_test.jsonl")`.
    pub task: crate::eval::task::TaskSource,
    /// Rounds between subset scores (the last round is always scored).
    #[serde(default = "default_every")]
    pub every: usize,
    /// Items of the stratified subset scored during the run (all when at least the split's).
    #[serde(default = "default_subset")]
    pub subset: usize,
    /// Score the whole split before round 1 (the pretrained control) and after the last.
    #[serde(default = "default_true")]
    pub full: bool,
    /// Subset accuracy whose first reaching is reported as time-to-accuracy.
    #[serde(default)]
    pub target_accuracy: Option<f64>,
}

fn default_every() -> usize {
    1
}
fn default_subset() -> usize {
    300
}
fn default_true() -> bool {
    true
}

/// Systems simulation (`system: (profiles: …, availability: 0.7, deadline_s: Some(60.0), …)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemSection {
    /// How clients get device and network profiles.
    pub profiles: Profiles,
    /// Probability that a client is online in a round.
    pub availability: f64,
    /// Probability that a client crashes during fit.
    pub crash_probability: f64,
    /// Round deadline, simulated seconds after the round starts.
    pub deadline_s: Option<f64>,
    /// What to do about slow clients.
    pub stragglers: Stragglers,
    /// What to do with a round that has too few clients available.
    pub short_round: ShortRound,
    /// Client actors that panic during fit (fault injection, to exercise supervision).
    pub inject_panic: Vec<usize>,
    /// Clients that upload corrupted updates (`None`: every client is honest).
    pub byzantine: Option<ByzantineSection>,
}

/// Byzantine clients: `byzantine: Some((clients: Share(0.2), attack: SignFlip))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByzantineSection {
    /// Who attacks: `Share(0.2)` of the clients (drawn from the seed) or `Listed([1, 4])`.
    pub clients: crate::byzantine::Attackers,
    /// What they upload: `SignFlip`, `Scale(λ)`, `Gaussian(std)` or `Constant(value)`.
    pub attack: crate::byzantine::ByzantineAttack,
}

impl Default for SystemSection {
    fn default() -> Self {
        Self {
            profiles: Profiles::default(),
            availability: 1.0,
            crash_probability: 0.0,
            deadline_s: None,
            stragglers: Stragglers::Wait,
            short_round: ShortRound::Skip,
            inject_panic: Vec::new(),
            byzantine: None,
        }
    }
}

pub use crate::stragglers::ShortRound;

/// Client-level DP (`dp: Some((mechanism: ClientSideFixed(clip_norm: 0.5, noise_multiplier: 1.0)))`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSection {
    /// Clipping and noise.
    pub mechanism: Mechanism,
    /// Target δ of the reported (ε, δ).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Stop before the round that would push ε above this.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// Client sampling under DP.
    #[serde(default)]
    pub sampling: DpSampling,
    /// Seeding of the noise generator.
    #[serde(default)]
    pub noise: NoiseSource,
    /// Who adds the noise: `Server` (default) or `Clients(min_survivors: m)`.
    #[serde(default)]
    pub noise_by: crate::privacy::NoiseBy,
    /// Fractional-order RDP series.
    #[serde(default)]
    pub series: FracSeries,
    /// Also report ε from the PLD accountant every round (Poisson sampling only).
    #[serde(default)]
    pub pld: bool,
}

fn default_delta() -> f64 {
    1e-5
}

fn default_seed() -> u64 {
    42
}
fn default_partition() -> Partition {
    Partition::Iid
}

/// The base model (`model: (source: Tiny(vocab_size: 1024))`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Which model (`preset` is accepted as the old name of this field).
    #[serde(alias = "preset")]
    pub source: ModelSource,
    /// How a record becomes a training prompt.
    pub prompt: PromptFormat,
    /// How the frozen base is held in memory: `F32` (default), `Bf16`, `Q8_0`, `Q4_1` (4-bit
    /// projections, Q8_0 embedding) or `Stored` (as the GGUF file stores it). Packed weights
    /// are dequantised inside the matmuls; adapters, optimiser and loss stay f32.
    pub base_precision: crate::model::BasePrecision,
    /// What KV-cache inference (generation: the task evaluation's generated answers,
    /// `sim attack`'s extraction) feeds a Q8_0 or Q4_1 base: `F32` (default, the training
    /// forward's numbers) or `Int8` (8-bit blocks as llama.cpp: about twice the tokens per
    /// second, logits slightly off). Training and the held-out loss are always f32.
    pub inference_activations: crate::model::InferenceActivations,
    /// What training's matmuls against a packed base multiply in: `F32` (default, as
    /// transformers + PEFT) or `Bf16` (QLoRA's compute dtype: activations and weight values
    /// rounded to bfloat16, sums in f32; about twice the multiply rate on a CPU with AVX-512
    /// BF16). Needs a packed `base_precision`.
    pub compute_dtype: crate::model::ComputeDtype,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            source: ModelSource::Tiny { vocab_size: 1024 },
            prompt: PromptFormat::Auto,
            base_precision: crate::model::BasePrecision::F32,
            inference_activations: crate::model::InferenceActivations::F32,
            compute_dtype: crate::model::ComputeDtype::F32,
        }
    }
}

/// Where the base model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ModelSource {
    /// Generated: hidden 128, 4 layers, 4 heads (2 KV), random weights from the scenario seed,
    /// a BPE vocabulary trained on the corpus.
    Tiny {
        /// Tokens in the trained vocabulary (and rows of the embedding).
        vocab_size: usize,
    },
    /// Generated: any Llama shape (Hugging Face `config.json` field names), random weights.
    Custom(LlamaConfig),
    /// A pretrained model: a GGUF file, or a known name fetched with `sim fetch-model`
    /// (`Pretrained("smollm2-135m-instruct")`).
    Pretrained(String),
    /// A Hugging Face model directory: `config.json`, `*.safetensors`, `tokenizer.json`.
    HuggingFace(String),
}

/// How a record (instruction, input, output) becomes the text a model trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PromptFormat {
    /// FinGPT's prompt for labelled data (`Fpb`, `FinGpt`, `Classification` sources); else the
    /// model's chat template when it has one (instruct models), else Alpaca.
    #[default]
    Auto,
    /// The Alpaca / MedAlpaca template ("Below is an instruction…").
    Alpaca,
    /// The model's chat template (ChatML when it ships none): user turn, assistant answer.
    Chat,
    /// FinGPT / FlowerTune's `Instruction: …\nInput: …\nAnswer:` then ` <label>`, no chat
    /// template; the loss sees the label's tokens and the end-of-text token.
    FinGpt,
}

/// Data set, held-out split, canaries, sequence length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Records to train and evaluate on.
    pub source: DataSource,
    /// Fraction held out for server-side evaluation.
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Longest tokenised example; longer ones are truncated.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Planted secrets.
    #[serde(default)]
    pub canaries: usize,
    /// Copies of each secret in its client's shard.
    #[serde(default = "default_canary_repeats")]
    pub canary_repeats: usize,
}

fn default_eval_fraction() -> f64 {
    0.1
}
fn default_max_seq_len() -> usize {
    128
}
fn default_canary_repeats() -> usize {
    4
}

/// Client population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsSection {
    /// Number of clients.
    pub count: usize,
}

/// Strategy and sampling (Flower's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategySection {
    /// Aggregation rule.
    pub kind: StrategyKind,
    /// Fraction of clients sampled each round.
    pub fraction_fit: f64,
    /// Never sample fewer than this.
    pub min_fit_clients: usize,
    /// Do not start a round with fewer clients available.
    pub min_available_clients: usize,
    /// Secure aggregation: the server sees only the sum of the updates (None: in the clear).
    pub secure_aggregation: Option<SecureAggregation>,
}

impl Default for StrategySection {
    fn default() -> Self {
        Self {
            kind: StrategyKind::FedAvg,
            fraction_fit: 1.0,
            min_fit_clients: 1,
            min_available_clients: 1,
            secure_aggregation: None,
        }
    }
}

/// Local training. Like every section with defaults, a partial section takes each missing
/// field from [`Default`]: the same values as an omitted section (one source of defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Optimiser steps per round; `None`: `local_epochs` passes over the shard.
    pub local_steps: Option<usize>,
    /// Passes over the shard per round when `local_steps` is absent.
    pub local_epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Learning rate of round 1 (cosine-annealed towards `lr_min`).
    pub lr_max: f64,
    /// Learning rate of the last round.
    pub lr_min: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Examples per batch in server-side evaluation.
    pub eval_batch_size: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            local_steps: Some(10),
            local_epochs: 1,
            batch_size: 4,
            lr_max: 5e-5,
            lr_min: 1e-6,
            weight_decay: 0.0,
            eval_batch_size: 16,
        }
    }
}

/// Compute slots: OS threads that each own a device and run training jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlotsSection {
    /// Number of slots.
    pub count: usize,
    /// Threads each slot's matmuls use; default: cores / slots (never oversubscribe).
    pub threads_per_slot: Option<usize>,
    /// Where the slots compute.
    pub device: SlotDevice,
    /// Which slot runs a client's job.
    pub assignment: SlotAssignment,
    /// Slots one client's job occupies (Flower's `client_resources`): fewer clients at once,
    /// each computing with that many slots' threads.
    pub client_resources: usize,
    /// Slot workers on other hosts (`sim worker`) whose slots join these (`count` may then be
    /// 0: every job runs remotely).
    pub workers: Option<WorkersSection>,
}

/// Slot workers on other hosts (scenario `slots.workers`; `sim run --workers` sets it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersSection {
    /// Their addresses, `host:port`, each a `sim worker --listen`.
    pub addrs: Vec<String>,
    /// The cluster's shared secret: a file of at least 16 characters, the same on every node.
    pub cookie_file: PathBuf,
    /// Seconds a run with no usable slot left (no local slots, every worker lost) waits for a
    /// worker to come back before it stops with status `workers_lost`.
    pub rejoin_s: f64,
    /// Encrypt the connections (the workers must serve TLS too); None: plain TCP.
    pub tls: Option<TlsSection>,
}

impl Default for WorkersSection {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            cookie_file: PathBuf::new(),
            rejoin_s: 30.0,
            tls: None,
        }
    }
}

/// TLS for the cluster's connections: PEM files (scenario `slots.workers.tls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate authority that signed the workers' certificates.
    pub ca: PathBuf,
    /// The name the workers' certificates carry (their subject alternative name).
    pub server_name: String,
}

/// A slot's device (scenario `slots.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SlotDevice {
    /// The CPU.
    #[default]
    Cpu,
    /// A CUDA GPU by index (not in this build: refused by validation).
    Cuda(usize),
}

/// How clients' jobs are placed on slots (scenario `slots.assignment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SlotAssignment {
    /// The first free slot takes the next job.
    #[default]
    FirstFree,
    /// Client c always runs on slot c mod slots.count (stable placement).
    Pinned,
}

impl Default for SlotsSection {
    fn default() -> Self {
        Self {
            count: 1,
            threads_per_slot: None,
            device: SlotDevice::Cpu,
            assignment: SlotAssignment::FirstFree,
            client_resources: 1,
            workers: None,
        }
    }
}
