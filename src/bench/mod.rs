//! Benchmarks behind `guildshard bench <scenario>`: each scenario measures one part of the
//! system, repeats the measurement, and reports medians (and ratios taken in the same run) as a
//! [`Report`] table. Timing is only ever printed here, never asserted in tests.
//!
//! Level 5 (above `local_cluster`): a consumer of the whole library, like the binary.
//!
//! One file per scenario: [`ownership`] (the hash), [`store`] (the writer and guild export and
//! import), [`ingest`] (a real gateway pod fed by the emulator), [`interactions`] (signed
//! interactions through the HTTP service and the owner pod), [`memory`] (a pod's RSS against
//! the guilds it owns), [`rescale`] (guild data moving when the pod count changes) and
//! [`failover`] (kill -9 to handling again, restore from the replica, replication lag).

pub mod failover;
pub mod ingest;
pub mod interactions;
pub mod memory;
pub mod ownership;
pub mod rescale;
pub mod seed;
pub mod store;

use std::fmt;
use std::path::{Path, PathBuf};

/// A benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// ns per `owner()` call (md5, jump) against the md5 digest alone.
    Ownership,
    /// Batched writer rows/s; export and import rows/s for one large guild.
    Store,
    /// A gateway pod's sustained events/s and CPU per 1k events, against the bare parse limit.
    Ingest,
    /// A pod's RSS against owned and total guilds.
    Memory,
    /// Signed interactions through http → owner pod → SQLite → response.
    Interactions,
    /// Guilds and rows moved, and time to converge, when N changes.
    Rescale,
    /// Time from kill -9 to handling events again; restore time; replication lag.
    Failover,
}

impl Scenario {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ownership => "ownership",
            Scenario::Store => "store",
            Scenario::Ingest => "ingest",
            Scenario::Memory => "memory",
            Scenario::Interactions => "interactions",
            Scenario::Rescale => "rescale",
            Scenario::Failover => "failover",
        }
    }
}

/// How a scenario runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Repetitions of each measurement; figures are their medians.
    pub runs: usize,
    /// Minimal sizes: checks that the scenario runs and prints rows, measures nothing useful.
    pub quick: bool,
    /// The `guildshard` binary that gateway pods run (scenarios that start pods).
    pub binary: PathBuf,
    /// Scratch space; each scenario makes (and removes) its own directory under it.
    pub work_dir: PathBuf,
    /// Total guild counts (`memory`, `rescale`); empty: the scenario's default.
    pub guilds: Vec<usize>,
    /// The pod-count changes `rescale` measures; empty: the scenario's default four.
    pub changes: Vec<rescale::Change>,
    /// Leave the scratch directories (pods' logs and databases) behind for inspection.
    pub keep_work: bool,
}

/// One line of a report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What is measured, with its parameters (`owner() md5, N=8`).
    pub figure: String,
    /// The median, formatted with its unit.
    pub value: String,
    /// Spread, ratio or why the figure is what it is.
    pub note: String,
}

impl Row {
    /// A row.
    pub fn new(
        figure: impl Into<String>,
        value: impl Into<String>,
        note: impl Into<String>,
    ) -> Row {
        Row {
            figure: figure.into(),
            value: value.into(),
            note: note.into(),
        }
    }
}

/// A scenario's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// How many repetitions each median is over.
    pub runs: usize,
    /// The figures, in the order measured.
    pub rows: Vec<Row>,
}

impl fmt::Display for Report {
    /// A Markdown table, so it can be pasted into BENCHMARKS.md as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "## {} (medians of {} runs)",
            self.scenario.name(),
            self.runs
        )?;
        let w0 = self
            .rows
            .iter()
            .map(|r| r.figure.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.value.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(f, "| {:<w0$} | {:>w1$} | note |", "figure", "value")?;
        writeln!(f, "|{}|{}|------|", "-".repeat(w0 + 2), "-".repeat(w1 + 2))?;
        for row in &self.rows {
            writeln!(
                f,
                "| {:<w0$} | {:>w1$} | {} |",
                row.figure, row.value, row.note
            )?;
        }
        Ok(())
    }
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Scratch files or /proc could not be read or written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The store refused something.
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
    /// The local cluster (emulator or pods) failed.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::local_cluster::Error),
    /// The emulator refused a request.
    #[error("emulator: {0}")]
    Emulator(#[from] crate::emulator::Error),
    /// A measurement could not be taken.
    #[error("{0}")]
    Measure(String),
}

/// Runs `scenario`.
///
/// # Errors
/// Whatever stopped the scenario: scratch files, the store, the local cluster.
pub async fn run(scenario: Scenario, options: &Options) -> Result<Report, Error> {
    let rows = match scenario {
        Scenario::Ownership => {
            let options = options.clone();
            tokio::task::spawn_blocking(move || ownership::run(&options))
                .await
                .map_err(|e| Error::Measure(format!("ownership task: {e}")))?
        }
        Scenario::Store => store::run(options).await?,
        Scenario::Ingest => ingest::run(options).await?,
        Scenario::Memory => memory::run(options).await?,
        Scenario::Interactions => interactions::run(options).await?,
        Scenario::Rescale => rescale::run(options).await?,
        Scenario::Failover => failover::run(options).await?,
    };
    Ok(Report {
        scenario,
        runs: options.runs,
        rows,
    })
}

/// The median of `samples` (the mean of the middle two for an even count); 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `min–max` of `samples`, for the note column.
fn spread(samples: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if samples.is_empty() {
        return String::new();
    }
    format!("range {}–{}", fmt(min), fmt(max))
}

/// A rate with thousands grouped: `123 456/s`.
fn per_sec(rate: f64) -> String {
    format!("{}/s", group(rate.round() as u64))
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// User + system CPU seconds a process has used so far (`/proc/<pid>/stat` utime + stime).
fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing ')' do not.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| Error::Measure(format!("unexpected /proc/{pid}/stat")))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the stat line; `after` starts at field 3.
    let ticks = |i: usize| -> Result<f64, Error> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or_else(|| Error::Measure(format!("no field {} in /proc/{pid}/stat", i + 3)))
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// `getconf CLK_TCK` (100 on every Linux this runs on; asked rather than assumed).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Resident set size of a process in bytes (`/proc/<pid>/status` VmRSS).
fn rss_bytes(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| Error::Measure(format!("no VmRSS in /proc/{pid}/status")))
}

/// A scratch directory removed on drop (benchmarks leave nothing behind unless asked to).
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(options: &Options, what: &str) -> Result<Scratch, Error> {
        let base = &options.work_dir;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "guildshard-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch {
            dir,
            keep: options.keep_work,
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            tracing::info!(dir = %self.dir.display(), "scratch directory kept");
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn grouped_rates() {
        assert_eq!(per_sec(1234567.4), "1 234 567/s");
        assert_eq!(per_sec(999.0), "999/s");
    }
}
