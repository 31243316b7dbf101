//! A local cluster for tests: the emulator in process, gateway pods as real child processes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use guildshard::emulator::EmulatorConfig;
use guildshard::local_cluster::{
    ClusterConfig, LocalCluster, ObjectStore, Replication, StatefulSetSpec,
};
use guildshard::ownership::Strategy;

/// Tests that start a cluster take this first: each runs several processes, and on a 2-core
/// machine two clusters at once starve each other's heartbeats and make timing-dependent
/// failures out of plain slowness.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A cluster of `pods` pods over `guilds` guilds, with fast heartbeats and no identify
/// throttling (every pod identifies the same shard; Discord's 5 s bucket would only slow tests).
pub async fn start(dir: &Path, pods: u32, guilds: usize, pod_env: &[(&str, &str)]) -> LocalCluster {
    start_with(dir, pods, guilds, Strategy::Md5, pod_env, false).await
}

/// Like [`start`], choosing the strategy and whether the HTTP service runs.
pub async fn start_with(
    dir: &Path,
    pods: u32,
    guilds: usize,
    strategy: Strategy,
    pod_env: &[(&str, &str)],
    http: bool,
) -> LocalCluster {
    let mut cfg = config(dir, pods, guilds, strategy);
    cfg.pod_env = pod_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    cfg.http = http;
    start_config(dir, cfg).await
}

/// Like [`start_with`] (no HTTP service), but each pod's second shard identifies one identify
/// window (5 s) after its first, as with Discord's `max_concurrency` of 1: for those seconds
/// a pod has a session but does not yet receive all of its guilds' events.
pub async fn start_staggered(
    dir: &Path,
    pods: u32,
    guilds: usize,
    strategy: Strategy,
) -> LocalCluster {
    let mut cfg = config(dir, pods, guilds, strategy);
    cfg.emulator.max_concurrency = 1;
    start_config(dir, cfg).await
}

/// A cluster whose every pod runs with Litestream as the StatefulSet runs it (restore init
/// container, native sidecar), replicating into `store` every [`REPLICATION_INTERVAL`].
pub async fn start_replicated(
    dir: &Path,
    pods: u32,
    guilds: usize,
    strategy: Strategy,
    store: &ObjectStore,
) -> LocalCluster {
    let mut cfg = config(dir, pods, guilds, strategy);
    replicate(&mut cfg, dir, store);
    start_config(dir, cfg).await
}

/// Runs Litestream beside every pod of `cfg`, as the StatefulSet does, into `store`.
pub fn replicate(cfg: &mut ClusterConfig, dir: &Path, store: &ObjectStore) {
    let replication = Replication::new(
        &super::objstore::tools().library(),
        store,
        &dir.join("litestream"),
        REPLICATION_INTERVAL,
    )
    .expect("litestream files");
    cfg.replication = Some(replication);
}

/// Litestream's monitor and sync interval in tests: commits reach the replica within about
/// twice this.
pub const REPLICATION_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The tests' cluster settings: `pods` pods over `guilds` guilds, fast heartbeats, no identify
/// throttling.
pub fn config(dir: &Path, pods: u32, guilds: usize, strategy: Strategy) -> ClusterConfig {
    ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: super::process::bin().into(),
        pods,
        strategy,
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        emulator: EmulatorConfig {
            guilds,
            members_per_guild: 10,
            channels_per_guild: 2,
            heartbeat_interval_ms: 2_000,
            identify_window_ms: 0,
            // Two shards per pod, both identified at once: a pod receives all of its guilds'
            // events only once every shard has a session, which one shard would not show.
            shards: 2,
            max_concurrency: 2,
            ..EmulatorConfig::default()
        },
        pod_env: Vec::new(),
        http: false,
        replication: None,
    }
}

/// Starts `cfg` and waits until every pod is ready.
pub async fn start_config(dir: &Path, cfg: ClusterConfig) -> LocalCluster {
    let cluster = LocalCluster::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("cluster starts: {e}\n{}", logs(dir)));
    for ordinal in cluster.running() {
        cluster
            .wait_ready(ordinal, super::eventually::patience())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir)));
    }
    cluster
}

/// Every pod log, for assertion messages.
pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("logs")) {
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} ---\n", entry.path().display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// `(guild_id, message_id)` of every counted message in a pod's database (read-only, while the
/// pod runs).
pub fn activity(db: &Path) -> BTreeSet<(u64, u64)> {
    if !db.exists() {
        return BTreeSet::new();
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open pod database");
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    let mut stmt = conn
        .prepare("SELECT guild_id, message_id FROM activity")
        .expect("activity query");
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .expect("activity rows");
    rows.map(|r| r.expect("row")).collect()
}

/// Activity of every pod, by ordinal.
pub fn activity_by_pod(
    cluster: &LocalCluster,
    ordinals: &[u32],
) -> BTreeMap<u32, BTreeSet<(u64, u64)>> {
    ordinals
        .iter()
        .map(|&o| (o, activity(&cluster.db_path(o))))
        .collect()
}

/// `(guild_id, message_id)` of every message the emulator's traffic generator emitted.
pub fn emitted_messages(cluster: &LocalCluster) -> BTreeSet<(u64, u64)> {
    cluster
        .emulator()
        .traffic_log()
        .iter()
        .filter(|e| e.kind == guildshard::emulator::EventKind::MessageCreate)
        .filter_map(|e| Some((e.guild_id?, e.message_id?)))
        .collect()
}

/// Traffic at `rate` events/s until stopped.
pub fn start_traffic(cluster: &LocalCluster, rate: f64, seed: u64) {
    cluster
        .emulator()
        .start_traffic(guildshard::emulator::TrafficRequest {
            rate,
            count: None,
            duration_ms: None,
            seed: Some(seed),
        })
        .expect("traffic starts");
}
