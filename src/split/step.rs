//! One split training step: the client's graph (embedding, blocks below the cut), the encoded
//! messages, the server's graph (blocks above the cut; under SplitFed the norm, head and loss
//! too), and under U-shaped the client's head graph — joined only by decoded values.
//!
//! The server's graph starts from a fresh variable holding the decoded activations, so its
//! backward yields the gradient at the cut; the client's graph is differentiated by
//! back-propagating that (decoded) gradient: the scalar Σ h ⊙ ĝ has gradient J_hᵀ ĝ with
//! respect to the client's variables. Padding never travels: messages carry the real tokens'
//! rows, and the server puts zero rows where padding was (a right-padded row is never seen by a
//! real one, so the real rows' values and gradients are those of the unsplit pass).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::{
    CutCompression, Direction, MessageKind, SentMessage, SplitConfig, SplitError, SplitMode,
};
use crate::batch::{make_batch, padding_mask};
use crate::model::lora::DropoutRng;
use crate::model::stages::Pass;
use crate::model::{BaseModel, LoraVars};
use crate::tokenizer::TokenizedExample;

/// What a step computed: the mean loss, the gradients of every adapter variable (client and
/// server side), and the messages it sent.
pub struct StepResult {
    /// Mean NLL per response token.
    pub loss: f32,
    /// Gradients of the adapter's variables.
    pub grads: GradStore,
    /// Every message, in the order sent.
    pub messages: Vec<SentMessage>,
}

/// The real tokens of a right-padded batch: flat row indices into b·s, and the lengths.
pub struct RealRows {
    /// Indices of the real rows in the padded (b·s) layout.
    pub index: Tensor,
    /// Tokens per sequence.
    pub lengths: Vec<usize>,
    /// Padded sequence length.
    pub s: usize,
}

impl RealRows {
    /// The real rows of a batch of `lengths`, padded to `s`.
    ///
    /// # Errors
    /// On a candle error.
    pub fn new(lengths: Vec<usize>, s: usize, device: &Device) -> Result<Self, SplitError> {
        let idx: Vec<u32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(b, &n)| (0..n).map(move |t| (b * s + t) as u32))
            .collect();
        let n = idx.len();
        Ok(Self {
            index: Tensor::from_vec(idx, n, device)?,
            lengths,
            s,
        })
    }

    /// Encode the real rows of `x` (b·s, hidden).
    ///
    /// # Errors
    /// On a candle error.
    pub fn encode(&self, x: &Tensor, codec: CutCompression) -> Result<super::Encoded, SplitError> {
        let real = x.index_select(&self.index, 0)?;
        let (rows, cols) = real.dims2()?;
        let values = real.flatten_all()?.to_vec1::<f32>()?;
        Ok(codec.encode(&values, rows, cols))
    }

    /// Decode a message into the padded (b·s, hidden) layout, zeros at padding.
    ///
    /// # Errors
    /// A malformed message; a candle error.
    pub fn decode(&self, msg: &super::Encoded, device: &Device) -> Result<Tensor, SplitError> {
        let (rows, cols, values) = msg.decode()?;
        let real = Tensor::from_vec(values, (rows, cols), device)?;
        let zeros = Tensor::zeros((self.lengths.len() * self.s, cols), real.dtype(), device)?;
        Ok(zeros.index_add(&self.index, &real, 0)?)
    }

    /// Bytes of the sequence lengths sent with the activations.
    pub fn header_bytes(&self) -> u64 {
        lengths_bytes(self.lengths.len())
    }
}

fn sent(kind: MessageKind, direction: Direction, bytes: u64) -> SentMessage {
    SentMessage {
        kind,
        direction,
        bytes,
    }
}

/// Bytes of the sequence lengths of `sequences` sent with the activations: a u32 count, a
/// u32 each.
pub fn lengths_bytes(sequences: usize) -> u64 {
    4 + 4 * sequences as u64
}

/// Bytes of the labels message: a u32 count, then (u32 position, u32 token) per target.
pub fn label_bytes(targets: usize) -> u64 {
    4 + 8 * targets as u64
}

/// The client's half up to the cut: hidden states (b·s, hidden) after `cut_layer` blocks.
///
/// # Errors
/// On a candle error.
pub fn client_forward(
    model: &BaseModel,
    cut_layer: usize,
    input: &crate::model::LossInput,
    vars: Option<&LoraVars>,
    dropout: Option<&mut DropoutRng>,
) -> Result<(Tensor, Pass), SplitError> {
    let pass = model.pass(&input.mask, input.input_ids.dims2()?, vars)?;
    let x = model.embed(&input.input_ids, &pass)?;
    let h = model.blocks(x, &pass, 0..cut_layer, vars, dropout)?;
    Ok((h, pass))
}

/// One split step on `batch` (right-padded with `pad`) from the adapter `vars`.
///
/// # Errors
/// A malformed message, a candle error.
pub fn step(
    model: &BaseModel,
    cfg: &SplitConfig,
    (batch, pad): (&[&TokenizedExample], u32),
    vars: &LoraVars,
    dropout: &mut DropoutRng,
) -> Result<StepResult, SplitError> {
    let device = model.device();
    let layers = model.config().num_hidden_layers;
    let mut messages = Vec::new();
    // The client: its blocks, then the real rows of the cut's activations go up.
    let input = make_batch(batch, pad, device)?;
    let (_, s) = input.input_ids.dims2()?;
    let real = RealRows::new(batch.iter().map(|e| e.ids.len()).collect(), s, device)?;
    let (h, _) = client_forward(
        model,
        cfg.cut_layer,
        &input,
        Some(vars),
        Some(&mut *dropout),
    )?;
    let up = real.encode(&h, cfg.activation_compression)?;
    messages.push(sent(
        MessageKind::Activations,
        Direction::Up,
        real.header_bytes() + up.len(),
    ));
    let n = input.targets.dims1()?;
    if cfg.mode == SplitMode::SplitFed {
        messages.push(sent(MessageKind::Labels, Direction::Up, label_bytes(n)));
    }
    // The server: its blocks from a variable holding what it decoded.
    let cut = Var::from_tensor(&real.decode(&up, device)?)?;
    let mask = padding_mask(&real.lengths, s, device)?;
    let pass = model.pass(&mask, (real.lengths.len(), s), Some(vars))?;
    let top = model.blocks(
        cut.as_tensor().clone(),
        &pass,
        cfg.cut_layer..layers,
        Some(vars),
        Some(dropout),
    )?;
    let (loss, mut server) = match cfg.mode {
        SplitMode::SplitFed => {
            let hidden = model.finish(top, &pass)?;
            let nll = model.head_nll(&hidden, &input.positions, &input.targets)?;
            let loss = (nll / n as f64)?;
            let grads = loss.backward()?;
            (loss.to_scalar::<f32>()?, grads)
        }
        SplitMode::UShaped => {
            u_shaped_top(model, cfg, (&real, &pass), &top, &input, &mut messages)?
        }
    };
    // The gradient at the cut goes down; the client back-propagates it.
    let (codec, hop) = (
        (&real, cfg.gradient_compression),
        (MessageKind::Gradients, Direction::Down),
    );
    let g = hand_back(&mut server, &cut, codec, hop, &mut messages)?;
    let mut grads = (h * g)?.sum_all()?.backward()?;
    merge_grads(&mut grads, server, vars)?;
    Ok(StepResult {
        loss,
        grads,
        messages,
    })
}

/// The gradient at a message boundary, sent back the other way: taken from `grads` for the
/// variable `at` (what the receiving side decoded), encoded with `codec`, recorded as
/// `(kind, direction)`, and returned as the sender decodes it (padding rows zero).
fn hand_back(
    grads: &mut GradStore,
    at: &Var,
    (real, codec): (&RealRows, CutCompression),
    (kind, direction): (MessageKind, Direction),
    messages: &mut Vec<SentMessage>,
) -> Result<Tensor, SplitError> {
    let g = grads
        .remove(at.as_tensor())
        .ok_or(SplitError::NoCutGradient)?;
    let msg = real.encode(&g, codec)?;
    messages.push(sent(kind, direction, msg.len()));
    real.decode(&msg, at.device())
}

/// Add `from`'s gradients of `vars` into `into` (a variable on one side only is moved).
///
/// # Errors
/// On a candle error.
pub fn merge_grads(
    into: &mut GradStore,
    mut from: GradStore,
    vars: &LoraVars,
) -> Result<(), candle_core::Error> {
    for v in vars.vars() {
        if let Some(g) = from.remove(v.as_tensor()) {
            let sum = match into.remove(v.as_tensor()) {
                Some(h) => (h + g)?,
                None => g,
            };
            into.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// U-shaped: the server's top activations go down, the client computes the loss with its
/// head, and the gradient at the top comes back up; the server back-propagates it through its
/// blocks. Returns the loss and the server graph's gradients.
fn u_shaped_top(
    model: &BaseModel,
    cfg: &SplitConfig,
    (real, pass): (&RealRows, &Pass),
    top: &Tensor,
    input: &crate::model::LossInput,
    messages: &mut Vec<SentMessage>,
) -> Result<(f32, GradStore), SplitError> {
    let device = model.device();
    let down = real.encode(top, cfg.activation_compression)?;
    messages.push(sent(
        MessageKind::TopActivations,
        Direction::Down,
        down.len(),
    ));
    let at_client = Var::from_tensor(&real.decode(&down, device)?)?;
    let hidden = model.finish(at_client.as_tensor().clone(), pass)?;
    let nll = model.head_nll(&hidden, &input.positions, &input.targets)?;
    let loss = (nll / input.targets.dims1()? as f64)?;
    let mut client = loss.backward()?;
    let hop = (MessageKind::TopGradients, Direction::Up);
    let g = hand_back(
        &mut client,
        &at_client,
        (real, cfg.gradient_compression),
        hop,
        messages,
    )?;
    let grads = (top * g)?.sum_all()?.backward()?;
    Ok((loss.to_scalar::<f32>()?, grads))
}
