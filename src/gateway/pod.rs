//! The state one gateway pod shares between its event handler, its internal API and its
//! background tasks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serenity::http::Http;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::gateway::metrics::Metrics;
use crate::ownership::{GuildId, Ordinal};
use crate::reshard::coordinator::Coordinator;
use crate::reshard::topology::OwnershipView;
use crate::store::Store;

/// Everything a pod's tasks share.
pub struct Pod {
    /// `gateway-<ordinal>`.
    pub name: String,
    /// What this pod processes.
    pub ownership: Arc<OwnershipView>,
    /// The resharding coordinator (cover, convergence, handoff).
    pub coordinator: Arc<Coordinator>,
    /// The pod's database.
    pub store: Store,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Discord REST (or the emulator's).
    pub rest: Arc<Http>,
    /// Woken when a write queued outbox messages.
    pub outbox_wake: Notify,
    /// Event handlers in flight; drained on shutdown before the writer is flushed.
    pub inflight: TaskTracker,
    /// Set when no more events may be taken (shutdown under way).
    pub stopping: AtomicBool,
    /// At least one shard has a live session.
    pub connected: AtomicBool,
    /// IDENTIFYs sent (sessions started) since the pod started.
    pub identifies: AtomicU64,
    /// Guilds this pod has seen a GUILD_CREATE for and processes.
    pub guilds: Mutex<HashSet<GuildId>>,
    /// The last error worth reporting in status.
    pub last_error: Mutex<Option<String>>,
    /// Artificial delay before executing a command (fault injection for deadline tests).
    pub command_delay: Duration,
}

impl Pod {
    /// This pod's ordinal.
    pub fn ordinal(&self) -> Ordinal {
        self.ownership.ordinal()
    }

    /// Ready to serve: connected to the gateway (migrations ran before the pod was built).
    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) && !self.stopping.load(Ordering::Relaxed)
    }

    /// Remembers an error for the status report.
    pub fn record_error(&self, error: impl std::fmt::Display) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = Some(error.to_string());
    }

    /// The last recorded error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Notes that a guild this pod processes is present.
    pub fn guild_seen(&self, guild: GuildId, present: bool) {
        let mut guilds = self
            .guilds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if present {
            guilds.insert(guild);
        } else {
            guilds.remove(&guild);
        }
        let owned = guilds.iter().filter(|g| self.ownership.owns(**g)).count();
        self.metrics.guilds_owned.set(owned as i64);
    }

    /// Guilds seen that this pod owns under its current topology.
    pub fn guilds_owned(&self) -> u64 {
        let guilds = self
            .guilds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guilds.iter().filter(|g| self.ownership.owns(**g)).count() as u64
    }
}
