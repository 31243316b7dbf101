//! Activity: counted messages and member joins/leaves, and the `/stats`, `/leaderboard` and
//! `/stats server` queries over them.
//!
//! Merge rules:
//! - A message is counted once, keyed by (guild, message id); `INSERT OR IGNORE` (a message's
//!   author, channel, time and length never change). Deleting a message does not uncount it.
//! - Joins and leaves are two sets of facts: a join keyed by (guild, user, joined_at), a leave by
//!   (guild, user, left_at). Sets merge by union, so any order, replay or import converges.
//! - Counting (the "membership" rule): a user's joins and leaves are put in time order (a join
//!   before a leave at the same instant). Every join counts on its day. A leave counts on its
//!   day when it closes a membership: when the event before it is a join, or when there is none
//!   (the member joined before we saw them). A leave right after another leave is the same
//!   departure seen twice (two pods saw it during a rollout, each stamping its own receive time)
//!   and does not count. A leave that arrives before its join is stored all the same and takes
//!   its place by time once the join arrives.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::{first_snowflake_at, utc_date, Error};
use crate::ownership::GuildId;

/// One counted message as exported.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActivityRow {
    /// The message.
    pub message_id: u64,
    /// Its channel.
    pub channel_id: u64,
    /// Its author.
    pub author_id: u64,
    /// Its time.
    pub created_at_ms: u64,
    /// Its length in chars.
    pub length: u64,
}

/// A user's activity (`/stats user`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStats {
    /// Messages counted.
    pub messages: u64,
    /// Distinct channels written in.
    pub channels: u64,
    /// The first counted message's time.
    pub first_message_ms: Option<u64>,
    /// The last counted message's time.
    pub last_message_ms: Option<u64>,
}

/// One UTC day of `/stats server`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayStats {
    /// Days since 1970-01-01.
    pub day: i64,
    /// The same day as `YYYY-MM-DD`.
    pub date: String,
    /// Messages counted that day.
    pub messages: u64,
    /// Members who joined that day.
    pub joined: u64,
    /// Members who left that day.
    pub left: u64,
}

/// Counts a message; returns whether it was new.
pub(crate) fn insert_message(
    conn: &Connection,
    guild: GuildId,
    row: &ActivityRow,
) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO activity
                 (guild_id, message_id, channel_id, author_id, created_at_ms, length)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            guild.0,
            row.message_id,
            row.channel_id,
            row.author_id,
            row.created_at_ms,
            row.length
        ])?;
    Ok(n > 0)
}

/// Records a join; returns whether it was new.
pub(crate) fn insert_join(
    conn: &Connection,
    guild: GuildId,
    user: u64,
    at_ms: u64,
) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO member_joins (guild_id, user_id, joined_at_ms)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![guild.0, user, at_ms])?;
    Ok(n > 0)
}

/// Records a leave; returns whether it was new.
pub(crate) fn insert_leave(
    conn: &Connection,
    guild: GuildId,
    user: u64,
    at_ms: u64,
) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO member_leaves (guild_id, user_id, left_at_ms)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![guild.0, user, at_ms])?;
    Ok(n > 0)
}

pub(crate) fn user_stats(
    conn: &Connection,
    guild: GuildId,
    user: u64,
    since_ms: u64,
) -> Result<UserStats, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*), count(DISTINCT channel_id), min(created_at_ms), max(created_at_ms)
             FROM activity WHERE guild_id = ?1 AND author_id = ?2 AND created_at_ms >= ?3",
        )?
        .query_row(params![guild.0, user, since_ms], |r| {
            Ok(UserStats {
                messages: r.get(0)?,
                channels: r.get(1)?,
                first_message_ms: r.get(2)?,
                last_message_ms: r.get(3)?,
            })
        })?)
}

pub(crate) fn leaderboard(
    conn: &Connection,
    guild: GuildId,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<(u64, u64)>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT author_id, count(*) AS n FROM activity
         WHERE guild_id = ?1 AND message_id >= ?2
         GROUP BY author_id ORDER BY n DESC, author_id ASC LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![guild.0, first_snowflake_at(since_ms), limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(crate) fn server_stats(
    conn: &Connection,
    guild: GuildId,
    since_ms: u64,
) -> Result<Vec<DayStats>, Error> {
    use std::collections::BTreeMap;
    let mut days: BTreeMap<i64, (u64, u64, u64)> = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT created_at_ms / 86400000 AS day, count(*) FROM activity
             WHERE guild_id = ?1 AND message_id >= ?2 GROUP BY day",
        )?;
        let mut rows = stmt.query(params![guild.0, first_snowflake_at(since_ms)])?;
        while let Some(r) = rows.next()? {
            days.entry(r.get(0)?).or_default().0 = r.get(1)?;
        }
    }
    {
        // The membership rule of the module doc; the window runs over the whole history so a
        // leave just after `since_ms` still sees the join before it.
        let mut stmt = conn.prepare_cached(
            "WITH ev AS (
                 SELECT user_id, joined_at_ms AS t, 0 AS kind FROM member_joins WHERE guild_id = ?1
                 UNION ALL
                 SELECT user_id, left_at_ms, 1 FROM member_leaves WHERE guild_id = ?1
             ), seq AS (
                 SELECT t, kind, lag(kind) OVER (PARTITION BY user_id ORDER BY t, kind) AS prev
                 FROM ev
             )
             SELECT t / 86400000 AS day,
                    sum(kind = 0),
                    sum(kind = 1 AND (prev IS NULL OR prev = 0))
             FROM seq WHERE t >= ?2 GROUP BY day",
        )?;
        let mut rows = stmt.query(params![guild.0, since_ms])?;
        while let Some(r) = rows.next()? {
            let entry = days.entry(r.get(0)?).or_default();
            entry.1 = r.get(1)?;
            entry.2 = r.get(2)?;
        }
    }
    Ok(days
        .into_iter()
        .filter(|(_, (m, j, l))| m + j + l > 0)
        .map(|(day, (messages, joined, left))| DayStats {
            day,
            date: utc_date(day),
            messages,
            joined,
            left,
        })
        .collect())
}

pub(crate) fn message_ids(conn: &Connection, guild: GuildId) -> Result<Vec<u64>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT message_id FROM activity WHERE guild_id = ?1 ORDER BY message_id",
    )?;
    let ids = stmt
        .query_map([guild.0], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

pub(crate) fn export_messages(
    conn: &Connection,
    guild: GuildId,
) -> Result<Vec<ActivityRow>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT message_id, channel_id, author_id, created_at_ms, length FROM activity
         WHERE guild_id = ?1 ORDER BY message_id",
    )?;
    let rows = stmt
        .query_map([guild.0], |r| {
            Ok(ActivityRow {
                message_id: r.get(0)?,
                channel_id: r.get(1)?,
                author_id: r.get(2)?,
                created_at_ms: r.get(3)?,
                length: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// `(user_id, at_ms)` pairs of a guild's joins or leaves, ordered.
pub(crate) fn export_members(
    conn: &Connection,
    guild: GuildId,
    leaves: bool,
) -> Result<Vec<(u64, u64)>, Error> {
    let sql = if leaves {
        "SELECT user_id, left_at_ms FROM member_leaves WHERE guild_id = ?1 ORDER BY user_id, left_at_ms"
    } else {
        "SELECT user_id, joined_at_ms FROM member_joins WHERE guild_id = ?1 ORDER BY user_id, joined_at_ms"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map([guild.0], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
