//! The message cache behind the deletion log: content of recent messages, edits, deletes and
//! tombstones.
//!
//! Merge rule (one upsert serves create, edit, delete and import, so they agree):
//! - `channel_id` and `created_at_ms` (the snowflake time of the message id) are facts every
//!   event knows; `author_id` comes from the create and is kept once known.
//! - Content has a version: 0 for the create's text, `edited_at_ms` for an edit. The highest
//!   version wins (ties: the greater text, only to be deterministic), so an old edit never
//!   overwrites a newer one and an edit that precedes its create is kept.
//! - A delete sets `deleted_at_ms` (the earliest seen wins) and the row never holds content
//!   again: a create or edit after a delete (delete-before-create) leaves the tombstone alone.
//!   The gateway renders the deletion-log post from `Store::cached_message` *before* it applies the
//!   delete, and passes it as the delete's outbox.
//! - Purge: content is kept 7 days. [`super::Write::PurgeMessageContent`] deletes every cache
//!   row whose message is older than the cutoff and records the cutoff (the highest wins) in
//!   `meta`; cache writes for messages older than the recorded cutoff are ignored. So the cache
//!   is "every message event, minus messages older than the highest cutoff", whatever the order.
//!   Activity is never purged.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{snowflake_ms, Error};
use crate::ownership::GuildId;

/// A cached message (or the tombstone of one deleted before it was seen).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CachedMessage {
    /// The message.
    pub message_id: u64,
    /// Its channel.
    pub channel_id: u64,
    /// Its author, if the create was seen.
    pub author_id: Option<u64>,
    /// Its latest text; `None` once deleted (or for a tombstone).
    pub content: Option<String>,
    /// 0 for the create's text, else the edit time of the text held.
    pub content_version: u64,
    /// The snowflake time of the message id.
    pub created_at_ms: u64,
    /// When it was deleted, if it was.
    pub deleted_at_ms: Option<u64>,
}

impl CachedMessage {
    /// Whether the message was deleted.
    pub fn deleted(&self) -> bool {
        self.deleted_at_ms.is_some()
    }

    /// Two states of this message merged as the store merges them (in any order).
    #[must_use]
    pub fn merged(&self, other: &CachedMessage) -> CachedMessage {
        merge_rows(self, other)
    }
}

/// Merges one cache row (see the module doc). `cutoff` is the purge cutoff; older messages are
/// ignored. Returns whether a row changed.
pub(crate) fn merge(
    conn: &Connection,
    guild: GuildId,
    row: &CachedMessage,
    cutoff: Option<u64>,
) -> Result<bool, Error> {
    // The row's time is always the id's, whichever event (or export) brings it.
    let created_at_ms = snowflake_ms(row.message_id);
    if cutoff.is_some_and(|c| created_at_ms < c) {
        return Ok(false);
    }
    // The common case, a message not seen before: merging a row with nothing is the row
    // itself (without text if it is a tombstone), so one insert does it, with no read.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO message_cache (guild_id, message_id, channel_id, author_id,
                                        created_at_ms, content, content_version, deleted_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (guild_id, message_id) DO NOTHING",
        )?
        .execute(params![
            guild.0,
            row.message_id,
            row.channel_id,
            row.author_id,
            created_at_ms,
            row.content
                .as_deref()
                .filter(|_| row.deleted_at_ms.is_none()),
            row.content_version,
            row.deleted_at_ms,
        ])?;
    if inserted > 0 {
        return Ok(true);
    }
    let mut incoming = row.clone();
    incoming.created_at_ms = created_at_ms;
    // Known already: merge with what is there. The writer owns the only write connection,
    // so read-merge-write is atomic.
    let old = cached_message(conn, guild, incoming.message_id)?;
    let merged = match &old {
        Some(old) => merge_rows(old, &incoming),
        None => merge_rows(&incoming, &incoming),
    };
    if old.as_ref() == Some(&merged) {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO message_cache (guild_id, message_id, channel_id, author_id,
                                    created_at_ms, content, content_version, deleted_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        guild.0,
        merged.message_id,
        merged.channel_id,
        merged.author_id,
        merged.created_at_ms,
        merged.content,
        merged.content_version,
        merged.deleted_at_ms,
    ])?;
    Ok(true)
}

/// The merge of two states of one message: commutative, associative and idempotent, so any
/// order of any number of events gives one result.
pub(crate) fn merge_rows(a: &CachedMessage, b: &CachedMessage) -> CachedMessage {
    let deleted_at_ms = match (a.deleted_at_ms, b.deleted_at_ms) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    // The highest (version, text) wins; a row without text loses to one with text.
    let best = |m: &CachedMessage| m.content.as_ref().map(|c| (m.content_version, c.clone()));
    let content = if deleted_at_ms.is_some() {
        None
    } else {
        best(a).max(best(b)).map(|(_, c)| c)
    };
    CachedMessage {
        message_id: a.message_id,
        // Immutable facts: every event carries the same value; min only makes a disagreement
        // deterministic.
        channel_id: a.channel_id.min(b.channel_id),
        author_id: match (a.author_id, b.author_id) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        },
        content,
        content_version: a.content_version.max(b.content_version),
        created_at_ms: a.created_at_ms.min(b.created_at_ms),
        deleted_at_ms,
    }
}

/// Drops cache rows older than `cutoff`; returns how many.
pub(crate) fn purge(conn: &Connection, cutoff: u64) -> Result<usize, Error> {
    Ok(conn
        .prepare_cached("DELETE FROM message_cache WHERE created_at_ms < ?1")?
        .execute([cutoff])?)
}

const COLUMNS: &str = "message_id, channel_id, author_id, content, content_version, \
                       created_at_ms, deleted_at_ms";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CachedMessage> {
    Ok(CachedMessage {
        message_id: r.get(0)?,
        channel_id: r.get(1)?,
        author_id: r.get(2)?,
        content: r.get(3)?,
        content_version: r.get(4)?,
        created_at_ms: r.get(5)?,
        deleted_at_ms: r.get(6)?,
    })
}

/// One cached message.
pub(crate) fn cached_message(
    conn: &Connection,
    guild: GuildId,
    message_id: u64,
) -> Result<Option<CachedMessage>, Error> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM message_cache WHERE guild_id = ?1 AND message_id = ?2"
        ))?
        .query_row(params![guild.0, message_id], from_row)
        .optional()?)
}

/// The known messages among `ids`, in id order.
pub(crate) fn cached_messages(
    conn: &Connection,
    guild: GuildId,
    ids: &[u64],
) -> Result<Vec<CachedMessage>, Error> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(m) = cached_message(conn, guild, *id)? {
            out.push(m);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every cache row of a guild, by message id.
pub(crate) fn export(conn: &Connection, guild: GuildId) -> Result<Vec<CachedMessage>, Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM message_cache WHERE guild_id = ?1 ORDER BY message_id"
    ))?;
    let rows = stmt
        .query_map([guild.0], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_state(rng: &mut impl Rng) -> CachedMessage {
        let deleted = rng.gen_bool(0.3);
        CachedMessage {
            message_id: 7,
            channel_id: rng.gen_range(1..3),
            author_id: rng.gen_bool(0.5).then(|| rng.gen_range(1..3)),
            // Reachable states only: every create and edit carries text, a delete drops it.
            content: (!deleted).then(|| ["a", "b", "c"][rng.gen_range(0..3)].into()),
            content_version: rng.gen_range(0..3),
            created_at_ms: 100,
            deleted_at_ms: deleted.then(|| rng.gen_range(1..4)),
        }
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..5_000 {
            let (a, b, c) = (
                random_state(&mut rng),
                random_state(&mut rng),
                random_state(&mut rng),
            );
            let ab = merge_rows(&a, &b);
            assert_eq!(ab, merge_rows(&b, &a), "commutative: {a:?} {b:?}");
            assert_eq!(
                merge_rows(&ab, &c),
                merge_rows(&a, &merge_rows(&b, &c)),
                "associative"
            );
            assert_eq!(merge_rows(&ab, &b), ab, "idempotent");
        }
    }

    #[test]
    fn a_deleted_message_never_holds_content() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for _ in 0..1_000 {
            let merged = merge_rows(&random_state(&mut rng), &random_state(&mut rng));
            assert!(merged.deleted_at_ms.is_none() || merged.content.is_none());
        }
    }
}
