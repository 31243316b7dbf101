//! Graceful shutdown: one token that every task watches, and the OS signals that trip it.
//!
//! Level 0. `main` creates the one [`Shutdown`] and trips it on SIGTERM/SIGINT (Kubernetes sends
//! SIGTERM to start a graceful shutdown); tests create their own and trip it by hand. Tasks that
//! must finish before the process exits are spawned on [`Shutdown::tracker`], and
//! [`Shutdown::drain`] waits for them within a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A shutdown signal plus the set of tasks that must finish before exit.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A shutdown that nothing has tripped yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown: every task watching [`Shutdown::cancelled`] wakes up.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the shutdown has started.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// A child token, cancelled with this shutdown, for APIs that want a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The tasks that [`Shutdown::drain`] waits for.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Trips the shutdown, then waits up to `grace` for tracked tasks. Returns `false` (after a
    /// warning) when the grace period ran out first.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.trigger();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_ok() {
            true
        } else {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "grace period ran out before every task finished"
            );
            false
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                    _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                }
            }
            Err(err) => {
                tracing::warn!(cause = %err, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tracked_tasks() {
        let shutdown = Shutdown::new();
        let watcher = shutdown.cancelled();
        let (tx, rx) = tokio::sync::oneshot::channel();
        shutdown.tracker().spawn(async move {
            watcher.await;
            let _ = tx.send(());
        });
        assert!(shutdown.drain(Duration::from_secs(5)).await);
        assert!(rx.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_reports_a_task_that_overruns() {
        let shutdown = Shutdown::new();
        shutdown
            .tracker()
            .spawn(tokio::time::sleep(Duration::from_secs(3600)));
        assert!(!shutdown.drain(Duration::from_secs(1)).await);
    }
}
