//! The one client of the gateway pods' internal API, shared by everything that talks to a pod:
//! the HTTP service (interactions, stats, topology), peer pods (resharding, dispatch delivery,
//! shard handover, the identify queue), the `status` command and the local cluster. One client
//! means one reading of each answer: what a 409 means, which calls may be retried, how long
//! each kind of call may take.
//!
//! Level 2: it speaks [`crate::wire`] over [`crate::internal_paths`], and the guild export's
//! body is the store's export format ([`crate::store::GuildExport`]); it does no I/O besides
//! HTTP and keeps no state.

mod error;
mod guilds;
mod interactions;
mod shards;

use std::time::Duration;

use crate::config::{Secret, UrlTemplate};
use crate::internal_paths as paths;
use crate::ownership::Ordinal;
use crate::wire::StatusReport;

pub use self::error::PodError;
pub use self::guilds::{Deleted, Read};
pub use self::interactions::Forwarded;
pub use self::shards::events_body;

/// Idle keep-alive connections kept per pod.
const IDLE_PER_POD: usize = 32;
/// How long an idle pooled connection is kept: shorter than the pods' idle timeout
/// (`listener::Limits::INTERNAL.header_read`, 30 s), so the pool lets a connection go before
/// the pod closes it and a request never races the pod's close.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// How long a caller waits for a pod; each caller says what "too slow" means for it. Calls
/// that do more than read (export, delivery, release, identify) have their own limits, the
/// same for every caller, next to the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long to wait for a TCP connection.
    pub connect: Duration,
    /// How long a short read may take (status, held guilds, stats, delete).
    pub read: Duration,
}

/// A client for every pod's internal API: pooled keep-alive connections, the base URL of each
/// ordinal (`GATEWAY_INTERNAL_URL_TEMPLATE`), the bearer token and a timeout on every call.
#[derive(Clone, Debug)]
pub struct PodClient {
    client: reqwest::Client,
    template: UrlTemplate,
    token: Secret,
    timeouts: Timeouts,
}

impl PodClient {
    /// Pods reachable at `template` with bearer `token`, waited for as long as `timeouts` say.
    ///
    /// # Errors
    /// The client's error when its TLS backend cannot be initialised.
    pub fn new(
        template: UrlTemplate,
        token: Secret,
        timeouts: Timeouts,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .pool_max_idle_per_host(IDLE_PER_POD)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(PodClient {
            client,
            template,
            token,
            timeouts,
        })
    }

    /// `GET /internal/v1/status` of `ordinal`.
    ///
    /// # Errors
    /// [`PodError`] when the pod cannot be reached or answers anything but a status report.
    pub async fn status(&self, ordinal: Ordinal) -> Result<StatusReport, PodError> {
        let response = self
            .call(
                ordinal,
                reqwest::Method::GET,
                paths::STATUS,
                self.timeouts.read,
            )
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        ok_json(ordinal, "status", response).await
    }

    /// An authenticated request to one of `ordinal`'s internal API paths, given up after
    /// `timeout`.
    fn call(
        &self,
        ordinal: Ordinal,
        method: reqwest::Method,
        path: &str,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.template.url_for(ordinal));
        self.client
            .request(method, url)
            .bearer_auth(self.token.expose())
            .timeout(timeout)
    }
}

/// The JSON body of a successful answer to `what`; any other status is the pod's error.
async fn ok_json<T: serde::de::DeserializeOwned>(
    ordinal: Ordinal,
    what: &str,
    response: reqwest::Response,
) -> Result<T, PodError> {
    let status = response.status();
    if !status.is_success() {
        return Err(PodError::Failed {
            ordinal,
            reason: format!("{what} answered {status}"),
        });
    }
    response
        .json()
        .await
        .map_err(|e| PodError::classify(ordinal, e))
}
