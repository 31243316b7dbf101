//! The whole system on one machine: the Discord emulator (in process), N gateway pods as child
//! processes with StatefulSet semantics, optionally the HTTP service, and optionally object
//! storage with a Litestream sidecar per pod. Used by `guildshard dev`, the benchmarks and the
//! integration tests.
//!
//! Level 4: uses `emulator`, `wire`, `ownership`, `shutdown`, `config`, `reshard` (rescale
//! follows the runbook and waits on the `status` verdict).
//!
//! StatefulSet semantics reproduced here: the [`crate::kube_api`] stand-in serves the gateway
//! StatefulSet, and the pods learn the pod count from it (watch, through a kubeconfig), as
//! they do from the real API server in a cluster. Pods are named `gateway-<ordinal>`, get
//! `POD_ORDINAL` in their environment, and each ordinal keeps its own data directory across
//! restarts (its "PVC"). [`LocalCluster::reconcile`] is the StatefulSet controller: it starts
//! the ordinals below `spec.replicas` and sends SIGTERM to those at or above it, highest
//! first, following `podManagementPolicy` and the pod template's grace period. A terminating
//! pod stays reachable by its peers until it exits (the headless Service publishes
//! not-ready addresses). With [`Replication`], a pod's start is the pod spec's: the
//! restore init container, then the Litestream native sidecar, then the gateway; its stop is
//! the gateway first, then the sidecar's final sync. The pods reach each other through the
//! [`directory`] proxy, which plays the part of the headless Service's DNS names.
//!
//! # Layout
//! - [`child`]: child processes that report the addresses they listen on.
//! - [`directory`]: `gateway-<k>` → wherever that pod listens now.
//! - [`tools`], [`objstore`], [`replication`]: the pinned Litestream and SeaweedFS, an S3 server
//!   on loopback, and Litestream beside each pod.

pub mod child;
pub mod directory;
pub mod objstore;
pub mod replication;
pub mod tools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

pub use self::child::{spawn_child, ChildProcess};
use self::directory::{directory_app, Directory};
pub use self::objstore::ObjectStore;
pub use self::replication::{Replication, Sidecar};
pub use self::tools::Tools;
use crate::config::{Secret, UrlTemplate};
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::kube_api::{self, KubeApi, KubeApiConfig, PodManagementPolicy};
use crate::ownership::{Ordinal, Strategy, Topology};
use crate::pod_client::{PodClient, Timeouts};
use crate::reshard::status::{self, Verdict};
use crate::reshard::topology::now_ms;
use crate::shutdown::Shutdown;
use crate::wire::StatusReport;

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `guildshard` binary the pods and the HTTP service run.
    pub binary: PathBuf,
    /// Gateway pods (the StatefulSet's `spec.replicas` at start).
    pub pods: u32,
    /// The StatefulSet's pod management and grace period.
    pub statefulset: StatefulSetSpec,
    /// The ownership strategy.
    pub strategy: Strategy,
    /// Per-ordinal data directories live under here (kept across restarts).
    pub data_dir: PathBuf,
    /// Each child's stderr goes to `<log_dir>/<name>.log`.
    pub log_dir: PathBuf,
    /// The emulator's settings.
    pub emulator: EmulatorConfig,
    /// Extra environment for every gateway pod (e.g. fault injection, Litestream settings).
    pub pod_env: Vec<(String, String)>,
    /// Whether to run the HTTP service and point the emulator's interactions at it.
    pub http: bool,
    /// Litestream beside every pod (restore at start, sidecar for its life), when set.
    pub replication: Option<Replication>,
}

/// What the stand-in's StatefulSet says about starting and stopping pods.
#[derive(Clone, Copy, Debug)]
pub struct StatefulSetSpec {
    /// `spec.podManagementPolicy` (the manifests use `Parallel`).
    pub pod_management: PodManagementPolicy,
    /// The pod template's `terminationGracePeriodSeconds`: how long a stopping pod may take
    /// (a removed pod hands its guilds over meanwhile) before it is killed.
    pub grace: Duration,
}

impl Default for StatefulSetSpec {
    /// As `cluster/base/gateway-statefulset.yaml`, but a 60 s grace period (the manifest's
    /// 300 s is sized for tens of thousands of guilds per pod; local clusters hold far fewer,
    /// and a pod that hangs should fail a test sooner).
    fn default() -> Self {
        StatefulSetSpec {
            pod_management: PodManagementPolicy::Parallel,
            grace: Duration::from_secs(60),
        }
    }
}

/// How long the cluster waits for a pod's status: pods share a few local cores with the
/// emulator, so allow more than in a cluster.
const POD_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    read: Duration::from_secs(5),
};

/// The pods' base URL through the directory proxy at `proxy`.
fn pods_url(proxy: SocketAddr) -> String {
    format!("http://{proxy}/pods/{{ordinal}}")
}

/// [`pods_url`], parsed as the pods parse `GATEWAY_INTERNAL_URL_TEMPLATE`.
fn pods_url_template(proxy: SocketAddr) -> Result<UrlTemplate, Error> {
    UrlTemplate::parse(&pods_url(proxy)).map_err(|why| {
        Error::Io(std::io::Error::other(format!(
            "the directory proxy's URL template: {why}"
        )))
    })
}

/// Why the cluster could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving a local listener failed.
    #[error("local listener: {0}")]
    Io(#[from] std::io::Error),
    /// The emulator failed to start.
    #[error("emulator: {0}")]
    Emulator(#[from] emulator::Error),
    /// The Kubernetes API stand-in failed.
    #[error("kubernetes api stand-in: {0}")]
    KubeApi(#[from] kube_api::Error),
    /// A child process did not come up.
    #[error("{name} did not start: {why} (see {log})")]
    ChildStart {
        /// `gateway-2`, `http`.
        name: String,
        /// What went wrong.
        why: String,
        /// Its log file.
        log: String,
    },
    /// Litestream (the restore init container or the sidecar) failed.
    #[error(transparent)]
    Litestream(#[from] replication::Error),
    /// A rescale did not converge.
    #[error("rescale: {0}")]
    Rescale(String),
    /// A pod's internal API did not answer.
    #[error("gateway-{ordinal} status: {why}")]
    Status {
        /// The pod.
        ordinal: u32,
        /// What went wrong.
        why: String,
    },
}

/// One gateway process's life as the cluster saw it: its processing windows (logged by the
/// pod) hold only within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodLife {
    /// The pod.
    pub ordinal: u32,
    /// Just before it was spawned (Unix ms).
    pub started_ms: u64,
    /// After it exited on SIGTERM, or just before it was killed (Unix ms); `None` while it
    /// runs.
    pub ended_ms: Option<u64>,
}

/// The emulator, the gateway pods and the HTTP service, running.
pub struct LocalCluster {
    cfg: ClusterConfig,
    emulator: Emulator,
    emulator_shutdown: Shutdown,
    kube: KubeApi,
    kube_shutdown: Shutdown,
    directory: Directory,
    proxy_addr: SocketAddr,
    proxy_shutdown: Shutdown,
    pods: BTreeMap<u32, ChildProcess>,
    /// Each running pod's Litestream sidecar, when replication is on.
    sidecars: BTreeMap<u32, Sidecar>,
    /// Every gateway process started so far.
    lives: Vec<PodLife>,
    http: Option<ChildProcess>,
    internal_token: String,
    /// Asks the pods for their status, through the directory proxy.
    internal: PodClient,
}

impl LocalCluster {
    /// Starts the emulator, the directory proxy, every pod (waiting until each listens) and, if
    /// asked, the HTTP service.
    pub async fn start(cfg: ClusterConfig) -> Result<LocalCluster, Error> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let emulator_shutdown = Shutdown::new();
        let emulator = emulator::start(
            cfg.emulator.clone(),
            TcpListener::bind("127.0.0.1:0").await?,
            emulator_shutdown.clone(),
        )
        .await?;
        let kube_shutdown = Shutdown::new();
        let kube = kube_api::start(
            KubeApiConfig {
                replicas: cfg.pods,
                pod_management_policy: cfg.statefulset.pod_management,
                termination_grace_period_seconds: cfg.statefulset.grace.as_secs(),
                tokens: vec![format!("local-kube-{:032x}", rand::random::<u128>())],
                ..KubeApiConfig::default()
            },
            TcpListener::bind("127.0.0.1:0").await?,
            kube_shutdown.clone(),
        )
        .await?;
        kube.write_kubeconfig(&cfg.data_dir.join("kubeconfig"))?;
        // The replica path holds the namespace, as the pods' downward API gives it.
        let mut cfg = cfg;
        cfg.replication = cfg.replication.map(|r| r.in_namespace(kube.namespace()));
        let directory = Directory::default();
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy_addr = proxy_listener.local_addr()?;
        let proxy_shutdown = Shutdown::new();
        let proxy = directory_app(directory.clone());
        let stop = proxy_shutdown.cancelled();
        tokio::spawn(async move {
            let _ = axum::serve(proxy_listener, proxy)
                .with_graceful_shutdown(stop)
                .await;
        });
        // Random per cluster, so a stray process of another run cannot talk to this one.
        let internal_token = format!("local-{:032x}", rand::random::<u128>());
        let internal = PodClient::new(
            pods_url_template(proxy_addr)?,
            Secret::new(internal_token.clone()),
            POD_TIMEOUTS,
        )
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let mut cluster = LocalCluster {
            cfg,
            emulator,
            emulator_shutdown,
            kube,
            kube_shutdown,
            directory,
            proxy_addr,
            proxy_shutdown,
            pods: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            lives: Vec::new(),
            http: None,
            internal_token,
            internal,
        };
        // Parallel pod management: every ordinal at once (each waits only until it listens).
        for ordinal in 0..cluster.cfg.pods {
            cluster.start_pod(ordinal).await?;
        }
        cluster.report_status();
        if cluster.cfg.http {
            cluster.start_http().await?;
        }
        Ok(cluster)
    }

    /// The emulator.
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// The value of `GATEWAY_INTERNAL_URL_TEMPLATE` for this cluster.
    pub fn url_template(&self) -> String {
        pods_url(self.proxy_addr)
    }

    /// The bearer token of the internal API.
    pub fn internal_token(&self) -> &str {
        &self.internal_token
    }

    /// The ordinals of running pods.
    pub fn running(&self) -> Vec<u32> {
        self.pods.keys().copied().collect()
    }

    /// The Kubernetes API stand-in serving the gateway StatefulSet.
    pub fn kube(&self) -> &KubeApi {
        &self.kube
    }

    /// The kubeconfig that reaches the stand-in (what `kubectl --kubeconfig` takes).
    pub fn kubeconfig(&self) -> PathBuf {
        self.cfg.data_dir.join("kubeconfig")
    }

    /// The StatefulSet's `spec.replicas`: the pod count the pods follow.
    pub fn num_gateway_pods(&self) -> u32 {
        self.kube.replicas()
    }

    /// Sets the StatefulSet's `spec.replicas` (what `kubectl scale` does), without starting or
    /// stopping pods: running pods follow it live; [`LocalCluster::reconcile`] does the
    /// controller's part.
    pub fn set_num_gateway_pods(&mut self, n: u32) {
        if let Err(err) = self.kube.set_replicas(n) {
            warn!(cause = %err, "could not set the StatefulSet's replicas");
        }
    }

    /// A pod's data directory (its "PVC").
    pub fn data_dir(&self, ordinal: u32) -> PathBuf {
        self.cfg.data_dir.join(format!("gateway-{ordinal}"))
    }

    /// A pod's database file.
    pub fn db_path(&self, ordinal: u32) -> PathBuf {
        self.data_dir(ordinal).join("bot.db")
    }

    /// A running pod's process (addresses, log).
    pub fn pod(&self, ordinal: u32) -> Option<&ChildProcess> {
        self.pods.get(&ordinal)
    }

    /// The HTTP service's address, when it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|h| h.addr("http"))
    }

    /// The environment a pod of `ordinal` starts with.
    pub fn pod_env(&self, ordinal: u32) -> Vec<(String, String)> {
        let app = self.emulator.application();
        let mut env: Vec<(String, String)> = [
            ("POD_NAME", format!("gateway-{ordinal}")),
            ("POD_ORDINAL", ordinal.to_string()),
            ("KUBECONFIG", self.kubeconfig().display().to_string()),
            ("POD_NAMESPACE", self.kube.namespace().to_owned()),
            ("STATEFULSET_NAME", self.kube.name().to_owned()),
            ("SHARD_STRATEGY", self.cfg.strategy.to_string()),
            ("DISCORD_TOKEN", app.token.clone()),
            ("DISCORD_APPLICATION_ID", app.id.to_string()),
            ("DISCORD_API_BASE", self.emulator.api_base()),
            ("DATABASE_PATH", self.db_path(ordinal).display().to_string()),
            ("INTERNAL_AUTH_TOKEN", self.internal_token.clone()),
            ("GATEWAY_INTERNAL_URL_TEMPLATE", self.url_template()),
            ("PUBLIC_BIND_ADDR", "127.0.0.1:0".to_owned()),
            ("INTERNAL_BIND_ADDR", "127.0.0.1:0".to_owned()),
            ("LITESTREAM_ENABLED", "false".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let replication = self
            .cfg
            .replication
            .as_ref()
            .map(|r| r.gateway_env(ordinal, &self.db_path(ordinal)))
            .unwrap_or_default();
        for (k, v) in replication.iter().chain(&self.cfg.pod_env) {
            env.retain(|(existing, _)| existing != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Starts (or restarts after a stop) the pod of `ordinal` and waits until it listens.
    pub async fn start_pod(&mut self, ordinal: u32) -> Result<(), Error> {
        self.start_pod_with(ordinal, &[]).await
    }

    /// Like [`LocalCluster::start_pod`] with extra environment for this start only.
    pub async fn start_pod_with(
        &mut self,
        ordinal: u32,
        extra: &[(String, String)],
    ) -> Result<(), Error> {
        std::fs::create_dir_all(self.data_dir(ordinal))?;
        let name = format!("gateway-{ordinal}");
        if let Some(replication) = &self.cfg.replication {
            // The pod spec's init containers, in order: restore, then the native sidecar.
            let db = self.db_path(ordinal);
            replication.restore(ordinal, &db).await?;
            let log = self.cfg.log_dir.join(format!("{name}-litestream.log"));
            let sidecar = replication.start_sidecar(ordinal, &db, &log).await?;
            self.sidecars.insert(ordinal, sidecar);
        }
        let mut env = self.pod_env(ordinal);
        for (k, v) in extra {
            env.retain(|(existing, _)| existing != k);
            env.push((k.clone(), v.clone()));
        }
        let started_ms = now_ms();
        let child = spawn_child(
            &self.cfg.binary,
            &["gateway"],
            &name,
            &env,
            &self.cfg.log_dir,
            &["public", "internal"],
        )
        .await?;
        if let Some(addr) = child.addr("internal") {
            self.directory_mut().insert(ordinal, addr);
        }
        info!(pod = %name, internal = ?child.addr("internal"), "pod started");
        self.pods.insert(ordinal, child);
        self.lives.push(PodLife {
            ordinal,
            started_ms,
            ended_ms: None,
        });
        Ok(())
    }

    fn directory_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<u32, SocketAddr>> {
        self.directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIGTERM the pod and wait up to `grace` (as Kubernetes does), then kill it; returns its
    /// exit code. It stays reachable by its peers until it exits (the headless Service
    /// publishes not-ready addresses). Its Litestream sidecar is stopped after it, so the final
    /// sync sees its last writes.
    pub async fn stop_pod(&mut self, ordinal: u32, grace: Duration) -> Option<i32> {
        let pod = self.pods.remove(&ordinal);
        let sidecar = self.sidecars.remove(&ordinal);
        let code = terminate(ordinal, pod, sidecar, grace).await;
        self.directory_mut().remove(&ordinal);
        self.ended(ordinal, now_ms());
        code
    }

    /// kill -9 the pod, its sidecar with it (the node died: no final sync).
    pub async fn kill_pod(&mut self, ordinal: u32) {
        self.directory_mut().remove(&ordinal);
        self.ended(ordinal, now_ms());
        if let Some(pod) = self.pods.remove(&ordinal) {
            pod.kill().await;
        }
        if let Some(sidecar) = self.sidecars.remove(&ordinal) {
            sidecar.kill().await;
        }
    }

    fn ended(&mut self, ordinal: u32, at_ms: u64) {
        if let Some(life) = self
            .lives
            .iter_mut()
            .rev()
            .find(|l| l.ordinal == ordinal && l.ended_ms.is_none())
        {
            life.ended_ms = Some(at_ms);
        }
    }

    /// Every gateway process started so far, in start order.
    pub fn lives(&self) -> &[PodLife] {
        &self.lives
    }

    /// Where the pods' and the HTTP service's logs are.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.cfg.log_dir
    }

    /// Deletes a stopped pod's volume: its database, WAL and Litestream's local state.
    ///
    /// # Errors
    /// When the pod still runs, or the directory cannot be removed.
    pub fn lose_volume(&mut self, ordinal: u32) -> Result<(), Error> {
        if self.pods.contains_key(&ordinal) {
            return Err(Error::Io(std::io::Error::other(format!(
                "gateway-{ordinal} is running; stop it before losing its volume"
            ))));
        }
        match std::fs::remove_dir_all(self.data_dir(ordinal)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The Litestream settings, when replication is on.
    pub fn replication(&self) -> Option<&Replication> {
        self.cfg.replication.as_ref()
    }

    /// A running pod's Litestream sidecar.
    pub fn sidecar_mut(&mut self, ordinal: u32) -> Option<&mut Sidecar> {
        self.sidecars.get_mut(&ordinal)
    }

    /// A pod's `GET /internal/v1/status`.
    pub async fn status(&self, ordinal: u32) -> Result<StatusReport, Error> {
        self.internal
            .status(Ordinal(ordinal))
            .await
            .map_err(|e| Error::Status {
                ordinal,
                why: e.reason(),
            })
    }

    /// Waits (up to `limit`) until the pod reports ready.
    pub async fn wait_ready(&self, ordinal: u32, limit: Duration) -> Result<StatusReport, Error> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let last = match self.status(ordinal).await {
                Ok(status) if status.ready => return Ok(status),
                Ok(_) => "not ready".to_owned(),
                Err(err) => err.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Status {
                    ordinal,
                    why: format!("not ready within {limit:?}: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every pod's status (ordinals `0..N + extra`), unreachable ones as errors.
    pub async fn statuses(&self, extra: u32) -> Vec<(Ordinal, Result<StatusReport, String>)> {
        let n = self.num_gateway_pods();
        let probes = (0..n + extra)
            .map(|o| async move { (Ordinal(o), self.status(o).await.map_err(|e| e.to_string())) });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .filter(|(o, r)| r.is_ok() || o.0 < n)
            .collect()
    }

    /// The `guildshard status` verdict for this cluster.
    pub async fn verdict(&self) -> Verdict {
        // Replicas 0 (the bot stopped) is judged against one pod: nothing answers, so blocked.
        let expected = Topology::new(self.cfg.strategy, self.num_gateway_pods().max(1))
            .expect("at least one pod");
        let extra = self.pods.keys().copied().max().unwrap_or(0) + 1;
        status::verdict(expected, &self.statuses(extra).await)
    }

    /// Waits (up to `limit`) until the verdict is `converged`.
    pub async fn wait_converged(&self, limit: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.verdict().await;
            if v == Verdict::Converged {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Rescale(format!(
                    "not converged within {limit:?}: {v}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts a running pod (SIGTERM, then start with the current environment) and waits
    /// until it is ready: one step of a StatefulSet rolling update.
    pub async fn roll_pod(&mut self, ordinal: u32, limit: Duration) -> Result<(), Error> {
        self.stop_pod(ordinal, self.cfg.statefulset.grace).await;
        self.start_pod(ordinal).await?;
        self.wait_ready(ordinal, limit).await?;
        Ok(())
    }

    /// Changes the pod count the way `cluster/RUNBOOK.md` tells an operator to:
    /// `kubectl scale statefulset gateway --replicas=<to>` (here: the stand-in's scale), then
    /// the StatefulSet controller's part ([`LocalCluster::reconcile`]), and waits until
    /// `guildshard status` says converged. No pod that stays is restarted.
    pub async fn rescale(&mut self, to: u32, limit: Duration) -> Result<(), Error> {
        self.kube.set_replicas(to)?;
        self.reconcile(limit).await?;
        self.wait_converged(limit).await
    }

    /// The StatefulSet controller: brings the running ordinals to `0..spec.replicas`. New
    /// ordinals start in ascending order (`OrderedReady`: each ready before the next;
    /// `Parallel`: all at once); ordinals at or above `spec.replicas` get SIGTERM, highest
    /// first (`OrderedReady`: one at a time; `Parallel`: all at once), and are killed if they
    /// outlive the grace period. Returns once every change is done.
    pub async fn reconcile(&mut self, limit: Duration) -> Result<(), Error> {
        let sts = self.kube.statefulset();
        let want = if sts.exists { sts.replicas } else { 0 };
        let grace = sts.termination_grace_period;
        let ordered = sts.pod_management_policy == PodManagementPolicy::OrderedReady;
        let missing: Vec<u32> = (0..want).filter(|o| !self.pods.contains_key(o)).collect();
        for &ordinal in &missing {
            self.start_pod(ordinal).await?;
            if ordered {
                self.wait_ready(ordinal, limit).await?;
            }
            self.report_status();
        }
        let removed: Vec<u32> = self
            .pods
            .keys()
            .rev()
            .copied()
            .filter(|o| *o >= want)
            .collect();
        if ordered {
            for ordinal in removed {
                self.stop_pod(ordinal, grace).await;
                self.report_status();
            }
        } else if !removed.is_empty() {
            let stopping: Vec<_> = removed
                .iter()
                .map(|o| {
                    let pod = self.pods.remove(o);
                    let sidecar = self.sidecars.remove(o);
                    terminate(*o, pod, sidecar, grace)
                })
                .collect();
            futures::future::join_all(stopping).await;
            let at = now_ms();
            for ordinal in removed {
                self.directory_mut().remove(&ordinal);
                self.ended(ordinal, at);
            }
        }
        if !ordered {
            for ordinal in missing {
                self.wait_ready(ordinal, limit).await?;
            }
        }
        self.report_status();
        Ok(())
    }

    /// Reports the running pods in the StatefulSet's status, as the controller does.
    fn report_status(&self) {
        let running = self.pods.len() as u32;
        if let Err(err) = self.kube.set_status(running, running) {
            warn!(cause = %err, "could not report the StatefulSet's status");
        }
    }

    /// Starts the HTTP service and points the emulator's interactions at it.
    pub async fn start_http(&mut self) -> Result<(), Error> {
        let app = self.emulator.application();
        // No pod count: the service learns the topology from the pods.
        let env: Vec<(String, String)> = [
            ("SHARD_STRATEGY", self.cfg.strategy.to_string()),
            ("DISCORD_TOKEN", app.token.clone()),
            ("DISCORD_APPLICATION_ID", app.id.to_string()),
            ("DISCORD_PUBLIC_KEY", app.public_key_hex.clone()),
            ("DISCORD_API_BASE", self.emulator.api_base()),
            ("INTERNAL_AUTH_TOKEN", self.internal_token.clone()),
            ("GATEWAY_INTERNAL_URL_TEMPLATE", self.url_template()),
            ("HTTP_BIND_ADDR", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let child = spawn_child(
            &self.cfg.binary,
            &["http"],
            "http",
            &env,
            &self.cfg.log_dir,
            &["http"],
        )
        .await?;
        if let Some(addr) = child.addr("http") {
            self.emulator
                .set_interactions_url(Some(format!("http://{addr}/interactions")));
        }
        self.http = Some(child);
        Ok(())
    }

    /// Stops the HTTP service (SIGTERM).
    pub async fn stop_http(&mut self, grace: Duration) -> Option<i32> {
        self.http.take()?.terminate(grace).await
    }

    /// Stops everything: the HTTP service and every pod with SIGTERM (highest ordinal first, as
    /// a StatefulSet scales down), then the emulator.
    pub async fn shutdown(mut self) {
        let _ = self.stop_http(Duration::from_secs(10)).await;
        let ordinals: Vec<u32> = self.pods.keys().rev().copied().collect();
        for ordinal in ordinals {
            let _ = self.stop_pod(ordinal, self.cfg.statefulset.grace).await;
        }
        // Sidecars of pods that failed to start.
        for (_, sidecar) in std::mem::take(&mut self.sidecars) {
            sidecar.stop().await;
        }
        self.proxy_shutdown.trigger();
        self.kube_shutdown.trigger();
        self.emulator_shutdown.drain(Duration::from_secs(5)).await;
    }
}

/// SIGTERM a pod, kill it after `grace`, then stop its sidecar (its final sync sees the pod's
/// last writes).
async fn terminate(
    ordinal: u32,
    pod: Option<ChildProcess>,
    sidecar: Option<Sidecar>,
    grace: Duration,
) -> Option<i32> {
    let code = match pod {
        Some(pod) => pod.terminate(grace).await,
        None => None,
    };
    if let Some(sidecar) = sidecar {
        if !sidecar.stop().await {
            warn!(ordinal, "litestream sidecar did not stop cleanly");
        }
    }
    code
}
