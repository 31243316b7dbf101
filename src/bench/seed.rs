//! Synthetic guild data for the benchmarks that need databases holding realistic rows before
//! anything runs (`rescale`, `failover`).

use futures::StreamExt;
use rand::Rng;

use crate::ownership::GuildId;
use crate::store::{
    ActivityRow, CachedMessage, GuildExport, MemberEvent, Store, Write, EXPORT_FORMAT_VERSION,
};

/// Counted messages per guild (each also in the message cache).
pub const MESSAGES_PER_GUILD: u64 = 20;
/// Joins per guild (and one leave).
pub const JOINS_PER_GUILD: u64 = 5;
/// Rows per guild.
pub const ROWS_PER_GUILD: u64 = 2 * MESSAGES_PER_GUILD + JOINS_PER_GUILD + 1;

/// A small, active guild's week: messages (counted and cached), joins and a leave.
pub fn synthetic_guild(rng: &mut impl Rng, guild: GuildId, now_ms: u64) -> GuildExport {
    const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
    const WEEK_MS: u64 = 6 * 24 * 3600 * 1000;
    let snowflake = |ms: u64, seq: u64| ((ms - DISCORD_EPOCH_MS) << 22) | (seq & 0x3f_ffff);
    let channel = rng.gen_range(1u64 << 40..1u64 << 50);
    let members: Vec<u64> = (0..JOINS_PER_GUILD)
        .map(|_| rng.gen_range(1u64 << 40..1u64 << 50))
        .collect();
    let mut activity = Vec::new();
    let mut message_cache = Vec::new();
    for i in 0..MESSAGES_PER_GUILD {
        let at = now_ms - rng.gen_range(0..WEEK_MS);
        let id = snowflake(at, rng.gen::<u64>() ^ i);
        let author = members[(i as usize) % members.len()];
        let length = rng.gen_range(5..120);
        activity.push(ActivityRow {
            message_id: id,
            channel_id: channel,
            author_id: author,
            created_at_ms: (id >> 22) + DISCORD_EPOCH_MS,
            length,
        });
        message_cache.push(CachedMessage {
            message_id: id,
            channel_id: channel,
            author_id: Some(author),
            content: Some("m".repeat(length as usize)),
            content_version: 0,
            created_at_ms: (id >> 22) + DISCORD_EPOCH_MS,
            deleted_at_ms: None,
        });
    }
    activity.sort();
    message_cache.sort_by_key(|m| m.message_id);
    let joined = |i: usize| MemberEvent {
        user_id: members[i],
        at_ms: now_ms - WEEK_MS + i as u64 * 1000,
    };
    GuildExport {
        format_version: EXPORT_FORMAT_VERSION,
        guild_id: guild,
        activity,
        message_cache,
        member_joins: (0..members.len()).map(joined).collect(),
        member_leaves: vec![MemberEvent {
            user_id: members[0],
            at_ms: now_ms - 3600 * 1000,
        }],
        mod_actions: vec![],
        reports: vec![],
        settings: None,
        outbox: vec![],
    }
}

/// Imports `exports` into `store`, many at once so they share commits (group commit).
///
/// # Errors
/// The first import that failed.
pub async fn import_all(
    store: &Store,
    exports: Vec<GuildExport>,
) -> Result<(), crate::store::Error> {
    let failures = futures::stream::iter(exports)
        .map(|export| async move { store.apply(Write::ImportGuild(export)).await.err() })
        .buffer_unordered(256)
        .filter_map(|e| async move { e })
        .collect::<Vec<_>>()
        .await;
    failures.into_iter().next().map_or(Ok(()), Err)
}
