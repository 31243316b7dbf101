//! Elastic resharding (issue 7) on a local cluster of real pod processes, with the emulator's
//! traffic generator running while the pod count changes: afterwards every guild's rows live
//! on exactly its owner and the union of the pods' data is what the generator emitted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use guildshard::emulator::{EventKind, TrafficRequest};
use guildshard::local_cluster::LocalCluster;
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};
use guildshard::reshard::plan::{generated_snowflakes, Plan};

use crate::support::cluster::{self, activity_by_pod, logs};
use crate::support::eventually::{eventually, patience};

/// Bound of one rescale (start, roll, converge); each step is itself bounded.
const RESCALE_LIMIT: Duration = Duration::from_secs(60);

fn expected_messages(cluster: &LocalCluster) -> BTreeSet<(u64, u64)> {
    cluster
        .emulator()
        .traffic_log()
        .iter()
        .filter(|e| e.kind == EventKind::MessageCreate)
        .filter_map(|e| Some((e.guild_id?, e.message_id?)))
        .collect()
}

/// Traffic until stopped, at a rate two cores can take alongside the pods.
fn start_traffic(cluster: &LocalCluster, seed: u64) {
    cluster
        .emulator()
        .start_traffic(TrafficRequest {
            rate: 150.0,
            count: None,
            duration_ms: None,
            seed: Some(seed),
        })
        .expect("traffic starts");
}

/// Where each counted message lives, or why the final state is not reached yet.
fn placement(
    cluster: &LocalCluster,
    topology: Topology,
    expected: &BTreeSet<(u64, u64)>,
) -> Result<(), String> {
    let ordinals: Vec<u32> = (0..topology.pods.get() + 3).collect();
    let by_pod = activity_by_pod(cluster, &ordinals);
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
async fn rescale_under_traffic(strategy: Strategy, from: u32, to: u32, seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut cluster = cluster::start_with(dir.path(), from, 60, strategy, &[], false).await;
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
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_scale_up_3_to_5_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Md5, 3, 5, 31).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_scale_down_5_to_2_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Jump, 5, 2, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_scale_down_5_to_2_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Md5, 5, 2, 33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_scale_up_3_to_5_under_traffic_loses_and_doubles_nothing() {
    rescale_under_traffic(Strategy::Jump, 3, 5, 34).await;
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
    let expected = expected_messages(&cluster);
    let two = Topology::new(Strategy::Md5, 2).expect("2");
    eventually("every message recorded before the change", || async {
        placement(&cluster, two, &expected).ok()
    })
    .await;

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
