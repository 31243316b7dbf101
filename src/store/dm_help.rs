//! DM help replies: at most one per user per UTC day (ordinal 0 answers DMs). No guild data.
//!
//! Merge rule: keyed by (user, day), `INSERT OR IGNORE`; the first insert of the day is the one
//! that says "reply". A record only matters on its own day, so [`prune`] deletes the days older
//! than the retention.

use rusqlite::{params, Connection};

use super::Error;

/// Records a help reply; returns whether it is the user's first today.
pub(crate) fn record(conn: &Connection, user: u64, channel: u64, day: i64) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO dm_help (user_id, day, channel_id) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![user, day, channel])?;
    Ok(n > 0)
}

/// Deletes the records of days before `before_day`; returns how many.
pub(crate) fn prune(conn: &Connection, before_day: i64) -> Result<usize, Error> {
    let n = conn
        .prepare_cached("DELETE FROM dm_help WHERE day < ?1")?
        .execute([before_day])?;
    Ok(n)
}
