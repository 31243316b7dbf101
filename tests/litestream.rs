//! Litestream with the real binary and a real S3 server (SeaweedFS) on 127.0.0.1: the
//! entrypoint's refusals, restore after a lost volume, first boot, per-ordinal paths, and an
//! object-storage outage. The database is written with the app's pragmas (DESIGN §4).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support::objstore::{run_bounded, show, tools, Litestream, ObjectStore};

const RESTORE_LIMIT: Duration = Duration::from_secs(60);

/// Opens (creating) a database the way the app does: WAL, synchronous=NORMAL, busy_timeout,
/// foreign keys; and no checkpoint or VACUUM of its own.
fn open_app_db(path: &Path) -> Connection {
    std::fs::create_dir_all(path.parent().expect("db has a parent")).expect("db dir");
    let conn = Connection::open(path).expect("open db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("synchronous");
    conn.pragma_update(None, "busy_timeout", 5000)
        .expect("busy_timeout");
    conn.pragma_update(None, "foreign_keys", true)
        .expect("foreign_keys");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS messages (
             guild_id INTEGER NOT NULL,
             message_id INTEGER PRIMARY KEY,
             body TEXT NOT NULL
         );",
    )
    .expect("schema");
    conn
}

/// Inserts `ids` in one transaction (as the app's group commit does).
fn insert(conn: &mut Connection, guild: i64, ids: std::ops::Range<i64>) {
    let tx = conn.transaction().expect("begin");
    for id in ids {
        tx.execute(
            "INSERT INTO messages (guild_id, message_id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (message_id) DO NOTHING",
            (guild, id, format!("message {id} in guild {guild}")),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// (row count, sum of ids) of a database file.
fn fingerprint(path: &Path) -> (i64, i64) {
    let conn = Connection::open(path).expect("open restored db");
    conn.query_row(
        "SELECT count(*), coalesce(sum(message_id), 0) FROM messages",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("fingerprint")
}

fn integrity(path: &Path) -> String {
    let conn = Connection::open(path).expect("open restored db");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// Waits (bounded) until a restore of the replica, taken into a scratch file, shows `want`.
fn wait_until_replicated(ls: &Litestream, scratch: &Path, want: (i64, i64), what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out = scratch.join(format!("peek-{attempt}.db"));
        let res = ls.restore_to(&out, RESTORE_LIMIT);
        if res.status.success() && fingerprint(&out) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up within 60 s ({what}); last restore: {}",
            show(&res)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
fn entrypoint_refuses_unset_ordinal_bucket_or_endpoint() {
    // No server needed: the entrypoint must stop before Litestream runs at all. `version`
    // would print Litestream's version on stdout if it were reached.
    let dir = tempfile::tempdir().expect("tempdir");
    let good: Vec<(String, String)> = [
        ("POD_ORDINAL", "2"),
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
    let store = ObjectStore::start();
    let dir = tempfile::tempdir().expect("tempdir");
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
        store.list("").is_empty(),
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

#[test]
fn a_deleted_database_is_restored_from_its_replica() {
    let store = ObjectStore::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/bot.db");
    let ls = Litestream::new(&store, &db, 0);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    // The init container on first boot: nothing to restore.
    assert!(ls.restore(RESTORE_LIMIT).status.success());
    let mut conn = open_app_db(&db);
    insert(&mut conn, 1, 1..200);

    // Phase 1: the sidecar runs and has synced, the app writes more, and the pod stops
    // (SIGTERM): the shutdown sync must carry even the transaction committed just before.
    // (Litestream 0.5.17 does not sync at shutdown before its first sync, so wait for that.)
    let mut sidecar = ls.replicate();
    wait_until_replicated(&ls, &scratch, fingerprint(&db), "the first sync");
    for batch in 0..5 {
        insert(&mut conn, 1, 1000 + batch * 100..1000 + batch * 100 + 100);
    }
    insert(&mut conn, 2, 5000..5001); // committed right before SIGTERM
    let want = fingerprint(&db);
    drop(conn);
    sidecar.stop();
    assert!(
        sidecar.log().contains("litestream shut down"),
        "{}",
        sidecar.log()
    );

    ls.wipe_db();
    let out = ls.restore(RESTORE_LIMIT);
    assert!(out.status.success(), "restore: {}", show(&out));
    assert_eq!(fingerprint(&db), want, "rows after restore");
    assert_eq!(integrity(&db), "ok");

    // Phase 2: the restored database keeps replicating; then the pod dies without a final
    // sync (kill -9) and its volume is lost: every row the replica had taken is back.
    let mut conn = open_app_db(&db);
    let mut sidecar = ls.replicate();
    insert(&mut conn, 3, 10_000..10_300);
    let want = fingerprint(&db);
    wait_until_replicated(&ls, &scratch, want, "after the restore");
    sidecar.kill9();
    drop(conn);
    ls.wipe_db();
    let out = ls.restore(RESTORE_LIMIT);
    assert!(out.status.success(), "restore: {}", show(&out));
    assert_eq!(fingerprint(&db), want, "rows after the second restore");
    assert_eq!(integrity(&db), "ok");

    // The restored database is the app's again: WAL mode, writable.
    let mut conn = open_app_db(&db);
    insert(&mut conn, 3, 20_000..20_001);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");

    // And with the database present, -if-db-not-exists leaves it alone.
    drop(conn);
    let before = fingerprint(&db);
    assert!(ls.restore(RESTORE_LIMIT).status.success());
    assert_eq!(fingerprint(&db), before);
}

#[test]
fn two_ordinals_replicate_to_their_own_paths() {
    let store = ObjectStore::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let pods: Vec<Litestream> = (0..2)
        .map(|k| Litestream::new(&store, &dir.path().join(format!("pod-{k}/bot.db")), k))
        .collect();
    for (k, ls) in pods.iter().enumerate() {
        let mut conn = open_app_db(ls.db());
        let base = 100_000 * (k as i64 + 1);
        insert(&mut conn, k as i64, base..base + 10 * (k as i64 + 1));
        drop(conn);
        ls.replicate_once();
    }

    let keys = store.list("");
    let tops: std::collections::BTreeSet<&str> =
        keys.iter().filter_map(|k| k.split('/').next()).collect();
    assert_eq!(
        tops.into_iter().collect::<Vec<_>>(),
        ["gateway-0", "gateway-1"],
        "the bucket holds exactly one prefix per ordinal: {keys:?}"
    );
    for key in &keys {
        assert!(
            key.ends_with(".ltx"),
            "only LTX files in the replica paths: {key}"
        );
    }

    // Each ordinal restores its own data, not the other's.
    for (k, ls) in pods.iter().enumerate() {
        let want = fingerprint(ls.db());
        assert!(
            !ls.try_ltx(RESTORE_LIMIT).expect("ltx").is_empty(),
            "gateway-{k} has LTX files"
        );
        ls.wipe_db();
        assert!(ls.restore(RESTORE_LIMIT).status.success());
        assert_eq!(
            fingerprint(ls.db()),
            want,
            "gateway-{k} restored its own rows"
        );
    }
    assert_ne!(fingerprint(pods[0].db()), fingerprint(pods[1].db()));
}

#[test]
fn replication_catches_up_after_an_object_storage_outage() {
    let mut store = ObjectStore::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/bot.db");
    let ls = Litestream::new(&store, &db, 0);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    let mut conn = open_app_db(&db);
    insert(&mut conn, 1, 1..100);
    let mut sidecar = ls.replicate();
    wait_until_replicated(&ls, &scratch, fingerprint(&db), "before the outage");

    store.stop();
    // The outage lasts while the app writes 10 batches 200 ms apart: twenty monitor/sync
    // intervals, so the sidecar tries (and fails) to upload several times. This is the length
    // of the fault being simulated, not a wait for something to happen. (Litestream 0.5.17's
    // S3 client retries quietly, so the log has nothing to poll for.)
    for batch in 0..10 {
        insert(&mut conn, 2, 1000 + batch * 50..1000 + batch * 50 + 50);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            sidecar.is_running(),
            "the sidecar must survive the outage:\n{}",
            sidecar.log()
        );
    }
    let want = fingerprint(&db);

    store.restart();
    insert(&mut conn, 3, 5000..5010);
    let want_after = fingerprint(&db);
    assert_ne!(want, want_after);
    wait_until_replicated(&ls, &scratch, want_after, "after object storage came back");
    assert!(sidecar.is_running(), "{}", sidecar.log());
    drop(conn);
    sidecar.stop();

    ls.wipe_db();
    assert!(ls.restore(RESTORE_LIMIT).status.success());
    assert_eq!(fingerprint(&db), want_after);
    assert_eq!(integrity(&db), "ok");
}
