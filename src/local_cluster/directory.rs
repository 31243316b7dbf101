//! The directory proxy: Kubernetes gives every gateway pod a stable DNS name
//! (`gateway-<k>.gateway-internal`); locally every pod binds a random port, so this proxy plays
//! that part. `http://127.0.0.1:<proxy>/pods/<ordinal>/<path>` is forwarded to wherever that
//! ordinal's internal API listens now; a pod that is not running answers 503 at once, as a
//! refused connection would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

/// Where each pod's internal API currently listens.
pub(crate) type Directory = Arc<RwLock<HashMap<u32, SocketAddr>>>;

#[derive(Clone)]
struct ProxyState {
    directory: Directory,
    client: reqwest::Client,
}

pub(crate) fn directory_app(directory: Directory) -> Router {
    let state = ProxyState {
        directory,
        // No overall timeout: the caller sets its own deadlines. Connect fast, though.
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default(),
    };
    Router::new()
        .route("/pods/{ordinal}/{*rest}", any(forward))
        .with_state(state)
}

async fn forward(
    State(state): State<ProxyState>,
    UrlPath((ordinal, rest)): UrlPath<(u32, String)>,
    request: Request,
) -> Response {
    let addr = state
        .directory
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&ordinal)
        .copied();
    let Some(addr) = addr else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("gateway-{ordinal} is not running"),
        )
            .into_response();
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("http://{addr}/{rest}{query}");
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let mut outgoing = state.client.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            for (name, value) in &headers {
                if name != axum::http::header::TRANSFER_ENCODING
                    && name != axum::http::header::CONTENT_LENGTH
                {
                    out.headers_mut().insert(name, value.clone());
                }
            }
            out
        }
        Err(err) => (StatusCode::BAD_GATEWAY, format!("gateway-{ordinal}: {err}")).into_response(),
    }
}
