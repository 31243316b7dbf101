//! The per-pod store: migrations, order-independent idempotent writes, export/import, reads,
//! the outbox, durability and group commit.
// Tests panic on any unexpected error; `unwrap` keeps them short.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use guildshard::ownership::GuildId;
use guildshard::store::{utc_day, Error, GuildExport, ModActionKind, OutboxMessage, Store, Write};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::json;

const EPOCH: u64 = 1_420_070_400_000;
/// 2024-03-01T00:00:00Z.
const T0: u64 = 1_709_251_200_000;
const DAY: u64 = 86_400_000;
const G: GuildId = GuildId(81_384_788_765_712_384);
const G2: GuildId = GuildId(41_771_983_423_143_937);
const CH: u64 = 1_100;
const CH2: u64 = 1_200;

/// A snowflake minted at `ms` (Unix), with `seq` in the low bits to keep ids unique.
fn sf(ms: u64, seq: u64) -> u64 {
    ((ms - EPOCH) << 22) | seq
}

fn db(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name).join("bot.db")
}

fn created(g: GuildId, ch: u64, id: u64, author: u64, bot: bool, text: &str) -> Write {
    Write::MessageCreated {
        guild_id: g,
        channel_id: ch,
        message_id: id,
        author_id: author,
        author_is_bot: bot,
        content: text.into(),
        created_at_ms: (id >> 22) + EPOCH,
        outbox: vec![],
    }
}

fn outbox(key: &str, g: Option<GuildId>, ch: u64) -> Vec<OutboxMessage> {
    vec![OutboxMessage {
        key: key.into(),
        guild_id: g,
        channel_id: ch,
        body: json!({"content": key}),
    }]
}

/// Message ids of the scenario.
struct Ids {
    m: Vec<u64>,
    old: u64,
}

fn ids() -> Ids {
    Ids {
        m: (0..12).map(|i| sf(T0 + i * DAY / 3, i)).collect(),
        old: sf(T0 - 30 * DAY, 99),
    }
}

/// A realistic mix of events for two guilds, including the awkward orders (edit before create,
/// delete before create, leave before join, duplicate departures).
fn scenario() -> Vec<Write> {
    let Ids { m, old } = ids();
    let (u1, u2, u3, u4, bot) = (501, 502, 503, 504, 599);
    let mut w = vec![
        created(G, CH, m[0], u1, false, "hello"),
        created(G, CH, m[1], u1, false, "first draft"),
        Write::MessageUpdated {
            guild_id: G,
            channel_id: CH,
            message_id: m[1],
            content: "second draft".into(),
            edited_at_ms: T0 + DAY,
            outbox: vec![],
        },
        Write::MessageUpdated {
            guild_id: G,
            channel_id: CH,
            message_id: m[1],
            content: "final text".into(),
            edited_at_ms: T0 + DAY + 5,
            outbox: vec![],
        },
        created(G, CH2, m[2], u2, false, "to be deleted"),
        Write::MessageDeleted {
            guild_id: G,
            channel_id: CH2,
            message_id: m[2],
            deleted_at_ms: T0 + DAY,
            outbox: outbox("del:m2", Some(G), 9_002),
        },
        // Never seen: a tombstone.
        Write::MessageDeleted {
            guild_id: G,
            channel_id: CH,
            message_id: m[3],
            deleted_at_ms: T0 + DAY,
            outbox: vec![],
        },
        created(G, CH, m[4], u2, false, "bulk one"),
        created(G, CH, m[5], u3, false, "bulk two ✓"),
        Write::MessagesBulkDeleted {
            guild_id: G,
            channel_id: CH,
            message_ids: vec![m[4], m[5], m[6]],
            deleted_at_ms: T0 + 2 * DAY,
            outbox: outbox("bulk:1", Some(G), 9_002),
        },
        created(G, CH, m[7], bot, true, "beep"),
        // An edit of a message whose create comes later (or never in some orders).
        Write::MessageUpdated {
            guild_id: G,
            channel_id: CH2,
            message_id: m[8],
            content: "edited".into(),
            edited_at_ms: T0 + 3 * DAY,
            outbox: vec![],
        },
        created(G, CH2, m[8], u3, false, "original"),
        created(G, CH2, m[9], u1, false, "reported words"),
        created(G2, CH, m[10], u1, false, "other guild"),
        created(G, CH, old, u2, false, "ancient"),
        Write::PurgeMessageContent {
            older_than_ms: T0 - 7 * DAY,
        },
        Write::MemberJoined {
            guild_id: G,
            user_id: u1,
            joined_at_ms: T0,
            outbox: vec![],
        },
        Write::MemberJoined {
            guild_id: G,
            user_id: u2,
            joined_at_ms: T0,
            outbox: vec![],
        },
        Write::MemberLeft {
            guild_id: G,
            user_id: u2,
            left_at_ms: T0 + DAY + 10,
            outbox: vec![],
        },
        // The same departure seen by two pods, stamped a few ms apart: one leave.
        Write::MemberLeft {
            guild_id: G,
            user_id: u2,
            left_at_ms: T0 + DAY + 14,
            outbox: vec![],
        },
        // Rejoins and leaves again.
        Write::MemberJoined {
            guild_id: G,
            user_id: u2,
            joined_at_ms: T0 + 2 * DAY,
            outbox: vec![],
        },
        Write::MemberLeft {
            guild_id: G,
            user_id: u2,
            left_at_ms: T0 + 2 * DAY + 50,
            outbox: vec![],
        },
        // Joined before the bot saw anything: the leave counts alone.
        Write::MemberLeft {
            guild_id: G,
            user_id: u4,
            left_at_ms: T0 + 10,
            outbox: vec![],
        },
        Write::MemberJoined {
            guild_id: G2,
            user_id: u3,
            joined_at_ms: T0,
            outbox: vec![],
        },
        Write::ModAction {
            guild_id: G,
            entry_id: sf(T0 + DAY, 1),
            kind: ModActionKind::Timeout {
                until_ms: T0 + DAY + 600_000,
            },
            target_id: u3,
            executor_id: Some(u1),
            reason: Some("spam".into()),
            at_ms: T0 + DAY,
            outbox: outbox("mod:1", Some(G), 9_001),
        },
        Write::ModAction {
            guild_id: G,
            entry_id: sf(T0 + 2 * DAY, 2),
            kind: ModActionKind::Ban,
            target_id: u3,
            executor_id: None,
            reason: None,
            at_ms: T0 + 2 * DAY,
            outbox: vec![],
        },
        // The same ban with its audit entry's executor and reason.
        Write::ModAction {
            guild_id: G,
            entry_id: sf(T0 + 2 * DAY, 2),
            kind: ModActionKind::Ban,
            target_id: u3,
            executor_id: Some(u1),
            reason: Some("repeat spam".into()),
            at_ms: T0 + 2 * DAY,
            outbox: outbox("mod:2", Some(G), 9_001),
        },
        Write::ModAction {
            guild_id: G,
            entry_id: sf(T0 + 3 * DAY, 3),
            kind: ModActionKind::Unban,
            target_id: u3,
            executor_id: Some(u1),
            reason: None,
            at_ms: T0 + 3 * DAY,
            outbox: vec![],
        },
        report(sf(T0 + DAY, 11), u2, m[9], u1),
        report(sf(T0 + DAY, 12), u3, m[9], u1),
        // u2 reports the same message again: still one report.
        report(sf(T0 + DAY, 13), u2, m[9], u1),
        report(sf(T0 + DAY, 14), u2, m[8], u3),
        Write::Setup {
            guild_id: G,
            interaction_id: sf(T0, 20),
            mod_log_channel: Some(9_001),
            deletion_log_channel: Some(9_002),
            outbox: vec![],
        },
        Write::Setup {
            guild_id: G,
            interaction_id: sf(T0 + DAY, 21),
            mod_log_channel: Some(9_003),
            deletion_log_channel: None,
            outbox: vec![],
        },
        Write::Setup {
            guild_id: G2,
            interaction_id: sf(T0, 22),
            mod_log_channel: None,
            deletion_log_channel: Some(9_100),
            outbox: vec![],
        },
        Write::DmHelp {
            user_id: u4,
            channel_id: 7_000,
            day: utc_day(T0),
            outbox: outbox("dm:504:day", None, 7_000),
        },
        Write::SetMeta {
            key: "topology".into(),
            value: "md5/3".into(),
        },
    ];
    // An old message deleted: ignored by the cache (past the purge cutoff), still counted.
    w.push(Write::MessageDeleted {
        guild_id: G,
        channel_id: CH,
        message_id: old,
        deleted_at_ms: T0,
        outbox: vec![],
    });
    w
}

fn report(interaction: u64, reporter: u64, message: u64, author: u64) -> Write {
    Write::Report {
        guild_id: G,
        interaction_id: interaction,
        reporter_id: reporter,
        channel_id: CH2,
        message_id: message,
        reported_user_id: author,
        content_excerpt: "reported words".into(),
        at_ms: (interaction >> 22) + EPOCH,
        outbox: outbox(&format!("report:{message}:{reporter}"), Some(G), 9_001),
    }
}

/// Every row of every table (but the migration log), sorted: the state to compare.
fn dump(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {t}")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let vals: Vec<Value> = (0..n).map(|i| r.get(i)).collect::<Result<_, _>>()?;
                Ok(format!("{t}: {vals:?}"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.extend(rows);
    }
    out
}

fn sorted(mut export: GuildExport) -> GuildExport {
    export.outbox.sort();
    export
}

async fn apply_all(store: &Store, writes: Vec<Write>) {
    for w in writes {
        let kind = w.kind();
        store
            .apply(w)
            .await
            .unwrap_or_else(|e| panic!("{kind} failed: {e}"));
    }
}

async fn apply_concurrently(store: &Store, writes: Vec<Write>) {
    let results = futures::future::join_all(writes.into_iter().map(|w| store.apply(w))).await;
    for r in results {
        r.unwrap();
    }
}

/// Applies the scenario in order to a fresh DB, closes it, and returns its path.
async fn reference(dir: &tempfile::TempDir) -> PathBuf {
    let path = db(dir, "reference");
    let store = Store::open(&path).await.unwrap();
    apply_all(&store, scenario()).await;
    store.close().await.unwrap();
    path
}

#[tokio::test]
async fn migrations_apply_once_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir, "pod-0");
    let store = Store::open(&path).await.unwrap();
    store.close().await.unwrap();
    let store = Store::open(&path).await.unwrap();
    store.close().await.unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        let (applied, version): (i64, i64) = conn
            .query_row(
                "SELECT count(*), (SELECT user_version FROM pragma_user_version) FROM schema_migrations",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let supported = guildshard::store::migrate::supported_version();
        assert_eq!((applied, version), (supported, supported));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", supported + 1)
            .unwrap();
    }
    match Store::open(&path).await {
        Err(Error::SchemaTooNew { found, supported }) => assert_eq!(found, supported + 1),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn any_order_with_duplicates_gives_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let expected = dump(&reference(&dir).await);
    for seed in 0..4u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut writes = scenario();
        let dups: Vec<Write> = writes
            .iter()
            .filter(|_| rng.gen_bool(0.4))
            .cloned()
            .collect();
        writes.extend(dups);
        writes.shuffle(&mut rng);
        let path = db(&dir, &format!("perm-{seed}"));
        let store = Store::open(&path).await.unwrap();
        if seed % 2 == 0 {
            apply_all(&store, writes).await;
        } else {
            apply_concurrently(&store, writes).await;
        }
        store.close().await.unwrap();
        let got = dump(&path);
        assert_eq!(got, expected, "seed {seed} differs");
    }
}

#[tokio::test]
async fn reads_return_the_scenario_figures() {
    let dir = tempfile::tempdir().unwrap();
    let path = reference(&dir).await;
    let store = Store::open(&path).await.unwrap();
    let Ids { m, old } = ids();

    // u1: m0, m1, m9 (m10 is the other guild); the old message counts too.
    let s = store.user_stats(G, 501, 0).await.unwrap();
    assert_eq!((s.messages, s.channels), (3, 2));
    assert_eq!(s.first_message_ms, Some((m[0] >> 22) + EPOCH));
    assert_eq!(s.last_message_ms, Some((m[9] >> 22) + EPOCH));
    assert_eq!(store.user_stats(G, 502, 0).await.unwrap().messages, 3);
    assert_eq!(store.user_stats(G, 502, T0).await.unwrap().messages, 2);
    assert_eq!(
        store.user_stats(G, 599, 0).await.unwrap().messages,
        0,
        "bots are not counted"
    );

    assert_eq!(
        store.leaderboard(G, 0, 10).await.unwrap(),
        vec![(501, 3), (502, 3), (503, 2)]
    );
    assert_eq!(
        store.leaderboard(G, T0, 2).await.unwrap(),
        vec![(501, 3), (502, 2)]
    );

    let mut ids_g = vec![m[0], m[1], m[2], m[4], m[5], m[8], m[9], old];
    ids_g.sort();
    assert_eq!(store.message_ids(G).await.unwrap(), ids_g);

    let days = store.server_stats(G, T0).await.unwrap();
    let by_day: Vec<(String, u64, u64, u64)> = days
        .iter()
        .map(|d| (d.date.clone(), d.messages, d.joined, d.left))
        .collect();
    assert_eq!(
        by_day,
        vec![
            ("2024-03-01".to_string(), 3, 2, 1),
            ("2024-03-02".to_string(), 2, 0, 1),
            ("2024-03-03".to_string(), 1, 1, 1),
            ("2024-03-04".to_string(), 1, 0, 0),
        ]
    );
    assert_eq!(days[0].day, utc_day(T0));

    let log = store.modlog(G, 501, 10).await.unwrap();
    assert_eq!(log.report_count, 2, "two reporters of m9");
    assert_eq!(log.reports.len(), 2);
    let by_u2 = log.reports.iter().find(|r| r.reporter_id == 502).unwrap();
    assert_eq!(
        by_u2.interaction_id,
        sf(T0 + DAY, 11),
        "the earliest report is kept"
    );
    let log = store.modlog(G, 503, 10).await.unwrap();
    assert_eq!(log.report_count, 1);
    let kinds: Vec<ModActionKind> = log.actions.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ModActionKind::Unban,
            ModActionKind::Ban,
            ModActionKind::Timeout {
                until_ms: T0 + DAY + 600_000
            }
        ]
    );
    assert_eq!(log.actions[1].reason.as_deref(), Some("repeat spam"));

    let settings = store.settings(G).await.unwrap();
    assert_eq!(
        settings.mod_log_channel,
        Some(9_003),
        "the later /setup wins"
    );
    assert_eq!(
        settings.deletion_log_channel,
        Some(9_002),
        "an omitted channel stays"
    );
    assert_eq!(store.settings(G2).await.unwrap().mod_log_channel, None);

    let c = store.cached_message(G, m[1]).await.unwrap().unwrap();
    assert_eq!(c.content.as_deref(), Some("final text"));
    assert_eq!(c.author_id, Some(501));
    let c = store.cached_message(G, m[2]).await.unwrap().unwrap();
    assert!(c.deleted() && c.content.is_none());
    let c = store.cached_message(G, m[3]).await.unwrap().unwrap();
    assert!(c.deleted() && c.author_id.is_none(), "tombstone");
    let c = store.cached_message(G, m[8]).await.unwrap().unwrap();
    assert_eq!(
        c.content.as_deref(),
        Some("edited"),
        "the edit beats the later create"
    );
    assert!(
        store.cached_message(G, old).await.unwrap().is_none(),
        "purged"
    );
    let bulk = store
        .cached_messages(G, vec![m[6], m[4], m[5]])
        .await
        .unwrap();
    assert_eq!(bulk.len(), 3);
    assert!(bulk.iter().all(|c| c.deleted() && c.content.is_none()));

    assert_eq!(store.guild_ids().await.unwrap(), vec![G2, G]);
    assert_eq!(
        store.meta("topology").await.unwrap().as_deref(),
        Some("md5/3")
    );
    let counts = store.row_counts(G).await.unwrap();
    assert_eq!(counts["activity"], 8);
    assert_eq!(counts["reports"], 3);
    assert_eq!(counts["guild_settings"], 1);
    assert!(store.db_size_bytes().await.unwrap() > 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn export_then_import_reproduces_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let path = reference(&dir).await;
    let a = Store::open(&path).await.unwrap();
    let export: GuildExport = a.export_guild(G).await.unwrap();
    assert!(export.rows() > 20);
    // The export crosses processes as JSON.
    let export: GuildExport =
        serde_json::from_str(&serde_json::to_string(&export).unwrap()).unwrap();

    let b = Store::open(db(&dir, "b")).await.unwrap();
    assert!(
        b.apply(Write::ImportGuild(export.clone()))
            .await
            .unwrap()
            .changed
    );
    assert_eq!(b.export_guild(G).await.unwrap(), export);
    assert_eq!(
        b.row_counts(G).await.unwrap(),
        a.row_counts(G).await.unwrap()
    );
    assert!(
        !b.apply(Write::ImportGuild(export.clone()))
            .await
            .unwrap()
            .changed
    );
    assert_eq!(b.export_guild(G).await.unwrap(), export);
    assert_eq!(
        b.guild_ids().await.unwrap(),
        vec![G],
        "only the imported guild"
    );

    // Overlap: two pods each saw part of the guild's events (some on both).
    let (c, d) = (
        Store::open(db(&dir, "c")).await.unwrap(),
        Store::open(db(&dir, "d")).await.unwrap(),
    );
    let writes = scenario();
    let n = writes.len();
    apply_all(&c, writes[..2 * n / 3].to_vec()).await;
    apply_all(&d, writes[n / 3..].to_vec()).await;
    let from_c = c.export_guild(G).await.unwrap();
    let from_d = d.export_guild(G).await.unwrap();
    c.apply(Write::ImportGuild(from_d)).await.unwrap();
    d.apply(Write::ImportGuild(from_c)).await.unwrap();
    // Outbox rows keep each pod's enqueue order; the rows themselves must be equal.
    assert_eq!(
        sorted(c.export_guild(G).await.unwrap()),
        sorted(export.clone())
    );
    assert_eq!(
        sorted(d.export_guild(G).await.unwrap()),
        sorted(export.clone())
    );

    // The old owner then deletes the guild: every table, other guilds untouched.
    assert!(a.apply(Write::DeleteGuild(G)).await.unwrap().changed);
    assert!(a.row_counts(G).await.unwrap().values().all(|n| *n == 0));
    assert_eq!(a.guild_ids().await.unwrap(), vec![G2]);
    assert_eq!(a.message_ids(G2).await.unwrap().len(), 1);

    // A foreign export format is refused, and the failure touches nothing else in its batch.
    let mut bad = export.clone();
    bad.format_version = 99;
    assert!(matches!(
        b.apply(Write::ImportGuild(bad)).await,
        Err(Error::ExportFormat { found: 99, .. })
    ));
    for s in [a, b, c, d] {
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn outbox_is_enqueued_once_and_marked_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir, "outbox")).await.unwrap();
    let Ids { m, .. } = ids();
    let first = store
        .apply(report(sf(T0, 1), 502, m[9], 501))
        .await
        .unwrap();
    assert_eq!((first.outbox_enqueued, first.report_count), (1, Some(1)));
    let replay = store
        .apply(report(sf(T0, 1), 502, m[9], 501))
        .await
        .unwrap();
    assert_eq!((replay.outbox_enqueued, replay.changed), (0, false));
    let pending = store.pending_outbox(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].guild_id, Some(G));
    assert_eq!(pending[0].body, json!({"content": pending[0].key}));

    let dm = |day| Write::DmHelp {
        user_id: 7,
        channel_id: 70,
        day,
        outbox: outbox(&format!("dm:7:{day}"), None, 70),
    };
    assert!(store.apply(dm(19_800)).await.unwrap().changed);
    assert!(!store.apply(dm(19_800)).await.unwrap().changed);
    assert!(store.apply(dm(19_801)).await.unwrap().changed);
    let keys: Vec<String> = store
        .pending_outbox(10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        keys[1..],
        ["dm:7:19800".to_string(), "dm:7:19801".to_string()],
        "oldest first"
    );

    let key = keys[0].clone();
    let sent = Write::OutboxSent {
        key: key.clone(),
        message_id: 42,
    };
    assert!(store.apply(sent.clone()).await.unwrap().changed);
    assert!(!store.apply(sent).await.unwrap().changed);
    store
        .apply(report(sf(T0, 1), 502, m[9], 501))
        .await
        .unwrap();
    assert_eq!(
        store.pending_outbox(10).await.unwrap().len(),
        2,
        "a replay does not re-enqueue"
    );
    // The sent flag travels with the guild.
    let export = store.export_guild(G).await.unwrap();
    assert_eq!(export.outbox.len(), 1);
    assert_eq!(export.outbox[0].sent_message_id, Some(42));
    store.close().await.unwrap();
}

#[tokio::test]
async fn acknowledged_writes_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir, "durable");
    let store = Store::open(&path).await.unwrap();
    let id = sf(T0, 5);
    store
        .apply(created(G, CH, id, 1, false, "kept"))
        .await
        .unwrap();
    // Seen by an unrelated connection before close: the write was committed.
    let conn = Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM activity WHERE message_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
    store.close().await.unwrap();
    assert!(matches!(
        store
            .apply(created(G, CH, sf(T0, 6), 1, false, "late"))
            .await,
        Err(Error::Closed)
    ));
    assert!(matches!(store.message_ids(G).await, Err(Error::Closed)));
    let reopened = Store::open(&path).await.unwrap();
    assert_eq!(reopened.message_ids(G).await.unwrap(), vec![id]);
    reopened.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir, "group")).await.unwrap();
    let n = 300u64;
    let writes: Vec<Write> = (0..n)
        .map(|i| created(G, CH, sf(T0, i), 1 + i % 7, false, "x"))
        .collect();
    apply_concurrently(&store, writes).await;
    let stats = store.writer_stats();
    assert_eq!(stats.writes, n);
    assert!(
        stats.batches() < n,
        "{n} writes took {} commits",
        stats.batches()
    );
    assert!(stats.max_batch > 1);
    assert_eq!(
        stats.batch_size_buckets.last().map(|b| b.1),
        Some(stats.batches())
    );
    assert_eq!(store.message_ids(G).await.unwrap().len() as u64, n);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_write_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir, "alone")).await.unwrap();
    let reserved = Write::SetMeta {
        key: "store.message_cache_purged_before_ms".into(),
        value: "1".into(),
    };
    let results = futures::future::join_all([
        store.apply(created(G, CH, sf(T0, 1), 1, false, "a")),
        store.apply(reserved),
        store.apply(created(G, CH, sf(T0, 2), 1, false, "b")),
    ])
    .await;
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(Error::ReservedMetaKey(_))));
    assert_eq!(store.message_ids(G).await.unwrap().len(), 2);
    assert_eq!(store.writer_stats().failed_writes, 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn close_flushes_what_was_queued_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir, "flush");
    let store = Store::open(&path).await.unwrap();
    let n = 100u64;
    let writes = (0..n).map(|i| store.apply(created(G, CH, sf(T0, i), 1, false, "q")));
    // join! polls in order: every write is queued (the queue holds them all) before close is.
    let (results, closed) = tokio::join!(futures::future::join_all(writes), store.close());
    closed.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let reopened = Store::open(&path).await.unwrap();
    assert_eq!(reopened.message_ids(G).await.unwrap().len() as u64, n);
    reopened.close().await.unwrap();
}

#[tokio::test]
async fn a_delete_after_export_deletes_only_what_was_exported() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir, "versioned");
    let store = Store::open(&path).await.unwrap();
    let m = ids().m;
    apply_all(&store, vec![created(G, CH, m[0], 501, false, "a")]).await;
    let mut posted = created(G2, CH2, m[1], 502, false, "b");
    if let Write::MessageCreated { outbox: o, .. } = &mut posted {
        *o = outbox("post:g2", Some(G2), CH2);
    }
    apply_all(&store, vec![posted]).await;
    assert_eq!(store.guild_ids().await.unwrap(), {
        let mut both = vec![G, G2];
        both.sort();
        both
    });

    // A write after the export: the delete refuses and changes nothing.
    let (version, export) = store.export_guild_versioned(G).await.unwrap();
    let version = version.expect("G is held");
    assert_eq!(export.activity.len(), 1);
    apply_all(&store, vec![created(G, CH, m[2], 501, false, "c")]).await;
    let refused = store
        .apply(Write::DeleteGuildIfUnchanged {
            guild_id: G,
            version,
        })
        .await;
    assert!(
        matches!(refused, Err(Error::GuildChanged(g)) if g == G),
        "{refused:?}"
    );
    assert_eq!(store.message_ids(G).await.unwrap(), vec![m[0], m[2]]);

    // A replay changes no row, so it does not invalidate a fresh export.
    let (version, _) = store.export_guild_versioned(G).await.unwrap();
    apply_all(&store, vec![created(G, CH, m[2], 501, false, "c")]).await;
    store
        .apply(Write::DeleteGuildIfUnchanged {
            guild_id: G,
            version: version.expect("held"),
        })
        .await
        .unwrap();
    assert!(store.message_ids(G).await.unwrap().is_empty());
    assert_eq!(store.guild_ids().await.unwrap(), vec![G2]);

    // Marking a post sent changes the guild's outbox row: an export from before it is stale.
    let (version, export) = store.export_guild_versioned(G2).await.unwrap();
    assert_eq!(export.outbox.len(), 1);
    store
        .apply(Write::OutboxSent {
            key: "post:g2".into(),
            message_id: 9,
        })
        .await
        .unwrap();
    let refused = store
        .apply(Write::DeleteGuildIfUnchanged {
            guild_id: G2,
            version: version.expect("held"),
        })
        .await;
    assert!(
        matches!(refused, Err(Error::GuildChanged(_))),
        "{refused:?}"
    );

    // A version from before a restart never matches after it.
    let (version, _) = store.export_guild_versioned(G2).await.unwrap();
    store.close().await.unwrap();
    let store = Store::open(&path).await.unwrap();
    assert_eq!(
        store.guild_ids().await.unwrap(),
        vec![G2],
        "held guilds read back"
    );
    let refused = store
        .apply(Write::DeleteGuildIfUnchanged {
            guild_id: G2,
            version: version.expect("held"),
        })
        .await;
    assert!(
        matches!(refused, Err(Error::GuildChanged(_))),
        "{refused:?}"
    );
    assert_eq!(store.message_ids(G2).await.unwrap(), vec![m[1]]);
    store.close().await.unwrap();
}

/// The pod runs `synchronous=NORMAL`, where a commit is not on disk until the next checkpoint.
/// A guild import is acknowledged to the handoff, which then deletes the previous owner's copy,
/// so it must be fsynced at its commit; ordinary writes keep the cheaper level.
#[tokio::test]
async fn a_guild_import_is_fsynced_at_commit_and_other_writes_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = reference(&dir).await;
    let a = Store::open(&path).await.unwrap();
    let export = a.export_guild(G).await.unwrap();
    a.close().await.unwrap();

    let b = Store::open(db(&dir, "b")).await.unwrap();
    let Ids { m, .. } = ids();
    let before = b
        .apply(created(G2, CH, m[0], 5, false, "hi"))
        .await
        .unwrap();
    assert!(!before.fsynced, "an event write commits at NORMAL");
    let imported = b.apply(Write::ImportGuild(export.clone())).await.unwrap();
    assert!(imported.changed);
    assert!(imported.fsynced, "the import commits at FULL");
    // A repeated import (nothing changes) is still reported durable: the handoff deletes
    // after it just the same.
    assert!(b.apply(Write::ImportGuild(export)).await.unwrap().fsynced);
    let after = b
        .apply(created(G2, CH, m[1], 5, false, "hi"))
        .await
        .unwrap();
    assert!(
        !after.fsynced,
        "the connection is back at NORMAL after the import"
    );
    b.close().await.unwrap();

    let conn = Connection::open(db(&dir, "b")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM activity WHERE guild_id = ?1",
            [G.0],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n > 0, "the import is in the file");
}

fn outbox_only_export(g: GuildId, rows: &[(&str, Option<u64>)]) -> GuildExport {
    GuildExport {
        format_version: guildshard::store::EXPORT_FORMAT_VERSION,
        guild_id: g,
        activity: vec![],
        message_cache: vec![],
        member_joins: vec![],
        member_leaves: vec![],
        mod_actions: vec![],
        reports: vec![],
        settings: None,
        outbox: rows
            .iter()
            .map(|(key, sent)| guildshard::store::OutboxRow {
                key: (*key).into(),
                channel_id: CH,
                body: json!({"content": key}).to_string(),
                sent_message_id: *sent,
            })
            .collect(),
    }
}

/// Sent outbox rows and DM-help records are kept only for the retention: a prune deletes the
/// old ones, keeps unsent rows whatever their age and everything recent, and is idempotent.
#[tokio::test]
async fn retention_prunes_old_sent_outbox_rows_and_dm_help_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db(&dir, "retention")).await.unwrap();
    let now = T0 + 100 * DAY;
    let cutoff = now - 30 * DAY;
    let old = sf(now - 40 * DAY, 1);
    let recent = sf(now - DAY, 2);
    // G has an old sent post, a recent sent post and an old post never sent; G2 has only an
    // old sent post, so it holds nothing once that is gone.
    store
        .apply(Write::ImportGuild(outbox_only_export(
            G,
            &[
                ("old-sent", Some(old)),
                ("recent-sent", Some(recent)),
                ("old-unsent", None),
            ],
        )))
        .await
        .unwrap();
    store
        .apply(Write::ImportGuild(outbox_only_export(
            G2,
            &[("g2-old-sent", Some(old))],
        )))
        .await
        .unwrap();
    store
        .apply(created(
            G,
            CH,
            sf(now - 50 * DAY, 3),
            9,
            false,
            "an old message",
        ))
        .await
        .unwrap();
    let dm = |day: i64| Write::DmHelp {
        user_id: 7,
        channel_id: 70,
        day,
        outbox: outbox(&format!("dm:7:{day}"), None, 70),
    };
    let (old_day, today) = (utc_day(now - 40 * DAY), utc_day(now));
    assert!(store.apply(dm(old_day)).await.unwrap().changed);
    assert!(store.apply(dm(today)).await.unwrap().changed);
    store
        .apply(Write::OutboxSent {
            key: format!("dm:7:{old_day}"),
            message_id: old,
        })
        .await
        .unwrap();
    let mut held = vec![G, G2];
    held.sort();
    assert_eq!(store.guild_ids().await.unwrap(), held);

    let pruned = store
        .apply(Write::Prune {
            older_than_ms: cutoff,
        })
        .await
        .unwrap();
    // old-sent, g2-old-sent, the old DM's sent post, and the old day's DM record.
    assert_eq!((pruned.pruned, pruned.changed), (4, true));
    let keys: Vec<String> = store
        .export_guild(G)
        .await
        .unwrap()
        .outbox
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["recent-sent", "old-unsent"]);
    let pending: Vec<String> = store
        .pending_outbox(10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        pending,
        ["old-unsent".to_string(), format!("dm:7:{today}")],
        "unsent posts stay, whatever their age"
    );
    assert_eq!(
        store.message_ids(G).await.unwrap().len(),
        1,
        "retention touches only the outbox and DM-help records"
    );
    assert_eq!(
        store.guild_ids().await.unwrap(),
        vec![G],
        "a guild whose last rows were pruned is no longer held"
    );

    // Idempotent: nothing more to delete.
    let again = store
        .apply(Write::Prune {
            older_than_ms: cutoff,
        })
        .await
        .unwrap();
    assert_eq!((again.pruned, again.changed), (0, false));
    // Today's DM record stays: a second DM today still gets no second answer.
    assert!(!store.apply(dm(today)).await.unwrap().changed);
    store.close().await.unwrap();
}
