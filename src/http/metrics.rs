//! The HTTP service's Prometheus metrics (prometheus-client). Every series carries a `pod`
//! label set once on the registry, like the gateway pods' metrics.
//!
//! Handlers say how a request ended by putting an [`Outcome`] in the response's extensions;
//! the [`track`] middleware counts it under the route's matched path, so no handler can forget
//! to count and no rejection goes uncounted.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a request ended, as counted in `guildshard_http_requests_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// PING answered with PONG.
    Pong,
    /// The owner pod's response was returned.
    Responded,
    /// A deferred response (type 5) was returned; the owner edits the original later.
    Deferred,
    /// The owner pod could not answer; the user got the polite "try again" message (or a 503).
    OwnerUnavailable,
    /// Too many interactions in flight to the owner pod; the user got "busy, try again".
    Busy,
    /// The owner pod could not read the interaction (400); the user got "could not read".
    Unreadable,
    /// An interaction type the bot does not handle; answered without routing.
    Unsupported,
    /// Missing or bad signature, timestamp or token.
    Unauthorized,
    /// Malformed body or parameter.
    BadRequest,
    /// Body over the limit.
    TooLarge,
    /// Served (probes, API reads).
    Ok,
    /// Failed inside the service.
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pong => "pong",
            Outcome::Responded => "responded",
            Outcome::Deferred => "deferred",
            Outcome::OwnerUnavailable => "owner_unavailable",
            Outcome::Busy => "busy",
            Outcome::Unreadable => "unreadable",
            Outcome::Unsupported => "unsupported",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route (`/interactions`, `/api/v1/overview`, ...), or `unmatched`.
    pub route: String,
    /// How it ended ([`Outcome::as_str`]).
    pub outcome: String,
}

/// Every metric the HTTP service exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from an interaction's arrival to the answer, for routed interactions.
    pub routing_latency: Histogram,
    /// Deferred responses returned (the owner was slower than the deadline).
    pub deferrals: Counter,
    /// Requests answered "owner unavailable" (polite ephemeral message or 503).
    pub owner_unavailable: Counter,
    /// Interactions answered "busy" because the owner pod had too many in flight.
    pub busy: Counter,
    /// Interactions the owner pod could not read (it answered 400).
    pub unreadable: Counter,
    /// Interactions re-routed once after a pod answered 409 (not the owner).
    pub reroutes: Counter,
    /// Interactions sent to the pod covering a down owner.
    pub to_cover: Counter,
    /// Topology refreshes that learned a topology from at least one pod.
    pub topology_refreshes: Counter,
}

impl Metrics {
    /// A registry whose every series has `pod="<pod>"`.
    pub fn new(pod: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "guildshard_http",
            [("pod".into(), pod.to_owned().into())].into_iter(),
        );
        let m = Metrics {
            requests: Family::default(),
            // 5 ms .. ~10 s: routed answers are tens of ms, deferrals sit near the deadline.
            routing_latency: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            deferrals: Counter::default(),
            owner_unavailable: Counter::default(),
            busy: Counter::default(),
            unreadable: Counter::default(),
            reroutes: Counter::default(),
            to_cover: Counter::default(),
            topology_refreshes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by route and outcome",
            m.requests.clone(),
        );
        registry.register(
            "routing_latency_seconds",
            "Time from an interaction's arrival to the answer, for routed interactions",
            m.routing_latency.clone(),
        );
        registry.register(
            "deferrals",
            "Deferred responses returned because the owner pod was slower than the deadline",
            m.deferrals.clone(),
        );
        registry.register(
            "owner_unavailable",
            "Requests answered 'owner unavailable'",
            m.owner_unavailable.clone(),
        );
        registry.register(
            "busy",
            "Interactions answered 'busy' because too many were in flight to the owner pod",
            m.busy.clone(),
        );
        registry.register(
            "unreadable",
            "Interactions the owner pod could not read (it answered 400)",
            m.unreadable.clone(),
        );
        registry.register(
            "reroutes",
            "Interactions re-routed after a pod answered 409 (not the owner)",
            m.reroutes.clone(),
        );
        registry.register(
            "routed_to_cover",
            "Interactions sent to the pod covering their guild's owner while the owner is down",
            m.to_cover.clone(),
        );
        registry.register(
            "topology_refreshes",
            "Topology refreshes that heard from at least one pod",
            m.topology_refreshes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one routed interaction's latency.
    pub fn observe_routing(&self, elapsed: Duration) {
        self.routing_latency.observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Middleware: counts every request by matched route and the [`Outcome`] its response carries
/// (or one derived from the status code).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let outcome = response
        .extensions()
        .get::<Outcome>()
        .copied()
        .unwrap_or_else(|| {
            let status = response.status();
            if status.is_success() {
                Outcome::Ok
            } else if status == axum::http::StatusCode::UNAUTHORIZED {
                Outcome::Unauthorized
            } else if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Outcome::TooLarge
            } else if status.is_client_error() {
                Outcome::BadRequest
            } else {
                Outcome::Error
            }
        });
    match outcome {
        Outcome::Deferred => metrics.deferrals.inc(),
        Outcome::OwnerUnavailable => metrics.owner_unavailable.inc(),
        Outcome::Busy => metrics.busy.inc(),
        Outcome::Unreadable => metrics.unreadable.inc(),
        _ => 0,
    };
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            outcome: outcome.as_str().to_owned(),
        })
        .inc();
    response
}
