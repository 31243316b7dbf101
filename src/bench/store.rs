//! The `store` scenario: rows/s through the batched writer (many concurrent
//! [`Store::apply`] calls of [`Write::MessageCreated`], as a busy pod's event handlers make
//! them), then export and import rows/s for the one large guild those writes built.
//!
//! Each run uses fresh database files, so runs do not warm each other up. The databases run
//! with SQLite's own auto-checkpoint (`litestream_checkpoints: false`): no Litestream runs here
//! to checkpoint the WAL, and without one the WAL would only grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{median, per_sec, spread, Error, Options, Row, Scratch};
use crate::ownership::GuildId;
use crate::reshard::plan::DISCORD_EPOCH_MS;
use crate::store::{Store, StoreOptions, Write};

/// Concurrent writers: about what a pod's event tasks put in flight under load.
const WRITERS: usize = 64;

/// Measures.
///
/// # Errors
/// Scratch files, or the store refusing a write.
pub(crate) async fn run(options: &Options) -> Result<Vec<Row>, Error> {
    let messages: u64 = if options.quick { 500 } else { 100_000 };
    let runs = options.runs.max(1);
    let (mut write, mut export, mut import) = (vec![], vec![], vec![]);
    let mut rows_moved = 0;
    let mut commits = vec![];
    for _ in 0..runs {
        let scratch = Scratch::new(options, "store")?;
        let one = run_once(scratch.path(), messages).await?;
        write.push(one.write_rows_per_s);
        export.push(one.export_rows_per_s);
        import.push(one.import_rows_per_s);
        commits.push(one.writes_per_commit);
        rows_moved = one.guild_rows;
    }
    let rate = |v: f64| per_sec(v);
    Ok(vec![
        Row::new(
            format!("writer: MessageCreated, {WRITERS} concurrent callers, {messages} messages"),
            per_sec(median(&write)),
            format!(
                "writes committed per second (each acknowledged after commit); {:.0} writes/commit; {}",
                median(&commits),
                spread(&write, rate)
            ),
        ),
        Row::new(
            format!("export_guild: one guild, {rows_moved} rows"),
            per_sec(median(&export)),
            format!("rows/s (activity + message cache); {}", spread(&export, rate)),
        ),
        Row::new(
            format!("import_guild into an empty store: {rows_moved} rows"),
            per_sec(median(&import)),
            format!("rows/s, one idempotent-merge write; {}", spread(&import, rate)),
        ),
    ])
}

struct Once {
    write_rows_per_s: f64,
    writes_per_commit: f64,
    export_rows_per_s: f64,
    import_rows_per_s: f64,
    guild_rows: usize,
}

async fn run_once(dir: &std::path::Path, messages: u64) -> Result<Once, Error> {
    let opts = StoreOptions {
        litestream_checkpoints: false,
        ..StoreOptions::default()
    };
    let source = Store::open_with(dir.join("source.db"), opts).await?;
    let guild = GuildId(1_100_000_000_000_000_000);
    // Message times are now (minus a little per message) so the 7-day content purge keeps them.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let before = source.writer_stats();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let store = source.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    return Ok::<(), crate::store::Error>(());
                }
                let at = now_ms - (messages - i);
                let message_id = ((at - DISCORD_EPOCH_MS) << 22) | (i & 0x3f_ffff);
                store
                    .apply(Write::MessageCreated {
                        guild_id: guild,
                        channel_id: 1_100_000_000_000_000_001 + i % 8,
                        message_id,
                        author_id: 1_100_000_000_000_001_000 + i % 500,
                        author_is_bot: false,
                        content: "a typical message of a few words, about sixty chars".into(),
                        created_at_ms: at,
                        outbox: vec![],
                    })
                    .await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Error::Measure(format!("writer task: {e}")))??;
    }
    let write_secs = start.elapsed().as_secs_f64();
    let after = source.writer_stats();
    let commits = after.commits.saturating_sub(before.commits).max(1);

    let start = Instant::now();
    let export = source.export_guild(guild).await?;
    let export_secs = start.elapsed().as_secs_f64();
    let guild_rows = export.rows();
    source.close().await?;

    let target = Store::open_with(dir.join("target.db"), opts).await?;
    let start = Instant::now();
    target.apply(Write::ImportGuild(export)).await?;
    let import_secs = start.elapsed().as_secs_f64();
    target.close().await?;

    Ok(Once {
        write_rows_per_s: messages as f64 / write_secs,
        writes_per_commit: messages as f64 / commits as f64,
        export_rows_per_s: guild_rows as f64 / export_secs,
        import_rows_per_s: guild_rows as f64 / import_secs,
        guild_rows,
    })
}
