//! `guildshard dev`: the whole system on this machine with a live view. No Discord token and no
//! network are needed: the emulator plays Discord, generated users talk in its guilds, and the
//! view shows what each gateway pod handles.
//!
//! Level 4: drives [`crate::local_cluster`].

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::emulator::{EmulatorConfig, TrafficRequest};
use crate::local_cluster::{ClusterConfig, LocalCluster};
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
    /// Stop by itself after this long (for demos and smoke tests); `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
}

/// Why `dev` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster could not start.
    #[error(transparent)]
    Cluster(#[from] crate::local_cluster::Error),
    /// The traffic generator refused.
    #[error("traffic generator: {0}")]
    Traffic(#[from] crate::emulator::Error),
}

/// How often the view is redrawn.
const REFRESH: Duration = Duration::from_secs(2);

/// Runs the local cluster until `shutdown` (Ctrl-C) or the optional duration, then stops it
/// cleanly, highest ordinal first.
pub async fn run(opts: DevOptions, shutdown: Shutdown) -> Result<(), Error> {
    let cfg = ClusterConfig {
        binary: opts.binary.clone(),
        pods: opts.pods,
        strategy: opts.strategy,
        data_dir: opts.data_dir.join("data"),
        log_dir: opts.data_dir.join("logs"),
        emulator: EmulatorConfig {
            guilds: opts.guilds,
            // Every pod identifies the same shards; Discord's 5 s identify bucket would make
            // pods wait for each other at start, which tells a developer nothing.
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        },
        pod_env: Vec::new(),
        http: opts.http,
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
    if opts.rate > 0.0 {
        cluster.emulator().start_traffic(TrafficRequest {
            rate: opts.rate,
            count: None,
            duration_ms: None,
            seed: None,
        })?;
    }
    let started = Instant::now();
    let mut previous: HashMap<u32, (u64, Instant)> = HashMap::new();
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    loop {
        let mut reports = Vec::new();
        for ordinal in cluster.running() {
            reports.push((ordinal, cluster.status(ordinal).await.ok()));
        }
        draw(&reports, &mut previous, &cluster, started.elapsed());
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
    println!("stopped cleanly");
    Ok(())
}

fn draw(
    reports: &[(u32, Option<StatusReport>)],
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
        "{:<10} {:<13} {:>5} {:>8} {:>10} {:>10} {:>10} {:>10}\n",
        "pod", "state", "ready", "guilds", "handled", "events/s", "db", "identifies"
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
                    "{:<10} {:<13} {:>5} {:>8} {:>10} {:>10.1} {:>9}K {:>10}\n",
                    name,
                    r.state,
                    if r.ready { "yes" } else { "no" },
                    r.guilds_owned,
                    r.events_handled,
                    rate,
                    r.db_size_bytes / 1024,
                    r.identifies
                ));
            }
            None => out.push_str(&format!("{name:<10} {:<13}\n", "unreachable")),
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}
