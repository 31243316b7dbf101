//! The outage switch at the connection level. While an outage is on, every accepted connection
//! is closed at once without an answer, and connections that were open (idle keep-alives, watch
//! streams, requests in flight) are cut; when it is off, the same listener serves again on the
//! same address.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The switch shared by the listener, its connections and the [`super::KubeApi`] handle.
#[derive(Default)]
pub(crate) struct Gate {
    outage: AtomicBool,
    /// Cancelled (and replaced) when an outage starts: cuts every connection opened before.
    connections: Mutex<CancellationToken>,
    /// Connections closed unanswered because of an outage.
    pub(crate) dropped: AtomicU64,
}

impl Gate {
    /// Turns the outage on or off. Turning it on cuts every open connection.
    pub(crate) fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
        if on {
            let old = std::mem::take(&mut *self.lock());
            old.cancel();
        }
    }

    /// Whether the outage is on.
    pub(crate) fn is_out(&self) -> bool {
        self.outage.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        // The token is replaced whole; a poisoned lock still holds a valid one.
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A [`TcpListener`] behind the [`Gate`].
pub(crate) struct GatedListener {
    inner: TcpListener,
    gate: Arc<Gate>,
}

impl GatedListener {
    pub(crate) fn new(inner: TcpListener, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl axum::serve::Listener for GatedListener {
    type Io = GatedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(cause = %err, "kube api accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.gate.is_out() {
                self.gate.dropped.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
            let token = self.gate.lock().clone();
            return (
                GatedStream {
                    inner: stream,
                    cut: Box::pin(token.clone().cancelled_owned()),
                    token,
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails every read and write once its outage token is cancelled, so hyper
/// drops it as it would a reset connection.
pub(crate) struct GatedStream {
    inner: TcpStream,
    token: CancellationToken,
    /// Registers the connection's task to be woken when the token is cancelled.
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl GatedStream {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // Once cancelled, never poll the finished future again.
        if self.token.is_cancelled() || self.cut.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "kube api outage",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for GatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
