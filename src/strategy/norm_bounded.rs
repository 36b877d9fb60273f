//! Norm-bounded FedAvg (Sun et al. 2019, "Can you really backdoor federated learning?"): the
//! server clips each update to an L2 norm before the FedAvg fold, without adding noise. It
//! bounds any one client's pull on the aggregate; it streams. With DP it is redundant (DP
//! already clips), so that combination is refused.

use crate::privacy::clip_l2;

/// Clip `update` to L2 norm `max_norm` in place; returns whether it was clipped.
pub fn bound(update: &mut [f32], max_norm: f64) -> bool {
    clip_l2(update, max_norm).clipped
}
