//! Bounded waiting: retry a condition instead of sleeping a fixed time.

use std::time::{Duration, Instant};

/// How long `eventually` waits by default; `GUILDSHARD_TEST_PATIENCE_SECS` raises it on slow
/// machines.
pub fn patience() -> Duration {
    let secs = std::env::var("GUILDSHARD_TEST_PATIENCE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    Duration::from_secs(secs)
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `patience()`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(patience(), what, &mut check).await
}

/// Like [`eventually`] with an explicit deadline.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
