//! The control API under `/control/v1`: JSON, no auth (a loopback developer tool), one route
//! per [`Emulator`] method, for tests in other processes, the `dev` command and benchmarks.
//! Errors use Discord's error body shape (`{"code":…,"message":…}`).
//!
//! | route | method |
//! |---|---|
//! | `GET /application` | [`Emulator::application`] |
//! | `GET /counters` | [`Emulator::counters`] |
//! | `GET /guilds`, `POST /guilds {name,members?,channels?}`, `GET /guilds/{g}` | guilds |
//! | `POST /guilds/{g}/channels {name}` | [`Emulator::create_channel`] |
//! | `POST /guilds/{g}/members {user_id?}`, `DELETE /guilds/{g}/members/{u}` | join / leave |
//! | `POST /guilds/{g}/bans {user_id,executor_id,reason?}` | [`Emulator::ban`] |
//! | `POST /guilds/{g}/unbans {user_id,executor_id,reason?}` | [`Emulator::unban`] |
//! | `POST /guilds/{g}/timeouts {user_id,executor_id,until_ms?\|duration_ms?,reason?}` | [`Emulator::timeout`] |
//! | `POST /channels/{c}/messages {author_id,content}`, `GET` | post / list |
//! | `PATCH /channels/{c}/messages/{m} {content}`, `DELETE` | edit / delete |
//! | `POST /channels/{c}/bulk-delete {message_ids}` | [`Emulator::bulk_delete`] |
//! | `GET /channels/{c}/bot-messages` | [`Emulator::bot_messages`] |
//! | `POST /users {username}`, `POST /users/{u}/dms {content}`, `GET /users/{u}/bot-dms` | users, DMs |
//! | `POST /interactions/commands` ([`super::RunCommand`]), `POST /interactions/ping` | run |
//! | `GET /interactions`, `GET /interactions/{id}`, `GET /commands` | records |
//! | `PUT /interactions-url {url}` | [`Emulator::set_interactions_url`] |
//! | `GET /sessions[?shard=N]` | [`Emulator::sessions`], optionally only shard id `N` |
//! | `POST /sessions/{s}/{action}` → 204 | [`Emulator::session_action`] |
//! | `POST /shards/{id}/{action}` → `{"sessions":[…]}` | [`Emulator::shard_action`] |
//! | `GET /resume-policy`, `PUT /resume-policy {buffer_frames?,expiry_ms?}` | [`super::ResumePolicy`] |
//!
//! Session actions and their optional bodies: `reconnect`, `drop`, `zombie`, `heartbeat`,
//! `expire`, `invalidate {resumable}` (default false), `close {code}` (default 4000),
//! `redeliver {from_seq}` (default 1).
//! | `POST /traffic` ([`super::TrafficRequest`]), `DELETE /traffic`, `GET /traffic`, `GET /traffic/log` | traffic |

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::payload::now_ms;
use super::sessions::SessionAction;
use super::types::{
    ApplicationInfo, ChannelInfo, Counters, EmittedEvent, GuildInfo, InteractionRecord,
    MessageInfo, SessionInfo, UserInfo,
};
use super::{Emulator, Error, ResumePolicy, RunCommand, TrafficRequest, TrafficStatus};

type Reply<T> = Result<Json<T>, Error>;

/// The request's JSON body; an empty body or `null` means "no arguments", so callers of
/// argument-less routes may send either.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    let bytes: &[u8] = if bytes.is_empty() || bytes.trim_ascii() == b"null" {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Invalid(format!("invalid control request: {e}")))
}

/// The `/control/v1` routes.
pub(crate) fn router() -> Router<Emulator> {
    Router::new()
        .route("/application", get(application))
        .route("/counters", get(counters))
        .route("/guilds", get(guilds).post(create_guild))
        .route("/guilds/{g}", get(guild))
        .route("/guilds/{g}/channels", post(create_channel))
        .route("/guilds/{g}/members", post(add_member))
        .route("/guilds/{g}/members/{u}", delete(remove_member))
        .route("/guilds/{g}/bans", post(ban))
        .route("/guilds/{g}/unbans", post(unban))
        .route("/guilds/{g}/timeouts", post(timeout))
        .route("/channels/{c}/messages", get(messages).post(post_message))
        .route(
            "/channels/{c}/messages/{m}",
            patch(edit_message).delete(delete_message),
        )
        .route("/channels/{c}/bulk-delete", post(bulk_delete))
        .route("/channels/{c}/bot-messages", get(bot_messages))
        .route("/users", post(create_user))
        .route("/users/{u}/dms", post(send_dm))
        .route("/users/{u}/bot-dms", get(bot_dms))
        .route("/interactions", get(interactions))
        .route("/interactions/commands", post(run_command))
        .route("/interactions/ping", post(ping))
        .route("/interactions/{id}", get(interaction))
        .route("/interactions-url", put(set_interactions_url))
        .route("/commands", get(commands))
        .route("/sessions", get(sessions))
        .route("/sessions/{s}/{action}", post(session_action))
        .route("/shards/{id}/{action}", post(shard_action))
        .route("/resume-policy", get(resume_policy).put(set_resume_policy))
        .route(
            "/traffic",
            get(traffic_status).post(start_traffic).delete(stop_traffic),
        )
        .route("/traffic/log", get(traffic_log))
}

async fn application(AxumState(emu): AxumState<Emulator>) -> Json<ApplicationInfo> {
    Json(emu.application())
}

async fn counters(AxumState(emu): AxumState<Emulator>) -> Json<Counters> {
    Json(emu.counters())
}

async fn guilds(AxumState(emu): AxumState<Emulator>) -> Json<Vec<GuildInfo>> {
    Json(emu.guilds())
}

async fn guild(AxumState(emu): AxumState<Emulator>, Path(g): Path<u64>) -> Reply<GuildInfo> {
    emu.guild(g).map(Json)
}

#[derive(Deserialize)]
struct NewGuild {
    name: Option<String>,
    members: Option<usize>,
    channels: Option<usize>,
}

async fn create_guild(AxumState(emu): AxumState<Emulator>, b: Bytes) -> Reply<GuildInfo> {
    let req: NewGuild = body(&b)?;
    let name = req.name.unwrap_or_else(|| "New Guild".into());
    Ok(Json(emu.create_guild(
        &name,
        req.members.unwrap_or(5),
        req.channels.unwrap_or(3),
    )))
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

async fn create_channel(
    AxumState(emu): AxumState<Emulator>,
    Path(g): Path<u64>,
    b: Bytes,
) -> Reply<ChannelInfo> {
    let req: Named = body(&b)?;
    emu.create_channel(g, &req.name).map(Json)
}

#[derive(Deserialize)]
struct Join {
    user_id: Option<u64>,
}

async fn add_member(
    AxumState(emu): AxumState<Emulator>,
    Path(g): Path<u64>,
    b: Bytes,
) -> Reply<UserInfo> {
    let req: Join = body(&b)?;
    emu.add_member(g, req.user_id).map(Json)
}

async fn remove_member(
    AxumState(emu): AxumState<Emulator>,
    Path((g, u)): Path<(u64, u64)>,
) -> Result<StatusCode, Error> {
    emu.remove_member(g, u)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Moderate {
    user_id: u64,
    executor_id: u64,
    reason: Option<String>,
    until_ms: Option<u64>,
    duration_ms: Option<u64>,
}

async fn ban(AxumState(emu): AxumState<Emulator>, Path(g): Path<u64>, b: Bytes) -> Reply<Value> {
    let req: Moderate = body(&b)?;
    let id = emu.ban(g, req.user_id, req.executor_id, req.reason.as_deref())?;
    Ok(Json(json!({"audit_entry_id": id})))
}

async fn unban(AxumState(emu): AxumState<Emulator>, Path(g): Path<u64>, b: Bytes) -> Reply<Value> {
    let req: Moderate = body(&b)?;
    let id = emu.unban(g, req.user_id, req.executor_id, req.reason.as_deref())?;
    Ok(Json(json!({"audit_entry_id": id})))
}

async fn timeout(
    AxumState(emu): AxumState<Emulator>,
    Path(g): Path<u64>,
    b: Bytes,
) -> Reply<Value> {
    let req: Moderate = body(&b)?;
    let until = req
        .until_ms
        .or_else(|| req.duration_ms.map(|d| now_ms() + d));
    let id = emu.timeout(
        g,
        req.user_id,
        req.executor_id,
        until,
        req.reason.as_deref(),
    )?;
    Ok(Json(json!({"audit_entry_id": id, "until_ms": until})))
}

#[derive(Deserialize)]
struct Post {
    author_id: u64,
    content: String,
}

async fn post_message(
    AxumState(emu): AxumState<Emulator>,
    Path(c): Path<u64>,
    b: Bytes,
) -> Reply<MessageInfo> {
    let req: Post = body(&b)?;
    emu.post_message(c, req.author_id, &req.content).map(Json)
}

async fn messages(
    AxumState(emu): AxumState<Emulator>,
    Path(c): Path<u64>,
) -> Reply<Vec<MessageInfo>> {
    emu.messages(c).map(Json)
}

#[derive(Deserialize)]
struct Edit {
    content: String,
}

async fn edit_message(
    AxumState(emu): AxumState<Emulator>,
    Path((c, m)): Path<(u64, u64)>,
    b: Bytes,
) -> Reply<MessageInfo> {
    let req: Edit = body(&b)?;
    emu.edit_message(c, m, &req.content).map(Json)
}

async fn delete_message(
    AxumState(emu): AxumState<Emulator>,
    Path((c, m)): Path<(u64, u64)>,
) -> Result<StatusCode, Error> {
    emu.delete_message(c, m)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Bulk {
    message_ids: Vec<u64>,
}

async fn bulk_delete(
    AxumState(emu): AxumState<Emulator>,
    Path(c): Path<u64>,
    b: Bytes,
) -> Result<StatusCode, Error> {
    let req: Bulk = body(&b)?;
    emu.bulk_delete(c, &req.message_ids)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bot_messages(
    AxumState(emu): AxumState<Emulator>,
    Path(c): Path<u64>,
) -> Reply<Vec<MessageInfo>> {
    emu.bot_messages(c).map(Json)
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
}

async fn create_user(AxumState(emu): AxumState<Emulator>, b: Bytes) -> Reply<UserInfo> {
    let req: NewUser = body(&b)?;
    Ok(Json(emu.create_user(&req.username)))
}

#[derive(Deserialize)]
struct Dm {
    content: String,
}

async fn send_dm(
    AxumState(emu): AxumState<Emulator>,
    Path(u): Path<u64>,
    b: Bytes,
) -> Reply<MessageInfo> {
    let req: Dm = body(&b)?;
    emu.send_dm(u, &req.content).map(Json)
}

async fn bot_dms(
    AxumState(emu): AxumState<Emulator>,
    Path(u): Path<u64>,
) -> Reply<Vec<MessageInfo>> {
    emu.bot_dms(u).map(Json)
}

async fn interactions(AxumState(emu): AxumState<Emulator>) -> Json<Vec<InteractionRecord>> {
    Json(emu.interactions())
}

async fn interaction(
    AxumState(emu): AxumState<Emulator>,
    Path(id): Path<u64>,
) -> Reply<InteractionRecord> {
    emu.interaction(id).map(Json)
}

async fn run_command(AxumState(emu): AxumState<Emulator>, b: Bytes) -> Reply<InteractionRecord> {
    let req: RunCommand = body(&b)?;
    emu.run_command(req).await.map(Json)
}

async fn ping(AxumState(emu): AxumState<Emulator>) -> Reply<InteractionRecord> {
    emu.ping_interactions().await.map(Json)
}

#[derive(Deserialize)]
struct Url {
    url: Option<String>,
}

async fn set_interactions_url(
    AxumState(emu): AxumState<Emulator>,
    b: Bytes,
) -> Result<StatusCode, Error> {
    let req: Url = body(&b)?;
    emu.set_interactions_url(req.url);
    Ok(StatusCode::NO_CONTENT)
}

async fn commands(AxumState(emu): AxumState<Emulator>) -> Json<Value> {
    Json(emu.commands())
}

async fn sessions(
    AxumState(emu): AxumState<Emulator>,
    RawQuery(query): RawQuery,
) -> Reply<Vec<SessionInfo>> {
    let mut shard = None;
    for (k, v) in query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "shard" => {
                shard = Some(
                    v.parse::<u32>()
                        .map_err(|_| Error::Invalid(format!("shard: {v:?} is not a shard id")))?,
                );
            }
            other => return Err(Error::Invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(Json(match shard {
        Some(id) => emu.sessions_of_shard(id),
        None => emu.sessions(),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionArgs {
    resumable: Option<bool>,
    code: Option<u16>,
    from_seq: Option<u64>,
}

/// The action named in the path, with its arguments from the body.
fn parse_action(name: &str, b: &Bytes) -> Result<SessionAction, Error> {
    let args: SessionArgs = body(b)?;
    Ok(match name {
        "reconnect" => SessionAction::Reconnect,
        "invalidate" => SessionAction::Invalidate {
            resumable: args.resumable.unwrap_or(false),
        },
        "drop" => SessionAction::Drop,
        "zombie" => SessionAction::Zombie,
        "heartbeat" => SessionAction::Heartbeat,
        "close" => SessionAction::Close {
            code: args.code.unwrap_or(4000),
        },
        "redeliver" => SessionAction::Redeliver {
            from_seq: args.from_seq.unwrap_or(1),
        },
        "expire" => SessionAction::Expire,
        other => return Err(Error::Invalid(format!("unknown session action {other:?}"))),
    })
}

async fn session_action(
    AxumState(emu): AxumState<Emulator>,
    Path((s, action)): Path<(String, String)>,
    b: Bytes,
) -> Result<StatusCode, Error> {
    emu.session_action(&s, &parse_action(&action, &b)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn shard_action(
    AxumState(emu): AxumState<Emulator>,
    Path((id, action)): Path<(String, String)>,
    b: Bytes,
) -> Reply<Value> {
    let id: u32 = id
        .parse()
        .map_err(|_| Error::Invalid(format!("{id:?} is not a shard id")))?;
    let done = emu.shard_action(id, &parse_action(&action, &b)?)?;
    Ok(Json(json!({ "sessions": done })))
}

async fn resume_policy(AxumState(emu): AxumState<Emulator>) -> Json<ResumePolicy> {
    Json(emu.resume_policy())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyChange {
    buffer_frames: Option<usize>,
    expiry_ms: Option<u64>,
}

async fn set_resume_policy(AxumState(emu): AxumState<Emulator>, b: Bytes) -> Reply<ResumePolicy> {
    let change: PolicyChange = body(&b)?;
    let current = emu.resume_policy();
    let policy = ResumePolicy {
        buffer_frames: change.buffer_frames.unwrap_or(current.buffer_frames),
        expiry_ms: change.expiry_ms.unwrap_or(current.expiry_ms),
    };
    emu.set_resume_policy(policy);
    Ok(Json(policy))
}

async fn traffic_status(AxumState(emu): AxumState<Emulator>) -> Json<TrafficStatus> {
    Json(emu.traffic_status())
}

async fn start_traffic(AxumState(emu): AxumState<Emulator>, b: Bytes) -> Result<StatusCode, Error> {
    let req: TrafficRequest = body(&b)?;
    emu.start_traffic(req)?;
    Ok(StatusCode::ACCEPTED)
}

async fn stop_traffic(AxumState(emu): AxumState<Emulator>) -> StatusCode {
    emu.stop_traffic();
    StatusCode::NO_CONTENT
}

async fn traffic_log(AxumState(emu): AxumState<Emulator>) -> Json<Vec<EmittedEvent>> {
    Json(emu.traffic_log())
}
