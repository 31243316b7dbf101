//! Watch streams: a chunked `200` response of newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}` frames, with the API server's
//! resourceVersion semantics (see [`super::query::Start`]). One task per watch, tracked by the
//! stand-in's [`crate::shutdown::Shutdown`]; it ends cleanly at `timeoutSeconds` or shutdown and
//! abruptly (the body fails, so the connection is dropped mid-stream) when watches are broken.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::ApiError;
use super::objects::{str_at, APPS_V1};
use super::query::{ListQuery, Start};
use super::KubeApi;

/// Frames buffered between the watch task and the connection.
const BUFFER: usize = 64;

/// Starts a watch of the StatefulSets in `namespace` (all namespaces when `None`) and returns
/// its streaming response.
pub(crate) fn respond(api: &KubeApi, namespace: Option<String>, query: ListQuery) -> Response {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, io::Error>>(BUFFER);
    api.shared.counters.watch_opened();
    let task = Watch {
        api: api.clone(),
        namespace,
        query,
        tx,
    };
    api.shared.shutdown.tracker().spawn(task.run());
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

struct Watch {
    api: KubeApi,
    namespace: Option<String>,
    query: ListQuery,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
}

/// Why a watch ended.
enum End {
    /// The client went away or the stream ended normally.
    Clean,
    /// Watches were broken: fail the body so the connection drops.
    Broken,
}

impl Watch {
    async fn run(self) {
        let breaker = self.api.watch_breaker();
        let end = tokio::select! {
            biased;
            () = breaker.cancelled() => End::Broken,
            end = self.stream() => end,
        };
        if let End::Broken = end {
            let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "watch broken");
            let _ = self.tx.send(Err(cut)).await;
        }
        self.api.shared.counters.watch_closed();
    }

    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| str_at(obj, "/metadata/namespace") == ns)
            && self.query.matches(obj)
    }

    /// Sends one frame; `false` when the client is gone.
    async fn send(&self, kind: &str, object: &Value) -> bool {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn bookmark(&self, rv: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": "StatefulSet", "apiVersion": APPS_V1, "metadata": metadata});
        self.send("BOOKMARK", &object).await
    }

    async fn stream(&self) -> End {
        let shared = &self.api.shared;
        // Subscribe before reading the state so that no change falls in between.
        let mut changes = shared.snapshots.subscribe();
        let (mut sent, initial) = {
            let state = self.api.lock();
            match self.query.start {
                Start::Current => (
                    state.rv(),
                    state.object().filter(|o| self.matches(o)).cloned(),
                ),
                Start::After(rv) => (rv, None),
            }
        };
        if let Some(obj) = initial {
            if !self.send("ADDED", &obj).await {
                return End::Clean;
            }
        }
        if self.query.initial_events && self.query.bookmarks && !self.bookmark(sent, true).await {
            return End::Clean;
        }
        let deadline = self.query.timeout.map(|t| Instant::now() + t);
        let interval = Duration::from_millis(shared.cfg.bookmark_interval_ms.max(1));
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        let stop = shared.shutdown.cancelled();
        tokio::pin!(stop);
        loop {
            let events = self.api.lock().events_after(sent);
            match events {
                Err(expired) => {
                    let status = ApiError::expired(sent, expired.oldest).status();
                    self.send("ERROR", &status).await;
                    return End::Clean;
                }
                Ok(events) => {
                    for event in events {
                        sent = event.rv;
                        if self.matches(&event.object)
                            && !self.send(event.kind.as_str(), &event.object).await
                        {
                            return End::Clean;
                        }
                    }
                }
            }
            let timeout = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => return End::Clean,
                () = self.tx.closed() => return End::Clean,
                () = timeout => return End::Clean,
                _ = ticks.tick(), if self.query.bookmarks => {
                    if !self.bookmark(sent, false).await {
                        return End::Clean;
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return End::Clean;
                    }
                }
            }
        }
    }
}
