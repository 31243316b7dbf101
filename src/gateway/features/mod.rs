//! The bot's gateway-side features (DESIGN §5), one file each. Every function here runs only
//! for events that passed the ownership filter, and every write goes through the store's
//! batched writer as an idempotent, order-independent upsert. Messages the bot posts are queued
//! in the store's outbox in the same transaction, under a key derived from the event, so a
//! replayed event can never post twice.

pub mod activity;
pub mod deletion_log;
pub mod dm_help;
pub mod members;
pub mod modlog;

use std::time::{SystemTime, UNIX_EPOCH};

use serenity::model::event::Event;

use crate::gateway::pod::Pod;
use crate::ownership::GuildId;
pub use crate::store::snowflake_ms;

/// Why a feature could not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The database refused or failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
}

/// Hands an owned event to the feature that handles it.
pub async fn dispatch(pod: &Pod, event: Event) -> Result<(), FeatureError> {
    match event {
        Event::GuildCreate(e) => {
            pod.guild_seen(GuildId(e.guild.id.get()), true);
            Ok(())
        }
        Event::GuildDelete(e) => {
            // `unavailable` means an outage, not that the bot left: keep the guild.
            if !e.guild.unavailable {
                pod.guild_seen(GuildId(e.guild.id.get()), false);
            }
            Ok(())
        }
        Event::MessageCreate(e) => match e.message.guild_id {
            Some(guild) => activity::on_message(pod, GuildId(guild.get()), &e.message).await,
            None => dm_help::on_direct_message(pod, &e.message).await,
        },
        Event::MessageUpdate(e) => deletion_log::on_update(pod, &e).await,
        Event::MessageDelete(e) => deletion_log::on_delete(pod, &e).await,
        Event::MessageDeleteBulk(e) => deletion_log::on_bulk_delete(pod, &e).await,
        Event::GuildMemberAdd(e) => members::on_join(pod, &e.member).await,
        Event::GuildMemberRemove(e) => members::on_leave(pod, &e).await,
        Event::GuildAuditLogEntryCreate(e) => modlog::on_audit_entry(pod, &e).await,
        _ => Ok(()),
    }
}

/// The dispatches [`dispatch`] acts on: a connector routes these to their owner and
/// acknowledges every other kind on receipt (nothing reads them).
pub const HANDLED: &[&str] = &[
    "GUILD_CREATE",
    "GUILD_DELETE",
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "MESSAGE_DELETE_BULK",
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_AUDIT_LOG_ENTRY_CREATE",
];

/// Whether [`dispatch`] acts on dispatches named `kind`.
pub fn handles(kind: &str) -> bool {
    HANDLED.contains(&kind)
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A serenity timestamp as Unix milliseconds.
pub fn timestamp_ms(ts: &serenity::model::Timestamp) -> u64 {
    // Discord timestamps are after 2015; a negative one is malformed and maps to 0.
    u64::try_from(ts.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Cuts `text` to at most `max` characters, marking the cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}
