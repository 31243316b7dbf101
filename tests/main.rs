//! The one integration-test binary (one link step instead of one per file). Each module is one
//! area of behaviour; `support` holds builders for the servers and processes they start.

mod support;

mod architecture;
mod bench;
mod cli;
mod cluster;
mod coordinator;
mod emulator;
mod gateway;
mod http;
mod kube_api;
mod litestream;
mod live_topology;
mod ownership;
mod reshard;
mod sessions;
mod store;
