//! Gateway v2 (DESIGN §6) against the emulator with Discord's real identify limits (5 s window,
//! `max_concurrency` 1): one connection per shard in the cluster, sessions that move by RESUME,
//! one identify queue for the cluster, and gaps that are never silent.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use guildshard::emulator::sessions::SessionAction;
use guildshard::local_cluster::LocalCluster;
use guildshard::ownership::Strategy;

use crate::support::cluster::{self, activity, emitted_messages, logs, start_traffic};
use crate::support::eventually::{eventually, patience};

/// A cluster of `pods` pods and `shards` shards over `guilds` guilds, with Discord's real
/// identify limits.
fn config(
    dir: &Path,
    pods: u32,
    shards: u32,
    guilds: usize,
) -> guildshard::local_cluster::ClusterConfig {
    let mut cfg = cluster::config(dir, pods, guilds, Strategy::Md5);
    cfg.emulator.shards = shards;
    cfg.emulator.identify_window_ms = 5_000;
    cfg.emulator.max_concurrency = 1;
    cfg
}

/// Waits until every shard has exactly one connected session, and returns the emulator's
/// identify count then.
async fn all_shards_connected(cluster: &LocalCluster, shards: u32) -> u64 {
    eventually("every shard to have one connected session", || async {
        let sessions = cluster.emulator().sessions();
        let connected: Vec<u32> = sessions
            .iter()
            .filter(|s| s.state == "connected")
            .map(|s| s.shard[0])
            .collect();
        let distinct: BTreeSet<u32> = connected.iter().copied().collect();
        (connected.len() == shards as usize && distinct.len() == shards as usize).then_some(())
    })
    .await;
    cluster.emulator().counters().identifies
}

/// Stops the traffic, waits until every emitted message is recorded by some pod, and checks
/// that the union of the pods' databases holds each exactly once (per pod: a message recorded
/// by two pods would be counted twice by `/stats`).
async fn assert_exactly_once(cluster: &LocalCluster, dir: &Path, ordinals: &[u32]) -> usize {
    cluster.emulator().stop_traffic();
    // Rows a covering pod recorded move back to their owner with the handoff.
    cluster
        .wait_converged(patience())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir)));
    let expected = emitted_messages(cluster);
    let union = eventually("every emitted message to be recorded", || async {
        let mut union = BTreeSet::new();
        for o in ordinals {
            union.extend(activity(&cluster.db_path(*o)));
        }
        expected.is_subset(&union).then_some(union)
    })
    .await;
    let extra: Vec<_> = union.difference(&expected).take(3).collect();
    assert!(extra.is_empty(), "recorded but never emitted: {extra:?}");
    let mut seen = BTreeSet::new();
    for o in ordinals {
        for m in activity(&cluster.db_path(*o)) {
            assert!(
                seen.insert(m),
                "message {m:?} recorded by two pods\n{}",
                logs(dir)
            );
        }
    }
    expected.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_identifies_each_shard_once_through_one_queue() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let cluster = cluster::start_config(dir.path(), config(dir.path(), 3, 10, 60)).await;
    let identifies = all_shards_connected(&cluster, 10).await;
    let counters = cluster.emulator().counters();
    eprintln!(
        "cold start, 3 pods, 10 shards, real identify limits: every pod ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(identifies, 10, "{counters:?}\n{}", logs(dir.path()));
    assert_eq!(counters.identifies_refused, 0, "{counters:?}");
    let shards: Vec<u32> = {
        let mut all = Vec::new();
        for o in cluster.running() {
            let status = cluster.status(o).await.expect("status");
            all.extend(status.shards);
        }
        all.sort_unstable();
        all
    };
    assert_eq!(
        shards,
        (0..10).collect::<Vec<_>>(),
        "each shard on exactly one pod"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_traffic_costs_no_identify_and_loses_nothing() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = cluster::start_config(dir.path(), config(dir.path(), 3, 4, 60)).await;
    let before = all_shards_connected(&cluster, 4).await;
    start_traffic(&cluster, 300.0, 11);
    for ordinal in [2, 1, 0] {
        cluster
            .roll_pod(ordinal, patience())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    }
    let after = all_shards_connected(&cluster, 4).await;
    let n = assert_exactly_once(&cluster, dir.path(), &[0, 1, 2]).await;
    assert!(n > 100, "only {n} messages emitted");
    let counters = cluster.emulator().counters();
    assert_eq!(
        after,
        before,
        "identifies during the rollout: {counters:?}\n{}",
        logs(dir.path())
    );
    assert!(
        counters.resumes >= 4,
        "sessions moved by RESUME: {counters:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_killed_under_traffic_costs_no_identify_and_loses_nothing() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = cluster::start_config(dir.path(), config(dir.path(), 3, 4, 60)).await;
    let before = all_shards_connected(&cluster, 4).await;
    start_traffic(&cluster, 300.0, 12);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The pod with the most shards, so sessions have to move.
    let mut victim = 0;
    let mut most = 0;
    for o in cluster.running() {
        let n = cluster.status(o).await.map(|s| s.shards.len()).unwrap_or(0);
        if n > most {
            (victim, most) = (o, n);
        }
    }
    cluster.kill_pod(victim).await;
    // Its shards move to the survivors by RESUME; its guilds' dispatches wait, unacknowledged.
    all_shards_connected(&cluster, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .start_pod(victim)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    cluster
        .wait_ready(victim, patience())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = all_shards_connected(&cluster, 4).await;
    assert_exactly_once(&cluster, dir.path(), &[0, 1, 2]).await;
    let counters = cluster.emulator().counters();
    assert_eq!(
        after,
        before,
        "identifies after kill -9: {counters:?}\n{}",
        logs(dir.path())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_cannot_be_resumed_is_one_identify_and_a_visible_gap() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = cluster::start_config(dir.path(), config(dir.path(), 2, 2, 20)).await;
    let before = all_shards_connected(&cluster, 2).await;
    cluster
        .emulator()
        .shard_action(1, &SessionAction::Invalidate { resumable: false })
        .expect("invalidate shard 1");
    eventually("a new session on shard 1", || async {
        (cluster.emulator().counters().identifies == before + 1).then_some(())
    })
    .await;
    all_shards_connected(&cluster, 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster.emulator().counters().identifies, before + 1);

    let mut gaps = Vec::new();
    let mut metric = 0.0;
    for o in cluster.running() {
        let status = cluster.status(o).await.expect("status");
        gaps.extend(status.gaps);
        let port = cluster
            .pod(o)
            .and_then(|p| p.addr("public"))
            .expect("public address");
        let text = reqwest::get(format!("http://{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        metric += text
            .lines()
            .find(|l| l.starts_with("guildshard_gateway_session_gaps_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].shard, 1);
    assert_eq!(metric, 1.0);
    let logged = std::fs::read_dir(cluster.log_dir())
        .expect("logs")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("could not be resumed"))
                .count()
        })
        .sum::<usize>();
    assert_eq!(logged, 1, "one log line for the gap\n{}", logs(dir.path()));
    cluster.shutdown().await;
}
