//! Builders and helpers shared by the integration tests. Everything here binds 127.0.0.1:0 and
//! cleans up on drop.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod eventually;
pub mod litestream;
pub mod objstore;
pub mod process;
pub mod windows;
