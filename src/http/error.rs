//! How the HTTP service answers a request it cannot serve: one [`AppError`] whose
//! `IntoResponse` picks the status and a JSON body `{"error": "..."}`.
//!
//! Client mistakes (401, 400, 413) say what was wrong and are not logged as errors: the
//! internet sends junk to any public endpoint. An unavailable owner pod is a 503 on the API
//! routes (interactions never see it: they get a polite ephemeral message instead). Internal
//! failures are logged here and answered with a generic body, so no detail leaks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::{error, warn};

use crate::wire::ErrorBody;

use super::metrics::Outcome;

/// A request the service refuses or could not serve.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The signature, timestamp or bearer token is missing or wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The body or a path parameter is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body is larger than the limit.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The gateway pod that owns the guild (or every pod) could not answer.
    #[error("owner pod unavailable: {0}")]
    OwnerUnavailable(String),
    /// Something failed inside the service; the cause is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::OwnerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            AppError::Unauthorized(_) => Outcome::Unauthorized,
            AppError::BadRequest(_) => Outcome::BadRequest,
            AppError::PayloadTooLarge { .. } => Outcome::TooLarge,
            AppError::OwnerUnavailable(_) => Outcome::OwnerUnavailable,
            AppError::Internal(_) => Outcome::Error,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let outcome = self.outcome();
        let message = match &self {
            AppError::Internal(cause) => {
                error!(cause = %cause, "request failed");
                "internal error".to_owned()
            }
            AppError::OwnerUnavailable(cause) => {
                warn!(cause = %cause, "owner pod unavailable");
                "the gateway pod that owns this guild is unavailable; try again shortly".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        response.extensions_mut().insert(outcome);
        response
    }
}
