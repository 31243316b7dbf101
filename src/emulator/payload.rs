//! Discord-shaped JSON: every object the emulator puts on the wire (gateway dispatches, REST
//! bodies, interaction payloads) is built here, from the world model in [`super::state`], so the
//! gateway, REST, control API and traffic generator all emit the same shapes. Also the two
//! value helpers Discord payloads need: snowflakes and ISO 8601 timestamps.
//!
//! Field lists follow the Discord documentation (snowflakes as strings, nullable fields
//! present as `null`), which is also what serenity 0.12 requires to avoid `Event::Unknown`.

use serde_json::{json, Value};

use super::state::{Channel, Guild, Member, Message, User};
use crate::calendar::civil_from_days;
use crate::ownership::DISCORD_EPOCH_MS;

/// Permissions of `@everyone` in emulated guilds (view, send, read history, reactions, ...).
pub(crate) const EVERYONE_PERMISSIONS: u64 = 1_071_698_660_929;
/// Permissions of the emulated "Moderator" role: everyone's plus kick, ban, manage messages,
/// manage guild, view audit log and moderate members.
pub(crate) const MODERATOR_PERMISSIONS: u64 =
    EVERYONE_PERMISSIONS | (1 << 1) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 13) | (1 << 40);
/// Every permission bit Discord defines today (what a guild owner or administrator has).
pub(crate) const ALL_PERMISSIONS: u64 = (1 << 51) - 1;
/// Permissions the bot has in emulated guilds, reported as `app_permissions`.
pub(crate) const APP_PERMISSIONS: u64 = MODERATOR_PERMISSIONS;

/// A snowflake for `ms` (Unix milliseconds) with the given low 22 bits (worker, process,
/// increment).
pub(crate) fn snowflake(ms: u64, low_bits: u64) -> u64 {
    (ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | (low_bits & 0x3F_FFFF)
}

/// The Unix-millisecond creation time encoded in a snowflake.
pub(crate) fn snowflake_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(DISCORD_EPOCH_MS)
}

/// `ms` (Unix milliseconds) as Discord writes timestamps: `2026-01-01T00:00:00.000000+00:00`.
pub(crate) fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let micros = (ms % 1000) * 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A user object.
pub(crate) fn user(u: &User) -> Value {
    json!({
        "id": u.id.to_string(),
        "username": u.username,
        "discriminator": "0",
        "global_name": u.global_name,
        "avatar": null,
        "bot": u.bot,
        "public_flags": 0,
    })
}

/// A guild member object. `with_user` is false inside MESSAGE_CREATE (Discord omits it there).
pub(crate) fn member(m: &Member, u: &User, with_user: bool) -> Value {
    let mut v = json!({
        "roles": m.roles.iter().map(u64::to_string).collect::<Vec<_>>(),
        "nick": m.nick,
        "avatar": null,
        "banner": null,
        "joined_at": iso8601(m.joined_at_ms),
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": m.communication_disabled_until_ms.map(iso8601),
    });
    if with_user {
        v["user"] = user(u);
    }
    v
}

/// A member with `guild_id` (GUILD_MEMBER_ADD / GUILD_MEMBER_UPDATE).
pub(crate) fn member_event(guild_id: u64, m: &Member, u: &User) -> Value {
    let mut v = member(m, u, true);
    v["guild_id"] = json!(guild_id.to_string());
    v
}

/// `{guild_id, user}` (GUILD_MEMBER_REMOVE, GUILD_BAN_ADD, GUILD_BAN_REMOVE).
pub(crate) fn guild_user(guild_id: u64, u: &User) -> Value {
    json!({"guild_id": guild_id.to_string(), "user": user(u)})
}

/// A channel object.
pub(crate) fn channel(c: &Channel, recipient: Option<&User>) -> Value {
    let mut v = json!({
        "id": c.id.to_string(),
        "type": c.kind,
        "last_message_id": c.last_message_id.map(|id| id.to_string()),
        "flags": 0,
    });
    match c.guild_id {
        Some(guild_id) => {
            v["guild_id"] = json!(guild_id.to_string());
            v["name"] = json!(c.name);
            v["position"] = json!(c.position);
            v["permission_overwrites"] = json!([]);
            v["parent_id"] = Value::Null;
            v["nsfw"] = json!(false);
            v["topic"] = Value::Null;
            v["rate_limit_per_user"] = json!(0);
        }
        None => {
            v["recipients"] = json!(recipient.map(user).into_iter().collect::<Vec<_>>());
        }
    }
    v
}

fn role(id: u64, name: &str, permissions: u64, position: u32) -> Value {
    json!({
        "id": id.to_string(), "name": name, "color": 0,
        "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false, "icon": null, "unicode_emoji": null, "position": position,
        "permissions": permissions.to_string(), "managed": false, "mentionable": false, "flags": 0,
    })
}

/// The guild's roles: `@everyone` (id = guild id) and "Moderator".
pub(crate) fn roles(g: &Guild) -> Vec<Value> {
    vec![
        role(g.id, "@everyone", EVERYONE_PERMISSIONS, 0),
        role(g.moderator_role, "Moderator", MODERATOR_PERMISSIONS, 1),
    ]
}

/// The permissions a member has in the guild (owner and administrators: everything).
pub(crate) fn member_permissions(g: &Guild, user_id: u64) -> u64 {
    if user_id == g.owner_id {
        return ALL_PERMISSIONS;
    }
    let mut perms = EVERYONE_PERMISSIONS;
    if let Some(m) = g.members.get(&user_id) {
        if m.roles.contains(&g.moderator_role) {
            perms |= MODERATOR_PERMISSIONS;
        }
    }
    if perms & (1 << 3) != 0 {
        ALL_PERMISSIONS
    } else {
        perms
    }
}

/// The guild object, as `GET /guilds/{g}` returns it (and the base of GUILD_CREATE).
/// `system_channel` is the guild's first text channel.
pub(crate) fn guild(g: &Guild, system_channel: Option<u64>) -> Value {
    // Two halves: one json! literal this long exceeds serde_json's macro recursion limit.
    let mut v = json!({
        "id": g.id.to_string(), "name": g.name, "icon": null, "icon_hash": null, "splash": null,
        "discovery_splash": null, "owner_id": g.owner_id.to_string(), "afk_channel_id": null,
        "afk_timeout": 300, "widget_enabled": false, "widget_channel_id": null,
        "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": roles(g), "emojis": [], "features": [],
        "mfa_level": 0, "application_id": null,
        "system_channel_id": system_channel.map(|c| c.to_string()), "system_channel_flags": 0,
        "rules_channel_id": null, "max_presences": null, "max_members": 500_000,
        "vanity_url_code": null,
    });
    let rest = json!({
        "description": null, "banner": null, "premium_tier": 0, "premium_subscription_count": 0,
        "preferred_locale": "en-US", "public_updates_channel_id": null, "nsfw_level": 0,
        "premium_progress_bar_enabled": false, "safety_alerts_channel_id": null,
        "incidents_data": null, "stickers": [], "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
    });
    extend(&mut v, rest);
    v
}

fn extend(base: &mut Value, extra: Value) {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
}

/// The GUILD_CREATE payload: the guild object plus the GUILD_CREATE extras. `members` is the
/// member list to include (Discord sends only some members for large guilds or without the
/// GUILD_MEMBERS intent).
pub(crate) fn guild_create(
    g: &Guild,
    channels: &[&Channel],
    members: &[(&Member, &User)],
    large: bool,
) -> Value {
    let mut v = guild(g, channels.first().map(|c| c.id));
    let extra = json!({
        "joined_at": iso8601(g.joined_at_ms), "large": large, "unavailable": false,
        "member_count": g.members.len(), "voice_states": [],
        "members": members.iter().map(|(m, u)| member(m, u, true)).collect::<Vec<_>>(),
        "channels": channels.iter().map(|c| {
            let mut v = channel(c, None);
            // Discord omits guild_id on the channels embedded in GUILD_CREATE.
            if let Some(obj) = v.as_object_mut() { obj.remove("guild_id"); }
            v
        }).collect::<Vec<_>>(),
        "threads": [], "presences": [], "stage_instances": [], "guild_scheduled_events": [],
        "soundboard_sounds": [],
    });
    extend(&mut v, extra);
    v
}

/// A ban object (`GET /guilds/{g}/bans`).
pub(crate) fn ban(u: &User, reason: Option<&str>) -> Value {
    json!({"reason": reason, "user": user(u)})
}

/// A message object. `author_member` is the author's guild membership (absent in DMs and for
/// webhook/interaction messages).
pub(crate) fn message(
    m: &Message,
    author: &User,
    author_member: Option<&Member>,
    mentions: &[&User],
    channel_kind: u8,
) -> Value {
    let mut v = json!({
        "id": m.id.to_string(),
        "channel_id": m.channel_id.to_string(),
        "author": user(author),
        "content": m.content,
        "timestamp": iso8601(m.timestamp_ms),
        "edited_timestamp": m.edited_ms.map(iso8601),
        "tts": false,
        "mention_everyone": false,
        "mentions": mentions.iter().map(|u| user(u)).collect::<Vec<_>>(),
        "mention_roles": [],
        "attachments": [],
        "embeds": m.embeds,
        "components": [],
        "pinned": false,
        "type": m.kind,
        "flags": m.flags,
        "channel_type": channel_kind,
    });
    if let Some(guild_id) = m.guild_id {
        v["guild_id"] = json!(guild_id.to_string());
    }
    if let Some(member) = author_member {
        v["member"] = self::member(member, author, false);
    }
    if let Some(nonce) = &m.nonce {
        v["nonce"] = nonce.clone();
    }
    if let Some(app_id) = m.webhook_id {
        v["webhook_id"] = json!(app_id.to_string());
        v["application_id"] = json!(app_id.to_string());
    }
    v
}

/// The user ids mentioned as `<@id>` or `<@!id>` in `content`.
pub(crate) fn mentioned_ids(content: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let digits = rest.strip_prefix('!').unwrap_or(rest);
        let end = digits.find('>').unwrap_or(0);
        if let Ok(id) = digits[..end].parse::<u64>() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// MESSAGE_DELETE.
pub(crate) fn message_delete(id: u64, channel_id: u64, guild_id: Option<u64>) -> Value {
    let mut v = json!({"id": id.to_string(), "channel_id": channel_id.to_string()});
    if let Some(g) = guild_id {
        v["guild_id"] = json!(g.to_string());
    }
    v
}

/// MESSAGE_DELETE_BULK.
pub(crate) fn message_delete_bulk(ids: &[u64], channel_id: u64, guild_id: Option<u64>) -> Value {
    let mut v = json!({
        "ids": ids.iter().map(u64::to_string).collect::<Vec<_>>(),
        "channel_id": channel_id.to_string(),
    });
    if let Some(g) = guild_id {
        v["guild_id"] = json!(g.to_string());
    }
    v
}

/// An audit-log entry: `action_type` 22 ban, 23 unban, 24 member update (timeout). The
/// GUILD_AUDIT_LOG_ENTRY_CREATE event adds `guild_id`.
pub(crate) fn audit_entry(
    id: u64,
    action_type: u8,
    executor: u64,
    target: u64,
    reason: Option<&str>,
    changes: Option<Value>,
) -> Value {
    let mut v = json!({
        "id": id.to_string(), "action_type": action_type,
        "user_id": executor.to_string(), "target_id": target.to_string(), "reason": reason,
    });
    if let Some(changes) = changes {
        v["changes"] = changes;
    }
    v
}

/// READY.
pub(crate) fn ready(
    bot: &User,
    guild_ids: &[u64],
    session_id: &str,
    resume_url: &str,
    shard: [u32; 2],
    application_id: u64,
) -> Value {
    json!({
        "v": 10,
        "user": {
            "id": bot.id.to_string(), "username": bot.username, "discriminator": "0",
            "global_name": null, "avatar": null, "bot": true, "verified": true,
            "mfa_enabled": false, "flags": 0,
        },
        "guilds": guild_ids.iter().map(|id| json!({"id": id.to_string(), "unavailable": true})).collect::<Vec<_>>(),
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": resume_url,
        "shard": shard,
        "application": {"id": application_id.to_string(), "flags": 0},
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "user_settings": {},
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["local"],
        "_trace": ["[\"guildshard-emulator\",{\"micros\":0}]"],
    })
}

/// A gateway frame that is not a dispatch (`s` and `t` null).
pub(crate) fn op_frame(op: u8, d: Value) -> String {
    json!({"op": op, "d": d, "s": null, "t": null}).to_string()
}

/// A dispatch frame; `d` is already-serialized JSON.
pub(crate) fn dispatch_frame(seq: u64, event: &str, d: &str) -> String {
    format!(r#"{{"op":0,"s":{seq},"t":"{event}","d":{d}}}"#)
}

/// A Discord error body `{"code":…,"message":…}`.
pub(crate) fn error_body(code: u32, message: &str) -> Value {
    json!({"code": code, "message": message})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(1_767_225_600_123),
            "2026-01-01T00:00:00.123000+00:00"
        );
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000000+00:00");
    }

    #[test]
    fn snowflakes_round_trip_their_time() {
        let id = snowflake(1_767_225_600_000, 5);
        assert_eq!(snowflake_ms(id), 1_767_225_600_000);
        assert_eq!(id & 0x3F_FFFF, 5);
    }

    #[test]
    fn mentions_are_parsed() {
        assert_eq!(
            mentioned_ids("hi <@12> and <@!34> <@12> <@x>"),
            vec![12, 34]
        );
    }
}
