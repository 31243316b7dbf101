//! The retention task: every pod, on start and then every `RETENTION_INTERVAL_SECONDS`,
//! deletes the rows that are only kept for a while, sent outbox rows and DM-help records older
//! than `RETENTION_DAYS` ([`crate::store::Write::Prune`]). Without it both tables grow with
//! every post and every DM for the life of the pod.
//!
//! Every pod runs it, not only ordinal 0: each pod's outbox holds the posts of its own guilds.
//! The delete is idempotent, so a run cut short by a restart is simply done again.

use std::future::Future;

use tracing::{debug, info, warn};

use crate::config::Retention;
use crate::gateway::features::now_ms;
use crate::store::{Store, Write};

/// Prunes once now and then every `retention.every` until `stop`.
pub async fn run(store: Store, retention: Retention, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        match prune(&store, retention, now_ms()).await {
            Ok(0) => debug!("retention: nothing to delete"),
            Ok(rows) => info!(
                rows,
                keep_days = retention.keep.as_secs() / 86_400,
                "retention: deleted sent outbox rows and DM-help records"
            ),
            // The next run tries again; nothing is lost by waiting.
            Err(err) => warn!(cause = %err, "retention: deleting old rows failed"),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(retention.every) => {}
        }
    }
}

/// Deletes what is older than `retention.keep` before `now_ms`; returns how many rows.
///
/// # Errors
/// What the store says when the delete fails.
pub async fn prune(
    store: &Store,
    retention: Retention,
    now_ms: u64,
) -> Result<usize, crate::store::Error> {
    let keep_ms = u64::try_from(retention.keep.as_millis()).unwrap_or(u64::MAX);
    let applied = store
        .apply(Write::Prune {
            older_than_ms: now_ms.saturating_sub(keep_ms),
        })
        .await?;
    Ok(applied.pruned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails on any unexpected error
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::shutdown::Shutdown;
    use crate::store::{first_snowflake_at, utc_day, OutboxMessage};

    const DAY_MS: u64 = 86_400_000;

    fn dm(user: u64, day: i64) -> Write {
        Write::DmHelp {
            user_id: user,
            channel_id: user * 10,
            day,
            outbox: vec![OutboxMessage {
                key: format!("dm:{user}:{day}"),
                guild_id: None,
                channel_id: user * 10,
                body: serde_json::json!({"content": "help"}),
            }],
        }
    }

    /// `(dm_help rows, outbox rows)` as a separate connection sees them.
    fn counts(path: &std::path::Path) -> (i64, i64) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        (count("dm_help"), count("outbox"))
    }

    #[tokio::test]
    async fn the_task_prunes_at_start_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.db");
        let store = Store::open(&path).await.unwrap();
        let now = now_ms();
        // An old DM answered and sent, and today's DM not sent yet.
        let old_day = utc_day(now - 40 * DAY_MS);
        store.apply(dm(1, old_day)).await.unwrap();
        store
            .apply(Write::OutboxSent {
                key: format!("dm:1:{old_day}"),
                message_id: first_snowflake_at(now - 40 * DAY_MS),
            })
            .await
            .unwrap();
        store.apply(dm(2, utc_day(now))).await.unwrap();
        assert_eq!(counts(&path), (2, 2));

        let retention = Retention {
            keep: Duration::from_secs(30 * 86_400),
            every: Duration::from_secs(3600),
        };
        let stop = Shutdown::new();
        let task = tokio::spawn(run(store.clone(), retention, stop.cancelled()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while counts(&path) != (1, 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not pruned at start: {:?}",
                counts(&path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .unwrap();
        store.close().await.unwrap();
    }
}
