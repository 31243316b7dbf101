//! Covers that start in the past: when the resharding coordinator starts covering a peer that
//! went down, the dispatches of that peer's guilds this pod received since the cover's start
//! time (when the peer was last seen live, less a margin) and held are processed here; and
//! when it sees that a peer restarted between two polls (nobody covered it), those of the
//! stretch it missed.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tracing::{info, warn};

use crate::gateway::handler::handle_owned;
use crate::gateway::pod::Pod;
use crate::ownership::Ordinal;
use crate::reshard::topology::ReplayRequest;

/// Held dispatches processed at once during a replay (they are independent writes).
const REPLAY_CONCURRENCY: usize = 64;

/// Follows the pod's view until `stop` and replays for every cover that starts.
pub async fn run(pod: Arc<Pod>, stop: impl std::future::Future<Output = ()>) {
    let mut changes = pod.ownership.subscribe();
    let mut replayed: BTreeMap<Ordinal, u64> = BTreeMap::new();
    tokio::pin!(stop);
    loop {
        let state = pod.ownership.snapshot();
        let started: Vec<(Ordinal, u64)> = state
            .covering
            .iter()
            .filter(|(o, since)| replayed.get(o) != Some(since))
            .map(|(o, since)| (*o, *since))
            .collect();
        // A new cover: from its start on. A peer that restarted between two polls: the
        // stretch it missed.
        let mut wanted: Vec<ReplayRequest> = started
            .iter()
            .map(|&(o, since)| ReplayRequest {
                for_ordinal: o,
                from_ms: since,
                to_ms: u64::MAX,
            })
            .collect();
        wanted.extend(pod.ownership.take_replay_requests());
        if !wanted.is_empty() {
            let taken = pod.replay.take(|h| {
                wanted.iter().any(|r| {
                    (r.from_ms..=r.to_ms).contains(&h.received_ms)
                        && state.belongs_to(h.class.guild, r.for_ordinal)
                })
            });
            for late in wanted
                .iter()
                .filter(|r| taken.evicted_through_ms.is_some_and(|t| r.from_ms <= t))
            {
                // The events of the peer's guilds received between `from_ms` and the eviction
                // are no longer here; the peer may or may not have processed them itself.
                pod.metrics.covers_late.inc();
                warn!(
                    peer = late.for_ordinal.0,
                    from_ms = late.from_ms,
                    evicted_through_ms = taken.evicted_through_ms,
                    "a cover reaches back further than the held events: some may be lost"
                );
            }
            let held = taken.events;
            let count = held.len();
            let pod = &pod;
            futures::stream::iter(held)
                .for_each_concurrent(REPLAY_CONCURRENCY, |h| async move {
                    pod.metrics.events_replayed.inc();
                    handle_owned(pod, &h.class, *h.event).await;
                })
                .await;
            info!(
                replayed = count,
                peers = ?wanted.iter().map(|r| r.for_ordinal.0).collect::<Vec<_>>(),
                "held events replayed for peers that missed them"
            );
        }
        replayed = state.covering;
        tokio::select! {
            () = &mut stop => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
