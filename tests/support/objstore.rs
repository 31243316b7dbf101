//! Object storage (a real S3-compatible server) and the real Litestream binary for tests.
//!
//! [`tools()`] installs the pinned tools once per test run through `.ci/install-tools.sh` (the
//! same script CI and developers use; a venv under `<repo>/.cache/tools`, guarded by a lock
//! file). If they cannot be installed the test fails with the installer's message: nothing is
//! skipped silently.
//!
//! [`ObjectStore::start`] runs SeaweedFS `weed mini` (master, volume, filer and S3 in one
//! process, SigV4 checked) on free 127.0.0.1 ports with its bucket created; dropping it stops
//! the server and deletes its data. [`Litestream`] runs the litestream binary against the
//! repository's own `litestream/litestream.yml`, so the tests exercise the file the pods mount.
//!
//! Every child gets an explicit environment: `AWS_CA_BUNDLE` is never passed (Litestream 0.5.17
//! fails to start with it), and `AWS_EC2_METADATA_DISABLED` keeps the AWS SDK from looking for
//! instance credentials off this machine when a key is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the pinned tools were installed.
#[derive(Debug)]
pub struct Tools {
    /// The venv's `bin` directory: `litestream`, `weed`, `kubectl`, `kubernetes-validate`.
    pub bin: PathBuf,
}

impl Tools {
    /// The path of one installed tool.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// Installs (once per test process, idempotently across processes) and returns the tools.
///
/// # Panics
/// When the installer fails: the message says what to run by hand.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = repo_root().join(".ci/install-tools.sh");
        let out = run_bounded(
            Command::new("bash")
                .arg(&script)
                .env("GUILDSHARD_REPO", repo_root())
                .env_remove("GUILDSHARD_TOOLS_DIR"),
            Duration::from_secs(600),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout.lines().last().map(str::trim).unwrap_or_default();
        assert!(
            out.status.success() && !bin.is_empty(),
            "the test tools (litestream, seaweedfs, kubectl, kubernetes-validate) could not be \
             installed; run `bash .ci/install-tools.sh` to see why.\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let tools = Tools {
            bin: PathBuf::from(bin),
        };
        for name in ["litestream", "weed", "kubectl", "kubernetes-validate"] {
            assert!(
                tools.path(name).is_file(),
                "install-tools.sh reported success but {} is missing",
                tools.path(name).display()
            );
        }
        tools
    })
}

/// Runs `cmd` to completion, killing it and panicking after `limit` so nothing can hang the
/// suite. Stdout and stderr are captured.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = wait_bounded(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{shown} did not exit within {limit:?}");
    });
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Polls `child` until it exits or `limit` passes.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a bounded wait, then SIGKILL. Uses the `kill` command to keep `unsafe` out.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if let Some(status) = wait_bounded(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The environment every tool child starts from: PATH and HOME only, so nothing from the
/// caller (AWS_CA_BUNDLE, real AWS credentials or profiles) leaks in.
fn clean_command(program: &Path) -> Command {
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

/// Binds `n` distinct free loopback ports at once, then releases them for the child to take.
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        // SeaweedFS's plugin worker dials the admin gRPC port as admin port + 10000, so keep
        // every port below 55536 to let that one be chosen as "+10000" too.
        if port < 55_000 {
            ports.push(port);
        }
        held.push(l);
    }
    ports
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The ports one `weed mini` listens on.
#[derive(Debug, Clone, Copy)]
struct WeedPorts {
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

impl WeedPorts {
    fn pick() -> WeedPorts {
        loop {
            let p = free_ports(9);
            // The admin's gRPC port is fixed at admin + 10000 by the worker that dials it.
            if !port_is_free(p[8] + 10_000) {
                continue;
            }
            return WeedPorts {
                master: p[0],
                master_grpc: p[1],
                volume: p[2],
                volume_grpc: p[3],
                filer: p[4],
                filer_grpc: p[5],
                s3: p[6],
                s3_grpc: p[7],
                admin: p[8],
            };
        }
    }
}

/// A running SeaweedFS S3 server on 127.0.0.1 with one bucket. Stopped (and its data deleted)
/// on drop.
pub struct ObjectStore {
    dir: tempfile::TempDir,
    ports: WeedPorts,
    child: Option<Child>,
    bucket: String,
    access_key: String,
    secret_key: String,
}

impl ObjectStore {
    /// Starts a server with bucket `bucket` and waits (bounded) until Litestream can list it.
    ///
    /// # Panics
    /// When the server does not become ready; the message holds its log.
    pub fn start() -> ObjectStore {
        // Install first, so an install failure is reported as such.
        tools();
        let mut last_log = String::new();
        // A port picked free can be taken by someone else before weed binds it: retry a few
        // times with fresh ports.
        for _ in 0..3 {
            let mut store = ObjectStore {
                dir: tempfile::Builder::new()
                    .prefix("objstore-")
                    .tempdir()
                    .expect("temp dir"),
                ports: WeedPorts::pick(),
                child: None,
                bucket: "guildshard-test".to_owned(),
                access_key: "test-access-key".to_owned(),
                secret_key: "test-secret-key".to_owned(),
            };
            match store.launch() {
                Ok(()) => return store,
                Err(log) => last_log = log,
            }
        }
        panic!("SeaweedFS did not become ready after 3 attempts; last log:\n{last_log}");
    }

    /// Spawns `weed mini` on this store's ports and directory, waits until ready.
    fn launch(&mut self) -> Result<(), String> {
        let p = self.ports;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("weed log");
        let sock = |name: &str| self.dir.path().join(name).display().to_string();
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
        let child = clean_command(&tools().path("weed"))
            .current_dir(self.dir.path())
            // weed mini makes these the one S3 identity, so requests are signature-checked.
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn weed mini");
        self.child = Some(child);

        // Ready = Litestream can list a (non-existent) replica in the bucket: the S3 port
        // answers, the bucket exists and our credentials are accepted.
        let probe = Litestream::new(self, &self.dir.path().join("probe/probe.db"), 999);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "weed exited early ({status}):\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    ));
                }
            }
            if TcpStream::connect(("127.0.0.1", p.s3)).is_ok()
                && probe.try_ltx(Duration::from_secs(10)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "not ready within 60 s:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 15 s), keeping its data: an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(15));
        }
    }

    /// Starts the server again on the same ports with the same data, after [`stop`](Self::stop).
    ///
    /// # Panics
    /// When it does not become ready (e.g. a port was taken meanwhile).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped store");
        if let Err(log) = self.launch() {
            panic!("SeaweedFS did not come back: {log}");
        }
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
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Object keys under `prefix` ("" = the whole bucket), recursively, relative to the
    /// bucket, sorted. Read through the SeaweedFS filer's JSON listing (loopback, no auth).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut dirs = vec![prefix.trim_matches('/').to_owned()];
        while let Some(dir) = dirs.pop() {
            let path = if dir.is_empty() {
                format!("/buckets/{}/", self.bucket)
            } else {
                format!("/buckets/{}/{dir}/", self.bucket)
            };
            let listing = self.filer_get_json(&format!("{path}?limit=10000"));
            let entries = listing
                .get("Entries")
                .and_then(serde_json::Value::as_array)
                .cloned()
                .unwrap_or_default();
            for entry in entries {
                let full = entry["FullPath"]
                    .as_str()
                    .expect("entry FullPath")
                    .to_owned();
                let rel = full
                    .strip_prefix(&format!("/buckets/{}/", self.bucket))
                    .expect("entry under the bucket")
                    .to_owned();
                // Bit 31 of Mode is Go's os.ModeDir.
                let is_dir = entry["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0;
                if is_dir {
                    dirs.push(rel);
                } else {
                    keys.push(rel);
                }
            }
        }
        keys.sort();
        keys
    }

    /// One HTTP/1.0 GET to the filer, parsed as JSON (a directory that does not exist gives
    /// an empty object).
    fn filer_get_json(&self, path: &str) -> serde_json::Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.filer));
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to filer");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )
        .expect("write request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("malformed filer response: {response}"));
        if head.starts_with("HTTP/1.1 404") || head.starts_with("HTTP/1.0 404") {
            return serde_json::json!({});
        }
        serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("filer listing {path} is not JSON ({e}): {response}"))
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.stop();
        // TempDir removes the data directory after this.
    }
}

/// Litestream for one database and one ordinal against an [`ObjectStore`], configured by the
/// repository's `litestream/litestream.yml` through the environment variables it expands.
#[derive(Debug, Clone)]
pub struct Litestream {
    db: PathBuf,
    env: Vec<(String, String)>,
}

impl Litestream {
    /// The config file the pods mount.
    pub fn config_path() -> PathBuf {
        repo_root().join("litestream/litestream.yml")
    }

    /// The entrypoint wrapper the pods run.
    pub fn entrypoint_path() -> PathBuf {
        repo_root().join("litestream/entrypoint.sh")
    }

    /// Litestream for the database at `db`, replicating to `gateway-<ordinal>/` in `store`'s
    /// bucket, with 100 ms monitor and sync intervals so tests are quick.
    pub fn new(store: &ObjectStore, db: &Path, ordinal: u32) -> Litestream {
        let env = [
            ("DATABASE_PATH", db.display().to_string()),
            ("POD_ORDINAL", ordinal.to_string()),
            ("LITESTREAM_BUCKET", store.bucket().to_owned()),
            ("LITESTREAM_S3_ENDPOINT", store.endpoint()),
            ("LITESTREAM_S3_REGION", "us-east-1".to_owned()),
            ("LITESTREAM_MONITOR_INTERVAL", "100ms".to_owned()),
            ("LITESTREAM_SYNC_INTERVAL", "100ms".to_owned()),
            ("LITESTREAM_ACCESS_KEY_ID", store.access_key().to_owned()),
            (
                "LITESTREAM_SECRET_ACCESS_KEY",
                store.secret_key().to_owned(),
            ),
        ];
        Litestream {
            db: db.to_owned(),
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// The same instance with one environment variable replaced (or added).
    pub fn with_env(mut self, key: &str, value: &str) -> Litestream {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The database this instance replicates.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The environment the config expects (what the pod spec sets), e.g. to run the entrypoint.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// `litestream <args>` with the config and this instance's environment (and no
    /// AWS_CA_BUNDLE), not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(&tools().path("litestream"));
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("AWS_CA_BUNDLE");
        cmd
    }

    fn config_arg() -> String {
        Self::config_path().display().to_string()
    }

    /// Starts `litestream replicate` as a direct child (no shell, so SIGTERM reaches it).
    pub fn replicate(&self) -> Replicator {
        let name = self.db.file_name().unwrap_or_default().to_string_lossy();
        let log_path = self.db.with_file_name(format!("{name}.litestream.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("litestream log");
        let child = self
            .command(&["replicate", "-config", &Self::config_arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn litestream replicate");
        let mut replicator = Replicator {
            child: Some(child),
            log_path,
        };
        // Until Litestream has started, a SIGTERM kills it without its shutdown sync (Go's
        // default signal action), so hand it out only once it reports that it is replicating.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !replicator.log().contains("replicating to") {
            assert!(
                replicator.is_running(),
                "litestream replicate exited at start:\n{}",
                replicator.log()
            );
            assert!(
                Instant::now() < deadline,
                "litestream replicate did not start within 30 s:\n{}",
                replicator.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replicator
    }

    /// `litestream replicate -once`: one sync, then exit. Only while no daemon runs on the db.
    ///
    /// # Panics
    /// When it fails or takes longer than 60 s.
    pub fn replicate_once(&self) {
        let out = run_bounded(
            &mut self.command(&["replicate", "-once", "-config", &Self::config_arg()]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "replicate -once failed: {}",
            show(&out)
        );
    }

    /// `litestream restore -if-db-not-exists -if-replica-exists` into the configured path, as
    /// the init container runs it. Returns the output; panics after `timeout`.
    pub fn restore(&self, timeout: Duration) -> Output {
        run_bounded(
            &mut self.command(&[
                "restore",
                "-if-db-not-exists",
                "-if-replica-exists",
                "-config",
                &Self::config_arg(),
                &self.db.display().to_string(),
            ]),
            timeout,
        )
    }

    /// Restores the latest replica into `out` (which must not exist), leaving the live database
    /// alone: a peek at what a restore would bring back right now.
    pub fn restore_to(&self, out: &Path, timeout: Duration) -> Output {
        run_bounded(
            &mut self.command(&[
                "restore",
                "-config",
                &Self::config_arg(),
                "-o",
                &out.display().to_string(),
                &self.db.display().to_string(),
            ]),
            timeout,
        )
    }

    /// The replica's level-0 LTX files as Litestream lists them (`ltx -json`).
    ///
    /// # Errors
    /// The command's output when it fails.
    pub fn try_ltx(&self, timeout: Duration) -> Result<Vec<serde_json::Value>, String> {
        let out = run_bounded(
            &mut self.command(&[
                "ltx",
                "-json",
                "-config",
                &Self::config_arg(),
                &self.db.display().to_string(),
            ]),
            timeout,
        );
        if !out.status.success() {
            return Err(show(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(&text).map_err(|e| format!("ltx -json output ({e}): {text}"))
    }

    /// Deletes the database and everything Litestream keeps beside it: a lost volume.
    pub fn wipe_db(&self) {
        let name = self
            .db
            .file_name()
            .expect("db path has a file name")
            .to_string_lossy()
            .into_owned();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(self.db.with_file_name(format!("{name}{suffix}")));
        }
        let _ = std::fs::remove_dir_all(self.db.with_file_name(format!(".{name}-litestream")));
    }
}

/// A running `litestream replicate`; SIGTERM (final sync) on drop.
pub struct Replicator {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Replicator {
    /// The replicator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM and wait (bounded by Litestream's 30 s shutdown sync plus margin).
    ///
    /// # Panics
    /// When it had to be killed, or exits non-zero.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = terminate(&mut child, Duration::from_secs(40));
            assert!(
                status.is_some_and(|s| s.success()),
                "litestream replicate did not shut down cleanly ({status:?}):\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL: the pod dies without a final sync.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(40));
        }
    }
}

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
