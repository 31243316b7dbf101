//! guildshard: a Discord moderation and community bot that scales horizontally as a Kubernetes
//! StatefulSet. Each gateway pod owns the guilds that hash to its ordinal, keeps their data in
//! its own SQLite database (replicated by Litestream), and hands guilds over when the pod count
//! changes. A stateless HTTP service verifies interactions and routes them to the owner pod.
//!
//! # Layout
//! Imports only point down the levels:
//! - L0 [`ownership`] (the one guild→pod function), [`calendar`] (UTC day arithmetic), [`config`]
//!   (env), [`commands`] (the command set), [`shutdown`], [`listener`] (serving a router with
//!   connection limits and timeouts), [`telemetry`], [`wire`] (serde types that cross processes,
//!   no I/O), [`internal_paths`] (the pods' internal API routes, for its router and clients).
//! - L1 [`store`] (per-pod SQLite: migrations, batched writer, idempotent upserts, guild
//!   export/import), [`emulator`] (a local Discord: gateway WebSocket, REST, control API,
//!   traffic generator) and [`kube_api`] (a Kubernetes API stand-in serving the gateway
//!   StatefulSet to kubectl and client libraries: get, watch, scale, fault switches).
//! - L2 [`reshard`] (topology transitions and guild handoff) and [`pod_client`] (the one client
//!   of the pods' internal API, for the HTTP service, peer pods and the local cluster).
//! - L3 [`gateway`] (a gateway pod: serenity, ownership filter, features, internal API) and
//!   [`http`] (the stateless interactions and API service).
//! - L4 [`local_cluster`] (the emulator plus N pods as processes with StatefulSet semantics,
//!   optionally with object storage and a Litestream sidecar per pod)
//!   and [`dev`] (the `guildshard dev` live view).
//! - L5 [`bench`] (`guildshard bench <scenario>`: measured speed and memory of the above).
//!
//! `http` never imports `store`; `gateway` and `http` never import each other; `emulator` and
//! `kube_api` never import the bot (`store`, `reshard`, `gateway`, `http`). A `use` names one
//! module of the crate (no `use crate::{a, b}`). `tests/architecture.rs` checks all of this.

pub mod bench;
pub mod calendar;
pub mod commands;
pub mod config;
pub mod dev;
pub mod emulator;
pub mod gateway;
pub mod http;
pub mod internal_paths;
pub mod kube_api;
pub mod listener;
pub mod local_cluster;
pub mod ownership;
pub mod pod_client;
pub mod reshard;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod wire;
