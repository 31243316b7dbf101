//! The emulator's world (guilds, channels, users, messages, commands, interactions) and its
//! gateway sessions, behind one lock, plus the one routing function that turns an event into a
//! dispatch frame for every session that should see it.
//!
//! One lock for world and sessions keeps two things true without further thought: an event's
//! sequence numbers are assigned in the same order as the world changes, and a RESUME can
//! collect the missed frames and attach its connection atomically, so no event slips between.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::mpsc;

use super::interactions::InteractionEntry;
use super::payload::{self, now_ms, snowflake};
use super::resume::ResumePolicy;
use super::types::{Counters, EmittedEvent};
use super::EmulatorConfig;

/// A user (members, DM partners and the bot itself).
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) id: u64,
    pub(crate) username: String,
    pub(crate) global_name: Option<String>,
    pub(crate) bot: bool,
}

/// A guild membership.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) user_id: u64,
    pub(crate) joined_at_ms: u64,
    pub(crate) roles: Vec<u64>,
    pub(crate) nick: Option<String>,
    pub(crate) communication_disabled_until_ms: Option<u64>,
}

/// A guild.
#[derive(Clone, Debug)]
pub(crate) struct Guild {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) owner_id: u64,
    pub(crate) moderator_role: u64,
    pub(crate) joined_at_ms: u64,
    pub(crate) channels: Vec<u64>,
    pub(crate) members: BTreeMap<u64, Member>,
    /// Banned user ids and the ban's reason (`GET /guilds/{g}/bans` shows both).
    pub(crate) bans: BTreeMap<u64, Option<String>>,
    /// Audit-log entries as `GET /guilds/{g}/audit-logs` shows them (no `guild_id`), oldest
    /// first.
    pub(crate) audit_log: Vec<Value>,
}

/// A guild text channel (type 0) or a DM channel (type 1).
#[derive(Clone, Debug)]
pub(crate) struct Channel {
    pub(crate) id: u64,
    pub(crate) kind: u8,
    pub(crate) guild_id: Option<u64>,
    pub(crate) name: String,
    pub(crate) position: u32,
    pub(crate) recipient: Option<u64>,
    pub(crate) last_message_id: Option<u64>,
}

/// A message.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub(crate) id: u64,
    pub(crate) channel_id: u64,
    pub(crate) guild_id: Option<u64>,
    pub(crate) author_id: u64,
    pub(crate) content: String,
    pub(crate) embeds: Vec<Value>,
    pub(crate) timestamp_ms: u64,
    pub(crate) edited_ms: Option<u64>,
    pub(crate) nonce: Option<Value>,
    pub(crate) kind: u8,
    pub(crate) flags: u64,
    /// Set for messages an interaction response created (authored by the app's webhook).
    pub(crate) webhook_id: Option<u64>,
}

/// What a connection task is told to do by the rest of the emulator.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A dispatch frame to write as-is.
    Frame(Arc<str>),
    /// op 7 RECONNECT, then close a few seconds later.
    Reconnect,
    /// op 9 INVALID_SESSION with this `d`.
    InvalidSession(bool),
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Close with this code and reason.
    Close(u16, String),
    /// op 1: ask the client for an immediate heartbeat.
    RequestHeartbeat,
}

/// The connection a session is attached to.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(crate) conn_id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Outbound>,
}

/// A gateway session: survives its connection for the resume window.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) shard: [u32; 2],
    pub(crate) intents: u64,
    pub(crate) seq: u64,
    pub(crate) buffer: VecDeque<(u64, Arc<str>)>,
    pub(crate) conn: Option<Attachment>,
    pub(crate) disconnected_at: Option<Instant>,
    pub(crate) zombie: bool,
    pub(crate) resumes: u32,
    /// False once the session was ended on purpose while its connection lives on (the control
    /// API's `expire`): the connection keeps working, but no RESUME will succeed.
    pub(crate) resumable: bool,
}

/// The identify budget reported by `GET /gateway/bot` and enforced on IDENTIFY.
#[derive(Debug)]
pub(crate) struct IdentifyBudget {
    pub(crate) total: u32,
    pub(crate) remaining: u32,
    pub(crate) reset_at: Instant,
    pub(crate) last_by_bucket: HashMap<u32, Instant>,
}

/// Intent bits the routing and content gating look at.
pub(crate) mod intents {
    pub(crate) const GUILDS: u64 = 1;
    pub(crate) const GUILD_MEMBERS: u64 = 1 << 1;
    pub(crate) const GUILD_MODERATION: u64 = 1 << 2;
    pub(crate) const GUILD_PRESENCES: u64 = 1 << 8;
    pub(crate) const GUILD_MESSAGES: u64 = 1 << 9;
    pub(crate) const DIRECT_MESSAGES: u64 = 1 << 12;
    pub(crate) const MESSAGE_CONTENT: u64 = 1 << 15;
    /// The privileged intents (need enabling in the developer portal).
    pub(crate) const PRIVILEGED: u64 = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT;
    /// Every intent bit Discord defines (0–16, 20, 21, 24, 25).
    pub(crate) const ALL: u64 = 0x1_FFFF | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25);
}

/// Everything the emulator knows, behind one lock (see the module doc).
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) bot: User,
    pub(crate) application_id: u64,
    pub(crate) guilds: BTreeMap<u64, Guild>,
    pub(crate) users: HashMap<u64, User>,
    pub(crate) channels: HashMap<u64, Channel>,
    pub(crate) messages: HashMap<u64, Message>,
    pub(crate) channel_messages: HashMap<u64, Vec<u64>>,
    pub(crate) dm_channels: HashMap<u64, u64>,
    pub(crate) nonces: HashMap<(u64, u64, String), (u64, Instant)>,
    pub(crate) global_commands: Vec<Value>,
    pub(crate) guild_commands: HashMap<u64, Vec<Value>>,
    pub(crate) interactions: HashMap<u64, InteractionEntry>,
    pub(crate) interaction_tokens: HashMap<String, (u64, Instant)>,
    pub(crate) interactions_url: Option<String>,
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) budget: IdentifyBudget,
    /// The resume buffer bound and expiry in force (changeable at run time).
    pub(crate) resume: ResumePolicy,
    pub(crate) counters: Counters,
    pub(crate) traffic_log: Vec<EmittedEvent>,
    last_id: u64,
    next_conn_id: u64,
}

const CHANNEL_NAMES: [&str; 8] = [
    "general",
    "mod-log",
    "deletion-log",
    "random",
    "memes",
    "help",
    "off-topic",
    "announcements",
];

impl State {
    /// The world for `cfg.seed`: the same seed always gives the same guild, channel and user
    /// ids (realistic snowflakes with timestamps between 2016 and 2025).
    pub(crate) fn new(cfg: &EmulatorConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let application_id = past_snowflake(&mut rng);
        let bot = User {
            id: application_id,
            username: "modbot".into(),
            global_name: None,
            bot: true,
        };
        let mut state = State {
            users: HashMap::from([(bot.id, bot.clone())]),
            bot,
            application_id,
            guilds: BTreeMap::new(),
            channels: HashMap::new(),
            messages: HashMap::new(),
            channel_messages: HashMap::new(),
            dm_channels: HashMap::new(),
            nonces: HashMap::new(),
            global_commands: Vec::new(),
            guild_commands: HashMap::new(),
            interactions: HashMap::new(),
            interaction_tokens: HashMap::new(),
            interactions_url: cfg.interactions_url.clone(),
            sessions: HashMap::new(),
            budget: IdentifyBudget {
                total: cfg.session_start_total,
                remaining: cfg.session_start_total,
                reset_at: Instant::now() + Duration::from_secs(24 * 3600),
                last_by_bucket: HashMap::new(),
            },
            resume: ResumePolicy {
                buffer_frames: cfg.resume_buffer_frames,
                expiry_ms: cfg.resume_window_ms,
            },
            counters: Counters::default(),
            traffic_log: Vec::new(),
            last_id: 0,
            next_conn_id: 0,
        };
        let pool_size = (cfg.guilds * cfg.members_per_guild / 2 + cfg.members_per_guild).max(1);
        let pool: Vec<u64> = (0..pool_size)
            .map(|i| {
                let user = User {
                    id: past_snowflake(&mut rng),
                    username: format!("user{i}"),
                    global_name: Some(format!("User {i}")),
                    bot: false,
                };
                let id = user.id;
                state.users.insert(id, user);
                id
            })
            .collect();
        for g in 0..cfg.guilds {
            let members: Vec<u64> =
                sample(&mut rng, pool.len(), cfg.members_per_guild.min(pool.len()))
                    .into_iter()
                    .map(|i| pool[i])
                    .collect();
            state.seed_guild(
                &mut rng,
                format!("Guild {g}"),
                &members,
                cfg.channels_per_guild,
            );
        }
        state
    }

    /// Adds a guild with deterministic ids drawn from `rng`; the first member owns it.
    pub(crate) fn seed_guild(
        &mut self,
        rng: &mut ChaCha8Rng,
        name: String,
        members: &[u64],
        channels: usize,
    ) -> u64 {
        let id = past_snowflake(rng);
        let created = payload::snowflake_ms(id);
        let mut guild = Guild {
            id,
            name,
            owner_id: members.first().copied().unwrap_or(self.bot.id),
            moderator_role: snowflake(created + 1000, rng.gen()),
            joined_at_ms: now_ms(),
            channels: Vec::new(),
            members: BTreeMap::new(),
            bans: BTreeMap::new(),
            audit_log: Vec::new(),
        };
        for (i, user_id) in members
            .iter()
            .chain(std::iter::once(&self.bot.id))
            .enumerate()
        {
            // A fixed upper bound (not `now`) keeps the RNG stream, and so the world, deterministic.
            let joined = rng.gen_range(created..SEED_HORIZON_MS.max(created + 1));
            let roles = if i == 0 {
                vec![guild.moderator_role]
            } else {
                vec![]
            };
            guild.members.insert(
                *user_id,
                Member {
                    user_id: *user_id,
                    joined_at_ms: joined,
                    roles,
                    nick: None,
                    communication_disabled_until_ms: None,
                },
            );
        }
        for c in 0..channels.max(1) {
            let channel = Channel {
                id: snowflake(created + 2000 + c as u64, rng.gen()),
                kind: 0,
                guild_id: Some(id),
                name: CHANNEL_NAMES
                    .get(c)
                    .map_or_else(|| format!("channel-{c}"), |n| (*n).to_owned()),
                position: c as u32,
                recipient: None,
                last_message_id: None,
            };
            guild.channels.push(channel.id);
            self.channels.insert(channel.id, channel);
        }
        self.guilds.insert(id, guild);
        id
    }

    /// A fresh snowflake for now, strictly greater than every one handed out before.
    pub(crate) fn fresh_id(&mut self) -> u64 {
        let id = snowflake(now_ms(), 0).max(self.last_id + 1);
        self.last_id = id;
        id
    }

    /// A connection id, unique for the emulator's life.
    pub(crate) fn next_conn_id(&mut self) -> u64 {
        self.next_conn_id += 1;
        self.next_conn_id
    }

    /// Sends `event` to every session that would receive it on Discord: the shard that owns
    /// `guild_id` (guild-less events: shard 0), if the session's intents cover it. Returns how
    /// many sessions got it.
    pub(crate) fn dispatch(&mut self, event: &str, guild_id: Option<u64>, d: &Value) -> usize {
        let full = d.to_string();
        let mut gated: Option<String> = None;
        let needs_gate = needs_content_gate(event, guild_id, d, self.bot.id);
        let mut delivered = 0;
        let limit = self.resume.buffer_frames;
        for session in self.sessions.values_mut() {
            if !routes_to(session.shard, guild_id)
                || !intent_allows(session.intents, event, guild_id)
            {
                continue;
            }
            let body = if needs_gate && session.intents & intents::MESSAGE_CONTENT == 0 {
                gated
                    .get_or_insert_with(|| strip_content(d).to_string())
                    .as_str()
            } else {
                full.as_str()
            };
            push_frame(session, event, body, limit);
            delivered += 1;
        }
        self.counters.events_dispatched += delivered as u64;
        delivered
    }

    /// Sends `event` to one session only (READY, GUILD_CREATE after identify, RESUMED).
    pub(crate) fn dispatch_to(&mut self, session_id: &str, event: &str, d: &Value) {
        let limit = self.resume.buffer_frames;
        if let Some(session) = self.sessions.get_mut(session_id) {
            push_frame(session, event, &d.to_string(), limit);
            self.counters.events_dispatched += 1;
        }
    }

    /// Forgets sessions disconnected longer than the resume expiry (and disconnected ones that
    /// can no longer be resumed), interaction tokens older than 15 minutes and nonces older
    /// than 10 minutes.
    pub(crate) fn reap(&mut self) {
        let (policy, now) = (self.resume, Instant::now());
        self.sessions.retain(|_, s| {
            s.disconnected_at
                .is_none_or(|at| s.resumable && !policy.expired(at, now))
        });
        self.interaction_tokens
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(15 * 60));
        self.nonces
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(10 * 60));
    }
}

/// Numbers the dispatch, keeps it for replay (at most `limit` per session) and sends it to
/// the session's connection, if any.
fn push_frame(session: &mut Session, event: &str, body: &str, limit: usize) {
    session.seq += 1;
    let frame: Arc<str> = payload::dispatch_frame(session.seq, event, body).into();
    // A session that can no longer be resumed has no use for a replay buffer.
    if session.resumable {
        session.buffer.push_back((session.seq, frame.clone()));
        trim_buffer(session, limit);
    }
    if let Some(conn) = &session.conn {
        // A closed receiver means the connection is going away; the frame stays buffered.
        let _ = conn.tx.send(Outbound::Frame(frame));
    }
}

/// Drops the oldest buffered dispatches until at most `limit` remain.
pub(crate) fn trim_buffer(session: &mut Session, limit: usize) {
    while session.buffer.len() > limit {
        session.buffer.pop_front();
    }
}

/// Discord's routing: `(guild_id >> 22) % num_shards == shard_id`; guild-less events go to
/// shard 0 only.
pub(crate) fn routes_to(shard: [u32; 2], guild_id: Option<u64>) -> bool {
    match guild_id {
        Some(g) => (g >> 22) % u64::from(shard[1].max(1)) == u64::from(shard[0]),
        None => shard[0] == 0,
    }
}

/// Whether a session with `bits` receives `event`.
pub(crate) fn intent_allows(bits: u64, event: &str, guild_id: Option<u64>) -> bool {
    let needed = match event {
        "GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE" | "CHANNEL_CREATE" | "CHANNEL_UPDATE"
        | "CHANNEL_DELETE" | "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" | "GUILD_ROLE_DELETE" => {
            intents::GUILDS
        }
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_REMOVE" | "GUILD_MEMBER_UPDATE" => {
            intents::GUILD_MEMBERS
        }
        "GUILD_BAN_ADD" | "GUILD_BAN_REMOVE" | "GUILD_AUDIT_LOG_ENTRY_CREATE" => {
            intents::GUILD_MODERATION
        }
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" | "MESSAGE_DELETE_BULK" => {
            if guild_id.is_some() {
                intents::GUILD_MESSAGES
            } else {
                intents::DIRECT_MESSAGES
            }
        }
        _ => 0,
    };
    bits & needed == needed
}

/// MESSAGE_CONTENT applies to guild messages not written by the bot and not mentioning it.
fn needs_content_gate(event: &str, guild_id: Option<u64>, d: &Value, bot_id: u64) -> bool {
    if !matches!(event, "MESSAGE_CREATE" | "MESSAGE_UPDATE") || guild_id.is_none() {
        return false;
    }
    let bot = bot_id.to_string();
    let by_bot = d["author"]["id"].as_str() == Some(bot.as_str());
    let mentions_bot = d["mentions"]
        .as_array()
        .is_some_and(|m| m.iter().any(|u| u["id"].as_str() == Some(bot.as_str())));
    !by_bot && !mentions_bot
}

/// The message as an app without MESSAGE_CONTENT sees it.
fn strip_content(d: &Value) -> Value {
    let mut d = d.clone();
    d["content"] = Value::String(String::new());
    d["embeds"] = Value::Array(vec![]);
    d["attachments"] = Value::Array(vec![]);
    d["components"] = Value::Array(vec![]);
    d
}

/// The latest time seeded ids and join dates use (2025-06-01).
const SEED_HORIZON_MS: u64 = 1_748_736_000_000;

/// A snowflake from a random time between 2016 and 2025 (for seeded, deterministic ids).
fn past_snowflake(rng: &mut ChaCha8Rng) -> u64 {
    const START_2016: u64 = 1_451_606_400_000;
    const START_2025: u64 = 1_735_689_600_000;
    snowflake(rng.gen_range(START_2016..START_2025), rng.gen())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_matches_discord() {
        let g = 5u64 << 22;
        assert!(routes_to([2, 3], Some(g)));
        assert!(!routes_to([0, 3], Some(g)));
        assert!(routes_to([0, 1], Some(g)));
        assert!(routes_to([0, 3], None));
        assert!(!routes_to([1, 3], None));
    }

    #[test]
    fn same_seed_same_world() {
        let cfg = EmulatorConfig {
            guilds: 5,
            ..EmulatorConfig::default()
        };
        let a = State::new(&cfg);
        let b = State::new(&cfg);
        assert_eq!(
            a.guilds.keys().collect::<Vec<_>>(),
            b.guilds.keys().collect::<Vec<_>>()
        );
        assert_eq!(a.application_id, b.application_id);
        assert_eq!(a.guilds.len(), 5);
    }

    #[test]
    fn intents_gate_events() {
        assert!(!intent_allows(intents::GUILDS, "MESSAGE_CREATE", Some(1)));
        assert!(intent_allows(
            intents::DIRECT_MESSAGES,
            "MESSAGE_CREATE",
            None
        ));
        assert!(intent_allows(0, "READY", None));
    }
}
