//! The `memory` scenario: a gateway pod's resident memory (`/proc/<pid>/status` VmRSS) after
//! it has taken in every guild's GUILD_CREATE, for several total guild counts and pod counts.
//! The pod is ordinal 0 of N, so it owns about 1/N of the guilds while it receives all of
//! them: RSS must follow the guilds it owns, not the guilds that exist (no serenity cache).
//!
//! Each run starts a fresh pod process over the same emulator world and samples its RSS once
//! the pod has seen every GUILD_CREATE; figures are medians over the runs.

use std::time::{Duration, Instant};

use super::{median, rss_bytes, Error, Options, Row, Scratch};
use crate::emulator::EmulatorConfig;
use crate::local_cluster::{ClusterConfig, LocalCluster, StatefulSetSpec};
use crate::ownership::{owner, GuildId, Ordinal, Strategy, Topology};

/// Measures.
///
/// # Errors
/// The cluster failing to start or answer, or /proc being unreadable.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let totals: Vec<usize> = if !options.guilds.is_empty() {
        options.guilds.clone()
    } else if options.quick {
        vec![20]
    } else {
        vec![1_000, 10_000]
    };
    let pod_counts: &[u32] = if options.quick { &[1] } else { &[1, 4] };
    let mut rows = Vec::new();
    for &total in &totals {
        let scratch = Scratch::new(options, "memory")?;
        let cfg = ClusterConfig {
            statefulset: StatefulSetSpec::default(),
            binary: options.binary.clone(),
            pods: 1,
            strategy: Strategy::Md5,
            data_dir: scratch.path().join("data"),
            log_dir: scratch.path().join("logs"),
            emulator: EmulatorConfig {
                guilds: total,
                // Small guilds keep the emulator's own world (and GUILD_CREATE frames) modest;
                // what is measured is the pod's cost per guild.
                members_per_guild: 5,
                channels_per_guild: 3,
                identify_window_ms: 0,
                // A large bot's identify bucket count: 100 shards start in seven 5 s windows.
                max_concurrency: 16,
                ..EmulatorConfig::default()
            },
            pod_env: vec![],
            http: false,
            replication: None,
        };
        let mut cluster = LocalCluster::start(cfg).await?;
        let ids: Vec<GuildId> = cluster
            .emulator()
            .guilds()
            .iter()
            .map(|g| GuildId(g.id))
            .collect();
        cluster.stop_pod(0, Duration::from_secs(10)).await;
        let result = measure_total(options, &mut cluster, &ids, pod_counts).await;
        cluster.shutdown().await;
        // One size failing (a pod too slow to take in every guild) keeps the others' figures.
        match result {
            Ok(measured) => rows.extend(measured),
            Err(err) => rows.push(Row::new(
                format!("{total} guilds"),
                "not measured",
                format!("the run failed: {err}"),
            )),
        }
    }
    Ok(rows)
}

async fn measure_total(
    options: &Options,
    cluster: &mut LocalCluster,
    ids: &[GuildId],
    pod_counts: &[u32],
) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    // (owned, RSS bytes) per pod count, for the marginal cost of an owned guild.
    let mut measured: Vec<(usize, f64)> = Vec::new();
    for &n in pod_counts {
        let topology = Topology::new(Strategy::Md5, n).expect("pod counts here are > 0");
        let owned = ids
            .iter()
            .filter(|g| owner(**g, topology) == Ordinal(0))
            .count();
        cluster.set_num_gateway_pods(n);
        let mut samples = Vec::new();
        let mut reported_owned = 0;
        for _ in 0..options.runs.max(1) {
            // A fresh database each run: the pod's memory, not SQLite's page cache of old runs.
            let _ = std::fs::remove_dir_all(cluster.data_dir(0));
            cluster.start_pod(0).await?;
            let settled = settle(cluster, ids.len(), owned).await;
            cluster.stop_pod(0, Duration::from_secs(10)).await;
            let (rss, status_owned) = settled?;
            samples.push(rss as f64);
            reported_owned = status_owned;
        }
        let rss = median(&samples);
        measured.push((owned, rss));
        rows.push(Row::new(
            format!("{} guilds, N={n}: RSS of ordinal 0", ids.len()),
            format!("{:.1} MiB", mib(rss)),
            format!(
                "owns {owned} guilds ({:.1}%; pod reports {reported_owned}); {:.2} KiB per owned guild (whole RSS)",
                100.0 * owned as f64 / ids.len().max(1) as f64,
                rss / 1024.0 / owned.max(1) as f64,
            ),
        ));
    }
    // Same total guilds and shards, different owned counts: the difference is what owning a
    // guild costs; what all rows of one total share is the cost of the shards it needs.
    if let (Some(&(most, most_rss)), Some(&(least, least_rss))) = (
        measured.iter().max_by_key(|(owned, _)| *owned),
        measured.iter().min_by_key(|(owned, _)| *owned),
    ) {
        if most > least {
            rows.push(Row::new(
                format!("{} guilds: RSS per extra owned guild", ids.len()),
                format!("{:.0} B", (most_rss - least_rss) / (most - least) as f64),
                format!(
                    "(RSS owning {most} − RSS owning {least}) ÷ {} guilds; same shards, same \
                     GUILD_CREATE traffic",
                    most - least
                ),
            ));
        }
    }
    Ok(rows)
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// Waits (bounded) until the pod is ready, has seen a dispatch for every guild and counts
/// every guild it owns, then samples its RSS three times, 200 ms apart, and keeps the median.
async fn settle(cluster: &LocalCluster, guilds: usize, owned: usize) -> Result<(u64, u64), Error> {
    let pid = cluster
        .pod(0)
        .and_then(|p| p.pid())
        .ok_or_else(|| Error::Measure("the pod has no pid".into()))?;
    let limit = Duration::from_secs(120);
    cluster.wait_ready(0, limit).await?;
    let deadline = Instant::now() + limit;
    let status = loop {
        let status = cluster.status(0).await?;
        if status.events_seen >= guilds as u64 && status.guilds_owned >= owned as u64 {
            break status;
        }
        if Instant::now() > deadline {
            return Err(Error::Measure(format!(
                "the pod saw {} of {guilds} GUILD_CREATEs and owned {} of {owned} guilds \
                 within {limit:?}",
                status.events_seen, status.guilds_owned
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut samples = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(rss_bytes(pid)? as f64);
    }
    Ok((median(&samples) as u64, status.guilds_owned))
}
