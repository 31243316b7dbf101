//! The `failover` scenario, the part measurable today: a gateway pod under steady traffic is
//! killed with SIGKILL (kill -9) and started again at once on the same data directory (its
//! PVC), as the StatefulSet controller does; the figure is the time from the kill until the
//! new process has handled its first event. Kubernetes' own restart delay (scheduling, image,
//! back-off) is not included. Restoring from the Litestream replica and replication lag need
//! Litestream and an object store running beside the pod; the bench does not start them yet,
//! and its row says so.

use std::time::{Duration, Instant};

use super::{median, spread, Error, Options, Row, Scratch};
use crate::emulator::{EmulatorConfig, TrafficRequest};
use crate::local_cluster::{ClusterConfig, LocalCluster};
use crate::ownership::Strategy;

/// Measures.
///
/// # Errors
/// The cluster failing to start or the pod never handling an event again.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let scratch = Scratch::new(&options.work_dir, "failover")?;
    let cfg = ClusterConfig {
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
    Ok(vec![
        Row::new(
            "kill -9 → restarted pod handles an event (200 events/s traffic)",
            ms(median(&samples)),
            format!(
                "process start + migrations + gateway identify + first event handled (of any kind: \
                 READY and GUILD_CREATE come first); excludes Kubernetes' restart delay; {}",
                spread(&samples, ms)
            ),
        ),
        Row::new(
            "restore a 100 MB database from the replica; replication lag p50/p99",
            "not measured",
            "not yet measured: needs Litestream and an object store (SeaweedFS) started by the \
             bench; .ci/install-tools.sh installs them for the tests, the bench does not yet \
             drive them",
        ),
    ])
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
