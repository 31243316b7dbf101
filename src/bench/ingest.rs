//! The `ingest` scenario: one real gateway pod process (ordinal 0 of N, N = 1, 3, 8, so it
//! owns 100%, ~33%, ~12.5% of the guilds but receives every event, as every pod does) fed by
//! the emulator's traffic generator at increasing rates.
//!
//! Per rate: frames the emulator sent per second, dispatches the pod took in (`events_seen`,
//! each passes the ownership filter) and recorded (`events_handled`) per second, read from the
//! pod's `/internal/v1/status`, and the pod's CPU (utime + stime from `/proc/<pid>/stat`) per
//! 1k dispatches. The rate steps up until the pod or the generator falls behind.
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
        (&[1], &[200.0], Duration::from_millis(500), 20)
    } else {
        (
            &[1, 3, 8],
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
    for &n in pod_counts {
        let scratch = Scratch::new(options, "ingest")?;
        let cluster = start(options, scratch.path(), n, guilds).await?;
        let result = measure_pod(options, &cluster, n, rates, window).await;
        let frames = received_frames(&cluster);
        cluster.shutdown().await;
        let (steps, peak) = result?;
        rows.extend(steps);
        if n == 1 {
            peak_at_one = peak;
            parse_limit = Some(parse_rates(options, &frames));
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
        // Only ordinal 0 runs; NUM_GATEWAY_PODS says how many pods share the guilds.
        pods: 1,
        strategy: Strategy::Md5,
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        emulator: EmulatorConfig {
            guilds,
            members_per_guild: 20,
            channels_per_guild: 3,
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        },
        pod_env: vec![("NUM_GATEWAY_PODS".to_owned(), n.to_string())],
        http: false,
        replication: None,
    };
    let cluster = LocalCluster::start(cfg).await?;
    cluster.wait_ready(0, Duration::from_secs(60)).await?;
    Ok(cluster)
}

/// Steps the rate up on one pod; returns its rows and the peak handled rate it kept up with.
async fn measure_pod(
    options: &Options,
    cluster: &LocalCluster,
    n: u32,
    rates: &[f64],
    window: Duration,
) -> Result<(Vec<Row>, Option<f64>), Error> {
    let pid = cluster
        .pod(0)
        .and_then(|p| p.pid())
        .ok_or_else(|| Error::Measure("the pod has no pid".into()))?;
    let mut rows = Vec::new();
    let mut peak: Option<f64> = None;
    for &rate in rates {
        let mut samples: Vec<Step> = Vec::new();
        for _ in 0..options.runs.max(1) {
            samples.push(step(cluster, pid, rate, window).await?);
        }
        let sent = median(&samples.iter().map(|s| s.sent).collect::<Vec<_>>());
        let seen = median(&samples.iter().map(|s| s.seen).collect::<Vec<_>>());
        let handled = median(&samples.iter().map(|s| s.handled).collect::<Vec<_>>());
        let owned = median(&samples.iter().map(|s| s.owned).collect::<Vec<_>>());
        let cpu = median(&samples.iter().map(|s| s.cpu_ms_per_1k).collect::<Vec<_>>());
        let generator_cpu = median(&samples.iter().map(|s| s.emulator_cpu).collect::<Vec<_>>());
        // Keeping up means taking frames in AND recording what passed the filter.
        let kept_up = seen >= KEPT_UP * sent && handled >= KEPT_UP * owned;
        let generated = sent >= GENERATED * rate;
        if kept_up {
            peak = Some(peak.map_or(handled, |p: f64| p.max(handled)));
        }
        let verdict = match (kept_up, generated) {
            (true, true) => "kept up",
            (true, false) => {
                "kept up; GENERATOR-LIMITED (emulator could not send the requested rate)"
            }
            (false, _) => "FELL BEHIND (backlog grew)",
        };
        rows.push(Row::new(
            format!("N={n}, requested {}", per_sec(rate)),
            per_sec(handled),
            format!(
                "handled (recorded); sent {}, seen {}; pod CPU {cpu:.1} ms per 1k seen; \
                 emulator+bench CPU {generator_cpu:.2} cores; {verdict}",
                per_sec(sent),
                per_sec(seen),
            ),
        ));
        if !kept_up || !generated {
            break;
        }
    }
    Ok((rows, peak))
}

struct Step {
    sent: f64,
    seen: f64,
    owned: f64,
    handled: f64,
    cpu_ms_per_1k: f64,
    emulator_cpu: f64,
}

/// One window of traffic at `rate`, then a bounded wait for the pod to drain its backlog so
/// the next step starts clean.
async fn step(
    cluster: &LocalCluster,
    pid: u32,
    rate: f64,
    window: Duration,
) -> Result<Step, Error> {
    let emu = cluster.emulator();
    let before = cluster.status(0).await?;
    let dispatched_before = emu.counters().events_dispatched;
    let cpu_before = cpu_seconds(pid)?;
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
    let after = cluster.status(0).await?;
    let dispatched = emu.counters().events_dispatched - dispatched_before;
    let self_after = cpu_seconds(std::process::id())?;
    emu.stop_traffic();
    // Drain: every dispatched frame seen, or no progress for two seconds (bounded).
    let target = before.events_seen + dispatched;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = after.events_seen;
    let mut last_progress = Instant::now();
    let drained = loop {
        let now = cluster.status(0).await?;
        if now.events_seen >= target {
            break now;
        }
        if now.events_seen > last {
            last = now.events_seen;
            last_progress = Instant::now();
        }
        if Instant::now() > deadline || last_progress.elapsed() > Duration::from_secs(2) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = cpu_seconds(pid)? - cpu_before;
    let seen_total = drained
        .events_seen
        .saturating_sub(before.events_seen)
        .max(1);
    Ok(Step {
        sent: dispatched as f64 / elapsed,
        seen: after.events_seen.saturating_sub(before.events_seen) as f64 / elapsed,
        owned: after.events_owned.saturating_sub(before.events_owned) as f64 / elapsed,
        handled: after.events_handled.saturating_sub(before.events_handled) as f64 / elapsed,
        cpu_ms_per_1k: cpu * 1000.0 * 1000.0 / seen_total as f64,
        emulator_cpu: (self_after - self_before) / elapsed,
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
