//! What the load generators share with benchmarks outside this crate.
#![forbid(unsafe_code)]

pub mod proc_stats;
pub mod requests;
