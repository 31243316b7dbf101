//! The whole system on one machine: the Discord emulator (in process), N gateway pods as child
//! processes with StatefulSet semantics, and optionally the HTTP service. Used by `guildshard
//! dev` and by the integration tests.
//!
//! Level 4: uses `emulator`, `wire`, `ownership`, `shutdown`, `reshard` (rescale follows the
//! runbook and waits on the `status` verdict).
//!
//! StatefulSet semantics reproduced here: pods are named `gateway-<ordinal>`, get `POD_ORDINAL`
//! and `NUM_GATEWAY_PODS` in their environment, and each ordinal keeps its own data directory
//! across restarts (its "PVC"). Kubernetes gives every pod a stable DNS name; locally every pod
//! binds a random port, so a small directory proxy plays that part: the pods' internal APIs are
//! reachable at `http://127.0.0.1:<proxy>/pods/<ordinal>/...`, which is what
//! `GATEWAY_INTERNAL_URL_TEMPLATE` points at. A pod that is down answers 503 at once, as a
//! refused connection would.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::ownership::{Ordinal, Strategy, Topology};
use crate::reshard::status::{self, Verdict};
use crate::shutdown::Shutdown;
use crate::wire::StatusReport;

/// How long a child may take to print its listening addresses.
const START_LIMIT: Duration = Duration::from_secs(60);

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

/// Where each pod's internal API currently listens; shared with the directory proxy.
type Directory = Arc<RwLock<HashMap<u32, SocketAddr>>>;

/// A running child process and the addresses it printed.
pub struct ChildProcess {
    name: String,
    child: Child,
    addrs: HashMap<String, SocketAddr>,
    log: PathBuf,
}

impl ChildProcess {
    /// The address it printed as `<listener> listening on <addr>`.
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addrs.get(listener).copied()
    }

    /// Its stderr log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its process id, while it runs (benchmarks read its CPU time and RSS from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            // The `kill` command keeps `unsafe` (libc::kill) out of the crate.
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGTERM, then wait up to `grace`; SIGKILL after that. Returns the exit code.
    pub async fn terminate(mut self, grace: Duration) -> Option<i32> {
        self.signal("-TERM");
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                warn!(name = %self.name, "did not stop within the grace period; killing");
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// SIGKILL (kill -9) and reap.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// Starts `binary args` with `env`, stderr to `<log_dir>/<name>.log`, and waits until it has
/// printed every listener in `listeners`.
pub async fn spawn_child(
    binary: &Path,
    args: &[&str],
    name: &str,
    env: &[(String, String)],
    log_dir: &Path,
    listeners: &[&str],
) -> Result<ChildProcess, Error> {
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("{name}.log"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .envs(
            ["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"]
                .iter()
                .filter_map(|k| Some((*k, std::env::var(k).ok()?))),
        )
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let start_error = |why: String| Error::ChildStart {
        name: name.to_owned(),
        why,
        log: log.display().to_string(),
    };
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| start_error("no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = HashMap::new();
    let wanted: Vec<String> = listeners.iter().map(|l| (*l).to_owned()).collect();
    let read = async {
        while addrs.len() < wanted.len() {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    for listener in &wanted {
                        if let Some(addr) = line.strip_prefix(&format!("{listener} listening on "))
                        {
                            if let Ok(addr) = addr.trim().parse::<SocketAddr>() {
                                addrs.insert(listener.clone(), addr);
                            }
                        }
                    }
                }
                Ok(None) => return Err("exited before listening".to_owned()),
                Err(err) => return Err(err.to_string()),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(START_LIMIT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(start_error(why)),
        Err(_) => return Err(start_error(format!("no address within {START_LIMIT:?}"))),
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ChildProcess {
        name: name.to_owned(),
        child,
        addrs,
        log,
    })
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
        let directory: Directory = Arc::default();
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
        for (k, v) in &self.cfg.pod_env {
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
        let mut env = self.pod_env(ordinal);
        for (k, v) in extra {
            env.retain(|(existing, _)| existing != k);
            env.push((k.clone(), v.clone()));
        }
        let name = format!("gateway-{ordinal}");
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
        Ok(())
    }

    fn directory_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, SocketAddr>> {
        self.directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIGTERM the pod and wait up to `grace` (as Kubernetes does); returns its exit code.
    pub async fn stop_pod(&mut self, ordinal: u32, grace: Duration) -> Option<i32> {
        self.directory_mut().remove(&ordinal);
        let pod = self.pods.remove(&ordinal)?;
        pod.terminate(grace).await
    }

    /// kill -9 the pod.
    pub async fn kill_pod(&mut self, ordinal: u32) {
        self.directory_mut().remove(&ordinal);
        if let Some(pod) = self.pods.remove(&ordinal) {
            pod.kill().await;
        }
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
        self.proxy_shutdown.trigger();
        self.emulator_shutdown.drain(Duration::from_secs(5)).await;
    }
}

#[derive(Clone)]
struct ProxyState {
    directory: Directory,
    client: reqwest::Client,
}

fn directory_app(directory: Directory) -> Router {
    let state = ProxyState {
        directory,
        // No overall timeout: the caller sets its own deadlines. Connect fast, though.
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default(),
    };
    Router::new()
        .route("/pods/{ordinal}/{*rest}", any(forward))
        .with_state(state)
}

async fn forward(
    State(state): State<ProxyState>,
    UrlPath((ordinal, rest)): UrlPath<(u32, String)>,
    request: Request,
) -> Response {
    let addr = state
        .directory
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&ordinal)
        .copied();
    let Some(addr) = addr else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("gateway-{ordinal} is not running"),
        )
            .into_response();
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("http://{addr}/{rest}{query}");
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let mut outgoing = state.client.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            for (name, value) in &headers {
                if name != axum::http::header::TRANSFER_ENCODING
                    && name != axum::http::header::CONTENT_LENGTH
                {
                    out.headers_mut().insert(name, value.clone());
                }
            }
            out
        }
        Err(err) => (StatusCode::BAD_GATEWAY, format!("gateway-{ordinal}: {err}")).into_response(),
    }
}
