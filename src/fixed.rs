//! The fixed-point grid FedAvg's exact sums live on: a value x is trunc(x·2⁴⁰) steps. The
//! exact fold, secure aggregation's ring and distributed DP's discrete noise share it.

/// Steps per unit: 2⁴⁰.
pub const STEPS_PER_UNIT: f64 = (1u64 << 40) as f64;
