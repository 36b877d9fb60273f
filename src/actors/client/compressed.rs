//! A client's upload under `compression`: its residual added (error feedback), encoded,
//! clipped after decoding, and what was not sent kept for its next round.

use super::{ClientArgs, Prepared};
use crate::messages::FitIns;
use crate::model::AdapterSet;

/// The update as the run's codec encodes it: with error feedback, this client's residual is
/// added first and what the encoding did not send is kept for its next round; under
/// client-side clipping the bound is applied after decoding (the message's scale).
pub(super) fn encode(
    a: &ClientArgs,
    ins: &FitIns,
    codec: &crate::compress::Codec,
    update: &AdapterSet,
    prepared: Prepared,
) -> Result<Vec<u8>, crate::compress::CompressError> {
    let ctx = &a.ctx;
    let mut values = update.data().to_vec();
    let residuals = ctx.residuals.as_ref().filter(|_| !prepared.corrupted);
    if let Some(r) = residuals {
        r.add_to(a.id, &mut values);
    }
    let who = crate::compress::EncodeFor {
        seed: ctx.seed,
        round: ins.round,
        client: a.id,
    };
    let clip = ins.config.clip_norm.filter(|_| !prepared.corrupted);
    let encoded = codec.encode(&values, who, clip)?;
    if let Some(r) = residuals {
        r.keep(a.id, &values, &encoded.decoded);
    }
    Ok(encoded.payload)
}
