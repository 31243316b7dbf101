//! Object storage for the local cluster: a real S3-compatible server, SeaweedFS `weed mini`
//! (master, volume, filer and S3 gateway in one process; SigV4 signatures checked), on free
//! 127.0.0.1 ports with its bucket created. Litestream replicates the pods' databases into it,
//! exactly as it would into the production bucket.
//!
//! Synchronous on purpose: starting and stopping are a few seconds of process management that
//! tests, `dev` and benchmarks all do at setup. Async callers use `spawn_blocking`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::Secret;

/// How long `weed mini` may take to answer S3 requests for its bucket.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How long it may take to stop on SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Why the object store could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its directory or log could not be created.
    #[error("object store: {0}")]
    Io(std::io::Error),
    /// It exited or did not become ready.
    #[error("object store did not start: {why}\n{log}")]
    NotReady {
        /// What was seen.
        why: String,
        /// The tail of its log.
        log: String,
    },
}

// By hand rather than `#[from]`: the message already shows the cause, so it is not also
// chained as a source (which would print it twice).
impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err)
    }
}

/// The ports one `weed mini` listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
}

impl Ports {
    fn pick() -> Result<Ports, std::io::Error> {
        loop {
            let p = free_ports(9)?;
            // SeaweedFS's plugin worker dials the admin gRPC port at admin + 10000.
            if TcpListener::bind(("127.0.0.1", p[8] + 10_000)).is_err() {
                continue;
            }
            return Ok(Ports {
                master: p[0],
                master_grpc: p[1],
                volume: p[2],
                volume_grpc: p[3],
                filer: p[4],
                filer_grpc: p[5],
                s3: p[6],
                s3_grpc: p[7],
                admin: p[8],
            });
        }
    }
}

/// Binds `n` distinct free loopback ports at once, then releases them for the child to take.
fn free_ports(n: usize) -> Result<Vec<u16>, std::io::Error> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        // Below 55536 so that port + 10000 exists (see Ports::pick).
        if port < 55_000 {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok(ports)
}

/// A running SeaweedFS S3 server with one bucket. Stopped on drop; its data stays in its
/// directory (like a real bucket, it outlives the processes that wrote to it).
#[derive(Debug)]
pub struct ObjectStore {
    weed: PathBuf,
    litestream: PathBuf,
    dir: PathBuf,
    ports: Ports,
    child: Option<Child>,
    bucket: String,
    access_key: String,
    secret_key: Secret,
}

impl ObjectStore {
    /// Starts `weed` with its data under `dir` and waits until `litestream` can list the
    /// bucket with the store's credentials.
    ///
    /// # Errors
    /// [`Error::NotReady`] (with the server's log) when it does not answer within a minute on
    /// any of three sets of ports.
    pub fn start(weed: &Path, litestream: &Path, dir: &Path) -> Result<ObjectStore, Error> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        // A port picked free can be taken by someone else before weed binds it: retry with
        // fresh ports.
        for _ in 0..3 {
            let mut store = ObjectStore {
                weed: weed.to_owned(),
                litestream: litestream.to_owned(),
                dir: dir.to_owned(),
                ports: Ports::pick()?,
                child: None,
                bucket: "guildshard-local".to_owned(),
                access_key: "local-access-key".to_owned(),
                secret_key: Secret::new("local-secret-key"),
            };
            match store.launch() {
                Ok(()) => return Ok(store),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotReady {
            why: "no attempt made".into(),
            log: String::new(),
        }))
    }

    fn launch(&mut self) -> Result<(), Error> {
        let p = self.ports;
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let sock = |name: &str| self.dir.join(name).display().to_string();
        let args = [
            "mini".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            format!("-filer.localSocket={}", sock("filer.sock")),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            format!("-s3.localSocket={}", sock("s3.sock")),
            "-s3.port.iceberg=0".to_owned(),
            "-s3.port.lance=0".to_owned(),
            "-admin.ui=false".to_owned(),
            format!("-admin.port={}", p.admin),
            "-webdav=false".to_owned(),
            format!("-bucket={}", self.bucket),
        ];
        let child = tool_command(&self.weed)
            .current_dir(&self.dir)
            // weed mini makes these its one S3 identity, so every request is signature-checked.
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", self.secret_key.expose())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(self.not_ready(format!("weed exited early ({status})")));
            }
            if TcpStream::connect(("127.0.0.1", p.s3)).is_ok() && self.bucket_answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(self.not_ready(format!("not ready within {READY_LIMIT:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether Litestream can list a (non-existent) replica in the bucket: the S3 port answers,
    /// the bucket exists and the credentials are accepted.
    fn bucket_answers(&self) -> bool {
        let url = format!(
            "s3://{}/readiness-probe?endpoint={}&region=us-east-1&force-path-style=true",
            self.bucket,
            self.endpoint()
        );
        let mut cmd = tool_command(&self.litestream);
        cmd.args(["ltx", "-json", &url])
            .envs(self.credentials_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run_within(&mut cmd, Duration::from_secs(10)).is_some_and(|s| s.success())
    }

    fn not_ready(&self, why: String) -> Error {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Error::NotReady {
            why,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("weed.log")
    }

    /// Stops the server (SIGTERM, then SIGKILL), keeping its data: an outage, or the end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_LIMIT);
        }
    }

    /// Starts the server again on the same ports with the same data, after [`stop`](Self::stop).
    ///
    /// # Errors
    /// As [`ObjectStore::start`] (a port may have been taken meanwhile).
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `http://127.0.0.1:<s3 port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The one access key the server accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The matching secret key.
    pub fn secret_key(&self) -> &Secret {
        &self.secret_key
    }

    /// The credentials as Litestream reads them from its environment.
    pub fn credentials_env(&self) -> [(&'static str, String); 2] {
        [
            ("LITESTREAM_ACCESS_KEY_ID", self.access_key.clone()),
            (
                "LITESTREAM_SECRET_ACCESS_KEY",
                self.secret_key.expose().to_owned(),
            ),
        ]
    }

    /// Object keys under `prefix` ("" = the whole bucket), recursively, relative to the
    /// bucket, sorted. Read through the SeaweedFS filer's JSON listing (loopback, no auth).
    ///
    /// # Errors
    /// When the filer cannot be reached or answers something that is not a listing.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut dirs = vec![prefix.trim_matches('/').to_owned()];
        let root = format!("/buckets/{}/", self.bucket);
        while let Some(dir) = dirs.pop() {
            let path = if dir.is_empty() {
                root.clone()
            } else {
                format!("{root}{dir}/")
            };
            let listing = self.filer_get_json(&format!("{path}?limit=10000"))?;
            let entries = listing
                .get("Entries")
                .and_then(serde_json::Value::as_array)
                .cloned()
                .unwrap_or_default();
            for entry in entries {
                let Some(rel) = entry["FullPath"]
                    .as_str()
                    .and_then(|f| f.strip_prefix(&root))
                    .map(str::to_owned)
                else {
                    continue;
                };
                // Bit 31 of Mode is Go's os.ModeDir.
                if entry["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0 {
                    dirs.push(rel);
                } else {
                    keys.push(rel);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// One HTTP/1.0 GET to the filer, parsed as JSON (a directory that does not exist gives
    /// an empty object).
    fn filer_get_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.filer));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let malformed = |why: &str| {
            Error::Io(std::io::Error::other(format!(
                "filer listing of {path}: {why}"
            )))
        };
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| malformed("no header/body separator"))?;
        if head.starts_with("HTTP/1.1 404") || head.starts_with("HTTP/1.0 404") {
            return Ok(serde_json::json!({}));
        }
        serde_json::from_str(body).map_err(|e| malformed(&e.to_string()))
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command for one of the tools, with an environment of PATH and HOME only: nothing from the
/// caller (AWS_CA_BUNDLE, which Litestream 0.5.17 refuses; real AWS credentials or profiles)
/// leaks in, and the AWS SDK never looks for instance credentials off this machine.
pub(crate) fn tool_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(
            ["PATH", "HOME"]
                .iter()
                .filter_map(|k| Some((*k, std::env::var(k).ok()?))),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs `cmd`, killing it after `limit`; its exit status, or `None` if it could not run or was
/// killed.
fn run_within(cmd: &mut Command, limit: Duration) -> Option<ExitStatus> {
    let mut child = cmd.spawn().ok()?;
    let status = wait_within(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a bounded wait, then SIGKILL. The `kill` command keeps `unsafe` out of the crate.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if wait_within(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
