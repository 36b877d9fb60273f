//! The actors: a [`server::Server`] running the round loop, one cheap [`client::Client`] per
//! simulated client, and an [`aggregator::Aggregator`] folding updates as they arrive.

pub mod aggregator;
pub mod client;
pub mod server;
