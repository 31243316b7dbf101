//! Live topology (DESIGN §7.1): the pods follow the StatefulSet's `spec.replicas` through the
//! Kubernetes API (the stand-in), so `kubectl scale statefulset gateway --replicas=N` is the
//! whole rescale and no pod that stays is restarted. The emulator runs with Discord's real
//! identify limits (5 s window, max_concurrency 1) and one shard, so the identify counter shows
//! that a rescale moves the shard's session by RESUME instead of identifying.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use guildshard::local_cluster::LocalCluster;
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};

use crate::support::cluster::{self, activity, activity_by_pod, logs};
use crate::support::eventually::patience;
use crate::support::objstore::{run_bounded, show, tools};
use crate::support::windows;

/// Polls `check` until it says `Ok`; after the test patience, panics with its last `Err`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out waiting for {what}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Bound of one rescale (start new ordinals, converge, hand over).
const RESCALE_LIMIT: Duration = Duration::from_secs(90);

/// A cluster of `pods` pods over `guilds` guilds, one Discord shard, with Discord's real
/// identify limits.
async fn start(dir: &Path, pods: u32, guilds: usize, strategy: Strategy) -> LocalCluster {
    let mut cfg = cluster::config(dir, pods, guilds, strategy);
    cfg.emulator.shards = 1;
    cfg.emulator.identify_window_ms = 5_000;
    cfg.emulator.max_concurrency = 1;
    cluster::start_config(dir, cfg).await
}

/// The real kubectl against the stand-in, through the cluster's kubeconfig.
fn kubectl(cluster: &LocalCluster, dir: &Path, args: &[&str]) -> Output {
    let home = dir.join("kubectl-home");
    std::fs::create_dir_all(&home).expect("kubectl home");
    let out = run_bounded(
        Command::new(tools().path("kubectl"))
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .args(args)
            .env("HOME", &home),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "kubectl {args:?}: {}", show(&out));
    out
}

fn identifies(cluster: &LocalCluster) -> u64 {
    cluster.emulator().counters().identifies
}

fn pids(cluster: &LocalCluster) -> BTreeMap<u32, u32> {
    cluster
        .running()
        .into_iter()
        .filter_map(|o| Some((o, cluster.pod(o)?.pid()?)))
        .collect()
}

fn emitted(cluster: &LocalCluster) -> BTreeSet<(u64, u64)> {
    cluster::emitted_messages(cluster)
}

fn start_traffic(cluster: &LocalCluster, seed: u64) {
    cluster::start_traffic(cluster, 100.0, seed);
}

/// Every emitted message recorded exactly once, each on its owner among the running pods.
fn exactly_once(cluster: &LocalCluster, expected: &BTreeSet<(u64, u64)>) -> Result<(), String> {
    let topology = Topology::new(Strategy::Md5, cluster.num_gateway_pods()).expect("pods");
    let mut union: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for (ordinal, rows) in activity_by_pod(cluster, &cluster.running()) {
        for (guild, message) in rows {
            if owner(GuildId(guild), topology) != Ordinal(ordinal) {
                return Err(format!(
                    "gateway-{ordinal} holds message {message} of guild {guild} it does not own"
                ));
            }
            if let Some(other) = union.insert((guild, message), ordinal) {
                return Err(format!(
                    "message {message} is on gateway-{other} and gateway-{ordinal}"
                ));
            }
        }
    }
    let held: BTreeSet<(u64, u64)> = union.into_keys().collect();
    let lost = expected.difference(&held).count();
    let extra = held.difference(expected).count();
    if lost > 0 || extra > 0 {
        return Err(format!(
            "{lost} of {} emitted messages missing, {extra} never emitted",
            expected.len()
        ));
    }
    Ok(())
}

async fn stop_traffic_and_settle(cluster: &LocalCluster) -> BTreeSet<(u64, u64)> {
    cluster.emulator().stop_traffic();
    let expected = emitted(cluster);
    until("every emitted message recorded exactly once", || async {
        exactly_once(cluster, &expected)
    })
    .await;
    expected
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_scale_is_the_whole_rescale_and_restarts_no_pod() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 3, 200, Strategy::Md5).await;
    assert_eq!(
        identifies(&cluster),
        1,
        "one shard: one session in the whole cluster"
    );
    start_traffic(&cluster, 14);
    let before = pids(&cluster);

    // Up: 3 → 5. The shard's session may move, by RESUME: nobody identifies.
    kubectl(
        &cluster,
        dir.path(),
        &["scale", "statefulset", "gateway", "--replicas=5"],
    );
    let shown = kubectl(&cluster, dir.path(), &["get", "statefulset", "gateway"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("gateway"));
    cluster
        .reconcile(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    cluster
        .wait_converged(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    assert_eq!(
        identifies(&cluster),
        1,
        "a scale-up moves sessions, it does not identify"
    );
    let up = pids(&cluster);
    for (o, pid) in &before {
        assert_eq!(
            up.get(o),
            Some(pid),
            "gateway-{o} was restarted by the scale-up"
        );
    }

    // Down: 5 → 2. The removed pods hand their guilds over, then stop.
    kubectl(
        &cluster,
        dir.path(),
        &["scale", "statefulset", "gateway", "--replicas=2"],
    );
    cluster
        .reconcile(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    cluster
        .wait_converged(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    assert_eq!(cluster.running(), vec![0, 1]);
    assert_eq!(identifies(&cluster), 1, "a scale-down identifies nothing");
    let down = pids(&cluster);
    for o in [0, 1] {
        assert_eq!(down.get(&o), before.get(&o), "gateway-{o} was restarted");
    }

    let expected = stop_traffic_and_settle(&cluster).await;
    assert!(expected.len() > 100, "traffic flowed: {}", expected.len());
    for o in 2..5 {
        let left = activity(&cluster.db_path(o));
        assert!(
            left.is_empty(),
            "removed gateway-{o}'s volume still holds {} messages",
            left.len()
        );
    }
    let stopped_cleanly = std::fs::read_to_string(cluster.log_dir().join("gateway-4.log"))
        .unwrap_or_default()
        .contains("every guild of this pod was pulled by its new owner");
    assert!(
        stopped_cleanly,
        "gateway-4 handed over before stopping\n{}",
        logs(dir.path())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_change_before_convergence_leaves_no_guild_unprocessed() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 3, 200, Strategy::Md5).await;
    start_traffic(&cluster, 15);

    // 3 → 4: the pods move to 4 and cannot converge while gateway-3 has not started...
    cluster.kube().set_replicas(4).expect("scale");
    until("every pod runs 4 pods", || async {
        for o in 0..3 {
            let s = cluster.status(o).await.map_err(|e| e.to_string())?;
            if s.topology.pods.get() != 4 {
                return Err(format!("gateway-{o} runs {}", s.topology));
            }
        }
        Ok(())
    })
    .await;
    // ...and → 5 before it converged.
    let s = cluster.status(0).await.expect("status");
    assert!(
        !s.previous_topologies.is_empty(),
        "still transitioning when the second change comes"
    );
    cluster.kube().set_replicas(5).expect("scale");
    cluster
        .reconcile(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    cluster
        .wait_converged(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    // Sessions move by RESUME, so the changes take seconds: let some traffic flow after them.
    until("traffic after the changes", || async {
        let n = emitted(&cluster).len();
        if n > 100 {
            Ok(())
        } else {
            Err(format!("{n} messages"))
        }
    })
    .await;
    let expected = stop_traffic_and_settle(&cluster).await;

    let recorded = windows::read(cluster.log_dir());
    let t = |n| Topology::new(Strategy::Md5, n).expect("pods");
    let saw_both = recorded.windows.get(&0).is_some_and(|ws| {
        ws.iter()
            .any(|w| w.current == t(5) && w.history == vec![t(3), t(4)])
    });
    assert!(expected.len() > 100);
    assert!(
        saw_both,
        "gateway-0 processed under 3, 4 and 5 pods at once\n{}",
        logs(dir.path())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_keep_their_pod_count_while_the_api_is_away_and_follow_it_when_it_returns() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(dir.path(), 2, 100, Strategy::Md5).await;
    cluster.kube().set_outage(true);
    let s = until("gateway-1 reports the API unreachable", || async {
        let s = cluster.status(1).await.map_err(|e| e.to_string())?;
        if s.topology_source.connected {
            return Err("still connected".to_owned());
        }
        Ok(s)
    })
    .await;
    assert_eq!(s.topology_source.kind, "statefulset");
    assert!(s.topology_source.down_since_ms.is_some());
    assert_eq!(s.topology.pods.get(), 2, "keeps the last pod count");
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        cluster
            .pod(1)
            .and_then(|p| p.addr("public"))
            .expect("public")
    ))
    .await
    .expect("metrics")
    .text()
    .await
    .expect("text");
    assert!(
        metrics.contains("guildshard_topology_source_up{pod=\"gateway-1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("guildshard_store_wal_bytes{pod=\"gateway-1\"} "),
        "the pod reports its WAL, which only Litestream checkpoints: {metrics}"
    );

    // A scale made during the outage takes effect once the API answers again.
    cluster.kube().set_outage(false);
    cluster.kube().set_replicas(3).expect("scale");
    until("gateway-1 follows the StatefulSet again", || async {
        let s = cluster.status(1).await.map_err(|e| e.to_string())?;
        match (s.topology_source.connected, s.topology.pods.get()) {
            (true, 3) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A broken watch is re-established and changes keep arriving.
    cluster.kube().break_watches();
    cluster.kube().set_replicas(2).expect("scale");
    until("gateway-0 follows after a broken watch", || async {
        let s = cluster.status(0).await.map_err(|e| e.to_string())?;
        (s.topology.pods.get() == 2)
            .then_some(())
            .ok_or(format!("runs {}", s.topology))
    })
    .await;

    let log = std::fs::read_to_string(cluster.log_dir().join("gateway-1.log")).unwrap_or_default();
    let started = log
        .matches("the Kubernetes API is unreachable: keeping the last known pod count")
        .count();
    let ended = log.matches("the Kubernetes API is reachable again").count();
    assert!(
        started >= 1 && started == ended,
        "one line at each end of each outage: {started} / {ended}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_may_not_read_its_statefulset_stops_with_one_line_unless_overridden() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 1, 20, Strategy::Md5).await;
    let bin = crate::support::process::bin();
    let run = |env: Vec<(String, String)>| {
        let mut cmd = Command::new(bin);
        cmd.arg("gateway").env_clear().envs(env);
        run_bounded(&mut cmd, Duration::from_secs(30))
    };
    let mut env = cluster.pod_env(1);
    env.retain(|(k, _)| k != "DATABASE_PATH");
    env.push((
        "DATABASE_PATH".into(),
        dir.path().join("lonely.db").display().to_string(),
    ));

    cluster.kube().set_forbidden(true);
    let out = run(env.clone());
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("guildshard:"))
        .collect();
    assert_eq!(last.len(), 1, "one line: {stderr}");
    assert!(
        last[0].contains("statefulsets") && last[0].contains("get, list, watch"),
        "names the permission and the fix: {}",
        last[0]
    );

    cluster.kube().set_forbidden(false);
    cluster.kube().delete_statefulset();
    let out = run(env.clone());
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        show(&out)
    );

    // NUM_GATEWAY_PODS makes the count fixed: the pod runs without the API. (It does not
    // become ready here: gateway-0 still runs under the StatefulSet's single pod, so the two
    // disagree on who connects the shard, which a real cluster, all on one source, does not.)
    env.push(("NUM_GATEWAY_PODS".into(), "2".into()));
    cluster
        .start_pod_with(1, &env)
        .await
        .expect("starts with the override");
    let s = until("gateway-1 to answer its status", || async {
        cluster.status(1).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(s.topology_source.kind, "fixed");
    assert_eq!(s.topology.pods.get(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_to_zero_stops_the_bot_and_deletes_nothing() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 3, 100, Strategy::Md5).await;
    start_traffic(&cluster, 16);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = stop_traffic_and_settle(&cluster).await;
    let held: BTreeMap<u32, BTreeSet<(u64, u64)>> = activity_by_pod(&cluster, &[0, 1, 2]);

    cluster.kube().set_replicas(0).expect("scale to 0");
    cluster.reconcile(RESCALE_LIMIT).await.expect("pods stop");
    assert!(cluster.running().is_empty());
    // Nothing deleted: each volume still holds its rows (and possibly copies of a peer's
    // guilds a pod processed while covering it during the stop, merged back later).
    for (o, rows) in activity_by_pod(&cluster, &[0, 1, 2]) {
        let kept = held.get(&o).expect("held");
        assert!(
            rows.is_superset(kept),
            "gateway-{o} lost {} rows",
            kept.difference(&rows).count()
        );
    }

    cluster.kube().set_replicas(3).expect("scale back");
    cluster.reconcile(RESCALE_LIMIT).await.expect("pods start");
    cluster
        .wait_converged(RESCALE_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    exactly_once(&cluster, &expected).expect("all data back");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_takes_the_pod_count_as_a_flag_or_from_the_statefulset() {
    let _serial = cluster::serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(dir.path(), 2, 40, Strategy::Md5).await;
    let template = cluster.url_template();
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let common = [
        ("GATEWAY_INTERNAL_URL_TEMPLATE", template.as_str()),
        ("INTERNAL_AUTH_TOKEN", cluster.internal_token()),
    ];
    let status = |args: &'static [&'static str], extra: Vec<(&'static str, String)>| {
        let mut env: Vec<(&str, &str)> = common.to_vec();
        let extra_refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend(extra_refs);
        crate::support::process::run_cli(args, &env, None)
    };
    let out = status(&["status", "--pods", "2"], vec![]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("converged"));
    let out = status(&["status", "--pods", "3"], vec![]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("blocked: gateway-2 unreachable"), "{text}");
    // From the StatefulSet, through a kubeconfig: it says 2.
    let out = status(&["status"], vec![("KUBECONFIG", kubeconfig.clone())]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("expected: md5/2") && text.contains("converged"),
        "{text}"
    );
    // Neither: learned from the pods.
    let out = status(&["status"], vec![]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("expected: md5/2"), "{text}");
    cluster.shutdown().await;
}
