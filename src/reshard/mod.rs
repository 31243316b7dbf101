//! Resharding: what changes when the number of gateway pods changes, and moving guild data to
//! its new owner.
//!
//! Level 2: uses `ownership`, `store` and `wire`.

pub mod plan;
pub mod topology;
