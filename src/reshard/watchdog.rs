//! Running a long child process (a `litestream restore`) for as long as it makes progress.
//!
//! A restore's length grows with the replica (snapshot size, LTX files since it, the object
//! store's speed), so no fixed time limit fits every pod: one that is generous enough for a big
//! replica lets a hung restore block the handoff for as long. Instead the child may run as long
//! as it keeps showing progress, either a line on its stderr or a change in the size of its
//! output files, and is killed once it shows none for [`run`]'s `stall` limit.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

/// How often the output files are measured.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// The most stderr kept for the error message (its tail).
const STDERR_KEPT: usize = 4096;
/// How long to wait for the rest of stderr once the child has exited (a grandchild that
/// inherited the pipe must not hold the caller).
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// When a child last showed progress, and what it had shown by then.
#[derive(Clone, Debug)]
pub struct Watchdog {
    stall: Duration,
    last_progress: Instant,
    bytes: u64,
}

impl Watchdog {
    /// A watchdog started at `now` that allows `stall` without progress.
    pub fn new(stall: Duration, now: Instant) -> Self {
        Watchdog {
            stall,
            last_progress: now,
            bytes: 0,
        }
    }

    /// The child wrote a log line at `now`.
    pub fn line(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// The output files measured `bytes` at `now`; a change (either way: a temporary file
    /// renamed into place also counts) is progress.
    pub fn measured(&mut self, bytes: u64, now: Instant) {
        if bytes != self.bytes {
            self.bytes = bytes;
            self.last_progress = now;
        }
    }

    /// How long the child has shown nothing, once that is more than the stall limit.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let idle = now.saturating_duration_since(self.last_progress);
        (idle > self.stall).then_some(idle)
    }
}

/// How a watched run ended.
#[derive(Debug)]
pub struct Finished {
    /// The child's exit status.
    pub status: ExitStatus,
    /// The tail of its stderr.
    pub stderr: String,
}

/// Why a watched run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The child could not be started or waited for.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The child showed no progress for longer than the limit and was killed.
    #[error("no progress for {idle:?} (no output growth, no log line); killed. stderr: {stderr}")]
    Stalled {
        /// How long it showed nothing.
        idle: Duration,
        /// The tail of its stderr.
        stderr: String,
    },
}

/// Runs `cmd` to completion, killing it once it shows no progress for `stall`. Progress is a
/// line on its stderr or a change in the total size of the files in `output`'s directory
/// whose names start with `output`'s file name (the file itself, `-wal`, `.tmp`, …).
///
/// # Errors
/// [`Error::Stalled`] when it stalled, [`Error::Io`] when it could not be run.
pub async fn run(mut cmd: Command, output: &Path, stall: Duration) -> Result<Finished, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut lines = child.stderr.take().map(|e| BufReader::new(e).lines());
    let mut stderr = String::new();
    let mut watch = Watchdog::new(stall, Instant::now());
    let mut probe = tokio::time::interval(PROBE_EVERY);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            line = next_line(&mut lines) => match line {
                Some(line) => {
                    watch.line(Instant::now());
                    keep_tail(&mut stderr, &line);
                }
                None => lines = None,
            },
            _ = probe.tick() => {
                let now = Instant::now();
                watch.measured(output_bytes(output), now);
                if let Some(idle) = watch.stalled(now) {
                    let _ = child.kill().await;
                    return Err(Error::Stalled { idle, stderr: stderr.trim().to_owned() });
                }
            }
        }
    };
    let drain = async {
        while let Some(line) = next_line(&mut lines).await {
            keep_tail(&mut stderr, &line);
        }
    };
    let _ = tokio::time::timeout(STDERR_DRAIN, drain).await;
    Ok(Finished {
        status,
        stderr: stderr.trim().to_owned(),
    })
}

type Lines = Option<tokio::io::Lines<BufReader<tokio::process::ChildStderr>>>;

/// The next stderr line; pending forever once stderr is closed (so `select!` ignores it).
async fn next_line(lines: &mut Lines) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

fn keep_tail(kept: &mut String, line: &str) {
    kept.push_str(line);
    kept.push('\n');
    if kept.len() > STDERR_KEPT {
        let mut cut = kept.len() - STDERR_KEPT;
        while !kept.is_char_boundary(cut) {
            cut += 1;
        }
        kept.drain(..cut);
    }
}

/// The total size of `output` and its siblings named after it.
fn output_bytes(output: &Path) -> u64 {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else {
        return 0;
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(name.as_ref()))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_resets_the_stall_clock_and_silence_trips_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Watchdog::new(s(10), t0);
        assert_eq!(
            w.stalled(t0 + s(10)),
            None,
            "exactly the limit is still fine"
        );
        w.measured(100, t0 + s(8));
        w.line(t0 + s(15));
        w.measured(100, t0 + s(24));
        assert_eq!(w.stalled(t0 + s(24)), None, "a line at 15 s keeps it alive");
        w.measured(4096, t0 + s(25));
        assert_eq!(w.stalled(t0 + s(35)), None, "growth at 25 s keeps it alive");
        w.measured(4096, t0 + s(36));
        assert_eq!(
            w.stalled(t0 + s(36)),
            Some(s(11)),
            "the same size is no progress"
        );
        w.measured(0, t0 + s(37));
        assert_eq!(
            w.stalled(t0 + s(37)),
            None,
            "a rename away still changes it"
        );
    }

    #[test]
    fn the_kept_stderr_is_its_tail() {
        let mut kept = String::new();
        for i in 0..2000 {
            keep_tail(&mut kept, &format!("line {i} é"));
        }
        assert!(kept.len() <= STDERR_KEPT + 4);
        assert!(kept.ends_with("line 1999 é\n"));
    }
}
