//! Aggregation strategies.

pub mod fedavg;

pub use fedavg::{FedAvgAccumulator, FoldError};
