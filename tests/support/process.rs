//! Child processes of the guildshard binary: started with an explicit environment, their
//! listening addresses read from stdout, their stderr kept in a file for failure reports, and
//! killed on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_guildshard")
}

/// A running `guildshard` child process.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

impl Proc {
    /// Starts `guildshard <args>` with exactly `env` (plus PATH/HOME), logging stderr to
    /// `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        args: &[&str],
        env: &HashMap<String, String>,
        log_dir: &Path,
    ) -> Proc {
        std::fs::create_dir_all(log_dir).expect("log dir");
        let stderr_path = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr log file");
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env_clear()
            .envs(["PATH", "HOME"].iter().filter_map(|k| Some((*k, std::env::var(k).ok()?))))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn guildshard");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines lock").push(line);
            }
        });
        Proc {
            name: name.to_owned(),
            child: Some(child),
            stdout_lines: lines,
            stderr_path,
        }
    }

    /// Waits (bounded) for the `<listener> listening on <addr>` line.
    pub async fn listening(&self, listener: &str) -> SocketAddr {
        let prefix = format!("{listener} listening on ");
        let what = format!("{} to print '{prefix}…'", self.name);
        let lines = self.stdout_lines.clone();
        let found = tokio::time::timeout(super::eventually::patience(), async {
            loop {
                let hit = lines
                    .lock()
                    .expect("lines lock")
                    .iter()
                    .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned));
                if let Some(addr) = hit {
                    return addr;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match found {
            Ok(addr) => addr.trim().parse().expect("listening address parses"),
            Err(_) => panic!("timed out waiting for {what}\n{}", self.diagnostics()),
        }
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout_lines.lock().expect("lines lock").clone()
    }

    /// The stderr log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stdout and the tail of stderr, for assertion messages.
    pub fn diagnostics(&self) -> String {
        let err = self.stderr();
        let tail: String = err.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("--- {} stdout ---\n{}\n--- {} stderr (tail) ---\n{}", self.name, self.stdout().join("\n"), self.name, tail)
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit code.
    pub async fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let pid = self.pid()?;
        // SAFETY-free: use the `kill` command rather than libc to keep `unsafe` out of the tests.
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        self.wait(limit).await
    }

    /// Kills with SIGKILL (kill -9) and reaps.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Waits (bounded) for exit; returns the exit code (None when killed by a signal).
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                status.code()
            }
            _ => panic!("{} did not exit within {limit:?}\n{}", self.name, self.diagnostics()),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// Runs `guildshard <args>` to completion with the given env and stdin; kills it and panics
/// after 60 s so a command that unexpectedly keeps running cannot hang the suite.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> std::process::Output {
    use std::io::{Read, Write};
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn guildshard");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
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
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guildshard {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}
