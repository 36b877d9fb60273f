//! fedsim's integration tests: one binary (one link step with candle on two cores).

mod util;

mod cli;
mod data;
mod fedavg;
mod metrics;
mod model;
mod privacy;
mod run;
mod scenario;
