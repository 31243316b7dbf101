//! The REST API under `/api/v10`: the subset a moderation bot calls, with Discord's shapes.
//! Bot routes require `Authorization: Bot <token>` (401 `{"code":0,"message":"401:
//! Unauthorized"}` otherwise); webhook and interaction-callback routes are authenticated by the
//! interaction token in the path, as on Discord. Every bot response carries `X-RateLimit-*`
//! headers; when a global budget is configured, going over it gives 429 with `retry_after`.
//! Query strings in serenity's `?&k=v` form are accepted.
//!
//! The guild reads live in [`guilds`]; the rest of the bot routes are here.

mod guilds;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::actions::NewMessage;
use super::interactions;
use super::payload;
use super::{Emulator, Error};

/// The one-second window of the global REST budget.
#[derive(Debug)]
pub(crate) struct RateWindow {
    start: Instant,
    count: u32,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            count: 0,
        }
    }
}

/// Discord's documented global limit, reported in headers when no budget is configured.
const DEFAULT_GLOBAL_LIMIT: u32 = 50;

/// The `/api/v10` routes.
pub(crate) fn router(emu: Emulator) -> Router<Emulator> {
    let bot = Router::new()
        .route("/gateway/bot", get(gateway_bot))
        .route("/users/@me", get(current_user))
        .route("/users/{user}", get(get_user))
        .route("/oauth2/applications/@me", get(current_application))
        .route("/applications/@me", get(current_application))
        .route("/users/@me/channels", post(create_dm))
        .route("/guilds/{guild}", get(guilds::guild))
        .route("/guilds/{guild}/members/{user}", get(guilds::member))
        .route("/guilds/{guild}/channels", get(guilds::channels))
        .route("/guilds/{guild}/roles", get(guilds::roles))
        .route("/guilds/{guild}/bans", get(guilds::bans))
        .route("/guilds/{guild}/audit-logs", get(guilds::audit_log))
        .route("/channels/{channel}", get(get_channel))
        .route("/channels/{channel}/typing", post(typing))
        .route(
            "/channels/{channel}/messages/{message}/reactions/{emoji}/@me",
            put(react),
        )
        .route(
            "/channels/{channel}/messages",
            get(list_messages).post(create_message),
        )
        .route(
            "/channels/{channel}/messages/bulk-delete",
            post(bulk_delete),
        )
        .route(
            "/channels/{channel}/messages/{message}",
            get(get_message).patch(edit_message).delete(delete_message),
        )
        .route(
            "/applications/{app}/commands",
            get(list_global_commands).put(put_global_commands),
        )
        .route(
            "/applications/{app}/guilds/{guild}/commands",
            get(list_guild_commands).put(put_guild_commands),
        )
        .route_layer(middleware::from_fn_with_state(emu.clone(), require_bot))
        .layer(middleware::from_fn_with_state(emu, rate_limit));
    let token_authenticated = Router::new()
        .route("/gateway", get(gateway))
        .route(
            "/interactions/{id}/{token}/callback",
            post(interactions::callback),
        )
        .route("/webhooks/{app}/{token}", post(interactions::followup))
        .route(
            "/webhooks/{app}/{token}/messages/@original",
            get(interactions::get_original)
                .patch(interactions::patch_original)
                .delete(interactions::delete_original),
        );
    bot.merge(token_authenticated)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(payload::error_body(0, "401: Unauthorized")),
    )
        .into_response()
}

async fn require_bot(AxumState(emu): AxumState<Emulator>, req: Request, next: Next) -> Response {
    let expected = format!("Bot {}", emu.shared.cfg.token);
    let ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if ok {
        next.run(req).await
    } else {
        unauthorized()
    }
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

async fn rate_limit(AxumState(emu): AxumState<Emulator>, req: Request, next: Next) -> Response {
    let budget = emu.shared.cfg.rest_rate_limit;
    let limit = budget.unwrap_or(DEFAULT_GLOBAL_LIMIT);
    let (allowed, remaining, reset_after) = {
        let mut w = emu
            .shared
            .rest_window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.start.elapsed() >= Duration::from_secs(1) {
            *w = RateWindow::default();
        }
        let reset_after = Duration::from_secs(1).saturating_sub(w.start.elapsed());
        if budget.is_some_and(|b| w.count >= b) {
            (false, 0, reset_after)
        } else {
            w.count += 1;
            (true, limit.saturating_sub(w.count), reset_after)
        }
    };
    {
        let mut st = emu.lock();
        st.counters.rest_requests += 1;
        if !allowed {
            st.counters.rate_limited += 1;
        }
    }
    let reset_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        + reset_after.as_secs_f64();
    let mut response = if allowed {
        next.run(req).await
    } else {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "message": "You are being rate limited.",
                "retry_after": reset_after.as_secs_f64(),
                "global": true,
            })),
        )
            .into_response();
        let h = r.headers_mut();
        set_header(
            h,
            "retry-after",
            reset_after.as_secs_f64().ceil().max(1.0).to_string(),
        );
        set_header(h, "x-ratelimit-global", "true".into());
        set_header(h, "x-ratelimit-scope", "global".into());
        r
    };
    let h = response.headers_mut();
    set_header(h, "x-ratelimit-limit", limit.to_string());
    set_header(h, "x-ratelimit-remaining", remaining.to_string());
    set_header(h, "x-ratelimit-reset", format!("{reset_at:.3}"));
    set_header(
        h,
        "x-ratelimit-reset-after",
        format!("{:.3}", reset_after.as_secs_f64()),
    );
    set_header(h, "x-ratelimit-bucket", "global".into());
    response
}

/// `?&limit=5&before=…` (serenity's form) or plain `?limit=5`.
fn query_map(raw: Option<String>) -> HashMap<String, String> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A snowflake from a path or query; Discord answers anything else with 400 (50035).
fn snowflake(raw: &str) -> Result<u64, Error> {
    raw.parse()
        .map_err(|_| Error::Invalid(format!("value {raw:?} is not snowflake")))
}

/// The integer query parameter `key`, if present; outside `range` (or not a number) it is a
/// 400, as on Discord, rather than silently clamped.
fn query_number(
    q: &HashMap<String, String>,
    key: &str,
    range: RangeInclusive<u64>,
) -> Result<Option<u64>, Error> {
    let Some(raw) = q.get(key) else {
        return Ok(None);
    };
    match raw.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(Error::Invalid(format!(
            "{key}: {raw:?} is not an integer in {}..={}",
            range.start(),
            range.end()
        ))),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Invalid(format!("invalid form body: {e}")))
}

async fn gateway(AxumState(emu): AxumState<Emulator>) -> Json<Value> {
    Json(json!({"url": emu.gateway_url()}))
}

/// Guilds per shard behind `GET /gateway/bot`'s recommendation.
const GUILDS_PER_RECOMMENDED_SHARD: usize = 1000;

async fn gateway_bot(AxumState(emu): AxumState<Emulator>) -> Json<Value> {
    let st = emu.lock();
    let b = &st.budget;
    let reset_after = b
        .reset_at
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    // Discord recommends about one shard per 1000 guilds (a shard is refused past 2500), so a
    // client that follows the recommendation is never closed with 4011.
    let recommended =
        (st.guilds.len().div_ceil(GUILDS_PER_RECOMMENDED_SHARD) as u32).max(emu.shared.cfg.shards);
    Json(json!({
        "url": emu.gateway_url(),
        "shards": recommended,
        "session_start_limit": {
            "total": b.total, "remaining": b.remaining, "reset_after": reset_after,
            "max_concurrency": emu.shared.cfg.max_concurrency,
        },
    }))
}

async fn current_user(AxumState(emu): AxumState<Emulator>) -> Json<Value> {
    let st = emu.lock();
    let mut u = payload::user(&st.bot);
    u["verified"] = json!(true);
    u["mfa_enabled"] = json!(false);
    u["flags"] = json!(0);
    Json(u)
}

/// `GET /users/{u}`: any user the emulator knows.
async fn get_user(
    AxumState(emu): AxumState<Emulator>,
    Path(user): Path<String>,
) -> Result<Json<Value>, Error> {
    let id = snowflake(&user)?;
    let st = emu.lock();
    let u = st.users.get(&id).ok_or(Error::UnknownUser(id))?;
    let mut v = payload::user(u);
    v["banner"] = Value::Null;
    v["accent_color"] = Value::Null;
    v["avatar_decoration_data"] = Value::Null;
    Ok(Json(v))
}

/// `GET /applications/@me` and `GET /oauth2/applications/@me`: Discord documents both as
/// returning the application object, so they share one body.
async fn current_application(AxumState(emu): AxumState<Emulator>) -> Json<Value> {
    let info = emu.application();
    let st = emu.lock();
    // Two halves: one json! literal this long exceeds serde_json's macro recursion limit.
    let mut v = json!({
        "id": info.id.to_string(), "name": st.bot.username, "icon": null, "description": "",
        "summary": "", "bot_public": true, "bot_require_code_grant": false,
        "verify_key": info.public_key_hex, "flags": 0, "team": null,
        "owner": {"id": (info.id + 1).to_string(), "username": "emulator-owner", "discriminator": "0", "global_name": null, "avatar": null},
        "bot": payload::user(&st.bot),
    });
    let rest = json!({
        "interactions_endpoint_url": st.interactions_url,
        "approximate_guild_count": st.guilds.len(),
        "redirect_uris": [],
        "role_connections_verification_url": null,
        "tags": [],
    });
    if let (Some(base), Value::Object(rest)) = (v.as_object_mut(), rest) {
        base.extend(rest);
    }
    Json(v)
}

async fn create_dm(AxumState(emu): AxumState<Emulator>, body: Bytes) -> Result<Json<Value>, Error> {
    let body = parse_json(&body)?;
    let Some(user_id) = body["recipient_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| body["recipient_id"].as_u64())
    else {
        return Err(Error::Invalid("recipient_id is required".into()));
    };
    let mut st = emu.lock();
    let channel = st.dm_channel_for(user_id)?.clone();
    let recipient = st.users.get(&user_id).cloned();
    Ok(Json(payload::channel(&channel, recipient.as_ref())))
}

async fn get_channel(
    AxumState(emu): AxumState<Emulator>,
    Path(channel): Path<u64>,
) -> Result<Json<Value>, Error> {
    let st = emu.lock();
    let c = st
        .channels
        .get(&channel)
        .ok_or(Error::UnknownChannel(channel))?;
    let recipient = c.recipient.and_then(|u| st.users.get(&u));
    Ok(Json(payload::channel(c, recipient)))
}

/// `POST /channels/{c}/typing`: 204 for any channel the bot can see. No TYPING_START is
/// dispatched (nothing in this project listens for it).
async fn typing(
    AxumState(emu): AxumState<Emulator>,
    Path(channel): Path<String>,
) -> Result<StatusCode, Error> {
    let id = snowflake(&channel)?;
    if !emu.lock().channels.contains_key(&id) {
        return Err(Error::UnknownChannel(id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /channels/{c}/messages/{m}/reactions/{emoji}/@me`: 204. The emoji arrives
/// percent-decoded; a custom `name:id` emoji is unknown (the emulated guilds have none), and a
/// Unicode one must contain something beyond ASCII.
async fn react(
    AxumState(emu): AxumState<Emulator>,
    Path((channel, message, emoji)): Path<(String, String, String)>,
) -> Result<StatusCode, Error> {
    let (channel, message) = (snowflake(&channel)?, snowflake(&message)?);
    {
        let st = emu.lock();
        if !st.channels.contains_key(&channel) {
            return Err(Error::UnknownChannel(channel));
        }
        if st
            .messages
            .get(&message)
            .is_none_or(|m| m.channel_id != channel)
        {
            return Err(Error::UnknownMessage(message));
        }
    }
    if emoji.contains(':') || emoji.is_ascii() {
        return Err(Error::UnknownEmoji);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_messages(
    AxumState(emu): AxumState<Emulator>,
    Path(channel): Path<u64>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let q = query_map(query);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let before = q.get("before").and_then(|v| v.parse::<u64>().ok());
    let after = q.get("after").and_then(|v| v.parse::<u64>().ok());
    let st = emu.lock();
    let history = st.channel_history(channel)?;
    let selected: Vec<Value> = match after {
        // `after`: the oldest messages after the id, returned newest first like Discord.
        Some(after) => {
            let mut v: Vec<_> = history
                .iter()
                .filter(|m| m.id > after)
                .take(limit)
                .collect();
            v.reverse();
            v.into_iter().map(|m| st.message_value(m)).collect()
        }
        None => history
            .iter()
            .rev()
            .filter(|m| before.is_none_or(|b| m.id < b))
            .take(limit)
            .map(|m| st.message_value(m))
            .collect(),
    };
    Ok(Json(Value::Array(selected)))
}

async fn create_message(
    AxumState(emu): AxumState<Emulator>,
    Path(channel): Path<u64>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let body = parse_json(&body)?;
    let kind = if body.get("message_reference").is_some_and(|r| !r.is_null()) {
        19
    } else {
        0
    };
    let new = NewMessage {
        content: body["content"].as_str().unwrap_or_default().to_owned(),
        embeds: body["embeds"].as_array().cloned().unwrap_or_default(),
        nonce: body.get("nonce").filter(|n| !n.is_null()).cloned(),
        enforce_nonce: body["enforce_nonce"].as_bool().unwrap_or(false),
        kind,
        flags: body["flags"].as_u64().unwrap_or(0),
        webhook_id: None,
    };
    let mut st = emu.lock();
    let bot = st.bot.id;
    let (m, _) = st.create_message(channel, bot, new)?;
    Ok(Json(st.message_value(&m)))
}

async fn get_message(
    AxumState(emu): AxumState<Emulator>,
    Path((channel, message)): Path<(u64, u64)>,
) -> Result<Json<Value>, Error> {
    let st = emu.lock();
    if !st.channels.contains_key(&channel) {
        return Err(Error::UnknownChannel(channel));
    }
    let m = st
        .messages
        .get(&message)
        .filter(|m| m.channel_id == channel)
        .ok_or(Error::UnknownMessage(message))?;
    Ok(Json(st.message_value(m)))
}

async fn edit_message(
    AxumState(emu): AxumState<Emulator>,
    Path((channel, message)): Path<(u64, u64)>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let body = parse_json(&body)?;
    let mut st = emu.lock();
    let bot = st.bot.id;
    if st
        .messages
        .get(&message)
        .is_some_and(|m| m.author_id != bot)
    {
        return Err(Error::Invalid(
            "cannot edit a message authored by another user".into(),
        ));
    }
    let content = body["content"].as_str().map(str::to_owned);
    let embeds = body["embeds"].as_array().cloned();
    let m = st.edit_message(channel, message, content, embeds)?;
    Ok(Json(st.message_value(&m)))
}

async fn delete_message(
    AxumState(emu): AxumState<Emulator>,
    Path((channel, message)): Path<(u64, u64)>,
) -> Result<StatusCode, Error> {
    emu.lock().delete_message(channel, message)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bulk_delete(
    AxumState(emu): AxumState<Emulator>,
    Path(channel): Path<u64>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let body = parse_json(&body)?;
    let ids: Vec<u64> = body["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    emu.lock().bulk_delete(channel, &ids)?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_app(emu: &Emulator, app: &str) -> Result<(), Error> {
    if app == emu.lock().application_id.to_string() {
        Ok(())
    } else {
        Err(Error::Invalid(format!("unknown application {app}")))
    }
}

/// Validates and stamps a bulk-overwrite body, keeping the ids of commands that already exist
/// (same name and type), as Discord does.
fn overwrite(
    emu: &Emulator,
    body: &Bytes,
    existing: &[Value],
    guild: Option<u64>,
) -> Result<Vec<Value>, Error> {
    let Value::Array(cmds) = parse_json(body)? else {
        return Err(Error::Invalid("expected an array of commands".into()));
    };
    let mut st = emu.lock();
    let app = st.application_id.to_string();
    let mut out = Vec::with_capacity(cmds.len());
    for mut c in cmds {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let kind = c["type"].as_u64().unwrap_or(1);
        let valid_name = (1..=32).contains(&name.chars().count())
            && (kind != 1
                || name
                    .chars()
                    .all(|ch| ch.is_lowercase() || ch.is_numeric() || "-_'".contains(ch)));
        if !valid_name {
            return Err(Error::Invalid(format!("invalid command name {name:?}")));
        }
        let id = existing
            .iter()
            .find(|e| e["name"] == name.as_str() && e["type"].as_u64() == Some(kind))
            .and_then(|e| e["id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| st.fresh_id().to_string());
        c["id"] = json!(id);
        c["type"] = json!(kind);
        c["application_id"] = json!(app);
        c["version"] = json!(st.fresh_id().to_string());
        if c.get("description").is_none() {
            c["description"] = json!("");
        }
        if c.get("default_member_permissions").is_none() {
            c["default_member_permissions"] = Value::Null;
        }
        if let Some(g) = guild {
            c["guild_id"] = json!(g.to_string());
        }
        out.push(c);
    }
    Ok(out)
}

async fn put_global_commands(
    AxumState(emu): AxumState<Emulator>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    check_app(&emu, &app)?;
    let existing = emu.lock().global_commands.clone();
    let cmds = overwrite(&emu, &body, &existing, None)?;
    emu.lock().global_commands = cmds.clone();
    Ok(Json(Value::Array(cmds)))
}

async fn list_global_commands(
    AxumState(emu): AxumState<Emulator>,
    Path(app): Path<String>,
) -> Result<Json<Value>, Error> {
    check_app(&emu, &app)?;
    Ok(Json(Value::Array(emu.lock().global_commands.clone())))
}

async fn put_guild_commands(
    AxumState(emu): AxumState<Emulator>,
    Path((app, guild)): Path<(String, u64)>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    check_app(&emu, &app)?;
    let existing = {
        let st = emu.lock();
        if !st.guilds.contains_key(&guild) {
            return Err(Error::UnknownGuild(guild));
        }
        st.guild_commands.get(&guild).cloned().unwrap_or_default()
    };
    let cmds = overwrite(&emu, &body, &existing, Some(guild))?;
    emu.lock().guild_commands.insert(guild, cmds.clone());
    Ok(Json(Value::Array(cmds)))
}

async fn list_guild_commands(
    AxumState(emu): AxumState<Emulator>,
    Path((app, guild)): Path<(String, u64)>,
) -> Result<Json<Value>, Error> {
    check_app(&emu, &app)?;
    let st = emu.lock();
    if !st.guilds.contains_key(&guild) {
        return Err(Error::UnknownGuild(guild));
    }
    Ok(Json(Value::Array(
        st.guild_commands.get(&guild).cloned().unwrap_or_default(),
    )))
}
