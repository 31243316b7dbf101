//! The whole system on one machine: the Discord emulator (in process), N gateway pods as child
//! processes with StatefulSet semantics, optionally the HTTP service, and optionally object
//! storage with a Litestream sidecar per pod. Used by `guildshard dev`, the benchmarks and the
//! integration tests.
//!
//! Level 4: uses `emulator`, `wire`, `ownership`, `shutdown`, `config`, `reshard` (rescale
//! follows the runbook and waits on the `status` verdict).
//!
//! StatefulSet semantics reproduced here: pods are named `gateway-<ordinal>`, get `POD_ORDINAL`
//! and `NUM_GATEWAY_PODS` in their environment, and each ordinal keeps its own data directory
//! across restarts (its "PVC"). With [`Replication`], a pod's start is the pod spec's: the
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
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::ownership::{Ordinal, Strategy, Topology};
use crate::reshard::status::{self, Verdict};
use crate::reshard::topology::now_ms;
use crate::shutdown::Shutdown;
use crate::wire::StatusReport;

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `guildshard` binary the pods and the HTTP service run.
    pub binary: PathBuf,
    /// Gateway pods (StatefulSet replicas).
    pub pods: u32,
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

/// Why the cluster could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving a local listener failed.
    #[error("local listener: {0}")]
    Io(#[from] std::io::Error),
    /// The emulator failed to start.
    #[error("emulator: {0}")]
    Emulator(#[from] emulator::Error),
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
    directory: Directory,
    proxy_addr: SocketAddr,
    proxy_shutdown: Shutdown,
    pods: BTreeMap<u32, ChildProcess>,
    /// Each running pod's Litestream sidecar, when replication is on.
    sidecars: BTreeMap<u32, Sidecar>,
    /// Every gateway process started so far.
    lives: Vec<PodLife>,
    num_gateway_pods: u32,
    http: Option<ChildProcess>,
    internal_token: String,
    client: reqwest::Client,
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
        let mut cluster = LocalCluster {
            num_gateway_pods: cfg.pods,
            cfg,
            emulator,
            emulator_shutdown,
            directory,
            proxy_addr,
            proxy_shutdown,
            pods: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            lives: Vec::new(),
            http: None,
            // Random per cluster, so a stray process of another run cannot talk to this one.
            internal_token: format!("local-{:032x}", rand::random::<u128>()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| Error::Io(std::io::Error::other(e)))?,
        };
        for ordinal in 0..cluster.cfg.pods {
            cluster.start_pod(ordinal).await?;
        }
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
        format!("http://{}/pods/{{ordinal}}", self.proxy_addr)
    }

    /// The bearer token of the internal API.
    pub fn internal_token(&self) -> &str {
        &self.internal_token
    }

    /// The ordinals of running pods.
    pub fn running(&self) -> Vec<u32> {
        self.pods.keys().copied().collect()
    }

    /// `NUM_GATEWAY_PODS` as the pods are (or will be) started with.
    pub fn num_gateway_pods(&self) -> u32 {
        self.num_gateway_pods
    }

    /// Changes `NUM_GATEWAY_PODS` for pods started from now on (the StatefulSet's env change).
    pub fn set_num_gateway_pods(&mut self, n: u32) {
        self.num_gateway_pods = n.max(1);
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
            ("NUM_GATEWAY_PODS", self.num_gateway_pods.to_string()),
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

    /// SIGTERM the pod and wait up to `grace` (as Kubernetes does); returns its exit code.
    /// Its Litestream sidecar is stopped after it, so the final sync sees its last writes.
    pub async fn stop_pod(&mut self, ordinal: u32, grace: Duration) -> Option<i32> {
        self.directory_mut().remove(&ordinal);
        let code = match self.pods.remove(&ordinal) {
            Some(pod) => pod.terminate(grace).await,
            None => None,
        };
        self.ended(ordinal, now_ms());
        if let Some(sidecar) = self.sidecars.remove(&ordinal) {
            if !sidecar.stop().await {
                warn!(ordinal, "litestream sidecar did not stop cleanly");
            }
        }
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
        let status_error = |why: String| Error::Status { ordinal, why };
        let url = format!(
            "{}/internal/v1/status",
            self.url_template()
                .replace("{ordinal}", &ordinal.to_string())
        );
        let resp = self
            .client
            .get(url)
            .bearer_auth(&self.internal_token)
            .send()
            .await
            .map_err(|e| status_error(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(status_error(format!("answered {}", resp.status())));
        }
        resp.json().await.map_err(|e| status_error(e.to_string()))
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
        let probes = (0..self.num_gateway_pods + extra)
            .map(|o| async move { (Ordinal(o), self.status(o).await.map_err(|e| e.to_string())) });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .filter(|(o, r)| r.is_ok() || o.0 < self.num_gateway_pods)
            .collect()
    }

    /// The `guildshard status` verdict for this cluster.
    pub async fn verdict(&self) -> Verdict {
        let expected = Topology::new(self.cfg.strategy, self.num_gateway_pods)
            .expect("num_gateway_pods is at least 1");
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
        self.stop_pod(ordinal, Duration::from_secs(25)).await;
        self.start_pod(ordinal).await?;
        self.wait_ready(ordinal, limit).await?;
        Ok(())
    }

    /// Changes the pod count the way `cluster/RUNBOOK.md` tells an operator to, with
    /// StatefulSet semantics, and waits until `guildshard status` says converged.
    ///
    /// Scale-up: raise replicas and `NUM_GATEWAY_PODS` together: the new ordinals start
    /// (ascending), then the env change rolls the existing pods, highest ordinal first.
    /// Scale-down: lower `NUM_GATEWAY_PODS` first (rolls every pod highest first; pods `>= N`
    /// come back draining), wait until converged (draining pods empty), then lower replicas
    /// (the pods `>= N` stop).
    pub async fn rescale(&mut self, to: u32, limit: Duration) -> Result<(), Error> {
        let to = to.max(1);
        let from = self.num_gateway_pods;
        self.set_num_gateway_pods(to);
        let running = self.running();
        for ordinal in from..to {
            if !self.pods.contains_key(&ordinal) {
                self.start_pod(ordinal).await?;
                self.wait_ready(ordinal, limit).await?;
            }
        }
        for ordinal in running.into_iter().rev() {
            self.roll_pod(ordinal, limit).await?;
        }
        self.wait_converged(limit).await?;
        let removed: Vec<u32> = self.pods.keys().copied().filter(|o| *o >= to).collect();
        for ordinal in removed.into_iter().rev() {
            self.stop_pod(ordinal, Duration::from_secs(25)).await;
        }
        self.wait_converged(limit).await
    }

    /// Starts the HTTP service and points the emulator's interactions at it.
    pub async fn start_http(&mut self) -> Result<(), Error> {
        let app = self.emulator.application();
        let env: Vec<(String, String)> = [
            ("NUM_GATEWAY_PODS", self.num_gateway_pods.to_string()),
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
            let _ = self.stop_pod(ordinal, Duration::from_secs(25)).await;
        }
        // Sidecars of pods that failed to start.
        for (_, sidecar) in std::mem::take(&mut self.sidecars) {
            sidecar.stop().await;
        }
        self.proxy_shutdown.trigger();
        self.emulator_shutdown.drain(Duration::from_secs(5)).await;
    }
}
