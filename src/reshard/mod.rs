//! Resharding: what changes when the number of gateway pods changes, and moving guild data to
//! its new owner (DESIGN §7). Level 2: uses `ownership`, `store`, `wire` and `pod_client` (to
//! call its peers); the gateway (L3)
//! wires it in, `local_cluster` (L4) drives rescales, `guildshard status` reads its verdict.
//!
//! # The protocol
//!
//! Every pod runs a [`coordinator::Coordinator`] that polls every peer's
//! `GET /internal/v1/status` (ordinals `0..max(N, N_previous) + PROBE_BEYOND`) a few times a
//! second and changes the pod's [`topology::OwnershipView`] from what it sees. Watching
//! (polls, covers, convergence) and moving data (the handoff, which can take minutes) run as
//! two loops, so a peer that dies during a long handoff is still covered within a poll.
//!
//! 0. **Live pod count.** The pod count is the gateway StatefulSet's `spec.replicas`, which
//!    every pod watches through the Kubernetes API ([`statefulset`]; `NUM_GATEWAY_PODS` is a
//!    fixed override). A change moves the running pod to the new topology
//!    ([`coordinator::Coordinator::retarget`]): no pod restarts for a rescale, so a rescale
//!    costs no IDENTIFY at all: shard sessions move between pods by RESUME (DESIGN §6,
//!    [`crate::gateway::connector`]).
//! 1. **Persisted topology history.** A pod stores the topology it runs under (`meta`
//!    `topology`) and every topology it ran under since the last convergence
//!    (`topology.history`, oldest first; written before the new current one), and processes
//!    its guilds under **all** of them. A second change before convergence (3→4, then →5) is
//!    normal: the history then holds 3 and 4. The history is cleared only when the pod sees
//!    the transition converged, so a pod killed -9 mid-transition restarts still processing
//!    every set. `replicas: 0` stops the bot: the pods keep their topology and data.
//! 2. **Cover while down** (our addition to DESIGN §7). While an ordinal is not live
//!    (unreachable or `stopping`), the connectors deliver its guilds' dispatches to one
//!    covering pod (the same for every connector, [`crate::gateway::shard_map::cover_of`]),
//!    and every live pod's view processes the guilds of the ordinals it sees down, so the
//!    covering pod accepts them. Nothing depends on a clock: a dispatch stays unacknowledged at
//!    its connector until a pod that processes its guild committed it, so dispatches sent to a
//!    pod that died, or refused by a pod whose view lagged, are sent again where the view says.
//!    A pod given SIGTERM first reports `stopping`, hands its shards over, and keeps taking
//!    dispatches until a peer reports covering it (bounded wait). Overlap is harmless
//!    (idempotent writes); the copies written by covering pods are merged back by the handoff
//!    below. Only ordinals a pod has seen live, or `stopping`, since it started are covered: a
//!    cluster starting up does not make every pod process everything (the dispatches of an
//!    ordinal that has not started yet wait at the connectors).
//! 3. **Convergence.** A pod considers the transition converged when every member ordinal
//!    (`< N`) is live and reports the same topology as this pod, and every other reachable pod
//!    (ordinals `>= N`, draining) also reports it. It then forgets the previous topology.
//!    Every pod decides on its own; before it does, it still processes its previous guilds, so
//!    at every moment each guild has at least one processing pod (its current owner, which
//!    never stops, or its previous owner, which stops only after the new owner is live).
//! 4. **Handoff (pull).** Once a pod has no previous topology it reconciles: for each reachable
//!    peer that holds guilds it does not own, it lists the ones this pod owns
//!    (`GET /internal/v1/guilds?owner=<me>`) and for each: export from the peer (with the
//!    version of the guild's rows, header `x-guildshard-guild-version`) → import here
//!    (idempotent merge, committed) → `DELETE ?if_version=<version>` on the peer. The peer
//!    deletes only if nothing of the guild changed since the export (its writer checks the
//!    version atomically with the delete), and refuses while it still *processes* the guild;
//!    either way the pull is retried on a later pass, which takes what was written meanwhile.
//!    Every step is idempotent, so a crash anywhere is recovered by running the pass again:
//!    import of rows already imported changes nothing, and the peer still holds what was not
//!    deleted. The pass repeats every poll round, so copies written by covering pods flow back
//!    as well. Interactions for a guild some peer still holds pull that guild first (on demand).
//! 5. **Replica fallback.** At convergence a pod records (`reshard.replicas_pending`) the
//!    ordinals of the previous topology that are no longer members and are unreachable: they
//!    were removed before draining, or their volume is gone. For each it restores that ordinal's
//!    Litestream replica (`litestream restore -o <tmp>` with `POD_ORDINAL=<k>`) into a temporary
//!    file, enumerates its guilds, imports the ones it owns, and clears the entry. Loss is
//!    bounded by Litestream's sync interval.
//! 6. **Draining.** On a scale-down the StatefulSet controller sends SIGTERM to the removed
//!    ordinals (`>= N`). Such a pod reads the StatefulSet once more (the watch may lag the
//!    signal), sees it was removed, and keeps running: processing its previous guilds until
//!    convergence, serving exports, reporting `draining`. It stops once it holds nothing and
//!    every member has converged and reported it empty (`departed_empty`), or 10 s before its
//!    grace period ends. Members track removed ordinals they saw holding guilds
//!    (`departing`); one that disappears while still holding guilds (killed -9, or out of
//!    time) is added to the pending replicas of 5, and its guilds come back from its replica.
//!
//! # Invariants
//! - No gap: at every instant each guild has a processing pod; after a kill -9 the peers'
//!   covers start before the moment of death (see 2). Every pod logs each change of what it
//!   processes as a `ProcessingWindow` (field `window`), and the resharding tests check the
//!   logged windows of every pod process for gaps.
//! - No loss by handoff: a pod deletes a guild only after the new owner committed the import,
//!   only if no row of the guild changed since the export, and only while it no longer
//!   processes the guild.
//! - No double count: all writes are keyed by snowflakes, so imports and overlap merge.
//! - Restartable: the only state that must survive a crash is `topology` and
//!   `topology.previous` (and the pending replica list); everything else is recomputed from the
//!   peers' listings.

pub mod coordinator;
pub mod cover_copy;
pub mod handoff;
pub mod plan;
pub mod replica;
pub mod statefulset;
pub mod status;
pub mod topology;
pub mod watchdog;

/// Why a resharding step failed. Every step is retried on the next round.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pod's own database failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
    /// A peer could not be reached or answered something unexpected.
    #[error("gateway-{ordinal}: {why}")]
    Peer {
        /// The peer.
        ordinal: u32,
        /// What went wrong.
        why: String,
    },
    /// A departed ordinal's replica is not where the configuration says: its guilds cannot be
    /// recovered until the operator fixes the configuration (never counted as done).
    #[error("replica for gateway-{ordinal} not found at {location}")]
    ReplicaMissing {
        /// The departed ordinal.
        ordinal: u32,
        /// Where the configuration points.
        location: String,
    },
    /// Restoring a departed ordinal's replica failed.
    #[error("restoring the replica of gateway-{ordinal}: {why}")]
    Replica {
        /// The departed ordinal.
        ordinal: u32,
        /// What went wrong.
        why: String,
    },
}

impl From<crate::pod_client::PodError> for Error {
    fn from(err: crate::pod_client::PodError) -> Self {
        Error::Peer {
            ordinal: err.ordinal().0,
            why: err.reason(),
        }
    }
}

/// How long a pod waits for a peer: one slower than this counts as down.
pub const PEER_TIMEOUTS: crate::pod_client::Timeouts = crate::pod_client::Timeouts {
    connect: std::time::Duration::from_secs(1),
    read: std::time::Duration::from_secs(2),
};
