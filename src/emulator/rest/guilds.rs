//! `GET /guilds/{g}` and what hangs under it (a member, channels, roles, bans, the audit log),
//! read from the emulator's world in Discord's documented shapes. Unknown ids answer Discord's
//! 404 bodies (`Unknown Guild` 10004, `Unknown Member` 10007); ids that are not snowflakes
//! answer 400 (50035), as Discord does.

use axum::extract::{Path, RawQuery, State as AxumState};
use axum::Json;
use serde_json::{json, Value};

use super::{query_map, query_number, snowflake};
use crate::emulator::payload;
use crate::emulator::state::{Guild, State};
use crate::emulator::{Emulator, Error};

type Reply = Result<Json<Value>, Error>;

fn guild_of<'a>(st: &'a State, raw: &str) -> Result<&'a Guild, Error> {
    let id = snowflake(raw)?;
    st.guilds.get(&id).ok_or(Error::UnknownGuild(id))
}

/// `GET /guilds/{g}[?with_counts=true]`.
pub(super) async fn guild(
    AxumState(emu): AxumState<Emulator>,
    Path(g): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let q = query_map(query);
    let with_counts = q.get("with_counts").is_some_and(|v| v == "true");
    let st = emu.lock();
    let guild = guild_of(&st, &g)?;
    let mut v = payload::guild(guild, guild.channels.first().copied());
    if with_counts {
        v["approximate_member_count"] = json!(guild.members.len());
        // The emulator has no presences, so nobody counts as online.
        v["approximate_presence_count"] = json!(0);
    }
    Ok(Json(v))
}

/// `GET /guilds/{g}/members/{u}`; `@me` is the bot.
pub(super) async fn member(
    AxumState(emu): AxumState<Emulator>,
    Path((g, u)): Path<(String, String)>,
) -> Reply {
    let st = emu.lock();
    let guild = guild_of(&st, &g)?;
    let user_id = if u == "@me" {
        st.bot.id
    } else {
        snowflake(&u)?
    };
    let unknown = || Error::UnknownMember {
        guild: guild.id,
        user: user_id,
    };
    let m = guild.members.get(&user_id).ok_or_else(unknown)?;
    let user = st.users.get(&user_id).ok_or_else(unknown)?;
    Ok(Json(payload::member(m, user, true)))
}

/// `GET /guilds/{g}/channels`, in position order.
pub(super) async fn channels(AxumState(emu): AxumState<Emulator>, Path(g): Path<String>) -> Reply {
    let st = emu.lock();
    let guild = guild_of(&st, &g)?;
    let list: Vec<Value> = guild
        .channels
        .iter()
        .filter_map(|c| st.channels.get(c))
        .map(|c| payload::channel(c, None))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /guilds/{g}/roles`.
pub(super) async fn roles(AxumState(emu): AxumState<Emulator>, Path(g): Path<String>) -> Reply {
    let st = emu.lock();
    let guild = guild_of(&st, &g)?;
    Ok(Json(Value::Array(payload::roles(guild))))
}

/// `GET /guilds/{g}/bans[?limit=&before=&after=]`: ban objects in user-id order; `limit`
/// 1–1000 (default 1000). With `before`, the bans closest below it.
pub(super) async fn bans(
    AxumState(emu): AxumState<Emulator>,
    Path(g): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let q = query_map(query);
    let limit = query_number(&q, "limit", 1..=1000)?.unwrap_or(1000) as usize;
    let before = query_number(&q, "before", 0..=u64::MAX)?;
    let after = query_number(&q, "after", 0..=u64::MAX)?;
    let st = emu.lock();
    let guild = guild_of(&st, &g)?;
    let matching: Vec<(&u64, &Option<String>)> = guild
        .bans
        .iter()
        .filter(|(u, _)| before.is_none_or(|b| **u < b) && after.is_none_or(|a| **u > a))
        .collect();
    let skip = match (before, after) {
        (Some(_), None) => matching.len().saturating_sub(limit),
        _ => 0,
    };
    let list: Vec<Value> = matching
        .into_iter()
        .skip(skip)
        .take(limit)
        .filter_map(|(u, reason)| Some(payload::ban(st.users.get(u)?, reason.as_deref())))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /guilds/{g}/audit-logs[?user_id=&action_type=&before=&after=&limit=]`: entries newest
/// first, `limit` 1–100 (default 50), with the users they reference. With `after` alone, the
/// entries closest above it (so paging forward misses none).
pub(super) async fn audit_log(
    AxumState(emu): AxumState<Emulator>,
    Path(g): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let q = query_map(query);
    let limit = query_number(&q, "limit", 1..=100)?.unwrap_or(50) as usize;
    let user_id = query_number(&q, "user_id", 0..=u64::MAX)?;
    let action_type = query_number(&q, "action_type", 1..=255)?;
    let before = query_number(&q, "before", 0..=u64::MAX)?;
    let after = query_number(&q, "after", 0..=u64::MAX)?;
    let st = emu.lock();
    let guild = guild_of(&st, &g)?;
    let id_of = |e: &Value, key: &str| e[key].as_str().and_then(|s| s.parse::<u64>().ok());
    let matching: Vec<&Value> = guild
        .audit_log
        .iter()
        .filter(|e| user_id.is_none_or(|u| id_of(e, "user_id") == Some(u)))
        .filter(|e| action_type.is_none_or(|a| e["action_type"].as_u64() == Some(a)))
        .filter(|e| {
            let id = id_of(e, "id").unwrap_or(0);
            before.is_none_or(|b| id < b) && after.is_none_or(|a| id > a)
        })
        .collect();
    // `audit_log` is oldest first.
    let mut entries: Vec<&Value> = match (after, before) {
        (Some(_), None) => matching.into_iter().take(limit).collect(),
        _ => matching.into_iter().rev().take(limit).collect(),
    };
    entries.sort_by_key(|e| std::cmp::Reverse(id_of(e, "id").unwrap_or(0)));
    let mut referenced: Vec<u64> = entries
        .iter()
        .flat_map(|e| [id_of(e, "user_id"), id_of(e, "target_id")])
        .flatten()
        .collect();
    referenced.sort_unstable();
    referenced.dedup();
    let users: Vec<Value> = referenced
        .iter()
        .filter_map(|u| st.users.get(u))
        .map(payload::user)
        .collect();
    Ok(Json(json!({
        "application_commands": [],
        "audit_log_entries": entries,
        "auto_moderation_rules": [],
        "guild_scheduled_events": [],
        "integrations": [],
        "threads": [],
        "users": users,
        "webhooks": [],
    })))
}
