//! One pod's resharding coordinator against stand-in peers that speak the internal API over
//! HTTP: what it does is decided by what the peers answer, so the peers' timing can be set
//! exactly (a slow export, a peer that goes away), which real pods cannot do on cue.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use guildshard::config::{Secret, UrlTemplate};
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};
use guildshard::reshard::coordinator::Coordinator;
use guildshard::reshard::peers::Peers;
use guildshard::reshard::topology::{OwnershipView, Processing};
use guildshard::shutdown::Shutdown;
use guildshard::store::Store;
use guildshard::wire::{HandoffProgress, HeldGuilds, StatusReport};

use crate::support::eventually::eventually;

/// How long the stand-in takes to answer one export: the handoff of [`GUILDS_TO_PULL`] guilds
/// lasts far longer than the few seconds a cover may take to start.
const EXPORT_TAKES: Duration = Duration::from_millis(500);
const GUILDS_TO_PULL: usize = 20;

/// The peers: which ordinals answer, and what peer 1 holds for ordinal 0.
struct Peerage {
    topology: Topology,
    up: Mutex<BTreeSet<u32>>,
    held_for_0: Vec<GuildId>,
    /// An empty database: what an export of a guild nobody wrote to looks like.
    empty: Store,
}

impl Peerage {
    fn is_up(&self, ordinal: u32) -> bool {
        self.up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&ordinal)
    }

    fn report(&self, ordinal: u32) -> StatusReport {
        let holds = if ordinal == 1 {
            self.held_for_0.len()
        } else {
            0
        } as u64;
        StatusReport {
            ordinal: Ordinal(ordinal),
            topology: self.topology,
            previous_topology: None,
            state: "active".into(),
            ready: true,
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
            receiving_since_ms: Some(1),
        }
    }
}

type Shared = Arc<Peerage>;

async fn status(State(p): State<Shared>, Path(o): Path<u32>) -> Response {
    if p.is_up(o) {
        Json(p.report(o)).into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

async fn held(State(p): State<Shared>, Path(o): Path<u32>) -> Response {
    let guild_ids = if o == 1 { p.held_for_0.clone() } else { vec![] };
    Json(HeldGuilds {
        ordinal: Ordinal(o),
        guild_ids,
    })
    .into_response()
}

async fn export(State(p): State<Shared>, Path((_, guild)): Path<(u32, u64)>) -> Response {
    tokio::time::sleep(EXPORT_TAKES).await;
    match p.empty.export_guild(GuildId(guild)).await {
        Ok(export) => Json(export).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn delete() -> Response {
    Json(serde_json::json!({ "deleted": {} })).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_down_during_a_long_handoff_is_covered_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let three = Topology::new(Strategy::Md5, 3).expect("3");
    let held_for_0: Vec<GuildId> = (1..)
        .map(GuildId)
        .filter(|g| owner(*g, three) == Ordinal(0))
        .take(GUILDS_TO_PULL)
        .collect();
    let peers = Arc::new(Peerage {
        topology: three,
        up: Mutex::new([1, 2].into()),
        held_for_0,
        empty: Store::open(dir.path().join("peer.db"))
            .await
            .expect("store"),
    });
    let app = Router::new()
        .route("/peer/{o}/internal/v1/status", get(status))
        .route("/peer/{o}/internal/v1/guilds", get(held))
        .route("/peer/{o}/internal/v1/guilds/{id}/export", get(export))
        .route(
            "/peer/{o}/internal/v1/guilds/{id}",
            axum::routing::delete(delete),
        )
        .with_state(peers.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Ordinal 0 under md5/3, with nothing of its own yet: peer 1 holds guilds it owns.
    let view = Arc::new(OwnershipView::new(
        Ordinal(0),
        Processing {
            current: three,
            previous: None,
        },
    ));
    let store = Store::open(dir.path().join("pod.db")).await.expect("store");
    let template = UrlTemplate::parse(&format!("http://{addr}/peer/{{ordinal}}")).expect("url");
    let coordinator = Arc::new(Coordinator::new(
        view.clone(),
        store.clone(),
        Peers::new(template, Secret::new("token")),
        None,
    ));
    let stop = Shutdown::new();
    let running = tokio::spawn(coordinator.clone().run(stop.cancelled()));

    // The handoff is under way (so both peers were seen live) ...
    eventually("the handoff to start", || async {
        (coordinator.progress().pulled > 0).then_some(())
    })
    .await;
    assert!(view.covering().is_empty(), "both peers are live");
    // ... when peer 2 goes away.
    peers
        .up
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&2);
    let noticed = tokio::time::Instant::now();
    while !view.covering().contains(&Ordinal(2)) {
        assert!(
            noticed.elapsed() < Duration::from_secs(5),
            "peer 2 not covered 5 s after it went down (handoff: {:?})",
            coordinator.progress()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let progress = coordinator.progress();
    assert!(
        progress.pending_pull > 0,
        "the cover must not have waited for the handoff to finish: {progress:?}"
    );

    // It is still the peer's own business once it is back.
    peers
        .up
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(2);
    eventually("the cover to end when peer 2 is back", || async {
        view.covering().is_empty().then_some(())
    })
    .await;

    stop.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the coordinator stops, even mid-handoff")
        .expect("no panic");
    server.abort();
    store.close().await.expect("close");
}
