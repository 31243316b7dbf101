//! The gateway pod's HTTP surfaces: the internal API (`/internal/v1/*`, bearer-token
//! protected, for the HTTP service and peer pods) and the public probes (`/healthz`, `/readyz`,
//! `/metrics`), each on its own listener.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serenity::model::application::Interaction;
use tracing::warn;

use crate::config::Secret;
use crate::gateway::commands;
use crate::gateway::intake;
use crate::gateway::pod::Pod;
use crate::internal_paths as paths;
use crate::listener::Arrival;
use crate::ownership::{owner, GuildId, Ordinal};
use crate::store::GuildVersion;
use crate::wire::{
    DeliveryResults, ErrorBody, EventsBatch, HeldGuilds, InteractionOutcome, NotOwner, PodState,
    Released, StatusReport, DEADLINE_HEADER, GUILD_VERSION_HEADER,
};

/// Largest interaction body accepted (Discord's payloads are a few KiB; resolved messages can
/// make them larger).
const MAX_INTERACTION_BODY: usize = 256 * 1024;
/// Largest batch of routed dispatches accepted: at most 512 frames, and a large guild's
/// GUILD_CREATE alone can be megabytes.
const MAX_EVENTS_BODY: usize = 128 * 1024 * 1024;
/// How long a command may run before it is deferred, when the caller does not say.
const DEFAULT_DEADLINE: Duration = Duration::from_millis(2500);

/// An internal API failure, answered as JSON.
#[derive(Debug)]
pub enum ApiError {
    /// Missing or wrong bearer token.
    Unauthorized,
    /// The request is malformed.
    BadRequest(String),
    /// The guild belongs to another pod.
    NotOwner(NotOwner),
    /// The request conflicts with the guild's current state (it changed since an export).
    Conflict(String),
    /// The request's deadline passed before it could be served; nothing was done (503).
    TooLate(String),
    /// Something failed inside the pod; the details go to the log, not the caller.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                Json(ErrorBody {
                    error: "missing or invalid bearer token".into(),
                }),
            )
                .into_response(),
            ApiError::BadRequest(why) => {
                (StatusCode::BAD_REQUEST, Json(ErrorBody { error: why })).into_response()
            }
            ApiError::NotOwner(body) => (StatusCode::CONFLICT, Json(body)).into_response(),
            ApiError::Conflict(why) => {
                (StatusCode::CONFLICT, Json(ErrorBody { error: why })).into_response()
            }
            ApiError::TooLate(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody { error: why }),
            )
                .into_response(),
            ApiError::Internal(cause) => {
                warn!(cause = %cause, "internal API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(ErrorBody {
                        error: "internal error".into(),
                    }),
                )
                    .into_response()
            }
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(err: crate::store::Error) -> Self {
        match err {
            crate::store::Error::GuildChanged(_) => ApiError::Conflict(err.to_string()),
            err => ApiError::Internal(err.to_string()),
        }
    }
}

#[derive(Clone)]
struct ApiState {
    pod: Arc<Pod>,
    token: Secret,
}

/// The internal API router.
pub fn internal_app(pod: Arc<Pod>, token: Secret) -> Router {
    let state = ApiState { pod, token };
    Router::new()
        .route(paths::STATUS, get(status))
        .route(
            paths::INTERACTIONS,
            post(interaction).layer(DefaultBodyLimit::max(MAX_INTERACTION_BODY)),
        )
        .route(
            paths::EVENTS,
            post(events).layer(DefaultBodyLimit::max(MAX_EVENTS_BODY)),
        )
        .route(paths::SHARD_RELEASE, post(release_shard))
        .route(paths::IDENTIFY, post(identify))
        .route(paths::GUILDS, get(held_guilds))
        .route(paths::GUILD_EXPORT, get(export))
        .route(paths::GUILD_STATS, get(guild_stats))
        .route(paths::GUILD, axum::routing::delete(delete_guild))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ))
        .with_state(state)
}

/// The public probes and metrics router.
pub fn public_app(pod: Arc<Pod>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(pod)
}

async fn require_bearer(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if state.token.is_bearer(authorization) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn parse_guild(id: &str) -> Result<GuildId, ApiError> {
    id.parse()
        .map_err(|e: crate::ownership::ParseGuildIdError| ApiError::BadRequest(e.to_string()))
}

fn not_owner(pod: &Pod, guild: GuildId) -> ApiError {
    let topology = pod.ownership.processing().current;
    ApiError::NotOwner(NotOwner {
        guild_id: guild.to_string(),
        owner: owner(guild, topology),
        topology,
    })
}

/// Builds the status report (also used by the resharding coordinator).
pub async fn status_report(pod: &Pod) -> StatusReport {
    let processing = pod.ownership.processing();
    let totals = pod.metrics.totals();
    let guilds_held = pod.store.guilds_held() as u64;
    let removed = !processing.current.is_member(pod.ordinal());
    let handoff = pod.coordinator.progress();
    let held_foreign = pod.guilds_held_foreign().await;
    let state = if pod.stopping.load(Ordering::Relaxed) {
        PodState::Stopping
    } else if processing.transitioning() {
        PodState::Transitioning
    } else if removed && guilds_held > 0 {
        PodState::Draining
    } else if removed {
        PodState::Removed
    } else if handoff.pending_pull > 0 || !handoff.replicas_pending.is_empty() {
        PodState::HandingOff
    } else {
        PodState::Active
    };
    StatusReport {
        ordinal: pod.ordinal(),
        topology: processing.current,
        previous_topologies: processing.history.clone(),
        topology_source: pod.topology_source.report(),
        state,
        ready: pod.is_ready(),
        guilds_owned: pod.guilds_owned(),
        guilds_held,
        handoff_pending: held_foreign,
        events_seen: totals.seen.load(Ordering::Relaxed),
        events_owned: totals.owned.load(Ordering::Relaxed),
        events_handled: totals.handled.load(Ordering::Relaxed),
        db_size_bytes: pod.store.db_size_bytes().await.unwrap_or(0),
        identifies: pod.metrics.gateway_ready.get(),
        last_error: pod.last_error(),
        covering: pod.ownership.covering().into_iter().collect(),
        handoff,
        instance: pod.instance,
        receiving_since_ms: pod.ownership.snapshot().receiving_since_ms,
        departing: pod.coordinator.departing(true),
        departed_empty: pod.coordinator.departing(false),
        shards: pod.connectors.get().map(|c| c.shards()).unwrap_or_default(),
        sessions: pod
            .connectors
            .get()
            .map_or_else(|| pod.book.all(), |c| c.publish()),
        gaps: pod
            .gaps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect(),
        unacknowledged: pod.connectors.get().map_or(0, |c| c.unacknowledged()),
    }
}

/// `POST /internal/v1/events`: dispatches a connector routed here; one answer each, after
/// their writes committed.
async fn events(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Json<DeliveryResults>, ApiError> {
    let batch: EventsBatch<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a batch of dispatches: {e}")))?;
    let routed: Vec<intake::Routed<'_>> = batch
        .events
        .iter()
        .map(|e| (e.shard, e.seq, e.frame.get()))
        .collect();
    let results = intake::take(&state.pod, &routed)
        .await
        .map_err(|e| ApiError::TooLate(e.to_string()))?;
    Ok(Json(DeliveryResults { results }))
}

/// `POST /internal/v1/shards/{id}/release`: a peer takes the shard over; 409 while this pod
/// still connects it under its own view.
async fn release_shard(
    State(state): State<ApiState>,
    Path(shard): Path<u32>,
) -> Result<Json<Released>, ApiError> {
    let Some(connectors) = state.pod.connectors.get() else {
        return Ok(Json(Released { session: None }));
    };
    match connectors.release(shard).await {
        Ok(session) => Ok(Json(Released { session })),
        Err(refused) => Err(ApiError::Conflict(refused.to_string())),
    }
}

/// `POST /internal/v1/identify/{shard}`: answers when the shard may identify (this pod keeps
/// the cluster's identify queue while it is the lowest live ordinal).
async fn identify(State(state): State<ApiState>, Path(shard): Path<u32>) -> StatusCode {
    state.pod.gate.grant(shard).await;
    StatusCode::NO_CONTENT
}

async fn status(State(state): State<ApiState>) -> Json<StatusReport> {
    Json(status_report(&state.pod).await)
}

async fn interaction(
    State(state): State<ApiState>,
    arrival: Option<Extension<Arrival>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InteractionOutcome>, ApiError> {
    let interaction: Interaction = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a Discord interaction: {e}")))?;
    let Interaction::Command(command) = interaction else {
        return Ok(Json(InteractionOutcome::Respond {
            response: commands::Reply::private_text("That kind of interaction isn't supported.")
                .into_response(),
        }));
    };
    // serenity reads any u64; only ids that fit the store are guilds this pod can serve.
    let guild = command
        .guild_id
        .map(|g| GuildId::checked(g.get()))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(g) = guild {
        // A guild some peer still holds is pulled first, so the answer sees all its data.
        state.pod.coordinator.ensure_local(g).await;
    }
    if !state.pod.ownership.processes(guild) {
        return Err(match guild {
            Some(g) => not_owner(&state.pod, g),
            None => ApiError::BadRequest("direct-message interactions go to ordinal 0".into()),
        });
    }
    let deadline = headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_DEADLINE, |ms| Duration::from_millis(ms.min(10_000)));
    // The caller's clock started when it sent the request: count from this pod's arrival
    // (before pulling a guild, above), so the answer comes before the caller's timeout.
    let arrived = arrival.map_or_else(Instant::now, |Extension(a)| a.0);
    if let Some(covered) = state.pod.ownership.covered_owner(guild) {
        wait_for_cover_copy(&state.pod, covered, arrived + deadline).await?;
    }
    commands::execute_within(state.pod.clone(), command, arrived + deadline)
        .await
        .map(Json)
        .map_err(|too_late| ApiError::TooLate(too_late.to_string()))
}

/// A cover decides nothing for a covered guild before it has the owner's settings: waits for
/// the owner's copy ([`crate::reshard::cover_copy`]) while the deadline allows, else answers
/// "too late" with nothing done (the caller says "try again in a moment").
async fn wait_for_cover_copy(pod: &Pod, covered: Ordinal, until: Instant) -> Result<(), ApiError> {
    const POLL: Duration = Duration::from_millis(50);
    let copies = pod.coordinator.cover_copies();
    while !copies.ready(covered) {
        if Instant::now() + POLL >= until {
            return Err(ApiError::TooLate(format!(
                "the settings of gateway-{covered}, which this pod covers, are still being restored"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

async fn export(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let guild = parse_guild(&id)?;
    let (version, export) = state.pod.store.export_guild_versioned(guild).await?;
    // A previous owner serves what it holds; a pod that neither owns nor holds the guild
    // points the caller at the owner.
    if !state.pod.ownership.processes(Some(guild)) && export.rows() == 0 {
        return Err(not_owner(&state.pod, guild));
    }
    let mut response = Json(export).into_response();
    if let Some(version) = version.and_then(|v| v.to_string().parse().ok()) {
        response.headers_mut().insert(GUILD_VERSION_HEADER, version);
    }
    Ok(response)
}

#[derive(serde::Deserialize)]
struct HeldQuery {
    /// Only the guilds this ordinal owns under this pod's current topology.
    owner: Option<u32>,
}

async fn held_guilds(
    State(state): State<ApiState>,
    Query(query): Query<HeldQuery>,
) -> Result<Json<HeldGuilds>, ApiError> {
    let mut guild_ids = state.pod.store.guild_ids().await?;
    if let Some(o) = query.owner {
        let topology = state.pod.ownership.processing().current;
        guild_ids.retain(|g| owner(*g, topology) == Ordinal(o));
    }
    Ok(Json(HeldGuilds {
        ordinal: state.pod.ordinal(),
        guild_ids,
    }))
}

async fn guild_stats(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let guild = parse_guild(&id)?;
    if !state.pod.ownership.processes(Some(guild)) {
        return Err(not_owner(&state.pod, guild));
    }
    let rows = state.pod.store.row_counts(guild).await?;
    let days = state.pod.store.server_stats(guild, 0).await?;
    Ok(Json(serde_json::json!({
        "guild_id": guild.to_string(),
        "ordinal": state.pod.ordinal(),
        "rows": rows,
        "days": days,
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
struct DeleteQuery {
    /// Delete only if the guild is still at this version (from the export's header).
    if_version: Option<String>,
}

async fn delete_guild(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let guild = parse_guild(&id)?;
    let if_version = query
        .if_version
        .map(|v| v.parse::<GuildVersion>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Deleting a guild this pod still owns would lose its data, and deleting one it still
    // processes (previous topology, or covering a down peer) would lose rows written after the
    // caller's export: only a pod that no longer processes the guild deletes its copy.
    if state.pod.ownership.owns(guild) || state.pod.ownership.processes(Some(guild)) {
        return Err(ApiError::BadRequest(format!(
            "guild {guild} is still processed by this pod; it keeps its copy for now"
        )));
    }
    let before = state.pod.store.row_counts(guild).await?;
    let write = match if_version {
        Some(version) => crate::store::Write::DeleteGuildIfUnchanged {
            guild_id: guild,
            version,
        },
        None => crate::store::Write::DeleteGuild(guild),
    };
    state.pod.store.apply(write).await?;
    Ok(
        Json(serde_json::json!({ "guild_id": guild.to_string(), "deleted": before }))
            .into_response(),
    )
}

async fn readyz(State(pod): State<Arc<Pod>>) -> impl IntoResponse {
    if pod.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(pod): State<Arc<Pod>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        pod.metrics.encode(
            &pod.name,
            &pod.store.writer_stats(),
            &crate::gateway::metrics::Resharding {
                handoff: pod.coordinator.progress(),
                covering: pod.ownership.covering().len(),
                transitioning: pod.ownership.processing().transitioning(),
                topology_source_up: pod.topology_source.connected(),
                wal_bytes: pod.store.wal_bytes(),
                cover_copies: pod.coordinator.cover_copies().counts(),
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use crate::internal_paths as paths;

    /// The first argument of every `.route(` call of the internal router.
    fn registered(source: &str) -> Vec<String> {
        let body = source
            .split("pub fn internal_app(")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .unwrap_or_default();
        body.split(".route(")
            .skip(1)
            .map(|call| call.split(',').next().unwrap_or_default().trim().to_owned())
            .collect()
    }

    /// A route written as a literal here could drift from the path the clients build: every
    /// route the router registers is one of `internal_paths`, and each of those is registered.
    #[test]
    fn the_router_registers_exactly_the_shared_paths() {
        let routes = registered(include_str!("internal_api.rs"));
        assert_eq!(routes.len(), paths::ALL.len(), "{routes:?}");
        for (i, route) in routes.iter().enumerate() {
            assert!(route.starts_with("paths::"), "literal route {route}");
            assert!(!routes[..i].contains(route), "{route} registered twice");
        }
    }
}
