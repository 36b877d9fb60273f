//! Flat LoRA adapters: what travels between server and clients, and what PEFT loads.
//!
//! An [`AdapterSet`] is one contiguous `f32` vector plus a shared [`AdapterLayout`] naming each
//! tensor as PEFT does (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`).
//! On the wire it is a safetensors buffer, so the bytes we count are the bytes a real deployment
//! would send.

use std::collections::HashMap;
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{AdapterMethod, LlamaConfig, LoraConfig, ModelError, TargetModule};

/// One A or B matrix inside the flat vector.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterTensor {
    /// Decoder layer.
    pub layer: usize,
    /// Adapted projection.
    pub module: TargetModule,
    /// LoRA's A (r × in) or B (out × r), or an IA³ vector (out × 1, or 1 × in).
    pub kind: TensorKind,
    /// (rows, cols).
    pub shape: (usize, usize),
    /// Start in the flat vector.
    pub offset: usize,
}

impl AdapterTensor {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    /// PEFT's key for this tensor.
    pub fn peft_name(&self) -> String {
        let path = self.module.hf_path(self.layer);
        match self.kind {
            TensorKind::Prompt => "prompt_embeddings".to_string(),
            TensorKind::LoraA => format!("base_model.model.{path}.lora_A.weight"),
            TensorKind::LoraB => format!("base_model.model.{path}.lora_B.weight"),
            TensorKind::Ia3 => format!("base_model.model.{path}.ia3_l"),
            TensorKind::Magnitude => format!("base_model.model.{path}.lora_magnitude_vector"),
        }
    }

    /// Its shape as PEFT stores it: DoRA's magnitude is one-dimensional.
    pub fn dims(&self) -> Vec<usize> {
        match self.kind {
            TensorKind::Magnitude => vec![self.shape.0],
            _ => vec![self.shape.0, self.shape.1],
        }
    }
}

/// What an adapter tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// LoRA's A (r × in).
    LoraA,
    /// LoRA's B (out × r).
    LoraB,
    /// IA³'s learned vector.
    Ia3,
    /// DoRA's magnitude: one per output row (out × 1, stored as PEFT's (out,)).
    Magnitude,
    /// Prompt tuning's embeddings (n × hidden) or prefix tuning's keys and values
    /// (n × layers·2·kv_heads·head_dim): one tensor for the whole model, PEFT's
    /// `prompt_embeddings` (its `layer` and `module` fields are 0 and q_proj, unused).
    Prompt,
}

/// Names, shapes and offsets of every adapter tensor, in canonical order (layer, module, A, B).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterLayout {
    tensors: Vec<AdapterTensor>,
    len: usize,
    num_layers: usize,
}

impl AdapterLayout {
    /// Layout of a LoRA adapter `lora` on a model shaped like `cfg`.
    pub fn new(cfg: &LlamaConfig, lora: &LoraConfig) -> Self {
        let width = match lora.method {
            AdapterMethod::PromptTuning { .. } => Some(cfg.hidden_size),
            AdapterMethod::PrefixTuning { .. } => Some(super::prompt::prefix_width(cfg)),
            _ => None,
        };
        if let Some(width) = width {
            let n = lora.method.virtual_tokens();
            return Self {
                tensors: vec![AdapterTensor {
                    layer: 0,
                    module: TargetModule::QProj,
                    kind: TensorKind::Prompt,
                    shape: (n, width),
                    offset: 0,
                }],
                len: n * width,
                num_layers: cfg.num_hidden_layers,
            };
        }
        let mut modules = lora.target_modules.clone();
        modules.sort();
        modules.dedup();
        let mut tensors = Vec::new();
        let mut offset = 0;
        for layer in 0..cfg.num_hidden_layers {
            for &module in &modules {
                let (out, inp) = cfg.projection_shape(module);
                let parts = match lora.method {
                    AdapterMethod::Lora => vec![
                        (TensorKind::LoraA, (lora.r, inp)),
                        (TensorKind::LoraB, (out, lora.r)),
                    ],
                    AdapterMethod::Dora => vec![
                        (TensorKind::LoraA, (lora.r, inp)),
                        (TensorKind::LoraB, (out, lora.r)),
                        (TensorKind::Magnitude, (out, 1)),
                    ],
                    AdapterMethod::Ia3 { .. } if lora.method.scales_input(module) => {
                        vec![(TensorKind::Ia3, (1, inp))]
                    }
                    AdapterMethod::Ia3 { .. } => vec![(TensorKind::Ia3, (out, 1))],
                    // Laid out above.
                    AdapterMethod::PromptTuning { .. } | AdapterMethod::PrefixTuning { .. } => {
                        Vec::new()
                    }
                };
                for (kind, shape) in parts {
                    tensors.push(AdapterTensor {
                        layer,
                        module,
                        kind,
                        shape,
                        offset,
                    });
                    offset += shape.0 * shape.1;
                }
            }
        }
        Self {
            tensors,
            len: offset,
            num_layers: cfg.num_hidden_layers,
        }
    }

    /// The layout of a synthetic update: one (1, n) tensor (keyed as the first layer's q_proj
    /// A, so the payload is an ordinary safetensors buffer of n f32 values).
    pub fn flat(n: usize) -> Self {
        Self {
            tensors: vec![AdapterTensor {
                layer: 0,
                module: TargetModule::QProj,
                kind: TensorKind::LoraA,
                shape: (1, n),
                offset: 0,
            }],
            len: n,
            num_layers: 1,
        }
    }

    /// Every tensor in order.
    pub fn tensors(&self) -> &[AdapterTensor] {
        &self.tensors
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the adapter has no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of decoder layers of the model it adapts.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
}

/// LoRA adapter values (or an update to them) as one flat vector.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSet {
    layout: Arc<AdapterLayout>,
    data: Vec<f32>,
}

impl AdapterSet {
    /// Wrap `data` laid out by `layout`.
    ///
    /// # Panics
    /// When the lengths differ: a broken invariant, not an input error.
    pub fn new(layout: Arc<AdapterLayout>, data: Vec<f32>) -> Self {
        assert_eq!(
            layout.len(),
            data.len(),
            "adapter data does not match its layout"
        );
        Self { layout, data }
    }

    /// The layout.
    pub fn layout(&self) -> &Arc<AdapterLayout> {
        &self.layout
    }

    /// Refuse NaN or infinite values, naming the tensor (in PEFT's naming) that holds them.
    ///
    /// # Errors
    /// [`ModelError::NonFinite`].
    pub fn check_finite(&self) -> Result<(), ModelError> {
        for t in self.layout.tensors() {
            let values = &self.data[t.offset..t.offset + t.numel()];
            super::check_finite(&t.peft_name(), values)?;
        }
        Ok(())
    }

    /// The values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable values.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Element-wise `self − other` (an update relative to `other`).
    pub fn delta_from(&self, other: &AdapterSet) -> AdapterSet {
        let data = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| a - b)
            .collect();
        AdapterSet::new(self.layout.clone(), data)
    }

    /// L2 norm over all tensors as one vector.
    pub fn l2_norm(&self) -> f64 {
        self.data
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt()
    }

    /// Serialise as a safetensors buffer with PEFT key names (the bytes that go on the wire).
    ///
    /// # Errors
    /// Fails only on an internal safetensors error.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        self.to_safetensors_where(|_| true)
    }

    /// The tensors `keep` selects as a safetensors buffer (split learning's client-side half).
    ///
    /// # Errors
    /// A layout inconsistent with the data (never, for a set built by this crate).
    pub fn to_safetensors_where(
        &self,
        keep: impl Fn(&AdapterTensor) -> bool,
    ) -> Result<Vec<u8>, ModelError> {
        let kept: Vec<&AdapterTensor> = self.layout.tensors().iter().filter(|t| keep(t)).collect();
        let bytes: Vec<Vec<u8>> = kept
            .iter()
            .map(|t| {
                self.data[t.offset..t.offset + t.numel()]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            })
            .collect();
        let views = kept
            .iter()
            .zip(&bytes)
            .map(|(t, b)| TensorView::new(Dtype::F32, t.dims(), b).map(|v| (t.peft_name(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Layout(e.to_string()))?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| ModelError::Layout(e.to_string()))
    }

    /// Parse a safetensors buffer written by [`AdapterSet::to_safetensors`] against `layout`.
    ///
    /// # Errors
    /// A missing tensor, a wrong shape or dtype, or a corrupt buffer.
    pub fn from_safetensors(layout: Arc<AdapterLayout>, bytes: &[u8]) -> Result<Self, ModelError> {
        let mut data = vec![0f32; layout.len()];
        Self::read_safetensors_into(&layout, bytes, &mut data)?;
        Ok(Self { layout, data })
    }

    /// Parse a safetensors buffer laid out by `layout` into `data` (of the layout's length),
    /// without allocating.
    ///
    /// # Errors
    /// As [`AdapterSet::from_safetensors`].
    ///
    /// # Panics
    /// When `data` is not of the layout's length (a broken invariant).
    pub fn read_safetensors_into(
        layout: &AdapterLayout,
        bytes: &[u8],
        data: &mut [f32],
    ) -> Result<(), ModelError> {
        assert_eq!(data.len(), layout.len(), "buffer length mismatch");
        let starts = tensor_starts(layout, bytes)?;
        copy_tensors(layout, bytes, &starts, data);
        Ok(())
    }
}

/// Where each tensor of a layout starts in safetensors payloads, checked once per distinct
/// header: uploads written by [`AdapterSet::to_safetensors`] for one layout share their header
/// byte for byte, so a round's uploads are parsed (JSON header, names, dtypes, shapes) once.
#[derive(Debug)]
pub struct PayloadReader {
    layout: Arc<AdapterLayout>,
    /// The length prefix and header of the last payload that passed, and its length.
    header: Vec<u8>,
    total: usize,
    starts: Vec<usize>,
}

impl PayloadReader {
    /// A reader of payloads laid out by `layout`.
    pub fn new(layout: Arc<AdapterLayout>) -> Self {
        Self {
            layout,
            header: Vec::new(),
            total: 0,
            starts: Vec::new(),
        }
    }

    /// The byte offset of each tensor's little-endian f32 values in `bytes`, in layout order.
    ///
    /// # Errors
    /// As [`AdapterSet::from_safetensors`].
    pub fn starts(&mut self, bytes: &[u8]) -> Result<&[usize], ModelError> {
        let known =
            !self.header.is_empty() && bytes.len() == self.total && bytes.starts_with(&self.header);
        if !known {
            self.starts = tensor_starts(&self.layout, bytes)?;
            // A payload that deserialised has an 8-byte length prefix and a header that long.
            let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
            self.header = bytes[..8 + n].to_vec();
            self.total = bytes.len();
        }
        Ok(&self.starts)
    }

    /// Parse `bytes` into `data` (of the layout's length).
    ///
    /// # Errors
    /// As [`AdapterSet::from_safetensors`].
    ///
    /// # Panics
    /// When `data` is not of the layout's length (a broken invariant).
    pub fn read_into(&mut self, bytes: &[u8], data: &mut [f32]) -> Result<(), ModelError> {
        assert_eq!(data.len(), self.layout.len(), "buffer length mismatch");
        self.starts(bytes)?;
        copy_tensors(&self.layout, bytes, &self.starts, data);
        Ok(())
    }
}

/// Deserialise a safetensors buffer and find each tensor of `layout` in it, checking its name,
/// dtype and shape.
fn tensor_starts(layout: &AdapterLayout, bytes: &[u8]) -> Result<Vec<usize>, ModelError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Layout(e.to_string()))?;
    layout
        .tensors()
        .iter()
        .map(|t| {
            let name = t.peft_name();
            let view = st
                .tensor(&name)
                .map_err(|_| ModelError::Layout(format!("tensor {name} is missing")))?;
            if view.dtype() != Dtype::F32 || view.shape() != t.dims() {
                return Err(ModelError::Layout(format!(
                    "tensor {name} is {:?} {:?}, expected F32 {:?}",
                    view.dtype(),
                    view.shape(),
                    t.shape
                )));
            }
            Ok(view.data().as_ptr() as usize - bytes.as_ptr() as usize)
        })
        .collect()
}

/// Copy each tensor's little-endian values from `bytes` (at `starts`) into `data`.
fn copy_tensors(layout: &AdapterLayout, bytes: &[u8], starts: &[usize], data: &mut [f32]) {
    for (t, &start) in layout.tensors().iter().zip(starts) {
        let dst = &mut data[t.offset..t.offset + t.numel()];
        let src = &bytes[start..start + 4 * t.numel()];
        if cfg!(target_endian = "little") {
            bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
        } else {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes(s.try_into().expect("4 bytes"));
            }
        }
    }
}
