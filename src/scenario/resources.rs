//! What a scenario will cost the host, checked before anything runs: an estimate of peak
//! memory against what the machine has available, and thread oversubscription.
//!
//! The memory estimate is deliberately generous (an upper-side estimate, f32 activations): the
//! frozen base in its `model.base_precision` (once; plus, while loading, its largest tensor
//! expanded to f32; plus the f32 copy a generated base writes to `base_model/`), the RoPE
//! tables, per
//! slot the activations a training step keeps for backward (including the logits over the
//! vocabulary; prompt or prefix tuning's virtual tokens counted as sequence), the evaluation
//! batch, the data set in memory, the updates a robust rule holds, and error feedback's
//! per-client residuals.

use crate::data::DataSource;
use crate::model::weight::Footprint;
use crate::model::LlamaConfig;

/// Bytes, split by what needs them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Frozen base weights (in their precision), loading and export transients.
    pub model: f64,
    /// Training activations of all slots together.
    pub training: f64,
    /// Server-side evaluation batch.
    pub evaluation: f64,
    /// Records, tokenised examples.
    pub data: f64,
    /// Every update of a round, kept for a robust rule (0 for streaming strategies).
    pub aggregation: f64,
    /// Per-client state kept between rounds: error feedback's residuals (one update each).
    pub client_state: f64,
}

impl MemoryEstimate {
    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.model
            + self.training
            + self.evaluation
            + self.data
            + self.aggregation
            + self.client_state
    }

    /// Bytes of the largest part.
    pub fn largest(&self) -> f64 {
        [
            self.model,
            self.training,
            self.evaluation,
            self.data,
            self.aggregation,
            self.client_state,
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }

    /// The largest part: (the field that drives it, what it is).
    pub fn driver(&self) -> (&'static str, &'static str) {
        let parts = [
            (self.model, "model.source", "the frozen base weights"),
            (
                self.training,
                "train.batch_size",
                "training activations (train.batch_size × data.max_seq_len × slots.count, and the vocabulary)",
            ),
            (
                self.evaluation,
                "train.eval_batch_size",
                "evaluation batches (train.eval_batch_size × data.max_seq_len, and the vocabulary)",
            ),
            (self.data, "data.source", "the data set in memory"),
            (
                self.aggregation,
                "strategy.kind",
                "every update of a round, kept for a robust rule (clients sampled × adapter)",
            ),
            (
                self.client_state,
                "compression",
                "error feedback's residuals (clients × adapter)",
            ),
        ];
        parts
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(("model", ""), |p| (p.1, p.2))
    }
}

/// What a run of this shape needs in memory (f64: shapes are never multiplied in usize).
pub struct Shape<'a> {
    /// The model.
    pub model: &'a LlamaConfig,
    /// Its base weights in the scenario's precision.
    pub base: &'a Footprint,
    /// A generated base (tiny, custom): exported as f32 to `base_model/`.
    pub generated: bool,
    /// Training batch.
    pub batch_size: usize,
    /// Evaluation batch.
    pub eval_batch_size: usize,
    /// Tokens per example.
    pub max_seq_len: usize,
    /// Prompt or prefix tuning's virtual tokens (they lengthen every sequence or its keys).
    pub virtual_tokens: usize,
    /// Clients keeping an error-feedback residual (0 without) and the values of each.
    pub residuals: (usize, usize),
    /// Slots training at once.
    pub slots: usize,
    /// Where the records come from.
    pub source: &'a DataSource,
    /// Planted canary copies (canaries × repeats): training records like any other.
    pub canary_copies: usize,
    /// `Some(values per update)` for the synthetic trainer (no model, no text).
    pub synthetic: Option<usize>,
    /// Updates a robust rule holds at once (clients sampled per round; 0: it streams) and the
    /// values of each.
    pub held_updates: (usize, usize),
}

/// Text, topic and token ids of one generated (or canary) record: about 1.5 KB.
const RECORD_BYTES: f64 = 1536.0;

/// Peak memory of the synthetic trainer (no model, no text) with updates of `n` values.
fn synthetic(s: &Shape<'_>, n: usize, aggregation: f64, client_state: f64) -> MemoryEstimate {
    let f = |v: usize| v as f64;
    // Global, its payload and the new global (f32 each), the exact i128 accumulator; per
    // slot an update and its payload; topic ids and shard indices per record.
    let records = match s.source {
        DataSource::Synthetic { records } => f(*records),
        other => other
            .path()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0.0, |md| md.len() as f64),
    };
    MemoryEstimate {
        model: f(n) * (3.0 * 4.0 + 16.0),
        training: f(s.slots) * f(n) * 8.0,
        evaluation: 0.0,
        data: 6.0 * records,
        aggregation,
        client_state,
    }
}

/// Estimate peak memory.
pub fn estimate(s: &Shape<'_>) -> MemoryEstimate {
    let f = |v: usize| v as f64;
    let aggregation = 4.0 * f(s.held_updates.0) * f(s.held_updates.1);
    let client_state = 4.0 * f(s.residuals.0) * f(s.residuals.1);
    if let Some(n) = s.synthetic {
        return synthetic(s, n, aggregation, client_state);
    }
    let m = s.model;
    let (h, i, l, v) = (
        f(m.hidden_size),
        f(m.intermediate_size),
        f(m.num_hidden_layers),
        f(m.vocab_size),
    );
    let hd = h / f(m.num_attention_heads.max(1));
    let rope = 2.0 * f(m.max_position_embeddings) * hd;
    // While loading, one tensor at a time is f32 (the embedding is the largest); a generated
    // base is written out as f32 safetensors (every tensor at once).
    let transient = match s.generated {
        true => 4.0 * f(s.base.values()),
        false => 4.0 * v * h,
    };
    let model = f(s.base.bytes()) + 4.0 * rope + transient;
    let t = f(s.max_seq_len + s.virtual_tokens);
    // Saved for backward per layer and token: ~10 residual-width tensors, 4 MLP-width ones and
    // the attention probabilities (heads × T); logits, softmax and their gradient over the vocab.
    let act = |b: f64, backward: bool| {
        let layer = h * 10.0 + i * 4.0 + f(m.num_attention_heads) * t * 3.0;
        let keep = if backward { l } else { 1.0 };
        let logits = if backward { 3.0 } else { 2.0 };
        4.0 * b * t * (keep * layer + logits * v)
    };
    let training = f(s.slots) * act(f(s.batch_size), true);
    let evaluation = act(f(s.eval_batch_size), false);
    let data = RECORD_BYTES * f(s.canary_copies)
        + match s.source {
            // Text, topic and token ids of a generated record: about 1.5 KB.
            DataSource::Synthetic { records } => RECORD_BYTES * f(*records),
            // The file, parsed into strings, and token ids: about 4 × its size.
            other => {
                4.0 * other
                    .path()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(0.0, |md| md.len() as f64)
            }
        };
    MemoryEstimate {
        model,
        training,
        evaluation,
        data,
        aggregation,
        client_state,
    }
}

/// Memory the OS says is available to a new process (Linux `MemAvailable`), in bytes.
pub fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Bytes as `1.5 GiB`.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == UNITS.len() - 1 && v >= 1024.0 {
        return format!("{} {}", crate::fmt::compact(v), UNITS[u]);
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A warning when slots × threads per slot exceed the cores.
pub fn oversubscription(slots: usize, threads_per_slot: usize, cores: usize) -> Option<String> {
    let want = slots * threads_per_slot;
    (want > cores).then(|| {
        format!(
            "slots.count × threads_per_slot = {slots} × {threads_per_slot} = {want} matmul threads \
             on {cores} cores: oversubscribed. Measured on 2 cores, 2 slots × 2 threads made each \
             training step ~3× slower than 2 slots × 1 thread; results are unchanged, only \
             slower. Leave slots.threads_per_slot unset to use cores / slots."
        )
    })
}
