//! Litestream beside each local pod, the way the StatefulSet runs it (`cluster/base`):
//!
//! 1. before the pod starts, the init container restores the ordinal's replica into an empty
//!    volume (`restore -if-db-not-exists -if-replica-exists`: a kept volume is left alone, and a
//!    first boot with no replica starts empty);
//! 2. a native sidecar runs `replicate` for the pod's whole life and is stopped only after the
//!    pod has exited, so its final sync uploads the last writes.
//!
//! Both run through `litestream/entrypoint.sh` with `litestream/litestream.yml`, embedded here
//! byte for byte, so the local cluster exercises exactly the files the pods mount.
//!
//! [`Replication::lag`] reads how far a replica is behind its database: Litestream keeps every
//! change it has taken from the WAL as a local level-0 LTX file until it is uploaded, so the
//! lag is the age of the oldest local LTX file whose transaction the replica does not have yet.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::{Child, Command};
use tracing::warn;

use super::objstore::{tool_command, ObjectStore};
use super::tools::Tools;
use crate::config::{ReplicaPrefix, Secret};

/// The cluster name local clusters replicate under (`CLUSTER_NAME`).
pub const LOCAL_CLUSTER_NAME: &str = "local";

/// `litestream/litestream.yml`, as the ConfigMap carries it.
pub const CONFIG_FILE: &str = include_str!("../../litestream/litestream.yml");
/// `litestream/entrypoint.sh`, as the ConfigMap carries it.
pub const ENTRYPOINT_FILE: &str = include_str!("../../litestream/entrypoint.sh");

/// A restore (init container) may take this long.
const RESTORE_LIMIT: Duration = Duration::from_secs(120);
/// The sidecar must report that it replicates within this long.
const SIDECAR_START_LIMIT: Duration = Duration::from_secs(30);
/// SIGTERM to exit: Litestream's shutdown sync (30 s) plus margin.
const SIDECAR_STOP_LIMIT: Duration = Duration::from_secs(40);
/// One listing of the replica may take this long (Litestream retries an unreachable store for
/// over a minute).
const LIST_LIMIT: Duration = Duration::from_secs(3);

/// Why a Litestream step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Files or processes could not be created.
    #[error("litestream: {0}")]
    Io(std::io::Error),
    /// Litestream ran and failed, or took too long.
    #[error("litestream {step} for gateway-{ordinal}: {why}")]
    Failed {
        /// `restore`, `replicate`, `ltx`.
        step: &'static str,
        /// The ordinal.
        ordinal: u32,
        /// Its exit status and output, or the time limit.
        why: String,
    },
}

// By hand rather than `#[from]`: the message already shows the cause, so it is not also
// chained as a source (which would print it twice).
impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err)
    }
}

/// Litestream settings shared by every pod of a local cluster: where the tool and the
/// configuration are, and the object store they replicate into.
#[derive(Clone, Debug)]
pub struct Replication {
    litestream: PathBuf,
    files: PathBuf,
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: Secret,
    interval: Duration,
    prefix: ReplicaPrefix,
}

impl Replication {
    /// Replication into `store` with the monitor and sync intervals set to `interval`; writes
    /// the embedded configuration and entrypoint under `files`.
    ///
    /// # Errors
    /// When `files` cannot be written.
    pub fn new(
        tools: &Tools,
        store: &ObjectStore,
        files: &Path,
        interval: Duration,
    ) -> Result<Replication, Error> {
        std::fs::create_dir_all(files)?;
        std::fs::write(files.join("litestream.yml"), CONFIG_FILE)?;
        std::fs::write(files.join("entrypoint.sh"), ENTRYPOINT_FILE)?;
        Ok(Replication {
            litestream: tools.litestream(),
            files: files.to_owned(),
            endpoint: store.endpoint(),
            bucket: store.bucket().to_owned(),
            access_key: store.access_key().to_owned(),
            secret_key: store.secret_key().clone(),
            interval,
            // The Kubernetes API stand-in's namespace; a cluster in another namespace sets it
            // with `in_namespace`.
            prefix: ReplicaPrefix {
                cluster: LOCAL_CLUSTER_NAME.to_owned(),
                namespace: crate::kube_api::KubeApiConfig::default().namespace,
            },
        })
    }

    /// The same settings for pods in `namespace` (`POD_NAMESPACE`, the replica path's second
    /// segment).
    pub fn in_namespace(mut self, namespace: &str) -> Replication {
        namespace.clone_into(&mut self.prefix.namespace);
        self
    }

    /// The replica paths' prefix (`<cluster>/<namespace>`).
    pub fn prefix(&self) -> &ReplicaPrefix {
        &self.prefix
    }

    /// The configuration file (`litestream.yml`).
    pub fn config_path(&self) -> PathBuf {
        self.files.join("litestream.yml")
    }

    /// The entrypoint wrapper (`entrypoint.sh`).
    pub fn entrypoint_path(&self) -> PathBuf {
        self.files.join("entrypoint.sh")
    }

    /// The `litestream` executable.
    pub fn binary(&self) -> &Path {
        &self.litestream
    }

    /// The monitor and sync interval: commits older than about twice this are in the replica.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The environment `litestream.yml` expands, as the pod spec gives it to the Litestream
    /// containers of `ordinal` whose database is `db`.
    pub fn litestream_env(&self, ordinal: u32, db: &Path) -> Vec<(String, String)> {
        let interval = format!("{}ms", self.interval.as_millis());
        [
            ("POD_ORDINAL", ordinal.to_string()),
            ("POD_NAME", format!("gateway-{ordinal}")),
            ("CLUSTER_NAME", self.prefix.cluster.clone()),
            ("POD_NAMESPACE", self.prefix.namespace.clone()),
            ("DATABASE_PATH", db.display().to_string()),
            ("LITESTREAM_BIN", self.litestream.display().to_string()),
            ("LITESTREAM_BUCKET", self.bucket.clone()),
            ("LITESTREAM_S3_ENDPOINT", self.endpoint.clone()),
            ("LITESTREAM_S3_REGION", "us-east-1".to_owned()),
            ("LITESTREAM_MONITOR_INTERVAL", interval.clone()),
            ("LITESTREAM_SYNC_INTERVAL", interval),
            ("LITESTREAM_ACCESS_KEY_ID", self.access_key.clone()),
            (
                "LITESTREAM_SECRET_ACCESS_KEY",
                self.secret_key.expose().to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// What the gateway container of `ordinal` gets besides its own settings: Litestream
    /// manages checkpoints, and the replica fallback of resharding can restore a departed
    /// ordinal's replica (the manifests give the gateway container the same values).
    pub fn gateway_env(&self, ordinal: u32, db: &Path) -> Vec<(String, String)> {
        let mut env = self.litestream_env(ordinal, db);
        env.extend(
            [
                ("LITESTREAM_ENABLED", "true".to_owned()),
                (
                    "LITESTREAM_CONFIG",
                    self.config_path().display().to_string(),
                ),
                ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    }

    /// `sh entrypoint.sh <args>` with exactly the Litestream containers' environment.
    fn entrypoint(&self, ordinal: u32, db: &Path, args: &[&str]) -> Command {
        let mut cmd = tool_command(Path::new("sh"));
        cmd.arg(self.entrypoint_path())
            .args(args)
            .envs(self.litestream_env(ordinal, db));
        let mut cmd = Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    /// The init container: restores `ordinal`'s replica into `db` unless `db` exists; a first
    /// boot without a replica leaves no file and succeeds.
    ///
    /// # Errors
    /// [`Error::Failed`] when Litestream fails or takes over two minutes.
    pub async fn restore(&self, ordinal: u32, db: &Path) -> Result<(), Error> {
        if let Some(dir) = db.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let config = self.config_path().display().to_string();
        let db_arg = db.display().to_string();
        let cmd = self.entrypoint(
            ordinal,
            db,
            &[
                "restore",
                "-if-db-not-exists",
                "-if-replica-exists",
                "-config",
                &config,
                &db_arg,
            ],
        );
        run("restore", ordinal, cmd, RESTORE_LIMIT).await.map(drop)
    }

    /// Restores the latest state of `ordinal`'s replica into `out` (which must not exist),
    /// leaving the live database alone. `false` when the ordinal has no replica.
    ///
    /// # Errors
    /// [`Error::Failed`] when Litestream fails or takes over two minutes.
    pub async fn restore_copy(&self, ordinal: u32, db: &Path, out: &Path) -> Result<bool, Error> {
        let config = self.config_path().display().to_string();
        let (db_arg, out_arg) = (db.display().to_string(), out.display().to_string());
        let cmd = self.entrypoint(
            ordinal,
            db,
            &[
                "restore",
                "-if-replica-exists",
                "-config",
                &config,
                "-o",
                &out_arg,
                &db_arg,
            ],
        );
        run("restore", ordinal, cmd, RESTORE_LIMIT).await?;
        Ok(out.exists())
    }

    /// Starts the sidecar (`replicate`) for `ordinal`, its output appended to `log`, and waits
    /// until it reports that it replicates: before that, a SIGTERM would end it without its
    /// shutdown sync.
    ///
    /// # Errors
    /// [`Error::Failed`] when it exits or does not report within 30 s.
    pub async fn start_sidecar(
        &self,
        ordinal: u32,
        db: &Path,
        log: &Path,
    ) -> Result<Sidecar, Error> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let start = std::fs::metadata(log)?.len();
        let config = self.config_path().display().to_string();
        let mut cmd = self.entrypoint(ordinal, db, &["replicate", "-config", &config]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
        let mut sidecar = Sidecar {
            ordinal,
            child: cmd.spawn()?,
            log: log.to_owned(),
        };
        let fail = |why: String| Error::Failed {
            step: "replicate",
            ordinal,
            why,
        };
        let deadline = tokio::time::Instant::now() + SIDECAR_START_LIMIT;
        loop {
            let text = std::fs::read(log).unwrap_or_default();
            let since = String::from_utf8_lossy(text.get(start as usize..).unwrap_or_default());
            if since.contains("replicating to") {
                return Ok(sidecar);
            }
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                return Err(fail(format!(
                    "exited at start ({status}): {}",
                    since.trim()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fail(format!(
                    "did not start within {SIDECAR_START_LIMIT:?}: {}",
                    since.trim()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The highest transaction id in `ordinal`'s replica (`None`: no replica yet).
    ///
    /// # Errors
    /// [`Error::Failed`] when the store cannot be listed within 3 s.
    pub async fn replica_txid(&self, ordinal: u32, db: &Path) -> Result<Option<u64>, Error> {
        let config = self.config_path().display().to_string();
        let db_arg = db.display().to_string();
        let mut cmd = Command::from(tool_command(&self.litestream));
        cmd.args(["ltx", "-json", "-level", "all", "-config", &config, &db_arg])
            .envs(self.litestream_env(ordinal, db))
            .kill_on_drop(true);
        let out = run("ltx", ordinal, cmd, LIST_LIMIT).await?;
        let files: Vec<serde_json::Value> =
            serde_json::from_slice(&out).map_err(|e| Error::Failed {
                step: "ltx",
                ordinal,
                why: format!("unexpected listing ({e})"),
            })?;
        Ok(files
            .iter()
            .filter_map(|f| f["max_txid"].as_str())
            .filter_map(|t| u64::from_str_radix(t, 16).ok())
            .max())
    }

    /// How far `ordinal`'s replica is behind its database `db`, given the replica's highest
    /// transaction id as last listed.
    pub fn lag(db: &Path, replica_txid: Option<u64>) -> Lag {
        let local = local_ltx_files(db);
        let replica = replica_txid.unwrap_or(0);
        let now = SystemTime::now();
        let oldest_pending = local
            .iter()
            .filter(|f| f.max_txid > replica)
            .filter_map(|f| now.duration_since(f.modified).ok())
            .max();
        Lag {
            local_txid: local.iter().map(|f| f.max_txid).max().unwrap_or(0),
            replica_txid,
            behind: oldest_pending.unwrap_or_default(),
        }
    }
}

/// How far a replica is behind its database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// The latest transaction Litestream has taken from the database's WAL.
    pub local_txid: u64,
    /// The latest transaction in the replica (`None`: nothing replicated yet).
    pub replica_txid: Option<u64>,
    /// Age of the oldest change taken from the WAL that the replica does not have yet; zero
    /// when it is caught up. Changes still in the WAL (at most one monitor interval's worth)
    /// are not counted.
    pub behind: Duration,
}

struct LocalLtx {
    max_txid: u64,
    modified: SystemTime,
}

/// Litestream's local level-0 files for `db`: `.<name>-litestream/ltx/0/<min>-<max>.ltx`.
fn local_ltx_files(db: &Path) -> Vec<LocalLtx> {
    let name = db.file_name().unwrap_or_default().to_string_lossy();
    let dir = db.with_file_name(format!(".{name}-litestream/ltx/0"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let (_, max) = file.strip_suffix(".ltx")?.split_once('-')?;
            Some(LocalLtx {
                max_txid: u64::from_str_radix(max, 16).ok()?,
                modified: e.metadata().ok()?.modified().ok()?,
            })
        })
        .collect()
}

/// Runs `cmd` to completion within `limit`; its stdout on success.
async fn run(
    step: &'static str,
    ordinal: u32,
    mut cmd: Command,
    limit: Duration,
) -> Result<Vec<u8>, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fail = |why: String| Error::Failed { step, ordinal, why };
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| fail(format!("took over {limit:?}")))??;
    if !out.status.success() {
        return Err(fail(format!(
            "exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// A running `litestream replicate` for one pod. Dropping it kills it (no final sync); stop it
/// with [`Sidecar::stop`].
pub struct Sidecar {
    ordinal: u32,
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as the kubelet sends once the pod's app container has exited: Litestream syncs
    /// what is left and exits. Returns whether it exited cleanly within its grace period.
    pub async fn stop(mut self) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        match tokio::time::timeout(SIDECAR_STOP_LIMIT, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                warn!(
                    ordinal = self.ordinal,
                    "litestream did not stop within its grace period; killing"
                );
                let _ = self.child.kill().await;
                false
            }
        }
    }

    /// SIGKILL: the pod dies without a final sync.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}
