//! Resharding: what changes when the number of gateway pods changes, and moving guild data to
//! its new owner (DESIGN §7). Level 2: uses `ownership`, `store` and `wire`; the gateway (L3)
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
//!    costs Discord identifies only for the new ordinals' shards.
//! 1. **Persisted topology history.** A pod stores the topology it runs under (`meta`
//!    `topology`) and every topology it ran under since the last convergence
//!    (`topology.history`, oldest first; written before the new current one), and processes
//!    its guilds under **all** of them. A second change before convergence (3→4, then →5) is
//!    normal: the history then holds 3 and 4. The history is cleared only when the pod sees
//!    the transition converged, so a pod killed -9 mid-transition restarts still processing
//!    every set. `replicas: 0` stops the bot: the pods keep their topology and data.
//! 2. **Cover while down** (our addition to DESIGN §7). A StatefulSet restarts a pod in place: for
//!    the seconds between the old process closing its gateway and the new one's READY on its
//!    **last** shard, nobody would process that ordinal's guilds, and a fresh IDENTIFY does not
//!    replay what was missed. (A pod is live, and "receiving", only once every shard it runs has
//!    had a session: events routed to a shard before its READY never reach the process.)
//!    So every live pod also processes the guilds of any ordinal that is not live (unreachable,
//!    not ready, or `stopping`) under any topology it knows. A pod given SIGTERM first reports
//!    `stopping`, keeps processing until a peer reports covering it (bounded wait), and only
//!    then closes its gateway. Overlap is harmless (idempotent writes); the copies written by
//!    covering pods are merged back by the handoff below. Only ordinals a pod has seen live,
//!    or `stopping`, since it started are covered: a cluster starting up does not make every
//!    pod process everything, and a pod stopped within a poll of its first READY (before any
//!    peer saw it live) is still covered once it says `stopping`. Not covered: a pod killed
//!    -9 within one poll of its very first READY, before any peer saw it at all.
//!
//!    **Covers start in the past.** A pod killed -9 is noticed only at its peers' next poll
//!    (a poll interval plus a request timeout). Every pod runs every Discord shard, so its
//!    peers received that pod's events all along and dropped them; each pod holds what it
//!    dropped for a while (`gateway::replay`), and a cover starts at the moment the peer was
//!    last seen live (the send time of the poll it answered) less
//!    [`coordinator::COVER_MARGIN`]: the held events of the covered guilds from then on are
//!    processed when the cover starts. So the kill -9 window is closed as long as detection
//!    (at most two polls, ~6.5 s with their timeouts and the margin) takes less than the hold
//!    (15 s, at most 30 000 events); a cover that starts later than that is logged and
//!    counted (`gateway_covers_late`).
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
pub mod handoff;
pub mod peers;
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
