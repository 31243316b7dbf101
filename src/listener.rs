//! Serving a [`Router`] on a bound listener with the limits a public socket needs: a cap on
//! open connections, a deadline for a request's headers (which is also how long an idle
//! keep-alive connection may stay open), a deadline for its body, and a bounded drain on
//! shutdown.
//!
//! Level 0: used by every HTTP listener of the HTTP service and of the gateway pods.
//!
//! Plain `axum::serve` sets none of these: a client that opens a connection and sends nothing,
//! half a request head, or a body one byte at a time kept its socket (and a file descriptor)
//! for as long as it liked, and a few hundred of them starved real requests. Here each
//! connection holds a permit of a semaphore sized below the process's open-file limit, hyper
//! closes a connection whose next request head is not complete within
//! [`Limits::header_read`], and a body that is not complete within [`Limits::body`] of its
//! head fails (the handler answers 400 and the connection closes).
//!
//! Every request also carries an [`Arrival`]: when its head was read, before any middleware or
//! queueing, so deadlines (Discord's 3 s) count from there.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::Router;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn, Instrument};

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once; past it the listener stops accepting (new connections
    /// wait in the kernel's backlog) until one closes. Lowered to half the open-file limit
    /// when that is smaller, so outgoing connections and the database keep their descriptors.
    pub max_connections: usize,
    /// How long a request head may take to arrive, counted from when the connection is ready
    /// for it: on a new connection, and after each response (so it is the idle timeout too).
    pub header_read: Duration,
    /// How long a request body may take to arrive completely, counted from its head.
    pub body: Duration,
    /// After shutdown starts, how long open connections get to finish their requests before
    /// they are dropped.
    pub drain: Duration,
}

impl Limits {
    /// For sockets the internet can reach (the HTTP service, the pods' probes): Discord sends
    /// a whole interaction at once and needs an answer within 3 s, so a head or body that
    /// takes seconds is not Discord.
    pub const PUBLIC: Limits = Limits {
        max_connections: 1024,
        header_read: Duration::from_secs(10),
        body: Duration::from_secs(5),
        drain: Duration::from_secs(5),
    };

    /// For the pods' internal API: in-cluster callers keep pooled connections, so idle ones
    /// may stay longer (callers' pools let them go sooner, see `pod_client`), and a command
    /// may run for up to 10 s before it answers.
    pub const INTERNAL: Limits = Limits {
        max_connections: 1024,
        header_read: Duration::from_secs(30),
        body: Duration::from_secs(10),
        drain: Duration::from_secs(15),
    };

    /// `max_connections` lowered to half the soft open-file limit when that is smaller.
    fn effective_max_connections(&self) -> usize {
        let cap = self.max_connections.max(1);
        match open_files_limit() {
            Some(limit) => cap.min(usize::try_from(limit / 2).unwrap_or(usize::MAX).max(1)),
            None => cap,
        }
    }
}

/// When a request's head had been read, stamped into its extensions before any middleware.
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub Instant);

/// The request body did not arrive within [`Limits::body`].
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimedOut(Duration);

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux); `None` where
/// that cannot be read or says "unlimited".
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `app` on `listener` until `stop` completes, then stops accepting, lets open
/// connections finish within [`Limits::drain`] and drops the rest.
///
/// # Errors
/// Never at present: a failed accept (out of descriptors, a reset before accept) is logged
/// and retried, as one bad connection must not stop the listener.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = limits.effective_max_connections();
    let permits = Arc::new(Semaphore::new(max));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    debug!(max_connections = max, "listener limits");
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    warn!(cause = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(
            connection(stream, app.clone(), limits, permit, closing.clone()).in_current_span(),
        );
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "connections still open after the drain period; dropping them"
        );
    }
    Ok(())
}

/// One connection: HTTP/1.1 with the header deadline, every request stamped and its body
/// bounded; on `closing`, finish the request in flight and close.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    permit: OwnedSemaphorePermit,
    closing: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let request = stamp(request, limits.body);
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = served {
        // Timeouts, resets and malformed requests: the client's problem, not ours.
        debug!(cause = %err, "connection ended with an error");
    }
    drop(permit);
}

/// Stamps the [`Arrival`] and bounds the body's total time.
fn stamp(request: hyper::Request<Incoming>, body_limit: Duration) -> Request {
    let arrived = Instant::now();
    let (mut parts, incoming) = request.into_parts();
    parts.extensions.insert(Arrival(arrived));
    let body = if incoming.is_end_stream() {
        Body::new(incoming)
    } else {
        deadline_body(Body::new(incoming), arrived + body_limit, body_limit)
    };
    Request::from_parts(parts, body)
}

/// `body`, failing with [`BodyTimedOut`] once `deadline` passes before its end.
fn deadline_body(body: Body, deadline: Instant, limit: Duration) -> Body {
    let deadline = tokio::time::Instant::from_std(deadline);
    let stream = futures::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut data = state?;
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(data))),
            Ok(Some(Err(err))) => Some((Err(axum::BoxError::from(err)), None)),
            Ok(None) => None,
            // Dropping the stream here drops hyper's body, which closes the connection.
            Err(_) => Some((Err(axum::BoxError::from(BodyTimedOut(limit))), None)),
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_open_files_limit_and_caps_below_it() {
        // Linux CI: the limit is known, and the cap is at most half of it.
        if let Some(limit) = open_files_limit() {
            let limits = Limits {
                max_connections: usize::MAX,
                ..Limits::PUBLIC
            };
            let cap = limits.effective_max_connections() as u64;
            assert!(cap >= 1 && cap <= limit.max(2) / 2, "{cap} vs {limit}");
        }
        let tiny = Limits {
            max_connections: 0,
            ..Limits::PUBLIC
        };
        assert_eq!(tiny.effective_max_connections(), 1);
    }

    #[tokio::test]
    async fn a_body_past_its_deadline_fails_and_a_prompt_one_passes() {
        let prompt = deadline_body(
            Body::from("hello"),
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
        );
        let bytes = axum::body::to_bytes(prompt, 1024).await.expect("in time");
        assert_eq!(&bytes[..], b"hello");

        let never = Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, io::Error>,
        >());
        let late = deadline_body(
            never,
            Instant::now() + Duration::from_millis(20),
            Duration::from_millis(20),
        );
        let err = tokio::time::timeout(Duration::from_secs(5), axum::body::to_bytes(late, 1024))
            .await
            .expect("the deadline ends it")
            .expect_err("times out");
        assert!(format!("{err:?}").contains("BodyTimedOut"), "{err:?}");
    }
}
