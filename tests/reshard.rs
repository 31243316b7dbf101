//! Elastic resharding on a local cluster of real pod processes, with the emulator's traffic
//! generator running throughout: afterwards every guild's rows live on exactly its owner, and the
//! union of the pods' data is exactly what the generator emitted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use guildshard::emulator::TrafficRequest;
use guildshard::local_cluster::LocalCluster;
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};
use guildshard::reshard::plan::{generated_snowflakes, Plan};

use crate::support::cluster::{self, activity_by_pod, logs};
use crate::support::eventually::{eventually, patience};
use crate::support::litestream::fake_litestream;

/// Bound of one rescale (start, roll, converge); each step is itself bounded.
const RESCALE_LIMIT: Duration = Duration::from_secs(60);

fn expected_messages(cluster: &LocalCluster) -> BTreeSet<(u64, u64)> {
    cluster::emitted_messages(cluster)
}

/// Traffic until stopped, at a rate two cores can take alongside the pods.
fn start_traffic(cluster: &LocalCluster, seed: u64) {
    cluster::start_traffic(cluster, 150.0, seed);
}

/// Where each counted message lives among the running pods, or why the final state is not
/// reached yet. (Volumes of removed ordinals are kept, as the StatefulSet keeps their PVCs,
/// but they are no longer part of the cluster's data.)
fn placement(
    cluster: &LocalCluster,
    topology: Topology,
    expected: &BTreeSet<(u64, u64)>,
) -> Result<(), String> {
    let by_pod = activity_by_pod(cluster, &cluster.running());
    let mut union: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for (ordinal, rows) in &by_pod {
        for &(guild, message) in rows {
            let owns = owner(GuildId(guild), topology) == Ordinal(*ordinal);
            if !owns {
                return Err(format!(
                    "gateway-{ordinal} holds message {message} of guild {guild} it does not own"
                ));
            }
            if let Some(other) = union.insert((guild, message), *ordinal) {
                return Err(format!(
                    "message {message} of guild {guild} is on gateway-{other} and gateway-{ordinal}"
                ));
            }
        }
    }
    let held: BTreeSet<(u64, u64)> = union.into_keys().collect();
    let lost: Vec<_> = expected.difference(&held).take(5).collect();
    let extra: Vec<_> = held.difference(expected).take(5).collect();
    if !lost.is_empty() || !extra.is_empty() {
        return Err(format!(
            "{} of {} emitted messages missing (e.g. {lost:?}); {} never emitted (e.g. {extra:?})",
            expected.difference(&held).count(),
            expected.len(),
            held.difference(expected).count()
        ));
    }
    Ok(())
}

/// Runs `from` pods, rescales to `to` with traffic flowing, and checks the final placement.
/// How the pods' shards start.
#[derive(Clone, Copy)]
enum Shards {
    /// Both at once.
    Together,
    /// The second 5 s after the first (`cluster::start_staggered`).
    Staggered,
}

async fn rescale_under_traffic(strategy: Strategy, from: u32, to: u32, seed: u64, shards: Shards) {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut cluster = match shards {
        Shards::Together => cluster::start_with(dir.path(), from, 60, strategy, &[], false).await,
        Shards::Staggered => cluster::start_staggered(dir.path(), from, 60, strategy).await,
    };
    start_traffic(&cluster, seed);
    eventually("traffic before the change", || async {
        (expected_messages(&cluster).len() > 100).then_some(())
    })
    .await;
    if let Err(err) = cluster.rescale(to, RESCALE_LIMIT).await {
        panic!("{err}\n{}", logs(dir.path()));
    }
    // Keep traffic flowing a little under the new topology, then let it drain.
    let at_change = expected_messages(&cluster).len();
    eventually("traffic after the change", || async {
        (expected_messages(&cluster).len() > at_change + 100).then_some(())
    })
    .await;
    cluster.emulator().stop_traffic();
    let topology = Topology::new(strategy, to).expect("to > 0");
    let expected = expected_messages(&cluster);
    let deadline = tokio::time::Instant::now() + patience();
    while let Err(last) = placement(&cluster, topology, &expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "final state not reached: {last}\nverdict: {}\n{}",
            cluster.verdict().await,
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.verdict().await,
        guildshard::reshard::status::Verdict::Converged
    );
    assert_eq!(cluster.running(), (0..to).collect::<Vec<_>>());
    // Scaled down in the runbook's order: the removed ordinals were drained before they
    // stopped, so their kept volumes hold nothing.
    for (ordinal, rows) in activity_by_pod(&cluster, &(to..from).collect::<Vec<_>>()) {
        assert!(
            rows.is_empty(),
            "removed gateway-{ordinal} kept {} rows",
            rows.len()
        );
    }
    cluster.shutdown().await;
}

/// With staggered shards: a restarted pod is only "receiving" once its last shard has a
/// session, so peers cover and replay the seconds in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_scale_up_3_to_5_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Md5, 3, 5, 31, Shards::Staggered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_scale_down_5_to_2_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Jump, 5, 2, 32, Shards::Together).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_scale_down_5_to_2_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Md5, 5, 2, 33, Shards::Together).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_scale_up_3_to_5_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Jump, 3, 5, 34, Shards::Together).await;
}

#[test]
fn jump_moves_at_most_one_over_n_plus_one_per_added_pod() {
    let guilds = generated_snowflakes(100_000, 9);
    for n in 1..8u32 {
        let plan = Plan::compute(
            guilds.iter().copied(),
            Topology::new(Strategy::Jump, n).expect("n"),
            Topology::new(Strategy::Jump, n + 1).expect("n + 1"),
        );
        let bound = 1.0 / f64::from(n + 1) + 0.01;
        assert!(
            plan.moved_fraction() <= bound,
            "jump {n}->{}: moved {:.4} > {bound:.4}",
            n + 1,
            plan.moved_fraction()
        );
        // Every moved guild goes to the new ordinal.
        for (a, row) in plan.matrix.iter().enumerate() {
            for (b, count) in row.iter().enumerate() {
                assert!(a == b || b == n as usize || *count == 0);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_killed_mid_handoff_converges_to_the_same_final_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Many guilds with data, so the handoff takes long enough to interrupt.
    let _serial = cluster::serial().await;
    let mut cluster = cluster::start_with(dir.path(), 2, 300, Strategy::Md5, &[], false).await;
    let emulator = cluster.emulator().clone();
    emulator
        .start_traffic(TrafficRequest {
            rate: 1500.0,
            count: Some(3000),
            duration_ms: None,
            seed: Some(35),
        })
        .expect("traffic");
    eventually("the generator to finish", || async {
        (!emulator.traffic_status().running).then_some(())
    })
    .await;
    let two = Topology::new(Strategy::Md5, 2).expect("2");
    eventually("every message recorded before the change", || async {
        placement(&cluster, two, &expected_messages(&cluster)).ok()
    })
    .await;
    // Traffic keeps flowing through the whole change, the kill included: what gateway-2 was
    // processing when it died is covered by its peers, from the moment it was last seen live.
    start_traffic(&cluster, 36);

    // Scale up by hand so the new owner can be killed while it pulls.
    cluster.set_num_gateway_pods(3);
    cluster.start_pod(2).await.expect("gateway-2 starts");
    cluster.wait_ready(2, patience()).await.expect("ready");
    cluster.roll_pod(1, patience()).await.expect("roll 1");
    cluster.roll_pod(0, patience()).await.expect("roll 0");
    let interrupted = eventually("gateway-2 to be mid-handoff", || async {
        let s = cluster.status(2).await.ok()?;
        (s.handoff.pulled > 0 || s.handoff.pending_pull > 0).then_some(s.handoff)
    })
    .await;
    cluster.kill_pod(2).await;
    cluster.start_pod(2).await.expect("gateway-2 restarts");
    if let Err(err) = cluster.wait_converged(RESCALE_LIMIT).await {
        panic!("{err} (killed at {interrupted:?})\n{}", logs(dir.path()));
    }
    let at_change = expected_messages(&cluster).len();
    eventually("traffic after the change", || async {
        (expected_messages(&cluster).len() > at_change + 100).then_some(())
    })
    .await;
    cluster.emulator().stop_traffic();
    let expected = expected_messages(&cluster);
    let three = Topology::new(Strategy::Md5, 3).expect("3");
    let deadline = tokio::time::Instant::now() + patience();
    while let Err(last) = placement(&cluster, three, &expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "final state not reached after kill -9 mid-handoff: {last}\n{}",
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_the_table_and_waits_for_convergence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let cluster = cluster::start(dir.path(), 2, 20, &[]).await;
    let template = cluster.url_template();
    let env = [
        ("NUM_GATEWAY_PODS", "2"),
        ("SHARD_STRATEGY", "md5"),
        ("GATEWAY_INTERNAL_URL_TEMPLATE", template.as_str()),
        ("INTERNAL_AUTH_TOKEN", cluster.internal_token()),
    ];
    let out = tokio::task::block_in_place(|| {
        crate::support::process::run_cli(&["status", "--wait", "--timeout", "30"], &env, None)
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("gateway-0") && stdout.contains("gateway-1"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("converged"), "{stdout}");

    // Told there are three pods, the missing one blocks.
    let env3 = [
        ("NUM_GATEWAY_PODS", "3"),
        ("SHARD_STRATEGY", "md5"),
        ("GATEWAY_INTERNAL_URL_TEMPLATE", template.as_str()),
        ("INTERNAL_AUTH_TOKEN", cluster.internal_token()),
    ];
    let out = tokio::task::block_in_place(|| {
        crate::support::process::run_cli(&["status", "--wait", "--timeout", "1"], &env3, None)
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(
        verdict.starts_with("blocked: gateway-2 unreachable"),
        "{stdout}"
    );
    cluster.shutdown().await;
}

/// The operator lowers the StatefulSet's replicas first (gateway-3, then gateway-2 stop before
/// they drained), and only then `NUM_GATEWAY_PODS`. The removed ordinals' guilds are then held
/// only by their Litestream replicas (and, for what arrived after they stopped, by the peers
/// that covered them): the new owners restore the replicas and nothing is lost, with traffic
/// running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_in_the_wrong_order_recovers_the_removed_pods_guilds_from_their_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let store = tokio::task::block_in_place(|| {
        crate::support::objstore::start_object_store(&dir.path().join("s3"))
    });
    let mut cluster = cluster::start_replicated(dir.path(), 4, 60, Strategy::Md5, &store).await;
    start_traffic(&cluster, 37);
    eventually("every pod holds messages", || async {
        let by_pod = activity_by_pod(&cluster, &[0, 1, 2, 3]);
        by_pod.values().all(|rows| rows.len() >= 20).then_some(())
    })
    .await;

    // Wrong order: replicas 4 -> 2 first (highest ordinal first, as the StatefulSet does).
    for ordinal in [3, 2] {
        assert_eq!(
            cluster.stop_pod(ordinal, Duration::from_secs(25)).await,
            Some(0)
        );
    }
    // Then NUM_GATEWAY_PODS 4 -> 2: the env change rolls the remaining pods.
    cluster.set_num_gateway_pods(2);
    for ordinal in [1, 0] {
        if let Err(err) = cluster.roll_pod(ordinal, patience()).await {
            panic!("{err}\n{}", logs(dir.path()));
        }
    }
    if let Err(err) = cluster.wait_converged(RESCALE_LIMIT).await {
        panic!("{err}\n{}", logs(dir.path()));
    }
    let restored: u64 = futures::future::join_all((0..2).map(|o| cluster.status(o)))
        .await
        .into_iter()
        .map(|s| s.expect("status").handoff.restored)
        .sum();
    assert!(
        restored > 0,
        "the removed ordinals' guilds came back from their replicas\n{}",
        logs(dir.path())
    );
    // And the metrics say the same.
    let mut scraped = 0;
    for ordinal in 0..2 {
        let public = cluster
            .pod(ordinal)
            .and_then(|p| p.addr("public"))
            .expect("public");
        let text = reqwest::get(format!("http://{public}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        let series = format!("guildshard_handoff_restored_total{{pod=\"gateway-{ordinal}\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        scraped += line[series.len()..].trim().parse::<u64>().expect("a count");
        assert!(text.contains(&format!(
            "guildshard_handoff_pending_pull{{pod=\"gateway-{ordinal}\"}}"
        )));
    }
    assert_eq!(scraped, restored);
    let at_change = expected_messages(&cluster).len();
    eventually("traffic after the change", || async {
        (expected_messages(&cluster).len() > at_change + 100).then_some(())
    })
    .await;
    cluster.emulator().stop_traffic();

    let two = Topology::new(Strategy::Md5, 2).expect("2");
    let expected = expected_messages(&cluster);
    let deadline = tokio::time::Instant::now() + patience();
    while let Err(last) = placement(&cluster, two, &expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "final state not reached after a wrong-order scale-down: {last}\nverdict: {}\n{}",
            cluster.verdict().await,
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}

/// The replica fallback's restore may take as long as the replica needs while it makes
/// progress (log lines, or its output growing), and is killed soon after it stops making any:
/// a fixed limit either cuts off a big replica's restore or lets a hung one block the handoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restore_runs_while_it_progresses_and_is_killed_when_it_stalls() {
    use guildshard::config::ReplicaPrefix;
    use guildshard::reshard::replica::{restore_and_import, ReplicaConfig, Restored};
    use guildshard::store::{Store, Write};

    let dir = tempfile::tempdir().expect("tempdir");
    // The departed pod's database, as the replica would bring it back.
    let source = dir.path().join("departed/bot.db");
    {
        let departed = Store::open(&source).await.expect("open");
        for (i, guild) in [GuildId(11), GuildId(12), GuildId(13)]
            .into_iter()
            .enumerate()
        {
            let id = (1_700_000_000_000u64 - 1_420_070_400_000) << 22 | i as u64;
            departed
                .apply(Write::MessageCreated {
                    guild_id: guild,
                    channel_id: 1,
                    message_id: id,
                    author_id: 2,
                    author_is_bot: false,
                    content: "hello".into(),
                    created_at_ms: 1_700_000_000_000,
                    outbox: vec![],
                })
                .await
                .expect("write");
        }
        departed.close().await.expect("close");
    }
    let stall = Duration::from_secs(2);
    let config = |binary: std::path::PathBuf| ReplicaConfig {
        binary,
        config: dir.path().join("litestream.yml"),
        database_path: dir.path().join("pod/bot.db"),
        scratch: dir.path().join("restore"),
        stall_limit: stall,
        prefix: ReplicaPrefix {
            cluster: "test".into(),
            namespace: "ns".into(),
        },
    };
    let one_pod = Topology::new(Strategy::Md5, 1).expect("1");
    // Each restore takes twice the stall limit, in steps of an eighth of it.
    let progressing = [
        (
            "lines",
            "i=0\nwhile [ $i -lt 16 ]; do echo \"restoring ltx $i\" >&2; sleep 0.25; i=$((i+1)); done\ncp \"$source\" \"$out\"",
        ),
        (
            "grow",
            "i=0\nwhile [ $i -lt 16 ]; do printf 'page' >> \"$out.tmp\"; sleep 0.25; i=$((i+1)); done\ncp \"$source\" \"$out\"\nrm -f \"$out.tmp\"",
        ),
    ];
    for (name, body) in progressing {
        let store = Store::open(dir.path().join(format!("pod-{name}/bot.db")))
            .await
            .expect("open");
        let cfg = config(fake_litestream(dir.path(), name, &source, body));
        let started = std::time::Instant::now();
        let restored = restore_and_import(&cfg, &store, Ordinal(0), one_pod, Ordinal(1))
            .await
            .unwrap_or_else(|e| panic!("{name}: a progressing restore must finish: {e}"));
        assert!(
            started.elapsed() > stall,
            "{name}: the restore ran longer than the stall limit ({:?})",
            started.elapsed()
        );
        assert_eq!(restored, Restored::Imported(3), "{name}");
        assert_eq!(store.guilds_held(), 3, "{name}");
        store.close().await.expect("close");
    }

    // One line, then nothing: killed once the stall limit passes, not after a fixed minutes-long
    // limit, and reported as a failed restore (retried later, never counted as done).
    let store = Store::open(dir.path().join("pod-stalled/bot.db"))
        .await
        .expect("open");
    let pid_file = dir.path().join("stalled.pid");
    let body = format!(
        "echo $$ > '{}'\necho 'restoring snapshot' >&2\nexec sleep 600",
        pid_file.display()
    );
    let cfg = config(fake_litestream(dir.path(), "stalled", &source, &body));
    let started = std::time::Instant::now();
    let err = restore_and_import(&cfg, &store, Ordinal(0), one_pod, Ordinal(1))
        .await
        .expect_err("a stalled restore fails");
    let took = started.elapsed();
    assert!(
        took >= stall && took < stall * 5,
        "killed after the stall limit: {took:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("gateway-1") && text.contains("no progress"),
        "{text}"
    );
    assert_eq!(store.guilds_held(), 0);
    let pid = std::fs::read_to_string(&pid_file).expect("the stand-in ran");
    let alive = std::process::Command::new("kill")
        .args(["-0", pid.trim()])
        .status()
        .expect("kill -0");
    assert!(!alive.success(), "the stalled restore was killed");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("restore"))
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "no restored copy is left behind: {left:?}");
    store.close().await.expect("close");
}
