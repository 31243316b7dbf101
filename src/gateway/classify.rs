//! Which guild a gateway dispatch belongs to, and its name, without serializing it.
//!
//! serenity 0.12 has no `Event::guild_id()`, and `Event::name()` serializes the whole event to
//! find the `t` field, which would cost more than the filter saves. This match is the one place
//! that maps an event to its guild (DESIGN §2: `d.id` for GUILD_CREATE/UPDATE/DELETE, `d.guild_id`
//! otherwise); the ownership filter runs on its answer before any other work.

use std::borrow::Cow;

use serenity::model::event::Event;

use crate::ownership::GuildId;

/// A dispatch's name and guild (`None` for guild-less events such as DMs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The dispatch name, as Discord spells it (borrowed for every event serenity knows, so
    /// classifying allocates nothing).
    pub kind: Cow<'static, str>,
    /// The guild it belongs to.
    pub guild: Option<GuildId>,
}

fn g(id: serenity::model::id::GuildId) -> Option<GuildId> {
    Some(GuildId(id.get()))
}

fn og(id: Option<serenity::model::id::GuildId>) -> Option<GuildId> {
    id.map(|id| GuildId(id.get()))
}

/// Names the event and finds its guild.
pub fn classify(event: &Event) -> Classified {
    let (kind, guild): (&str, Option<GuildId>) = match event {
        Event::GuildCreate(e) => ("GUILD_CREATE", g(e.guild.id)),
        Event::GuildUpdate(e) => ("GUILD_UPDATE", g(e.guild.id)),
        Event::GuildDelete(e) => ("GUILD_DELETE", g(e.guild.id)),
        Event::MessageCreate(e) => ("MESSAGE_CREATE", og(e.message.guild_id)),
        Event::MessageUpdate(e) => ("MESSAGE_UPDATE", og(e.guild_id)),
        Event::MessageDelete(e) => ("MESSAGE_DELETE", og(e.guild_id)),
        Event::MessageDeleteBulk(e) => ("MESSAGE_DELETE_BULK", og(e.guild_id)),
        Event::GuildMemberAdd(e) => ("GUILD_MEMBER_ADD", g(e.member.guild_id)),
        Event::GuildMemberRemove(e) => ("GUILD_MEMBER_REMOVE", g(e.guild_id)),
        Event::GuildMemberUpdate(e) => ("GUILD_MEMBER_UPDATE", g(e.guild_id)),
        Event::GuildBanAdd(e) => ("GUILD_BAN_ADD", g(e.guild_id)),
        Event::GuildBanRemove(e) => ("GUILD_BAN_REMOVE", g(e.guild_id)),
        Event::GuildAuditLogEntryCreate(e) => ("GUILD_AUDIT_LOG_ENTRY_CREATE", g(e.guild_id)),
        Event::GuildMembersChunk(e) => ("GUILD_MEMBERS_CHUNK", g(e.guild_id)),
        Event::GuildRoleCreate(e) => ("GUILD_ROLE_CREATE", g(e.role.guild_id)),
        Event::GuildRoleUpdate(e) => ("GUILD_ROLE_UPDATE", g(e.role.guild_id)),
        Event::GuildRoleDelete(e) => ("GUILD_ROLE_DELETE", g(e.guild_id)),
        Event::GuildEmojisUpdate(e) => ("GUILD_EMOJIS_UPDATE", g(e.guild_id)),
        Event::GuildStickersUpdate(e) => ("GUILD_STICKERS_UPDATE", g(e.guild_id)),
        Event::GuildIntegrationsUpdate(e) => ("GUILD_INTEGRATIONS_UPDATE", g(e.guild_id)),
        Event::ChannelCreate(e) => ("CHANNEL_CREATE", g(e.channel.guild_id)),
        Event::ChannelUpdate(e) => ("CHANNEL_UPDATE", g(e.channel.guild_id)),
        Event::ChannelDelete(e) => ("CHANNEL_DELETE", g(e.channel.guild_id)),
        Event::ChannelPinsUpdate(e) => ("CHANNEL_PINS_UPDATE", og(e.guild_id)),
        Event::ReactionAdd(e) => ("MESSAGE_REACTION_ADD", og(e.reaction.guild_id)),
        Event::ReactionRemove(e) => ("MESSAGE_REACTION_REMOVE", og(e.reaction.guild_id)),
        Event::ReactionRemoveAll(e) => ("MESSAGE_REACTION_REMOVE_ALL", og(e.guild_id)),
        Event::TypingStart(e) => ("TYPING_START", og(e.guild_id)),
        Event::PresenceUpdate(e) => ("PRESENCE_UPDATE", og(e.presence.guild_id)),
        Event::VoiceStateUpdate(e) => ("VOICE_STATE_UPDATE", og(e.voice_state.guild_id)),
        Event::InviteCreate(e) => ("INVITE_CREATE", og(e.guild_id)),
        Event::InviteDelete(e) => ("INVITE_DELETE", og(e.guild_id)),
        Event::InteractionCreate(_) => ("INTERACTION_CREATE", None),
        Event::ThreadCreate(e) => ("THREAD_CREATE", g(e.thread.guild_id)),
        Event::ThreadUpdate(e) => ("THREAD_UPDATE", g(e.thread.guild_id)),
        Event::ThreadDelete(e) => ("THREAD_DELETE", g(e.thread.guild_id)),
        Event::WebhookUpdate(e) => ("WEBHOOKS_UPDATE", g(e.guild_id)),
        Event::Ready(_) => ("READY", None),
        Event::Resumed(_) => ("RESUMED", None),
        Event::UserUpdate(_) => ("USER_UPDATE", None),
        Event::Unknown(e) => {
            // Unknown events keep their raw JSON: find the guild the same way Discord shapes it.
            let field = match e.kind.as_str() {
                "GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE" => "id",
                _ => "guild_id",
            };
            let guild = e
                .value
                .get(field)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok());
            return Classified {
                kind: Cow::Owned(e.kind.clone()),
                guild,
            };
        }
        // Events this bot neither handles nor needs a guild for; counted under one name so an
        // unexpected variant shows up in the metrics rather than vanishing.
        _ => ("OTHER", None),
    };
    Classified {
        kind: Cow::Borrowed(kind),
        guild,
    }
}
