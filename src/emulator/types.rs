//! The values the emulator hands out to its callers, in-process and as control-API JSON:
//! application identity, guild/channel/user/message summaries, sessions, counters, recorded
//! interactions and the traffic log. Ids are plain `u64` snowflakes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The emulated application (and its bot user, which has the same id).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplicationInfo {
    /// Application id (also the bot user's id).
    pub id: u64,
    /// The bot token (without the `Bot ` prefix).
    pub token: String,
    /// The Ed25519 public key, hex, as the developer portal shows it.
    pub public_key_hex: String,
    /// The REST base to give clients, e.g. `http://127.0.0.1:40123` (serenity's proxy).
    pub api_base: String,
    /// The gateway URL `GET /gateway` returns, e.g. `ws://127.0.0.1:40123`.
    pub gateway_url: String,
}

/// A guild summary.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuildInfo {
    /// Guild id.
    pub id: u64,
    /// Guild name.
    pub name: String,
    /// Owner's user id.
    pub owner_id: u64,
    /// Text channel ids, in position order (the first is `#general`).
    pub channels: Vec<u64>,
    /// Member user ids (including the bot).
    pub members: Vec<u64>,
    /// The "Moderator" role id (the owner has it).
    pub moderator_role: u64,
}

/// A channel summary.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Channel id.
    pub id: u64,
    /// Discord channel type: 0 guild text, 1 DM.
    pub kind: u8,
    /// The guild, for guild channels.
    pub guild_id: Option<u64>,
    /// Channel name (empty for DMs).
    pub name: String,
    /// The other user, for DM channels.
    pub recipient_id: Option<u64>,
}

/// A user summary.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    /// User id.
    pub id: u64,
    /// Username.
    pub username: String,
    /// Whether the user is a bot.
    pub bot: bool,
}

/// A message as users see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MessageInfo {
    /// Message id.
    pub id: u64,
    /// Channel id.
    pub channel_id: u64,
    /// Guild id (none in DMs).
    pub guild_id: Option<u64>,
    /// Author's user id.
    pub author_id: u64,
    /// Text content.
    pub content: String,
    /// Embeds, as sent.
    pub embeds: Vec<Value>,
    /// Message flags (64 = ephemeral).
    pub flags: u64,
    /// Whether it was edited.
    pub edited: bool,
}

/// A gateway session, for the control API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id (from READY).
    pub session_id: String,
    /// `[shard_id, num_shards]`.
    pub shard: [u32; 2],
    /// Last sequence number dispatched to it.
    pub seq: u64,
    /// `connected`, `zombie` (connected, heartbeats not acknowledged) or `disconnected`
    /// (resumable for the resume window).
    pub state: String,
    /// Intents it identified with.
    pub intents: u64,
    /// How many times it was resumed.
    pub resumes: u32,
    /// Whether a RESUME could still succeed (false after the control API expired it).
    pub resumable: bool,
    /// Dispatches kept for replay (at most the resume policy's `buffer_frames`).
    pub buffered: usize,
}

/// Counters since start.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Successful IDENTIFYs (sessions started).
    pub identifies: u64,
    /// IDENTIFYs that started no session: over the identify rate or daily budget (op 9), or
    /// closed (bad token, intents, shard, a second IDENTIFY on an authenticated socket).
    pub identifies_refused: u64,
    /// Successful RESUMEs.
    pub resumes: u64,
    /// RESUMEs that resumed nothing: unknown, expired or ended session, missed dispatches no
    /// longer buffered (op 9 `d: false`), or closed (bad token, invalid seq).
    pub resumes_refused: u64,
    /// Dispatch frames queued for sessions (one event to three sessions counts three).
    pub events_dispatched: u64,
    /// INVALID_SESSION frames sent.
    pub invalid_sessions: u64,
    /// REST requests served.
    pub rest_requests: u64,
    /// REST requests refused with 429.
    pub rate_limited: u64,
}

/// The kind of a generated or control-API event, as recorded in the traffic log.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A user posted a guild message.
    MessageCreate,
    /// A user edited a message.
    MessageUpdate,
    /// A user deleted a message.
    MessageDelete,
    /// A moderator bulk-deleted messages.
    MessageDeleteBulk,
    /// A user joined a guild.
    MemberAdd,
    /// A user left a guild.
    MemberRemove,
    /// A member was banned.
    Ban,
    /// A user was unbanned.
    Unban,
    /// A member was timed out.
    Timeout,
    /// A user sent the bot a DM.
    DirectMessage,
}

/// One event the traffic generator emitted, in emission order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmittedEvent {
    /// Position in the generator's output, from 0.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The guild (none for DMs).
    pub guild_id: Option<u64>,
    /// The channel (the DM channel for DMs; none for member and moderation events).
    pub channel_id: Option<u64>,
    /// The message, for single-message events (fresh snowflakes differ between runs).
    pub message_id: Option<u64>,
    /// The messages of a bulk delete.
    pub message_ids: Vec<u64>,
    /// The acting user (author, joiner, or the moderated member).
    pub user_id: u64,
    /// The moderator, for bans, unbans and timeouts.
    pub executor_id: Option<u64>,
    /// The audit-log entry id, for bans, unbans and timeouts.
    pub audit_entry_id: Option<u64>,
    /// Message content length in characters, for creates and edits.
    pub content_len: Option<usize>,
}

/// What happened to an interaction the emulator sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum InteractionOutcome {
    /// Sent; no valid answer yet (the 3 s deadline has not passed).
    Pending,
    /// Answered in time with this interaction response type (1, 4, 5, 6 or 7).
    Responded {
        /// The response type.
        response_type: u8,
    },
    /// No valid answer within 3 s, or an invalid one: the user saw "The application did not
    /// respond".
    Failed {
        /// Why.
        reason: String,
    },
}

/// An interaction as sent, and everything the app answered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InteractionRecord {
    /// Interaction id.
    pub id: u64,
    /// Interaction token (valid 15 minutes for follow-ups).
    pub token: String,
    /// Interaction type (1 PING, 2 APPLICATION_COMMAND).
    pub kind: u8,
    /// The exact JSON body that was signed and sent.
    pub payload: Value,
    /// The outcome.
    pub outcome: InteractionOutcome,
    /// The initial response body (`{"type":…,"data":…}`), if any.
    pub initial_response: Option<Value>,
    /// The message the user sees as the response (after every edit), if any.
    pub original: Option<Value>,
    /// Every edit of `@original`, in order (the PATCH bodies).
    pub edits: Vec<Value>,
    /// Every follow-up message, in order.
    pub followups: Vec<Value>,
}

impl InteractionRecord {
    /// How many visible replies the user got: the response message (if it has content) plus
    /// follow-ups.
    pub fn reply_count(&self) -> usize {
        usize::from(self.original.is_some()) + self.followups.len()
    }

    /// Whether the response (or its final edit) is ephemeral.
    pub fn is_ephemeral(&self) -> bool {
        self.original
            .as_ref()
            .and_then(|m| m["flags"].as_u64())
            .is_some_and(|f| f & 64 != 0)
    }
}
