//! fedsim's integration tests: one binary (one link step with candle on two cores).

mod util;

mod attack;
mod cli;
mod cluster;
mod comm;
mod data;
mod docs;
mod eval;
mod fedavg;
mod finite;
mod fuzz;
mod he;
mod hierarchy;
mod inputs;
mod model;
mod ops;
mod ownership;
mod precision;
mod privacy;
mod property;
mod resume;
mod run;
mod scale_async;
mod scenario;
mod schema;
mod secagg;
mod secagg_cost;
mod secagg_dp;
mod signals;
mod smollm2;
mod strategy;
mod structure;
mod system;
mod task;
mod task_run;
