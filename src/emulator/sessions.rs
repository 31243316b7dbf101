//! Gateway sessions seen from outside the socket, as [`Emulator`] methods: listing them, and
//! what a test does to them (RECONNECT, INVALID_SESSION, drops, closes, zombies, redelivery,
//! expiry), addressed by session id or by shard id. Also the resume policy in force.
//!
//! A session's fate is decided here under the world lock, before the connection task hears of
//! it, so a client that reconnects at once already meets the new state (for example a session
//! closed with 4009 is gone before the close frame is written).

use std::time::Instant;

use serde_json::Value;

use super::resume::{self, ResumePolicy};
use super::state::{trim_buffer, Outbound, State};
use super::types::SessionInfo;
use super::{Emulator, Error};

/// Something a test does to a session (the control API's `…/{action}` routes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionAction {
    /// op 7 RECONNECT; the client should resume on a new connection.
    Reconnect,
    /// op 9 INVALID_SESSION with `d: resumable`.
    Invalidate {
        /// `d` of the op 9 frame.
        resumable: bool,
    },
    /// Drop the TCP connection without a close frame (the session stays resumable).
    Drop,
    /// Stop acknowledging heartbeats.
    Zombie,
    /// op 1: ask for an immediate heartbeat.
    Heartbeat,
    /// Close the connection with this code.
    Close {
        /// The close code.
        code: u16,
    },
    /// Deliver buffered dispatches from this seq on once more.
    Redeliver {
        /// The first seq to deliver again.
        from_seq: u64,
    },
    /// Empty the resume buffer and refuse every later RESUME (INVALID_SESSION `d: false`); a
    /// live connection keeps working until it ends.
    Expire,
}

impl State {
    fn send_to_session(&mut self, session_id: &str, msg: Outbound) -> Result<(), Error> {
        let s = self
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| Error::UnknownSession(session_id.to_owned()))?;
        let conn = s
            .conn
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("session {session_id} is not connected")))?;
        conn.tx
            .send(msg)
            .map_err(|_| Error::Invalid(format!("session {session_id} is closing")))
    }
}

impl Emulator {
    /// Gateway sessions (connected, and disconnected ones still resumable).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let st = self.lock();
        let mut out: Vec<SessionInfo> = st
            .sessions
            .values()
            .map(|s| SessionInfo {
                session_id: s.id.clone(),
                shard: s.shard,
                seq: s.seq,
                state: match (&s.conn, s.zombie) {
                    (None, _) => "disconnected",
                    (Some(_), true) => "zombie",
                    (Some(_), false) => "connected",
                }
                .to_owned(),
                intents: s.intents,
                resumes: s.resumes,
                resumable: s.resumable,
                buffered: s.buffer.len(),
            })
            .collect();
        out.sort_by(|a, b| {
            a.shard
                .cmp(&b.shard)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        out
    }

    /// The sessions identified with shard id `shard` (any shard count), in
    /// [`Emulator::sessions`] order.
    pub fn sessions_of_shard(&self, shard: u32) -> Vec<SessionInfo> {
        self.sessions()
            .into_iter()
            .filter(|s| s.shard[0] == shard)
            .collect()
    }

    /// Does `action` to one session.
    ///
    /// # Errors
    /// Unknown session, or one that is not connected for an action that needs a connection.
    pub fn session_action(&self, session_id: &str, action: &SessionAction) -> Result<(), Error> {
        match action {
            SessionAction::Reconnect => self.reconnect(session_id),
            SessionAction::Invalidate { resumable } => {
                self.invalidate_session(session_id, *resumable)
            }
            SessionAction::Drop => self.drop_connection(session_id),
            SessionAction::Zombie => self.zombie(session_id),
            SessionAction::Heartbeat => self.request_heartbeat(session_id),
            SessionAction::Close { code } => self.close_session(session_id, *code),
            SessionAction::Redeliver { from_seq } => {
                self.redeliver(session_id, *from_seq).map(|_| ())
            }
            SessionAction::Expire => self.expire_session(session_id),
        }
    }

    /// Does `action` to every session of shard id `shard` (tests rarely know session ids).
    /// Returns the ids it was done to; sessions it does not apply to (e.g. a RECONNECT for a
    /// disconnected one) are skipped.
    ///
    /// # Errors
    /// [`Error::UnknownShard`] when no session has that shard id; the first session's error
    /// when the action applied to none of them.
    pub fn shard_action(&self, shard: u32, action: &SessionAction) -> Result<Vec<String>, Error> {
        let targets = self.sessions_of_shard(shard);
        let mut done = Vec::new();
        let mut first_error = None;
        for s in targets {
            match self.session_action(&s.session_id, action) {
                Ok(()) => done.push(s.session_id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (done.is_empty(), first_error) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(Error::UnknownShard(shard)),
            (false, _) => Ok(done),
        }
    }

    /// Sends op 7 RECONNECT to a session (the client should resume on a new connection).
    ///
    /// # Errors
    /// Unknown or disconnected session.
    pub fn reconnect(&self, session_id: &str) -> Result<(), Error> {
        self.lock().send_to_session(session_id, Outbound::Reconnect)
    }

    /// Sends op 9 INVALID_SESSION. With `resumable` the connection becomes unauthenticated
    /// at once (it gets no more dispatches; they are buffered) and the client may RESUME, on
    /// this socket or another. Without it the session is forgotten, so every RESUME of it
    /// fails; a disconnected session is simply forgotten.
    ///
    /// # Errors
    /// Unknown session, or `resumable` for a session with no connection to tell.
    pub fn invalidate_session(&self, session_id: &str, resumable: bool) -> Result<(), Error> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| Error::UnknownSession(session_id.to_owned()))?;
        if resumable && s.conn.is_none() {
            return Err(Error::Invalid(format!(
                "session {session_id} is not connected"
            )));
        }
        if let Some(conn) = s.conn.take() {
            // Detached here, under the lock, so no dispatch can reach the socket after op 9.
            let _ = conn.tx.send(Outbound::InvalidSession(resumable));
            s.disconnected_at = Some(Instant::now());
        }
        if !resumable {
            st.sessions.remove(session_id);
        }
        Ok(())
    }

    /// Drops the session's TCP connection without a close frame (it stays resumable).
    ///
    /// # Errors
    /// Unknown or disconnected session.
    pub fn drop_connection(&self, session_id: &str) -> Result<(), Error> {
        self.lock().send_to_session(session_id, Outbound::Drop)
    }

    /// Closes the session's connection with `code` (4000–4014 per the docs). A code after
    /// which Discord says to start a new session (4007, 4009) or not to reconnect (4004,
    /// 4010–4014) ends the session too, so a RESUME of it fails.
    ///
    /// # Errors
    /// Unknown or disconnected session.
    pub fn close_session(&self, session_id: &str, code: u16) -> Result<(), Error> {
        let mut st = self.lock();
        st.send_to_session(
            session_id,
            Outbound::Close(code, "closed by the emulator's control api".into()),
        )?;
        if resume::close_ends_session(code) {
            st.sessions.remove(session_id);
        }
        Ok(())
    }

    /// Asks the session's client for an immediate heartbeat (op 1).
    ///
    /// # Errors
    /// Unknown or disconnected session.
    pub fn request_heartbeat(&self, session_id: &str) -> Result<(), Error> {
        self.lock()
            .send_to_session(session_id, Outbound::RequestHeartbeat)
    }

    /// Stops acknowledging the session's heartbeats (a zombied connection) until it resumes
    /// or re-identifies.
    ///
    /// # Errors
    /// Unknown session.
    pub fn zombie(&self, session_id: &str) -> Result<(), Error> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| Error::UnknownSession(session_id.to_owned()))?;
        s.zombie = true;
        Ok(())
    }

    /// Expires the session's resume buffer: the next RESUME of it gets INVALID_SESSION
    /// `d: false`. A disconnected session is forgotten at once; a connected one keeps its
    /// connection (and keeps receiving dispatches) but can never be resumed.
    ///
    /// # Errors
    /// Unknown session.
    pub fn expire_session(&self, session_id: &str) -> Result<(), Error> {
        let mut st = self.lock();
        let s = st
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| Error::UnknownSession(session_id.to_owned()))?;
        if s.conn.is_none() {
            st.sessions.remove(session_id);
        } else {
            s.resumable = false;
            s.buffer.clear();
        }
        Ok(())
    }

    /// Delivers the session's buffered dispatches from `from_seq` on once more, as new
    /// dispatches with new sequence numbers. Discord's delivery is at-least-once (a client can
    /// see an event twice, e.g. around a resume); this lets a test make that happen on demand.
    /// READY and RESUMED are not repeated. Returns how many dispatches were sent again.
    ///
    /// # Errors
    /// Unknown session.
    pub fn redeliver(&self, session_id: &str, from_seq: u64) -> Result<usize, Error> {
        let mut st = self.lock();
        let session = st
            .sessions
            .get(session_id)
            .ok_or_else(|| Error::UnknownSession(session_id.to_owned()))?;
        let again: Vec<(String, Value)> = session
            .buffer
            .iter()
            .filter(|(seq, _)| *seq >= from_seq)
            .filter_map(|(_, frame)| {
                let v: Value = serde_json::from_str(frame).ok()?;
                let kind = v.get("t")?.as_str()?.to_owned();
                (kind != "READY" && kind != "RESUMED").then(|| (kind, v["d"].clone()))
            })
            .collect();
        for (kind, d) in &again {
            st.dispatch_to(session_id, kind, d);
        }
        Ok(again.len())
    }

    /// The resume buffer bound and expiry in force.
    pub fn resume_policy(&self) -> ResumePolicy {
        self.lock().resume
    }

    /// Changes the resume buffer bound and expiry for every session, existing ones included:
    /// longer buffers are trimmed at once, and the expiry applies to sessions already
    /// disconnected.
    pub fn set_resume_policy(&self, policy: ResumePolicy) {
        let mut st = self.lock();
        st.resume = policy;
        for s in st.sessions.values_mut() {
            trim_buffer(s, policy.buffer_frames);
        }
    }
}
