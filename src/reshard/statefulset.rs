//! The number of gateway pods, live from the gateway StatefulSet's `spec.replicas` (DESIGN
//! §7.1): `kubectl scale statefulset gateway --replicas=N` is the whole rescale, and no pod
//! restarts for it.
//!
//! One GET at start (whose refusal stops the pod: RBAC missing, or no such StatefulSet), then a
//! watch on that one object, re-established with its last `resourceVersion` when it ends and
//! re-listed when the version expired (410). While the API cannot be reached the pod keeps the
//! last pod count it knew; [`SourceHealth`] says so in the status report, in a metric, and in
//! one log line when the outage starts and one when it ends.
//!
//! The client is kube-rs: it reads the in-cluster service account (a token the kubelet rotates,
//! the cluster CA, the namespace) and kubeconfigs, which a hand-written client would have to
//! redo. Level 2 (uses `config` and `wire` only).

use std::sync::Mutex;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, WatchEvent, WatchParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{KubeAccess, StatefulSetRef};
use crate::wire::TopologySourceReport;

/// How long one watch request runs before it is renewed (the API server's own limit is
/// similar; a renewal is not an outage).
const WATCH_SECONDS: u32 = 290;
/// How long a single GET or the start of a watch may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);
/// Retry delays while the API is unreachable: doubling up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// What the pods need from the StatefulSet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// `spec.replicas`: 0 means the bot is stopped.
    pub replicas: u32,
    /// The pod template's `terminationGracePeriodSeconds`: how long a removed pod has to hand
    /// its guilds over before Kubernetes kills it.
    pub grace: Option<Duration>,
}

/// Why the StatefulSet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The API answered, and the answer will not change by retrying: the permission or the
    /// object is missing. The message names it and the fix.
    #[error("{0}")]
    Refused(String),
    /// The API could not be reached (or answered a transient error).
    #[error("the Kubernetes API is unreachable: {0}")]
    Unreachable(String),
}

/// Reads and watches one StatefulSet.
#[derive(Clone)]
pub struct StatefulSetSource {
    api: Api<StatefulSet>,
    name: String,
    namespace: String,
}

impl StatefulSetSource {
    /// A client for `sts` (in-cluster service account or kubeconfig).
    ///
    /// # Errors
    /// [`SourceError::Refused`] when the client configuration cannot be loaded (no mounted
    /// service account token, or a kubeconfig that cannot be read).
    pub async fn connect(sts: &StatefulSetRef) -> Result<Self, SourceError> {
        let config = match &sts.access {
            KubeAccess::InCluster => kube::Config::incluster().map_err(|e| {
                SourceError::Refused(format!(
                    "no in-cluster Kubernetes credentials ({e}): mount the gateway \
                     ServiceAccount's token (automountServiceAccountToken: true), or set \
                     NUM_GATEWAY_PODS"
                ))
            })?,
            KubeAccess::Kubeconfig(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    SourceError::Refused(format!(
                        "KUBECONFIG {}: {e}; fix the file or set NUM_GATEWAY_PODS",
                        path.display()
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| {
                        SourceError::Refused(format!(
                            "KUBECONFIG {}: {e}; fix the file or set NUM_GATEWAY_PODS",
                            path.display()
                        ))
                    })?
            }
        };
        let namespace = sts
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| SourceError::Refused(format!("building the Kubernetes client: {e}")))?;
        Ok(StatefulSetSource {
            api: Api::namespaced(client, &namespace),
            name: sts.name.clone(),
            namespace,
        })
    }

    /// `statefulset/<name> in namespace <ns>`, for messages.
    pub fn describe(&self) -> String {
        format!("statefulset/{} in namespace {}", self.name, self.namespace)
    }

    /// Reads the StatefulSet once: its target and resource version.
    ///
    /// # Errors
    /// [`SourceError::Refused`] for 401, 403 and 404 (with the fix in the message),
    /// [`SourceError::Unreachable`] otherwise.
    pub async fn get(&self) -> Result<(Target, Option<String>), SourceError> {
        let sts = tokio::time::timeout(REQUEST_LIMIT, self.api.get(&self.name))
            .await
            .map_err(|_| SourceError::Unreachable(format!("no answer within {REQUEST_LIMIT:?}")))?
            .map_err(|e| self.classify(e))?;
        Ok((target_of(&sts), sts.metadata.resource_version.clone()))
    }

    fn classify(&self, err: kube::Error) -> SourceError {
        let kube::Error::Api(status) = &err else {
            return SourceError::Unreachable(err.to_string());
        };
        let what = format!(
            "statefulsets.apps \"{}\" in namespace \"{}\"",
            self.name, self.namespace
        );
        match status.code {
            401 => SourceError::Refused(format!(
                "the Kubernetes API rejected the pod's credentials reading {what} (401): \
                 check the gateway ServiceAccount token, or set NUM_GATEWAY_PODS"
            )),
            403 => SourceError::Refused(format!(
                "the gateway ServiceAccount may not get/watch {what} (403 Forbidden: {}): apply \
                 the Role and RoleBinding in cluster/base/gateway-rbac.yaml (get, list, watch on \
                 statefulsets named {}), or set NUM_GATEWAY_PODS",
                status.message, self.name
            )),
            404 => SourceError::Refused(format!(
                "{what} not found (404): set STATEFULSET_NAME and POD_NAMESPACE to the gateway \
                 StatefulSet, or set NUM_GATEWAY_PODS"
            )),
            code => SourceError::Unreachable(format!("answered {code}: {}", status.message)),
        }
    }

    /// Watches the StatefulSet until `stop` completes, sending every target it sees to
    /// `targets`. Outages are retried forever (with backoff) and recorded in `health`; the
    /// last target stays in force meanwhile.
    pub async fn watch(
        &self,
        targets: watch::Sender<Target>,
        health: &SourceHealth,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        tokio::select! {
            () = &mut stop => {}
            () = self.watch_forever(&targets, health) => {}
        }
    }

    async fn watch_forever(&self, targets: &watch::Sender<Target>, health: &SourceHealth) {
        let mut version: Option<String> = None;
        let mut delay = RETRY_FIRST;
        loop {
            if version.is_none() {
                match self.get().await {
                    Ok((target, v)) => {
                        health.up();
                        targets.send_replace(target);
                        version = v;
                    }
                    Err(err) => {
                        health.down(&err.to_string());
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_CAP);
                        continue;
                    }
                }
            }
            let params = WatchParams::default()
                .fields(&format!("metadata.name={}", self.name))
                .timeout(WATCH_SECONDS);
            let from = version.clone().unwrap_or_else(|| "0".to_owned());
            let stream =
                match tokio::time::timeout(REQUEST_LIMIT, self.api.watch(&params, &from)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        health.down(&self.classify(err).to_string());
                        version = None;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_CAP);
                        continue;
                    }
                    Err(_) => {
                        health.down(&format!("no answer to the watch within {REQUEST_LIMIT:?}"));
                        version = None;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_CAP);
                        continue;
                    }
                };
            health.up();
            delay = RETRY_FIRST;
            let mut stream = stream.boxed();
            loop {
                match stream.try_next().await {
                    // The watch ran its time: renew it from where it was.
                    Ok(None) => break,
                    Ok(Some(WatchEvent::Added(sts) | WatchEvent::Modified(sts))) => {
                        version = sts.metadata.resource_version.clone().or(version);
                        targets.send_replace(target_of(&sts));
                    }
                    Ok(Some(WatchEvent::Bookmark(mark))) => {
                        version = Some(mark.metadata.resource_version);
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => {
                        health.down(&format!("{} was deleted", self.describe()));
                        version = None;
                        break;
                    }
                    Ok(Some(WatchEvent::Error(status))) => {
                        // 410 Gone: the version is too old to resume from; list again.
                        if status.code != 410 {
                            health.down(&format!(
                                "the watch failed ({}: {})",
                                status.code, status.message
                            ));
                        }
                        version = None;
                        break;
                    }
                    Err(err) => {
                        health.down(&format!("the watch broke: {err}"));
                        version = None;
                        tokio::time::sleep(delay).await;
                        break;
                    }
                }
            }
        }
    }
}

fn target_of(sts: &StatefulSet) -> Target {
    let spec = sts.spec.as_ref();
    Target {
        // An absent `replicas` means 1, as in the API's defaulting.
        replicas: spec
            .and_then(|s| s.replicas)
            .map_or(1, |r| u32::try_from(r).unwrap_or(0)),
        grace: spec
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.termination_grace_period_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
    }
}

/// Whether the pod count's source is reachable: read by the status report and the metrics.
#[derive(Debug)]
pub struct SourceHealth {
    kind: &'static str,
    inner: Mutex<Health>,
}

#[derive(Clone, Debug, Default)]
struct Health {
    connected: bool,
    /// Since when the source has been unreachable (Unix ms).
    down_since_ms: Option<u64>,
    last_error: Option<String>,
}

impl SourceHealth {
    /// A fixed pod count (`NUM_GATEWAY_PODS`): nothing to reach.
    pub fn fixed() -> Self {
        SourceHealth {
            kind: "fixed",
            inner: Mutex::new(Health {
                connected: true,
                ..Health::default()
            }),
        }
    }

    /// The StatefulSet, not yet reached.
    pub fn statefulset() -> Self {
        SourceHealth {
            kind: "statefulset",
            inner: Mutex::new(Health::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The source answered.
    pub fn up(&self) {
        let mut h = self.lock();
        if let Some(since) = h.down_since_ms.take() {
            info!(
                outage_ms = crate::reshard::topology::now_ms().saturating_sub(since),
                "the Kubernetes API is reachable again: following the StatefulSet's replicas"
            );
        }
        h.connected = true;
        h.last_error = None;
    }

    /// The source could not be reached: logged once per outage.
    pub fn down(&self, why: &str) {
        let mut h = self.lock();
        if h.down_since_ms.is_none() {
            warn!(
                cause = why,
                "the Kubernetes API is unreachable: keeping the last known pod count until it \
                 returns"
            );
            h.down_since_ms = Some(crate::reshard::topology::now_ms());
        }
        h.connected = false;
        h.last_error = Some(why.to_owned());
    }

    /// Whether the source is reachable now.
    pub fn connected(&self) -> bool {
        self.lock().connected
    }

    /// For the status report.
    pub fn report(&self) -> TopologySourceReport {
        let h = self.lock().clone();
        TopologySourceReport {
            kind: self.kind.to_owned(),
            connected: h.connected,
            down_since_ms: h.down_since_ms,
            last_error: h.last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_from_its_start_until_the_source_answers() {
        let health = SourceHealth::statefulset();
        assert!(!health.connected());
        health.up();
        assert!(health.report().connected);
        health.down("connection refused");
        let first = health.report();
        assert!(!first.connected);
        let since = first.down_since_ms.expect("down since");
        health.down("still refused");
        let second = health.report();
        assert_eq!(second.down_since_ms, Some(since), "one outage, one start");
        assert_eq!(second.last_error.as_deref(), Some("still refused"));
        health.up();
        let back = health.report();
        assert!(back.connected && back.down_since_ms.is_none() && back.last_error.is_none());
    }

    #[test]
    fn a_statefulset_without_replicas_means_one_pod() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gateway"},
            "spec": {
                "selector": {},
                "serviceName": "gateway-internal",
                "template": {"spec": {"containers": [], "terminationGracePeriodSeconds": 90}}
            }
        }))
        .expect("a StatefulSet");
        assert_eq!(
            target_of(&sts),
            Target {
                replicas: 1,
                grace: Some(Duration::from_secs(90))
            }
        );
    }
}
