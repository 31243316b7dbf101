//! The stateless HTTP service (`guildshard http`, DESIGN §5, §7.4): Discord's interactions
//! endpoint, routing to the owner gateway pod, the operator API, probes and metrics.
//!
//! Level 3. Talks to the gateway pods only over their internal HTTP API (the types in
//! [`crate::wire`]); never imports `store` or `gateway`, so it holds no guild data and any
//! number of replicas can run behind a load balancer.
//!
//! Routes:
//! - `POST /interactions` ([`interactions`]): Ed25519-verified, PING, routed commands.
//! - `GET /api/v1/overview`, `GET /api/v1/guilds/{id}/stats` ([`overview`]), bearer-protected.
//! - `GET /healthz`: the process serves. `GET /readyz`: always ready once serving, because
//!   the service is stateless and degrades politely: with no pod reachable it still answers
//!   every interaction (with the "restarting" message), which is better for users than the
//!   load balancer refusing Discord's requests. The body says whether the topology has been
//!   learned from a pod yet. `GET /metrics` ([`metrics`]).
//!
//! # Layout
//! - [`interactions`]: signature extractor, PING, deadlines, the one answer per interaction.
//! - [`admission`]: the per-pod limit on forwards in flight.
//! - [`topology`]: the routing topology, learned from the pods.
//! - [`overview`]: the operator API (fan-out and per-guild reads).
//! - [`register`]: the bulk overwrite of the command set (`guildshard register-commands`).
//! - [`error`], [`metrics`].

pub mod admission;
pub mod error;
pub mod interactions;
pub mod metrics;
pub mod overview;
pub mod register;
pub mod topology;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Router};
use ed25519_dalek::VerifyingKey;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::config::{HttpConfig, Secret};
use crate::listener::Limits;
use crate::pod_client::{PodClient, Timeouts};
use crate::shutdown::Shutdown;

use admission::Admission;
pub use error::AppError;
use metrics::Metrics;
use overview::RateSamples;
use topology::TopologyCache;

/// How long the service waits for a pod. Pods are in-cluster, so a slow connect means a pod
/// that is gone; an interaction's own timeout follows Discord's deadline instead.
pub const POD_TIMEOUTS: Timeouts = Timeouts {
    connect: std::time::Duration::from_millis(500),
    read: std::time::Duration::from_secs(2),
};

/// Why the service could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `DISCORD_PUBLIC_KEY` is not a valid Ed25519 point.
    #[error("the discord public key is not a valid ed25519 key")]
    PublicKey(#[source] ed25519_dalek::SignatureError),
    /// The outgoing HTTP client could not be built.
    #[error("cannot build the http client for the gateway pods")]
    Client(#[source] reqwest::Error),
    /// The listener failed.
    #[error("serving http")]
    Serve(#[source] std::io::Error),
}

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    public_key: VerifyingKey,
    admission: Admission,
    token: Secret,
    pods: PodClient,
    topology: Arc<TopologyCache>,
    metrics: Arc<Metrics>,
    rates: RateSamples,
}

impl AppState {
    /// Builds the state from the configuration; `pod` labels the metrics (the HTTP pod's
    /// name, or `http`).
    ///
    /// # Errors
    /// [`Error::PublicKey`], [`Error::Client`].
    pub fn new(cfg: &HttpConfig, pod: &str) -> Result<Self, Error> {
        Self::with_forward_limit(cfg, pod, admission::DEFAULT_FORWARDS_PER_POD)
    }

    /// Like [`AppState::new`], admitting `per_pod` interactions in flight to each pod (tests
    /// use a small number).
    ///
    /// # Errors
    /// [`Error::PublicKey`], [`Error::Client`].
    pub fn with_forward_limit(cfg: &HttpConfig, pod: &str, per_pod: usize) -> Result<Self, Error> {
        let public_key = VerifyingKey::from_bytes(&cfg.public_key).map_err(Error::PublicKey)?;
        let pods = PodClient::new(
            cfg.url_template.clone(),
            cfg.internal_token.clone(),
            POD_TIMEOUTS,
        )
        .map_err(Error::Client)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                public_key,
                admission: Admission::new(per_pod),
                token: cfg.internal_token.clone(),
                pods,
                topology: Arc::new(TopologyCache::new(cfg.initial_topology)),
                metrics: Arc::new(Metrics::new(pod)),
                rates: RateSamples::default(),
            }),
        })
    }

    /// The topology cache (what the service routes by).
    pub fn topology(&self) -> &TopologyCache {
        &self.inner.topology
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/overview", get(overview::overview))
        .route("/api/v1/guilds/{id}/stats", get(overview::guild_stats))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            overview::require_bearer,
        ));
    Router::new()
        .route(
            "/interactions",
            post(interactions::interactions).layer(DefaultBodyLimit::max(interactions::MAX_BODY)),
        )
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(
            state.inner.metrics.clone(),
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.inner.topology.current().learned {
        "ready (topology learned from the gateway pods)"
    } else {
        "ready (routing by NUM_GATEWAY_PODS until a gateway pod answers)"
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.inner.metrics.encode(),
    )
}

/// Runs the service on `listener` until `shutdown` trips, with metrics labelled `pod="http"`.
///
/// # Errors
/// See [`Error`].
pub async fn run(cfg: HttpConfig, listener: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    serve(AppState::new(&cfg, "http")?, listener, shutdown).await
}

/// Runs the service with prepared state: starts the topology refresher, serves until
/// `shutdown` trips, then lets in-flight requests finish (each is bounded by Discord's 3 s).
/// Connections get [`Limits::PUBLIC`]: the endpoint faces the internet.
///
/// # Errors
/// [`Error::Serve`] when the listener fails.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    serve_with_limits(state, listener, Limits::PUBLIC, shutdown).await
}

/// [`serve`] with other connection limits (tests use short ones).
///
/// # Errors
/// [`Error::Serve`] when the listener fails.
pub async fn serve_with_limits(
    state: AppState,
    listener: TcpListener,
    limits: Limits,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let inner = &state.inner;
    shutdown
        .tracker()
        .spawn(inner.topology.clone().run_refresher(
            inner.pods.clone(),
            inner.metrics.clone(),
            shutdown.clone(),
        ));
    crate::listener::serve(listener, app(state), limits, shutdown.cancelled())
        .await
        .map_err(Error::Serve)
}
