//! Mod actions seen on the gateway: bans, unbans and timeouts arrive as audit-log entries
//! (each with its own snowflake, so replays are recognised) and are recorded and posted to the
//! guild's mod-log channel.

use serenity::model::event::GuildAuditLogEntryCreateEvent;
use serenity::model::guild::audit_log::{Action, Change, MemberAction};

use crate::gateway::features::deletion_log::log_body;
use crate::gateway::features::{excerpt, snowflake_ms, timestamp_ms, FeatureError};
use crate::gateway::pod::Pod;
use crate::gateway::reads;
use crate::ownership::GuildId;
use crate::store::{ModActionKind, OutboxMessage, Write};

/// Records a ban, unban or timeout from its audit-log entry; other entries are ignored.
pub async fn on_audit_entry(
    pod: &Pod,
    event: &GuildAuditLogEntryCreateEvent,
) -> Result<(), FeatureError> {
    let entry = &event.entry;
    let kind = match entry.action {
        Action::Member(MemberAction::BanAdd) => ModActionKind::Ban,
        Action::Member(MemberAction::BanRemove) => ModActionKind::Unban,
        Action::Member(MemberAction::Update) => {
            let timeout = entry.changes.iter().flatten().find_map(|c| match c {
                Change::CommunicationDisabledUntil { new, .. } => Some(new),
                _ => None,
            });
            match timeout {
                Some(Some(until)) => ModActionKind::Timeout {
                    until_ms: timestamp_ms(until),
                },
                Some(None) => ModActionKind::TimeoutRemoved,
                // A member update that is not about a timeout (nickname, roles...).
                None => return Ok(()),
            }
        }
        _ => return Ok(()),
    };
    let Some(target) = entry.target_id else {
        return Ok(());
    };
    let guild = GuildId(event.guild_id.get());
    let (entry_id, target_id, executor_id) = (entry.id.get(), target.get(), entry.user_id.get());
    let settings = reads::settings(pod, guild).await?;
    let outbox: Vec<OutboxMessage> = settings
        .mod_log_channel
        .map(|channel| OutboxMessage {
            key: format!("modaction:{entry_id}"),
            guild_id: Some(guild),
            channel_id: channel,
            body: log_body(describe(
                &kind,
                target_id,
                Some(executor_id),
                entry.reason.as_deref(),
            )),
        })
        .into_iter()
        .collect();
    let queued = !outbox.is_empty();
    pod.store
        .apply(Write::ModAction {
            guild_id: guild,
            entry_id,
            kind,
            target_id,
            executor_id: Some(executor_id),
            reason: entry.reason.clone(),
            at_ms: snowflake_ms(entry_id),
            outbox,
        })
        .await?;
    if queued {
        pod.outbox_wake.notify_one();
    }
    Ok(())
}

/// The mod-log line for an action.
pub fn describe(
    kind: &ModActionKind,
    target: u64,
    executor: Option<u64>,
    reason: Option<&str>,
) -> String {
    let what = match kind {
        ModActionKind::Ban => "🔨 **Ban**".to_owned(),
        ModActionKind::Unban => "🕊️ **Unban**".to_owned(),
        ModActionKind::Timeout { until_ms } => {
            format!("⏳ **Timeout** until <t:{}:f>", until_ms / 1000)
        }
        ModActionKind::TimeoutRemoved => "⏳ **Timeout removed**".to_owned(),
    };
    let reason = reason.map_or_else(|| "no reason given".to_owned(), |r| excerpt(r, 500));
    let by = executor.map_or_else(|| "an unknown moderator".to_owned(), |e| format!("<@{e}>"));
    format!("{what}: <@{target}> by {by} ({reason})")
}
