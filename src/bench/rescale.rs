//! The `rescale` scenario: a cluster whose pods already hold realistic data for every guild
//! changes its pod count the way the runbook says (`LocalCluster::rescale`: `kubectl scale`
//! on the StatefulSet; the pods follow live, the controller starts new ordinals, removed
//! ones hand their guilds over before they stop), with the traffic generator running
//! throughout. The emulator enforces Discord's real identify limits (5 s window,
//! `max_concurrency` 1, as for bots under 150 000 guilds); each row counts the identifies the
//! emulator saw during the rescale and the pods that were restarted (must be 0).
//!
//! Before the pods start, each one's database is seeded with [`seed::ROWS_PER_GUILD`] rows
//! per guild it owns (counted messages, the message cache, joins and a leave: a small, active
//! guild's week). Afterwards every pod's database is read back: guilds and rows that moved,
//! the time from the first step of the rescale to `converged`, and events lost, i.e. seeded
//! or generated messages that are missing, held twice or held by a pod that does not own
//! them (must be 0).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::{median, seed, Error, Options, Row, Scratch};
use crate::emulator::{EmulatorConfig, EventKind, TrafficRequest};
use crate::local_cluster::{ClusterConfig, LocalCluster, StatefulSetSpec};
use crate::ownership::{owner, GuildId, Ordinal, Strategy, Topology};
use crate::store::{GuildExport, Store, StoreOptions};

/// Generated events per second while the pod count changes.
const TRAFFIC_RATE: f64 = 100.0;
/// How long one rescale may take before the run counts as failed.
const RESCALE_LIMIT: Duration = Duration::from_secs(1800);

/// One change of the pod count to measure: `jump:4-3` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The ownership strategy, before and after.
    pub strategy: Strategy,
    /// Pods before.
    pub from: u32,
    /// Pods after.
    pub to: u32,
}

impl Change {
    const fn new(strategy: Strategy, from: u32, to: u32) -> Self {
        Change { strategy, from, to }
    }
}

impl std::str::FromStr for Change {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected STRATEGY:FROM-TO, e.g. jump:4-3");
        let (strategy, counts) = s.split_once(':').ok_or_else(bad)?;
        let (from, to) = counts.split_once('-').ok_or_else(bad)?;
        let strategy: Strategy = strategy.parse().map_err(|e| format!("{e}"))?;
        let count = |n: &str| n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad);
        Ok(Change::new(strategy, count(from)?, count(to)?))
    }
}

/// What one rescale did.
struct Outcome {
    guilds_moved: u64,
    rows_moved: u64,
    converge_s: f64,
    lost: u64,
    /// IDENTIFYs the emulator counted from the `kubectl scale` to `converged`.
    identifies: u64,
    /// Pods that stayed but whose process changed.
    restarted: u64,
}

/// Measures.
///
/// # Errors
/// Seeding, the cluster, or a rescale that does not converge.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let sizes: Vec<usize> = if !options.guilds.is_empty() {
        options.guilds.clone()
    } else if options.quick {
        vec![200]
    } else {
        vec![10_000]
    };
    let changes: Vec<Change> = if !options.changes.is_empty() {
        options.changes.clone()
    } else if options.quick {
        vec![Change::new(Strategy::Md5, 3, 4)]
    } else {
        vec![
            Change::new(Strategy::Md5, 3, 4),
            Change::new(Strategy::Md5, 4, 3),
            Change::new(Strategy::Jump, 3, 4),
            Change::new(Strategy::Jump, 4, 3),
        ]
    };
    let mut rows = Vec::new();
    for &guilds in &sizes {
        for &Change { strategy, from, to } in &changes {
            let mut outcomes = Vec::new();
            for run in 0..options.runs.max(1) {
                let scratch = Scratch::new(options, "rescale")?;
                outcomes.push(
                    rescale_once(options, scratch.path(), guilds, strategy, from, to, run).await?,
                );
            }
            rows.push(row(guilds, strategy, from, to, &outcomes));
        }
    }
    Ok(rows)
}

fn row(guilds: usize, strategy: Strategy, from: u32, to: u32, outcomes: &[Outcome]) -> Row {
    let m = |f: fn(&Outcome) -> f64| median(&outcomes.iter().map(f).collect::<Vec<_>>());
    let lost: u64 = outcomes.iter().map(|o| o.lost).sum();
    let moved = m(|o| o.guilds_moved as f64);
    Row::new(
        format!("{guilds} guilds, {strategy} {from}→{to}: time to converge"),
        format!("{:.1} s", m(|o| o.converge_s)),
        format!(
            "{moved:.0} guilds moved ({:.1}%), {:.0} rows moved; identifies: {:.0}; pods \
             restarted: {}; events lost: {lost}{}",
            100.0 * moved / guilds.max(1) as f64,
            m(|o| o.rows_moved as f64),
            m(|o| o.identifies as f64),
            outcomes.iter().map(|o| o.restarted).sum::<u64>(),
            if lost == 0 { "" } else { " (MUST be 0)" },
        ),
    )
}

async fn rescale_once(
    options: &Options,
    dir: &Path,
    guilds: usize,
    strategy: Strategy,
    from: u32,
    to: u32,
    run: usize,
) -> Result<Outcome, Error> {
    let cfg = ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: options.binary.clone(),
        pods: from,
        strategy,
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        emulator: EmulatorConfig {
            guilds,
            // Small guilds keep the emulator's world modest; the data is seeded.
            members_per_guild: 5,
            channels_per_guild: 1,
            // Discord's limits: one identify per 5 s, bot-wide.
            identify_window_ms: 5_000,
            max_concurrency: 1,
            ..EmulatorConfig::default()
        },
        pod_env: vec![],
        http: false,
        replication: None,
    };
    let before = Topology::new(strategy, from)
        .ok_or_else(|| Error::Measure("pod counts are positive".into()))?;
    let after = Topology::new(strategy, to)
        .ok_or_else(|| Error::Measure("pod counts are positive".into()))?;
    // The emulator first (its guild ids come from its seed), then the seed rows, then the
    // pods, so they start on databases that already hold their guilds.
    let mut cluster = LocalCluster::start(ClusterConfig { pods: 0, ..cfg }).await?;
    cluster.set_num_gateway_pods(from);
    let ids: Vec<GuildId> = cluster
        .emulator()
        .guilds()
        .iter()
        .map(|g| GuildId(g.id))
        .collect();
    let seeded = seed(&cluster, &ids, before, run as u64).await?;
    for ordinal in 0..from {
        cluster.start_pod(ordinal).await?;
    }
    let result = rescale_and_check(&mut cluster, &ids, seeded, before, after).await;
    cluster.shutdown().await;
    result
}

/// Writes every guild's seed rows into the database of its owner under `topology`; returns
/// the counted messages `(guild, message)` seeded.
async fn seed(
    cluster: &LocalCluster,
    ids: &[GuildId],
    topology: Topology,
    salt: u64,
) -> Result<BTreeSet<(u64, u64)>, Error> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed ^ salt);
    let now_ms = crate::reshard::topology::now_ms();
    let mut seeded = BTreeSet::new();
    let mut by_owner: BTreeMap<u32, Vec<GuildExport>> = BTreeMap::new();
    for &guild in ids {
        let export = seed::synthetic_guild(&mut rng, guild, now_ms);
        seeded.extend(export.activity.iter().map(|a| (guild.0, a.message_id)));
        by_owner
            .entry(owner(guild, topology).0)
            .or_default()
            .push(export);
    }
    for (ordinal, exports) in by_owner {
        let store = Store::open_with(
            cluster.db_path(ordinal),
            StoreOptions {
                litestream_checkpoints: false,
                ..StoreOptions::default()
            },
        )
        .await?;
        let imported = seed::import_all(&store, exports).await;
        store.close().await?;
        imported?;
    }
    Ok(seeded)
}

async fn rescale_and_check(
    cluster: &mut LocalCluster,
    ids: &[GuildId],
    seeded: BTreeSet<(u64, u64)>,
    before: Topology,
    after: Topology,
) -> Result<Outcome, Error> {
    for ordinal in cluster.running() {
        cluster
            .wait_ready(ordinal, Duration::from_secs(300))
            .await?;
    }
    cluster.wait_converged(Duration::from_secs(300)).await?;
    cluster.emulator().start_traffic(TrafficRequest {
        rate: TRAFFIC_RATE,
        count: None,
        duration_ms: None,
        seed: Some(21),
    })?;
    let pids = |c: &LocalCluster| -> BTreeMap<u32, u32> {
        c.running()
            .into_iter()
            .filter_map(|o| Some((o, c.pod(o)?.pid()?)))
            .collect()
    };
    let pids_before = pids(cluster);
    let identifies_before = cluster.emulator().counters().identifies;
    let started = Instant::now();
    let rescaled = cluster.rescale(after.pods.get(), RESCALE_LIMIT).await;
    let converge_s = started.elapsed().as_secs_f64();
    let identifies = cluster.emulator().counters().identifies - identifies_before;
    let pids_after = pids(cluster);
    let restarted = pids_after
        .iter()
        .filter(|(o, pid)| pids_before.get(o).is_some_and(|p| p != *pid))
        .count() as u64;
    // A little traffic under the new topology, then let the pods drain it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.emulator().stop_traffic();
    rescaled?;
    let emitted: BTreeSet<(u64, u64)> = cluster
        .emulator()
        .traffic_log()
        .iter()
        .filter(|e| e.kind == EventKind::MessageCreate)
        .filter_map(|e| Some((e.guild_id?, e.message_id?)))
        .collect();
    let expected: BTreeSet<(u64, u64)> = seeded.union(&emitted).copied().collect();

    let moved: BTreeSet<u64> = ids
        .iter()
        .filter(|g| owner(**g, before) != owner(**g, after))
        .map(|g| g.0)
        .collect();
    // Give the last generated events a bounded moment to be recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lost, rows_moved) = check(cluster, after, &expected, &moved)?;
        if lost == 0 || Instant::now() > deadline {
            return Ok(Outcome {
                guilds_moved: moved.len() as u64,
                rows_moved,
                converge_s,
                lost,
                identifies,
                restarted,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `(messages lost, rows of moved guilds)`: a message is lost if it is missing, held by more
/// than one pod, or held by a pod that does not own it.
#[allow(clippy::too_many_lines)]
fn check(
    cluster: &LocalCluster,
    topology: Topology,
    expected: &BTreeSet<(u64, u64)>,
    moved: &BTreeSet<u64>,
) -> Result<(u64, u64), Error> {
    let mut held: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    let mut misplaced = 0u64;
    let mut rows_moved = 0u64;
    for ordinal in cluster.running() {
        let conn = rusqlite::Connection::open_with_flags(
            cluster.db_path(ordinal),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(crate::store::Error::from)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(crate::store::Error::from)?;
        let read = |sql: &str| -> Result<Vec<(u64, u64)>, Error> {
            let mut stmt = conn.prepare(sql).map_err(crate::store::Error::from)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .map_err(crate::store::Error::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(crate::store::Error::from)?;
            Ok(rows)
        };
        for (guild, message) in read("SELECT guild_id, message_id FROM activity")? {
            if owner(GuildId(guild), topology) != Ordinal(ordinal) {
                misplaced += 1;
            }
            *held.entry((guild, message)).or_default() += 1;
        }
        for table in ["activity", "message_cache", "member_joins", "member_leaves"] {
            let counts = read(&format!(
                "SELECT guild_id, count(*) FROM {table} GROUP BY guild_id"
            ))?;
            rows_moved += counts
                .iter()
                .filter(|(g, _)| moved.contains(g))
                .map(|(_, n)| n)
                .sum::<u64>();
        }
    }
    let missing: Vec<&(u64, u64)> = expected.iter().filter(|k| !held.contains_key(k)).collect();
    let doubled = held.values().filter(|n| **n > 1).count() as u64;
    let lost = missing.len() as u64 + doubled + misplaced;
    if lost > 0 {
        // Message ids are snowflakes stamped when the message was sent: when the loss happened.
        let sent = missing.iter().map(|(_, m)| crate::store::snowflake_ms(*m));
        tracing::warn!(
            missing = missing.len(),
            doubled,
            misplaced,
            missing_sent_from_ms = sent.clone().min(),
            missing_sent_to_ms = sent.max(),
            sample = ?missing.iter().take(5).collect::<Vec<_>>(),
            "messages not where they belong"
        );
    }
    Ok((lost, rows_moved))
}
