//! The `interactions` scenario: signed Discord interactions (`/stats user`) through the HTTP
//! service (Ed25519 check, routing) → the owner pod (a SQLite read) → the response, at fixed
//! offered rates, against a bare axum handler on the same machine that answers the same
//! requests with a fixed body (the ceiling: loopback HTTP and nothing else).
//!
//! The load is open-loop: request `i` is due at `t0 + i / rate` whatever the answers, and its
//! latency is counted from when it was due, so a slow server cannot hide its queue by slowing
//! the sender (no coordinated omission). Bodies are signed by the emulator before each step (a
//! signature stays valid for minutes). Peak throughput is closed-loop: 64 concurrent senders,
//! each sending its next request when the last one is answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;

use super::{median, per_sec, Error, Options, Row, Scratch};
use crate::emulator::{
    CommandKind, CommandOption, EmulatorConfig, RunCommand, SignedInteraction, TrafficRequest,
};
use crate::local_cluster::{ClusterConfig, LocalCluster, StatefulSetSpec};
use crate::ownership::Strategy;

/// Senders in the closed-loop peak measurement.
const PEAK_CONCURRENCY: usize = 64;
/// A request not answered within this counts as failed.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// Latency percentiles and throughput of one step.
struct Step {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Answered with 200 per second of the step.
    throughput: f64,
    failed: usize,
}

/// Measures.
///
/// # Errors
/// The cluster failing to start, or a step failing outright.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let (rates, window, peak_window): (&[f64], Duration, Duration) = if options.quick {
        (
            &[200.0],
            Duration::from_millis(500),
            Duration::from_millis(500),
        )
    } else {
        (
            &[1_000.0, 2_000.0, 5_000.0],
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
    };
    let scratch = Scratch::new(options, "interactions")?;
    let cluster = start(options, scratch.path()).await?;
    let result = measure(options, &cluster, rates, window, peak_window).await;
    cluster.shutdown().await;
    result
}

async fn start(options: &Options, dir: &std::path::Path) -> Result<LocalCluster, Error> {
    let cfg = ClusterConfig {
        statefulset: StatefulSetSpec::default(),
        binary: options.binary.clone(),
        pods: 1,
        strategy: Strategy::Md5,
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        emulator: EmulatorConfig {
            guilds: 50,
            members_per_guild: 20,
            channels_per_guild: 3,
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        },
        pod_env: vec![],
        http: true,
        replication: None,
    };
    let cluster = LocalCluster::start(cfg).await?;
    cluster.wait_ready(0, Duration::from_secs(60)).await?;
    // Messages to count, so `/stats` reads real rows.
    let emulator = cluster.emulator();
    emulator.start_traffic(TrafficRequest {
        rate: 2_000.0,
        count: Some(if options.quick { 200 } else { 5_000 }),
        duration_ms: None,
        seed: Some(11),
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while emulator.traffic_status().running && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(cluster)
}

async fn measure(
    options: &Options,
    cluster: &LocalCluster,
    rates: &[f64],
    window: Duration,
    peak_window: Duration,
) -> Result<Vec<Row>, Error> {
    let http = cluster
        .http_addr()
        .ok_or_else(|| Error::Measure("the HTTP service did not start".into()))?;
    let bare = BareServer::start()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(REQUEST_LIMIT)
        .build()
        .map_err(|e| Error::Measure(format!("http client: {e}")))?;
    let targets = [
        ("guildshard", format!("http://{http}/interactions")),
        ("bare axum", format!("http://{}/interactions", bare.addr)),
    ];
    let mut rows = Vec::new();
    for &rate in rates {
        for (name, url) in &targets {
            let mut samples = Vec::new();
            for _ in 0..options.runs.max(1) {
                let n = (rate * window.as_secs_f64()).ceil() as usize;
                let requests = sign(cluster, n)?;
                samples.push(open_loop(&client, url, requests, rate).await);
            }
            rows.push(step_row(name, rate, &samples));
        }
    }
    for (name, url) in &targets {
        let mut rates = Vec::new();
        for _ in 0..options.runs.max(1) {
            rates.push(closed_loop(cluster, &client, url, peak_window).await?);
        }
        rows.push(Row::new(
            format!("{name}: peak, {PEAK_CONCURRENCY} concurrent senders"),
            per_sec(median(&rates)),
            format!(
                "answered with 200 per second, closed loop over {} s",
                peak_window.as_secs_f64()
            ),
        ));
    }
    drop(bare);
    Ok(rows)
}

fn step_row(name: &str, rate: f64, samples: &[Step]) -> Row {
    let m = |f: fn(&Step) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
    let failed: usize = samples.iter().map(|s| s.failed).sum();
    let (p50, p99, p999) = (m(|s| s.p50_ms), m(|s| s.p99_ms), m(|s| s.p999_ms));
    let target = if name == "guildshard" && rate == 2_000.0 {
        if p99 < 5.0 {
            "; target p99 < 5 ms at 2k/s: met"
        } else {
            "; target p99 < 5 ms at 2k/s: MISSED"
        }
    } else {
        ""
    };
    Row::new(
        format!("{name}: offered {}", per_sec(rate)),
        format!("{p99:.2} ms"),
        format!(
            "p99; p50 {p50:.2} ms, p99.9 {p999:.2} ms; answered {} ({failed} failed or late \
             over all runs){target}",
            per_sec(m(|s| s.throughput))
        ),
    )
}

/// `n` signed `/stats user` interactions, spread over the emulator's guilds and members.
fn sign(cluster: &LocalCluster, n: usize) -> Result<Vec<Arc<SignedInteraction>>, Error> {
    let emulator = cluster.emulator();
    let guilds = emulator.guilds();
    if guilds.is_empty() {
        return Err(Error::Measure("the emulator has no guilds".into()));
    }
    (0..n)
        .map(|i| {
            let guild = &guilds[i % guilds.len()];
            let user = guild.members[(i / guilds.len()) % guild.members.len().max(1)];
            let command = RunCommand {
                name: "stats".into(),
                kind: CommandKind::ChatInput,
                guild_id: Some(guild.id),
                channel_id: guild.channels.first().copied(),
                user_id: user,
                options: vec![CommandOption {
                    name: "user".into(),
                    kind: 1,
                    value: serde_json::json!([]),
                }],
                target_id: None,
            };
            Ok(Arc::new(emulator.signed_command(&command)?))
        })
        .collect()
}

/// Sends one signed interaction; whether it was answered with 200 and a body.
async fn send(client: &reqwest::Client, url: &str, request: &SignedInteraction) -> bool {
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-signature-ed25519", &request.signature)
        .header("x-signature-timestamp", &request.timestamp)
        .body(request.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
        _ => false,
    }
}

/// Sends `requests` at `rate` whatever the answers; latency from each request's due time.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    requests: Vec<Arc<SignedInteraction>>,
    rate: f64,
) -> Step {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for (i, request) in requests.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let ok = send(&client, &url, &request).await;
            (ok, due.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok((true, latency)) => latencies.push(latency.as_secs_f64() * 1000.0),
            _ => failed += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    Step {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        throughput: latencies.len() as f64 / elapsed,
        failed,
    }
}

/// Answered requests per second with `PEAK_CONCURRENCY` senders, each waiting for its answer.
async fn closed_loop(
    cluster: &LocalCluster,
    client: &reqwest::Client,
    url: &str,
    window: Duration,
) -> Result<f64, Error> {
    let requests = Arc::new(sign(cluster, 4 * PEAK_CONCURRENCY)?);
    let start = Instant::now();
    let senders: Vec<_> = (0..PEAK_CONCURRENCY)
        .map(|k| {
            let (client, url, requests) = (client.clone(), url.to_owned(), requests.clone());
            tokio::spawn(async move {
                let mut answered = 0u64;
                let mut i = k;
                while start.elapsed() < window {
                    if send(&client, &url, &requests[i % requests.len()]).await {
                        answered += 1;
                    }
                    i += PEAK_CONCURRENCY;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for sender in senders {
        answered += sender.await.unwrap_or(0);
    }
    Ok(answered as f64 / start.elapsed().as_secs_f64())
}

/// The ceiling: an axum server answering every POST with a fixed interaction response, on a
/// runtime of its own (two worker threads, as the HTTP service has), so it competes for the
/// machine as a separate process would.
struct BareServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareServer {
    fn start() -> Result<BareServer, Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("bench-bare-axum".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let app = Router::new().route(
                        "/interactions",
                        post(|_body: axum::body::Bytes| async {
                            axum::Json(serde_json::json!({
                                "type": 4, "data": {"content": "ok", "flags": 64}
                            }))
                        }),
                    );
                    // No graceful shutdown: idle keep-alive connections would hold it open.
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(BareServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
