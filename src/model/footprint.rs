//! What a base's weights take in memory, by format: planned from shapes (`sim validate`, the
//! memory estimate) or measured on a loaded model; the two agree (tested).

use candle_core::quantized::GgmlDType;
use serde::{Deserialize, Serialize};

use super::weight::{format_bytes, BasePrecision, FrozenWeight, WeightRole};

/// What a base's weights take in memory, by format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Per format (GGUF's names: F32, BF16, Q8_0, Q4_1…): tensors, values, bytes.
    pub formats: std::collections::BTreeMap<String, FormatShare>,
    /// 2-D weights kept in f32 although the precision packs them: their width is not a whole
    /// number of blocks (planned footprints only).
    #[serde(default)]
    pub kept_f32: usize,
}

/// One format's share of a [`Footprint`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatShare {
    /// Tensors held in it.
    pub tensors: usize,
    /// Their values.
    pub values: usize,
    /// Their bytes.
    pub bytes: usize,
}

impl Footprint {
    /// Add `rows × cols` values held as `format`.
    fn add(&mut self, format: GgmlDType, rows: usize, cols: usize) {
        let share = self.formats.entry(format!("{format:?}")).or_default();
        share.tensors += 1;
        share.values += rows * cols;
        share.bytes += format_bytes(format, rows, cols);
    }

    /// The footprint of loaded weights.
    pub fn of<'a>(weights: impl Iterator<Item = (&'a str, &'a FrozenWeight)>) -> Self {
        let mut f = Self::default();
        for (_, w) in weights {
            let (rows, cols) = w.dims();
            f.add(w.format(), rows, cols);
        }
        f
    }

    /// The footprint `precision` will give a model of shape `cfg`, before loading it: `stored`
    /// gives a tensor's type in its GGUF file by Hugging Face name (None elsewhere). The same
    /// rule as loading, so the plan equals what [`Footprint::of`] measures afterwards.
    pub fn plan(
        cfg: &super::LlamaConfig,
        precision: BasePrecision,
        stored: &dyn Fn(&str) -> Option<GgmlDType>,
    ) -> Self {
        let mut f = Self::default();
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let mut weight = |name: &str, role: WeightRole, rows: usize, cols: usize| {
            let format = precision.format(role, stored(name), cols);
            let wanted = precision.format(role, stored(name), 0);
            f.kept_f32 += usize::from(format != wanted);
            f.add(format, rows, cols);
        };
        weight("model.embed_tokens.weight", WeightRole::Embedding, v, h);
        if !cfg.tie_word_embeddings {
            weight("lm_head.weight", WeightRole::Embedding, v, h);
        }
        for i in 0..cfg.num_hidden_layers {
            for m in super::TargetModule::ALL {
                let (o, c) = cfg.projection_shape(m);
                weight(
                    &format!("{}.weight", m.hf_path(i)),
                    WeightRole::Projection,
                    o,
                    c,
                );
            }
        }
        for _ in 0..2 * cfg.num_hidden_layers + 1 {
            f.add(GgmlDType::F32, 1, h);
        }
        f
    }

    /// Total bytes.
    pub fn bytes(&self) -> usize {
        self.formats.values().map(|s| s.bytes).sum()
    }

    /// Total values.
    pub fn values(&self) -> usize {
        self.formats.values().map(|s| s.values).sum()
    }
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: usize| b as f64 / 1e6;
        write!(
            f,
            "{:.1} MB ({:.2} of f32's {:.1} MB):",
            mb(self.bytes()),
            self.bytes() as f64 / (4 * self.values()).max(1) as f64,
            mb(4 * self.values())
        )?;
        for (name, s) in &self.formats {
            let plural = if s.tensors == 1 { "" } else { "s" };
            write!(
                f,
                " {name} {} tensor{plural} {:.1} MB;",
                s.tensors,
                mb(s.bytes)
            )?;
        }
        if self.kept_f32 > 0 {
            write!(
                f,
                " {} weight(s) kept F32 (their width is not a whole number of blocks)",
                self.kept_f32
            )?;
        }
        Ok(())
    }
}
