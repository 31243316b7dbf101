//! The traffic generator: a realistic, seeded stream of user activity over the emulator's
//! guilds at a fixed rate. Guild activity is Zipf-skewed (s = 1.1: a few guilds are busy, most
//! are quiet), messages dominate (~86%: creates, edits, deletes, occasional bulk deletes),
//! then joins and leaves, a few DMs and rare bans, unbans and timeouts.
//!
//! Determinism: the generator decides from its own seeded RNG and its own model of what it
//! did (captured from the world when it starts), never from wall time or other actors, so the
//! same seed over the same world gives the same sequence of kinds, guilds, channels, users and
//! contents. Ids minted at emission time (messages, DM channels, audit entries) are fresh
//! snowflakes and differ between runs. Every event is appended to the traffic log.

use std::collections::VecDeque;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::actions::NewMessage;
use super::payload::{now_ms, snowflake};
use super::state::{State, User};
use super::types::{EmittedEvent, EventKind};
use super::{Emulator, Error};

/// Zipf exponent of guild activity.
const ZIPF_S: f64 = 1.1;
/// Recent messages the generator remembers per channel (for edits and deletes).
const RECENT: usize = 50;

/// A request to start generating (`POST /control/v1/traffic`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrafficRequest {
    /// Events per second.
    pub rate: f64,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration_ms: Option<u64>,
    /// RNG seed (default: the emulator's seed).
    pub seed: Option<u64>,
}

/// Whether the generator runs and how much it emitted in its current (or last) run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrafficStatus {
    /// Still generating.
    pub running: bool,
    /// Events emitted by the current or last run.
    pub emitted: u64,
    /// Total events in the traffic log.
    pub logged: u64,
}

/// The running generator, if any.
#[derive(Debug, Default)]
pub(crate) struct TrafficControl {
    stop: Option<CancellationToken>,
    run: u64,
    emitted: u64,
    running: bool,
}

#[derive(Debug)]
struct GuildModel {
    id: u64,
    owner: u64,
    channels: Vec<u64>,
    members: Vec<u64>,
    banned: Vec<u64>,
    recent: Vec<VecDeque<u64>>,
}

/// The generator: RNG + its own model of the guilds.
#[derive(Debug)]
struct Generator {
    rng: ChaCha8Rng,
    guilds: Vec<GuildModel>,
    cdf: Vec<f64>,
    joined: u64,
}

const WORDS: [&str; 32] = [
    "the", "a", "bot", "server", "hello", "anyone", "playing", "tonight", "lol", "yes", "no",
    "maybe", "mods", "please", "check", "this", "out", "new", "update", "patch", "is", "live",
    "gg", "thanks", "help", "with", "rust", "code", "link", "meme", "channel", "cool",
];

impl Generator {
    fn new(st: &State, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7261_6666_6963);
        let bot = st.bot.id;
        let mut guilds: Vec<GuildModel> = st
            .guilds
            .values()
            .map(|g| GuildModel {
                id: g.id,
                owner: g.owner_id,
                channels: g.channels.clone(),
                members: g
                    .members
                    .keys()
                    .copied()
                    .filter(|u| *u != bot && *u != g.owner_id)
                    .collect(),
                banned: g.bans.keys().copied().collect(),
                recent: vec![VecDeque::new(); g.channels.len()],
            })
            .collect();
        // Which guild is hot is part of the seed, not of the id order.
        guilds.shuffle(&mut rng);
        let weights: Vec<f64> = (1..=guilds.len())
            .map(|k| 1.0 / (k as f64).powf(ZIPF_S))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Self {
            rng,
            guilds,
            cdf,
            joined: 0,
        }
    }

    fn content(&mut self) -> String {
        let n = self.rng.gen_range(1..=24);
        (0..n)
            .map(|_| *WORDS.choose(&mut self.rng).unwrap_or(&"hi"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Emits one event into `st`; `None` when there is nothing to act on (no guilds).
    fn step(&mut self, st: &mut State, seq: u64) -> Option<EmittedEvent> {
        if self.guilds.is_empty() {
            return None;
        }
        let u: f64 = self.rng.gen();
        let gi = self
            .cdf
            .partition_point(|c| *c < u)
            .min(self.guilds.len() - 1);
        let roll = self.rng.gen_range(0..1000);
        let kind = match roll {
            0..=719 => EventKind::MessageCreate,
            720..=799 => EventKind::MessageUpdate,
            800..=849 => EventKind::MessageDelete,
            850..=859 => EventKind::MessageDeleteBulk,
            860..=899 => EventKind::MemberAdd,
            900..=929 => EventKind::MemberRemove,
            930..=969 => EventKind::DirectMessage,
            970..=979 => EventKind::Ban,
            980..=984 => EventKind::Unban,
            _ => EventKind::Timeout,
        };
        let ev = EmittedEvent {
            seq,
            kind,
            guild_id: Some(self.guilds[gi].id),
            channel_id: None,
            message_id: None,
            message_ids: vec![],
            user_id: 0,
            executor_id: None,
            audit_entry_id: None,
            content_len: None,
        };
        let planned = self.plan(st, gi, ev);
        match planned {
            Some(ev) => Some(ev),
            // The chosen action had nothing to act on (or the world changed under us): a
            // message is always possible.
            None => {
                let ev = EmittedEvent {
                    seq,
                    kind: EventKind::MessageCreate,
                    guild_id: Some(self.guilds[gi].id),
                    channel_id: None,
                    message_id: None,
                    message_ids: vec![],
                    user_id: 0,
                    executor_id: None,
                    audit_entry_id: None,
                    content_len: None,
                };
                self.plan(st, gi, ev)
            }
        }
    }

    fn plan(&mut self, st: &mut State, gi: usize, mut ev: EmittedEvent) -> Option<EmittedEvent> {
        let g = &self.guilds[gi];
        let (guild_id, owner) = (g.id, g.owner);
        match ev.kind {
            EventKind::MessageCreate => {
                let ci = self.rng.gen_range(0..g.channels.len().max(1));
                let channel = *g.channels.get(ci)?;
                let author = *g.members.choose(&mut self.rng).unwrap_or(&owner);
                let content = self.content();
                ev.content_len = Some(content.chars().count());
                let new = NewMessage {
                    content,
                    ..NewMessage::default()
                };
                let (m, _) = st.create_message(channel, author, new).ok()?;
                let recent = &mut self.guilds[gi].recent[ci];
                recent.push_back(m.id);
                if recent.len() > RECENT {
                    recent.pop_front();
                }
                ev.channel_id = Some(channel);
                ev.message_id = Some(m.id);
                ev.user_id = author;
            }
            EventKind::MessageUpdate | EventKind::MessageDelete => {
                let ci = self.rng.gen_range(0..g.channels.len().max(1));
                let channel = *g.channels.get(ci)?;
                let recent = &self.guilds[gi].recent[ci];
                if recent.is_empty() {
                    return None;
                }
                let idx = self.rng.gen_range(0..recent.len());
                let mid = recent[idx];
                let author = st.messages.get(&mid)?.author_id;
                if ev.kind == EventKind::MessageUpdate {
                    let content = self.content();
                    ev.content_len = Some(content.chars().count());
                    st.edit_message(channel, mid, Some(content), None).ok()?;
                } else {
                    st.delete_message(channel, mid).ok()?;
                    self.guilds[gi].recent[ci].remove(idx);
                }
                ev.channel_id = Some(channel);
                ev.message_id = Some(mid);
                ev.user_id = author;
            }
            EventKind::MessageDeleteBulk => {
                let ci = self.rng.gen_range(0..g.channels.len().max(1));
                let channel = *g.channels.get(ci)?;
                let available = self.guilds[gi].recent[ci].len();
                if available < 2 {
                    return None;
                }
                let n = self.rng.gen_range(2..=available.min(10));
                let ids: Vec<u64> = self.guilds[gi].recent[ci]
                    .iter()
                    .rev()
                    .take(n)
                    .copied()
                    .collect();
                st.bulk_delete(channel, &ids).ok()?;
                self.guilds[gi].recent[ci].retain(|id| !ids.contains(id));
                ev.channel_id = Some(channel);
                ev.message_ids = ids;
                ev.user_id = owner;
            }
            EventKind::MemberAdd => {
                self.joined += 1;
                let ms = self.rng.gen_range(1_451_606_400_000..1_735_689_600_000u64);
                let id = snowflake(ms, self.rng.gen());
                st.users.entry(id).or_insert_with(|| User {
                    id,
                    username: format!("traffic-user-{id}"),
                    global_name: None,
                    bot: false,
                });
                st.add_member(guild_id, id).ok()?;
                self.guilds[gi].members.push(id);
                ev.user_id = id;
            }
            EventKind::MemberRemove => {
                if g.members.len() < 2 {
                    return None;
                }
                let idx = self.rng.gen_range(0..g.members.len());
                let user = g.members[idx];
                st.remove_member(guild_id, user).ok()?;
                self.guilds[gi].members.swap_remove(idx);
                ev.user_id = user;
            }
            EventKind::Ban => {
                if g.members.len() < 2 {
                    return None;
                }
                let idx = self.rng.gen_range(0..g.members.len());
                let user = g.members[idx];
                let reason = ["spam", "raid", "harassment"]
                    .choose(&mut self.rng)
                    .copied();
                ev.audit_entry_id = Some(st.ban(guild_id, user, owner, reason).ok()?);
                let g = &mut self.guilds[gi];
                g.members.swap_remove(idx);
                g.banned.push(user);
                ev.user_id = user;
                ev.executor_id = Some(owner);
            }
            EventKind::Unban => {
                if g.banned.is_empty() {
                    return None;
                }
                let idx = self.rng.gen_range(0..g.banned.len());
                let user = g.banned[idx];
                ev.audit_entry_id = Some(
                    st.unban(guild_id, user, owner, Some("appeal accepted"))
                        .ok()?,
                );
                self.guilds[gi].banned.swap_remove(idx);
                ev.user_id = user;
                ev.executor_id = Some(owner);
            }
            EventKind::Timeout => {
                let user = *g.members.choose(&mut self.rng)?;
                let minutes = self.rng.gen_range(1..=60u64);
                let until = now_ms() + minutes * 60_000;
                ev.audit_entry_id = Some(
                    st.timeout(guild_id, user, owner, Some(until), Some("cool down"))
                        .ok()?,
                );
                ev.user_id = user;
                ev.executor_id = Some(owner);
            }
            EventKind::DirectMessage => {
                let user = *g.members.choose(&mut self.rng)?;
                let content = self.content();
                ev.content_len = Some(content.chars().count());
                let channel = st.dm_channel_for(user).ok()?.id;
                let new = NewMessage {
                    content,
                    ..NewMessage::default()
                };
                let (m, _) = st.create_message(channel, user, new).ok()?;
                ev.guild_id = None;
                ev.channel_id = Some(channel);
                ev.message_id = Some(m.id);
                ev.user_id = user;
            }
        }
        Some(ev)
    }
}

impl Emulator {
    fn traffic_control(&self) -> std::sync::MutexGuard<'_, TrafficControl> {
        self.shared
            .traffic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts generating (stopping any run in progress).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a rate that is not positive and finite.
    pub fn start_traffic(&self, req: TrafficRequest) -> Result<(), Error> {
        if !(req.rate.is_finite() && req.rate > 0.0) {
            return Err(Error::Invalid(
                "rate must be a positive number of events per second".into(),
            ));
        }
        self.stop_traffic();
        let seed = req.seed.unwrap_or(self.shared.cfg.seed);
        let mut generator = Generator::new(&self.lock(), seed);
        let stop = self.shared.shutdown.token().child_token();
        let run = {
            let mut tc = self.traffic_control();
            tc.run += 1;
            tc.emitted = 0;
            tc.running = true;
            tc.stop = Some(stop.clone());
            tc.run
        };
        let emu = self.clone();
        let period = Duration::from_secs_f64(1.0 / req.rate);
        let limit = req.count;
        let until = req
            .duration_ms
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        tracing::info!(rate = req.rate, count = ?req.count, duration_ms = ?req.duration_ms, seed, "traffic started");
        self.shared.shutdown.tracker().spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut emitted = 0u64;
            loop {
                if limit.is_some_and(|l| emitted >= l)
                    || until.is_some_and(|u| tokio::time::Instant::now() >= u)
                {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let ok = {
                    let mut st = emu.lock();
                    let seq = st.traffic_log.len() as u64;
                    match generator.step(&mut st, seq) {
                        Some(ev) => {
                            st.traffic_log.push(ev);
                            true
                        }
                        None => false,
                    }
                };
                if !ok {
                    tracing::warn!("traffic generator has no guilds to act on; stopping");
                    break;
                }
                emitted += 1;
                let mut tc = emu.traffic_control();
                if tc.run == run {
                    tc.emitted = emitted;
                }
            }
            let mut tc = emu.traffic_control();
            if tc.run == run {
                tc.running = false;
                tc.stop = None;
            }
            tracing::info!(emitted, "traffic stopped");
        });
        Ok(())
    }

    /// Stops the generator (no-op when idle).
    pub fn stop_traffic(&self) {
        let mut tc = self.traffic_control();
        if let Some(stop) = tc.stop.take() {
            stop.cancel();
        }
        tc.running = false;
    }

    /// The generator's status.
    pub fn traffic_status(&self) -> TrafficStatus {
        let logged = self.lock().traffic_log.len() as u64;
        let tc = self.traffic_control();
        TrafficStatus {
            running: tc.running,
            emitted: tc.emitted,
            logged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::EmulatorConfig;

    fn run(seed: u64, n: u64) -> Vec<EmittedEvent> {
        let cfg = EmulatorConfig {
            guilds: 20,
            ..EmulatorConfig::default()
        };
        let mut st = State::new(&cfg);
        let mut g = Generator::new(&st, seed);
        (0..n).filter_map(|i| g.step(&mut st, i)).collect()
    }

    /// The parts of an event that do not depend on the wall clock.
    fn shape(e: &EmittedEvent) -> (EventKind, Option<u64>, u64, Option<usize>) {
        (e.kind, e.guild_id, e.user_id, e.content_len)
    }

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<_> = run(7, 2000).iter().map(shape).collect();
        let b: Vec<_> = run(7, 2000).iter().map(shape).collect();
        let c: Vec<_> = run(8, 2000).iter().map(shape).collect();
        assert_eq!(a.len(), 2000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn messages_dominate_and_activity_is_skewed() {
        let events = run(3, 5000);
        let messages = events
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::MessageCreate
                        | EventKind::MessageUpdate
                        | EventKind::MessageDelete
                        | EventKind::MessageDeleteBulk
                )
            })
            .count();
        assert!(
            messages * 100 / events.len() >= 80,
            "messages were {messages} of {}",
            events.len()
        );
        let mut per_guild = std::collections::HashMap::new();
        for e in events.iter().filter_map(|e| e.guild_id) {
            *per_guild.entry(e).or_insert(0usize) += 1;
        }
        let mut counts: Vec<usize> = per_guild.into_values().collect();
        counts.sort_unstable();
        let busiest = counts.last().copied().unwrap_or(0);
        let median = counts[counts.len() / 2];
        assert!(busiest > 4 * median, "busiest {busiest}, median {median}");
        assert!(events.iter().any(|e| e.kind == EventKind::Ban));
        assert!(events
            .iter()
            .any(|e| e.kind == EventKind::DirectMessage && e.guild_id.is_none()));
    }
}
