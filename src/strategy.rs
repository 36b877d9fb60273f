//! Aggregation strategies.

mod batch;
pub mod fedavg;
mod fold;

pub use fedavg::{FedAvgAccumulator, FoldError};
