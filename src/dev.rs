//! `guildshard dev`: the whole system on this machine with a live view. No Discord token and no
//! network are needed: the emulator plays Discord, generated users talk in its guilds, and the
//! view shows what each gateway pod handles. When Litestream and SeaweedFS are installed
//! (`bash .ci/install-tools.sh`), an S3 server runs too and every pod gets its Litestream
//! sidecar, as in the StatefulSet; the view then shows each replica's lag.
//!
//! Level 4: drives [`crate::local_cluster`].

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::emulator::{CommandKind, CommandOption, EmulatorConfig, RunCommand, TrafficRequest};
use crate::local_cluster::replication::Lag;
use crate::local_cluster::tools::INSTALL_HINT;
use crate::local_cluster::{
    ClusterConfig, LocalCluster, ObjectStore, Replication, StatefulSetSpec, Tools,
};
use crate::ownership::Strategy;
use crate::shutdown::Shutdown;
use crate::wire::StatusReport;

/// What `guildshard dev` runs.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// The `guildshard` binary for the child processes (normally this executable).
    pub binary: PathBuf,
    /// Gateway pods.
    pub pods: u32,
    /// Guilds in the emulator.
    pub guilds: usize,
    /// Generated events per second.
    pub rate: f64,
    /// Ownership strategy.
    pub strategy: Strategy,
    /// Where pods keep their databases and logs.
    pub data_dir: PathBuf,
    /// Whether to run the HTTP service (and have simulated users run commands).
    pub http: bool,
    /// Whether to run object storage and a Litestream sidecar per pod.
    pub replication: ReplicationChoice,
    /// Stop by itself after this long (for demos and smoke tests); `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Rescale live to this many pods (following the runbook) after `scale_after`.
    pub scale_to: Option<u32>,
    /// When to rescale.
    pub scale_after: Duration,
}

/// Whether `dev` replicates the pods' databases.
#[derive(Clone, Debug)]
pub enum ReplicationChoice {
    /// Not asked for.
    Off,
    /// Asked for: with these tools, or (`None`) they are not installed.
    IfInstalled(Option<Tools>),
}

/// Litestream's monitor and sync interval in `dev`: its production default.
const REPLICATION_INTERVAL: Duration = Duration::from_secs(1);

/// Why `dev` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster could not start.
    #[error(transparent)]
    Cluster(#[from] crate::local_cluster::Error),
    /// The traffic generator refused.
    #[error("traffic generator: {0}")]
    Traffic(#[from] crate::emulator::Error),
    /// The object store did not start.
    #[error(transparent)]
    ObjectStore(#[from] crate::local_cluster::objstore::Error),
    /// Litestream's files could not be written.
    #[error(transparent)]
    Litestream(#[from] crate::local_cluster::replication::Error),
}

/// How often the view is redrawn.
const REFRESH: Duration = Duration::from_secs(2);

/// Runs the local cluster until `shutdown` (Ctrl-C) or the optional duration, then stops it
/// cleanly, highest ordinal first.
pub async fn run(opts: DevOptions, shutdown: Shutdown) -> Result<(), Error> {
    let (store, replication) = start_replication(&opts).await?;
    let cfg = ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: opts.binary.clone(),
        pods: opts.pods,
        strategy: opts.strategy,
        data_dir: opts.data_dir.join("data"),
        log_dir: opts.data_dir.join("logs"),
        emulator: EmulatorConfig {
            guilds: opts.guilds,
            // Discord's 5 s identify window would make a developer wait 5 s per shard at start,
            // which tells them nothing.
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        },
        pod_env: Vec::new(),
        http: opts.http,
        replication: replication.clone(),
    };
    println!(
        "starting the emulator, {} gateway pods{} (logs in {})",
        opts.pods,
        if opts.http {
            " and the HTTP service"
        } else {
            ""
        },
        opts.data_dir.join("logs").display()
    );
    let cluster = LocalCluster::start(cfg).await?;
    println!(
        "emulator on {}; pods' internal APIs via {}",
        cluster.emulator().api_base(),
        cluster.url_template()
    );
    if let Some(addr) = cluster.http_addr() {
        println!("HTTP service on http://{addr} (interactions at /interactions)");
    }
    println!(
        "Kubernetes API stand-in on {}: kubectl --kubeconfig {} scale statefulset gateway --replicas=N",
        cluster.kube().base_url(),
        cluster.kubeconfig().display()
    );
    if opts.rate > 0.0 {
        cluster.emulator().start_traffic(TrafficRequest {
            rate: opts.rate,
            count: None,
            duration_ms: None,
            seed: None,
        })?;
    }
    let started = Instant::now();
    let mut cluster = cluster;
    let mut previous: HashMap<u32, (u64, Instant)> = HashMap::new();
    let mut replica_txids: HashMap<u32, Option<u64>> = HashMap::new();
    let mut last_command = String::from("none yet");
    let mut scale_to = opts.scale_to;
    let mut tick: u64 = 0;
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    loop {
        tick += 1;
        if let Some(to) = scale_to.filter(|_| started.elapsed() >= opts.scale_after) {
            scale_to = None;
            println!(
                "scaling the StatefulSet {} -> {to} replicas (pods follow live; new ordinals \
                 start, removed ones hand their guilds over, then stop)",
                cluster.num_gateway_pods()
            );
            match cluster.rescale(to, Duration::from_secs(300)).await {
                Ok(()) => println!("rescaled to {to} pods: converged"),
                Err(err) => println!("rescale did not finish: {err}"),
            }
        }
        // The StatefulSet controller's part of a `kubectl scale` run from another terminal.
        let want = cluster.num_gateway_pods();
        if cluster.running() != (0..want).collect::<Vec<u32>>() {
            println!("the StatefulSet asks for {want} pods: starting and stopping ordinals");
            if let Err(err) = cluster.reconcile(Duration::from_secs(300)).await {
                println!("could not follow the StatefulSet: {err}");
            }
        }
        if opts.http && tick % 3 == 0 {
            last_command = simulated_command(&cluster, tick).await;
        }
        let mut reports = Vec::new();
        for ordinal in cluster.running() {
            reports.push((ordinal, cluster.status(ordinal).await.ok()));
        }
        let lags = match &replication {
            Some(r) => replica_lags(r, &cluster, &mut replica_txids).await,
            None => HashMap::new(),
        };
        draw(&reports, &lags, &mut previous, &cluster, started.elapsed());
        println!("last simulated command: {last_command}");
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
    println!("stopping: HTTP service, then pods highest ordinal first, then the emulator");
    cluster.emulator().stop_traffic();
    cluster.shutdown().await;
    if let Some(mut store) = store {
        // After the sidecars' final syncs.
        let _ = tokio::task::spawn_blocking(move || store.stop()).await;
    }
    println!("stopped cleanly");
    Ok(())
}

/// Starts the object store and prepares Litestream when asked for and installed; says how to
/// install them when they are not.
async fn start_replication(
    opts: &DevOptions,
) -> Result<(Option<ObjectStore>, Option<Replication>), Error> {
    let tools = match &opts.replication {
        ReplicationChoice::Off => return Ok((None, None)),
        ReplicationChoice::IfInstalled(None) => {
            println!(
                "replication off: Litestream and SeaweedFS are not installed \
                 (`{INSTALL_HINT}` installs them into .cache/tools)"
            );
            return Ok((None, None));
        }
        ReplicationChoice::IfInstalled(Some(tools)) => tools.clone(),
    };
    let dir = opts.data_dir.join("s3");
    let (weed, litestream) = (tools.weed(), tools.litestream());
    let store = tokio::task::spawn_blocking(move || ObjectStore::start(&weed, &litestream, &dir))
        .await
        .map_err(|e| {
            crate::local_cluster::objstore::Error::Io(std::io::Error::other(e.to_string()))
        })??;
    let replication = Replication::new(
        &tools,
        &store,
        &opts.data_dir.join("litestream"),
        REPLICATION_INTERVAL,
    )?;
    println!(
        "object storage (SeaweedFS) on {}, bucket {}; a Litestream sidecar per pod replicates to \
         {}/{}/gateway-<ordinal>/",
        store.endpoint(),
        store.bucket(),
        replication.prefix().cluster,
        replication.prefix().namespace
    );
    Ok((Some(store), Some(replication)))
}

/// Each running pod's replication lag. A replica that cannot be listed (the store is down)
/// is judged against what it held when it was last listed.
async fn replica_lags(
    replication: &Replication,
    cluster: &LocalCluster,
    txids: &mut HashMap<u32, Option<u64>>,
) -> HashMap<u32, (Lag, bool)> {
    let running = cluster.running();
    let listed = futures::future::join_all(
        running
            .iter()
            .map(|&o| async move { (o, replication.replica_txid(o, &cluster.db_path(o)).await) }),
    )
    .await;
    listed
        .into_iter()
        .map(|(o, result)| {
            let reachable = result.is_ok();
            if let Ok(txid) = result {
                txids.insert(o, txid);
            }
            let known = txids.get(&o).copied().flatten();
            (o, (Replication::lag(&cluster.db_path(o), known), reachable))
        })
        .collect()
}

/// A simulated member runs a command in a guild, through the HTTP service and the owner pod,
/// exactly as Discord would deliver it; returns a one-line summary of what the user saw.
async fn simulated_command(cluster: &LocalCluster, tick: u64) -> String {
    let guilds = cluster.emulator().guilds();
    if guilds.is_empty() {
        return "no guilds".into();
    }
    let guild = &guilds[(tick as usize / 3) % guilds.len()];
    let (Some(&user), Some(&channel)) = (guild.members.first(), guild.channels.first()) else {
        return "guild without members".into();
    };
    let name = if tick % 2 == 0 {
        "leaderboard"
    } else {
        "stats"
    };
    let options = if name == "stats" {
        vec![CommandOption {
            name: "user".into(),
            kind: 1,
            value: serde_json::json!([]),
        }]
    } else {
        Vec::new()
    };
    let run = RunCommand {
        name: name.into(),
        kind: CommandKind::ChatInput,
        guild_id: Some(guild.id),
        channel_id: Some(channel),
        user_id: user,
        options,
        target_id: None,
    };
    match cluster.emulator().run_command(run).await {
        Ok(record) => {
            let seen = record
                .original
                .as_ref()
                .or(record.initial_response.as_ref().map(|r| &r["data"]))
                .and_then(|d| d["content"].as_str())
                .unwrap_or("(no content)")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            format!(
                "/{name} in guild {} → {:?}: {seen}",
                guild.id, record.outcome
            )
        }
        Err(err) => format!("/{name} failed: {err}"),
    }
}

fn draw(
    reports: &[(u32, Option<StatusReport>)],
    lags: &HashMap<u32, (Lag, bool)>,
    previous: &mut HashMap<u32, (u64, Instant)>,
    cluster: &LocalCluster,
    uptime: Duration,
) {
    let mut out = String::new();
    if std::io::stdout().is_terminal() {
        // Clear the screen and home the cursor, so the view redraws in place.
        out.push_str("\x1b[2J\x1b[H");
    }
    let traffic = cluster.emulator().traffic_status();
    out.push_str(&format!(
        "guildshard dev — up {}s — emulator emitted {} events — Ctrl-C stops everything\n",
        uptime.as_secs(),
        traffic.logged
    ));
    out.push_str(&format!(
        "{:<10} {:<13} {:>5} {:>8} {:>10} {:>10} {:>10} {:>10} {:>12}\n",
        "pod", "state", "ready", "guilds", "handled", "events/s", "db", "identifies", "replica lag"
    ));
    for (ordinal, report) in reports {
        let name = format!("gateway-{ordinal}");
        match report {
            Some(r) => {
                let now = Instant::now();
                let rate = match previous.insert(*ordinal, (r.events_handled, now)) {
                    Some((before, at)) => {
                        let secs = now.duration_since(at).as_secs_f64().max(0.001);
                        r.events_handled.saturating_sub(before) as f64 / secs
                    }
                    None => 0.0,
                };
                out.push_str(&format!(
                    "{:<10} {:<13} {:>5} {:>8} {:>10} {:>10.1} {:>9}K {:>10} {:>12}\n",
                    name,
                    r.state,
                    if r.ready { "yes" } else { "no" },
                    r.guilds_owned,
                    r.events_handled,
                    rate,
                    r.db_size_bytes / 1024,
                    r.identifies,
                    lag_cell(lags.get(ordinal))
                ));
            }
            None => out.push_str(&format!("{name:<10} {:<13}\n", "unreachable")),
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// `0.4s`, `3.1s (store down)`, or `-` without replication.
fn lag_cell(lag: Option<&(Lag, bool)>) -> String {
    match lag {
        None => "-".to_owned(),
        Some((lag, reachable)) => {
            let secs = format!("{:.1}s", lag.behind.as_secs_f64());
            if *reachable {
                secs
            } else {
                format!("{secs} (store down)")
            }
        }
    }
}
