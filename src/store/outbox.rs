//! The outbox: messages to post, enqueued in the same transaction as the write that caused them.
//!
//! Merge rule: a row is keyed by the caller's `key` (derived from the causing event, e.g.
//! `report:<guild>:<message>:<reporter>`), inserted with `INSERT OR IGNORE`, so a replayed event
//! never enqueues a second post. Sent is a one-way flag: the first recorded message id stays
//! (on a merge, the smaller). A sender task lists pending rows (`Store::pending_outbox`) oldest
//! first (insertion order) and posts each with a Discord nonce derived from the key. Rows of a
//! guild move with the guild; DM rows have no guild.
//!
//! Retention: a sent row is kept only to make a replay of its event a no-op, which matters for
//! minutes (replays, overlap during a rollout or a cover), not months; [`prune_sent`] deletes
//! rows whose post is older than the retention (its time is in the posted message's
//! snowflake, so no column is needed). Unsent rows are never pruned.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::Error;
use crate::ownership::GuildId;

/// A message to post, attached to a [`super::Write`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Idempotency key, derived from the causing event.
    pub key: String,
    /// The guild the post belongs to (`None` for DMs).
    pub guild_id: Option<GuildId>,
    /// Where to post.
    pub channel_id: u64,
    /// The message body (Discord's create-message JSON).
    pub body: serde_json::Value,
}

/// An unsent outbox row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingOutbox {
    /// Idempotency key.
    pub key: String,
    /// The guild (`None` for DMs).
    pub guild_id: Option<GuildId>,
    /// Where to post.
    pub channel_id: u64,
    /// The message body.
    pub body: serde_json::Value,
}

/// One outbox row as exported with its guild.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutboxRow {
    /// Idempotency key.
    pub key: String,
    /// Where to post.
    pub channel_id: u64,
    /// The body as stored (JSON text).
    pub body: String,
    /// The posted message, once sent.
    pub sent_message_id: Option<u64>,
}

/// Enqueues `messages`; returns how many were new.
pub(crate) fn enqueue(conn: &Connection, messages: &[OutboxMessage]) -> Result<usize, Error> {
    let mut new = 0;
    for m in messages {
        let body = serde_json::to_string(&m.body)?;
        new += insert(conn, &m.key, m.guild_id, m.channel_id, &body, None)?;
    }
    Ok(new)
}

/// Inserts or merges one row; returns 1 if it changed anything.
pub(crate) fn insert(
    conn: &Connection,
    key: &str,
    guild_id: Option<GuildId>,
    channel_id: u64,
    body: &str,
    sent_message_id: Option<u64>,
) -> Result<usize, Error> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO outbox (key, guild_id, channel_id, body, sent_message_id)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET
                 sent_message_id = COALESCE(MIN(sent_message_id, excluded.sent_message_id),
                                            sent_message_id, excluded.sent_message_id)
             WHERE excluded.sent_message_id IS NOT NULL
               AND (sent_message_id IS NULL OR excluded.sent_message_id < sent_message_id)",
        )?
        .execute(params![
            key,
            guild_id.map(|g| g.0),
            channel_id,
            body,
            sent_message_id
        ])?;
    Ok(changed)
}

/// Marks a row sent; returns whether it changed (false for an unknown key or a repeat).
/// Marks a row sent; `Some(its guild)` when it was unsent until now (`Some(None)` for a DM).
pub(crate) fn mark_sent(
    conn: &Connection,
    key: &str,
    message_id: u64,
) -> Result<Option<Option<u64>>, Error> {
    let marked = conn
        .prepare_cached(
            "UPDATE outbox SET sent_message_id = ?2 WHERE key = ?1 AND sent_message_id IS NULL
             RETURNING guild_id",
        )?
        .query_row(params![key, message_id], |r| r.get::<_, Option<u64>>(0))
        .optional()?;
    Ok(marked)
}

/// Deletes sent rows whose posted message is older than `before_ms` (Unix); returns the guild of
/// each deleted row (`None` for DMs).
pub(crate) fn prune_sent(conn: &Connection, before_ms: u64) -> Result<Vec<Option<u64>>, Error> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM outbox WHERE sent_message_id IS NOT NULL AND sent_message_id < ?1
         RETURNING guild_id",
    )?;
    let guilds = stmt
        .query_map([super::first_snowflake_at(before_ms)], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(guilds)
}

/// Unsent rows, oldest first.
pub(crate) fn pending(conn: &Connection, limit: u32) -> Result<Vec<PendingOutbox>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, guild_id, channel_id, body FROM outbox
         WHERE sent_message_id IS NULL ORDER BY rowid LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<u64>>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(key, guild_id, channel_id, body)| {
            Ok(PendingOutbox {
                key,
                guild_id: guild_id.map(GuildId),
                channel_id,
                body: serde_json::from_str(&body)?,
            })
        })
        .collect()
}

/// A guild's outbox rows in insertion order.
pub(crate) fn export(conn: &Connection, guild: GuildId) -> Result<Vec<OutboxRow>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, channel_id, body, sent_message_id FROM outbox
         WHERE guild_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([guild.0], |r| {
            Ok(OutboxRow {
                key: r.get(0)?,
                channel_id: r.get(1)?,
                body: r.get(2)?,
                sent_message_id: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
