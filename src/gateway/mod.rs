//! A gateway pod (DESIGN §6): the Discord shards the shard map gives it ([`connector`]), whose
//! dispatches it routes to their md5 owner ([`delivery`]); the dispatches routed to it
//! ([`intake`]), handled by the bot's features writing through the store; the outbox sender,
//! the internal API and the public probes.
//!
//! Level 3: uses `store`, `reshard`, `ownership`, `config`, `wire`, `commands`.
//!
//! The pod count comes from [`pod_count`]: the StatefulSet's replicas, watched, or
//! `NUM_GATEWAY_PODS`. A change of it moves the pod to the new topology without a restart.
//!
//! Shutdown order (SIGTERM): a pod removed by a scale-down first hands its guilds over
//! (`drain`, bounded by the grace period); then it says it is stopping, so its peers take its
//! shards over (each released with a resumable close, its session handed to the next connector,
//! which RESUMEs); what is left is closed resumably and its sessions saved. It keeps taking
//! dispatches until a peer covers its guilds, waits for in-flight handlers, stops the outbox
//! sender, flushes and closes the store, then stops the HTTP listeners. Nothing acknowledged is
//! lost: a dispatch is acknowledged only after its writes commit, and whatever was not is
//! replayed by Discord to the next connector.

pub mod acks;
pub mod classify;
pub mod commands;
pub mod connector;
pub mod delivery;
pub mod discord;
pub mod envelope;
pub mod features;
pub mod identify_queue;
pub mod intake;
pub mod internal_api;
pub mod members;
pub mod metrics;
pub mod outbox;
pub mod pod;
pub mod pod_count;
pub mod reads;
pub mod retention;
pub mod session_book;
pub mod shard_map;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::config::GatewayConfig;
use crate::gateway::connector::{Connectors, ShardsConfig};
use crate::gateway::delivery::Router;
use crate::gateway::features::now_ms;
use crate::gateway::identify_queue::{ClusterQueue, IdentifyGate};
use crate::gateway::members::Members;
use crate::gateway::metrics::Metrics;
use crate::gateway::pod::Pod;
use crate::gateway::session_book::{SessionBook, META_SESSIONS};
use crate::listener::Limits;
use crate::pod_client::PodClient;
use crate::reshard::coordinator::Coordinator;
use crate::reshard::replica::ReplicaConfig;
use crate::reshard::topology::OwnershipView;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreOptions, Write};

/// How long in-flight handlers may take to finish once the shards are closed.
const DRAIN_HANDLERS: Duration = Duration::from_secs(10);
/// How often cached message content older than the retention is purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Deleted-message content is kept this long (DESIGN §5).
const CONTENT_RETENTION_MS: u64 = 7 * 86_400_000;
/// The meta key holding the topology this pod last ran under.
pub const META_TOPOLOGY: &str = crate::reshard::coordinator::META_TOPOLOGY;
/// How long a stopping pod waits for a peer to cover its guilds before it stops taking
/// dispatches.
const AWAIT_COVER: Duration = Duration::from_secs(3);
/// How long a stopping pod waits for its peers to take its shards over before it closes the
/// rest itself (their sessions stay resumable and published).
const HANDOVER_WAIT: Duration = Duration::from_secs(10);
/// A removed pod's drain ends this long before Kubernetes' grace period does, leaving time to
/// close the gateway, flush the database and let the Litestream sidecar sync last.
const DRAIN_RESERVE: Duration = Duration::from_secs(10);
/// The grace period assumed when the StatefulSet does not say (Kubernetes' default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// The longest a removed pod drains, whatever the grace period says.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(900);

/// The two listeners a gateway pod serves on, already bound.
pub struct Listeners {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub public: TcpListener,
    /// `/internal/v1/*`.
    pub internal: TcpListener,
}

/// Why the pod could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, migrated or refused to be (corrupt, not a database,
    /// written by a newer binary): an operator's problem, reported in one line with exit 64.
    #[error("cannot open the database {path}")]
    OpenDatabase {
        /// The configured `DATABASE_PATH`.
        path: std::path::PathBuf,
        /// What the store said.
        #[source]
        source: crate::store::Error,
    },
    /// The database failed while the pod ran or closed it.
    #[error("database: {0}")]
    Store(#[from] crate::store::Error),
    /// Discord (or the emulator) refused or was unreachable at start.
    #[error(transparent)]
    Connect(#[from] discord::ConnectError),
    /// The resharding state could not be read or recorded.
    #[error("resharding: {0}")]
    Reshard(#[from] crate::reshard::Error),
    /// The pod count cannot be learned: the operator has to act (exit 64).
    #[error("pod count: {0}")]
    PodCount(#[from] pod_count::Refused),
    /// A listener failed.
    #[error("serving http: {0}")]
    Serve(#[from] std::io::Error),
    /// The HTTP client for Discord's REST API could not be built (TLS initialisation).
    #[error("building the HTTP client: {0}")]
    Transport(reqwest::Error),
    /// The client of the peers' internal API could not be built (TLS initialisation).
    #[error("building the client of the peers' internal API: {0}")]
    PeerClient(reqwest::Error),
}

/// Runs a gateway pod until `shutdown` is triggered, then drains it.
pub async fn run(
    cfg: GatewayConfig,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let pod_name = format!("gateway-{}", cfg.ordinal);
    let span = tracing::info_span!("pod", pod = %pod_name);
    run_pod(cfg, listeners, shutdown, pod_name)
        .instrument(span)
        .await
}

async fn run_pod(
    cfg: GatewayConfig,
    listeners: Listeners,
    shutdown: Shutdown,
    pod_name: String,
) -> Result<(), Error> {
    let store = Store::open_with(
        &cfg.database_path,
        StoreOptions {
            litestream_checkpoints: cfg.litestream,
            ..StoreOptions::default()
        },
    )
    .await
    .map_err(|source| Error::OpenDatabase {
        path: cfg.database_path.clone(),
        source,
    })?;
    let Some(count) = pod_count::resolve(&cfg.pod_count, &store, shutdown.cancelled()).await?
    else {
        info!("stopped before the pod count was known");
        store.close().await?;
        return Ok(());
    };
    let topology = crate::ownership::Topology::new(cfg.strategy, count.pods)
        .expect("pod_count::resolve never returns 0 pods");
    let processing = crate::reshard::coordinator::start_topology(&store, topology).await?;
    if processing.transitioning() {
        info!(
            current = %topology,
            history = ?processing.history.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "the topology changed since this pod last ran"
        );
    }
    if !topology.is_member(cfg.ordinal) {
        info!(ordinal = %cfg.ordinal, %topology, "this ordinal owns no guilds under the current topology");
    }

    let transport = discord::transport().map_err(Error::Transport)?;
    let rest = Arc::new(discord::rest_client(&cfg.discord, transport.clone()));
    discord::ensure_application_id(&rest).await?;
    let plan = discord::plan(&cfg.discord, &rest).await?;
    let ownership = Arc::new(OwnershipView::new(cfg.ordinal, processing));
    let peers = PodClient::new(
        cfg.url_template.clone(),
        cfg.internal_token.clone(),
        crate::reshard::PEER_TIMEOUTS,
    )
    .map_err(Error::PeerClient)?;
    let coordinator = Arc::new(Coordinator::new(
        ownership.clone(),
        store.clone(),
        peers.clone(),
        replica_config(&cfg),
    ));
    let (members, members_rx) = watch::channel(Members::default());
    let pod = Arc::new(Pod {
        name: pod_name.clone(),
        instance: rand::random(),
        ownership,
        coordinator: coordinator.clone(),
        store: store.clone(),
        metrics: Metrics::new(&pod_name),
        rest,
        outbox_wake: Notify::new(),
        inflight: TaskTracker::new(),
        stopping: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        book: SessionBook::default(),
        connectors: std::sync::OnceLock::new(),
        router: Router::new(members_rx.clone()),
        gate: Arc::new(IdentifyGate::new(plan.max_concurrency)),
        members,
        peers: peers.clone(),
        gaps: Mutex::default(),
        guilds: Mutex::new(pod::SeenGuilds::default()),
        held_foreign: Mutex::new(None),
        last_error: Mutex::new(None),
        command_delay: cfg.command_delay,
        topology_source: count.health.clone(),
    });
    if let Some(saved) = store.meta(META_SESSIONS).await? {
        let n = pod.book.learn_saved(&saved);
        info!(
            sessions = n,
            "shard sessions saved when this pod last stopped"
        );
    }
    let connectors = Arc::new(Connectors::new(
        pod.clone(),
        ShardsConfig {
            total: plan.shards,
            token: cfg.discord.token.expose().to_owned(),
            intents: discord::shard_intents(),
            gateway_url: Some(plan.url.clone()),
        },
        ClusterQueue::new(cfg.ordinal, pod.gate.clone(), members_rx.clone(), peers),
        members_rx,
    ));
    let _ = pod.connectors.set(connectors.clone());

    // HTTP surfaces first, so probes answer (not ready) while the shards connect.
    let servers = Shutdown::new();
    let public = serve(
        listeners.public,
        internal_api::public_app(pod.clone()),
        Limits::PUBLIC,
        &servers,
    );
    let internal = serve(
        listeners.internal,
        internal_api::internal_app(pod.clone(), cfg.internal_token.clone()),
        Limits::INTERNAL,
        &servers,
    );

    if cfg.ordinal.0 == 0 {
        register_commands(&pod).await;
    }

    let background = Shutdown::new();
    let outbox = tokio::spawn(outbox::run(pod.clone(), background.cancelled()).in_current_span());
    let purge = tokio::spawn(purge_loop(pod.clone(), background.cancelled()).in_current_span());
    let retention = tokio::spawn(
        retention::run(store.clone(), cfg.retention, background.cancelled()).in_current_span(),
    );
    let resharding = tokio::spawn(
        coordinator
            .clone()
            .run(background.cancelled())
            .instrument(tracing::info_span!("reshard")),
    );
    let membership =
        tokio::spawn(follow_members(pod.clone(), background.cancelled()).in_current_span());
    let shards = Shutdown::new();
    let connecting = tokio::spawn(connectors.clone().run(shards.cancelled()).in_current_span());
    let source = count.source.clone();
    let following = tokio::spawn(
        follow_pod_count(count, coordinator.clone(), background.cancelled()).in_current_span(),
    );

    shutdown.cancelled().await;
    let target = following_target(&pod, source.as_ref()).await;
    if removed_by_scale_down(&pod, target) {
        drain(&pod, grace_of(target)).await;
    }
    info!("shutting down: handing the shards over, draining handlers, flushing the database");
    pod.stopping.store(true, Ordering::Relaxed);
    shards.trigger();
    let _ = connecting.await;
    if !connectors.await_handed_over(HANDOVER_WAIT).await {
        info!(shards = ?connectors.shards(), "closing the shards no peer took, resumably");
        connectors.close_all().await;
    }
    if let Err(err) = store
        .apply(Write::SetMeta {
            key: META_SESSIONS.into(),
            value: pod.book.to_json(),
        })
        .await
    {
        warn!(cause = %err, "could not save the shard sessions");
    }
    // Keep taking dispatches until a peer covers this pod's guilds (DESIGN §7, cover while down).
    coordinator.await_cover(AWAIT_COVER).await;
    pod.ownership.set_receiving(false);
    pod.inflight.close();
    if tokio::time::timeout(DRAIN_HANDLERS, pod.inflight.wait())
        .await
        .is_err()
    {
        warn!("event handlers still running after the drain period");
    }
    background.trigger();
    let _ = outbox.await;
    let _ = purge.await;
    let _ = retention.await;
    let _ = resharding.await;
    let _ = membership.await;
    let _ = following.await;
    coordinator.cover_copies().close().await;
    store.close().await?;
    servers.trigger();
    let _ = public.await;
    let _ = internal.await;
    info!("shutdown complete");
    Ok(())
}

/// Keeps the pod's view of its peers ([`Members`]) current from every status poll, until
/// `stop`.
async fn follow_members(pod: Arc<Pod>, stop: impl std::future::Future<Output = ()>) {
    let mut reports = pod.coordinator.subscribe_reports();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            changed = reports.changed() => if changed.is_err() { return },
        }
        let latest = reports.borrow_and_update().clone();
        // Sessions peers published survive them: a pod that takes a dead peer's shard over
        // resumes the newest one.
        for (_, report) in latest.iter() {
            if let Ok(report) = report {
                report
                    .sessions
                    .iter()
                    .cloned()
                    .for_each(|r| pod.book.learn(r));
            }
        }
        let view = members::from_poll(
            pod.ordinal(),
            !pod.stopping.load(Ordering::Relaxed),
            pod.ownership.current().pods.get(),
            latest.iter(),
        );
        pod.members.send_if_modified(|m| {
            let changed = *m != view;
            if changed {
                info!(live = ?view.live.iter().map(|o| o.0).collect::<Vec<_>>(), "gateway members");
                *m = view;
            }
            changed
        });
    }
}

/// Follows the pod count's source: each new `spec.replicas` moves the pod to the new topology
/// (no restart), until `stop`.
async fn follow_pod_count(
    count: pod_count::PodCount,
    coordinator: Arc<Coordinator>,
    stop: impl std::future::Future<Output = ()>,
) {
    let Some(source) = count.source else {
        stop.await;
        return;
    };
    let mut targets = count.target.subscribe();
    let retarget = async {
        while targets.changed().await.is_ok() {
            let replicas = targets.borrow_and_update().replicas;
            if let Err(err) = coordinator.retarget(replicas).await {
                warn!(cause = %err, replicas, "could not record the new pod count; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                targets.mark_changed();
            }
        }
    };
    tokio::select! {
        () = source.watch(count.target.clone(), &count.health, stop) => {}
        () = retarget => {}
    }
}

/// The StatefulSet's target as the API says it now (asked again at SIGTERM: the watch may not
/// have delivered the scale-down that caused it yet).
async fn following_target(
    pod: &Pod,
    source: Option<&crate::reshard::statefulset::StatefulSetSource>,
) -> Option<crate::reshard::statefulset::Target> {
    let (target, _) = source?.get().await.ok()?;
    if let Err(err) = pod.coordinator.retarget(target.replicas).await {
        warn!(cause = %err, "could not record the pod count read at shutdown");
    }
    Some(target)
}

fn grace_of(target: Option<crate::reshard::statefulset::Target>) -> Duration {
    target
        .and_then(|t| t.grace)
        .unwrap_or(DEFAULT_GRACE)
        .min(DRAIN_LIMIT)
}

/// Whether this SIGTERM is a scale-down that removed this ordinal (as opposed to a restart:
/// rollout, eviction, node drain, or the bot being stopped with replicas 0).
fn removed_by_scale_down(pod: &Pod, target: Option<crate::reshard::statefulset::Target>) -> bool {
    let replicas = target.map_or(pod.ownership.current().pods.get(), |t| t.replicas);
    replicas > 0 && pod.ordinal().0 >= replicas
}

/// A removed pod keeps running, processing what it still must and serving exports, until the
/// transition converged and the survivors pulled every guild it holds; at most until shortly
/// before Kubernetes' grace period ends. What it could not hand over, the survivors restore
/// from its Litestream replica.
async fn drain(pod: &Pod, grace: Duration) {
    let limit = grace.saturating_sub(DRAIN_RESERVE);
    let held = pod.store.guilds_held();
    info!(
        guilds_held = held,
        limit_s = limit.as_secs(),
        "removed by a scale-down: serving exports until the remaining pods have pulled this pod's guilds"
    );
    pod.draining.store(true, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let drained = async {
        loop {
            if !pod.ownership.processing().transitioning()
                && pod.store.guilds_held() == 0
                && pod.coordinator.released().await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    match tokio::time::timeout(limit, drained).await {
        Ok(()) => info!(
            drain_ms = started.elapsed().as_millis() as u64,
            "every guild of this pod was pulled by its new owner"
        ),
        Err(_) => warn!(
            guilds_held = pod.store.guilds_held(),
            "the grace period ends before every guild was pulled: the remaining pods restore \
             the rest from this pod's Litestream replica"
        ),
    }
}

/// Litestream restore settings for the replica fallback, when `LITESTREAM_CONFIG` names a
/// configuration (`LITESTREAM_BIN` overrides the `litestream` executable; the configuration
/// check made sure the replica prefix is set then).
fn replica_config(cfg: &GatewayConfig) -> Option<ReplicaConfig> {
    let config = cfg.litestream_config.clone()?;
    let prefix = cfg.replica_prefix.clone()?;
    let binary = cfg.litestream_bin.clone();
    let scratch = cfg
        .database_path
        .parent()
        .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf)
        .join("restore");
    Some(ReplicaConfig {
        binary,
        config,
        database_path: cfg.database_path.clone(),
        scratch,
        stall_limit: cfg.restore_stall,
        prefix,
    })
}

/// Ordinal 0 registers the command set with one bulk overwrite (idempotent).
async fn register_commands(pod: &Pod) {
    let definitions = serde_json::Value::Array(crate::commands::definitions());
    match pod.rest.create_global_commands(&definitions).await {
        Ok(registered) => info!(
            commands = registered.len(),
            "application commands registered"
        ),
        Err(err) => {
            pod.metrics.rest_error("register_commands");
            pod.record_error(format!("registering commands: {err}"));
            warn!(cause = %err, "could not register application commands");
        }
    }
}

/// Serves one of the pod's listeners with connection limits and timeouts (see
/// [`crate::listener`]).
fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let stopped = stop.cancelled();
    tokio::spawn(
        async move {
            if let Err(err) = crate::listener::serve(listener, app, limits, stopped).await {
                warn!(cause = %err, "http listener failed");
            }
        }
        .in_current_span(),
    )
}

async fn purge_loop(pod: Arc<Pod>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let cutoff = now_ms().saturating_sub(CONTENT_RETENTION_MS);
        if let Err(err) = pod
            .store
            .apply(Write::PurgeMessageContent {
                older_than_ms: cutoff,
            })
            .await
        {
            warn!(cause = %err, "purging old message content failed");
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}
