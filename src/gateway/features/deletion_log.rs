//! The deletion log: edits keep the short-lived message cache current, and deleted messages
//! (single and bulk) are posted to the guild's deletion-log channel from that cache.

use serde_json::json;
use serenity::model::event::{MessageDeleteBulkEvent, MessageDeleteEvent, MessageUpdateEvent};

use crate::gateway::features::{excerpt, now_ms, timestamp_ms, FeatureError};
use crate::gateway::pod::Pod;
use crate::gateway::reads;
use crate::ownership::GuildId;
use crate::store::{OutboxMessage, Write};

/// Longest content quoted in a deletion-log line (Discord allows 2000 characters a message).
const QUOTE_MAX: usize = 1500;
/// At most this many messages are quoted in a bulk-delete post.
const BULK_QUOTED: usize = 10;

/// Keeps the cached content of an edited message (newest edit wins, in any order).
pub async fn on_update(pod: &Pod, event: &MessageUpdateEvent) -> Result<(), FeatureError> {
    let (Some(guild), Some(content)) = (event.guild_id, event.content.as_ref()) else {
        return Ok(());
    };
    let edited_at_ms = event
        .edited_timestamp
        .as_ref()
        .map_or_else(now_ms, timestamp_ms);
    pod.store
        .apply(Write::MessageUpdated {
            guild_id: GuildId(guild.get()),
            channel_id: event.channel_id.get(),
            message_id: event.id.get(),
            content: content.clone(),
            edited_at_ms,
            outbox: Vec::new(),
        })
        .await?;
    Ok(())
}

/// Marks a message deleted and, when the guild has a deletion-log channel and the content is
/// cached, queues one post about it.
pub async fn on_delete(pod: &Pod, event: &MessageDeleteEvent) -> Result<(), FeatureError> {
    let Some(guild) = event.guild_id else {
        return Ok(());
    };
    let (guild, message) = (GuildId(guild.get()), event.message_id.get());
    let settings = reads::settings(pod, guild).await?;
    let mut outbox = Vec::new();
    if let Some(log_channel) = settings.deletion_log_channel {
        if let Some(cached) = reads::cached_message(pod, guild, message).await? {
            if let Some(content) = cached.content.as_deref() {
                outbox.push(OutboxMessage {
                    key: format!("deleted:{message}"),
                    guild_id: Some(guild),
                    channel_id: log_channel,
                    body: log_body(format!(
                        "🗑️ Message by {} deleted in <#{}>:\n>>> {}",
                        author(cached.author_id),
                        event.channel_id.get(),
                        excerpt(content, QUOTE_MAX)
                    )),
                });
            }
        }
    }
    let queued = !outbox.is_empty();
    pod.store
        .apply(Write::MessageDeleted {
            guild_id: guild,
            channel_id: event.channel_id.get(),
            message_id: message,
            deleted_at_ms: now_ms(),
            outbox,
        })
        .await?;
    if queued {
        pod.outbox_wake.notify_one();
    }
    Ok(())
}

/// Marks every message of a bulk delete deleted and queues one summary post.
pub async fn on_bulk_delete(pod: &Pod, event: &MessageDeleteBulkEvent) -> Result<(), FeatureError> {
    let Some(guild) = event.guild_id else {
        return Ok(());
    };
    let guild = GuildId(guild.get());
    let mut ids: Vec<u64> = event.ids.iter().map(|id| id.get()).collect();
    ids.sort_unstable();
    ids.dedup();
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
        return Ok(());
    };
    let settings = reads::settings(pod, guild).await?;
    let mut outbox = Vec::new();
    if let Some(log_channel) = settings.deletion_log_channel {
        let quoted: Vec<u64> = ids.iter().copied().take(BULK_QUOTED).collect();
        let lines: Vec<String> = reads::cached_messages(pod, guild, quoted)
            .await?
            .iter()
            .filter_map(|cached| {
                let content = cached.content.as_deref()?;
                Some(format!(
                    "{}: {}",
                    author(cached.author_id),
                    excerpt(content, 120)
                ))
            })
            .collect();
        let more = ids.len().saturating_sub(lines.len());
        let mut text = format!(
            "🗑️ {} messages bulk-deleted in <#{}>",
            ids.len(),
            event.channel_id.get()
        );
        if !lines.is_empty() {
            text.push_str(":\n>>> ");
            text.push_str(&lines.join("\n"));
        }
        if more > 0 && !lines.is_empty() {
            text.push_str(&format!("\n…and {more} more"));
        }
        outbox.push(OutboxMessage {
            // The same bulk delete replayed has the same ids, hence the same key.
            key: format!("bulk-deleted:{first}:{last}:{}", ids.len()),
            guild_id: Some(guild),
            channel_id: log_channel,
            body: log_body(text),
        });
    }
    let queued = !outbox.is_empty();
    pod.store
        .apply(Write::MessagesBulkDeleted {
            guild_id: guild,
            channel_id: event.channel_id.get(),
            message_ids: ids,
            deleted_at_ms: now_ms(),
            outbox,
        })
        .await?;
    if queued {
        pod.outbox_wake.notify_one();
    }
    Ok(())
}

/// How a log line names a message's author (unknown when only a tombstone was seen).
fn author(author_id: Option<u64>) -> String {
    author_id.map_or_else(|| "an unknown user".to_owned(), |a| format!("<@{a}>"))
}

/// A message body that mentions nobody (log lines name users without pinging them).
pub fn log_body(content: String) -> serde_json::Value {
    json!({ "content": content, "allowed_mentions": { "parse": [] } })
}
