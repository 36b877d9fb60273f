//! The link model: a transfer of B bytes over a link of R Mbit/s with latency L takes
//! L + 8·B / (R·10⁶) seconds. Bytes are the real serialised sizes of what travels.

/// Seconds to move `bytes` over `mbps` Mbit/s (10⁶ bit/s) with `latency_s` seconds of latency.
pub fn transfer_seconds(bytes: u64, mbps: f64, latency_s: f64) -> f64 {
    latency_s + 8.0 * bytes as f64 / (mbps * 1e6)
}
