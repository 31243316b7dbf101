//! What users (and moderators) do in the emulated Discord, as [`Emulator`] methods: each one
//! changes the world and dispatches the gateway events Discord would send, in Discord's order.
//! The control API, the traffic generator and REST all go through these.

use serde_json::{json, Value};

use super::payload::{self, now_ms};
use super::state::{Channel, Member, Message, State, User};
use super::types::{ChannelInfo, GuildInfo, MessageInfo, UserInfo};
use super::{Emulator, Error};

/// Longest message content Discord accepts.
const MAX_CONTENT: usize = 2000;

/// What to post (REST and interaction responses use the fuller form).
#[derive(Debug, Default)]
pub(crate) struct NewMessage {
    pub(crate) content: String,
    pub(crate) embeds: Vec<Value>,
    pub(crate) nonce: Option<Value>,
    pub(crate) enforce_nonce: bool,
    pub(crate) kind: u8,
    pub(crate) flags: u64,
    pub(crate) webhook_id: Option<u64>,
}

impl State {
    /// The message object as the gateway and REST show it.
    pub(crate) fn message_value(&self, m: &Message) -> Value {
        let fallback = User {
            id: m.author_id,
            username: format!("user{}", m.author_id),
            global_name: None,
            bot: false,
        };
        let author = self.users.get(&m.author_id).unwrap_or(&fallback);
        let member = match (m.guild_id, m.webhook_id) {
            (Some(g), None) => self
                .guilds
                .get(&g)
                .and_then(|g| g.members.get(&m.author_id)),
            _ => None,
        };
        let mentions: Vec<&User> = payload::mentioned_ids(&m.content)
            .iter()
            .filter_map(|id| self.users.get(id))
            .collect();
        let kind = self.channels.get(&m.channel_id).map_or(0, |c| c.kind);
        payload::message(m, author, member, &mentions, kind)
    }

    pub(crate) fn guild_info(&self, id: u64) -> Result<GuildInfo, Error> {
        let g = self.guilds.get(&id).ok_or(Error::UnknownGuild(id))?;
        Ok(GuildInfo {
            id,
            name: g.name.clone(),
            owner_id: g.owner_id,
            channels: g.channels.clone(),
            members: g.members.keys().copied().collect(),
            moderator_role: g.moderator_role,
        })
    }

    pub(crate) fn user_info(&self, id: u64) -> Result<UserInfo, Error> {
        let u = self.users.get(&id).ok_or(Error::UnknownUser(id))?;
        Ok(UserInfo {
            id,
            username: u.username.clone(),
            bot: u.bot,
        })
    }

    /// Creates (or returns) the DM channel between the bot and `user_id`.
    pub(crate) fn dm_channel_for(&mut self, user_id: u64) -> Result<&Channel, Error> {
        if !self.users.contains_key(&user_id) {
            return Err(Error::UnknownUser(user_id));
        }
        let id = match self.dm_channels.get(&user_id) {
            Some(id) => *id,
            None => {
                let id = self.fresh_id();
                self.channels.insert(
                    id,
                    Channel {
                        id,
                        kind: 1,
                        guild_id: None,
                        name: String::new(),
                        position: 0,
                        recipient: Some(user_id),
                        last_message_id: None,
                    },
                );
                self.dm_channels.insert(user_id, id);
                id
            }
        };
        self.channels.get(&id).ok_or(Error::UnknownChannel(id))
    }

    /// Posts a message by `author_id` and dispatches MESSAGE_CREATE. With `enforce_nonce`, a
    /// nonce the same author used in the same channel within the last minutes returns the
    /// earlier message instead (Discord's double-post protection); `created` is then false.
    pub(crate) fn create_message(
        &mut self,
        channel_id: u64,
        author_id: u64,
        new: NewMessage,
    ) -> Result<(Message, bool), Error> {
        let channel = self
            .channels
            .get(&channel_id)
            .ok_or(Error::UnknownChannel(channel_id))?;
        let guild_id = channel.guild_id;
        if new.content.chars().count() > MAX_CONTENT {
            return Err(Error::Invalid(
                "content: must be 2000 or fewer in length".into(),
            ));
        }
        if new.content.is_empty() && new.embeds.is_empty() {
            return Err(Error::Invalid("cannot send an empty message".into()));
        }
        let nonce_key = match (&new.nonce, new.enforce_nonce) {
            (Some(nonce), true) => {
                let text = nonce
                    .as_str()
                    .map_or_else(|| nonce.to_string(), str::to_owned);
                Some((author_id, channel_id, text))
            }
            _ => None,
        };
        if let Some(key) = &nonce_key {
            if let Some((existing, _)) = self.nonces.get(key) {
                if let Some(m) = self.messages.get(existing) {
                    return Ok((m.clone(), false));
                }
            }
        }
        let id = self.fresh_id();
        let message = Message {
            id,
            channel_id,
            guild_id,
            author_id,
            content: new.content,
            embeds: new.embeds,
            timestamp_ms: payload::snowflake_ms(id),
            edited_ms: None,
            nonce: new.nonce,
            kind: new.kind,
            flags: new.flags,
            webhook_id: new.webhook_id,
        };
        if let Some(key) = nonce_key {
            self.nonces.insert(key, (id, std::time::Instant::now()));
        }
        self.messages.insert(id, message.clone());
        self.channel_messages
            .entry(channel_id)
            .or_default()
            .push(id);
        if let Some(c) = self.channels.get_mut(&channel_id) {
            c.last_message_id = Some(id);
        }
        let d = self.message_value(&message);
        self.dispatch("MESSAGE_CREATE", guild_id, &d);
        Ok((message, true))
    }

    /// Edits a message's content (and embeds when given) and dispatches MESSAGE_UPDATE.
    pub(crate) fn edit_message(
        &mut self,
        channel_id: u64,
        message_id: u64,
        content: Option<String>,
        embeds: Option<Vec<Value>>,
    ) -> Result<Message, Error> {
        let m = self
            .messages
            .get_mut(&message_id)
            .filter(|m| m.channel_id == channel_id)
            .ok_or(Error::UnknownMessage(message_id))?;
        if let Some(content) = content {
            if content.chars().count() > MAX_CONTENT {
                return Err(Error::Invalid(
                    "content: must be 2000 or fewer in length".into(),
                ));
            }
            m.content = content;
        }
        if let Some(embeds) = embeds {
            m.embeds = embeds;
        }
        m.edited_ms = Some(now_ms());
        let m = m.clone();
        let d = self.message_value(&m);
        self.dispatch("MESSAGE_UPDATE", m.guild_id, &d);
        Ok(m)
    }

    fn remove_message(&mut self, channel_id: u64, message_id: u64) -> Result<Message, Error> {
        match self.messages.get(&message_id) {
            Some(m) if m.channel_id == channel_id => {}
            _ => return Err(Error::UnknownMessage(message_id)),
        }
        if let Some(list) = self.channel_messages.get_mut(&channel_id) {
            list.retain(|id| *id != message_id);
        }
        self.messages
            .remove(&message_id)
            .ok_or(Error::UnknownMessage(message_id))
    }

    /// Deletes a message and dispatches MESSAGE_DELETE.
    pub(crate) fn delete_message(&mut self, channel_id: u64, message_id: u64) -> Result<(), Error> {
        let m = self.remove_message(channel_id, message_id)?;
        let d = payload::message_delete(message_id, channel_id, m.guild_id);
        self.dispatch("MESSAGE_DELETE", m.guild_id, &d);
        Ok(())
    }

    /// Deletes 2–100 messages and dispatches one MESSAGE_DELETE_BULK.
    pub(crate) fn bulk_delete(&mut self, channel_id: u64, ids: &[u64]) -> Result<(), Error> {
        let channel = self
            .channels
            .get(&channel_id)
            .ok_or(Error::UnknownChannel(channel_id))?;
        let guild_id = channel.guild_id;
        if !(2..=100).contains(&ids.len()) {
            return Err(Error::Invalid("messages: must hold 2 to 100 ids".into()));
        }
        if let Some(missing) = ids.iter().find(|id| {
            self.messages
                .get(id)
                .is_none_or(|m| m.channel_id != channel_id)
        }) {
            return Err(Error::UnknownMessage(*missing));
        }
        for id in ids {
            self.remove_message(channel_id, *id)?;
        }
        let d = payload::message_delete_bulk(ids, channel_id, guild_id);
        self.dispatch("MESSAGE_DELETE_BULK", guild_id, &d);
        Ok(())
    }

    /// Adds `user_id` to the guild and dispatches GUILD_MEMBER_ADD.
    pub(crate) fn add_member(&mut self, guild_id: u64, user_id: u64) -> Result<(), Error> {
        let user = self
            .users
            .get(&user_id)
            .ok_or(Error::UnknownUser(user_id))?
            .clone();
        let g = self
            .guilds
            .get_mut(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?;
        if g.bans.contains_key(&user_id) {
            return Err(Error::Invalid(format!(
                "user {user_id} is banned from guild {guild_id}"
            )));
        }
        if g.members.contains_key(&user_id) {
            return Err(Error::Invalid(format!(
                "user {user_id} is already a member"
            )));
        }
        let member = Member {
            user_id,
            joined_at_ms: now_ms(),
            roles: vec![],
            nick: None,
            communication_disabled_until_ms: None,
        };
        g.members.insert(user_id, member.clone());
        let d = payload::member_event(guild_id, &member, &user);
        self.dispatch("GUILD_MEMBER_ADD", Some(guild_id), &d);
        Ok(())
    }

    /// Removes a member and dispatches GUILD_MEMBER_REMOVE.
    pub(crate) fn remove_member(&mut self, guild_id: u64, user_id: u64) -> Result<(), Error> {
        let g = self
            .guilds
            .get_mut(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?;
        if g.owner_id == user_id {
            return Err(Error::Invalid("the guild owner cannot leave".into()));
        }
        g.members.remove(&user_id).ok_or(Error::UnknownMember {
            guild: guild_id,
            user: user_id,
        })?;
        let user = self
            .users
            .get(&user_id)
            .ok_or(Error::UnknownUser(user_id))?;
        let d = payload::guild_user(guild_id, user);
        self.dispatch("GUILD_MEMBER_REMOVE", Some(guild_id), &d);
        Ok(())
    }

    fn audit(
        &mut self,
        guild_id: u64,
        action_type: u8,
        executor: u64,
        target: u64,
        reason: Option<&str>,
        changes: Option<Value>,
    ) -> u64 {
        let id = self.fresh_id();
        let entry = payload::audit_entry(id, action_type, executor, target, reason, changes);
        // The gateway event is the entry plus `guild_id`; `GET …/audit-logs` shows it without.
        let mut d = entry.clone();
        d["guild_id"] = json!(guild_id.to_string());
        if let Some(g) = self.guilds.get_mut(&guild_id) {
            g.audit_log.push(entry);
        }
        self.dispatch("GUILD_AUDIT_LOG_ENTRY_CREATE", Some(guild_id), &d);
        id
    }

    fn check_moderator(&self, guild_id: u64, executor: u64) -> Result<(), Error> {
        let g = self
            .guilds
            .get(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?;
        if payload::member_permissions(g, executor) & (1 << 2 | 1 << 40) == 0 {
            return Err(Error::Invalid(format!(
                "user {executor} may not moderate guild {guild_id}"
            )));
        }
        Ok(())
    }

    /// Bans: GUILD_BAN_ADD, GUILD_MEMBER_REMOVE (if a member), GUILD_AUDIT_LOG_ENTRY_CREATE
    /// (action 22). Returns the audit entry id.
    pub(crate) fn ban(
        &mut self,
        guild_id: u64,
        user_id: u64,
        executor: u64,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        self.check_moderator(guild_id, executor)?;
        let user = self
            .users
            .get(&user_id)
            .ok_or(Error::UnknownUser(user_id))?
            .clone();
        let g = self
            .guilds
            .get_mut(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?;
        if g.owner_id == user_id || g.bans.contains_key(&user_id) {
            return Err(Error::Invalid(format!("user {user_id} cannot be banned")));
        }
        g.bans.insert(user_id, reason.map(str::to_owned));
        let was_member = g.members.remove(&user_id).is_some();
        self.dispatch(
            "GUILD_BAN_ADD",
            Some(guild_id),
            &payload::guild_user(guild_id, &user),
        );
        if was_member {
            self.dispatch(
                "GUILD_MEMBER_REMOVE",
                Some(guild_id),
                &payload::guild_user(guild_id, &user),
            );
        }
        Ok(self.audit(guild_id, 22, executor, user_id, reason, None))
    }

    /// Unbans: GUILD_BAN_REMOVE then GUILD_AUDIT_LOG_ENTRY_CREATE (action 23).
    pub(crate) fn unban(
        &mut self,
        guild_id: u64,
        user_id: u64,
        executor: u64,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        self.check_moderator(guild_id, executor)?;
        let user = self
            .users
            .get(&user_id)
            .ok_or(Error::UnknownUser(user_id))?
            .clone();
        let g = self
            .guilds
            .get_mut(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?;
        if g.bans.remove(&user_id).is_none() {
            return Err(Error::Invalid(format!("user {user_id} is not banned")));
        }
        self.dispatch(
            "GUILD_BAN_REMOVE",
            Some(guild_id),
            &payload::guild_user(guild_id, &user),
        );
        Ok(self.audit(guild_id, 23, executor, user_id, reason, None))
    }

    /// Times out until `until_ms` (or lifts it with `None`): GUILD_MEMBER_UPDATE then
    /// GUILD_AUDIT_LOG_ENTRY_CREATE (action 24, `communication_disabled_until` change).
    pub(crate) fn timeout(
        &mut self,
        guild_id: u64,
        user_id: u64,
        executor: u64,
        until_ms: Option<u64>,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        self.check_moderator(guild_id, executor)?;
        let user = self
            .users
            .get(&user_id)
            .ok_or(Error::UnknownUser(user_id))?
            .clone();
        let g = self
            .guilds
            .get_mut(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?;
        let m = g.members.get_mut(&user_id).ok_or(Error::UnknownMember {
            guild: guild_id,
            user: user_id,
        })?;
        let old = m.communication_disabled_until_ms;
        m.communication_disabled_until_ms = until_ms;
        let d = payload::member_event(guild_id, m, &user);
        self.dispatch("GUILD_MEMBER_UPDATE", Some(guild_id), &d);
        let changes = json!([{
            "key": "communication_disabled_until",
            "new_value": until_ms.map(payload::iso8601),
            "old_value": old.map(payload::iso8601),
        }]);
        Ok(self.audit(guild_id, 24, executor, user_id, reason, Some(changes)))
    }

    pub(crate) fn message_info(m: &Message) -> MessageInfo {
        MessageInfo {
            id: m.id,
            channel_id: m.channel_id,
            guild_id: m.guild_id,
            author_id: m.author_id,
            content: m.content.clone(),
            embeds: m.embeds.clone(),
            flags: m.flags,
            edited: m.edited_ms.is_some(),
        }
    }

    /// The channel's messages, oldest first.
    pub(crate) fn channel_history(&self, channel_id: u64) -> Result<Vec<&Message>, Error> {
        if !self.channels.contains_key(&channel_id) {
            return Err(Error::UnknownChannel(channel_id));
        }
        Ok(self
            .channel_messages
            .get(&channel_id)
            .map(|ids| ids.iter().filter_map(|id| self.messages.get(id)).collect())
            .unwrap_or_default())
    }

    fn new_user(&mut self, username: Option<String>) -> u64 {
        let id = self.fresh_id();
        let username = username.unwrap_or_else(|| format!("user-{id}"));
        self.users.insert(
            id,
            User {
                id,
                username: username.clone(),
                global_name: Some(username),
                bot: false,
            },
        );
        id
    }
}

impl Emulator {
    /// Every guild, in id order.
    pub fn guilds(&self) -> Vec<GuildInfo> {
        let st = self.lock();
        st.guilds
            .keys()
            .filter_map(|id| st.guild_info(*id).ok())
            .collect()
    }

    /// One guild.
    ///
    /// # Errors
    /// [`Error::UnknownGuild`].
    pub fn guild(&self, guild_id: u64) -> Result<GuildInfo, Error> {
        self.lock().guild_info(guild_id)
    }

    /// A user.
    ///
    /// # Errors
    /// [`Error::UnknownUser`].
    pub fn user(&self, user_id: u64) -> Result<UserInfo, Error> {
        self.lock().user_info(user_id)
    }

    /// The bot joins a new guild with `members` fresh users (the first owns it) and `channels`
    /// text channels; sessions of its shard get GUILD_CREATE.
    pub fn create_guild(&self, name: &str, members: usize, channels: usize) -> GuildInfo {
        let mut st = self.lock();
        let users: Vec<u64> = (0..members.max(1)).map(|_| st.new_user(None)).collect();
        let seed = st.fresh_id();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        // The guild existed before the bot joined, so its snowflake is from the past, like the
        // seeded ones; the bot's join time is now.
        let id = st.seed_guild(&mut rng, name.to_owned(), &users, channels);
        let d = st.guild_create_value(id, u64::MAX);
        st.dispatch("GUILD_CREATE", Some(id), &d);
        st.guild_info(id)
            .expect("the guild was inserted under this lock")
    }

    /// A new text channel (CHANNEL_CREATE).
    ///
    /// # Errors
    /// [`Error::UnknownGuild`].
    pub fn create_channel(&self, guild_id: u64, name: &str) -> Result<ChannelInfo, Error> {
        let mut st = self.lock();
        let position = st
            .guilds
            .get(&guild_id)
            .ok_or(Error::UnknownGuild(guild_id))?
            .channels
            .len() as u32;
        let id = st.fresh_id();
        let channel = Channel {
            id,
            kind: 0,
            guild_id: Some(guild_id),
            name: name.to_owned(),
            position,
            recipient: None,
            last_message_id: None,
        };
        let d = payload::channel(&channel, None);
        st.channels.insert(id, channel);
        if let Some(g) = st.guilds.get_mut(&guild_id) {
            g.channels.push(id);
        }
        st.dispatch("CHANNEL_CREATE", Some(guild_id), &d);
        Ok(ChannelInfo {
            id,
            kind: 0,
            guild_id: Some(guild_id),
            name: name.to_owned(),
            recipient_id: None,
        })
    }

    /// A user joins (GUILD_MEMBER_ADD): `user_id`, or a brand-new user when `None`.
    ///
    /// # Errors
    /// Unknown guild or user, a banned user, or one who is already a member.
    pub fn add_member(&self, guild_id: u64, user_id: Option<u64>) -> Result<UserInfo, Error> {
        let mut st = self.lock();
        if !st.guilds.contains_key(&guild_id) {
            return Err(Error::UnknownGuild(guild_id));
        }
        let user_id = match user_id {
            Some(id) => id,
            None => st.new_user(None),
        };
        st.add_member(guild_id, user_id)?;
        st.user_info(user_id)
    }

    /// A member leaves (GUILD_MEMBER_REMOVE).
    ///
    /// # Errors
    /// Unknown guild or member; the owner cannot leave.
    pub fn remove_member(&self, guild_id: u64, user_id: u64) -> Result<(), Error> {
        self.lock().remove_member(guild_id, user_id)
    }

    /// A user posts in a channel (MESSAGE_CREATE).
    ///
    /// # Errors
    /// Unknown channel, empty or too long content.
    pub fn post_message(
        &self,
        channel_id: u64,
        author_id: u64,
        content: &str,
    ) -> Result<MessageInfo, Error> {
        let mut st = self.lock();
        if !st.users.contains_key(&author_id) {
            return Err(Error::UnknownUser(author_id));
        }
        let new = NewMessage {
            content: content.to_owned(),
            ..NewMessage::default()
        };
        let (m, _) = st.create_message(channel_id, author_id, new)?;
        Ok(State::message_info(&m))
    }

    /// A user edits their message (MESSAGE_UPDATE).
    ///
    /// # Errors
    /// Unknown message, too long content.
    pub fn edit_message(
        &self,
        channel_id: u64,
        message_id: u64,
        content: &str,
    ) -> Result<MessageInfo, Error> {
        let m = self
            .lock()
            .edit_message(channel_id, message_id, Some(content.to_owned()), None)?;
        Ok(State::message_info(&m))
    }

    /// A message is deleted (MESSAGE_DELETE).
    ///
    /// # Errors
    /// Unknown message.
    pub fn delete_message(&self, channel_id: u64, message_id: u64) -> Result<(), Error> {
        self.lock().delete_message(channel_id, message_id)
    }

    /// A moderator bulk-deletes 2–100 messages (MESSAGE_DELETE_BULK).
    ///
    /// # Errors
    /// Unknown channel or message, or a count outside 2–100.
    pub fn bulk_delete(&self, channel_id: u64, message_ids: &[u64]) -> Result<(), Error> {
        self.lock().bulk_delete(channel_id, message_ids)
    }

    /// `executor` bans `user_id`; returns the audit-log entry id.
    ///
    /// # Errors
    /// Unknown guild or user, an executor without ban permission, an already banned user.
    pub fn ban(
        &self,
        guild_id: u64,
        user_id: u64,
        executor: u64,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        self.lock().ban(guild_id, user_id, executor, reason)
    }

    /// `executor` unbans `user_id`; returns the audit-log entry id.
    ///
    /// # Errors
    /// Unknown guild or user, an executor without permission, a user who is not banned.
    pub fn unban(
        &self,
        guild_id: u64,
        user_id: u64,
        executor: u64,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        self.lock().unban(guild_id, user_id, executor, reason)
    }

    /// `executor` times `user_id` out until `until_ms` (Unix ms; `None` lifts it); returns the
    /// audit-log entry id.
    ///
    /// # Errors
    /// Unknown guild or member, an executor without permission.
    pub fn timeout(
        &self,
        guild_id: u64,
        user_id: u64,
        executor: u64,
        until_ms: Option<u64>,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        self.lock()
            .timeout(guild_id, user_id, executor, until_ms, reason)
    }

    /// A user DMs the bot (MESSAGE_CREATE without `guild_id`, to shard 0).
    ///
    /// # Errors
    /// Unknown user, empty or too long content.
    pub fn send_dm(&self, user_id: u64, content: &str) -> Result<MessageInfo, Error> {
        let mut st = self.lock();
        let channel_id = st.dm_channel_for(user_id)?.id;
        let new = NewMessage {
            content: content.to_owned(),
            ..NewMessage::default()
        };
        let (m, _) = st.create_message(channel_id, user_id, new)?;
        Ok(State::message_info(&m))
    }

    /// The DM channel between the bot and `user_id` (created if needed).
    ///
    /// # Errors
    /// Unknown user.
    pub fn dm_channel(&self, user_id: u64) -> Result<ChannelInfo, Error> {
        let mut st = self.lock();
        let c = st.dm_channel_for(user_id)?;
        Ok(ChannelInfo {
            id: c.id,
            kind: c.kind,
            guild_id: None,
            name: String::new(),
            recipient_id: c.recipient,
        })
    }

    /// Every message in a channel, oldest first.
    ///
    /// # Errors
    /// Unknown channel.
    pub fn messages(&self, channel_id: u64) -> Result<Vec<MessageInfo>, Error> {
        let st = self.lock();
        Ok(st
            .channel_history(channel_id)?
            .into_iter()
            .map(State::message_info)
            .collect())
    }

    /// What the bot posted in a channel (including interaction responses), oldest first.
    ///
    /// # Errors
    /// Unknown channel.
    pub fn bot_messages(&self, channel_id: u64) -> Result<Vec<MessageInfo>, Error> {
        let bot = self.lock().bot.id;
        Ok(self
            .messages(channel_id)?
            .into_iter()
            .filter(|m| m.author_id == bot)
            .collect())
    }

    /// What the bot sent `user_id` by DM, oldest first (empty when there is no DM channel).
    ///
    /// # Errors
    /// Unknown user.
    pub fn bot_dms(&self, user_id: u64) -> Result<Vec<MessageInfo>, Error> {
        let channel = {
            let st = self.lock();
            st.user_info(user_id)?;
            st.dm_channels.get(&user_id).copied()
        };
        match channel {
            Some(c) => self.bot_messages(c),
            None => Ok(vec![]),
        }
    }

    /// Lets a test create a user that is not in any guild yet.
    pub fn create_user(&self, username: &str) -> UserInfo {
        let mut st = self.lock();
        let id = st.new_user(Some(username.to_owned()));
        UserInfo {
            id,
            username: username.to_owned(),
            bot: false,
        }
    }

    /// Where interactions are POSTed (`None`: nowhere).
    pub fn set_interactions_url(&self, url: Option<String>) {
        self.lock().interactions_url = url;
    }
}

impl State {
    /// GUILD_CREATE for guild `id` as a session with `large_threshold` sees it: the member
    /// list only when it is not large (Discord sends only online members of large guilds).
    pub(crate) fn guild_create_value(&self, id: u64, large_threshold: u64) -> Value {
        let Some(g) = self.guilds.get(&id) else {
            return Value::Null;
        };
        let channels: Vec<&Channel> = g
            .channels
            .iter()
            .filter_map(|c| self.channels.get(c))
            .collect();
        let large = g.members.len() as u64 > large_threshold;
        let members: Vec<(&Member, &User)> = g
            .members
            .values()
            .filter(|m| !large || m.user_id == self.bot.id)
            .filter_map(|m| Some((m, self.users.get(&m.user_id)?)))
            .collect();
        payload::guild_create(g, &channels, &members, large)
    }
}
