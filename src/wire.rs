//! Types that cross process boundaries: the gateway pods' internal API bodies and status
//! reports, read by the HTTP service, the `status` command and peer pods during resharding.
//!
//! Level 0: serde only, no I/O, so every side of a conversation agrees on one definition.

use serde::{Deserialize, Serialize};

use crate::ownership::{GuildId, Ordinal, Topology};

/// Header carrying how many milliseconds the owner pod has to answer an interaction before it
/// must defer it (answer "deferred" and edit the original response later).
pub const DEADLINE_HEADER: &str = "x-guildshard-deadline-ms";

/// Header on a guild export carrying the version of the guild's rows the export was taken at;
/// the puller sends it back as `DELETE /internal/v1/guilds/{id}?if_version=<version>`, so the
/// previous owner deletes only if nothing changed since.
pub const GUILD_VERSION_HEADER: &str = "x-guildshard-guild-version";

/// What a gateway pod reports at `GET /internal/v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The pod's ordinal.
    pub ordinal: Ordinal,
    /// The topology the pod runs under now.
    pub topology: Topology,
    /// The topologies it ran under before, oldest first, until the transition converged: it
    /// still processes the guilds it owned under each.
    #[serde(default)]
    pub previous_topologies: Vec<Topology>,
    /// Where the pod count comes from and whether that source is reachable.
    #[serde(default)]
    pub topology_source: TopologySourceReport,
    /// `active`, `transitioning`, `handing_off`, `draining` (removed, still holding guilds),
    /// `removed` (outside the topology, empty), `stopping`.
    pub state: String,
    /// Whether the pod is ready (gateway connected, migrations applied).
    pub ready: bool,
    /// Guilds this pod owns under its current topology, among those it has data or events for.
    pub guilds_owned: u64,
    /// Guilds this pod holds rows for.
    pub guilds_held: u64,
    /// Guilds whose data still has to move to or from this pod.
    pub handoff_pending: u64,
    /// Dispatches received from Discord.
    pub events_seen: u64,
    /// Dispatches that passed the ownership filter.
    pub events_owned: u64,
    /// Dispatches fully handled (written or acted upon).
    pub events_handled: u64,
    /// Size of the SQLite database (main file plus WAL), bytes.
    pub db_size_bytes: u64,
    /// Identify calls this pod made since start.
    pub identifies: u64,
    /// The last error the pod ran into, if any.
    pub last_error: Option<String>,
    /// Peer ordinals this pod processes guilds for while they are down (resharding cover).
    #[serde(default)]
    pub covering: Vec<Ordinal>,
    /// Resharding handoff progress.
    #[serde(default)]
    pub handoff: HandoffProgress,
    /// A random number drawn when the process started: a change means the pod restarted
    /// between two polls, even if no poll saw it down.
    #[serde(default)]
    pub instance: u64,
    /// Since when this process's gateway receives events (Unix ms).
    #[serde(default)]
    pub receiving_since_ms: Option<u64>,
    /// Removed ordinals this pod last saw still holding guilds: if one disappears while
    /// listed, this pod restores the rest from its replica.
    #[serde(default)]
    pub departing: Vec<Ordinal>,
    /// Removed ordinals this pod last saw holding nothing: a removed pod stops only once every
    /// member lists it here.
    #[serde(default)]
    pub departed_empty: Vec<Ordinal>,
}

/// Where a pod learns the pod count (`fixed`: `NUM_GATEWAY_PODS`; `statefulset`: the
/// StatefulSet's `spec.replicas` through the Kubernetes API), and whether it can reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologySourceReport {
    /// `fixed` or `statefulset`.
    pub kind: String,
    /// Whether the source answers; while it does not, the pod keeps the last count it knew.
    pub connected: bool,
    /// Since when it has not answered (Unix ms).
    pub down_since_ms: Option<u64>,
    /// Why, the last time it was asked.
    pub last_error: Option<String>,
}

/// What the resharding coordinator of one pod has done and still has to do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffProgress {
    /// Guilds this pod owns that peers still hold, as of the last listing.
    pub pending_pull: u64,
    /// Guild copies pulled from peers (imported and deleted there) since start.
    pub pulled: u64,
    /// Guilds imported from departed ordinals' replicas since start.
    pub restored: u64,
    /// Departed ordinals whose replica this pod still has to restore.
    pub replicas_pending: Vec<u32>,
    /// The last handoff error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// What a pod processes from a moment on: logged (field `window`, as JSON) each time it
/// changes, so that afterwards anyone can check that every guild always had a processing pod.
///
/// A pod processes an event of guild `g` at time `t` if it is receiving (`receiving_since_ms
/// <= t`) and `g` belongs to it under `current` or any topology in `history`, or belongs to a
/// covered ordinal whose cover started at or before `t`. The record holds until the pod's next
/// record, or until the process ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessingWindow {
    /// The pod.
    pub ordinal: Ordinal,
    /// When this record begins (Unix ms).
    pub at_ms: u64,
    /// Since when the pod's gateway sessions receive events; `None` while they do not
    /// (starting, or closed at shutdown).
    pub receiving_since_ms: Option<u64>,
    /// The topology the pod runs under.
    pub current: Topology,
    /// The topologies it still processes its previous guilds under, until convergence.
    #[serde(default)]
    pub history: Vec<Topology>,
    /// Down peers it covers, each with the time from which their events are processed
    /// (earlier events still held are replayed when the cover starts).
    pub covering: Vec<(Ordinal, u64)>,
}

/// A one-off replay: a pod processed the events it had held of `for_ordinal`'s guilds received
/// between `from_ms` and `to_ms`, because that pod restarted between two polls and missed
/// them. Logged (field `replayed`, as JSON) like [`ProcessingWindow`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedWindow {
    /// The pod that replayed.
    pub ordinal: Ordinal,
    /// When it took the held events (Unix ms): nothing received later was replayed.
    pub at_ms: u64,
    /// The replaying pod's topology, which says which guilds are `for_ordinal`'s.
    pub current: Topology,
    /// And its previous topologies, until convergence.
    #[serde(default)]
    pub history: Vec<Topology>,
    /// The pod whose events were replayed.
    pub for_ordinal: Ordinal,
    /// From (Unix ms).
    pub from_ms: u64,
    /// To (Unix ms).
    pub to_ms: u64,
    /// Since when the replaying pod received events (it holds nothing from before).
    pub receiving_since_ms: Option<u64>,
}

/// `GET /internal/v1/guilds`: the guilds a pod holds rows for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldGuilds {
    /// The answering pod.
    pub ordinal: Ordinal,
    /// Every guild with at least one row in its database.
    pub guild_ids: Vec<GuildId>,
}

/// What the owner pod answers at `POST /internal/v1/interactions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum InteractionOutcome {
    /// The interaction response to return to Discord as is.
    Respond {
        /// A Discord interaction response object (`{"type":4,"data":{...}}`).
        response: serde_json::Value,
    },
    /// The work takes longer than the deadline: answer Discord with a deferred response (type
    /// 5); the owner edits the original response itself when it is done.
    Deferred {
        /// Whether the eventual answer is ephemeral (the deferred response must say so).
        ephemeral: bool,
    },
}

/// The body of a 409 from a pod asked about a guild it does not own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotOwner {
    /// The guild asked about.
    pub guild_id: String,
    /// The owner under the answering pod's topology.
    pub owner: Ordinal,
    /// The answering pod's topology.
    pub topology: Topology,
}

/// The error body of the internal API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short, lower-case description.
    pub error: String,
}
