//! Forwarding a Discord interaction to its owner pod, with the time it has to answer.

use std::time::Duration;

use axum::body::Bytes;
use reqwest::{Method, StatusCode};

use crate::internal_paths as paths;
use crate::ownership::Ordinal;
use crate::wire::{ErrorBody, InteractionOutcome, NotOwner, DEADLINE_HEADER};

use super::{PodClient, PodError};

/// What a pod answered to an interaction.
#[derive(Debug)]
pub enum Forwarded {
    /// The pod owns the guild and answered.
    Outcome(InteractionOutcome),
    /// The pod does not own the guild under its topology (409).
    NotOwner(NotOwner),
}

impl PodClient {
    /// POSTs an interaction to `ordinal`, telling it to answer (or defer) within `deadline`;
    /// the call itself gives up after `timeout`.
    ///
    /// # Errors
    /// [`PodError`]: connect failures (nothing sent), timeouts, a 400 ([`PodError::Rejected`]),
    /// a 503 ([`PodError::Unavailable`], nothing done), other 5xx and malformed answers.
    pub async fn interaction(
        &self,
        ordinal: Ordinal,
        body: Bytes,
        deadline: Duration,
        timeout: Duration,
    ) -> Result<Forwarded, PodError> {
        let response = self
            .call(ordinal, Method::POST, paths::INTERACTIONS, timeout)
            .header(DEADLINE_HEADER, deadline.as_millis().to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        let failed = |reason: String| PodError::Failed { ordinal, reason };
        match status {
            s if s.is_success() => serde_json::from_slice(&bytes)
                .map(Forwarded::Outcome)
                .map_err(|e| failed(format!("malformed interaction outcome: {e}"))),
            StatusCode::CONFLICT => serde_json::from_slice(&bytes)
                .map(Forwarded::NotOwner)
                .map_err(|e| failed(format!("malformed 409 body: {e}"))),
            StatusCode::BAD_REQUEST => Err(PodError::Rejected {
                ordinal,
                reason: serde_json::from_slice::<ErrorBody>(&bytes)
                    .map_or_else(|_| "answered 400".to_owned(), |b| b.error),
            }),
            StatusCode::SERVICE_UNAVAILABLE => Err(PodError::Unavailable {
                ordinal,
                reason: serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
                    |_| String::from_utf8_lossy(&bytes).trim().to_owned(),
                    |b| b.error,
                ),
            }),
            s => Err(failed(format!("answered {s}"))),
        }
    }
}
