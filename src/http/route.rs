//! Talking to the gateway pods' internal API: one pooled keep-alive reqwest client, the URL
//! template (`GATEWAY_INTERNAL_URL_TEMPLATE`), the bearer token, and a timeout on every call.
//!
//! The error type says whether a failed call may have reached the pod. Only a connect error
//! (nothing was sent) may be retried for an interaction: after that, the pod may have executed
//! the command and a second POST could act twice.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;

use crate::config::{Secret, UrlTemplate};
use crate::ownership::{GuildId, Ordinal};
use crate::wire::{ErrorBody, InteractionOutcome, NotOwner, StatusReport, DEADLINE_HEADER};

/// How long to wait for a TCP connection to a pod: pods are in-cluster, so a slow connect
/// means a pod that is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a status or stats read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections kept per pod.
const IDLE_PER_POD: usize = 32;
/// How long an idle pooled connection is kept: shorter than the pods' idle timeout
/// (`listener::Limits::INTERNAL.header_read`, 30 s), so the pool lets a connection go before
/// the pod closes it and a request never races the pod's close.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// A call to a pod that did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No connection could be made: the request was never sent (safe to retry).
    #[error("cannot connect to gateway-{ordinal}")]
    Connect {
        /// The pod.
        ordinal: Ordinal,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The pod did not answer in time; it may have received (and acted on) the request.
    #[error("gateway-{ordinal} did not answer in time")]
    Timeout {
        /// The pod.
        ordinal: Ordinal,
    },
    /// The pod refused the request as malformed (400) without acting on it.
    #[error("gateway-{ordinal} could not read the request: {reason}")]
    Rejected {
        /// The pod.
        ordinal: Ordinal,
        /// The pod's error text.
        reason: String,
    },
    /// The connection failed mid-request or the answer was not what the contract says.
    #[error("gateway-{ordinal}: {reason}")]
    Failed {
        /// The pod.
        ordinal: Ordinal,
        /// What went wrong.
        reason: String,
    },
}

/// What a pod answered to an interaction.
#[derive(Debug)]
pub enum Forwarded {
    /// The pod owns the guild and answered.
    Outcome(InteractionOutcome),
    /// The pod does not own the guild under its topology (409).
    NotOwner(NotOwner),
}

/// What a pod answered to a read that is routed by guild.
#[derive(Debug)]
pub enum Read {
    /// The pod answered (any status but 409): passed through as is.
    Answer(StatusCode, Bytes),
    /// The pod does not own the guild (409).
    NotOwner(NotOwner),
}

/// The client for every pod's internal API.
#[derive(Clone)]
pub struct Pods {
    client: reqwest::Client,
    template: UrlTemplate,
    token: Secret,
}

impl Pods {
    /// Builds the pooled client.
    ///
    /// # Errors
    /// The client's error when its TLS backend cannot be initialised.
    pub fn new(template: UrlTemplate, token: Secret) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_POD)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Pods {
            client,
            template,
            token,
        })
    }

    fn url(&self, ordinal: Ordinal, path: &str) -> String {
        format!("{}{path}", self.template.url_for(ordinal))
    }

    fn classify(ordinal: Ordinal, err: reqwest::Error) -> RouteError {
        if err.is_connect() {
            RouteError::Connect {
                ordinal,
                source: err,
            }
        } else if err.is_timeout() {
            RouteError::Timeout { ordinal }
        } else {
            RouteError::Failed {
                ordinal,
                reason: err.to_string(),
            }
        }
    }

    /// POSTs an interaction to `ordinal`, telling it to answer (or defer) within `deadline`;
    /// the call itself gives up after `timeout`.
    ///
    /// # Errors
    /// [`RouteError`]: connect failures (nothing sent), timeouts, a 400 ([`RouteError::Rejected`]),
    /// 5xx and malformed answers.
    pub async fn interaction(
        &self,
        ordinal: Ordinal,
        body: Bytes,
        deadline: Duration,
        timeout: Duration,
    ) -> Result<Forwarded, RouteError> {
        let response = self
            .client
            .post(self.url(ordinal, "/internal/v1/interactions"))
            .bearer_auth(self.token.expose())
            .header(DEADLINE_HEADER, deadline.as_millis().to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| Self::classify(ordinal, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Self::classify(ordinal, e))?;
        let failed = |reason: String| RouteError::Failed { ordinal, reason };
        match status {
            s if s.is_success() => serde_json::from_slice(&bytes)
                .map(Forwarded::Outcome)
                .map_err(|e| failed(format!("malformed interaction outcome: {e}"))),
            StatusCode::CONFLICT => serde_json::from_slice(&bytes)
                .map(Forwarded::NotOwner)
                .map_err(|e| failed(format!("malformed 409 body: {e}"))),
            StatusCode::BAD_REQUEST => Err(RouteError::Rejected {
                ordinal,
                reason: serde_json::from_slice::<ErrorBody>(&bytes)
                    .map_or_else(|_| "answered 400".to_owned(), |b| b.error),
            }),
            s => Err(failed(format!("answered {s}"))),
        }
    }

    /// `GET /internal/v1/status` of `ordinal`.
    ///
    /// # Errors
    /// [`RouteError`] when the pod cannot be reached or answers anything but a status report.
    pub async fn status(&self, ordinal: Ordinal) -> Result<StatusReport, RouteError> {
        let response = self
            .client
            .get(self.url(ordinal, "/internal/v1/status"))
            .bearer_auth(self.token.expose())
            .timeout(READ_TIMEOUT)
            .send()
            .await
            .map_err(|e| Self::classify(ordinal, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(RouteError::Failed {
                ordinal,
                reason: format!("status answered {status}"),
            });
        }
        response
            .json()
            .await
            .map_err(|e| Self::classify(ordinal, e))
    }

    /// `GET /internal/v1/guilds/{guild}/stats` of `ordinal`.
    ///
    /// # Errors
    /// [`RouteError`] when the pod cannot be reached, or answers 5xx or a malformed 409.
    pub async fn guild_stats(&self, ordinal: Ordinal, guild: GuildId) -> Result<Read, RouteError> {
        let response = self
            .client
            .get(self.url(ordinal, &format!("/internal/v1/guilds/{guild}/stats")))
            .bearer_auth(self.token.expose())
            .timeout(READ_TIMEOUT)
            .send()
            .await
            .map_err(|e| Self::classify(ordinal, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Self::classify(ordinal, e))?;
        match status {
            StatusCode::CONFLICT => {
                serde_json::from_slice(&bytes)
                    .map(Read::NotOwner)
                    .map_err(|e| RouteError::Failed {
                        ordinal,
                        reason: format!("malformed 409 body: {e}"),
                    })
            }
            s if s.is_server_error() => Err(RouteError::Failed {
                ordinal,
                reason: format!("answered {s}"),
            }),
            s => Ok(Read::Answer(s, bytes)),
        }
    }
}
