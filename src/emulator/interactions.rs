//! HTTP interactions, the way Discord delivers them: a user runs a command, the emulator builds
//! the interaction payload (PING, chat-input and message/user context-menu commands), signs
//! `timestamp + body` with the application's Ed25519 key, POSTs it to the interactions URL and
//! enforces the 3-second deadline for the initial response, which may come in the HTTP reply or
//! through `POST /interactions/{id}/{token}/callback` (after a `202`). Edits of `@original` and
//! follow-ups go through the webhook routes here. Everything the app answered is recorded, so a
//! test can read exactly what the user saw.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::Signer;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::actions::NewMessage;
use super::payload::{self, now_ms};
use super::state::{Message, State};
use super::types::{InteractionOutcome, InteractionRecord};
use super::{Emulator, Error};

/// The kind of application command a user runs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A slash command (type 1).
    #[default]
    ChatInput,
    /// A user context-menu command (type 2); `target_id` is a user.
    User,
    /// A message context-menu command (type 3); `target_id` is a message.
    Message,
}

impl CommandKind {
    fn discord_type(self) -> u8 {
        match self {
            CommandKind::ChatInput => 1,
            CommandKind::User => 2,
            CommandKind::Message => 3,
        }
    }
}

/// One option of a slash command as the user filled it in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommandOption {
    /// Option name.
    pub name: String,
    /// Discord option type (3 string, 4 integer, 5 boolean, 6 user, 7 channel, 10 number, …).
    #[serde(rename = "type")]
    pub kind: u8,
    /// The value; for user and channel options the id (number or string); for sub-commands
    /// (type 1) and groups (type 2) an array of their options.
    pub value: Value,
}

/// A user running a command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunCommand {
    /// Command name.
    pub name: String,
    /// Slash or context-menu command.
    #[serde(default)]
    pub kind: CommandKind,
    /// The guild; `None` runs it in the user's DM with the bot.
    pub guild_id: Option<u64>,
    /// The channel (default: the guild's first channel, or the DM channel).
    pub channel_id: Option<u64>,
    /// Who runs it.
    pub user_id: u64,
    /// Slash command options.
    #[serde(default)]
    pub options: Vec<CommandOption>,
    /// The target message (message commands) or user (user commands).
    pub target_id: Option<u64>,
}

/// An interaction and the bookkeeping the deadline and follow-ups need.
#[derive(Debug)]
pub(crate) struct InteractionEntry {
    pub(crate) record: InteractionRecord,
    created: Instant,
    channel_id: Option<u64>,
    message_kind: u8,
    deferred_ephemeral: bool,
    /// The channel message holding the response, when it is not ephemeral.
    original_message: Option<u64>,
}

/// A signed interaction request, ready to POST: `body` with the headers
/// `x-signature-ed25519: signature` and `x-signature-timestamp: timestamp`.
#[derive(Clone, Debug)]
pub struct SignedInteraction {
    /// The interaction id.
    pub id: u64,
    /// The JSON body, exactly as signed.
    pub body: String,
    /// Unix seconds, as signed.
    pub timestamp: String,
    /// Hex Ed25519 signature of `timestamp + body`.
    pub signature: String,
}

impl Emulator {
    /// A user runs a command: the interaction is signed, POSTed to the interactions URL and
    /// given 3 s for a valid initial response. Returns the record as it stands then (its
    /// `outcome` is `Responded` or `Failed`); later edits and follow-ups keep updating it (see
    /// [`Emulator::interaction`]).
    ///
    /// # Errors
    /// [`Error::NoInteractionsUrl`], unknown guild/channel/user/target.
    pub async fn run_command(&self, cmd: RunCommand) -> Result<InteractionRecord, Error> {
        let (id, url, body) = {
            let mut st = self.lock();
            let url = st
                .interactions_url
                .clone()
                .ok_or(Error::NoInteractionsUrl)?;
            let (id, body) = build_command(&mut st, &cmd)?;
            (id, url, body)
        };
        self.deliver(id, &url, body, 2).await
    }

    /// The request Discord would send when a user runs `cmd`, without sending it: the body
    /// and its signature headers (the interaction is recorded, so a deferred answer's callback
    /// and edits are accepted). For load generators that pre-sign and send on their own clock.
    ///
    /// # Errors
    /// Unknown guild/channel/user/target.
    pub fn signed_command(&self, cmd: &RunCommand) -> Result<SignedInteraction, Error> {
        let (id, body) = build_command(&mut self.lock(), cmd)?;
        let body = body.to_string();
        let (timestamp, signature) = self.sign(&body);
        Ok(SignedInteraction {
            id,
            body,
            timestamp,
            signature,
        })
    }

    /// `(timestamp, hex Ed25519 signature of timestamp + body)`, as Discord signs.
    fn sign(&self, body: &str) -> (String, String) {
        let timestamp = (now_ms() / 1000).to_string();
        let mut signed = timestamp.clone().into_bytes();
        signed.extend_from_slice(body.as_bytes());
        let signature = hex::encode(self.shared.signing_key.sign(&signed).to_bytes());
        (timestamp, signature)
    }

    /// Sends a PING interaction (what Discord does when the URL is saved); the app must answer
    /// `{"type":1}`.
    ///
    /// # Errors
    /// [`Error::NoInteractionsUrl`].
    pub async fn ping_interactions(&self) -> Result<InteractionRecord, Error> {
        let (id, url, body) = {
            let mut st = self.lock();
            let url = st
                .interactions_url
                .clone()
                .ok_or(Error::NoInteractionsUrl)?;
            let id = st.fresh_id();
            let token = new_token();
            let payload = json!({
                "id": id.to_string(), "application_id": st.application_id.to_string(), "type": 1,
                "token": token, "version": 1,
                "user": {"id": "0", "username": "discord", "discriminator": "0", "global_name": null, "avatar": null},
                "entitlements": [], "authorizing_integration_owners": {},
            });
            insert_entry(&mut st, id, token, 1, payload.clone(), None, 0);
            (id, url, payload)
        };
        self.deliver(id, &url, body, 1).await
    }

    /// The current record of an interaction.
    ///
    /// # Errors
    /// [`Error::UnknownInteraction`].
    pub fn interaction(&self, id: u64) -> Result<InteractionRecord, Error> {
        self.lock()
            .interactions
            .get(&id)
            .map(|e| e.record.clone())
            .ok_or(Error::UnknownInteraction(id))
    }

    /// Every interaction sent, oldest first.
    pub fn interactions(&self) -> Vec<InteractionRecord> {
        let st = self.lock();
        let mut all: Vec<InteractionRecord> =
            st.interactions.values().map(|e| e.record.clone()).collect();
        all.sort_by_key(|r| r.id);
        all
    }

    /// The registered commands: global ones, then each guild's.
    pub fn commands(&self) -> Value {
        let st = self.lock();
        let guilds: Map<String, Value> = st
            .guild_commands
            .iter()
            .map(|(g, c)| (g.to_string(), Value::Array(c.clone())))
            .collect();
        json!({"global": st.global_commands, "guilds": guilds})
    }

    /// Signs and POSTs `body`, then waits (bounded by the deadline) for the initial response.
    async fn deliver(
        &self,
        id: u64,
        url: &str,
        body: Value,
        kind: u8,
    ) -> Result<InteractionRecord, Error> {
        let deadline =
            Instant::now() + Duration::from_millis(self.shared.cfg.interaction_deadline_ms);
        let raw = body.to_string();
        let (timestamp, signature) = self.sign(&raw);
        let request = self
            .shared
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                "Discord-Interactions/1.0 (+https://discord.com)",
            )
            .header("x-signature-ed25519", signature)
            .header("x-signature-timestamp", timestamp)
            .body(raw)
            .send();
        let reply = tokio::time::timeout_at(deadline.into(), async {
            let resp = request.await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        })
        .await;
        match reply {
            Err(_) => self.fail_if_pending(id, "no response within the deadline"),
            Ok(Err(err)) => self.fail_if_pending(id, &format!("request failed: {err}")),
            Ok(Ok((status, bytes))) if status == StatusCode::ACCEPTED => {
                // The app will answer through the callback endpoint; wait for it, bounded.
                loop {
                    let answered = self
                        .lock()
                        .interactions
                        .get(&id)
                        .is_some_and(|e| e.record.initial_response.is_some());
                    if answered || Instant::now() >= deadline {
                        break;
                    }
                    tokio::select! {
                        () = self.shared.interaction_answered.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                drop(bytes);
                self.fail_if_pending(id, "202 without a callback within the deadline");
            }
            Ok(Ok((status, bytes))) if status.is_success() => {
                let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
                let mut st = self.lock();
                match parsed {
                    Some(response) => {
                        if let Err(err) = apply_initial(&mut st, id, &response, kind, deadline) {
                            fail(&mut st, id, &format!("invalid response: {err}"));
                        }
                    }
                    None => fail(&mut st, id, "the response body is not json"),
                }
            }
            Ok(Ok((status, _))) => self.fail_if_pending(id, &format!("endpoint answered {status}")),
        }
        self.interaction(id)
    }

    fn fail_if_pending(&self, id: u64, reason: &str) {
        let mut st = self.lock();
        if st
            .interactions
            .get(&id)
            .is_some_and(|e| e.record.outcome == InteractionOutcome::Pending)
        {
            fail(&mut st, id, reason);
        }
    }
}

fn fail(st: &mut State, id: u64, reason: &str) {
    if let Some(e) = st.interactions.get_mut(&id) {
        tracing::info!(
            interaction = id,
            reason,
            "interaction failed: the application did not respond"
        );
        e.record.outcome = InteractionOutcome::Failed {
            reason: reason.to_owned(),
        };
    }
}

fn new_token() -> String {
    // Discord tokens are long opaque strings; 32 random bytes base16 is as unguessable.
    format!(
        "aW50ZXJhY3Rpb24{}",
        hex::encode(rand::thread_rng().gen::<[u8; 32]>())
    )
}

fn insert_entry(
    st: &mut State,
    id: u64,
    token: String,
    kind: u8,
    payload: Value,
    channel_id: Option<u64>,
    message_kind: u8,
) {
    st.interaction_tokens
        .insert(token.clone(), (id, Instant::now()));
    st.interactions.insert(
        id,
        InteractionEntry {
            record: InteractionRecord {
                id,
                token,
                kind,
                payload,
                outcome: InteractionOutcome::Pending,
                initial_response: None,
                original: None,
                edits: vec![],
                followups: vec![],
            },
            created: Instant::now(),
            channel_id,
            message_kind,
            deferred_ephemeral: false,
            original_message: None,
        },
    );
}

fn id_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Sub-command (1) and group (2) options carry their own options, given as the `value` (an
/// array of options); Discord sends those as `options`, with no `value`.
fn nested(o: &CommandOption) -> Option<Vec<CommandOption>> {
    matches!(o.kind, 1 | 2)
        .then(|| serde_json::from_value(o.value.clone()).ok())
        .flatten()
}

/// One option as Discord sends it: ids as strings, sub-commands with nested options.
fn option_value(o: &CommandOption) -> Value {
    if let Some(inner) = nested(o) {
        return json!({"name": o.name, "type": o.kind, "options": inner.iter().map(option_value).collect::<Vec<_>>()});
    }
    let value = match o.kind {
        6..=9 => json!(id_of(&o.value).map_or_else(|| o.value.to_string(), |v| v.to_string())),
        _ => o.value.clone(),
    };
    json!({"name": o.name, "type": o.kind, "value": value})
}

/// Every option that holds a value, sub-commands flattened, for `resolved`.
fn leaf_options(options: &[CommandOption]) -> Vec<CommandOption> {
    options
        .iter()
        .flat_map(|o| nested(o).map_or_else(|| vec![o.clone()], |inner| leaf_options(&inner)))
        .collect()
}

/// Builds and stores the APPLICATION_COMMAND interaction for `cmd`.
fn build_command(st: &mut State, cmd: &RunCommand) -> Result<(u64, Value), Error> {
    let user = st
        .users
        .get(&cmd.user_id)
        .ok_or(Error::UnknownUser(cmd.user_id))?
        .clone();
    let channel_id = match (cmd.channel_id, cmd.guild_id) {
        (Some(c), _) => c,
        (None, Some(g)) => *st
            .guilds
            .get(&g)
            .ok_or(Error::UnknownGuild(g))?
            .channels
            .first()
            .ok_or(Error::UnknownChannel(0))?,
        (None, None) => st.dm_channel_for(cmd.user_id)?.id,
    };
    let channel = st
        .channels
        .get(&channel_id)
        .ok_or(Error::UnknownChannel(channel_id))?
        .clone();
    if channel.guild_id != cmd.guild_id {
        return Err(Error::Invalid(format!(
            "channel {channel_id} is not in that guild"
        )));
    }
    let kind = cmd.kind.discord_type();
    let registered = cmd
        .guild_id
        .and_then(|g| st.guild_commands.get(&g))
        .into_iter()
        .flatten()
        .chain(st.global_commands.iter())
        .find(|c| {
            c["name"] == cmd.name.as_str() && c["type"].as_u64().unwrap_or(1) == u64::from(kind)
        })
        .cloned();
    let (command_id, command_guild) = match &registered {
        Some(c) => (id_of(&c["id"]).unwrap_or(0), c.get("guild_id").cloned()),
        None => {
            tracing::warn!(name = %cmd.name, "running a command that is not registered");
            (payload::snowflake(now_ms(), 1), None)
        }
    };
    let id = st.fresh_id();
    let token = new_token();
    let mut data = json!({"id": command_id.to_string(), "name": cmd.name, "type": kind});
    if let Some(g) = command_guild.filter(|g| !g.is_null()) {
        data["guild_id"] = g;
    }
    let mut resolved = json!({});
    if !cmd.options.is_empty() {
        data["options"] = json!(cmd.options.iter().map(option_value).collect::<Vec<_>>());
        for o in &leaf_options(&cmd.options) {
            let Some(target) = id_of(&o.value) else {
                continue;
            };
            match o.kind {
                6 => resolve_user(st, &mut resolved, cmd.guild_id, target),
                7 => {
                    if let Some(c) = st.channels.get(&target) {
                        resolved["channels"][target.to_string()] = payload::channel(c, None);
                    }
                }
                _ => {}
            }
        }
    }
    match (cmd.kind, cmd.target_id) {
        (CommandKind::Message, Some(target)) => {
            let m = st
                .messages
                .get(&target)
                .filter(|m| m.channel_id == channel_id)
                .ok_or(Error::UnknownMessage(target))?;
            resolved["messages"][target.to_string()] = st.message_value(m);
            data["target_id"] = json!(target.to_string());
        }
        (CommandKind::User, Some(target)) => {
            if !st.users.contains_key(&target) {
                return Err(Error::UnknownUser(target));
            }
            resolve_user(st, &mut resolved, cmd.guild_id, target);
            data["target_id"] = json!(target.to_string());
        }
        (CommandKind::ChatInput, _) => {}
        (_, None) => {
            return Err(Error::Invalid(
                "a context-menu command needs target_id".into(),
            ))
        }
    }
    if resolved.as_object().is_some_and(|o| !o.is_empty()) {
        data["resolved"] = resolved;
    }
    let mut body = json!({
        "id": id.to_string(), "application_id": st.application_id.to_string(), "type": 2,
        "data": data, "channel_id": channel_id.to_string(), "token": token, "version": 1,
        "app_permissions": payload::APP_PERMISSIONS.to_string(), "locale": "en-US",
        "entitlements": [], "attachment_size_limit": 10_485_760,
    });
    match cmd.guild_id {
        Some(g) => {
            let guild = st.guilds.get(&g).ok_or(Error::UnknownGuild(g))?;
            let member = guild
                .members
                .get(&cmd.user_id)
                .ok_or(Error::UnknownMember {
                    guild: g,
                    user: cmd.user_id,
                })?;
            let mut m = payload::member(member, &user, true);
            m["permissions"] = json!(payload::member_permissions(guild, cmd.user_id).to_string());
            body["guild_id"] = json!(g.to_string());
            body["guild"] = json!({"id": g.to_string(), "locale": "en-US", "features": []});
            body["guild_locale"] = json!("en-US");
            body["member"] = m;
            body["channel"] = payload::channel(&channel, None);
            body["context"] = json!(0);
            body["authorizing_integration_owners"] = json!({"0": g.to_string()});
        }
        None => {
            body["user"] = payload::user(&user);
            body["channel"] = payload::channel(&channel, Some(&user));
            body["context"] = json!(1);
            body["authorizing_integration_owners"] = json!({"0": "0"});
        }
    }
    let message_kind = if cmd.kind == CommandKind::ChatInput {
        20
    } else {
        23
    };
    insert_entry(
        st,
        id,
        token,
        2,
        body.clone(),
        Some(channel_id),
        message_kind,
    );
    Ok((id, body))
}

fn resolve_user(st: &State, resolved: &mut Value, guild_id: Option<u64>, user_id: u64) {
    let Some(u) = st.users.get(&user_id) else {
        return;
    };
    resolved["users"][user_id.to_string()] = payload::user(u);
    if let Some(m) = guild_id.and_then(|g| st.guilds.get(&g)?.members.get(&user_id)) {
        let mut v = payload::member(m, u, false);
        if let Some(g) = guild_id.and_then(|g| st.guilds.get(&g)) {
            v["permissions"] = json!(payload::member_permissions(g, user_id).to_string());
        }
        resolved["members"][user_id.to_string()] = v;
    }
}

/// Creates the message a response shows: in the channel (MESSAGE_CREATE) unless ephemeral.
fn response_message(
    st: &mut State,
    id: u64,
    data: &Value,
    ephemeral: bool,
    kind: u8,
) -> Result<(Option<u64>, Value), Error> {
    let entry = st
        .interactions
        .get(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    let channel_id = entry.channel_id.ok_or(Error::UnknownInteraction(id))?;
    let content = data["content"].as_str().unwrap_or_default().to_owned();
    let embeds = data["embeds"].as_array().cloned().unwrap_or_default();
    let flags = data["flags"].as_u64().unwrap_or(0) | if ephemeral { 64 } else { 0 };
    if ephemeral {
        let guild_id = st.channels.get(&channel_id).and_then(|c| c.guild_id);
        let msg_id = st.fresh_id();
        let m = Message {
            id: msg_id,
            channel_id,
            guild_id,
            author_id: st.bot.id,
            content,
            embeds,
            timestamp_ms: now_ms(),
            edited_ms: None,
            nonce: None,
            kind,
            flags,
            webhook_id: Some(st.application_id),
        };
        return Ok((None, st.message_value(&m)));
    }
    let new = NewMessage {
        content,
        embeds,
        kind,
        flags,
        webhook_id: Some(st.application_id),
        ..NewMessage::default()
    };
    let bot = st.bot.id;
    let (m, _) = st.create_message(channel_id, bot, new)?;
    Ok((Some(m.id), st.message_value(&m)))
}

/// Records the initial response (from the HTTP reply or the callback endpoint).
fn apply_initial(
    st: &mut State,
    id: u64,
    response: &Value,
    interaction_kind: u8,
    deadline: Instant,
) -> Result<(), Error> {
    let entry = st
        .interactions
        .get(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    if entry.record.initial_response.is_some() {
        return Err(Error::AlreadyAcknowledged);
    }
    if Instant::now() > deadline {
        return Err(Error::UnknownInteraction(id));
    }
    let rtype = response["type"].as_u64().unwrap_or(0) as u8;
    let allowed: &[u8] = if interaction_kind == 1 { &[1] } else { &[4, 5] };
    if !allowed.contains(&rtype) {
        return Err(Error::Invalid(format!(
            "response type {rtype} is not valid for interaction type {interaction_kind}"
        )));
    }
    let data = response.get("data").cloned().unwrap_or(Value::Null);
    let ephemeral = data["flags"].as_u64().is_some_and(|f| f & 64 != 0);
    let message_kind = entry.message_kind;
    let (original_message, original) = if rtype == 4 {
        if data["content"].as_str().unwrap_or_default().is_empty()
            && data["embeds"].as_array().is_none_or(Vec::is_empty)
        {
            return Err(Error::Invalid("type 4 needs content or embeds".into()));
        }
        let (mid, v) = response_message(st, id, &data, ephemeral, message_kind)?;
        (mid, Some(v))
    } else {
        (None, None)
    };
    let entry = st
        .interactions
        .get_mut(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    entry.record.initial_response = Some(response.clone());
    entry.record.outcome = InteractionOutcome::Responded {
        response_type: rtype,
    };
    entry.record.original = original;
    entry.original_message = original_message;
    entry.deferred_ephemeral = rtype == 5 && ephemeral;
    Ok(())
}

/// The interaction behind a webhook `{app}/{token}` (valid for 15 minutes).
fn webhook_interaction(st: &State, app: &str, token: &str) -> Result<u64, Error> {
    if app != st.application_id.to_string() {
        return Err(Error::UnknownWebhook);
    }
    st.interaction_tokens
        .get(token)
        .filter(|(_, at)| at.elapsed() < Duration::from_secs(15 * 60))
        .map(|(id, _)| *id)
        .ok_or(Error::UnknownWebhook)
}

fn parse_body(body: &Bytes) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Invalid(format!("body is not valid json: {e}")))
}

/// `POST /interactions/{id}/{token}/callback`.
pub(crate) async fn callback(
    AxumState(emu): AxumState<Emulator>,
    Path((id, token)): Path<(u64, String)>,
    body: Bytes,
) -> Result<Response, Error> {
    let response = parse_body(&body)?;
    {
        let mut st = emu.lock();
        let entry = st
            .interactions
            .get(&id)
            .ok_or(Error::UnknownInteraction(id))?;
        if entry.record.token != token {
            return Err(Error::UnknownInteraction(id));
        }
        let deadline =
            entry.created + Duration::from_millis(emu.shared.cfg.interaction_deadline_ms);
        let kind = entry.record.kind;
        apply_initial(&mut st, id, &response, kind, deadline)?;
    }
    emu.shared.interaction_answered.notify_waiters();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Edits (or, after a defer, first shows) the response message.
fn edit_original(st: &mut State, id: u64, body: &Value) -> Result<Value, Error> {
    let entry = st
        .interactions
        .get(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    if entry.record.initial_response.is_none() {
        return Err(Error::UnknownMessage(0));
    }
    let (ephemeral, message_kind, existing, original) = (
        entry.deferred_ephemeral || entry.record.is_ephemeral(),
        entry.message_kind,
        entry.original_message,
        entry.record.original.clone(),
    );
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let embeds = body.get("embeds").and_then(Value::as_array).cloned();
    let message = match (existing, original) {
        (Some(mid), _) => {
            let channel_id = st
                .messages
                .get(&mid)
                .map(|m| m.channel_id)
                .ok_or(Error::UnknownMessage(mid))?;
            let m = st.edit_message(channel_id, mid, content, embeds)?;
            st.message_value(&m)
        }
        (None, Some(mut v)) => {
            // An ephemeral response: only the user sees it, so only the record changes.
            if let Some(c) = content {
                v["content"] = json!(c);
            }
            if let Some(e) = embeds {
                v["embeds"] = json!(e);
            }
            v["edited_timestamp"] = json!(payload::iso8601(now_ms()));
            v
        }
        (None, None) => {
            let (mid, v) = response_message(st, id, body, ephemeral, message_kind)?;
            if let Some(e) = st.interactions.get_mut(&id) {
                e.original_message = mid;
            }
            v
        }
    };
    let entry = st
        .interactions
        .get_mut(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    entry.record.edits.push(body.clone());
    entry.record.original = Some(message.clone());
    Ok(message)
}

/// `PATCH /webhooks/{app}/{token}/messages/@original`.
pub(crate) async fn patch_original(
    AxumState(emu): AxumState<Emulator>,
    Path((app, token)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let body = parse_body(&body)?;
    let mut st = emu.lock();
    let id = webhook_interaction(&st, &app, &token)?;
    edit_original(&mut st, id, &body).map(Json)
}

/// `GET /webhooks/{app}/{token}/messages/@original`.
pub(crate) async fn get_original(
    AxumState(emu): AxumState<Emulator>,
    Path((app, token)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let st = emu.lock();
    let id = webhook_interaction(&st, &app, &token)?;
    st.interactions
        .get(&id)
        .and_then(|e| e.record.original.clone())
        .map(Json)
        .ok_or(Error::UnknownMessage(0))
}

/// `DELETE /webhooks/{app}/{token}/messages/@original`.
pub(crate) async fn delete_original(
    AxumState(emu): AxumState<Emulator>,
    Path((app, token)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let mut st = emu.lock();
    let id = webhook_interaction(&st, &app, &token)?;
    let entry = st
        .interactions
        .get_mut(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    if entry.record.original.take().is_none() {
        return Err(Error::UnknownMessage(0));
    }
    if let Some(mid) = entry.original_message.take() {
        if let Some(channel_id) = st.messages.get(&mid).map(|m| m.channel_id) {
            st.delete_message(channel_id, mid)?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /webhooks/{app}/{token}`: a follow-up message (`wait` is implied).
pub(crate) async fn followup(
    AxumState(emu): AxumState<Emulator>,
    Path((app, token)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let body = parse_body(&body)?;
    let mut st = emu.lock();
    let id = webhook_interaction(&st, &app, &token)?;
    let entry = st
        .interactions
        .get(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    if entry.record.initial_response.is_none() {
        return Err(Error::UnknownInteraction(id));
    }
    let deferred_without_message = entry.record.original.is_none()
        && entry
            .record
            .initial_response
            .as_ref()
            .is_some_and(|r| r["type"] == 5);
    if deferred_without_message {
        // Discord's (deprecated) behaviour: the first follow-up after a defer fills the
        // loading message instead of posting a new one.
        return edit_original(&mut st, id, &body).map(Json);
    }
    if body["content"].as_str().unwrap_or_default().is_empty()
        && body["embeds"].as_array().is_none_or(Vec::is_empty)
    {
        return Err(Error::Invalid("cannot send an empty message".into()));
    }
    let ephemeral = body["flags"].as_u64().is_some_and(|f| f & 64 != 0);
    let (_, message) = response_message(&mut st, id, &body, ephemeral, 0)?;
    let entry = st
        .interactions
        .get_mut(&id)
        .ok_or(Error::UnknownInteraction(id))?;
    entry.record.followups.push(message.clone());
    Ok(Json(message))
}
