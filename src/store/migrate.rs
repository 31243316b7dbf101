//! Embedded schema migrations: numbered `migrations/NNNN_*.sql` files applied in order at open,
//! each in its own transaction, recorded in `schema_migrations` and `PRAGMA user_version`.
//!
//! Re-running is a no-op. A database whose `user_version` is newer than the newest embedded
//! migration was written by a newer binary and is refused ([`Error::SchemaTooNew`]): an older
//! binary would not know the newer tables' merge rules and could lose data.

use rusqlite::{params, Connection};

use super::Error;

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its number; `user_version` after it is applied.
    pub version: i64,
    /// The file name without `.sql`.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order. Add a file to `migrations/` and a line here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_activity_time_from_ids",
        sql: include_str!("../../migrations/0002_activity_time_from_ids.sql"),
    },
];

/// The newest schema version this binary knows.
pub fn supported_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Fails with [`Error::SchemaTooNew`] if the database is newer than this binary.
///
/// # Errors
/// [`Error::SchemaTooNew`], or [`Error::Sqlite`] if the version cannot be read.
pub fn check_version(conn: &Connection) -> Result<i64, Error> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = supported_version();
    if found > supported {
        return Err(Error::SchemaTooNew { found, supported });
    }
    Ok(found)
}

/// Applies every migration newer than the database's `user_version`; returns how many ran.
///
/// # Errors
/// [`Error::SchemaTooNew`] for a newer database, [`Error::Sqlite`] if a migration fails (that
/// migration is rolled back; earlier ones stay).
pub fn migrate(conn: &mut Connection) -> Result<usize, Error> {
    let current = check_version(conn)?;
    let mut ran = 0;
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version       INTEGER PRIMARY KEY NOT NULL,
                 name          TEXT NOT NULL,
                 applied_at_ms INTEGER NOT NULL
             )",
        )?;
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_ms()],
        )?;
        // user_version lives in the database header, which is part of the transaction.
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        ran += 1;
    }
    Ok(ran)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails on any unexpected error
mod tests {
    use super::*;

    #[test]
    fn every_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, embedded);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "versions are 1, 2, 3, ...");
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn migrate_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        let recorded: i64 = conn
            .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(recorded, MIGRATIONS.len() as i64);
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        match migrate(&mut conn) {
            Err(Error::SchemaTooNew { found, supported }) => {
                assert_eq!(found, 999);
                assert_eq!(supported, supported_version());
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}
