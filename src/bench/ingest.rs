//! The `ingest` scenario: a whole cluster of N real gateway pod processes (N = 1, 2, 3) over
//! [`SHARDS`] Discord shards, fed by the emulator's traffic generator at increasing rates. Each
//! shard has one connection in the cluster (DESIGN §6): its connector reads each dispatch's
//! envelope and routes it to the guild's md5 owner, which parses it once and records it.
//!
//! Per rate: frames the emulator sent per second, dispatches the cluster took in
//! (`events_seen`, summed over the pods: each dispatch is seen once, by its connector) and
//! recorded (`events_handled`) per second, each pod's share of the recorded dispatches, and
//! the cluster's CPU (utime + stime of every pod from `/proc/<pid>/stat`, summed) per 1k
//! dispatches. The rate steps up until the cluster or the generator falls behind.
//!
//! Identify limits are off here: they only pace the cluster's start, not its intake.
//!
//! The anchor: deserializing the very frames the pod received (the emulator keeps each
//! session's last 50k frames for resumes) with `serde_json` into serenity's `GatewayEvent` and
//! doing nothing else, in this process, in the same run.

use std::time::{Duration, Instant};

use serenity::model::event::GatewayEvent;

use super::{cpu_seconds, median, per_sec, Error, Options, Row, Scratch};
use crate::emulator::{EmulatorConfig, TrafficRequest};
use crate::local_cluster::{ClusterConfig, LocalCluster, StatefulSetSpec};
use crate::ownership::Strategy;
use crate::wire::StatusReport;

/// Shards of the benchmark's bot: enough that three pods each connect some.
const SHARDS: u32 = 6;
/// The rate the per-event CPU targets are read at (the TypeScript comparison's range).
const REFERENCE_RATE: f64 = 16_000.0;
/// A step counts as kept up with when the pod took in this share of what was sent.
const KEPT_UP: f64 = 0.9;
/// A step counts as generator-limited below this share of the requested rate.
const GENERATED: f64 = 0.9;

/// Measures.
///
/// # Errors
/// The cluster failing to start or answer, or /proc being unreadable.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let (pod_counts, rates, window, guilds): (&[u32], &[f64], Duration, usize) = if options.quick {
        (&[1, 2], &[200.0], Duration::from_millis(500), 20)
    } else {
        (
            &[1, 2, 3],
            &[
                1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0, 20_000.0, 24_000.0, 28_000.0,
                32_000.0, 40_000.0,
            ],
            Duration::from_secs(4),
            500,
        )
    };
    let mut rows = Vec::new();
    let mut peak_at_one = None;
    let mut parse_limit = None;
    // Cluster CPU per 1k dispatches at the reference rate (or the highest rate kept up with
    // below it), by N.
    let mut cpu_at: Vec<(u32, f64, f64)> = Vec::new();
    for &n in pod_counts {
        let scratch = Scratch::new(options, "ingest")?;
        let cluster = start(options, scratch.path(), n, guilds).await?;
        let result = measure_cluster(options, &cluster, n, rates, window).await;
        let frames = received_frames(&cluster);
        cluster.shutdown().await;
        let measured = result?;
        rows.extend(measured.rows);
        if let Some(reference) = measured.reference {
            cpu_at.push((n, reference.0, reference.1));
        }
        if n == 1 {
            peak_at_one = measured.peak;
            parse_limit = Some(parse_rates(options, &frames));
        }
    }
    if let Some(&(_, rate_one, one)) = cpu_at.iter().find(|(n, _, _)| *n == 1) {
        rows.push(Row::new(
            format!(
                "cluster CPU per 1k dispatches, N=1, at {}",
                per_sec(rate_one)
            ),
            format!("{one:.1} ms"),
            if one <= 12.0 {
                "target ≤ 12 ms: met".to_owned()
            } else {
                "target ≤ 12 ms: MISSED".to_owned()
            },
        ));
        for &(n, rate, cpu) in cpu_at.iter().filter(|(n, _, _)| *n > 1) {
            let ratio = cpu / one.max(f64::MIN_POSITIVE);
            rows.push(Row::new(
                format!(
                    "cluster CPU per dispatch, N={n} ÷ N=1, at {}",
                    per_sec(rate)
                ),
                format!("{ratio:.2}×"),
                format!(
                    "{cpu:.1} ms per 1k at N={n}; target at N=3 ≤ 1.5×: {}",
                    if n != 3 {
                        "n/a"
                    } else if ratio <= 1.5 {
                        "met"
                    } else {
                        "MISSED"
                    }
                ),
            ));
        }
    }
    if let Some((all, creates, count)) = parse_limit {
        rows.push(Row::new(
            format!("bare parse: serde_json → GatewayEvent, {count} received frames"),
            per_sec(all),
            "the traffic frames the N=1 pod received (all kinds), parsed in this process, nothing else",
        ));
        rows.push(Row::new(
            "bare parse: MESSAGE_CREATE frames only",
            per_sec(creates),
            "the heaviest frame kind, 72% of the generated traffic",
        ));
        if let Some(peak) = peak_at_one {
            let ratio = all / peak.max(1.0);
            rows.push(Row::new(
                "bare parse limit ÷ pod's peak handled rate, N=1",
                format!("{ratio:.2}×"),
                if ratio <= 3.0 {
                    "target ≤ 3×: met".to_owned()
                } else {
                    "target ≤ 3×: MISSED (the peak is bounded by whichever of the pod or the \
                     in-process generator saturates first; see the rows above)"
                        .to_owned()
                },
            ));
        }
    }
    Ok(rows)
}

async fn start(
    options: &Options,
    dir: &std::path::Path,
    n: u32,
    guilds: usize,
) -> Result<LocalCluster, Error> {
    let cfg = ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: options.binary.clone(),
        pods: n,
        strategy: Strategy::Md5,
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        emulator: EmulatorConfig {
            guilds,
            members_per_guild: 20,
            channels_per_guild: 3,
            identify_window_ms: 0,
            shards: SHARDS,
            max_concurrency: SHARDS,
            ..EmulatorConfig::default()
        },
        pod_env: Vec::new(),
        http: false,
        replication: None,
    };
    let cluster = LocalCluster::start(cfg).await?;
    for o in 0..n {
        cluster.wait_ready(o, Duration::from_secs(60)).await?;
    }
    Ok(cluster)
}

/// What [`measure_cluster`] found.
struct Measured {
    rows: Vec<Row>,
    /// The peak handled rate kept up with.
    peak: Option<f64>,
    /// `(rate, cluster CPU ms per 1k dispatches)` at the highest rate kept up with, up to
    /// [`REFERENCE_RATE`].
    reference: Option<(f64, f64)>,
}

/// Steps the rate up on the cluster.
async fn measure_cluster(
    options: &Options,
    cluster: &LocalCluster,
    n: u32,
    rates: &[f64],
    window: Duration,
) -> Result<Measured, Error> {
    let pids: Vec<u32> = (0..n)
        .map(|o| cluster.pod(o).and_then(|p| p.pid()))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Error::Measure("a pod has no pid".into()))?;
    let mut measured = Measured {
        rows: Vec::new(),
        peak: None,
        reference: None,
    };
    for &rate in rates {
        let mut samples: Vec<Step> = Vec::new();
        for _ in 0..options.runs.max(1) {
            samples.push(step(cluster, &pids, rate, window).await?);
        }
        let sent = median(&samples.iter().map(|s| s.sent).collect::<Vec<_>>());
        let seen = median(&samples.iter().map(|s| s.seen).collect::<Vec<_>>());
        let handled = median(&samples.iter().map(|s| s.handled).collect::<Vec<_>>());
        let cpu = median(&samples.iter().map(|s| s.cpu_ms_per_1k).collect::<Vec<_>>());
        let generator_cpu = median(&samples.iter().map(|s| s.emulator_cpu).collect::<Vec<_>>());
        let shares = samples.last().map(|s| s.shares.clone()).unwrap_or_default();
        let backlog = median(&samples.iter().map(|s| s.backlog).collect::<Vec<_>>());
        // Keeping up means taking frames in AND committing them: at the end of the window,
        // little of what arrived still waits for its owner.
        let kept_up = seen >= KEPT_UP * sent && backlog <= 1.0 - KEPT_UP;
        let generated = sent >= GENERATED * rate;
        if kept_up {
            measured.peak = Some(measured.peak.map_or(handled, |p: f64| p.max(handled)));
            if rate <= REFERENCE_RATE {
                measured.reference = Some((rate, cpu));
            }
        }
        let verdict = match (kept_up, generated) {
            (true, true) => "kept up",
            (true, false) => {
                "kept up; GENERATOR-LIMITED (emulator could not send the requested rate)"
            }
            (false, _) => "FELL BEHIND (backlog grew)",
        };
        let shares: Vec<String> = shares
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect();
        measured.rows.push(Row::new(
            format!("N={n}, requested {}", per_sec(rate)),
            per_sec(handled),
            format!(
                "handled (recorded); sent {}, seen {}; cluster CPU {cpu:.1} ms per 1k \
                 dispatches; share of intake by pod [{}]; emulator+bench CPU \
                 {generator_cpu:.2} cores; {verdict}",
                per_sec(sent),
                per_sec(seen),
                shares.join(", "),
            ),
        ));
        if !kept_up || !generated {
            break;
        }
    }
    Ok(measured)
}

struct Step {
    sent: f64,
    seen: f64,
    handled: f64,
    cpu_ms_per_1k: f64,
    emulator_cpu: f64,
    /// Each pod's share of the recorded dispatches.
    shares: Vec<f64>,
    /// Dispatches still unacknowledged at the end of the window, as a share of those sent.
    backlog: f64,
}

/// Every pod's status, by ordinal.
async fn statuses(cluster: &LocalCluster, n: usize) -> Result<Vec<StatusReport>, Error> {
    let mut out = Vec::with_capacity(n);
    for o in 0..n as u32 {
        out.push(cluster.status(o).await?);
    }
    Ok(out)
}

fn total(reports: &[StatusReport], f: impl Fn(&StatusReport) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

fn cpu_of(pids: &[u32]) -> Result<f64, Error> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// One window of traffic at `rate`, then a bounded wait for the cluster to drain its backlog
/// so the next step starts clean.
async fn step(
    cluster: &LocalCluster,
    pids: &[u32],
    rate: f64,
    window: Duration,
) -> Result<Step, Error> {
    let emu = cluster.emulator();
    let before = statuses(cluster, pids.len()).await?;
    let dispatched_before = emu.counters().events_dispatched;
    let cpu_before = cpu_of(pids)?;
    let self_before = cpu_seconds(std::process::id())?;
    let start = Instant::now();
    emu.start_traffic(TrafficRequest {
        rate,
        count: None,
        duration_ms: Some(window.as_millis() as u64),
        seed: Some(7),
    })?;
    tokio::time::sleep(window).await;
    let elapsed = start.elapsed().as_secs_f64();
    let after = statuses(cluster, pids.len()).await?;
    let dispatched = emu.counters().events_dispatched - dispatched_before;
    let self_after = cpu_seconds(std::process::id())?;
    emu.stop_traffic();
    // Drain: every dispatched frame seen and acknowledged, or no progress for two seconds.
    let seen_before = total(&before, |s| s.events_seen);
    let target = seen_before + dispatched;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = total(&after, |s| s.events_handled);
    let mut last_progress = Instant::now();
    let drained = loop {
        let now = statuses(cluster, pids.len()).await?;
        let handled = total(&now, |s| s.events_handled);
        if total(&now, |s| s.events_seen) >= target && total(&now, |s| s.unacknowledged) == 0 {
            break now;
        }
        if handled > last {
            last = handled;
            last_progress = Instant::now();
        }
        if Instant::now() > deadline || last_progress.elapsed() > Duration::from_secs(2) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = cpu_of(pids)? - cpu_before;
    let seen_total = total(&drained, |s| s.events_seen)
        .saturating_sub(seen_before)
        .max(1);
    let handled_by: Vec<u64> = drained
        .iter()
        .zip(&before)
        .map(|(a, b)| a.events_handled.saturating_sub(b.events_handled))
        .collect();
    let handled_all = handled_by.iter().sum::<u64>().max(1);
    let delta = |f: fn(&StatusReport) -> u64| {
        total(&after, f).saturating_sub(total(&before, f)) as f64 / elapsed
    };
    Ok(Step {
        sent: dispatched as f64 / elapsed,
        seen: delta(|s| s.events_seen),
        handled: delta(|s| s.events_handled),
        cpu_ms_per_1k: cpu * 1000.0 * 1000.0 / seen_total as f64,
        emulator_cpu: (self_after - self_before) / elapsed,
        shares: handled_by
            .iter()
            .map(|h| *h as f64 / handled_all as f64)
            .collect(),
        backlog: total(&after, |s| s.unacknowledged) as f64 / dispatched.max(1) as f64,
    })
}

/// The dispatch frames the emulator sent to the pod's sessions (its resume buffers).
fn received_frames(cluster: &LocalCluster) -> Vec<std::sync::Arc<str>> {
    let st = cluster.emulator().lock();
    st.sessions
        .values()
        .flat_map(|s| s.buffer.iter().map(|(_, f)| f.clone()))
        // Dispatches from the traffic: not the READY and GUILD_CREATEs of the connection's start.
        .filter(|f| {
            f.starts_with(r#"{"op":0"#)
                && !f.contains(r#""t":"READY""#)
                && !f.contains(r#""t":"GUILD_CREATE""#)
        })
        .collect()
}

/// (all frames/s, MESSAGE_CREATE frames/s, frame count): medians over the runs.
fn parse_rates(options: &Options, frames: &[std::sync::Arc<str>]) -> (f64, f64, usize) {
    let creates: Vec<std::sync::Arc<str>> = frames
        .iter()
        .filter(|f| f.contains(r#""t":"MESSAGE_CREATE""#))
        .cloned()
        .collect();
    let rate = |set: &[std::sync::Arc<str>]| {
        if set.is_empty() {
            return 0.0;
        }
        // At least a quarter second per sample, so the clock's resolution does not matter.
        let mut parsed = 0usize;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(250) {
            for frame in set {
                // Count attempts, not successes: a frame serenity rejects costs the same work.
                std::hint::black_box(serde_json::from_str::<GatewayEvent>(frame).is_ok());
                parsed += 1;
            }
        }
        parsed as f64 / start.elapsed().as_secs_f64()
    };
    let runs = options.runs.max(1);
    let all: Vec<f64> = (0..runs).map(|_| rate(frames)).collect();
    let only: Vec<f64> = (0..runs).map(|_| rate(&creates)).collect();
    (median(&all), median(&only), frames.len())
}
