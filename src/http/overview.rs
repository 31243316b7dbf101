//! The operator API, bearer-protected with `INTERNAL_AUTH_TOKEN` (the HTTP service faces the
//! internet; cluster layout and per-guild numbers are not for everyone):
//!
//! - `GET /api/v1/overview`: every pod's status gathered into one document, with pods that did
//!   not answer listed as unreachable and the whole marked `partial`. Events per second are
//!   computed between two overview calls (the pods report counters, not rates).
//! - `GET /api/v1/guilds/{id}/stats`: routed to the owner's
//!   `GET /internal/v1/guilds/{id}/stats`, re-routed once after a 409 like interactions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::ownership::{owner, GuildId, Ordinal, Topology};
use crate::pod_client::Read;
use crate::wire::StatusReport;

use super::error::AppError;
use super::AppState;

/// The last `events_seen` sample per pod, for rates.
#[derive(Default)]
pub struct RateSamples(Mutex<HashMap<Ordinal, (Instant, u64)>>);

impl RateSamples {
    /// Records `events_seen` for `ordinal` and returns the rate since the previous sample.
    fn rate(&self, ordinal: Ordinal, events_seen: u64) -> Option<f64> {
        let now = Instant::now();
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let previous = samples.insert(ordinal, (now, events_seen));
        let (at, seen) = previous?;
        let secs = now.duration_since(at).as_secs_f64();
        // A counter that went down means the pod restarted: no rate across that.
        (secs > 0.0 && events_seen >= seen).then(|| (events_seen - seen) as f64 / secs)
    }
}

/// One pod in the overview.
#[derive(Debug, Serialize)]
pub struct PodOverview {
    /// The pod's ordinal.
    pub ordinal: Ordinal,
    /// Whether it answered.
    pub reachable: bool,
    /// `healthy` (answered, ready), `unready` (answered, not ready), `unreachable`.
    pub health: &'static str,
    /// Dispatches per second since the previous overview call, when known.
    pub events_per_second: Option<f64>,
    /// Its status report, when it answered.
    pub status: Option<StatusReport>,
    /// Why it could not be asked, when it did not answer.
    pub error: Option<String>,
}

/// `GET /api/v1/overview`.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The topology the service routes by.
    pub topology: Topology,
    /// Whether the topology was learned from the pods (false: still `NUM_GATEWAY_PODS`).
    pub topology_learned: bool,
    /// True when at least one pod did not answer: the totals are then lower bounds.
    pub partial: bool,
    /// Guilds owned, summed over the pods that answered.
    pub guilds_owned: u64,
    /// Dispatches per second, summed over the pods with a known rate.
    pub events_per_second: f64,
    /// Every pod asked, by ordinal.
    pub pods: Vec<PodOverview>,
}

/// Middleware: requires `Authorization: Bearer <INTERNAL_AUTH_TOKEN>`.
pub async fn require_bearer(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if state.inner.token.is_bearer(authorization) {
        Ok(next.run(request).await)
    } else {
        Err(AppError::Unauthorized("missing or invalid bearer token"))
    }
}

/// `GET /api/v1/overview`.
pub async fn overview(State(state): State<AppState>) -> Json<Overview> {
    let inner = &state.inner;
    let results = inner.topology.refresh(&inner.pods, &inner.metrics).await;
    let known = inner.topology.current();
    let mut pods = Vec::with_capacity(results.len());
    for (ordinal, result) in results {
        pods.push(match result {
            Ok(status) => PodOverview {
                ordinal,
                reachable: true,
                health: if status.ready { "healthy" } else { "unready" },
                events_per_second: inner.rates.rate(ordinal, status.events_seen),
                status: Some(status),
                error: None,
            },
            Err(err) => PodOverview {
                ordinal,
                reachable: false,
                health: "unreachable",
                events_per_second: None,
                status: None,
                error: Some(err.to_string()),
            },
        });
    }
    Json(Overview {
        topology: known.topology,
        topology_learned: known.learned,
        partial: pods.iter().any(|p| !p.reachable),
        guilds_owned: pods
            .iter()
            .filter_map(|p| p.status.as_ref())
            .map(|s| s.guilds_owned)
            .sum(),
        events_per_second: pods.iter().filter_map(|p| p.events_per_second).sum(),
        pods,
    })
}

/// `GET /api/v1/guilds/{id}/stats`.
///
/// # Errors
/// 400 for a malformed id, 503 when the owner cannot be reached.
pub async fn guild_stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let guild: GuildId = id
        .parse()
        .map_err(|e: crate::ownership::ParseGuildIdError| AppError::BadRequest(e.to_string()))?;
    let inner = &state.inner;
    let mut target = owner(guild, inner.topology.current().topology);
    let mut rerouted = false;
    loop {
        let read = inner
            .pods
            .guild_stats(target, guild)
            .await
            .map_err(|e| AppError::OwnerUnavailable(e.to_string()))?;
        match read {
            Read::Answer(status, body) => {
                return Ok(
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
                )
            }
            Read::NotOwner(not_owner) if !rerouted && not_owner.owner != target => {
                inner.topology.request_refresh();
                inner.metrics.reroutes.inc();
                rerouted = true;
                target = not_owner.owner;
            }
            Read::NotOwner(not_owner) => {
                inner.topology.request_refresh();
                return Err(AppError::OwnerUnavailable(format!(
                    "gateway-{target} is not the owner of {guild} (it says gateway-{})",
                    not_owner.owner
                )));
            }
        }
    }
}
