//! Object storage (a real S3-compatible server) and the real Litestream binary for tests.
//!
//! [`tools()`] installs the pinned tools once per test run through `.ci/install-tools.sh` (the
//! same script CI and developers use; a venv under `<repo>/.cache/tools`, guarded by a lock
//! file). If they cannot be installed the test fails with the installer's message: nothing is
//! skipped silently.
//!
//! [`start_object_store`] runs the library's SeaweedFS `weed mini` (SigV4 checked) on free
//! 127.0.0.1 ports with its bucket created; the local cluster runs Litestream beside its pods
//! against it. [`Litestream`] runs the litestream binary directly against the repository's own
//! `litestream/litestream.yml` and `entrypoint.sh`, for the checks of those files themselves.
//!
//! Every child gets an explicit environment: `AWS_CA_BUNDLE` is never passed (Litestream 0.5.17
//! fails to start with it), and `AWS_EC2_METADATA_DISABLED` keeps the AWS SDK from looking for
//! instance credentials off this machine when a key is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use guildshard::local_cluster::ObjectStore;

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

    /// The same directory as the library's local-cluster tools.
    pub fn library(&self) -> guildshard::local_cluster::Tools {
        guildshard::local_cluster::Tools::at(&self.bin)
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

/// Starts the library's [`ObjectStore`] (SeaweedFS) with its data under `dir`.
///
/// # Panics
/// When it does not become ready; the message holds its log.
pub fn start_object_store(dir: &Path) -> ObjectStore {
    let tools = tools().library();
    ObjectStore::start(&tools.weed(), &tools.litestream(), dir)
        .unwrap_or_else(|e| panic!("SeaweedFS did not start: {e}"))
}

/// The cluster name [`Litestream`] replicates under.
pub const TEST_CLUSTER: &str = "test-cluster";
/// The namespace [`Litestream`] replicates under.
pub const TEST_NAMESPACE: &str = "test-ns";

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

    /// Litestream for the database at `db`, replicating to
    /// `<TEST_CLUSTER>/<TEST_NAMESPACE>/gateway-<ordinal>/` in `store`'s bucket, with 100 ms
    /// monitor and sync intervals so tests are quick.
    pub fn new(store: &ObjectStore, db: &Path, ordinal: u32) -> Litestream {
        let env = [
            ("DATABASE_PATH", db.display().to_string()),
            ("POD_ORDINAL", ordinal.to_string()),
            ("CLUSTER_NAME", TEST_CLUSTER.to_owned()),
            ("POD_NAMESPACE", TEST_NAMESPACE.to_owned()),
            ("LITESTREAM_BUCKET", store.bucket().to_owned()),
            ("LITESTREAM_S3_ENDPOINT", store.endpoint()),
            ("LITESTREAM_S3_REGION", "us-east-1".to_owned()),
            ("LITESTREAM_MONITOR_INTERVAL", "100ms".to_owned()),
            ("LITESTREAM_SYNC_INTERVAL", "100ms".to_owned()),
            ("LITESTREAM_ACCESS_KEY_ID", store.access_key().to_owned()),
            (
                "LITESTREAM_SECRET_ACCESS_KEY",
                store.secret_key().expose().to_owned(),
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
