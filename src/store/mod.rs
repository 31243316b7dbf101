//! The per-pod store: one SQLite database per gateway pod, replicated by Litestream.
//!
//! Level 1: used by `reshard` and `gateway`; never imported by `http` or `emulator`.
//!
//! What it owns:
//! - opening the database with the settings Litestream needs and applying the embedded
//!   migrations ([`migrate`]);
//! - the one writer thread that applies every [`Write`] with group commit ([`writer`]), so an
//!   acknowledged write is committed;
//! - a small pool of read-only connections for the queries (`spawn_blocking`);
//! - the merge rules: every write is an idempotent upsert keyed by Discord snowflakes that reaches
//!   the same state in any order and under duplication ([`activity`], [`deletions`],
//!   [`moderation`], [`dm_help`], [`outbox`]), which is what makes replays, duplicate delivery
//!   during a rollout and guild handoff ([`guilds`]: export/import/delete) safe.

pub mod activity;
pub mod deletions;
pub mod dm_help;
pub mod guilds;
pub mod index;
pub mod meta;
pub mod migrate;
pub mod moderation;
pub mod outbox;
pub mod write;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::ownership::{GuildId, DISCORD_EPOCH_MS};

pub use activity::{ActivityRow, DayStats, UserStats};
pub use deletions::CachedMessage;
pub use guilds::{GuildExport, MemberEvent, EXPORT_FORMAT_VERSION};
pub use index::{GuildVersion, ParseGuildVersionError};
pub use moderation::{GuildSettings, ModAction, ModActionKind, ModLog, Report, SettingsRow};
pub use outbox::{OutboxMessage, OutboxRow, PendingOutbox};
pub use write::{Applied, Write};
pub use writer::WriterStats;

/// How long a connection waits for a lock before failing with `SQLITE_BUSY`. Litestream takes
/// short write locks while it checkpoints, so waiting a little is normal.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// How many read-only connections the pool keeps.
const READERS: usize = 4;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database's directory could not be created.
    #[error("cannot create database directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer binary; opening it could lose data.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); \
         refusing to open it (run a newer guildshard)"
    )]
    SchemaTooNew {
        /// The version found in the database (`PRAGMA user_version`).
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// The database has a journal mode other than WAL after asking for WAL.
    #[error("database refused WAL mode (journal_mode is {0})")]
    NotWal(String),
    /// The batch that held this write failed to commit, so the write is not durable.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The store was closed (or its writer thread is gone).
    #[error("store is closed")]
    Closed,
    /// A stored JSON value could not be read or written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A guild export in a format this binary cannot read.
    #[error(
        "guild export format version {found} is not supported (this binary reads {supported})"
    )]
    ExportFormat {
        /// The version in the export.
        found: u32,
        /// The version this binary reads.
        supported: u32,
    },
    /// A guild export holds a row of another guild.
    #[error("guild export for {expected} holds a row of guild {found}")]
    ExportGuildMismatch {
        /// The guild the export is for.
        expected: GuildId,
        /// The guild found in a row.
        found: GuildId,
    },
    /// [`Write::SetMeta`] with a key reserved for the store itself.
    #[error("metadata key {0:?} is reserved for the store")]
    ReservedMetaKey(String),
    /// [`Write::DeleteGuildIfUnchanged`] found the guild changed since the version given.
    #[error("guild {0} changed since it was exported; nothing was deleted")]
    GuildChanged(GuildId),
    /// A blocking task of the store panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

/// Options for [`Store::open_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Whether Litestream manages checkpoints (the production setting, and the default).
    ///
    /// `true` sets `wal_autocheckpoint=0`: Litestream's advice, because an application
    /// auto-checkpoint can slip in between Litestream's own and force it to upload a full
    /// snapshot; Litestream holds a read lock and checkpoints itself. `false` keeps SQLite's
    /// default auto-checkpoint (1000 pages), for a database that no Litestream watches (the WAL
    /// would otherwise grow without bound).
    pub litestream_checkpoints: bool,
    /// The bound of the writer's queue; `apply` waits when it is full (back-pressure).
    pub queue: usize,
    /// The most writes committed in one transaction.
    pub batch_cap: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            litestream_checkpoints: true,
            queue: 8192,
            batch_cap: 4096,
        }
    }
}

/// A handle on the pod's database. Cheap to clone; all clones share one writer and one reader
/// pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Handle,
    index: Arc<index::GuildIndex>,
    readers: Mutex<Vec<Connection>>,
    reader_permits: Semaphore,
    closed: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` with the default [`StoreOptions`].
    ///
    /// # Errors
    /// [`Error::CreateDir`] when the parent directory cannot be made, [`Error::SchemaTooNew`]
    /// for a database from a newer binary, [`Error::Sqlite`] for anything SQLite refuses.
    pub async fn open(path: impl AsRef<Path>) -> Result<Store, Error> {
        Self::open_with(path, StoreOptions::default()).await
    }

    /// Opens the database at `path`: creates parent directories, sets the pragmas, applies the
    /// embedded migrations, starts the writer thread and opens the reader pool.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, Error> {
        let path = path.as_ref().to_path_buf();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_blocking(&path, options))
                .await
                .map_err(|e| Error::Task(e.to_string()))??
        };
        let (conn, readers, purge_cutoff, held) = opened;
        let index = Arc::new(index::GuildIndex::new(held));
        let writer = writer::spawn(conn, purge_cutoff, index.clone(), options)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                writer,
                index,
                readers: Mutex::new(readers),
                reader_permits: Semaphore::new(READERS),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Applies one write. Resolves after the transaction that holds it has committed, so an
    /// `Ok` means the write is in the database (group commit: writes queued together share one
    /// transaction, each in its own savepoint so one failing write fails alone).
    ///
    /// # Errors
    /// [`Error::Closed`] after [`Store::close`], [`Error::Sqlite`] if this write failed (its
    /// effects are rolled back), [`Error::Commit`] if the batch failed to commit.
    pub async fn apply(&self, write: Write) -> Result<Applied, Error> {
        self.inner.writer.apply(write).await
    }

    /// Flushes every write queued before this call, then stops the writer and closes the
    /// connections. Later calls to [`Store::apply`] and the reads return [`Error::Closed`].
    /// Closing twice is fine.
    ///
    /// # Errors
    /// [`Error::Task`] if the writer thread died.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.writer.close().await?;
        self.inner
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// Batch sizes, commit counts and commit latency of the writer so far.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Runs `f` on a read-only connection from the pool, on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let _permit = self
            .inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let pooled = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let path = self.inner.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            // A connection lost to a panic is replaced on demand, so the pool never shrinks.
            let conn = match pooled {
                Some(conn) => conn,
                None => match open_reader(&path) {
                    Ok(conn) => conn,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&conn);
            (Some(conn), result)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
        if let Some(conn) = conn {
            if !self.inner.closed.load(Ordering::SeqCst) {
                self.inner
                    .readers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(conn);
            }
        }
        result
    }

    /// A user's activity in a guild since `since_ms`: messages, distinct channels, first and
    /// last message time.
    ///
    /// # Errors
    /// [`Error::Closed`] after close, [`Error::Sqlite`] on a failed query.
    pub async fn user_stats(
        &self,
        guild: GuildId,
        user: u64,
        since_ms: u64,
    ) -> Result<UserStats, Error> {
        self.read(move |c| activity::user_stats(c, guild, user, since_ms))
            .await
    }

    /// The most active users of a guild since `since_ms`: `(user_id, messages)`, by count
    /// descending, then user id ascending.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn leaderboard(
        &self,
        guild: GuildId,
        since_ms: u64,
        limit: u32,
    ) -> Result<Vec<(u64, u64)>, Error> {
        self.read(move |c| activity::leaderboard(c, guild, since_ms, limit))
            .await
    }

    /// Per-UTC-day messages, joins and leaves of a guild since `since_ms`, oldest day first;
    /// days with nothing are left out.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn server_stats(
        &self,
        guild: GuildId,
        since_ms: u64,
    ) -> Result<Vec<DayStats>, Error> {
        self.read(move |c| activity::server_stats(c, guild, since_ms))
            .await
    }

    /// A user's reports (count and the most recent `limit`) and mod actions (most recent
    /// `limit`) in a guild.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn modlog(&self, guild: GuildId, user: u64, limit: u32) -> Result<ModLog, Error> {
        self.read(move |c| moderation::modlog(c, guild, user, limit))
            .await
    }

    /// The guild's `/setup` channels (both `None` if never set).
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn settings(&self, guild: GuildId) -> Result<GuildSettings, Error> {
        self.read(move |c| moderation::settings(c, guild)).await
    }

    /// The guild's `/setup` row with the interaction that set each channel, if any was set.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn settings_row(&self, guild: GuildId) -> Result<Option<SettingsRow>, Error> {
        self.read(move |c| moderation::settings_row(c, guild)).await
    }

    /// A message from the cache (or its tombstone), if known.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn cached_message(
        &self,
        guild: GuildId,
        message_id: u64,
    ) -> Result<Option<CachedMessage>, Error> {
        self.read(move |c| deletions::cached_message(c, guild, message_id))
            .await
    }

    /// Several messages from the cache (those known), in id order; for the bulk-delete log.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn cached_messages(
        &self,
        guild: GuildId,
        message_ids: Vec<u64>,
    ) -> Result<Vec<CachedMessage>, Error> {
        self.read(move |c| deletions::cached_messages(c, guild, &message_ids))
            .await
    }

    /// Every counted message id of a guild, ascending (for tests and consistency checks).
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn message_ids(&self, guild: GuildId) -> Result<Vec<u64>, Error> {
        self.read(move |c| activity::message_ids(c, guild)).await
    }

    /// Every guild with at least one row in any guild table, ascending.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn guild_ids(&self) -> Result<Vec<GuildId>, Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        // Kept exact by the writer; no query.
        Ok(self.inner.index.ids())
    }

    /// Rows per guild table for one guild (diagnostics), keyed by table name.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn row_counts(&self, guild: GuildId) -> Result<BTreeMap<String, u64>, Error> {
        self.read(move |c| guilds::row_counts(c, guild)).await
    }

    /// Every row of every guild table for one guild, read in one snapshot.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn export_guild(&self, guild: GuildId) -> Result<GuildExport, Error> {
        self.read(move |c| guilds::export(c, guild)).await
    }

    /// Like [`Store::export_guild`], with the guild's version taken just before the snapshot
    /// (`None` when nothing of it is held). A [`Write::DeleteGuildIfUnchanged`] with this
    /// version deletes only if no write to the guild committed since: a write that lands
    /// between the version and the snapshot only makes the delete refuse, never lose a row.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn export_guild_versioned(
        &self,
        guild: GuildId,
    ) -> Result<(Option<GuildVersion>, GuildExport), Error> {
        let version = self.inner.index.version(guild);
        Ok((version, self.export_guild(guild).await?))
    }

    /// How many guilds the store holds rows for.
    pub fn guilds_held(&self) -> usize {
        self.inner.index.len()
    }

    /// A number that changes whenever a guild is added to or removed from the held set (not
    /// when a held guild only changes), for caching what is derived from [`Store::guild_ids`].
    pub fn held_generation(&self) -> u64 {
        self.inner.index.membership()
    }

    /// Unsent outbox rows, oldest first.
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn pending_outbox(&self, limit: u32) -> Result<Vec<PendingOutbox>, Error> {
        self.read(move |c| outbox::pending(c, limit)).await
    }

    /// A pod-level metadata value set by [`Write::SetMeta`].
    ///
    /// # Errors
    /// As [`Store::user_stats`].
    pub async fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        let key = key.to_owned();
        self.read(move |c| meta::get(c, &key)).await
    }

    /// Size of the write-ahead log alone, bytes. With `wal_autocheckpoint=0` only Litestream
    /// checkpoints it, so a WAL that keeps growing means the sidecar is not doing so.
    pub fn wal_bytes(&self) -> u64 {
        file_len(&sidecar(&self.inner.path, "-wal"))
    }

    /// The size of the database on disk: the main file plus its WAL.
    ///
    /// # Errors
    /// Never fails today; the `Result` leaves room for a future query.
    pub async fn db_size_bytes(&self) -> Result<u64, Error> {
        let main = file_len(&self.inner.path);
        let wal = file_len(&sidecar(&self.inner.path, "-wal"));
        Ok(main + wal)
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// WAL pages between checkpoints when SQLite checkpoints by itself (no Litestream).
const SELF_CHECKPOINT_PAGES: i64 = 10_000;

/// The writer connection's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

type Opened = (Connection, Vec<Connection>, Option<u64>, Vec<GuildId>);

fn open_blocking(path: &Path, options: StoreOptions) -> Result<Opened, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Refuse a newer schema before touching anything else in the file.
    migrate::check_version(&conn)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotWal(mode));
    }
    // NORMAL is durable against an application crash in WAL mode and is what Litestream
    // recommends; FULL would fsync on every commit.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if options.litestream_checkpoints {
        // Litestream's advice: let it own checkpoints. An app auto-checkpoint between two of
        // Litestream's forces it to take a full snapshot. No code here ever checkpoints or
        // VACUUMs for the same reason.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    } else {
        // No Litestream: SQLite checkpoints by itself. Its default (every 1000 pages, 4 MiB)
        // means a checkpoint after nearly every busy commit, because a batch touches a page
        // per guild in each index; every 40 MiB copies each hot page back far less often.
        conn.pragma_update(None, "wal_autocheckpoint", SELF_CHECKPOINT_PAGES)?;
    }
    // The writer's page cache: big enough that a batch's dirty pages (activity rows and three
    // indexes, the message cache) stay in memory until the commit instead of spilling to the
    // WAL mid-transaction (SQLite's default is 2 MiB). Allocated only as pages are used.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    migrate::migrate(&mut conn)?;
    let purge_cutoff = meta::purge_cutoff(&conn)?;
    let held = guilds::guild_ids(&conn)?;
    let readers = (0..READERS)
        .map(|_| open_reader(path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((conn, readers, purge_cutoff, held))
}

fn open_reader(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The Unix time in milliseconds encoded in a Discord snowflake.
pub fn snowflake_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// The smallest snowflake minted at or after `ms` (Unix): a message id `>=` it was created at
/// or after `ms`, so a time bound on messages is a key bound (activity's primary key is
/// `(guild_id, message_id)`).
pub fn first_snowflake_at(ms: u64) -> u64 {
    ms.saturating_sub(DISCORD_EPOCH_MS) << 22
}

/// The UTC day (days since 1970-01-01) of a Unix time in milliseconds.
pub fn utc_day(ms: u64) -> i64 {
    // u64 ms / 86.4M fits in i64 for any u64.
    i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX)
}

/// The `YYYY-MM-DD` date of a UTC day number (days since 1970-01-01).
pub fn utc_date(day: i64) -> String {
    let (y, m, d) = crate::calendar::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails on any unexpected error
mod tests {
    use super::*;

    #[test]
    fn a_time_bound_is_a_snowflake_bound() {
        let ms = 1_709_251_200_000;
        for id in [
            first_snowflake_at(ms) - 1,
            first_snowflake_at(ms),
            first_snowflake_at(ms + 1) - 1,
        ]
        .into_iter()
        .chain(
            (0..2_000u64)
                .map(|i| ((ms - DISCORD_EPOCH_MS - 1_000 + i) << 22) | (i * 7 % 4_000_000)),
        ) {
            assert_eq!(
                id >= first_snowflake_at(ms),
                snowflake_ms(id) >= ms,
                "id {id}"
            );
        }
        assert_eq!(first_snowflake_at(0), 0, "before Discord's epoch: every id");
    }

    #[test]
    fn the_write_connection_has_the_litestream_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/bot.db");
        let (conn, readers, _, _) = open_blocking(&path, StoreOptions::default()).unwrap();
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "1", "NORMAL");
        assert_eq!(pragma("busy_timeout"), "5000");
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(
            pragma("wal_autocheckpoint"),
            "0",
            "Litestream owns checkpoints"
        );
        assert_eq!(readers.len(), READERS);
        let readonly: i64 = readers[0]
            .query_row("SELECT count(*) FROM activity", [], |r| r.get(0))
            .unwrap();
        assert_eq!(readonly, 0);
        assert!(
            readers[0].execute("DELETE FROM activity", []).is_err(),
            "readers are read-only"
        );

        let plain = StoreOptions {
            litestream_checkpoints: false,
            ..StoreOptions::default()
        };
        let (conn, _, _, _) = open_blocking(&dir.path().join("plain.db"), plain).unwrap();
        let n: i64 = conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n, SELF_CHECKPOINT_PAGES,
            "SQLite checkpoints by itself when no Litestream watches, every 40 MiB of WAL"
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(19_723), "2024-01-01");
        assert_eq!(utc_date(19_782), "2024-02-29");
        assert_eq!(utc_date(utc_day(1_420_070_400_000)), "2015-01-01");
    }

    #[test]
    fn snowflake_time() {
        // The example from Discord's documentation.
        assert_eq!(snowflake_ms(175_928_847_299_117_063), 1_462_015_105_796);
    }
}
