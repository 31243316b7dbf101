//! The connector's side of delivery (DESIGN §6): one queue per owner ordinal, each drained by
//! one task that sends batches to the pod that processes the owner's guilds now and
//! acknowledges what it committed.
//!
//! - The destination is decided at send time, not at receipt: the owner while it is live; its
//!   cover ([`shard_map::cover_of`]) while it is not. A batch that fails stays at the head of
//!   its queue and goes again, so a queue always starts at its first unacknowledged dispatch.
//! - Each queue is bounded ([`QUEUE_BOUND`]): when an owner falls that far behind, the shard
//!   readers wait (Discord keeps the rest), and `gateway_delivery_queue_full` counts it.
//! - A batch is whatever waited when the previous one was answered (up to [`BATCH_MAX`]), so
//!   batches grow with the load and one request per owner is in flight at a time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tracing::{info, warn, Instrument};

use crate::gateway::acks::AckTicket;
use crate::gateway::intake;
use crate::gateway::members::Members;
use crate::gateway::pod::Pod;
use crate::gateway::shard_map;
use crate::ownership::Ordinal;
use crate::pod_client::events_body;
use crate::wire::Delivery;

/// Dispatches waiting for one owner before the shard readers wait.
pub const QUEUE_BOUND: usize = 50_000;
/// The most dispatches in one request.
const BATCH_MAX: usize = 512;
/// How long to wait before offering again a dispatch the destination said is not its own.
const NOT_MINE_RETRY: Duration = Duration::from_millis(200);
/// Back-off bounds for a destination that cannot be reached.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// One dispatch waiting for an owner.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Its shard.
    pub shard: u32,
    /// Its sequence number.
    pub seq: u64,
    /// The frame as Discord sent it (shared when it goes to several owners).
    pub frame: Arc<str>,
    /// Acknowledges this copy.
    pub ticket: AckTicket,
}

/// The queue of one owner.
#[derive(Debug)]
struct OwnerQueue {
    waiting: Mutex<VecDeque<Outgoing>>,
    wake: Notify,
    room: Semaphore,
}

/// Every owner's queue on this pod, and the tasks that drain them.
#[derive(Debug)]
pub struct Router {
    queues: Mutex<BTreeMap<Ordinal, Arc<OwnerQueue>>>,
    live: watch::Receiver<Members>,
}

impl Router {
    /// A router that sends to the pods in `live` (this pod included while it takes dispatches).
    pub fn new(live: watch::Receiver<Members>) -> Self {
        Router {
            queues: Mutex::new(BTreeMap::new()),
            live,
        }
    }

    /// Queues `out` for `owner`, waiting while that owner's queue is full.
    pub async fn route(&self, pod: &Arc<Pod>, owner: Ordinal, out: Outgoing) {
        let queue = self.queue(pod, owner);
        if queue.room.available_permits() == 0 {
            pod.metrics.delivery_queue_full.inc();
        }
        match queue.room.acquire().await {
            // Given back when the dispatch leaves the queue (acknowledged).
            Ok(permit) => permit.forget(),
            Err(_) => return,
        }
        queue
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(out);
        queue.wake.notify_one();
    }

    /// Dispatches waiting for any owner.
    pub fn waiting(&self) -> u64 {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|q| {
                q.waiting
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len() as u64
            })
            .sum()
    }

    /// The queue of `owner`, with its sender task started on first use.
    fn queue(&self, pod: &Arc<Pod>, owner: Ordinal) -> Arc<OwnerQueue> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        queues
            .entry(owner)
            .or_insert_with(|| {
                let queue = Arc::new(OwnerQueue {
                    waiting: Mutex::new(VecDeque::new()),
                    wake: Notify::new(),
                    room: Semaphore::new(QUEUE_BOUND),
                });
                tokio::spawn(
                    send_loop(pod.clone(), owner, queue.clone(), self.live.clone())
                        .instrument(tracing::debug_span!("delivery", owner = owner.0)),
                );
                queue
            })
            .clone()
    }
}

/// Where `owner`'s guilds' dispatches go now: the owner while it is live, else its cover.
/// (This pod is in `live` only while it takes dispatches, so a stopping pod sends its own
/// guilds' dispatches to its cover too.)
fn destination(owner: Ordinal, live: &[Ordinal]) -> Option<Ordinal> {
    if live.contains(&owner) {
        Some(owner)
    } else {
        shard_map::cover_of(owner, live)
    }
}

/// Drains one owner's queue until the pod stops.
async fn send_loop(
    pod: Arc<Pod>,
    owner: Ordinal,
    queue: Arc<OwnerQueue>,
    live: watch::Receiver<Members>,
) {
    let me = pod.ordinal();
    let mut backoff = RETRY_MIN;
    let mut last_destination = None;
    loop {
        let batch: Vec<Outgoing> = {
            let waiting = queue
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            waiting.iter().take(BATCH_MAX).cloned().collect()
        };
        if batch.is_empty() {
            queue.wake.notified().await;
            continue;
        }
        let target = destination(owner, &live.borrow().live);
        let Some(target) = target else {
            tokio::time::sleep(RETRY_MAX).await;
            continue;
        };
        if last_destination != Some(target) {
            if last_destination.is_some() {
                info!(
                    owner = owner.0,
                    to = target.0,
                    "dispatches of this owner's guilds go elsewhere now"
                );
            }
            last_destination = Some(target);
        }
        let answers = if target == me {
            let routed: Vec<intake::Routed<'_>> =
                batch.iter().map(|o| (o.shard, o.seq, &*o.frame)).collect();
            intake::take(&pod, &routed).await.map_err(|e| e.to_string())
        } else {
            let body = events_body(me, batch.iter().map(|o| (o.shard, o.seq, &*o.frame)));
            pod.peers
                .deliver(target, body)
                .await
                .map_err(|e| e.to_string())
        };
        match answers {
            Ok(answers) if answers.len() == batch.len() => {
                backoff = RETRY_MIN;
                let refused = settle(&queue, &answers);
                pod.metrics.delivered(target == me, batch.len() - refused);
                if refused > 0 {
                    tokio::time::sleep(NOT_MINE_RETRY).await;
                }
            }
            Ok(answers) => {
                warn!(
                    to = target.0,
                    sent = batch.len(),
                    answered = answers.len(),
                    "a delivery was answered for a different number of dispatches; sending again"
                );
                tokio::time::sleep(backoff).await;
            }
            Err(cause) => {
                pod.metrics.delivery_failed.inc();
                tracing::debug!(to = target.0, %cause, "delivery failed; sending again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Removes the acknowledged dispatches of the batch just answered from the head of the queue,
/// keeping the refused ones first in their order. Returns how many were refused.
fn settle(queue: &OwnerQueue, answers: &[Delivery]) -> usize {
    let mut waiting = queue
        .waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut kept = VecDeque::new();
    let mut done = 0;
    for answer in answers {
        let Some(out) = waiting.pop_front() else {
            break;
        };
        match answer {
            Delivery::Done => {
                out.ticket.ack();
                done += 1;
            }
            Delivery::NotMine => kept.push_back(out),
        }
    }
    let refused = kept.len();
    while let Some(out) = kept.pop_back() {
        waiting.push_front(out);
    }
    drop(waiting);
    queue.room.add_permits(done);
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owner_gets_its_own_and_a_down_one_its_cover() {
        let live = [Ordinal(0), Ordinal(2)];
        assert_eq!(destination(Ordinal(2), &live), Some(Ordinal(2)));
        let cover = destination(Ordinal(1), &live).expect("a cover");
        assert!(live.contains(&cover));
        assert_eq!(destination(Ordinal(1), &[]), None);
    }
}
