//! The subcommands' front ends: argument checks, printing, signals. The work is the library's.

pub mod attack;
pub mod comm;
pub mod eval;
pub mod eval_task;
pub mod generate;
pub mod invert;
pub mod out;
pub mod privacy;
pub mod progress;
pub mod run;
pub mod study;
pub mod sweep;
pub mod validate;
pub mod worker;
