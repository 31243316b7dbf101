//! The state one gateway pod shares between its event handler, its internal API and its
//! background tasks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serenity::http::Http;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::gateway::metrics::Metrics;
use crate::ownership::{owner, GuildId, Ordinal, Topology};
use crate::reshard::coordinator::Coordinator;
use crate::reshard::topology::OwnershipView;
use crate::store::Store;

/// Everything a pod's tasks share.
pub struct Pod {
    /// `gateway-<ordinal>`.
    pub name: String,
    /// Drawn at random when the process starts: peers tell a restart from it.
    pub instance: u64,
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
    /// Set while a pod removed by a scale-down hands its guilds over before stopping.
    pub draining: AtomicBool,
    /// Whether the pod count's source (the StatefulSet) is reachable.
    pub topology_source: Arc<crate::reshard::statefulset::SourceHealth>,
    /// Every shard session this pod knows of (DESIGN §6).
    pub book: crate::gateway::session_book::SessionBook,
    /// The shards this pod connects; set once they are configured.
    pub connectors: std::sync::OnceLock<Arc<crate::gateway::connector::Connectors>>,
    /// The per-owner delivery queues of the dispatches this pod's shards receive.
    pub router: crate::gateway::delivery::Router,
    /// The cluster's identify queue, kept here while this pod is its keeper.
    pub gate: Arc<crate::gateway::identify_queue::IdentifyGate>,
    /// This pod's view of its peers, from its last status poll.
    pub members: tokio::sync::watch::Sender<crate::gateway::members::Members>,
    /// Peer pods' internal API.
    pub peers: crate::pod_client::PodClient,
    /// Shard sessions that could not be resumed since start, newest last.
    pub gaps: Mutex<std::collections::VecDeque<crate::wire::SessionGap>>,
    /// Guilds this pod has seen a GUILD_CREATE for and processes, and how many of them it owns
    /// under the topology the count was taken for (recounted when the topology changes).
    pub guilds: Mutex<SeenGuilds>,
    /// `(held generation, topology, held guilds this pod does not own under it)`: recounted
    /// only when the set of held guilds or the topology changes, not on every status poll.
    pub held_foreign: Mutex<Option<(u64, Topology, u64)>>,
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

    /// Ready to serve: every shard the map gives this pod is connected (migrations ran before
    /// the pod was built), and it is not stopping.
    pub fn is_ready(&self) -> bool {
        self.connectors.get().is_some_and(|c| c.is_ready())
            && !self.stopping.load(Ordering::Relaxed)
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

    /// Notes that a guild this pod processes is present (or gone).
    pub fn guild_seen(&self, guild: GuildId, present: bool) {
        let mut guilds = self
            .guilds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = if present {
            guilds.present.insert(guild)
        } else {
            guilds.present.remove(&guild)
        };
        let current = self.ownership.current();
        if guilds.counted_under != Some(current) {
            guilds.recount(current, self.ordinal());
        } else if changed && owner(guild, current) == self.ordinal() {
            if present {
                guilds.owned += 1;
            } else {
                guilds.owned -= 1;
            }
        }
        self.metrics.guilds_owned.set(guilds.owned as i64);
    }

    /// Guilds seen that this pod owns under its current topology.
    pub fn guilds_owned(&self) -> u64 {
        let mut guilds = self
            .guilds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.ownership.current();
        if guilds.counted_under != Some(current) {
            guilds.recount(current, self.ordinal());
            self.metrics.guilds_owned.set(guilds.owned as i64);
        }
        guilds.owned
    }

    /// Held guilds this pod does not own (still to hand off, or copies from covering a peer).
    pub async fn guilds_held_foreign(&self) -> u64 {
        let generation = self.store.held_generation();
        let cached = *self
            .held_foreign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.ownership.current();
        if let Some((_, _, foreign)) =
            cached.filter(|(seen, under, _)| *seen == generation && *under == current)
        {
            return foreign;
        }
        let held = self.store.guild_ids().await.unwrap_or_default();
        let foreign = held
            .iter()
            .filter(|g| owner(**g, current) != self.ordinal())
            .count() as u64;
        *self
            .held_foreign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((generation, current, foreign));
        foreign
    }
}

/// The guilds a pod has seen, and how many of them it owns.
#[derive(Debug, Default)]
pub struct SeenGuilds {
    /// Present (GUILD_CREATE seen, no GUILD_DELETE since).
    pub present: HashSet<GuildId>,
    /// How many of `present` this pod owns under `counted_under`.
    pub owned: u64,
    /// The topology `owned` was counted under.
    pub counted_under: Option<Topology>,
}

impl SeenGuilds {
    /// Counts the present guilds `me` owns under `topology` (after a change of the pod count).
    fn recount(&mut self, topology: Topology, me: Ordinal) {
        self.owned = self
            .present
            .iter()
            .filter(|g| owner(**g, topology) == me)
            .count() as u64;
        self.counted_under = Some(topology);
    }
}
