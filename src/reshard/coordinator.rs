//! The per-pod resharding coordinator: polls the peers, keeps the pod's [`OwnershipView`]
//! current (cover for down peers, end of a transition), and pulls the guilds this pod owns from
//! wherever they are held. The protocol and its invariants are in [`crate::reshard`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::ownership::{owner, GuildId, Ordinal, Topology};
use crate::pod_client::PodClient;
use crate::store::{Store, Write};
use crate::wire::{HandoffProgress, StatusReport};

use super::cover_copy::CoverCopies;
use super::handoff::{self, Pulled};
use super::replica::{self, ReplicaConfig, Restored};
use super::topology::{now_ms, OwnershipView, Processing};
use super::Error;

/// The meta key holding the topology this pod last ran under.
pub const META_TOPOLOGY: &str = "topology";
/// The meta key holding the topologies before that, oldest first, until the transition
/// converged (a JSON list).
pub const META_HISTORY: &str = "topology.history";
/// Where a single previous topology was kept before the history (read once, then cleared).
const META_PREVIOUS_V1: &str = "topology.previous";
/// The meta key holding departed ordinals whose replica still has to be restored (JSON list).
pub const META_REPLICAS_PENDING: &str = "reshard.replicas_pending";
/// How often the peers are polled.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Ordinals probed beyond those that own (or owned, since this pod started) guilds, to find
/// draining or standby pods after the previous topology is forgotten.
pub const PROBE_BEYOND: u32 = 8;
/// How long a replica restore that failed waits before it is tried again (a missing replica
/// needs the operator; a restore is a whole download).
pub const RESTORE_RETRY: Duration = Duration::from_secs(15);
/// A down peer's guilds are covered from this long before it was last seen live: what it
/// received just before then may not have been committed when it died, and a covering pod
/// replays what it kept of that time.
pub const COVER_MARGIN: Duration = Duration::from_secs(2);

/// Reads the stored topologies, records `current`, and returns what the pod processes: the
/// current topology and, until the transition converges, every one it ran under before. A pod
/// restarted mid-transition (even by kill -9) gets the same history back.
///
/// # Errors
/// [`Error::Store`] when the meta table cannot be read or written.
pub async fn start_topology(store: &Store, current: Topology) -> Result<Processing, Error> {
    let stored = stored_processing(store).await?;
    let processing = match stored {
        Some(p) => p.retargeted(current),
        None => Processing {
            current,
            history: Vec::new(),
        },
    };
    record_processing(store, &processing).await?;
    Ok(processing)
}

/// The topologies this pod last recorded, if any.
///
/// # Errors
/// [`Error::Store`] when the meta table cannot be read.
pub async fn stored_processing(store: &Store) -> Result<Option<Processing>, Error> {
    let one = |v: Option<String>| v.and_then(|v| serde_json::from_str::<Topology>(&v).ok());
    let Some(current) = one(store.meta(META_TOPOLOGY).await?) else {
        return Ok(None);
    };
    let mut history: Vec<Topology> = store
        .meta(META_HISTORY)
        .await?
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    if let Some(previous) = one(store.meta(META_PREVIOUS_V1).await?) {
        if !history.contains(&previous) {
            history.insert(0, previous);
        }
    }
    history.retain(|t| *t != current);
    Ok(Some(Processing { current, history }))
}

/// Persists `processing`: history first, so a crash between the two writes never loses a
/// topology some guilds still belong to.
async fn record_processing(store: &Store, processing: &Processing) -> Result<(), Error> {
    store
        .apply(Write::SetMeta {
            key: META_HISTORY.into(),
            value: serde_json::to_string(&processing.history).unwrap_or_default(),
        })
        .await?;
    store
        .apply(Write::SetMeta {
            key: META_TOPOLOGY.into(),
            value: serde_json::to_string(&processing.current).unwrap_or_default(),
        })
        .await?;
    store
        .apply(Write::SetMeta {
            key: META_PREVIOUS_V1.into(),
            value: String::new(),
        })
        .await?;
    Ok(())
}

/// What one poll heard from each probed peer.
pub type Reports = Vec<(Ordinal, Result<StatusReport, Error>)>;

/// One pod's coordinator.
pub struct Coordinator {
    view: Arc<OwnershipView>,
    store: Store,
    peers: PodClient,
    replica: Option<ReplicaConfig>,
    /// Restored copies of the peers this pod covers (their settings and message cache).
    cover_copies: Arc<CoverCopies>,
    progress: Mutex<HandoffProgress>,
    /// For each guild this pod owns that peers still hold: which peers (on-demand pulls).
    holders: Mutex<BTreeMap<GuildId, BTreeSet<Ordinal>>>,
    /// Peers seen live (or stopping) since this pod started: when last (Unix ms), and their
    /// process instance. Only those are covered when down, so a cluster starting up (or a new
    /// ordinal not yet started) does not make every pod process everything; a cover starts
    /// from that time; and a changed instance means the peer restarted unseen.
    last_live: Mutex<BTreeMap<Ordinal, (u64, u64)>>,
    /// The most ordinals in play since start: draining pods of a forgotten previous topology
    /// are still probed.
    widest: std::sync::atomic::AtomicU32,
    /// One pull at a time, so a round and an on-demand pull do not race on one guild.
    pulling: tokio::sync::Mutex<()>,
    /// Departed ordinals whose last restore failed: when, and why (retried after
    /// [`RESTORE_RETRY`]).
    restore_failed: Mutex<BTreeMap<u32, (std::time::Instant, String)>>,
    /// Ordinals outside the topology seen reachable (removed pods handing over), and whether
    /// they held guilds when last seen: if one becomes unreachable while it did, its replica
    /// has the rest.
    departing: Mutex<BTreeMap<u32, bool>>,
    /// Handoff rounds started, to rotate where each round starts.
    rounds: std::sync::atomic::AtomicU64,
    /// Serialises changes of the topologies (a live change of the pod count, convergence), so
    /// a convergence judged under one topology never clears the history of a newer one.
    retargeting: tokio::sync::Mutex<()>,
    /// The latest poll's reports (the gateway tier's view of its peers is built from them).
    reports: watch::Sender<Arc<Reports>>,
}

impl Coordinator {
    /// A coordinator for the pod whose view is `view`.
    pub fn new(
        view: Arc<OwnershipView>,
        store: Store,
        peers: PodClient,
        replica: Option<ReplicaConfig>,
    ) -> Self {
        Coordinator {
            view,
            store,
            peers,
            cover_copies: CoverCopies::new(replica.clone()),
            replica,
            progress: Mutex::new(HandoffProgress::default()),
            holders: Mutex::new(BTreeMap::new()),
            last_live: Mutex::new(BTreeMap::new()),
            widest: std::sync::atomic::AtomicU32::new(0),
            pulling: tokio::sync::Mutex::new(()),
            retargeting: tokio::sync::Mutex::new(()),
            rounds: std::sync::atomic::AtomicU64::new(0),
            restore_failed: Mutex::new(BTreeMap::new()),
            departing: Mutex::new(BTreeMap::new()),
            reports: watch::channel(Arc::new(Vec::new())).0,
        }
    }

    /// The restored copies of the peers this pod covers.
    pub fn cover_copies(&self) -> &Arc<CoverCopies> {
        &self.cover_copies
    }

    /// Every poll's reports, as they come (the first one after the first poll).
    pub fn subscribe_reports(&self) -> watch::Receiver<Arc<Reports>> {
        self.reports.subscribe()
    }

    /// Moves this pod to `pods` pods (the StatefulSet's replicas changed), without a restart:
    /// the current topology joins the history, recorded before it takes effect, and the pod
    /// processes the union until every pod runs the new one. `0` (the bot is stopped) changes
    /// nothing: the pods stop with their data, and come back under their last topology.
    /// Returns whether the topology changed.
    ///
    /// # Errors
    /// [`Error::Store`] when the new topologies cannot be recorded (nothing changed then).
    pub async fn retarget(&self, pods: u32) -> Result<bool, Error> {
        let _one = self.retargeting.lock().await;
        let processing = self.view.processing();
        let Some(next) = Topology::new(processing.current.strategy, pods) else {
            info!(
                current = %processing.current,
                "replicas is 0: the bot is being stopped; keeping the current topology"
            );
            return Ok(false);
        };
        if next == processing.current {
            return Ok(false);
        }
        let next_processing = processing.retargeted(next);
        record_processing(&self.store, &next_processing).await?;
        self.view.set_processing(next_processing.clone());
        info!(
            from = %processing.current,
            to = %next,
            history = ?next_processing.history.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "pod count changed: processing every topology in the history until all pods run the new one"
        );
        Ok(true)
    }

    fn me(&self) -> Ordinal {
        self.view.ordinal()
    }

    fn progress_mut(&self) -> std::sync::MutexGuard<'_, HandoffProgress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The handoff progress, for the status report.
    pub fn progress(&self) -> HandoffProgress {
        self.progress_mut().clone()
    }

    /// Polls and acts every [`POLL_EVERY`] until `stop` completes.
    ///
    /// Two loops: the watch (poll the peers, cover the down ones, end a transition) and the
    /// handoff (pull guilds, restore replicas). A handoff round can take minutes (tens of
    /// thousands of guilds to pull); covers must not wait for it, or a peer killed meanwhile
    /// would go uncovered for longer than its held events last. The handoff works from the
    /// watch's latest reports.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let handoff = tokio::spawn(
            self.clone()
                .handoff_loop(self.reports.subscribe())
                .in_current_span(),
        );
        tokio::pin!(stop);
        loop {
            let reports = self.watch_round().await;
            self.reports.send_replace(Arc::new(reports));
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
        // Every step of a pull is idempotent (see `handoff`), so one cut short is simply
        // repeated by the next process.
        handoff.abort();
        let _ = handoff.await;
    }

    async fn handoff_loop(self: Arc<Self>, mut reports: watch::Receiver<Arc<Reports>>) {
        while reports.changed().await.is_ok() {
            let latest = reports.borrow_and_update().clone();
            let p = self.view.processing();
            if p.transitioning() {
                continue;
            }
            if let Err(err) = self.handoff_round(p.current, &latest).await {
                self.fail(&err);
            }
        }
    }

    async fn poll(&self) -> Reports {
        let span = self
            .widest
            .fetch_max(
                self.view.ordinals_in_play(),
                std::sync::atomic::Ordering::Relaxed,
            )
            .max(self.view.ordinals_in_play())
            + PROBE_BEYOND;
        let me = self.me();
        join_all(
            (0..span)
                .map(Ordinal)
                .filter(|o| *o != me)
                .map(|o| async move { (o, self.peers.status(o).await.map_err(Error::from)) }),
        )
        .await
    }

    /// One round of the watch: cover the down peers, end a transition once it converged.
    /// Returns the reports it acted on.
    async fn watch_round(&self) -> Reports {
        // A peer that answers "live" was live at some moment after the request went out: the
        // send time is the safe "last seen live" (a cover starting from it never starts late).
        let polled_at = now_ms();
        let reports = self.poll().await;
        // Live: answering and not stopping, as the connectors route (a pod whose shards are
        // still connecting processes what is delivered to it).
        let live = |s: &StatusReport| !s.state.is_stopping();
        let in_play = self.view.ordinals_in_play();
        let covering: BTreeMap<Ordinal, u64> = {
            let mut last_live = self
                .last_live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let margin = COVER_MARGIN.as_millis() as u64;
            for (o, r) in &reports {
                let Ok(s) = r else { continue };
                if s.state.is_stopping() {
                    // A pod that says it is stopping ran until now even if this pod never saw
                    // it live (it can be stopped within a poll of its first READY), and it
                    // keeps processing until a peer covers it: cover it from now on.
                    last_live.entry(*o).or_insert((polled_at, s.instance));
                }
                if !live(s) {
                    continue;
                }
                // A peer that restarted between two polls missed nothing: its dispatches waited,
                // unacknowledged, at the connectors (DESIGN §6).
                last_live.insert(*o, (polled_at, s.instance));
            }
            reports
                .iter()
                .filter(|(o, r)| o.0 < in_play && !r.as_ref().is_ok_and(live))
                .filter_map(|(o, _)| Some((*o, last_live.get(o)?.0.saturating_sub(margin))))
                .collect()
        };
        if self.view.set_covering(covering.clone()) {
            info!(
                covering = ?covering.keys().map(|o| o.0).collect::<Vec<_>>(),
                "covering changed"
            );
        }
        let answering: BTreeSet<Ordinal> = reports
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(o, _)| *o)
            .collect();
        self.cover_copies
            .follow(&covering.keys().copied().collect(), &answering);

        let p = self.view.processing();
        if !p.transitioning() {
            if let Err(err) = self.follow_departing(p.current, &reports).await {
                self.fail(&err);
            }
        }
        if p.transitioning() && converged(p.current, self.me(), &reports) {
            if let Err(err) = self.converge(&p, &reports).await {
                self.fail(&err);
            }
        }
        reports
    }

    /// A removed pod hands its guilds over within its grace period; one that disappears while
    /// still holding guilds (killed -9, or the grace period ran out) left the rest in its
    /// Litestream replica, which is restored like any departed ordinal's.
    async fn follow_departing(&self, current: Topology, reports: &Reports) -> Result<(), Error> {
        let vanished: Vec<u32> = {
            let mut departing = self
                .departing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut vanished = Vec::new();
            for (o, r) in reports {
                if current.is_member(*o) {
                    continue;
                }
                match r {
                    Ok(s) => {
                        departing.insert(o.0, s.guilds_held > 0);
                    }
                    Err(_) => {
                        if departing.remove(&o.0) == Some(true) {
                            vanished.push(o.0);
                        }
                    }
                }
            }
            vanished
        };
        if vanished.is_empty() {
            return Ok(());
        }
        warn!(
            ordinals = ?vanished,
            "removed pods stopped before every guild was pulled: restoring the rest from their replicas"
        );
        let mut pending = self.replicas_pending().await?;
        pending.extend(vanished);
        self.set_replicas_pending(&pending).await
    }

    fn fail(&self, err: &Error) {
        warn!(cause = %err, "resharding step failed; retrying");
        self.progress_mut().last_error = Some(err.to_string());
    }

    async fn converge(&self, judged: &Processing, reports: &Reports) -> Result<(), Error> {
        let _one = self.retargeting.lock().await;
        if self.view.processing() != *judged {
            // The pod count changed while the peers were polled: judge again next round.
            return Ok(());
        }
        let current = judged.current;
        let widest = judged.all().map(|t| t.pods.get()).max().unwrap_or(1);
        // Departed ordinals nobody can pull from: their replica is all that is left.
        let gone: Vec<u32> = (current.pods.get()..widest)
            .filter(|o| reports.iter().any(|(r, s)| r.0 == *o && s.is_err()))
            .collect();
        if !gone.is_empty() {
            let mut pending = self.replicas_pending().await?;
            pending.extend(gone);
            self.set_replicas_pending(&pending).await?;
        }
        record_processing(
            &self.store,
            &Processing {
                current,
                history: Vec::new(),
            },
        )
        .await?;
        self.view.converge();
        info!(
            %current,
            history = ?judged.history.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "transition converged: processing the current topology only"
        );
        Ok(())
    }

    async fn replicas_pending(&self) -> Result<BTreeSet<u32>, Error> {
        Ok(self
            .store
            .meta(META_REPLICAS_PENDING)
            .await?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    async fn set_replicas_pending(&self, pending: &BTreeSet<u32>) -> Result<(), Error> {
        self.store
            .apply(Write::SetMeta {
                key: META_REPLICAS_PENDING.into(),
                value: serde_json::to_string(pending).unwrap_or_default(),
            })
            .await?;
        self.progress_mut().replicas_pending = pending.iter().copied().collect();
        Ok(())
    }

    /// One round of the handoff: pull what peers hold for this pod, then restore departed
    /// ordinals' replicas. The restore runs whatever the pulls did: a departed pod's replica is
    /// the only copy of its guilds, and one guild a live peer keeps failing to export must not
    /// keep those from ever coming back. A pull failure is still the error reported.
    async fn handoff_round(&self, current: Topology, reports: &Reports) -> Result<(), Error> {
        let pulled = self.pull_round(current, reports).await;
        if pulled.is_ok() {
            self.progress_mut().last_error = None;
        }
        let restored = self.restore_departed(current, reports).await;
        match (pulled, restored) {
            (Err(pull), Err(restore)) => {
                // Both are logged; one error is reported, and the pull's is the one a retry
                // next round may clear (a failed restore waits `RESTORE_RETRY`).
                self.fail(&restore);
                Err(pull)
            }
            (Err(err), Ok(())) | (Ok(()), Err(err)) => Err(err),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Pulls every guild this pod owns from the peers that hold it. One guild's failure does
    /// not stop the others; the first failure is returned once all were tried.
    async fn pull_round(&self, current: Topology, reports: &Reports) -> Result<(), Error> {
        let me = self.me();
        // Peers that would refuse a delete (they still process their previous guilds, or cover
        // this pod) are left for a later round instead of exporting to them over and over.
        let sources: Vec<Ordinal> = reports
            .iter()
            .filter_map(|(o, r)| r.as_ref().ok().map(|s| (*o, s)))
            .filter(|(_, s)| {
                s.previous_topologies.is_empty()
                    && !s.state.is_stopping()
                    && !s.covering.contains(&me)
                    && s.handoff_pending > 0
            })
            .map(|(o, _)| o)
            .collect();
        let mut holders: BTreeMap<GuildId, BTreeSet<Ordinal>> = BTreeMap::new();
        for &from in &sources {
            for guild in self.peers.held(from, me).await? {
                if owner(guild, current) == me {
                    holders.entry(guild).or_default().insert(from);
                }
            }
        }
        *self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = holders.clone();
        let mut remaining = holders.values().map(|h| h.len() as u64).sum::<u64>();
        self.progress_mut().pending_pull = remaining;
        // One guild's failure (a peer that vanished mid-round, an export that fails) does not
        // hold up the others: it is retried next round, and each round starts elsewhere in the
        // list so a guild that keeps failing is not always first.
        let mut pulls: Vec<(GuildId, Ordinal)> = holders
            .into_iter()
            .flat_map(|(g, from)| from.into_iter().map(move |o| (g, o)))
            .collect();
        if !pulls.is_empty() {
            let round = self
                .rounds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let start = (round as usize) % pulls.len();
            pulls.rotate_left(start);
        }
        let mut failed = None;
        for (guild, o) in pulls {
            match self.pull_one(o, guild).await {
                Ok(true) => {
                    remaining = remaining.saturating_sub(1);
                    let mut p = self.progress_mut();
                    p.pending_pull = remaining;
                    p.pulled += 1;
                }
                Ok(false) => {}
                Err(err) => {
                    warn!(cause = %err, guild_id = guild.0, "pulling a guild failed; retrying next round");
                    failed.get_or_insert(err);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn pull_one(&self, from: Ordinal, guild: GuildId) -> Result<bool, Error> {
        let _one = self.pulling.lock().await;
        let pulled = handoff::pull(&self.store, &self.peers, from, guild).await?;
        if matches!(pulled, Pulled::Moved { .. } | Pulled::Nothing) {
            let mut holders = self
                .holders
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(h) = holders.get_mut(&guild) {
                h.remove(&from);
                if h.is_empty() {
                    holders.remove(&guild);
                }
            }
        }
        Ok(matches!(pulled, Pulled::Moved { .. }))
    }

    async fn restore_departed(&self, current: Topology, reports: &Reports) -> Result<(), Error> {
        let mut pending = self.replicas_pending().await?;
        // Reported as read from the store, so a restarted pod shows what it still owes before
        // its first restore finishes (and `status` does not call it converged).
        self.progress_mut().replicas_pending = pending.iter().copied().collect();
        if pending.is_empty() {
            return Ok(());
        }
        for departed in pending.clone() {
            let reachable = reports.iter().any(|(o, r)| o.0 == departed && r.is_ok());
            if !reachable {
                let failed = self
                    .restore_failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&departed)
                    .filter(|(at, _)| at.elapsed() < RESTORE_RETRY)
                    .map(|(_, why)| why.clone());
                if let Some(why) = failed {
                    // Still failing: keep saying so (status shows `blocked`) until the retry.
                    self.progress_mut().last_error = Some(why);
                    return Ok(());
                }
                let Some(cfg) = &self.replica else {
                    return Err(Error::Replica {
                        ordinal: departed,
                        why: "it is gone and no Litestream replica is configured \
                              (LITESTREAM_CONFIG)"
                            .into(),
                    });
                };
                let restored = replica::restore_and_import(
                    cfg,
                    &self.store,
                    self.me(),
                    current,
                    Ordinal(departed),
                )
                .await
                .inspect_err(|err| {
                    self.restore_failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(departed, (std::time::Instant::now(), err.to_string()));
                })?;
                let Restored::Imported(n) = restored;
                self.progress_mut().restored += n;
            }
            // A reachable departed pod is drained by the live pull instead.
            pending.remove(&departed);
            self.set_replicas_pending(&pending).await?;
        }
        Ok(())
    }

    /// Before answering an interaction for `guild`: if this pod owns it and peers still hold
    /// copies, pull them first so the answer sees all of the guild's data. Failures are
    /// recorded and the interaction is answered with what is here.
    pub async fn ensure_local(&self, guild: GuildId) {
        if !self.view.owns(guild) {
            return;
        }
        let from: Vec<Ordinal> = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&guild)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        for o in from {
            if let Err(err) = self.pull_one(o, guild).await {
                self.fail(&err);
            }
        }
    }

    /// Removed ordinals this pod last saw holding guilds (`true`), or empty (`false`).
    pub fn departing(&self, holding: bool) -> Vec<Ordinal> {
        self.departing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, h)| **h == holding)
            .map(|(o, _)| Ordinal(*o))
            .collect()
    }

    /// For a removed pod that holds nothing any more: whether it may stop. Every member must
    /// answer, have converged on this pod's topology (a member converging later would count
    /// this pod as departed unseen and restore its replica), and have seen this pod empty in
    /// its latest poll (one that saw it holding guilds last would restore its replica).
    pub async fn released(&self) -> bool {
        let current = self.view.current();
        let me = self.me();
        let reports = self.poll().await;
        (0..current.pods.get()).map(Ordinal).all(|o| {
            reports.iter().any(|(r, s)| {
                *r == o
                    && s.as_ref().is_ok_and(|s| {
                        s.topology == current
                            && s.previous_topologies.is_empty()
                            && s.departed_empty.contains(&me)
                    })
            })
        })
    }

    /// On SIGTERM, before closing the gateway: waits (up to `limit`) until a live peer reports
    /// covering this pod, so its guilds are never without a processing pod. Returns at once
    /// when no peer is live, or when this pod processes nothing (a removed pod after
    /// convergence), since then nothing of it needs covering.
    pub async fn await_cover(&self, limit: Duration) {
        if self.view.processes_nothing() {
            return;
        }
        let me = self.me();
        let wait = async {
            loop {
                let reports = self.poll().await;
                let live: Vec<&StatusReport> = reports
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .filter(|s| s.ready && !s.state.is_stopping())
                    .collect();
                if live.is_empty() || live.iter().any(|s| s.covering.contains(&me)) {
                    return;
                }
                tokio::time::sleep(POLL_EVERY / 2).await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            warn!("no peer reported covering this pod before it stopped");
        }
    }
}

/// Whether every member ordinal is live under `current` and every reachable pod reports it.
fn converged(current: Topology, me: Ordinal, reports: &Reports) -> bool {
    let members_live = (0..current.pods.get()).map(Ordinal).all(|o| {
        o == me
            || reports.iter().any(|(r, s)| {
                *r == o
                    && s.as_ref()
                        .is_ok_and(|s| s.ready && !s.state.is_stopping() && s.topology == current)
            })
    });
    let all_agree = reports
        .iter()
        .all(|(_, s)| s.as_ref().map_or(true, |s| s.topology == current));
    members_live && all_agree
}
