//! Child processes of the local cluster (gateway pods, the HTTP service): started with an exact
//! environment, stderr to a log file, and handed out once they have printed the addresses they
//! listen on. Dropping a [`ChildProcess`] kills it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::warn;

use super::Error;

/// How long a child may take to print its listening addresses.
const START_LIMIT: Duration = Duration::from_secs(60);

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
