//! A Kubernetes API stand-in that serves the gateway StatefulSet, so that the real `kubectl`
//! (through a kubeconfig) and Kubernetes client libraries (kube-rs) can get, watch and scale it
//! where no cluster runs: in tests and in `guildshard dev`. It owns the one StatefulSet object,
//! its resourceVersion history, and the fault switches tests use (broken watches, outages, RBAC
//! refusals, deletion).
//!
//! Level 1: uses only level-0 modules (`shutdown`, `calendar`); never the store, the gateway,
//! the HTTP service or the local cluster (which drives it through [`KubeApi`]).
//!
//! # Faithful
//! - Paths, verbs, `Status` errors (codes, reasons, the API server's wording), bearer-token
//!   auth with anonymous requests allowed (a wrong token is 401; kubectl sends no token over
//!   plain http, so it is served as `system:anonymous`), RBAC refusals (403), discovery (legacy format; aggregated-discovery `Accept`
//!   headers get the legacy answer, which clients fall back to), server-side printed Tables for
//!   `kubectl get`, the `autoscaling/v1` Scale subresource.
//! - resourceVersion bumps on every change and generation on spec changes; no-op updates change
//!   nothing; immutable spec fields, negative replicas and stale resourceVersions are refused.
//! - Watches: ADDED first when started from "now" (unset or "0"), replay after a given version,
//!   410 Expired as an ERROR event for a version older than the kept history, bookmarks,
//!   `sendInitialEvents`, `timeoutSeconds`, field selectors on name/namespace, label selectors.
//!
//! # Simplified
//! - One StatefulSet, plus its namespace (`GET /api/v1/namespaces/{ns}`, which kubectl reads
//!   to explain a 404); no create/delete over HTTP (the in-process handle deletes and
//!   recreates), no server-side apply, no protobuf, no OpenAPI documents (404), no pagination
//!   (`limit` is ignored: there is at most one item), set-based label selectors are refused.
//! - Strategic merge patches merge as JSON merge patches (lists are replaced whole).
//! - A list honours `resourceVersionMatch=Exact` only for the current version; a watch with no
//!   `timeoutSeconds` runs until it is broken or the stand-in stops.
//! - Status is whatever the controller reports through [`KubeApi::set_status`].
//!
//! # Layout
//! - `objects`: every JSON document (StatefulSet, Scale, lists, Tables, Status, discovery),
//!   merge and JSON patches, timestamps.
//! - `state`: the object, the resourceVersion counter and the watch history.
//! - `routes`: auth, discovery and the StatefulSet/Scale endpoints.
//! - `query`: list and watch parameters and selectors.
//! - `watch`: the streaming watch responses.
//! - `listener`: the outage switch at the connection level.
//! - `error`: [`Error`] and the `Status` answers.

mod error;
mod listener;
mod objects;
mod query;
mod routes;
mod state;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::shutdown::Shutdown;
pub use error::Error;
use listener::{Gate, GatedListener};
use state::State;

/// `spec.podManagementPolicy`: how the StatefulSet controller creates and deletes pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodManagementPolicy {
    /// One pod at a time, each waiting for the previous one to be ready (Kubernetes' default).
    OrderedReady,
    /// All at once.
    Parallel,
}

impl PodManagementPolicy {
    /// The value as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PodManagementPolicy::OrderedReady => "OrderedReady",
            PodManagementPolicy::Parallel => "Parallel",
        }
    }
}

/// How the stand-in is set up. `Default` mirrors `cluster/base/gateway-statefulset.yaml` in the
/// `guildshard` namespace.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeApiConfig {
    /// The namespace the StatefulSet lives in.
    pub namespace: String,
    /// The StatefulSet's name.
    pub statefulset: String,
    /// `spec.replicas` at start (and after a recreate).
    pub replicas: u32,
    /// `spec.podManagementPolicy`.
    pub pod_management_policy: PodManagementPolicy,
    /// `spec.template.spec.terminationGracePeriodSeconds`.
    pub termination_grace_period_seconds: u64,
    /// `spec.serviceName` (the headless Service).
    pub service_name: String,
    /// The container image in the pod template.
    pub image: String,
    /// The service account the token belongs to; RBAC refusals name
    /// `system:serviceaccount:<namespace>:<service_account>`.
    pub service_account: String,
    /// Bearer tokens accepted; the first is written into kubeconfigs.
    pub tokens: Vec<String>,
    /// Serve requests without credentials as `system:anonymous` (an API server's
    /// `--anonymous-auth`). On by default because kubectl sends no token over plain http; a
    /// wrong token is refused with 401 either way.
    pub allow_anonymous: bool,
    /// Changes kept for watches that resume from an older resourceVersion; older ones get 410.
    pub watch_history: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval_ms: u64,
}

impl Default for KubeApiConfig {
    fn default() -> Self {
        Self {
            namespace: "guildshard".into(),
            statefulset: "gateway".into(),
            replicas: 3,
            pod_management_policy: PodManagementPolicy::Parallel,
            termination_grace_period_seconds: 60,
            service_name: "gateway-internal".into(),
            image: "guildshard:dev".into(),
            service_account: "gateway".into(),
            tokens: vec!["guildshard-kube-api-token".into()],
            allow_anonymous: true,
            watch_history: 1000,
            bookmark_interval_ms: 60_000,
        }
    }
}

impl std::fmt::Debug for KubeApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiConfig")
            .field("namespace", &self.namespace)
            .field("statefulset", &self.statefulset)
            .field("replicas", &self.replicas)
            .field("pod_management_policy", &self.pod_management_policy)
            .field(
                "termination_grace_period_seconds",
                &self.termination_grace_period_seconds,
            )
            .field("tokens", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The StatefulSet as the in-process side sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatefulSetSnapshot {
    /// False while the StatefulSet is deleted; the other fields then hold its last state.
    pub exists: bool,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `spec.podManagementPolicy`.
    pub pod_management_policy: PodManagementPolicy,
    /// `spec.template.spec.terminationGracePeriodSeconds`.
    pub termination_grace_period: Duration,
    /// `metadata.resourceVersion`.
    pub resource_version: u64,
    /// `metadata.generation`.
    pub generation: u64,
    /// `status.readyReplicas`, as last reported by [`KubeApi::set_status`].
    pub ready_replicas: u32,
    /// `status.currentReplicas`, as last reported by [`KubeApi::set_status`].
    pub current_replicas: u32,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KubeApiCounters {
    /// HTTP requests answered (any path, any outcome, watches included).
    pub requests: u64,
    /// Watches started.
    pub watches_opened: u64,
    /// Watches open now.
    pub watches_open: u64,
    /// Connections closed unanswered during an outage.
    pub connections_dropped: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    watches_opened: AtomicU64,
    watches_open: AtomicU64,
}

impl Counters {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn watch_opened(&self) {
        self.watches_opened.fetch_add(1, Ordering::Relaxed);
        self.watches_open.fetch_add(1, Ordering::Relaxed);
    }

    fn watch_closed(&self) {
        self.watches_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared core behind every [`KubeApi`] clone.
struct Shared {
    cfg: KubeApiConfig,
    addr: SocketAddr,
    state: Mutex<State>,
    /// The latest snapshot; watches also wake on it.
    snapshots: tokio::sync::watch::Sender<StatefulSetSnapshot>,
    gate: Arc<Gate>,
    /// Cancelled (and replaced) to break every open watch.
    watch_breaker: Mutex<CancellationToken>,
    forbidden: AtomicBool,
    shutdown: Shutdown,
    counters: Counters,
}

/// A running stand-in (cheap to clone).
#[derive(Clone)]
pub struct KubeApi {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

/// Starts the stand-in on an already bound listener; it serves until `shutdown` trips.
///
/// # Errors
/// [`Error::Listener`] when the listener has no local address.
pub async fn start(
    cfg: KubeApiConfig,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<KubeApi, Error> {
    let addr = listener.local_addr().map_err(Error::Listener)?;
    let api = KubeApi::new(cfg, addr, shutdown.clone());
    let router = app(api.clone());
    let listener = GatedListener::new(listener, api.shared.gate.clone());
    let stop = shutdown.cancelled();
    shutdown.tracker().spawn(async move {
        let served = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(stop)
            .await;
        if let Err(err) = served {
            tracing::error!(cause = %err, "kube api stand-in stopped");
        }
    });
    tracing::info!(%addr, namespace = %api.namespace(), "kube api stand-in started");
    Ok(api)
}

/// The stand-in's routes for `api`, e.g. for `oneshot` tests (outages need [`start`]).
pub fn app(api: KubeApi) -> Router {
    routes::router(api.clone())
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    let matched = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_owned());
                    tracing::debug_span!("kube_api", method = %req.method(), matched_path = matched)
                },
            ),
        )
        .with_state(api)
}

impl KubeApi {
    /// The stand-in's state for `cfg`, without serving anything (see [`start`]).
    pub fn new(cfg: KubeApiConfig, addr: SocketAddr, shutdown: Shutdown) -> Self {
        let state = State::new(&cfg);
        let (snapshots, _) = tokio::sync::watch::channel(state.snapshot());
        Self {
            shared: Arc::new(Shared {
                cfg,
                addr,
                state: Mutex::new(state),
                snapshots,
                gate: Arc::default(),
                watch_breaker: Mutex::default(),
                forbidden: AtomicBool::new(false),
                shutdown,
                counters: Counters::default(),
            }),
        }
    }

    /// The object lock. Never held across an `.await`.
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug here; the state is still usable for a
        // test tool, so recover instead of cascading panics.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the state and publishes the new snapshot if it changed anything.
    fn change<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let before = state.rv();
        let result = f(&mut state);
        if state.rv() != before {
            // Under the lock, so subscribers see snapshots in resourceVersion order.
            self.shared.snapshots.send_replace(state.snapshot());
        }
        result
    }

    fn watch_breaker(&self) -> CancellationToken {
        lock_token(&self.shared.watch_breaker).clone()
    }

    fn is_forbidden(&self) -> bool {
        self.shared.forbidden.load(Ordering::SeqCst)
    }

    /// The user an accepted token authenticates as.
    fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.shared.cfg.namespace, self.shared.cfg.service_account
        )
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &KubeApiConfig {
        &self.shared.cfg
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The API server URL: `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The StatefulSet's namespace.
    pub fn namespace(&self) -> &str {
        &self.shared.cfg.namespace
    }

    /// The StatefulSet's name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.statefulset
    }

    /// The bearer token clients present (the first configured one).
    pub fn token(&self) -> &str {
        self.shared.cfg.tokens.first().map_or("", String::as_str)
    }

    /// Writes a kubeconfig for this stand-in: one cluster at [`KubeApi::base_url`], a user with
    /// the bearer token, a context with the namespace, set as the current context. The file is
    /// readable by its owner only, as it holds the token.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        // JSON-quoted strings are valid YAML double-quoted scalars.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: guildshard-local\n  cluster:\n    server: {server}\n\
             users:\n\
             - name: {user}\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: guildshard-local\n  context:\n    cluster: guildshard-local\n    user: {user}\n    namespace: {namespace}\n\
             current-context: guildshard-local\n\
             preferences: {{}}\n",
            server = q(&self.base_url()),
            user = q(&self.shared.cfg.service_account),
            token = q(self.token()),
            namespace = q(self.namespace()),
        );
        std::fs::write(path, text)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }

    /// `spec.replicas`, or 0 while the StatefulSet is deleted (its pods would be gone too).
    pub fn replicas(&self) -> u32 {
        let snapshot = self.statefulset();
        if snapshot.exists {
            snapshot.replicas
        } else {
            0
        }
    }

    /// Sets `spec.replicas`, as `kubectl scale` does: watchers and subscribers see the change.
    ///
    /// # Errors
    /// [`Error::NotFound`] while the StatefulSet is deleted.
    pub fn set_replicas(&self, replicas: u32) -> Result<(), Error> {
        self.change(|state| {
            let mut obj = state
                .object()
                .cloned()
                .ok_or_else(|| Error::NotFound(self.name().to_owned()))?;
            obj["spec"]["replicas"] = replicas.into();
            state.update(obj).map(drop).map_err(Error::from)
        })
    }

    /// The StatefulSet now.
    pub fn statefulset(&self) -> StatefulSetSnapshot {
        self.shared.snapshots.borrow().clone()
    }

    /// A receiver that sees every change (each one bumps the resourceVersion).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<StatefulSetSnapshot> {
        self.shared.snapshots.subscribe()
    }

    /// Reports what runs, as the StatefulSet controller does: `ready` pods ready (and
    /// available), `current` pods created from the current revision. Also sets
    /// `observedGeneration` to the current generation. A report that changes nothing is not an
    /// event.
    ///
    /// # Errors
    /// [`Error::NotFound`] while the StatefulSet is deleted.
    pub fn set_status(&self, ready: u32, current: u32) -> Result<(), Error> {
        self.change(|state| state.set_status(ready, current))
            .map(drop)
            .map_err(Error::from)
    }

    /// Ends every open watch stream abruptly, as a dropped connection does (the chunked body
    /// stops without its terminating chunk). Watches started afterwards are not affected.
    pub fn break_watches(&self) {
        std::mem::take(&mut *lock_token(&self.shared.watch_breaker)).cancel();
    }

    /// Makes the API unreachable (`true`): open connections and watches are cut, and new
    /// connections are accepted and closed without an answer. `false` serves again on the same
    /// address.
    pub fn set_outage(&self, on: bool) {
        self.shared.gate.set_outage(on);
        if on {
            self.break_watches();
        }
    }

    /// While on, every StatefulSet request is refused with RBAC's 403 (discovery still works,
    /// as it does for any authenticated user).
    pub fn set_forbidden(&self, on: bool) {
        self.shared.forbidden.store(on, Ordering::SeqCst);
    }

    /// Deletes the StatefulSet: requests get 404 and watchers a DELETED event. Returns whether
    /// it existed.
    pub fn delete_statefulset(&self) -> bool {
        self.change(State::delete)
    }

    /// Creates the StatefulSet again from the configuration (a new uid, generation 1), as
    /// applying its manifest would; watchers get an ADDED event. Returns whether it was absent.
    pub fn recreate_statefulset(&self) -> bool {
        self.change(|state| state.create(&self.shared.cfg))
    }

    /// Counters since start.
    pub fn counters(&self) -> KubeApiCounters {
        let c = &self.shared.counters;
        KubeApiCounters {
            requests: c.requests.load(Ordering::Relaxed),
            watches_opened: c.watches_opened.load(Ordering::Relaxed),
            watches_open: c.watches_open.load(Ordering::Relaxed),
            connections_dropped: self.shared.gate.dropped.load(Ordering::Relaxed),
        }
    }
}

fn lock_token(token: &Mutex<CancellationToken>) -> MutexGuard<'_, CancellationToken> {
    // The token is replaced whole; a poisoned lock still holds a valid one.
    token
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
