//! Where this pod learns how many gateway pods there are: `NUM_GATEWAY_PODS` (fixed), or the
//! StatefulSet's `spec.replicas`, read at start and then watched (DESIGN §7.1).
//!
//! At start, a refusal that retrying cannot mend (RBAC missing, no such StatefulSet, no
//! credentials) stops the pod with one line naming what is missing and the fix. An API that
//! cannot be reached is not a reason to stop: the pod runs under the topology it last
//! recorded, and if it never recorded one, waits for the API.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{PodCountSource, StatefulSetRef};
use crate::reshard::statefulset::{SourceError, SourceHealth, StatefulSetSource, Target};
use crate::store::Store;

/// How long to wait between attempts while the API is unreachable and the pod has no recorded
/// topology to run under.
const FIRST_CONTACT_RETRY: Duration = Duration::from_secs(1);

/// The pod count at start, and where later changes come from.
pub struct PodCount {
    /// The pod count to start under.
    pub pods: u32,
    /// The StatefulSet, when the count is watched; `None` for `NUM_GATEWAY_PODS`.
    pub source: Option<StatefulSetSource>,
    /// The latest target the source reported (the grace period rides along).
    pub target: watch::Sender<Target>,
    /// Whether the source is reachable.
    pub health: Arc<SourceHealth>,
}

/// Why the pod count could not be learned at start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Learns the pod count at start.
///
/// # Errors
/// [`Refused`] when the Kubernetes API refuses the StatefulSet (permission, object or
/// credentials missing): retrying cannot help, the operator has to act.
pub async fn resolve(
    source: &PodCountSource,
    store: &Store,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Option<PodCount>, Refused> {
    match source {
        PodCountSource::Fixed { pods, api_ignored } => {
            if *api_ignored {
                info!(
                    pods,
                    "pod count from NUM_GATEWAY_PODS (fixed); a Kubernetes API is configured too, \
                     and NUM_GATEWAY_PODS wins: the StatefulSet is not watched"
                );
            } else {
                info!(pods, "pod count from NUM_GATEWAY_PODS (fixed)");
            }
            Ok(Some(PodCount {
                pods: *pods,
                source: None,
                target: watch::channel(Target {
                    replicas: *pods,
                    grace: None,
                })
                .0,
                health: Arc::new(SourceHealth::fixed()),
            }))
        }
        PodCountSource::StatefulSet(sts) => from_statefulset(sts, store, stop).await,
    }
}

async fn from_statefulset(
    sts: &StatefulSetRef,
    store: &Store,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Option<PodCount>, Refused> {
    let source = StatefulSetSource::connect(sts)
        .await
        .map_err(|e| Refused(e.to_string()))?;
    let health = Arc::new(SourceHealth::statefulset());
    let recorded = crate::reshard::coordinator::stored_processing(store)
        .await
        .ok()
        .flatten()
        .map(|p| p.current.pods.get());
    tokio::pin!(stop);
    loop {
        match source.get().await {
            Ok((target, _)) => {
                health.up();
                // Replicas 0 only while the bot is being stopped; a pod that starts then
                // runs under what it last knew.
                let pods = match target.replicas {
                    0 => recorded.unwrap_or(1),
                    n => n,
                };
                info!(
                    pods,
                    statefulset = %source.describe(),
                    "pod count from the StatefulSet's replicas (watched)"
                );
                return Ok(Some(PodCount {
                    pods,
                    target: watch::channel(target).0,
                    source: Some(source),
                    health,
                }));
            }
            Err(SourceError::Refused(why)) => return Err(Refused(why)),
            Err(SourceError::Unreachable(why)) => {
                health.down(&why);
                if let Some(pods) = recorded {
                    warn!(
                        pods,
                        "starting under the pod count this pod last recorded; the StatefulSet is \
                         followed once the API answers"
                    );
                    return Ok(Some(PodCount {
                        pods,
                        target: watch::channel(Target {
                            replicas: pods,
                            grace: None,
                        })
                        .0,
                        source: Some(source),
                        health,
                    }));
                }
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(None),
            () = tokio::time::sleep(FIRST_CONTACT_RETRY) => {}
        }
    }
}
