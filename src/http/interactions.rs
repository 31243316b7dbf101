//! `POST /interactions`: Discord's HTTP interactions endpoint.
//!
//! The [`Verified`] extractor checks the Ed25519 signature over `timestamp + raw body` before
//! anything parses the body (401 on any failure, stale timestamps included; 413 over the size
//! limit). The handler then answers PING itself, answers interaction types the bot does not
//! handle without routing, and forwards application commands to the owner pod with a deadline
//! that leaves margin inside Discord's 3 s:
//!
//! - the pod answers in time: its response goes back to Discord as is;
//! - the pod is slower than the deadline: it answers "deferred", we return type 5, and the pod
//!   edits the original response itself when done (so there is exactly one answer);
//! - the pod is unreachable, times out or fails: an ephemeral "restarting" message at once;
//! - the pod could not read the interaction (400): an ephemeral "could not read" message;
//! - more forwards to that pod are in flight than [`super::admission`] admits: an ephemeral
//!   "busy" message at once, without contacting the pod.
//!
//! A timed-out forward is answered "restarting, try again" and the pod does not act on it:
//! the pod answers (or defers) within the deadline it is given, counted from its own arrival,
//! and a command that has not started when its caller gave up is never started (see
//! `gateway::commands`). The other choice, deferring on a timeout and letting the pod finish,
//! would leave the user with a reply that never comes whenever the pod is really stuck, and
//! "try again" is only honest if nothing ran.
//!
//! An interaction POST is retried only when it cannot have reached a pod (connect error) or
//! when the pod refused without executing (409, re-routed once to the owner it names).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::listener::Arrival;
use crate::ownership::{owner_of_event, GuildId, Ordinal};
use crate::pod_client::{Forwarded, PodError};
use crate::wire::InteractionOutcome;

use super::error::AppError;
use super::metrics::Outcome;
use super::{AppState, Inner};

/// Largest interaction body accepted, bytes. Discord's payloads are a few KiB; resolved
/// messages and members make them larger, never near this.
pub const MAX_BODY: usize = 64 * 1024;
/// How far a signature timestamp may be from our clock, either way. Discord signs at send
/// time; a replayed request older than this is refused even with a valid signature.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Discord's limit for the initial response.
pub const DISCORD_DEADLINE: Duration = Duration::from_millis(3000);
/// What the pod's deadline leaves for the hops back (pod → us → Discord).
const MARGIN: Duration = Duration::from_millis(400);
/// How much longer than the pod's deadline the HTTP call may take (the pod answers "deferred"
/// at its deadline; this covers that answer's trip).
const CALL_SLACK: Duration = Duration::from_millis(250);
/// Below this budget a pod cannot usefully be asked.
const MIN_BUDGET: Duration = Duration::from_millis(50);

/// Signature header (hex Ed25519 signature).
pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
/// Timestamp header (unix seconds, as signed).
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";

/// What users see when the owner pod cannot answer.
pub const RESTARTING_MESSAGE: &str =
    "This server's shard is restarting, try again in a few seconds.";
/// What users see when more commands are waiting for their shard than it may be sent at once.
pub const BUSY_MESSAGE: &str = "The bot is busy right now, try again in a moment.";
/// What users see when the owner pod could not read the interaction (it answered 400).
pub const UNREADABLE_MESSAGE: &str =
    "Sorry, I could not read this command. Please try again; if it keeps happening, tell the server's admins.";
const UNSUPPORTED_MESSAGE: &str =
    "This bot only handles its slash commands and the Report message command; buttons, menus and forms aren't supported.";

// Discord's interaction types.
const PING: u8 = 1;
const APPLICATION_COMMAND: u8 = 2;
const AUTOCOMPLETE: u8 = 4;
// Interaction response types and the ephemeral flag.
const PONG: u8 = 1;
const CHANNEL_MESSAGE: u8 = 4;
const DEFERRED_CHANNEL_MESSAGE: u8 = 5;
const AUTOCOMPLETE_RESULT: u8 = 8;
const EPHEMERAL: u64 = 1 << 6;

/// A request body whose Ed25519 signature checked out, and when the request arrived.
#[derive(Debug)]
pub struct Verified {
    /// The raw body, exactly as signed.
    pub body: Bytes,
    /// When the request arrived ([`Arrival`], or when extraction started for a request that
    /// did not come through [`crate::listener`]): the deadline counts from here.
    pub arrived: Instant,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks `signature_hex` over `timestamp + body` with `key`, and the timestamp's freshness
/// against `now` (unix seconds).
///
/// # Errors
/// [`AppError::Unauthorized`] naming what failed.
pub fn verify(
    key: &VerifyingKey,
    signature_hex: &str,
    timestamp: &str,
    body: &[u8],
    now: u64,
) -> Result<(), AppError> {
    let signed_at: u64 = timestamp
        .parse()
        .map_err(|_| AppError::Unauthorized("malformed signature timestamp"))?;
    if now.abs_diff(signed_at) > MAX_CLOCK_SKEW.as_secs() {
        return Err(AppError::Unauthorized("stale signature timestamp"));
    }
    let mut raw = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut raw)
        .map_err(|_| AppError::Unauthorized("malformed signature"))?;
    let signature = Signature::from_bytes(&raw);
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    key.verify_strict(&message, &signature)
        .map_err(|_| AppError::Unauthorized("invalid request signature"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FromRequest<AppState> for Verified {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // Discord's 3 s run from when it sent the request: count from the moment the listener
        // read the head, not from here (middleware and scheduling delays count too).
        let arrived = req
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.0);
        let headers = req.headers();
        let signature = header(headers, SIGNATURE_HEADER)
            .ok_or(AppError::Unauthorized("missing signature header"))?
            .to_owned();
        let timestamp = header(headers, TIMESTAMP_HEADER)
            .ok_or(AppError::Unauthorized("missing signature timestamp header"))?
            .to_owned();
        // The body limit is the route's DefaultBodyLimit; its rejection says 413.
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge { limit: MAX_BODY }
            } else {
                AppError::BadRequest(rejection.body_text())
            }
        })?;
        verify(
            &state.inner.public_key,
            &signature,
            &timestamp,
            &body,
            unix_now(),
        )?;
        Ok(Verified { body, arrived })
    }
}

/// The part of an interaction the router needs.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: u8,
    guild_id: Option<String>,
}

fn answer(body: Value, outcome: Outcome) -> Response {
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(outcome);
    response
}

fn ephemeral(text: &str) -> Value {
    json!({ "type": CHANNEL_MESSAGE, "data": { "content": text, "flags": EPHEMERAL, "allowed_mentions": { "parse": [] } } })
}

/// `POST /interactions`.
///
/// # Errors
/// 400 for a body that is not an interaction (signature problems are the extractor's 401/413).
pub async fn interactions(
    State(state): State<AppState>,
    verified: Verified,
) -> Result<Response, AppError> {
    let envelope: Envelope = serde_json::from_slice(&verified.body)
        .map_err(|e| AppError::BadRequest(format!("malformed interaction: {e}")))?;
    match envelope.kind {
        PING => Ok(answer(json!({ "type": PONG }), Outcome::Pong)),
        APPLICATION_COMMAND => {
            let guild = envelope
                .guild_id
                .as_deref()
                .map(str::parse::<GuildId>)
                .transpose()
                .map_err(|e| AppError::BadRequest(format!("guild_id: {e}")))?;
            Ok(route_command(&state, guild, verified).await)
        }
        // Autocomplete only accepts choices as an answer: offer none.
        AUTOCOMPLETE => Ok(answer(
            json!({ "type": AUTOCOMPLETE_RESULT, "data": { "choices": [] } }),
            Outcome::Unsupported,
        )),
        // Components, modal submits and anything newer: say so rather than fail silently.
        _ => Ok(answer(ephemeral(UNSUPPORTED_MESSAGE), Outcome::Unsupported)),
    }
}

/// Forwards a command to its owner and turns what happens into exactly one Discord answer.
async fn route_command(state: &AppState, guild: Option<GuildId>, verified: Verified) -> Response {
    let inner = &state.inner;
    let Verified { body, arrived } = verified;
    let mut target = owner_of_event(guild, inner.topology.current().topology);
    let mut rerouted = false;
    let mut reconnected = false;
    let mut to_cover = false;
    let response = loop {
        let budget = DISCORD_DEADLINE
            .saturating_sub(arrived.elapsed())
            .saturating_sub(MARGIN);
        if budget < MIN_BUDGET {
            break unavailable(guild, "no time left before Discord's deadline");
        }
        // Past the limit the pod is already working on plenty: waiting for a slot would only
        // spend the user's 3 s, so say so now.
        let Some(_permit) = inner.admission.try_admit(target) else {
            break busy(guild, target);
        };
        match inner
            .pods
            .interaction(target, body.clone(), budget, budget + CALL_SLACK)
            .await
        {
            Ok(Forwarded::Outcome(InteractionOutcome::Respond { response })) => {
                break answer(response, Outcome::Responded)
            }
            Ok(Forwarded::Outcome(InteractionOutcome::Deferred { ephemeral })) => {
                info!(
                    ordinal = target.0,
                    "owner slower than the deadline; deferred"
                );
                let data = if ephemeral {
                    json!({ "flags": EPHEMERAL })
                } else {
                    json!({})
                };
                break answer(
                    json!({ "type": DEFERRED_CHANNEL_MESSAGE, "data": data }),
                    Outcome::Deferred,
                );
            }
            // The pod refused without executing: safe to send again, once, to the owner it
            // names under its own (newer or older) topology, and learn the topology again.
            Ok(Forwarded::NotOwner(not_owner)) if !rerouted && not_owner.owner != target => {
                inner.topology.request_refresh();
                inner.metrics.reroutes.inc();
                info!(from = target.0, to = not_owner.owner.0, pod_topology = %not_owner.topology, "pod is not the owner; re-routing once");
                rerouted = true;
                target = not_owner.owner;
            }
            Ok(Forwarded::NotOwner(not_owner)) => {
                inner.topology.request_refresh();
                break unavailable(
                    guild,
                    &format!(
                        "gateway-{target} is not the owner either (it says gateway-{})",
                        not_owner.owner
                    ),
                );
            }
            // Nothing was sent: one more try cannot act twice.
            Err(PodError::Connect { .. }) if !reconnected => reconnected = true,
            // The owner is down: the peer covering it processes its guilds (DESIGN §6), and
            // the owner did not act (nothing was sent, or it answered 503), so sending there
            // cannot act twice.
            Err(PodError::Connect { .. } | PodError::Unavailable { .. }) if !to_cover => {
                to_cover = true;
                let left = DISCORD_DEADLINE
                    .saturating_sub(arrived.elapsed())
                    .saturating_sub(MARGIN);
                let Some(cover) = cover_of(inner, target, left).await else {
                    break unavailable(
                        guild,
                        &format!("gateway-{target} is down and no peer reports covering it"),
                    );
                };
                inner.metrics.to_cover.inc();
                info!(
                    guild_id = guild.map(|g| g.0),
                    owner = target.0,
                    cover = cover.0,
                    "owner down; sending to the pod covering it"
                );
                target = cover;
            }
            // The pod read the body and refused it without running anything: a retry would
            // be refused too, and "restarting" would be untrue.
            Err(PodError::Rejected { ordinal, reason }) => {
                warn!(guild_id = guild.map(|g| g.0), ordinal = ordinal.0, cause = %reason, "owner could not read the interaction");
                break answer(ephemeral(UNREADABLE_MESSAGE), Outcome::Unreadable);
            }
            Err(err) => break unavailable(guild, &err.to_string()),
        }
    };
    inner.metrics.observe_routing(arrived.elapsed());
    response
}

/// The pod covering `down`: as last learned, or learned again now (within half of `left`,
/// the time left to answer) when the last refresh predates the owner going down.
async fn cover_of(inner: &Inner, down: Ordinal, left: Duration) -> Option<Ordinal> {
    if let Some(cover) = inner.topology.cover_of(down) {
        return Some(cover);
    }
    if left < MIN_BUDGET * 2 {
        return None;
    }
    let budget = left;
    let _ = tokio::time::timeout(
        budget / 2,
        inner.topology.refresh(&inner.pods, &inner.metrics),
    )
    .await;
    inner.topology.cover_of(down)
}

fn busy(guild: Option<GuildId>, target: crate::ownership::Ordinal) -> Response {
    // Not a warning per request: under overload that would flood the log; the
    // `busy` counter is what alerts.
    debug!(
        guild_id = guild.map(|g| g.0),
        ordinal = target.0,
        "admission limit reached; answering 'busy'"
    );
    answer(ephemeral(BUSY_MESSAGE), Outcome::Busy)
}

fn unavailable(guild: Option<GuildId>, cause: &str) -> Response {
    warn!(
        guild_id = guild.map(|g| g.0),
        cause, "answering 'shard restarting'"
    );
    answer(ephemeral(RESTARTING_MESSAGE), Outcome::OwnerUnavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn sign(key: &SigningKey, ts: &str, body: &[u8]) -> String {
        let mut msg = ts.as_bytes().to_vec();
        msg.extend_from_slice(body);
        hex::encode(key.sign(&msg).to_bytes())
    }

    #[test]
    fn accepts_a_fresh_valid_signature_and_nothing_else() {
        let k = key();
        let vk = k.verifying_key();
        let body = br#"{"type":1}"#;
        let now = 1_700_000_000;
        let ts = now.to_string();
        let sig = sign(&k, &ts, body);
        assert!(verify(&vk, &sig, &ts, body, now).is_ok());
        // Tampered body, other timestamp, bad hex, short signature, stale or future time.
        assert!(verify(&vk, &sig, &ts, br#"{"type":2}"#, now).is_err());
        assert!(verify(&vk, &sig, &(now + 1).to_string(), body, now).is_err());
        assert!(verify(&vk, "zz", &ts, body, now).is_err());
        assert!(verify(&vk, &sig[..64], &ts, body, now).is_err());
        assert!(verify(&vk, &sig, &ts, body, now + 301).is_err());
        assert!(verify(&vk, &sig, &ts, body, now - 301).is_err());
        assert!(verify(&vk, &sig, "soon", body, now).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(verify(&other, &sig, &ts, body, now).is_err());
    }
}
