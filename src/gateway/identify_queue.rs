//! One identify queue for the whole cluster (DESIGN §6): Discord lets a bot start
//! `max_concurrency` sessions per 5 s, counted bot-wide, with shard `s` in bucket
//! `s % max_concurrency`. Pods that each paced only themselves drew refused identifies.
//!
//! The queue is kept by the lowest live ordinal (the [`IdentifyGate`]); every pod's shards ask
//! it through [`ClusterQueue`], twilight's `Queue` trait, before they IDENTIFY. A RESUME does
//! not go through it: Discord does not count resumes.
//!
//! When the keeper changes (it died, or a lower ordinal came back), the new keeper lets nothing
//! through for one window, so its first grants cannot collide with the last ones of the old
//! keeper.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};
use twilight_gateway_queue::Queue;

use crate::gateway::members::Members;
use crate::ownership::Ordinal;
use crate::pod_client::PodClient;

/// Discord's identify window.
pub const IDENTIFY_WINDOW: Duration = Duration::from_secs(5);
/// Added to every window: the gateway measures arrival, not our send time.
const MARGIN: Duration = Duration::from_millis(250);
/// How long a pod waits before asking again when the keeper could not be reached.
const RETRY: Duration = Duration::from_secs(1);

/// The keeper's side: one FIFO per bucket; the shard at its head identifies when the bucket's
/// window has passed. A shard that stops waiting (released to another pod meanwhile) gives its
/// turn to the next one instead of wasting a window.
#[derive(Debug)]
pub struct IdentifyGate {
    max_concurrency: u32,
    /// When this pod first let a shard through (its first window is kept empty).
    opened_at: Mutex<Option<Instant>>,
    /// Per bucket: when it may next let a shard through (a fair lock: waiters go in order).
    buckets: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl IdentifyGate {
    /// A gate for a bot with `max_concurrency` identifies per window (at least 1).
    pub fn new(max_concurrency: u32) -> Self {
        IdentifyGate {
            max_concurrency: max_concurrency.max(1),
            opened_at: Mutex::new(None),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `shard` may identify.
    pub async fn grant(&self, shard: u32) {
        let opened = *self
            .opened_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        let bucket = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(shard % self.max_concurrency)
            .or_default()
            .clone();
        let mut next = bucket.lock().await;
        let at = next
            .unwrap_or(opened + IDENTIFY_WINDOW + MARGIN)
            .max(Instant::now());
        debug!(
            shard,
            wait_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64,
            "identify queued"
        );
        tokio::time::sleep_until(at).await;
        *next = Some(Instant::now() + IDENTIFY_WINDOW + MARGIN);
    }
}

/// A pod's side of the queue: asks the keeper (itself, when it is the lowest live ordinal).
#[derive(Clone, Debug)]
pub struct ClusterQueue {
    me: Ordinal,
    gate: Arc<IdentifyGate>,
    live: watch::Receiver<Members>,
    peers: PodClient,
}

impl ClusterQueue {
    /// A queue for pod `me`, which keeps `gate` when it is the lowest of `live`.
    pub fn new(
        me: Ordinal,
        gate: Arc<IdentifyGate>,
        live: watch::Receiver<Members>,
        peers: PodClient,
    ) -> Self {
        ClusterQueue {
            me,
            gate,
            live,
            peers,
        }
    }

    /// The keeper under the current view: the lowest live ordinal.
    fn keeper(&self) -> Ordinal {
        self.live
            .borrow()
            .live
            .iter()
            .copied()
            .chain(std::iter::once(self.me))
            .min()
            .unwrap_or(self.me)
    }

    async fn wait_turn(&self, shard: u32) {
        loop {
            let keeper = self.keeper();
            if keeper == self.me {
                self.gate.grant(shard).await;
                return;
            }
            match self.peers.identify(keeper, shard).await {
                Ok(()) => return,
                Err(err) => {
                    warn!(shard, keeper = keeper.0, cause = %err, "identify queue unreachable; asking again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

impl Queue for ClusterQueue {
    fn enqueue(&self, shard: u32) -> oneshot::Receiver<()> {
        let (mut tx, rx) = oneshot::channel();
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                // The shard was dropped (released to another pod) while it waited.
                () = tx.closed() => {}
                () = queue.wait_turn(shard) => {
                    let _ = tx.send(());
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_identify_per_bucket_per_window_after_an_empty_first_window() {
        let gate = Arc::new(IdentifyGate::new(2));
        let start = Instant::now();
        let mut waits = Vec::new();
        for shard in 0u32..5 {
            let gate = gate.clone();
            waits.push(tokio::spawn(async move {
                gate.grant(shard).await;
                Instant::now() - start
            }));
            // Let each waiter queue before the next, so the order is the spawn order.
            tokio::task::yield_now().await;
        }
        let mut slots = Vec::new();
        for w in waits {
            slots.push(w.await.expect("grant task"));
        }
        let w = IDENTIFY_WINDOW + MARGIN;
        // Shards 0, 2, 4 share bucket 0; 1, 3 bucket 1.
        assert_eq!(slots, vec![w, w, 2 * w, 2 * w, 3 * w]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_that_stops_waiting_gives_its_turn_to_the_next() {
        let gate = Arc::new(IdentifyGate::new(1));
        let start = Instant::now();
        gate.grant(0).await;
        let cancelled = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.grant(1).await })
        };
        tokio::task::yield_now().await;
        cancelled.abort();
        gate.grant(2).await;
        let w = IDENTIFY_WINDOW + MARGIN;
        assert_eq!(Instant::now() - start, 2 * w);
    }
}
