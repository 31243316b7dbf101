//! Pod-level metadata: small key/value facts about the pod rather than a guild (the topology it
//! last ran under, the message-cache purge cutoff).

use rusqlite::{params, Connection, OptionalExtension};

use super::Error;

/// Keys under this prefix belong to the store itself; [`super::Write::SetMeta`] refuses them.
pub const RESERVED_PREFIX: &str = "store.";

/// The key under which the message-cache purge cutoff (Unix ms) is kept. Reserved for the store.
pub const PURGE_CUTOFF_KEY: &str = "store.message_cache_purged_before_ms";

pub(crate) fn get(conn: &Connection, key: &str) -> Result<Option<String>, Error> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Sets a value; returns whether it changed.
pub(crate) fn set(conn: &Connection, key: &str, value: &str) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value",
        )?
        .execute(params![key, value])?;
    Ok(n > 0)
}

/// The recorded purge cutoff, if any purge ran.
pub(crate) fn purge_cutoff(conn: &Connection) -> Result<Option<u64>, Error> {
    Ok(get(conn, PURGE_CUTOFF_KEY)?.and_then(|v| v.parse().ok()))
}
