//! The topology the HTTP service routes by, learned from the gateway pods (DESIGN §7.4: the
//! operator changes N in one place, the StatefulSet's env).
//!
//! `NUM_GATEWAY_PODS`/`SHARD_STRATEGY` only seed the cache. A refresh asks every pod it knows
//! of for `GET /internal/v1/status` (following reports of a larger N to the new ordinals) and
//! picks the newest topology: one a pod reports among its *previous* topologies has been
//! superseded.
//! When several remain (pods disagree with no transition recorded), the one most pods report
//! wins, then the larger N. Refreshes run periodically, and at once when a pod answers 409.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::ownership::{Ordinal, Topology};
use crate::pod_client::{PodClient, PodError};
use crate::shutdown::Shutdown;
use crate::wire::StatusReport;

use super::metrics::Metrics;

/// How often the topology is re-learned when nothing asks for it sooner.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The most ordinals a refresh will ask (a guard against a pod reporting a huge N).
const MAX_PODS_POLLED: u32 = 1024;

/// What the service currently routes by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// The topology.
    pub topology: Topology,
    /// Whether it was learned from at least one pod (false: still the configured seed).
    pub learned: bool,
}

/// The cached topology, shared by every request.
pub struct TopologyCache {
    known: RwLock<Known>,
    /// Down pods and the pod that reported covering each, from the last refresh.
    covers: RwLock<BTreeMap<Ordinal, Ordinal>>,
    wake: Notify,
}

impl TopologyCache {
    /// A cache seeded with the configured topology.
    pub fn new(initial: Topology) -> Self {
        TopologyCache {
            known: RwLock::new(Known {
                topology: initial,
                learned: false,
            }),
            covers: RwLock::new(BTreeMap::new()),
            wake: Notify::new(),
        }
    }

    /// The topology to route by now.
    pub fn current(&self) -> Known {
        // A poisoned lock only means a writer panicked between two plain stores; the value
        // is still a valid topology.
        *self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, topology: Topology) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.topology != topology {
            info!(
                from = %known.topology.pods, to = %topology.pods,
                strategy = topology.strategy.as_str(),
                "routing by a new topology"
            );
        }
        *known = Known {
            topology,
            learned: true,
        };
    }

    /// The pod that covers `down` (processes its guilds while it is down), as last reported.
    pub fn cover_of(&self, down: Ordinal) -> Option<Ordinal> {
        self.covers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&down)
            .copied()
    }

    /// Asks the refresher task to refresh now (after a 409).
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Polls the pods and updates the cache; returns every report heard, by ordinal.
    pub async fn refresh(
        &self,
        pods: &PodClient,
        metrics: &Metrics,
    ) -> BTreeMap<Ordinal, Result<StatusReport, PodError>> {
        let mut results = BTreeMap::new();
        let mut upto = self.current().topology.pods.get();
        let mut asked = 0;
        // Ask 0..N; if someone reports a larger N, ask the new ordinals too.
        while asked < upto.min(MAX_PODS_POLLED) {
            let batch: Vec<Ordinal> = (asked..upto.min(MAX_PODS_POLLED)).map(Ordinal).collect();
            asked = upto.min(MAX_PODS_POLLED);
            let answers = join_all(batch.iter().map(|o| pods.status(*o))).await;
            for (ordinal, answer) in batch.into_iter().zip(answers) {
                if let Ok(report) = &answer {
                    upto = upto.max(report.topology.pods.get());
                }
                results.insert(ordinal, answer);
            }
        }
        let reports: Vec<&StatusReport> =
            results.values().filter_map(|r| r.as_ref().ok()).collect();
        *self.covers.write().unwrap_or_else(|p| p.into_inner()) = covers(&reports);
        match newest(&reports) {
            Some(topology) => {
                metrics.topology_refreshes.inc();
                self.set(topology);
            }
            None => debug!("no gateway pod answered the status poll"),
        }
        results
    }

    /// Refreshes every [`REFRESH_INTERVAL`], or sooner when asked, until shutdown.
    pub async fn run_refresher(
        self: Arc<Self>,
        pods: PodClient,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) {
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            self.refresh(&pods, &metrics).await;
            tokio::select! {
                () = &mut cancelled => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
        }
    }
}

/// Each covered pod and the lowest live pod that reports covering it.
fn covers(reports: &[&StatusReport]) -> BTreeMap<Ordinal, Ordinal> {
    let mut covers = BTreeMap::new();
    for r in reports.iter().filter(|r| !r.state.is_stopping()) {
        for &down in &r.covering {
            covers
                .entry(down)
                .and_modify(|c: &mut Ordinal| *c = (*c).min(r.ordinal))
                .or_insert(r.ordinal);
        }
    }
    covers
}

/// The newest topology among the reports (see the module docs), if any pod answered.
pub fn newest(reports: &[&StatusReport]) -> Option<Topology> {
    let mut votes: BTreeMap<(u32, &'static str), (Topology, usize)> = BTreeMap::new();
    for r in reports {
        votes
            .entry((r.topology.pods.get(), r.topology.strategy.as_str()))
            .or_insert((r.topology, 0))
            .1 += 1;
    }
    let superseded = |t: &Topology| {
        reports
            .iter()
            .any(|r| r.previous_topologies.contains(t) && r.topology != *t)
    };
    let candidates: Vec<(Topology, usize)> = votes
        .values()
        .filter(|(t, _)| !superseded(t))
        .copied()
        .collect();
    // If every topology is superseded by another (a cycle: an operator flipped N back and
    // forth), fall back to plain votes.
    let pool = if candidates.is_empty() {
        votes.values().copied().collect()
    } else {
        candidates
    };
    pool.into_iter()
        .max_by_key(|(t, count)| (*count, t.pods.get()))
        .map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Strategy;
    use crate::wire::PodState;

    fn report(ordinal: u32, pods: u32, previous: Option<u32>) -> StatusReport {
        let t = |n| Topology::new(Strategy::Md5, n).expect("positive");
        StatusReport {
            ordinal: Ordinal(ordinal),
            topology: t(pods),
            previous_topologies: previous.map(t).into_iter().collect(),
            topology_source: Default::default(),
            state: PodState::Active,
            ready: true,
            guilds_owned: 0,
            guilds_held: 0,
            handoff_pending: 0,
            events_seen: 0,
            events_owned: 0,
            events_handled: 0,
            db_size_bytes: 0,
            identifies: 0,
            last_error: None,
            covering: Vec::new(),
            handoff: Default::default(),
            instance: 0,
            receiving_since_ms: None,
            departing: Vec::new(),
            departed_empty: Vec::new(),
            shards: Vec::new(),
            sessions: Vec::new(),
            gaps: Vec::new(),
            unacknowledged: 0,
        }
    }

    #[test]
    fn a_down_pod_is_covered_by_the_lowest_live_pod_that_says_so() {
        let mut a = report(2, 3, None);
        a.covering = vec![Ordinal(1)];
        let mut b = report(0, 3, None);
        b.covering = vec![Ordinal(1)];
        let mut stopping = report(3, 3, None);
        stopping.covering = vec![Ordinal(4)];
        stopping.state = PodState::Stopping;
        let covers = covers(&[&a, &b, &stopping]);
        assert_eq!(covers, BTreeMap::from([(Ordinal(1), Ordinal(0))]));
    }

    #[test]
    fn a_transition_supersedes_the_old_topology_even_in_the_minority() {
        // Scale-up 3 -> 4 in progress: pods 0..2 still run N=3, pod 3 started under N=4 and
        // records N=3 as its previous topology.
        let rs = [
            report(0, 3, None),
            report(1, 3, None),
            report(2, 3, None),
            report(3, 4, Some(3)),
        ];
        let refs: Vec<&StatusReport> = rs.iter().collect();
        assert_eq!(newest(&refs).map(|t| t.pods.get()), Some(4));
    }

    #[test]
    fn without_a_recorded_transition_the_majority_wins() {
        let rs = [report(0, 3, None), report(1, 3, None), report(2, 5, None)];
        let refs: Vec<&StatusReport> = rs.iter().collect();
        assert_eq!(newest(&refs).map(|t| t.pods.get()), Some(3));
        assert_eq!(newest(&[]), None);
    }
}
