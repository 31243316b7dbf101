//! The single writer: one thread owns the only write connection and applies every [`Write`].
//!
//! Writes arrive on a bounded channel (back-pressure when the writer falls behind). The thread
//! takes everything queued (up to the batch cap), applies it in ONE transaction with a savepoint
//! per write (one failing write is rolled back alone), commits, and only then answers each
//! caller: group commit, so "acknowledged" means committed, and a burst of writes costs one
//! commit. After each commit it records in the guild index ([`super::index`]) which guilds the
//! batch changed.
//! [`WriterStats`] records batch sizes and commit latency for the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::deletions::CachedMessage;
use super::index::{Change, GuildIndex};
use super::moderation::{ModAction, Report, SettingsRow};
use super::write::{Applied, Write};
use super::{activity, deletions, dm_help, guilds, meta, moderation, outbox, snowflake_ms};
use super::{Error, GuildVersion, StoreOptions};
use crate::ownership::GuildId;

/// Upper bounds of the batch-size buckets.
const BATCH_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
/// Upper bounds of the commit-latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

type Reply = oneshot::Sender<Result<Applied, Error>>;

/// `PRAGMA synchronous` value of FULL (EXTRA, 3, is stricter still).
const SYNCHRONOUS_FULL: i64 = 2;

enum Msg {
    Write(Box<Write>, Reply),
    Close(oneshot::Sender<()>),
}

/// The async side of the writer, held by [`super::Store`].
pub(crate) struct Handle {
    tx: mpsc::Sender<Msg>,
    stats: Arc<Counters>,
    queue: usize,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    commit_failures: AtomicU64,
    writes: AtomicU64,
    failed_writes: AtomicU64,
    max_batch: AtomicU64,
    commit_us_sum: AtomicU64,
    batch_buckets: [AtomicU64; BATCH_BOUNDS.len() + 1],
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

/// A snapshot of the writer's counters, shaped for Prometheus (cumulative histogram buckets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed to commit (their writes were answered with an error).
    pub commit_failures: u64,
    /// Writes applied and committed.
    pub writes: u64,
    /// Writes that failed on their own (rolled back to their savepoint).
    pub failed_writes: u64,
    /// The largest batch so far.
    pub max_batch: u64,
    /// Writes waiting in the queue right now.
    pub queue_depth: u64,
    /// Sum of commit latencies (begin to commit), in seconds; the count is
    /// `commits + commit_failures`.
    pub commit_seconds_sum: f64,
    /// `(le, cumulative count)` of writes per transaction; the `+Inf` count is
    /// `commits + commit_failures`.
    pub batch_size_buckets: Vec<(f64, u64)>,
    /// `(le seconds, cumulative count)` of commit latency.
    pub commit_seconds_buckets: Vec<(f64, u64)>,
}

impl WriterStats {
    /// Transactions attempted (committed or not).
    pub fn batches(&self) -> u64 {
        self.commits + self.commit_failures
    }
}

fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds
        .iter()
        .position(|b| value <= *b)
        .unwrap_or(bounds.len())
}

fn cumulative(bounds: &[u64], counts: &[AtomicU64], scale: f64) -> Vec<(f64, u64)> {
    let mut total = 0;
    bounds
        .iter()
        .zip(counts)
        .map(|(b, c)| {
            total += c.load(Ordering::Relaxed);
            (*b as f64 * scale, total)
        })
        .collect()
}

impl Handle {
    pub(crate) async fn apply(&self, write: Write) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Write(Box::new(write), reply))
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    pub(crate) async fn close(&self) -> Result<(), Error> {
        let (done, finished) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_err() {
            return Ok(()); // already closed
        }
        // A dropped sender means the thread already stopped; either way it is closed.
        let _ = finished.await;
        Ok(())
    }

    pub(crate) fn stats(&self) -> WriterStats {
        let s = &self.stats;
        WriterStats {
            commits: s.commits.load(Ordering::Relaxed),
            commit_failures: s.commit_failures.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            failed_writes: s.failed_writes.load(Ordering::Relaxed),
            max_batch: s.max_batch.load(Ordering::Relaxed),
            queue_depth: (self.queue.saturating_sub(self.tx.capacity())) as u64,
            commit_seconds_sum: s.commit_us_sum.load(Ordering::Relaxed) as f64 / 1e6,
            batch_size_buckets: cumulative(&BATCH_BOUNDS, &s.batch_buckets, 1.0),
            commit_seconds_buckets: cumulative(&LATENCY_BOUNDS_US, &s.latency_buckets, 1e-6),
        }
    }
}

/// Starts the writer thread on `conn`.
pub(crate) fn spawn(
    conn: Connection,
    purge_cutoff: Option<u64>,
    index: Arc<GuildIndex>,
    options: StoreOptions,
) -> Result<Handle, Error> {
    let queue = options.queue.max(1);
    let (tx, rx) = mpsc::channel(queue);
    let stats = Arc::new(Counters::default());
    let worker = Worker {
        conn,
        purge_cutoff,
        index,
        batch_cap: options.batch_cap.max(1),
        stats: stats.clone(),
    };
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || worker.run(rx))
        .map_err(|e| Error::Task(format!("cannot start the writer thread: {e}")))?;
    Ok(Handle { tx, stats, queue })
}

/// How one attempt at a batch ended.
enum Attempt {
    /// Committed: each write's result, what changed for the guild index, and the purge cutoff
    /// after the batch.
    Committed {
        results: Vec<Result<Applied, Error>>,
        changes: Vec<Change>,
        cutoff: Option<u64>,
    },
    /// Without savepoints a write failed, and the transaction was rolled back.
    WriteFailed,
}

struct Worker {
    conn: Connection,
    /// The message-cache purge cutoff, mirrored from `meta` (only this thread writes it).
    purge_cutoff: Option<u64>,
    /// The held guilds and their versions, updated after each commit.
    index: Arc<GuildIndex>,
    batch_cap: usize,
    stats: Arc<Counters>,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut closers = Vec::new();
        // Ends when close() is called or every handle is dropped.
        while closers.is_empty() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Write(w, reply) => batch.push((w, reply)),
                    Msg::Close(done) => {
                        closers.push(done);
                        break;
                    }
                }
                if batch.len() < self.batch_cap {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        // Everything sent before close() was taken above (the channel is FIFO); whatever was
        // sent after it is refused.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Write(_, reply) => {
                    let _ = reply.send(Err(Error::Closed));
                }
                Msg::Close(done) => closers.push(done),
            }
        }
        drop(self.conn);
        tracing::debug!("store writer stopped");
        for done in closers {
            let _ = done.send(());
        }
    }

    /// One transaction over `batch`. Without `isolate`, writes run straight in the
    /// transaction (the common case: no statement journal to keep), and the first failing
    /// write rolls everything back; with it, each write runs in its own savepoint, so a
    /// failing write is rolled back alone and reported to its caller.
    fn attempt(
        &mut self,
        batch: &[(Box<Write>, Reply)],
        isolate: bool,
    ) -> Result<Attempt, rusqlite::Error> {
        let mut cutoff = self.purge_cutoff;
        let mut changes: Vec<Change> = Vec::new();
        let index = &self.index;
        // IMMEDIATE: take the write lock at the start (a deferred transaction upgrading later
        // could fail with SQLITE_BUSY while Litestream checkpoints). Dropped: rolled back.
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        for (write, _) in batch {
            // Unchanged: the committed version is the one exported, and no write earlier in
            // this batch touched the guild.
            let unchanged = |guild: GuildId, version: GuildVersion| {
                index.version(guild) == Some(version) && !changes.iter().any(|c| c.concerns(guild))
            };
            let result = if isolate {
                (|| -> Result<(Applied, Option<Change>), Error> {
                    let sp = tx.savepoint()?;
                    let mut op_cutoff = cutoff;
                    let applied = apply_one(&sp, write, &mut op_cutoff, unchanged)?;
                    sp.commit()?;
                    cutoff = op_cutoff;
                    Ok(applied)
                })()
            } else {
                apply_one(&tx, write, &mut cutoff, unchanged)
            };
            match result {
                Ok((applied, change)) => {
                    changes.extend(change);
                    results.push(Ok(applied));
                }
                Err(e) if isolate => {
                    tracing::warn!(cause = %e, write = write.kind(), "store write failed");
                    results.push(Err(e));
                }
                // Dropping the transaction rolls back what the batch did so far.
                Err(_) => return Ok(Attempt::WriteFailed),
            }
        }
        // Read back inside the transaction, so a caller told "fsynced" was told what SQLite
        // really did at this commit, not what was asked for.
        let level: i64 = tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        tx.commit()?;
        let fsynced = level >= SYNCHRONOUS_FULL;
        for applied in results.iter_mut().flatten() {
            applied.fsynced = fsynced;
        }
        Ok(Attempt::Committed {
            results,
            changes,
            cutoff,
        })
    }

    /// Runs `attempt` with `synchronous=FULL` when a write of the batch needs its commit on
    /// disk ([`Write::needs_fsync`]), then puts the connection's level back. SQLite refuses to
    /// change the level inside a transaction, so it is switched around the whole batch (and its
    /// retry); in WAL mode FULL fsyncs the log at commit, which also covers every earlier
    /// commit still in it.
    fn attempt_durably(
        &mut self,
        batch: &[(Box<Write>, Reply)],
    ) -> Result<Attempt, rusqlite::Error> {
        let needs_fsync = batch.iter().any(|(w, _)| w.needs_fsync());
        let restore = if needs_fsync {
            let level: i64 = self
                .conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            self.conn
                .pragma_update(None, "synchronous", SYNCHRONOUS_FULL)?;
            Some(level)
        } else {
            None
        };
        let outcome = match self.attempt(batch, false) {
            // A write failed: run the batch again with a savepoint per write, so that write
            // fails alone and the others commit.
            Ok(Attempt::WriteFailed) => self.attempt(batch, true),
            other => other,
        };
        if let Some(level) = restore {
            if let Err(err) = self.conn.pragma_update(None, "synchronous", level) {
                // Only costs fsyncs on later commits; the batch itself is settled.
                tracing::warn!(cause = %err, "could not restore the synchronous level");
            }
        }
        outcome
    }

    fn commit(&mut self, batch: Vec<(Box<Write>, Reply)>) {
        let started = Instant::now();
        let size = batch.len() as u64;
        let outcome = self.attempt_durably(&batch);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let s = &self.stats;
        s.commit_us_sum.fetch_add(micros, Ordering::Relaxed);
        s.latency_buckets[bucket(&LATENCY_BOUNDS_US, micros)].fetch_add(1, Ordering::Relaxed);
        s.batch_buckets[bucket(&BATCH_BOUNDS, size)].fetch_add(1, Ordering::Relaxed);
        s.max_batch.fetch_max(size, Ordering::Relaxed);
        match outcome {
            Ok(Attempt::Committed {
                results,
                changes,
                cutoff,
            }) => {
                self.purge_cutoff = cutoff;
                self.index.apply(&changes);
                s.commits.fetch_add(1, Ordering::Relaxed);
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    if result.is_ok() {
                        s.writes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        s.failed_writes.fetch_add(1, Ordering::Relaxed);
                    }
                    // The caller may have given up waiting; the write is committed anyway.
                    let _ = reply.send(result);
                }
            }
            failed => {
                // An isolated attempt reports failing writes one by one, so `WriteFailed`
                // here would be a bug; answer it like a failed commit rather than hang.
                let message = match failed {
                    Err(e) => e.to_string(),
                    _ => "a write failed outside its savepoint".to_owned(),
                };
                tracing::error!(cause = %message, writes = size, "store commit failed");
                s.commit_failures.fetch_add(1, Ordering::Relaxed);
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::Commit(message.clone())));
                }
            }
        }
    }
}

/// Applies one write inside the current savepoint and says what it changed for the guild
/// index. `cutoff` is the message-cache purge cutoff; a purge raises it. `unchanged` tells
/// whether a guild is still at a given version.
fn apply_one(
    conn: &Connection,
    write: &Write,
    cutoff: &mut Option<u64>,
    unchanged: impl Fn(GuildId, GuildVersion) -> bool,
) -> Result<(Applied, Option<Change>), Error> {
    let mut applied = Applied::default();
    // Most writes change rows of the guild they name; the exceptions say so below.
    let mut change = write.guild_id().map(Change::Touched);
    let outbox_messages = match write {
        Write::MessageCreated {
            guild_id,
            channel_id,
            message_id,
            author_id,
            author_is_bot,
            content,
            created_at_ms,
            outbox,
        } => {
            if !author_is_bot {
                let row = activity::ActivityRow {
                    message_id: *message_id,
                    channel_id: *channel_id,
                    author_id: *author_id,
                    created_at_ms: *created_at_ms,
                    length: content.chars().count() as u64,
                };
                applied.changed |= activity::insert_message(conn, *guild_id, &row)?;
            }
            let cached = CachedMessage {
                message_id: *message_id,
                channel_id: *channel_id,
                author_id: Some(*author_id),
                content: Some(content.clone()),
                content_version: 0,
                created_at_ms: snowflake_ms(*message_id),
                deleted_at_ms: None,
            };
            applied.changed |= deletions::merge(conn, *guild_id, &cached, *cutoff)?;
            Some(outbox)
        }
        Write::MessageUpdated {
            guild_id,
            channel_id,
            message_id,
            content,
            edited_at_ms,
            outbox,
        } => {
            let cached = CachedMessage {
                message_id: *message_id,
                channel_id: *channel_id,
                author_id: None,
                content: Some(content.clone()),
                content_version: *edited_at_ms,
                created_at_ms: snowflake_ms(*message_id),
                deleted_at_ms: None,
            };
            applied.changed |= deletions::merge(conn, *guild_id, &cached, *cutoff)?;
            Some(outbox)
        }
        Write::MessageDeleted {
            guild_id,
            channel_id,
            message_id,
            deleted_at_ms,
            outbox,
        } => {
            applied.changed |= delete_message(
                conn,
                *guild_id,
                *channel_id,
                *message_id,
                *deleted_at_ms,
                *cutoff,
            )?;
            Some(outbox)
        }
        Write::MessagesBulkDeleted {
            guild_id,
            channel_id,
            message_ids,
            deleted_at_ms,
            outbox,
        } => {
            for id in message_ids {
                applied.changed |=
                    delete_message(conn, *guild_id, *channel_id, *id, *deleted_at_ms, *cutoff)?;
            }
            Some(outbox)
        }
        Write::MemberJoined {
            guild_id,
            user_id,
            joined_at_ms,
            outbox,
        } => {
            applied.changed |= activity::insert_join(conn, *guild_id, *user_id, *joined_at_ms)?;
            Some(outbox)
        }
        Write::MemberLeft {
            guild_id,
            user_id,
            left_at_ms,
            outbox,
        } => {
            applied.changed |= activity::insert_leave(conn, *guild_id, *user_id, *left_at_ms)?;
            Some(outbox)
        }
        Write::ModAction {
            guild_id,
            entry_id,
            kind,
            target_id,
            executor_id,
            reason,
            at_ms,
            outbox,
        } => {
            let action = ModAction {
                entry_id: *entry_id,
                kind: *kind,
                target_id: *target_id,
                executor_id: *executor_id,
                reason: reason.clone(),
                at_ms: *at_ms,
            };
            applied.changed |= moderation::merge_action(conn, *guild_id, &action)?;
            Some(outbox)
        }
        Write::Report {
            guild_id,
            interaction_id,
            reporter_id,
            channel_id,
            message_id,
            reported_user_id,
            content_excerpt,
            at_ms,
            outbox,
        } => {
            let report = Report {
                message_id: *message_id,
                reporter_id: *reporter_id,
                interaction_id: *interaction_id,
                channel_id: *channel_id,
                reported_user_id: *reported_user_id,
                content_excerpt: content_excerpt.clone(),
                at_ms: *at_ms,
            };
            let existed = moderation::report_exists(conn, *guild_id, *message_id, *reporter_id)?;
            applied.changed |= moderation::merge_report(conn, *guild_id, &report)?;
            applied.report_count = Some(moderation::report_count(
                conn,
                *guild_id,
                *reported_user_id,
            )?);
            // Only the first report of a message by a reporter is posted, whatever its key:
            // the one already stored was posted in its own transaction.
            (!existed).then_some(outbox)
        }
        Write::Setup {
            guild_id,
            interaction_id,
            mod_log_channel,
            deletion_log_channel,
            outbox,
        } => {
            let row = SettingsRow {
                mod_log_channel: *mod_log_channel,
                mod_log_set_by: mod_log_channel.map(|_| *interaction_id),
                deletion_log_channel: *deletion_log_channel,
                deletion_log_set_by: deletion_log_channel.map(|_| *interaction_id),
            };
            applied.changed |= moderation::merge_settings(conn, *guild_id, &row)?;
            Some(outbox)
        }
        Write::DmHelp {
            user_id,
            channel_id,
            day,
            outbox,
        } => {
            // Not guild data: DMs belong to no guild.
            applied.changed = dm_help::record(conn, *user_id, *channel_id, *day)?;
            // At most one help reply per user and day, whatever the key.
            applied.changed.then_some(outbox)
        }
        Write::OutboxSent { key, message_id } => {
            // A sent mark changes the guild's outbox row: an export taken before it must not
            // be deleted after it, or the new owner would hold the post as unsent.
            let marked = outbox::mark_sent(conn, key, *message_id)?;
            applied.changed = marked.is_some();
            change = marked.flatten().map(|g| Change::Touched(GuildId(g)));
            None
        }
        Write::PurgeMessageContent { older_than_ms } => {
            let new = cutoff.map_or(*older_than_ms, |c| c.max(*older_than_ms));
            applied.changed |= meta::set(conn, meta::PURGE_CUTOFF_KEY, &new.to_string())?;
            let purged = deletions::purge(conn, new)? > 0;
            applied.changed |= purged;
            // Purged rows may have been all some guild had.
            change = purged
                .then(|| guilds::guild_ids(conn))
                .transpose()?
                .map(Change::Rescanned);
            *cutoff = Some(new);
            None
        }
        Write::Prune { older_than_ms } => {
            let sent = outbox::prune_sent(conn, *older_than_ms)?;
            let days = dm_help::prune(conn, super::utc_day(*older_than_ms))?;
            applied.pruned = sent.len() + days;
            applied.changed = applied.pruned > 0;
            // Outbox rows may have been all some guild had left.
            change = sent
                .iter()
                .any(Option::is_some)
                .then(|| guilds::guild_ids(conn))
                .transpose()?
                .map(Change::Rescanned);
            None
        }
        Write::ImportGuild(export) => {
            applied.changed = guilds::import(conn, export, *cutoff)?;
            None
        }
        Write::DeleteGuild(guild_id) => {
            applied.changed = guilds::delete(conn, *guild_id)? > 0;
            change = Some(Change::Removed(*guild_id));
            None
        }
        Write::DeleteGuildIfUnchanged { guild_id, version } => {
            if !unchanged(*guild_id, *version) {
                return Err(Error::GuildChanged(*guild_id));
            }
            applied.changed = guilds::delete(conn, *guild_id)? > 0;
            change = Some(Change::Removed(*guild_id));
            None
        }
        Write::SetMeta { key, value } => {
            if key.starts_with(meta::RESERVED_PREFIX) {
                return Err(Error::ReservedMetaKey(key.clone()));
            }
            applied.changed = meta::set(conn, key, value)?;
            None
        }
    };
    if let Some(messages) = outbox_messages {
        applied.outbox_enqueued = outbox::enqueue(conn, messages)?;
    }
    let change = change.filter(|_| applied.changed || applied.outbox_enqueued > 0);
    Ok((applied, change))
}

fn delete_message(
    conn: &Connection,
    guild: crate::ownership::GuildId,
    channel_id: u64,
    message_id: u64,
    deleted_at_ms: u64,
    cutoff: Option<u64>,
) -> Result<bool, Error> {
    let tombstone = CachedMessage {
        message_id,
        channel_id,
        author_id: None,
        content: None,
        content_version: 0,
        created_at_ms: snowflake_ms(message_id),
        deleted_at_ms: Some(deleted_at_ms),
    };
    deletions::merge(conn, guild, &tombstone, cutoff)
}
