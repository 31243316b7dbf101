//! Gateway pods against the emulator: ownership split, DMs, crash safety, the internal API.
//! Every pod is a real `guildshard gateway` process; everything listens on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use guildshard::emulator::{EventKind, TrafficRequest};
use guildshard::internal_paths as paths;
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};

use crate::support::cluster::{self, activity, activity_by_pod, logs};
use crate::support::eventually::eventually;

fn expected_messages(log: &[guildshard::emulator::EmittedEvent]) -> BTreeSet<(u64, u64)> {
    log.iter()
        .filter(|e| e.kind == EventKind::MessageCreate)
        .filter_map(|e| Some((e.guild_id?, e.message_id?)))
        .collect()
}

async fn run_traffic(cluster: &guildshard::local_cluster::LocalCluster, count: u64, rate: f64) {
    let emulator = cluster.emulator();
    let before = emulator.traffic_status().logged;
    emulator
        .start_traffic(TrafficRequest {
            rate,
            count: Some(count),
            duration_ms: None,
            seed: Some(7),
        })
        .expect("traffic starts");
    eventually("the generator to finish", || async {
        let s = emulator.traffic_status();
        (!s.running && s.logged >= before + count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_record_exactly_their_own_guilds_and_answer_dms_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let cluster = cluster::start(dir.path(), 3, 200, &[]).await;
    run_traffic(&cluster, 3000, 1500.0).await;

    let log = cluster.emulator().traffic_log();
    let expected = expected_messages(&log);
    assert!(
        expected.len() > 2000,
        "the generator emitted {} messages",
        expected.len()
    );
    let topology = Topology::new(Strategy::Md5, 3).expect("3 pods");

    let by_pod = eventually("every message to be recorded", || async {
        let by_pod = activity_by_pod(&cluster, &[0, 1, 2]);
        let total: usize = by_pod.values().map(BTreeSet::len).sum();
        (total >= expected.len()).then_some(by_pod)
    })
    .await;

    let mut union = BTreeSet::new();
    for (ordinal, rows) in &by_pod {
        assert!(!rows.is_empty(), "gateway-{ordinal} recorded nothing");
        for &(guild, message) in rows {
            assert_eq!(
                owner(GuildId(guild), topology),
                Ordinal(*ordinal),
                "gateway-{ordinal} recorded message {message} of guild {guild} it does not own"
            );
            assert!(
                union.insert((guild, message)),
                "message {message} recorded twice"
            );
        }
    }
    assert_eq!(
        union, expected,
        "the union of all pods is what the generator emitted"
    );

    // DMs: ordinal 0 alone answers, once per user per day.
    let dm_users: BTreeSet<u64> = log
        .iter()
        .filter(|e| e.kind == EventKind::DirectMessage)
        .map(|e| e.user_id)
        .collect();
    assert!(!dm_users.is_empty(), "the generator sent no DM");
    for &user in &dm_users {
        let replies = eventually("a DM reply", || async {
            let replies = cluster.emulator().bot_dms(user).ok()?;
            (!replies.is_empty()).then_some(replies)
        })
        .await;
        assert_eq!(
            replies.len(),
            1,
            "user {user} got {} help replies",
            replies.len()
        );
    }
    // Replies are sent once: give a duplicate a chance to show, then count again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for &user in &dm_users {
        let n = cluster
            .emulator()
            .bot_dms(user)
            .map(|r| r.len())
            .unwrap_or_default();
        assert_eq!(
            n,
            1,
            "user {user} got {n} help replies\n{}",
            logs(dir.path())
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_the_same_guilds_merge_without_double_counting() {
    // Two databases holding overlapping copies of one guild set (what a cover leaves behind
    // for the returning owner): a snapshot taken half-way, and the database after the rest of
    // the traffic. Merging one into the other, twice, changes no count.
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut cluster = cluster::start(dir.path(), 1, 30, &[]).await;
    run_traffic(&cluster, 400, 800.0).await;
    let half = expected_messages(&cluster.emulator().traffic_log());
    eventually("the pod to record the first half", || async {
        (activity(&cluster.db_path(0)).len() >= half.len()).then_some(())
    })
    .await;
    cluster.stop_pod(0, Duration::from_secs(20)).await;
    let second_db = dir.path().join("overlap").join("bot.db");
    std::fs::create_dir_all(second_db.parent().expect("parent")).expect("mkdir");
    {
        let snapshot = guildshard::store::Store::open(cluster.db_path(0))
            .await
            .expect("open for the snapshot");
        let copy = guildshard::store::Store::open(&second_db)
            .await
            .expect("open the copy");
        for guild in snapshot.guild_ids().await.expect("guilds") {
            let export = snapshot.export_guild(guild).await.expect("export");
            copy.apply(guildshard::store::Write::ImportGuild(export))
                .await
                .expect("import");
        }
        copy.close().await.expect("close the copy");
        snapshot.close().await.expect("close the snapshot");
    }
    cluster.start_pod(0).await.expect("restart");
    cluster
        .wait_ready(0, crate::support::eventually::patience())
        .await
        .expect("ready");
    run_traffic(&cluster, 400, 800.0).await;
    let expected = expected_messages(&cluster.emulator().traffic_log());
    eventually("the pod to record everything", || async {
        (activity(&cluster.db_path(0)).len() >= expected.len()).then_some(())
    })
    .await;
    cluster.stop_pod(0, Duration::from_secs(20)).await;

    let a = guildshard::store::Store::open(cluster.db_path(0))
        .await
        .expect("open a");
    let b = guildshard::store::Store::open(&second_db)
        .await
        .expect("open b");
    let before: BTreeMap<GuildId, _> = futures_rows(&a).await;
    for guild in b.guild_ids().await.expect("guilds") {
        let export = b.export_guild(guild).await.expect("export");
        a.apply(guildshard::store::Write::ImportGuild(export.clone()))
            .await
            .expect("import");
        a.apply(guildshard::store::Write::ImportGuild(export))
            .await
            .expect("import again");
    }
    let after = futures_rows(&a).await;
    assert_eq!(before, after, "merging an overlapping copy changed counts");
    assert_eq!(activity(&cluster.db_path(0)), expected);
    a.close().await.expect("close");
    b.close().await.expect("close");
    cluster.shutdown().await;
}

/// What users can see of each guild: row counts of the tables keyed by snowflakes, and the
/// per-day figures of `/stats server`. Leaves are compared through those figures: a
/// GUILD_MEMBER_REMOVE carries no timestamp, so each pod stores the departure at the time it saw
/// it, and the store counts two sightings of one departure once.
async fn futures_rows(
    store: &guildshard::store::Store,
) -> BTreeMap<GuildId, (BTreeMap<String, u64>, String)> {
    let mut out = BTreeMap::new();
    for guild in store.guild_ids().await.expect("guilds") {
        let mut counts = store.row_counts(guild).await.expect("counts");
        // The outbox holds each pod's own enqueue history, not guild data that could double.
        counts.remove("outbox");
        counts.remove("member_leaves");
        let days = store.server_stats(guild, 0).await.expect("server stats");
        out.insert(guild, (counts, format!("{days:?}")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_nothing_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut cluster = cluster::start(dir.path(), 1, 40, &[]).await;
    let emulator = cluster.emulator().clone();
    emulator
        .start_traffic(TrafficRequest {
            rate: 400.0,
            count: Some(4000),
            duration_ms: None,
            seed: Some(11),
        })
        .expect("traffic");
    eventually("some messages to be committed", || async {
        (activity(&cluster.db_path(0)).len() > 300).then_some(())
    })
    .await;
    cluster.kill_pod(0).await;
    let committed = activity(&cluster.db_path(0));
    assert!(!committed.is_empty());

    cluster.start_pod(0).await.expect("restart");
    cluster
        .wait_ready(0, crate::support::eventually::patience())
        .await
        .expect("ready again");
    eventually("the restarted pod to record new messages", || async {
        (activity(&cluster.db_path(0)).len() > committed.len() + 50).then_some(())
    })
    .await;
    let after = activity(&cluster.db_path(0));
    let lost: Vec<_> = committed.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "rows committed before kill -9 are gone: {lost:?}"
    );
    emulator.stop_traffic();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut cluster = cluster::start(dir.path(), 1, 20, &[]).await;
    run_traffic(&cluster, 500, 1000.0).await;
    let expected = expected_messages(&cluster.emulator().traffic_log());
    eventually("messages to arrive", || async {
        (activity(&cluster.db_path(0)).len() >= expected.len()).then_some(())
    })
    .await;
    let code = cluster.stop_pod(0, Duration::from_secs(20)).await;
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM\n{}",
        logs(dir.path())
    );
    assert_eq!(activity(&cluster.db_path(0)), expected);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_api_rejects_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let cluster = cluster::start(dir.path(), 2, 20, &[]).await;
    let client = reqwest::Client::new();
    let base = |o: u32| cluster.url_template().replace("{ordinal}", &o.to_string());

    // No token, wrong token: 401.
    let resp = client
        .get(format!("{}{}", base(0), paths::STATUS))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(format!("{}{}", base(0), paths::STATUS))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);

    // Malformed interaction body: 400, and nothing executed.
    let resp = client
        .post(format!("{}{}", base(0), paths::INTERACTIONS))
        .bearer_auth(cluster.internal_token())
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);

    // A guild owned by the other pod: 409 naming the owner.
    let topology = Topology::new(Strategy::Md5, 2).expect("2");
    let foreign = cluster
        .emulator()
        .guilds()
        .iter()
        .map(|g| GuildId(g.id))
        .find(|g| owner(*g, topology) == Ordinal(1))
        .expect("a guild owned by gateway-1");
    let resp = client
        .get(format!("{}{}", base(0), paths::guild_stats(foreign)))
        .bearer_auth(cluster.internal_token())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 409);
    let body: guildshard::wire::NotOwner = resp.json().await.expect("NotOwner body");
    assert_eq!(body.owner, Ordinal(1));

    // A bad guild id: 400.
    let resp = client
        .get(format!("{}/internal/v1/guilds/12ab/stats", base(0)))
        .bearer_auth(cluster.internal_token())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);

    // Status and metrics carry the pod's identity.
    let status = cluster.status(1).await.expect("status");
    assert_eq!(status.ordinal, Ordinal(1));
    assert!(status.ready);
    let public = cluster
        .pod(1)
        .and_then(|p| p.addr("public"))
        .expect("public addr");
    let metrics = client
        .get(format!("http://{public}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("pod=\"gateway-1\""), "{metrics}");
    assert!(
        metrics.contains("guildshard_gateway_events_received"),
        "{metrics}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_delivered_twice_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let cluster = cluster::start(dir.path(), 1, 25, &[]).await;
    run_traffic(&cluster, 600, 1200.0).await;
    let expected = expected_messages(&cluster.emulator().traffic_log());
    eventually("every message to be recorded", || async {
        (activity(&cluster.db_path(0)).len() >= expected.len()).then_some(())
    })
    .await;
    let seen_before = cluster.status(0).await.expect("status").events_seen;
    let store_path = cluster.db_path(0);
    let snapshot = || async {
        let store = guildshard::store::Store::open(&store_path)
            .await
            .expect("open");
        let rows = futures_rows(&store).await;
        store.close().await.expect("close");
        rows
    };
    let before = snapshot().await;
    let posts_before: usize = bot_posts(&cluster);

    // Deliver every dispatch of the pod's sessions (one per shard) a second time.
    let sessions = cluster.emulator().sessions();
    assert!(!sessions.is_empty(), "the pod has sessions");
    let again: usize = sessions
        .iter()
        .map(|s| {
            cluster
                .emulator()
                .redeliver(&s.session_id, 1)
                .expect("redeliver")
        })
        .sum();
    assert!(again >= expected.len(), "redelivered {again}");
    eventually("the pod to see the duplicates", || async {
        let seen = cluster.status(0).await.ok()?.events_seen;
        (seen >= seen_before + again as u64).then_some(())
    })
    .await;
    // Handlers run as their own tasks; wait until the pod has handled everything it owns.
    eventually("the duplicates to be handled", || async {
        let s = cluster.status(0).await.ok()?;
        (s.events_handled >= s.events_owned).then_some(())
    })
    .await;
    assert_eq!(
        snapshot().await,
        before,
        "a replay changed the recorded data"
    );
    assert_eq!(
        bot_posts(&cluster),
        posts_before,
        "a replay made the bot post again"
    );
    cluster.shutdown().await;
}

/// Every message the bot has posted in any channel or DM.
fn bot_posts(cluster: &guildshard::local_cluster::LocalCluster) -> usize {
    let emulator = cluster.emulator();
    let mut n = 0;
    for guild in emulator.guilds() {
        for channel in &guild.channels {
            n += emulator
                .bot_messages(*channel)
                .map(|m| m.len())
                .unwrap_or_default();
        }
        for user in &guild.members {
            n += emulator.bot_dms(*user).map(|m| m.len()).unwrap_or_default();
        }
    }
    n
}
