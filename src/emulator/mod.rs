//! A local Discord: the gateway WebSocket (v10, JSON), the REST subset a bot uses, HTTP
//! interactions signed with the application's Ed25519 key, a control API for tests and the
//! `dev` command, and a deterministic traffic generator. Built to Discord's documented
//! behaviour so that any client library (serenity 0.12 is the one tested) can't tell it apart.
//!
//! Level 1: uses only level-0 modules (`shutdown`, `ownership`'s Discord epoch, `calendar`);
//! never the gateway, the HTTP service, the resharding code or the store.
//!
//! Everything is served on one listener: the gateway at `/` (clients connect to `<url>?v=10`),
//! REST under `/api/v10`, the control API under `/control/v1`.
//!
//! # Layout
//! - [`state`]: the world and the gateway sessions behind one lock; Discord's shard routing.
//! - [`payload`]: every Discord-shaped JSON object, snowflakes and timestamps.
//! - [`actions`]: what users do (post, edit, ban, join, DM, …), as [`Emulator`] methods.
//! - [`gateway_ws`]: one WebSocket connection: HELLO, IDENTIFY, RESUME, heartbeats, close codes.
//! - [`resume`]: when a session may be resumed (buffer bound, expiry, close codes that end it).
//! - [`sessions`]: sessions seen from outside: list, reconnect, invalidate, expire, policy.
//! - [`rest`]: `/api/v10`, with bot-token auth, Discord error bodies and rate-limit headers.
//! - [`interactions`]: building, signing and delivering interactions; the 3 s deadline.
//! - [`control`]: `/control/v1`, a JSON mirror of the in-process methods.
//! - [`traffic`]: the Zipf-skewed, seeded event generator.
//! - [`types`]: the values handed to callers.
//!
//! # Where Discord does not say
//! Where the documentation leaves a behaviour open, the emulator takes the stricter reading,
//! so that a client which works here does not lean on a leniency Discord may not have.
//! - **Resume expiry.** "Resumable for a few minutes": three minutes by default
//!   ([`EmulatorConfig::resume_window_ms`], [`Emulator::set_resume_policy`]), checked when the
//!   RESUME arrives, not only by the periodic sweep.
//! - **Resume buffer.** Discord does not say how many dispatches it keeps. At most
//!   [`EmulatorConfig::resume_buffer_frames`] per session (default 50 000); a RESUME that would
//!   need an older one gets INVALID_SESSION `d: false`, never a replay with a gap.
//! - **A refused RESUME ends a disconnected session.** After op 9 `d: false` (or 4007 for a
//!   `seq` ahead of the session) a second RESUME of the same session fails too. A session that
//!   still has a live connection is not disturbed by a stranger's failed RESUME.
//! - **Takeover.** A RESUME of a session that is live on another connection moves it to the new
//!   connection; the old one is dropped at once without a close frame and gets nothing more.
//! - **After INVALID_SESSION `d: true`** the socket is unauthenticated at once: dispatches are
//!   buffered, not sent, until it sends RESUME (accepted on the same socket, as discord.js
//!   does) or IDENTIFY.
//! - **Close codes that end the session.** When the emulator closes with 4007 or 4009
//!   (documented as "start a new session") or a code documented as not reconnectable (4004,
//!   4010–4014), the session is gone. Other codes (4000–4003, 4005, 4008) keep it resumable. A
//!   missed heartbeat closes with 4000 and keeps it too: the docs say such a client "must
//!   resume".
//! - **REST input.** Ids that are not snowflakes, and `limit`s outside the documented range,
//!   get 400 (50035) instead of being clamped. `GET /guilds/{g}/members/@me` is served
//!   (Discord documents `@me` only for PATCH). A custom emoji in a reaction is unknown (400,
//!   10014): the emulated guilds have none. Typing and reactions dispatch no gateway events.
//! - **Paging.** `GET …/bans?before=` returns the bans closest below `before`;
//!   `GET …/audit-logs?after=` the entries closest above `after`, still newest first.

pub mod actions;
pub mod control;
pub mod gateway_ws;
pub mod interactions;
pub mod payload;
pub mod rest;
pub mod resume;
pub mod sessions;
pub mod state;
pub mod traffic;
pub mod types;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::shutdown::Shutdown;
pub use interactions::{CommandKind, CommandOption, RunCommand, SignedInteraction};
pub use resume::ResumePolicy;
use state::State;
pub use traffic::{TrafficRequest, TrafficStatus};
pub use types::{
    ApplicationInfo, ChannelInfo, Counters, EmittedEvent, EventKind, GuildInfo, InteractionOutcome,
    InteractionRecord, MessageInfo, SessionInfo, UserInfo,
};

/// How the emulator is set up. `Default` gives a small world with Discord's real timings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmulatorConfig {
    /// Seed for the world (ids, names), the Ed25519 key and generated traffic.
    pub seed: u64,
    /// Guilds created at start.
    pub guilds: usize,
    /// Members per guild at start (plus the bot).
    pub members_per_guild: usize,
    /// Text channels per guild at start (the first ones are general, mod-log, deletion-log).
    pub channels_per_guild: usize,
    /// HELLO's `heartbeat_interval`.
    pub heartbeat_interval_ms: u64,
    /// Shards recommended by `GET /gateway/bot` (at least; raised to one per 1000 guilds, as
    /// Discord does).
    pub shards: u32,
    /// `session_start_limit.max_concurrency`: identify buckets per 5 s window.
    pub max_concurrency: u32,
    /// The bot token clients must present.
    pub token: String,
    /// Where interactions are POSTed (none: commands cannot be run until one is set).
    pub interactions_url: Option<String>,
    /// Global REST budget in requests per second; `None` (default) never answers 429.
    pub rest_rate_limit: Option<u32>,
    /// The identify window per bucket (Discord: 5000 ms). 0 disables the check, for tests that
    /// start many sessions with the same shard at once.
    pub identify_window_ms: u64,
    /// `session_start_limit.total` (Discord: 1000 a day).
    pub session_start_total: u32,
    /// How long a disconnected session stays resumable (Discord: "a few minutes"; default
    /// three). Changeable at run time with [`Emulator::set_resume_policy`].
    pub resume_window_ms: u64,
    /// At most this many dispatches are kept per session for replay on RESUME; a RESUME that
    /// needs an older one gets INVALID_SESSION `d: false`. Changeable at run time too.
    pub resume_buffer_frames: usize,
    /// Intents the application may use; identifying with a privileged intent outside this set
    /// closes with 4014. Default: every intent (all privileged intents enabled).
    pub allowed_intents: u64,
    /// Interaction response deadline (Discord: 3000 ms).
    pub interaction_deadline_ms: u64,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            guilds: 10,
            members_per_guild: 20,
            channels_per_guild: 3,
            heartbeat_interval_ms: 41_250,
            shards: 1,
            max_concurrency: 1,
            token: "emulator-bot-token".into(),
            interactions_url: None,
            rest_rate_limit: None,
            identify_window_ms: 5_000,
            session_start_total: 1_000,
            resume_window_ms: resume::DEFAULT_EXPIRY_MS,
            resume_buffer_frames: resume::DEFAULT_BUFFER_FRAMES,
            allowed_intents: state::intents::ALL,
            interaction_deadline_ms: 3_000,
        }
    }
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("seed", &self.seed)
            .field("guilds", &self.guilds)
            .field("members_per_guild", &self.members_per_guild)
            .field("channels_per_guild", &self.channels_per_guild)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("shards", &self.shards)
            .field("max_concurrency", &self.max_concurrency)
            .field("token", &"<redacted>")
            .field("interactions_url", &self.interactions_url)
            .field("rest_rate_limit", &self.rest_rate_limit)
            .field("resume_window_ms", &self.resume_window_ms)
            .field("resume_buffer_frames", &self.resume_buffer_frames)
            .finish_non_exhaustive()
    }
}

/// What can go wrong starting the emulator or running one of its operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener has no local address.
    #[error("listener has no local address")]
    Listener(#[source] std::io::Error),
    /// The outgoing HTTP client could not be built.
    #[error("cannot build the interactions http client")]
    HttpClient(#[source] reqwest::Error),
    /// No such guild.
    #[error("unknown guild {0}")]
    UnknownGuild(u64),
    /// No such channel.
    #[error("unknown channel {0}")]
    UnknownChannel(u64),
    /// No such user.
    #[error("unknown user {0}")]
    UnknownUser(u64),
    /// The user is not a member of the guild.
    #[error("user {user} is not a member of guild {guild}")]
    UnknownMember {
        /// The guild.
        guild: u64,
        /// The user.
        user: u64,
    },
    /// No such message.
    #[error("unknown message {0}")]
    UnknownMessage(u64),
    /// No such gateway session (or it expired).
    #[error("unknown session {0}")]
    UnknownSession(String),
    /// No gateway session has this shard id.
    #[error("no session for shard {0}")]
    UnknownShard(u32),
    /// A reaction with an emoji that does not exist (or a custom emoji the bot cannot use).
    #[error("unknown emoji")]
    UnknownEmoji,
    /// No such interaction.
    #[error("unknown interaction {0}")]
    UnknownInteraction(u64),
    /// The request makes no sense (bad content, ban of a banned user, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The interaction already has its initial response.
    #[error("interaction has already been acknowledged")]
    AlreadyAcknowledged,
    /// No such webhook (wrong application id, or an unknown or expired interaction token).
    #[error("unknown webhook")]
    UnknownWebhook,
    /// A command was run but no interactions URL is configured.
    #[error("no interactions url is configured")]
    NoInteractionsUrl,
}

impl Error {
    /// The HTTP status and Discord JSON error code for this error.
    pub fn discord_code(&self) -> (StatusCode, u32) {
        match self {
            Error::UnknownGuild(_) => (StatusCode::NOT_FOUND, 10004),
            Error::UnknownChannel(_) => (StatusCode::NOT_FOUND, 10003),
            Error::UnknownUser(_) => (StatusCode::NOT_FOUND, 10013),
            Error::UnknownMember { .. } => (StatusCode::NOT_FOUND, 10007),
            Error::UnknownMessage(_) => (StatusCode::NOT_FOUND, 10008),
            Error::UnknownInteraction(_) => (StatusCode::NOT_FOUND, 10062),
            Error::UnknownSession(_) | Error::UnknownShard(_) => (StatusCode::NOT_FOUND, 0),
            // Discord answers an unusable emoji with 400, not 404.
            Error::UnknownEmoji => (StatusCode::BAD_REQUEST, 10014),
            Error::UnknownWebhook => (StatusCode::NOT_FOUND, 10015),
            Error::AlreadyAcknowledged => (StatusCode::BAD_REQUEST, 40060),
            Error::Invalid(_) | Error::NoInteractionsUrl => (StatusCode::BAD_REQUEST, 50035),
            Error::Listener(_) | Error::HttpClient(_) => (StatusCode::INTERNAL_SERVER_ERROR, 0),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.discord_code();
        let message = match &self {
            Error::UnknownGuild(_) => "Unknown Guild".to_owned(),
            Error::UnknownChannel(_) => "Unknown Channel".to_owned(),
            Error::UnknownUser(_) => "Unknown User".to_owned(),
            Error::UnknownMember { .. } => "Unknown Member".to_owned(),
            Error::UnknownMessage(_) => "Unknown Message".to_owned(),
            Error::UnknownInteraction(_) => "Unknown interaction".to_owned(),
            Error::UnknownWebhook => "Unknown Webhook".to_owned(),
            Error::UnknownEmoji => "Unknown Emoji".to_owned(),
            Error::AlreadyAcknowledged => "Interaction has already been acknowledged.".to_owned(),
            other => other.to_string(),
        };
        (status, Json(payload::error_body(code, &message))).into_response()
    }
}

/// How often expired sessions, tokens and nonces are forgotten.
const REAP_INTERVAL_MS: u64 = 250;

/// The shared core behind every [`Emulator`] clone.
pub(crate) struct Shared {
    pub(crate) cfg: EmulatorConfig,
    pub(crate) addr: SocketAddr,
    pub(crate) signing_key: SigningKey,
    pub(crate) state: Mutex<State>,
    pub(crate) http: reqwest::Client,
    pub(crate) shutdown: Shutdown,
    pub(crate) rest_window: Mutex<rest::RateWindow>,
    pub(crate) traffic: Mutex<traffic::TrafficControl>,
    pub(crate) interaction_answered: tokio::sync::Notify,
}

/// A running emulator (cheap to clone). Every control-API operation is also a method here.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

/// Starts the emulator on an already bound listener; it serves until `shutdown` trips.
///
/// # Errors
/// [`Error::Listener`] when the listener has no local address, [`Error::HttpClient`] when the
/// outgoing HTTP client cannot be built.
pub async fn start(
    cfg: EmulatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<Emulator, Error> {
    let addr = listener.local_addr().map_err(Error::Listener)?;
    let emulator = Emulator::new(cfg, addr, shutdown.clone())?;
    let router = app(emulator.clone());
    let stop = shutdown.cancelled();
    shutdown.tracker().spawn(async move {
        let served = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(stop)
            .await;
        if let Err(err) = served {
            tracing::error!(cause = %err, "emulator server stopped");
        }
    });
    let reaper = emulator.clone();
    shutdown.tracker().spawn(async move {
        let stop = reaper.shared.shutdown.cancelled();
        tokio::pin!(stop);
        loop {
            // The expiry is read on every pass, so a policy changed at run time applies to
            // sessions that are already disconnected. RESUME checks it too, so this tick only
            // bounds memory and what `GET /sessions` lists.
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(Duration::from_millis(REAP_INTERVAL_MS)) => reaper.lock().reap(),
            }
        }
    });
    tracing::info!(%addr, guilds = emulator.shared.cfg.guilds, "emulator started");
    Ok(emulator)
}

/// The emulator's routes (gateway, REST, control) for `emulator`, e.g. for `oneshot` tests.
pub fn app(emulator: Emulator) -> Router {
    Router::new()
        .route("/", get(gateway_ws::upgrade))
        .nest("/api/v10", rest::router(emulator.clone()))
        .nest("/control/v1", control::router())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(payload::error_body(0, "404: Not Found")),
            )
        })
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    let matched = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_owned());
                    tracing::debug_span!("request", method = %req.method(), matched_path = matched)
                },
            ),
        )
        .with_state(emulator)
}

impl Emulator {
    /// Builds the world and keys for `cfg`, without serving anything (see [`start`]).
    ///
    /// # Errors
    /// [`Error::HttpClient`] when the outgoing HTTP client cannot be built.
    pub fn new(cfg: EmulatorConfig, addr: SocketAddr, shutdown: Shutdown) -> Result<Self, Error> {
        let mut key_rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_ed25_519d_15c0);
        let signing_key = SigningKey::from_bytes(&key_rng.gen::<[u8; 32]>());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.interaction_deadline_ms + 1000))
            .build()
            .map_err(Error::HttpClient)?;
        let state = State::new(&cfg);
        Ok(Self {
            shared: Arc::new(Shared {
                addr,
                signing_key,
                state: Mutex::new(state),
                http,
                shutdown,
                rest_window: Mutex::new(rest::RateWindow::default()),
                traffic: Mutex::new(traffic::TrafficControl::default()),
                interaction_answered: tokio::sync::Notify::new(),
                cfg,
            }),
        })
    }

    /// The world lock. Never held across an `.await`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the emulator; the data is still
        // usable for a test tool, so recover instead of cascading panics.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.cfg
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The REST base for clients: `http://127.0.0.1:P` (serenity's `proxy`; REST is under
    /// `/api/v10`).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The gateway URL (no query string; clients append `?v=10`).
    pub fn gateway_url(&self) -> String {
        format!("ws://{}", self.shared.addr)
    }

    /// The application's identity: id, token, public key.
    pub fn application(&self) -> ApplicationInfo {
        ApplicationInfo {
            id: self.lock().application_id,
            token: self.shared.cfg.token.clone(),
            public_key_hex: hex::encode(self.shared.signing_key.verifying_key().as_bytes()),
            api_base: self.api_base(),
            gateway_url: self.gateway_url(),
        }
    }

    /// Counters since start.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Every event the traffic generator emitted, in order.
    pub fn traffic_log(&self) -> Vec<EmittedEvent> {
        self.lock().traffic_log.clone()
    }
}
