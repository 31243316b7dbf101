//! One pod's resharding coordinator against stand-in peers that speak the internal API over
//! HTTP: what it does is decided by what the peers answer, so the peers' timing can be set
//! exactly (a slow export, a peer that goes away), which real pods cannot do on cue.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use guildshard::config::{ReplicaPrefix, Secret, UrlTemplate};
use guildshard::internal_paths as paths;
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};
use guildshard::pod_client::PodClient;
use guildshard::reshard::coordinator::{Coordinator, META_REPLICAS_PENDING};
use guildshard::reshard::replica::ReplicaConfig;
use guildshard::reshard::topology::{OwnershipView, Processing};
use guildshard::shutdown::Shutdown;
use guildshard::store::{Store, Write};
use guildshard::wire::{HandoffProgress, HeldGuilds, PodState, StatusReport};

use crate::support::eventually::eventually;
use crate::support::litestream::fake_litestream;

/// How long the stand-in takes to answer one export: the handoff of [`GUILDS_TO_PULL`] guilds
/// lasts far longer than the few seconds a cover may take to start.
const EXPORT_TAKES: Duration = Duration::from_millis(500);
const GUILDS_TO_PULL: usize = 20;

/// How a stand-in peer answers its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Ready and active.
    Live,
    /// Starting: answers, not ready yet.
    Starting,
    /// Shutting down.
    Stopping,
    /// Gone: status fails.
    Down,
}

/// The peers: how each ordinal answers, and what peer 1 holds for ordinal 0.
struct Peerage {
    topology: Topology,
    modes: Mutex<BTreeMap<u32, Mode>>,
    held_for_0: Vec<GuildId>,
    /// Peer 1's copies: one message per guild of `held_for_0`.
    copies: Store,
    /// Guilds peer 1 deleted (pulled by ordinal 0): no longer held.
    deleted: Mutex<BTreeSet<GuildId>>,
    /// A guild whose export always fails (500), and how often it was asked for.
    failing: Option<GuildId>,
    failed_exports: AtomicU64,
}

impl Peerage {
    fn mode(&self, ordinal: u32) -> Mode {
        self.modes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ordinal)
            .copied()
            .unwrap_or(Mode::Down)
    }

    fn set(&self, ordinal: u32, mode: Mode) {
        self.modes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ordinal, mode);
    }

    /// What peer 1 still holds for ordinal 0.
    fn still_held(&self) -> Vec<GuildId> {
        let deleted = self
            .deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.held_for_0
            .iter()
            .filter(|g| !deleted.contains(g))
            .copied()
            .collect()
    }

    fn report(&self, ordinal: u32, mode: Mode) -> StatusReport {
        let holds = if ordinal == 1 {
            self.still_held().len()
        } else {
            0
        } as u64;
        StatusReport {
            ordinal: Ordinal(ordinal),
            topology: self.topology,
            previous_topologies: Vec::new(),
            topology_source: Default::default(),
            state: if mode == Mode::Stopping {
                PodState::Stopping
            } else {
                PodState::Active
            },
            ready: mode == Mode::Live,
            guilds_owned: 0,
            guilds_held: holds,
            handoff_pending: holds,
            events_seen: 0,
            events_owned: 0,
            events_handled: 0,
            db_size_bytes: 0,
            identifies: 1,
            last_error: None,
            covering: vec![],
            handoff: HandoffProgress::default(),
            instance: u64::from(ordinal) + 1,
            receiving_since_ms: (mode == Mode::Live).then_some(1),
            departing: Vec::new(),
            departed_empty: Vec::new(),
            shards: Vec::new(),
            sessions: Vec::new(),
            gaps: Vec::new(),
            unacknowledged: 0,
        }
    }
}

type Shared = Arc<Peerage>;

async fn status(State(p): State<Shared>, Path(o): Path<u32>) -> Response {
    match p.mode(o) {
        Mode::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        mode => Json(p.report(o, mode)).into_response(),
    }
}

async fn held(State(p): State<Shared>, Path(o): Path<u32>) -> Response {
    let guild_ids = if o == 1 { p.still_held() } else { vec![] };
    Json(HeldGuilds {
        ordinal: Ordinal(o),
        guild_ids,
    })
    .into_response()
}

async fn export(State(p): State<Shared>, Path((_, guild)): Path<(u32, u64)>) -> Response {
    tokio::time::sleep(EXPORT_TAKES).await;
    if p.failing == Some(GuildId(guild)) {
        p.failed_exports.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::INTERNAL_SERVER_ERROR, "export failed").into_response();
    }
    match p.copies.export_guild(GuildId(guild)).await {
        Ok(export) => Json(export).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn delete(State(p): State<Shared>, Path((_, guild)): Path<(u32, u64)>) -> Response {
    p.deleted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(GuildId(guild));
    Json(serde_json::json!({ "deleted": {} })).into_response()
}

/// Ordinal 0's coordinator under md5/3, running against stand-in peers 1 and 2.
struct Harness {
    peers: Arc<Peerage>,
    view: Arc<OwnershipView>,
    coordinator: Arc<Coordinator>,
    store: Store,
    stop: Shutdown,
    running: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Peer 1 holds `guilds_to_pull` guilds that ordinal 0 owns; `modes` says how each peer
    /// answers at first.
    async fn start(guilds_to_pull: usize, modes: [(u32, Mode); 2]) -> Harness {
        Self::start_failing(guilds_to_pull, modes, None).await
    }

    /// As [`Harness::start`]; peer 1's export of the `failing`-th guild always fails.
    async fn start_failing(
        guilds_to_pull: usize,
        modes: [(u32, Mode); 2],
        failing: Option<usize>,
    ) -> Harness {
        Self::start_with_replica(guilds_to_pull, modes, failing, None).await
    }

    /// As [`Harness::start_failing`], with a replica fallback: the pod starts owing a restore
    /// of each departed ordinal in `replica` (as a pod restarted after a convergence does).
    async fn start_with_replica(
        guilds_to_pull: usize,
        modes: [(u32, Mode); 2],
        failing: Option<usize>,
        replica: Option<(ReplicaConfig, Vec<u32>)>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let three = Topology::new(Strategy::Md5, 3).expect("3");
        let held_for_0: Vec<GuildId> = (1..)
            .map(GuildId)
            .filter(|g| owner(*g, three) == Ordinal(0))
            .take(guilds_to_pull)
            .collect();
        let copies = Store::open(dir.path().join("peer.db"))
            .await
            .expect("store");
        for (i, guild) in held_for_0.iter().enumerate() {
            copies
                .apply(Write::MessageCreated {
                    guild_id: *guild,
                    channel_id: 1,
                    message_id: (1_000 + i as u64) << 22,
                    author_id: 2,
                    author_is_bot: false,
                    content: "hello".into(),
                    created_at_ms: 1_420_070_400_000 + 1_000 + i as u64,
                    outbox: vec![],
                })
                .await
                .expect("a row of the peer's copy");
        }
        let peers = Arc::new(Peerage {
            topology: three,
            modes: Mutex::new(modes.into()),
            failing: failing.map(|i| held_for_0[i]),
            held_for_0,
            copies,
            deleted: Mutex::new(BTreeSet::new()),
            failed_exports: AtomicU64::new(0),
        });
        // The peers' routes, as a pod registers them, under each ordinal's prefix.
        let peer = |route: &str| format!("/peer/{{o}}{route}");
        let app = Router::new()
            .route(&peer(paths::STATUS), get(status))
            .route(&peer(paths::GUILDS), get(held))
            .route(&peer(paths::GUILD_EXPORT), get(export))
            .route(&peer(paths::GUILD), axum::routing::delete(delete))
            .with_state(peers.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let view = Arc::new(OwnershipView::new(
            Ordinal(0),
            Processing {
                current: three,
                history: Vec::new(),
            },
        ));
        let store = Store::open(dir.path().join("pod.db")).await.expect("store");
        let replica = match replica {
            Some((config, pending)) => {
                store
                    .apply(Write::SetMeta {
                        key: META_REPLICAS_PENDING.into(),
                        value: serde_json::to_string(&pending).expect("json"),
                    })
                    .await
                    .expect("the pending restores");
                Some(config)
            }
            None => None,
        };
        let template = UrlTemplate::parse(&format!("http://{addr}/peer/{{ordinal}}")).expect("url");
        let coordinator = Arc::new(Coordinator::new(
            view.clone(),
            store.clone(),
            PodClient::new(
                template,
                Secret::new("token"),
                guildshard::reshard::PEER_TIMEOUTS,
            )
            .expect("client"),
            replica,
        ));
        let stop = Shutdown::new();
        let running = tokio::spawn(coordinator.clone().run(stop.cancelled()));
        Harness {
            peers,
            view,
            coordinator,
            store,
            stop,
            running,
            server,
            _dir: dir,
        }
    }

    /// Waits (at most `limit`) until ordinal 0 covers `ordinal`.
    async fn covered_within(&self, ordinal: u32, limit: Duration) {
        let since = tokio::time::Instant::now();
        while !self.view.covering().contains(&Ordinal(ordinal)) {
            assert!(
                since.elapsed() < limit,
                "peer {ordinal} not covered {limit:?} after it went down (handoff: {:?})",
                self.coordinator.progress()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.running)
            .await
            .expect("the coordinator stops, even mid-handoff")
            .expect("no panic");
        self.server.abort();
        self.store.close().await.expect("close");
        self.peers.copies.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_down_during_a_long_handoff_is_covered_at_once() {
    let h = Harness::start(GUILDS_TO_PULL, [(1, Mode::Live), (2, Mode::Live)]).await;
    // The handoff is under way (so both peers were seen live) ...
    eventually("the handoff to start", || async {
        (h.coordinator.progress().pulled > 0).then_some(())
    })
    .await;
    assert!(h.view.covering().is_empty(), "both peers are live");
    // ... when peer 2 goes away.
    h.peers.set(2, Mode::Down);
    h.covered_within(2, Duration::from_secs(5)).await;
    let progress = h.coordinator.progress();
    assert!(
        progress.pending_pull > 0,
        "the cover must not have waited for the handoff to finish: {progress:?}"
    );
    // Back: its own guilds are its own business again.
    h.peers.set(2, Mode::Live);
    eventually("the cover to end when peer 2 is back", || async {
        h.view.covering().is_empty().then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stopped_before_this_pod_saw_it_live_is_covered() {
    // Peer 2 went ready and got SIGTERM within one poll: the first this pod hears of it is
    // "stopping". A pod starting up (peer 1, never ready yet) is not covered: at cluster
    // start nobody processed its guilds before, so there is nothing to keep going.
    let h = Harness::start(0, [(1, Mode::Starting), (2, Mode::Stopping)]).await;
    h.covered_within(2, Duration::from_secs(5)).await;
    assert!(
        !h.view.covering().contains(&Ordinal(1)),
        "a peer never seen live or stopping is not covered"
    );
    // It exits; the cover goes on while it is away.
    h.peers.set(2, Mode::Down);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.view.covering().contains(&Ordinal(2)));
    h.stop().await;
}

/// One peer always fails the export of one guild (a corrupt row, a bug): every other guild it
/// holds is still pulled (imported here and deleted there), the failing one is retried round
/// after round, and the failure is reported instead of hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guild_whose_export_always_fails_does_not_hold_up_the_others() {
    const GUILDS: usize = 6;
    let h = Harness::start_failing(GUILDS, [(1, Mode::Live), (2, Mode::Live)], Some(2)).await;
    let bad = h.peers.held_for_0[2];
    eventually("every other guild to be pulled", || async {
        (h.peers.still_held() == [bad]).then_some(())
    })
    .await;
    let mut others: Vec<GuildId> = h
        .peers
        .held_for_0
        .iter()
        .filter(|g| **g != bad)
        .copied()
        .collect();
    others.sort();
    assert_eq!(
        h.store.guild_ids().await.expect("guilds"),
        others,
        "each other guild was imported here; the failing one was not"
    );
    for g in &others {
        assert_eq!(h.store.message_ids(*g).await.expect("rows").len(), 1);
    }
    // Retried on later rounds, and reported while it fails.
    let tried = h.peers.failed_exports.load(Ordering::Relaxed);
    eventually("the failing export to be retried", || async {
        (h.peers.failed_exports.load(Ordering::Relaxed) > tried).then_some(())
    })
    .await;
    let progress = h.coordinator.progress();
    assert_eq!(progress.pulled, (GUILDS - 1) as u64, "{progress:?}");
    assert_eq!(progress.pending_pull, 1, "{progress:?}");
    let error = progress.last_error.unwrap_or_default();
    assert!(
        error.contains("gateway-1") && error.contains("500"),
        "the failure is reported: {error:?}"
    );
    h.stop().await;
}

/// A guild whose export always fails must not stop the replica fallback: the guilds of a
/// departed ordinal (gone before it handed them over) are restored from its replica while the
/// failing export is retried, and the export's failure is still the error reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guild_whose_export_always_fails_does_not_hold_up_a_replica_restore() {
    const GUILDS: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let three = Topology::new(Strategy::Md5, 3).expect("3");
    // Ordinal 3 (of md5/4) is gone; its replica holds a guild ordinal 0 owns now, far above
    // the ids peer 1 holds.
    let departed_guild = (1_000_000..)
        .map(GuildId)
        .find(|g| owner(*g, three) == Ordinal(0))
        .expect("a guild of ordinal 0");
    let source = dir.path().join("departed/bot.db");
    {
        let departed = Store::open(&source).await.expect("open");
        departed
            .apply(Write::MessageCreated {
                guild_id: departed_guild,
                channel_id: 1,
                message_id: 5_000 << 22,
                author_id: 2,
                author_is_bot: false,
                content: "kept only in the replica".into(),
                created_at_ms: 1_420_070_400_000 + 5_000,
                outbox: vec![],
            })
            .await
            .expect("write");
        departed.close().await.expect("close");
    }
    let replica = ReplicaConfig {
        binary: fake_litestream(dir.path(), "litestream", &source, "cp \"$source\" \"$out\""),
        config: dir.path().join("litestream.yml"),
        database_path: dir.path().join("pod/bot.db"),
        scratch: dir.path().join("restore"),
        stall_limit: Duration::from_secs(10),
        prefix: ReplicaPrefix {
            cluster: "test".into(),
            namespace: "ns".into(),
        },
    };
    let h = Harness::start_with_replica(
        GUILDS,
        [(1, Mode::Live), (2, Mode::Live)],
        Some(0),
        Some((replica, vec![3])),
    )
    .await;
    let bad = h.peers.held_for_0[0];

    eventually("the departed ordinal's replica to be restored", || async {
        let progress = h.coordinator.progress();
        (progress.restored == 1 && progress.replicas_pending.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        h.store
            .message_ids(departed_guild)
            .await
            .expect("rows")
            .len(),
        1,
        "the replica's guild was imported"
    );
    assert!(
        h.peers.still_held().contains(&bad),
        "the failing guild is still where it was"
    );
    // The pull failure is what the pod reports, restore or not.
    let tried = h.peers.failed_exports.load(Ordering::Relaxed);
    eventually("the failing export to be retried", || async {
        (h.peers.failed_exports.load(Ordering::Relaxed) > tried).then_some(())
    })
    .await;
    let error = h.coordinator.progress().last_error.unwrap_or_default();
    assert!(
        error.contains("gateway-1") && error.contains("500"),
        "the failure is reported: {error:?}"
    );
    h.stop().await;
}
