//! The `failover` scenario:
//! - a gateway pod under steady traffic is killed with SIGKILL (kill -9) and started again at
//!   once on the same data directory (its PVC), as the StatefulSet controller does; the figure
//!   is the time from the kill until the new process has handled its first event (Kubernetes'
//!   own restart delay, scheduling and image pull are not included);
//! - a database of about 100 MB, replicated by the real Litestream into SeaweedFS, is restored
//!   into an empty volume (`litestream restore`, as the init container does), checked row for
//!   row;
//! - replication lag of a pod under traffic with its Litestream sidecar at the production
//!   intervals (1 s): the age of the oldest change Litestream has taken from the WAL that the
//!   replica does not have yet, sampled five times a second.
//!
//! The last two need Litestream and SeaweedFS (`bash .ci/install-tools.sh`); without them
//! their rows say so.

use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::{median, seed, spread, Error, Options, Row, Scratch};
use crate::emulator::{EmulatorConfig, TrafficRequest};
use crate::local_cluster::{
    ClusterConfig, LocalCluster, ObjectStore, Replication, StatefulSetSpec, Tools,
};
use crate::ownership::{GuildId, Strategy};
use crate::store::{Store, StoreOptions};

/// Measures.
///
/// # Errors
/// The cluster failing to start or the pod never handling an event again.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let scratch = Scratch::new(options, "failover")?;
    let cfg = ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: options.binary.clone(),
        pods: 1,
        strategy: Strategy::Md5,
        data_dir: scratch.path().join("data"),
        log_dir: scratch.path().join("logs"),
        emulator: EmulatorConfig {
            guilds: if options.quick { 20 } else { 500 },
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        },
        pod_env: vec![],
        http: false,
        replication: None,
    };
    let mut cluster = LocalCluster::start(cfg).await?;
    let result = measure(options, &mut cluster).await;
    cluster.shutdown().await;
    let samples = result?;
    let ms = |v: f64| format!("{v:.0} ms");
    let mut rows = vec![Row::new(
        "kill -9 → restarted pod handles an event (200 events/s traffic)",
        ms(median(&samples)),
        format!(
            "process start + migrations + gateway identify + first event handled (of any kind: \
             READY and GUILD_CREATE come first); excludes Kubernetes' restart delay; {}",
            spread(&samples, ms)
        ),
    )];
    match Tools::find() {
        Some(tools) => {
            rows.push(restore(options, &tools).await?);
            rows.extend(replication_lag(options, &tools).await?);
        }
        None => rows.push(Row::new(
            "restore from the replica; replication lag",
            "not measured",
            "Litestream and SeaweedFS are not installed: run `bash .ci/install-tools.sh` \
             (or set GUILDSHARD_TOOLS_BIN)",
        )),
    }
    Ok(rows)
}

/// Starts SeaweedFS under `dir` (blocking work, off the runtime's threads).
async fn object_store(tools: &Tools, dir: &std::path::Path) -> Result<ObjectStore, Error> {
    let (weed, litestream, dir) = (tools.weed(), tools.litestream(), dir.to_owned());
    tokio::task::spawn_blocking(move || ObjectStore::start(&weed, &litestream, &dir))
        .await
        .map_err(|e| Error::Measure(format!("object store task: {e}")))?
        .map_err(|e| Error::Measure(e.to_string()))
}

/// A database of about `target` bytes, replicated, then restored into empty files.
async fn restore(options: &Options, tools: &Tools) -> Result<Row, Error> {
    let target: u64 = if options.quick { 1 << 20 } else { 100 << 20 };
    let scratch = Scratch::new(options, "restore")?;
    let store = object_store(tools, &scratch.path().join("s3")).await?;
    let replication = Replication::new(
        tools,
        &store,
        &scratch.path().join("litestream"),
        Duration::from_secs(1),
    )
    .map_err(|e| Error::Measure(e.to_string()))?;
    let db = scratch.path().join("pod/bot.db");
    let (size, messages) = fill(&db, target).await?;

    // The sidecar uploads it (a snapshot), then stops with its final sync.
    let sidecar = replication
        .start_sidecar(0, &db, &scratch.path().join("litestream.log"))
        .await
        .map_err(|e| Error::Measure(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let txid = replication.replica_txid(0, &db).await.ok().flatten();
        let lag = Replication::lag(&db, txid);
        if txid.is_some() && lag.behind.is_zero() && txid >= Some(lag.local_txid) {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Measure(
                "the replica did not catch up within 10 min".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sidecar.stop().await;

    let mut samples = Vec::new();
    for run in 0..options.runs.max(1) {
        let out = scratch.path().join(format!("restored-{run}/bot.db"));
        std::fs::create_dir_all(out.parent().unwrap_or(scratch.path()))?;
        let started = Instant::now();
        let found = replication
            .restore_copy(0, &db, &out)
            .await
            .map_err(|e| Error::Measure(e.to_string()))?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        let restored = if found { count_messages(&out)? } else { 0 };
        if restored != messages {
            return Err(Error::Measure(format!(
                "the restore holds {restored} of {messages} counted messages"
            )));
        }
    }
    drop(store);
    let ms = |v: f64| format!("{v:.0} ms");
    Ok(Row::new(
        format!(
            "restore a {:.0} MB database from its replica",
            size as f64 / 1e6
        ),
        ms(median(&samples)),
        format!(
            "`litestream restore` from SeaweedFS on loopback into an empty volume, as the init \
             container does; every counted message checked; {}",
            spread(&samples, ms)
        ),
    ))
}

/// Fills a database with synthetic guilds until it holds about `target` bytes; returns its
/// size and how many counted messages it holds.
async fn fill(db: &std::path::Path, target: u64) -> Result<(u64, u64), Error> {
    let store = Store::open_with(
        db,
        StoreOptions {
            litestream_checkpoints: false,
            ..StoreOptions::default()
        },
    )
    .await?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x100_0000);
    let now_ms = crate::reshard::topology::now_ms();
    let mut guilds = 0u64;
    while store.db_size_bytes().await? < target {
        let chunk: Vec<_> = (0..1_000)
            .map(|i| {
                let guild = GuildId((guilds + i + 1) << 22 | 1);
                seed::synthetic_guild(&mut rng, guild, now_ms)
            })
            .collect();
        guilds += chunk.len() as u64;
        seed::import_all(&store, chunk).await?;
    }
    let size = store.db_size_bytes().await?;
    store.close().await?;
    Ok((size, guilds * seed::MESSAGES_PER_GUILD))
}

fn count_messages(db: &std::path::Path) -> Result<u64, Error> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(crate::store::Error::from)?;
    let n: i64 = conn
        .query_row("SELECT count(*) FROM activity", [], |r| r.get(0))
        .map_err(crate::store::Error::from)?;
    Ok(n as u64)
}

/// Replication lag of one pod with its sidecar, under traffic, at the production intervals.
async fn replication_lag(options: &Options, tools: &Tools) -> Result<Vec<Row>, Error> {
    let window = if options.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(30)
    };
    let scratch = Scratch::new(options, "lag")?;
    let store = object_store(tools, &scratch.path().join("s3")).await?;
    let replication = Replication::new(
        tools,
        &store,
        &scratch.path().join("litestream"),
        Duration::from_secs(1),
    )
    .map_err(|e| Error::Measure(e.to_string()))?;
    let cfg = ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: options.binary.clone(),
        pods: 1,
        strategy: Strategy::Md5,
        data_dir: scratch.path().join("data"),
        log_dir: scratch.path().join("logs"),
        emulator: EmulatorConfig {
            guilds: if options.quick { 20 } else { 500 },
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        },
        pod_env: vec![],
        http: false,
        replication: Some(replication.clone()),
    };
    let cluster = LocalCluster::start(cfg).await?;
    let result = sample_lag(&cluster, &replication, window).await;
    cluster.shutdown().await;
    drop(store);
    let mut samples = result?;
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        samples.get(i).copied().unwrap_or(f64::NAN)
    };
    let ms = |v: f64| format!("{v:.0} ms");
    Ok(vec![Row::new(
        "replication lag p50 / p99 (200 events/s, Litestream at 1 s intervals)",
        format!("{} / {}", ms(pct(0.5)), ms(pct(0.99))),
        format!(
            "age of the oldest change taken from the WAL and not yet in the replica, {} \
             samples over {} s; a change still in the WAL adds up to one monitor interval",
            samples.len(),
            window.as_secs()
        ),
    )])
}

async fn sample_lag(
    cluster: &LocalCluster,
    replication: &Replication,
    window: Duration,
) -> Result<Vec<f64>, Error> {
    cluster.wait_ready(0, Duration::from_secs(60)).await?;
    cluster.emulator().start_traffic(TrafficRequest {
        rate: 200.0,
        count: None,
        duration_ms: None,
        seed: Some(5),
    })?;
    let db = cluster.db_path(0);
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < window {
        let tick = Instant::now();
        if let Ok(txid) = replication.replica_txid(0, &db).await {
            samples.push(Replication::lag(&db, txid).behind.as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(200).saturating_sub(tick.elapsed())).await;
    }
    cluster.emulator().stop_traffic();
    if samples.is_empty() {
        return Err(Error::Measure("the replica could not be listed".into()));
    }
    Ok(samples)
}

async fn measure(options: &Options, cluster: &mut LocalCluster) -> Result<Vec<f64>, Error> {
    cluster.wait_ready(0, Duration::from_secs(60)).await?;
    cluster.emulator().start_traffic(TrafficRequest {
        rate: 200.0,
        count: None,
        duration_ms: None,
        seed: Some(3),
    })?;
    let mut samples = Vec::new();
    for _ in 0..options.runs.max(1) {
        cluster.kill_pod(0).await;
        let killed = Instant::now();
        cluster.start_pod(0).await?;
        // A fresh process counts from zero: its first handled event is the figure.
        let deadline = killed + Duration::from_secs(60);
        loop {
            if let Ok(status) = cluster.status(0).await {
                if status.events_handled > 0 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Measure(
                    "the restarted pod handled nothing within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(killed.elapsed().as_secs_f64() * 1000.0);
    }
    cluster.emulator().stop_traffic();
    Ok(samples)
}
