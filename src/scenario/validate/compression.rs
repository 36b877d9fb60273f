//! Checks of `compression`: the codec's settings, and what compressed uploads do not combine
//! with — secure aggregation (a masked or encrypted vector is uniformly random: compressing it
//! saves nothing, and the ring is sized for f32 terms) and noise added by the clients (their
//! noised update is not on the codec's grid, and compressing it would change the noise the
//! accountant charges for).

use super::{Check, Range};
use crate::compress::Compression;
use crate::privacy::NoiseBy;
use crate::scenario::file::ScenarioFile;
use crate::scenario::ScenarioError;

pub(super) fn check_compression(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    match file.compression {
        Compression::None | Compression::Fp16 => {}
        Compression::Quantize { bits, .. } => c.ensure(
            bits == 8 || bits == 4,
            "compression.Quantize.bits",
            format!("is {bits}; it must be 8 or 4"),
        )?,
        Compression::TopK { fraction, .. } => c.finite_in(
            fraction,
            Range::open_closed(0.0, 1.0),
            "compression.TopK.fraction",
        )?,
    }
    if file.compression == Compression::None {
        return Ok(());
    }
    if let (true, crate::stragglers::Stragglers::Async { .. }) =
        (file.compression.error_feedback(), file.system.stragglers)
    {
        return Err(c.fail(
            "compression.TopK.error_feedback",
            "cannot be combined with system.stragglers: Async yet: a client in flight across a \
             checkpoint would resume from a residual its unfinished round already changed; use \
             error_feedback: false or a synchronous policy",
        ));
    }
    if file.strategy.secure_aggregation.is_some() {
        return Err(c.fail(
            "compression",
            "cannot be combined with strategy.secure_aggregation: the masked or encrypted vector \
             is uniformly random in its ring, so compressing it saves nothing; use compression: \
             None with secure aggregation",
        ));
    }
    if let Some(dp) = &file.dp {
        if dp.noise_by != NoiseBy::Server {
            return Err(c.fail(
                "compression",
                "cannot be combined with dp.noise_by: Clients: a client's noised update is not \
                 on the codec's grid, and compressing it would change the noise the accountant \
                 charges for; use dp.noise_by: Server (clipping happens after decoding)",
            ));
        }
    }
    Ok(())
}
