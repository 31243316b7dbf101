//! Litestream with the real binary and a real S3 server (SeaweedFS) on 127.0.0.1. First the
//! files the pods mount on their own: the entrypoint's refusals and a first boot. Then running
//! gateway pods with Litestream beside them as the StatefulSet runs it (restore init container,
//! native sidecar): a lost volume is restored, two ordinals keep to their own replica paths,
//! and an object-storage outage neither stops the bot nor loses the replica.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use guildshard::emulator::TrafficRequest;
use guildshard::local_cluster::{LocalCluster, Replication};
use guildshard::ownership::{owner, GuildId, Ordinal, Strategy, Topology};

use crate::support::cluster::{self, activity, logs, REPLICATION_INTERVAL};
use crate::support::eventually::{eventually, patience};
use crate::support::objstore::{run_bounded, show, start_object_store, tools, Litestream};

const RESTORE_LIMIT: Duration = Duration::from_secs(60);

/// A row committed this long before a loss must be in the replica: thirty replication
/// intervals, so a loaded machine does not turn Litestream's normal lag into a failure.
const SYNCED_AFTER: Duration = REPLICATION_INTERVAL.saturating_mul(30);

/// Runs `sh litestream/entrypoint.sh <args>` with exactly `env` (plus PATH, and
/// LITESTREAM_BIN pointing at the real binary).
fn entrypoint(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let mut cmd = Command::new("sh");
    cmd.arg(Litestream::entrypoint_path())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("LITESTREAM_BIN", tools().path("litestream"))
        .envs(env.iter().map(|(k, v)| (k, v)));
    run_bounded(&mut cmd, Duration::from_secs(60))
}

fn env_without(env: &[(String, String)], drop: &str) -> Vec<(String, String)> {
    env.iter().filter(|(k, _)| k != drop).cloned().collect()
}

fn env_with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut e = env_without(env, key);
    e.push((key.to_owned(), value.to_owned()));
    e
}

#[test]
fn entrypoint_refuses_unset_ordinal_prefix_bucket_or_endpoint() {
    // No server needed: the entrypoint must stop before Litestream runs at all. `version`
    // would print Litestream's version on stdout if it were reached.
    let dir = tempfile::tempdir().expect("tempdir");
    let good: Vec<(String, String)> = [
        ("POD_ORDINAL", "2"),
        ("CLUSTER_NAME", "prod-eu"),
        ("POD_NAMESPACE", "bots"),
        ("LITESTREAM_BUCKET", "bucket"),
        ("LITESTREAM_S3_ENDPOINT", "http://127.0.0.1:9"),
        (
            "DATABASE_PATH",
            &*dir.path().join("bot.db").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    let ok = entrypoint(&["version"], &good);
    assert!(
        ok.status.success(),
        "a complete env must run litestream: {}",
        show(&ok)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "0.5.17");

    let cases = [
        ("POD_ORDINAL", env_without(&good, "POD_ORDINAL")),
        ("POD_ORDINAL", env_with(&good, "POD_ORDINAL", "")),
        ("POD_ORDINAL", env_with(&good, "POD_ORDINAL", "gateway-1")),
        ("POD_ORDINAL", env_with(&good, "POD_ORDINAL", "-1")),
        ("CLUSTER_NAME", env_without(&good, "CLUSTER_NAME")),
        ("CLUSTER_NAME", env_with(&good, "CLUSTER_NAME", "")),
        ("CLUSTER_NAME", env_with(&good, "CLUSTER_NAME", "prod/eu")),
        ("CLUSTER_NAME", env_with(&good, "CLUSTER_NAME", "..")),
        ("POD_NAMESPACE", env_without(&good, "POD_NAMESPACE")),
        ("POD_NAMESPACE", env_with(&good, "POD_NAMESPACE", "Bots")),
        ("LITESTREAM_BUCKET", env_without(&good, "LITESTREAM_BUCKET")),
        (
            "LITESTREAM_BUCKET",
            env_with(&good, "LITESTREAM_BUCKET", ""),
        ),
        (
            "LITESTREAM_S3_ENDPOINT",
            env_without(&good, "LITESTREAM_S3_ENDPOINT"),
        ),
        ("DATABASE_PATH", env_without(&good, "DATABASE_PATH")),
    ];
    for (var, env) in cases {
        let out = entrypoint(&["version"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}: {}", show(&out));
        assert!(
            out.stdout.is_empty(),
            "{var}: litestream must not run: {}",
            show(&out)
        );
        assert_eq!(stderr.lines().count(), 1, "{var}: one line: {}", show(&out));
        assert!(stderr.contains(var), "{var} must be named: {}", show(&out));
    }
}

#[test]
fn first_boot_without_a_replica_starts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_object_store(&dir.path().join("s3"));
    let ls = Litestream::new(&store, &dir.path().join("data/bot.db"), 0);

    // Exactly as the init container runs it, through the entrypoint, with AWS_CA_BUNDLE set
    // in the pod's environment: the entrypoint must remove it or Litestream fails to start.
    let env = env_with(
        ls.env(),
        "AWS_CA_BUNDLE",
        "/etc/ssl/certs/ca-certificates.crt",
    );
    let db = ls.db().display().to_string();
    let config = Litestream::config_path().display().to_string();
    let out = entrypoint(
        &[
            "restore",
            "-if-db-not-exists",
            "-if-replica-exists",
            "-config",
            &config,
            &db,
        ],
        &env,
    );
    assert!(out.status.success(), "first boot restore: {}", show(&out));
    assert!(!ls.db().exists(), "no replica: no database must be created");

    // Without -if-replica-exists the same restore fails: the flag is what makes first boot work.
    let strict = run_bounded(
        &mut ls.command(&["restore", "-config", &config, &db]),
        RESTORE_LIMIT,
    );
    assert!(
        !strict.status.success(),
        "restore without a replica must fail: {}",
        show(&strict)
    );
    assert!(
        store.list("").expect("list").is_empty(),
        "nothing was written: {:?}",
        store.list("")
    );

    // The server checks signatures: a wrong secret is refused, so the tests above prove that
    // Litestream really authenticates with the credentials the pod spec gives it.
    let wrong = ls
        .clone()
        .with_env("LITESTREAM_SECRET_ACCESS_KEY", "not-the-secret");
    let err = wrong
        .try_ltx(RESTORE_LIMIT)
        .expect_err("a wrong secret must be refused");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
}

/// `PRAGMA integrity_check` of a database (read-only, while its pod may be writing).
fn integrity(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// Counted messages in the latest state of `ordinal`'s replica, restored into a scratch file.
async fn replica_rows(
    cluster: &LocalCluster,
    ordinal: u32,
    scratch: &Path,
) -> BTreeSet<(u64, u64)> {
    let replication = cluster.replication().expect("replication is on");
    std::fs::create_dir_all(scratch).expect("scratch dir");
    let out = scratch.join(format!("copy-{}.db", rand_suffix()));
    let found = replication
        .restore_copy(ordinal, &cluster.db_path(ordinal), &out)
        .await
        .expect("restore a copy of the replica");
    if found {
        activity(&out)
    } else {
        BTreeSet::new()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Waits (bounded) until `ordinal`'s replica holds every row of `want`.
async fn wait_replicated(
    cluster: &LocalCluster,
    ordinal: u32,
    want: &BTreeSet<(u64, u64)>,
    scratch: &Path,
    what: &str,
) -> BTreeSet<(u64, u64)> {
    eventually(what, || async {
        let rows = replica_rows(cluster, ordinal, scratch).await;
        want.is_subset(&rows).then_some(rows)
    })
    .await
}

fn traffic(cluster: &LocalCluster, rate: f64, seed: u64) {
    cluster
        .emulator()
        .start_traffic(TrafficRequest {
            rate,
            count: None,
            duration_ms: None,
            seed: Some(seed),
        })
        .expect("traffic starts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_lost_its_volume_restores_its_replica_and_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let store = tokio::task::block_in_place(|| start_object_store(&dir.path().join("s3")));
    assert!(store.list("").expect("list").is_empty(), "a fresh bucket");

    // First boot: no replica, so the init container restores nothing and the pod starts empty.
    let mut cluster = cluster::start_replicated(dir.path(), 1, 30, Strategy::Md5, &store).await;
    let db = cluster.db_path(0);
    assert!(activity(&db).is_empty(), "first boot starts empty");
    assert_eq!(cluster.status(0).await.expect("status").last_error, None);

    traffic(&cluster, 100.0, 61);
    eventually("messages recorded", || async {
        (activity(&db).len() >= 150).then_some(())
    })
    .await;

    // Phase 1, kill -9: the node dies (pod and sidecar, no final sync) SYNCED_AFTER after this
    // snapshot, traffic still flowing; then the volume is gone. (The sleep is the length of the
    // fault being simulated, not a wait for something to happen.)
    let committed = activity(&db);
    tokio::time::sleep(SYNCED_AFTER).await;
    cluster.kill_pod(0).await;
    let at_loss = activity(&db);
    cluster.lose_volume(0).expect("lose the volume");
    assert!(!db.exists());
    cluster.start_pod(0).await.expect("the pod starts again");
    cluster
        .wait_ready(0, patience())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    let restored = activity(&db);
    let missing: Vec<_> = committed.difference(&restored).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} rows committed {SYNCED_AFTER:?} before the loss are missing, e.g. {missing:?}",
        committed.difference(&restored).count(),
        committed.len()
    );
    assert_eq!(integrity(&db), "ok");
    // The restored pod keeps replicating and recording: new messages arrive.
    eventually("new messages after the restore", || async {
        activity(&db)
            .difference(&at_loss)
            .next()
            .is_some()
            .then_some(())
    })
    .await;

    // Phase 2, SIGTERM: the pod stops, then its sidecar's final sync; the volume is lost
    // again. Everything the pod committed comes back, up to its last write. The rows are read
    // once both processes have exited, not when the traffic looks quiet: a message sent just
    // before the generator stopped can still be recorded while the pod drains on SIGTERM.
    cluster.emulator().stop_traffic();
    assert_eq!(cluster.stop_pod(0, Duration::from_secs(25)).await, Some(0));
    let at_exit = activity(&db);
    cluster.lose_volume(0).expect("lose the volume");
    cluster.start_pod(0).await.expect("the pod starts again");
    cluster.wait_ready(0, patience()).await.expect("ready");
    let restored = activity(&db);
    let lost: Vec<_> = at_exit.difference(&restored).collect();
    let extra: Vec<_> = restored.difference(&at_exit).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "rows after a clean stop and a lost volume: {} of {} lost, e.g. {:?}; {} extra, e.g. {:?}",
        lost.len(),
        at_exit.len(),
        &lost[..lost.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
    );
    assert_eq!(integrity(&db), "ok");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_replicate_into_their_own_paths_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let store = tokio::task::block_in_place(|| start_object_store(&dir.path().join("s3")));
    let cluster = cluster::start_replicated(dir.path(), 2, 40, Strategy::Md5, &store).await;
    traffic(&cluster, 150.0, 62);
    eventually("both pods record messages", || async {
        (0..2)
            .all(|o| activity(&cluster.db_path(o)).len() >= 40)
            .then_some(())
    })
    .await;
    cluster.emulator().stop_traffic();

    let two = Topology::new(Strategy::Md5, 2).expect("2");
    let scratch = dir.path().join("scratch");
    for ordinal in 0..2 {
        // The database is re-read each round: a message sent just before the generator
        // stopped may still be on its way to the pod.
        let db = cluster.db_path(ordinal);
        let what = format!("gateway-{ordinal}'s replica to hold its rows, nothing else");
        let copy = eventually(&what, || async {
            let rows = activity(&db);
            let copy = replica_rows(&cluster, ordinal, &scratch).await;
            (copy == rows).then_some(copy)
        })
        .await;
        assert!(!copy.is_empty(), "gateway-{ordinal} recorded messages");
        assert!(
            copy.iter()
                .all(|(g, _)| owner(GuildId(*g), two) == Ordinal(ordinal)),
            "gateway-{ordinal}'s replica holds only guilds it owns"
        );
    }
    let keys = store.list("").expect("list");
    let tops: BTreeSet<String> = keys
        .iter()
        .map(|k| k.splitn(4, '/').take(3).collect::<Vec<_>>().join("/"))
        .collect();
    assert_eq!(
        tops.into_iter().collect::<Vec<_>>(),
        ["local/guildshard/gateway-0", "local/guildshard/gateway-1"],
        "the bucket holds exactly one path per ordinal, under the cluster and namespace: {keys:?}"
    );
    assert!(keys.iter().all(|k| k.ends_with(".ltx")), "{keys:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_storage_outage_neither_stops_the_bot_nor_loses_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _serial = cluster::serial().await;
    let mut store = tokio::task::block_in_place(|| start_object_store(&dir.path().join("s3")));
    let mut cluster = cluster::start_replicated(dir.path(), 1, 30, Strategy::Md5, &store).await;
    let db = cluster.db_path(0);
    let scratch = dir.path().join("scratch");
    let replication = cluster.replication().expect("replication").clone();
    traffic(&cluster, 100.0, 63);
    eventually("messages recorded", || async {
        (activity(&db).len() >= 100).then_some(())
    })
    .await;
    let before = activity(&db);
    wait_replicated(&cluster, 0, &before, &scratch, "before the outage").await;
    let replica_txid = replication
        .replica_txid(0, &db)
        .await
        .expect("list the replica");

    // The outage: SYNCED_AFTER of traffic with the store down (the fault's length).
    tokio::task::block_in_place(|| store.stop());
    let handled = cluster.status(0).await.expect("status").events_handled;
    tokio::time::sleep(SYNCED_AFTER).await;
    let status = cluster
        .status(0)
        .await
        .expect("the pod answers during the outage");
    assert!(status.ready, "the pod stays ready: {status:?}");
    assert!(
        status.events_handled > handled,
        "the pod keeps handling events"
    );
    let during = activity(&db);
    assert!(during.len() > before.len(), "and recording them");
    assert!(
        cluster.sidecar_mut(0).is_some_and(|s| s.is_running()),
        "the sidecar survives the outage"
    );
    assert!(
        replication.replica_txid(0, &db).await.is_err(),
        "the store is really down"
    );
    let lag = Replication::lag(&db, replica_txid);
    assert!(
        lag.behind >= SYNCED_AFTER / 2,
        "the replica falls behind while the store is down: {lag:?}"
    );

    tokio::task::block_in_place(|| store.restart()).expect("the store comes back");
    let after = activity(&db);
    wait_replicated(&cluster, 0, &after, &scratch, "after the store came back").await;
    eventually("the replica to catch up", || async {
        let txid = replication.replica_txid(0, &db).await.ok()?;
        (Replication::lag(&db, txid).behind < SYNCED_AFTER / 2).then_some(())
    })
    .await;
    assert!(cluster.sidecar_mut(0).is_some_and(|s| s.is_running()));
    cluster.shutdown().await;
}

/// Rows of the test table `t` in a database file (0 when it has none).
fn rows_of(db: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap_or(0)
}

/// The files beside `db` that the entrypoint set aside (`bot.db.invalid-<time>`).
fn set_aside(db: &Path) -> Vec<std::path::PathBuf> {
    let name = format!(
        "{}.invalid-",
        db.file_name().expect("name").to_string_lossy()
    );
    let mut found: Vec<_> = std::fs::read_dir(db.parent().expect("dir"))
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// `restore -if-db-not-exists` skips the restore when the database file merely exists, so a
/// volume that comes back with a 0-byte (or garbage) `bot.db` would start the pod empty while
/// its replica holds everything. The init container's entrypoint treats a file without
/// SQLite's header as absent: it moves it aside and the replica is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_without_a_sqlite_header_is_set_aside_and_the_replica_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = tokio::task::block_in_place(|| start_object_store(&dir.path().join("s3")));
    let replication = Replication::new(
        &tools().library(),
        &store,
        &dir.path().join("litestream"),
        REPLICATION_INTERVAL,
    )
    .expect("litestream files");
    let db = dir.path().join("data/gateway-0/bot.db");
    std::fs::create_dir_all(db.parent().expect("db dir")).expect("mkdir");
    {
        let conn = rusqlite::Connection::open(&db).expect("open db");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("WAL");
        conn.execute_batch(
            "CREATE TABLE t (x INTEGER);
             WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100)
             INSERT INTO t SELECT x FROM n;",
        )
        .expect("write");
    }
    let sidecar = replication
        .start_sidecar(0, &db, &dir.path().join("logs/litestream-0.log"))
        .await
        .expect("the sidecar starts");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let mut n = 0;
    eventually("the replica to hold the rows", || {
        n += 1;
        let out = scratch.join(format!("copy-{n}.db"));
        let replication = &replication;
        let db = &db;
        async move {
            let found = replication.restore_copy(0, db, &out).await.ok()?;
            (found && rows_of(&out) == 100).then_some(())
        }
    })
    .await;
    assert!(sidecar.stop().await, "the sidecar stops cleanly");

    for (what, content) in [
        ("a 0-byte file", &b""[..]),
        (
            "garbage",
            &b"not a database, just some bytes that are longer than a header"[..],
        ),
    ] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        std::fs::write(&db, content).expect("write the bad file");
        let before = set_aside(&db).len();
        replication
            .restore(0, &db)
            .await
            .unwrap_or_else(|e| panic!("{what}: the init container's restore: {e}"));
        assert_eq!(rows_of(&db), 100, "{what}: the replica is restored over it");
        let aside = set_aside(&db);
        assert_eq!(aside.len(), before + 1, "{what}: moved aside: {aside:?}");
        let kept = aside
            .iter()
            .find(|p| std::fs::read(p).is_ok_and(|b| b == content))
            .unwrap_or_else(|| panic!("{what}: its bytes are kept aside: {aside:?}"));
        assert!(kept.is_file());
    }

    // A real database is kept as it is: nothing is set aside, nothing restored over it.
    let before = set_aside(&db).len();
    {
        let conn = rusqlite::Connection::open(&db).expect("open db");
        conn.execute("DELETE FROM t WHERE x > 10", [])
            .expect("a local change the replica does not have");
    }
    replication.restore(0, &db).await.expect("restore");
    assert_eq!(rows_of(&db), 10, "an existing database is kept");
    assert_eq!(set_aside(&db).len(), before);
}
