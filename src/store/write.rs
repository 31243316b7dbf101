//! The writes the store accepts ([`Write`]) and what applying one reports ([`Applied`]).
//!
//! Every variant is an idempotent upsert keyed by Discord snowflakes: applying any multiset of
//! writes in any order gives the same rows (the merge rule of each table is documented in the
//! module that owns it).

use serde::{Deserialize, Serialize};

use super::guilds::GuildExport;
use super::moderation::ModActionKind;
use super::outbox::OutboxMessage;
use super::GuildVersion;
use crate::ownership::GuildId;

/// One change to the store. Variants that come from a gateway event or an interaction carry an
/// `outbox`: messages to post, enqueued in the same transaction (`INSERT OR IGNORE` on their
/// key), so a replay of the event never enqueues a second post.
// `ImportGuild` is larger than the rest; a write is boxed once on its way to the writer, so the
// size costs one move, and keeping the export inline keeps the variant as the API names it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Write {
    /// MESSAGE_CREATE: counts the message (non-bot authors) and caches its content (unless a
    /// tombstone says it was already deleted).
    MessageCreated {
        /// The guild.
        guild_id: GuildId,
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
        /// The author.
        author_id: u64,
        /// Bots' messages are cached but not counted.
        author_is_bot: bool,
        /// The text; its length in chars is counted, the text only cached.
        content: String,
        /// The message time (the snowflake time of `message_id`).
        created_at_ms: u64,
        /// Posts caused by this event.
        outbox: Vec<OutboxMessage>,
    },
    /// MESSAGE_UPDATE with content: the cached content is replaced only by a newer edit.
    MessageUpdated {
        /// The guild.
        guild_id: GuildId,
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
        /// The new text.
        content: String,
        /// `edited_timestamp` of the message; the newest edit wins.
        edited_at_ms: u64,
        /// Posts caused by this event.
        outbox: Vec<OutboxMessage>,
    },
    /// MESSAGE_DELETE: marks the cached message deleted and drops its content (a tombstone if
    /// it was never seen). Activity stays.
    MessageDeleted {
        /// The guild.
        guild_id: GuildId,
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
        /// When the delete was seen; the earliest wins.
        deleted_at_ms: u64,
        /// Posts caused by this event (the deletion log, rendered from the cache beforehand).
        outbox: Vec<OutboxMessage>,
    },
    /// MESSAGE_DELETE_BULK: as [`Write::MessageDeleted`] for each id.
    MessagesBulkDeleted {
        /// The guild.
        guild_id: GuildId,
        /// The channel.
        channel_id: u64,
        /// The messages.
        message_ids: Vec<u64>,
        /// When the delete was seen.
        deleted_at_ms: u64,
        /// Posts caused by this event.
        outbox: Vec<OutboxMessage>,
    },
    /// GUILD_MEMBER_ADD: one join, keyed by (guild, user, joined_at).
    MemberJoined {
        /// The guild.
        guild_id: GuildId,
        /// The member.
        user_id: u64,
        /// The member's `joined_at`.
        joined_at_ms: u64,
        /// Posts caused by this event.
        outbox: Vec<OutboxMessage>,
    },
    /// GUILD_MEMBER_REMOVE: one leave, keyed by (guild, user, left_at); see
    /// [`super::activity`] for how leaves are counted.
    MemberLeft {
        /// The guild.
        guild_id: GuildId,
        /// The member.
        user_id: u64,
        /// When the leave was seen.
        left_at_ms: u64,
        /// Posts caused by this event.
        outbox: Vec<OutboxMessage>,
    },
    /// A ban, unban or timeout, keyed by its audit-log entry id.
    ModAction {
        /// The guild.
        guild_id: GuildId,
        /// The audit-log entry (a snowflake).
        entry_id: u64,
        /// What happened.
        kind: ModActionKind,
        /// Who it happened to.
        target_id: u64,
        /// Who did it, if known.
        executor_id: Option<u64>,
        /// The audit-log reason, if any.
        reason: Option<String>,
        /// When (the snowflake time of `entry_id` is a good choice).
        at_ms: u64,
        /// Posts caused by this event (the mod-log post).
        outbox: Vec<OutboxMessage>,
    },
    /// "Report message": unique per (guild, message, reporter). [`Applied::report_count`]
    /// carries the reported user's report count after the write.
    Report {
        /// The guild.
        guild_id: GuildId,
        /// The interaction that reported; the earliest one of duplicates is kept.
        interaction_id: u64,
        /// Who reported.
        reporter_id: u64,
        /// The reported message's channel.
        channel_id: u64,
        /// The reported message.
        message_id: u64,
        /// Its author.
        reported_user_id: u64,
        /// The start of its text.
        content_excerpt: String,
        /// When it was reported.
        at_ms: u64,
        /// Posts caused by this report (the mod-log post). Enqueued only with the first report
        /// of this message by this reporter, so a second report of it posts nothing whatever
        /// its key.
        outbox: Vec<OutboxMessage>,
    },
    /// `/setup`: each channel given is last-writer-wins by `interaction_id`; a `None` channel
    /// leaves that setting as it is.
    Setup {
        /// The guild.
        guild_id: GuildId,
        /// The interaction (snowflakes grow with time, so an old replay never wins).
        interaction_id: u64,
        /// The mod-log channel, if given.
        mod_log_channel: Option<u64>,
        /// The deletion-log channel, if given.
        deletion_log_channel: Option<u64>,
        /// Posts caused by this interaction.
        outbox: Vec<OutboxMessage>,
    },
    /// A DM help reply: at most one per user per UTC day; [`Applied::changed`] says whether
    /// this is the first today (only then should the reply be sent).
    DmHelp {
        /// The user.
        user_id: u64,
        /// The DM channel.
        channel_id: u64,
        /// The UTC day ([`super::utc_day`]).
        day: i64,
        /// The reply to post (enqueued only with the first help of the day, because its key
        /// should name the user and day).
        outbox: Vec<OutboxMessage>,
    },
    /// Marks one outbox row sent (the first message id recorded stays).
    OutboxSent {
        /// The outbox key.
        key: String,
        /// The posted message.
        message_id: u64,
    },
    /// Drops the cached messages created before `older_than_ms` (the deletion log keeps
    /// content 7 days) and ignores later cache writes for them; see [`super::deletions`].
    PurgeMessageContent {
        /// The cutoff (Unix ms); messages whose snowflake time is earlier are dropped.
        older_than_ms: u64,
    },
    /// Deletes what is kept only for a while: outbox rows whose post (the time in the posted
    /// message's snowflake) is older than `older_than_ms`, and DM-help records of UTC days
    /// before it. Unsent outbox rows stay, whatever their age. Idempotent.
    Prune {
        /// The cutoff (Unix ms).
        older_than_ms: u64,
    },
    /// Merges a guild export with the same rules as live writes.
    ImportGuild(GuildExport),
    /// Removes every row of a guild from every guild table.
    DeleteGuild(GuildId),
    /// Removes every row of a guild, but only if nothing of it changed since `version` was
    /// read ([`super::Store::export_guild_versioned`]); otherwise fails with
    /// [`super::Error::GuildChanged`] and changes nothing. The handoff deletes this way, so a
    /// row written after the export is never lost.
    DeleteGuildIfUnchanged {
        /// The guild.
        guild_id: GuildId,
        /// The version the export was taken at.
        version: GuildVersion,
    },
    /// Sets a pod-level metadata value (e.g. the topology the pod runs under).
    SetMeta {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

impl Write {
    /// The guild this write is about, if any.
    pub fn guild_id(&self) -> Option<GuildId> {
        match self {
            Write::MessageCreated { guild_id, .. }
            | Write::MessageUpdated { guild_id, .. }
            | Write::MessageDeleted { guild_id, .. }
            | Write::MessagesBulkDeleted { guild_id, .. }
            | Write::MemberJoined { guild_id, .. }
            | Write::MemberLeft { guild_id, .. }
            | Write::ModAction { guild_id, .. }
            | Write::Report { guild_id, .. }
            | Write::Setup { guild_id, .. }
            | Write::DeleteGuildIfUnchanged { guild_id, .. }
            | Write::DeleteGuild(guild_id) => Some(*guild_id),
            Write::ImportGuild(export) => Some(export.guild_id),
            Write::DmHelp { .. }
            | Write::OutboxSent { .. }
            | Write::PurgeMessageContent { .. }
            | Write::Prune { .. }
            | Write::SetMeta { .. } => None,
        }
    }

    /// Whether the transaction holding this write must reach the disk (fsync) before its
    /// caller is answered. The pod runs `synchronous=NORMAL`, where a commit survives a crash
    /// of the process but not of the machine until the next checkpoint. That is enough for
    /// events (Discord and the peers resend them), but not for a guild import: once it is
    /// acknowledged the previous owner deletes its copy, so a power loss would lose the guild.
    pub fn needs_fsync(&self) -> bool {
        matches!(self, Write::ImportGuild(_))
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Write::MessageCreated { .. } => "message_created",
            Write::MessageUpdated { .. } => "message_updated",
            Write::MessageDeleted { .. } => "message_deleted",
            Write::MessagesBulkDeleted { .. } => "messages_bulk_deleted",
            Write::MemberJoined { .. } => "member_joined",
            Write::MemberLeft { .. } => "member_left",
            Write::ModAction { .. } => "mod_action",
            Write::Report { .. } => "report",
            Write::Setup { .. } => "setup",
            Write::DmHelp { .. } => "dm_help",
            Write::OutboxSent { .. } => "outbox_sent",
            Write::PurgeMessageContent { .. } => "purge_message_content",
            Write::Prune { .. } => "prune",
            Write::ImportGuild(_) => "import_guild",
            Write::DeleteGuild(_) => "delete_guild",
            Write::DeleteGuildIfUnchanged { .. } => "delete_guild_if_unchanged",
            Write::SetMeta { .. } => "set_meta",
        }
    }
}

/// What applying one [`Write`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Whether the write changed any row (besides the outbox); `false` for a pure replay.
    pub changed: bool,
    /// For [`Write::Report`]: the reported user's distinct reports in the guild after the write.
    pub report_count: Option<u64>,
    /// How many outbox rows were newly enqueued (0 for a replay).
    pub outbox_enqueued: usize,
    /// For [`Write::Prune`]: how many rows it deleted.
    #[serde(default)]
    pub pruned: usize,
    /// Whether the transaction holding the write was fsynced at commit (`synchronous=FULL`,
    /// read back from the connection just before the commit). Always true for a write that
    /// [`Write::needs_fsync`]; true for any other write that shared its batch.
    #[serde(default)]
    pub fsynced: bool,
}
