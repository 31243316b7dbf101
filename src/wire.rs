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
    /// Where the pod is in its life and in the current transition.
    pub state: PodState,
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
    /// The Discord shards this pod connects now.
    #[serde(default)]
    pub shards: Vec<u32>,
    /// Every shard session this pod knows of (its own and those its peers published): a pod
    /// that takes a shard over resumes from the best of them.
    #[serde(default)]
    pub sessions: Vec<ShardSession>,
    /// Sessions that could not be resumed since the pod started, newest last (a real gap).
    #[serde(default)]
    pub gaps: Vec<SessionGap>,
    /// Dispatches received from Discord that still wait for their owner's acknowledgement.
    #[serde(default)]
    pub unacknowledged: u64,
}

/// Where a pod is in its life and in the current transition, as its status report says
/// (`"active"`, `"handing_off"`, ... on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// A member of its topology with nothing left to move.
    Active,
    /// Still processing guilds under a previous topology.
    Transitioning,
    /// A member still pulling guilds from peers or restoring departed replicas.
    HandingOff,
    /// Outside the topology, still holding guilds.
    Draining,
    /// Outside the topology, holding nothing.
    Removed,
    /// Shutting down: peers stop routing to it and cover its guilds.
    Stopping,
}

impl PodState {
    /// The word used on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Active => "active",
            PodState::Transitioning => "transitioning",
            PodState::HandingOff => "handing_off",
            PodState::Draining => "draining",
            PodState::Removed => "removed",
            PodState::Stopping => "stopping",
        }
    }

    /// Whether the pod is shutting down: it is no longer live, whatever else it reports.
    pub fn is_stopping(self) -> bool {
        self == PodState::Stopping
    }
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that table columns (`{:<13}`) line up.
        f.pad(self.as_str())
    }
}

/// One Discord shard's session, as its connector publishes it: whoever takes the shard over
/// RESUMEs it from `acked_seq`, and Discord replays everything after (DESIGN §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSession {
    /// The shard.
    pub shard: u32,
    /// Discord's session id; empty for a session known to be gone (invalidated).
    pub session_id: String,
    /// Where to resume it (`resume_gateway_url` of its READY).
    pub resume_url: String,
    /// Every dispatch up to this sequence number was committed by its owner.
    pub acked_seq: u64,
    /// Grows by one each time the shard moves or gets a new session: of two records of one
    /// shard, the one with the higher `(epoch, acked_seq)` is current.
    pub epoch: u64,
}

impl ShardSession {
    /// Whether the record names a session that may still be resumed.
    pub fn resumable(&self) -> bool {
        !self.session_id.is_empty()
    }

    /// Whether `self` is newer than `other` (same shard).
    pub fn supersedes(&self, other: &ShardSession) -> bool {
        (self.epoch, self.acked_seq) > (other.epoch, other.acked_seq)
    }
}

/// A shard session that ended without a resume: the dispatches after `after_seq` of session
/// `session_id` were never received (DESIGN §6: a real gap, never silent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGap {
    /// The shard.
    pub shard: u32,
    /// The session that ended.
    pub session_id: String,
    /// The last sequence number acknowledged in it; what came after may be lost.
    pub after_seq: u64,
    /// When the pod learned of it (Unix ms).
    pub at_ms: u64,
}

/// What a pod answers at `POST /internal/v1/events` for each dispatch of the batch, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Handled and committed (or nothing to record): acknowledged.
    Done,
    /// The pod does not process this guild under its view: send it where the sender's view
    /// says, later.
    NotMine,
}

/// The body of `POST /internal/v1/events`, read without copying the frames.
#[derive(Debug, Deserialize)]
pub struct EventsBatch<'a> {
    /// The connector that sends them.
    pub from: Ordinal,
    /// The dispatches, in the order the connector received them.
    #[serde(borrow)]
    pub events: Vec<RoutedFrame<'a>>,
}

/// One dispatch of an [`EventsBatch`].
#[derive(Debug, Deserialize)]
pub struct RoutedFrame<'a> {
    /// The shard it came on.
    pub shard: u32,
    /// Its sequence number there.
    pub seq: u64,
    /// The frame as Discord sent it.
    #[serde(borrow)]
    pub frame: &'a serde_json::value::RawValue,
}

/// The answer to `POST /internal/v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryResults {
    /// One per dispatch sent, in order.
    pub results: Vec<Delivery>,
}

/// The answer to `POST /internal/v1/shards/{id}/release`: the session the pod held for the
/// shard, closed resumably, or none if it held none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The closed session.
    pub session: Option<ShardSession>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_states_keep_their_wire_words() {
        for state in [
            PodState::Active,
            PodState::Transitioning,
            PodState::HandingOff,
            PodState::Draining,
            PodState::Removed,
            PodState::Stopping,
        ] {
            let json = serde_json::to_string(&state).expect("serialise");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(
                serde_json::from_str::<PodState>(&json).expect("parse"),
                state
            );
        }
        assert_eq!(format!("{:<9}|", PodState::Active), "active   |");
        assert!(serde_json::from_str::<PodState>("\"asleep\"").is_err());
    }
}
