//! Errors: [`Error`] for the in-process API, and the HTTP answers as `Status` objects with the
//! real API server's codes, reasons and wording.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::objects;

/// What can go wrong starting the stand-in or changing its StatefulSet in process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener has no local address.
    #[error("listener has no local address")]
    Listener(#[source] std::io::Error),
    /// The StatefulSet is deleted (see [`super::KubeApi::delete_statefulset`]).
    #[error("statefulsets.apps {0:?} not found")]
    NotFound(String),
    /// The change was refused, with the API server's message.
    #[error("{0}")]
    Rejected(String),
}

impl From<ApiError> for Error {
    fn from(err: ApiError) -> Self {
        match err.reason {
            "NotFound" => Error::NotFound(
                err.details
                    .as_ref()
                    .and_then(|d| d["name"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => Error::Rejected(err.message),
        }
    }
}

/// An API error answer: a `Status` object with its HTTP code.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status code.
    pub(crate) code: u16,
    /// The `reason` (`NotFound`, `Forbidden`, …).
    pub(crate) reason: &'static str,
    /// The human-readable message, in the real server's words.
    pub(crate) message: String,
    /// `details`, when the real server sends them.
    pub(crate) details: Option<Value>,
}

fn sts_details(name: &str) -> Option<Value> {
    Some(json!({"name": name, "group": "apps", "kind": "statefulsets"}))
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        Self {
            code,
            reason,
            message,
            details,
        }
    }

    /// 401: no or an unknown bearer token.
    pub(crate) fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 403 from RBAC: `user` may not `verb` the `resource` (named `name`, if any) in `namespace`
    /// (cluster scope when `None`).
    pub(crate) fn forbidden(
        user: &str,
        verb: &str,
        resource: &str,
        name: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        let subject = match name {
            Some(name) => format!("statefulsets.apps {name:?}"),
            None => "statefulsets.apps".to_owned(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{subject} is forbidden: User {user:?} cannot {verb} resource {resource:?} in API group \"apps\" {scope}"
        );
        Self::new(
            403,
            "Forbidden",
            message,
            sts_details(name.unwrap_or_default()),
        )
    }

    /// 404 for the named StatefulSet.
    pub(crate) fn not_found(name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("statefulsets.apps {name:?} not found"),
            sts_details(name),
        )
    }

    /// 404 for a namespace other than the StatefulSet's.
    pub(crate) fn namespace_not_found(name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("namespaces {name:?} not found"),
            Some(json!({"name": name, "kind": "namespaces"})),
        )
    }

    /// 404 for a path that serves nothing.
    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    /// 405 for a method a path does not serve.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Some(json!({})),
        )
    }

    /// 409 for an update based on an outdated resourceVersion.
    pub(crate) fn conflict(name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on statefulsets.apps {name:?}: the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
            sts_details(name),
        )
    }

    /// 400 for a request that cannot be understood.
    pub(crate) fn bad_request(message: &str) -> Self {
        Self::new(400, "BadRequest", message.to_owned(), None)
    }

    /// 415 for a patch type not served.
    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
            None,
        )
    }

    /// 422 for a value the StatefulSet validation refuses; `cause` is `field: what`.
    pub(crate) fn invalid(name: &str, cause: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("StatefulSet.apps {name:?} is invalid: {cause}"),
            Some(json!({"name": name, "group": "apps", "kind": "StatefulSet"})),
        )
    }

    /// 410 for a resourceVersion older than the kept history.
    pub(crate) fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
            None,
        )
    }

    /// The `Status` object.
    pub(crate) fn status(&self) -> Value {
        objects::status_failure(self.code, self.reason, &self.message, self.details.clone())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            self.status().to_string(),
        )
            .into_response()
    }
}
