//! When a gateway session may still be resumed: the bound on its replay buffer, how long it
//! survives a disconnect, and which close codes end it. Kept apart from the socket code so the
//! rules are one pure function that unit tests drive with any clock.
//!
//! Discord documents the outline ("resumable for a few minutes", 4007/4009 mean "start a new
//! session") but not the numbers; the defaults here are the stricter readings listed in the
//! emulator's module doc.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::state::Session;

/// Dispatches kept per session for replay. Discord keeps "enough for a few minutes"; this
/// covers several minutes of a busy shard without letting a forgotten session grow forever.
pub const DEFAULT_BUFFER_FRAMES: usize = 50_000;
/// How long a disconnected session stays resumable: three minutes, inside Discord's "a few
/// minutes", so a client that waits longer than that is told to identify again.
pub const DEFAULT_EXPIRY_MS: u64 = 180_000;

/// The live resume rules (settable at start through [`super::EmulatorConfig`] and later through
/// the control API's `PUT /resume-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePolicy {
    /// At most this many dispatches are kept per session; a RESUME that needs an older one is
    /// refused with INVALID_SESSION `d: false`.
    pub buffer_frames: usize,
    /// A session disconnected for this long (ms) can no longer be resumed.
    pub expiry_ms: u64,
}

impl Default for ResumePolicy {
    fn default() -> Self {
        Self {
            buffer_frames: DEFAULT_BUFFER_FRAMES,
            expiry_ms: DEFAULT_EXPIRY_MS,
        }
    }
}

impl ResumePolicy {
    /// The expiry as a duration.
    pub fn expiry(&self) -> Duration {
        Duration::from_millis(self.expiry_ms)
    }

    /// Whether a session disconnected at `at` has outlived the expiry by `now`.
    pub(crate) fn expired(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) >= self.expiry()
    }
}

/// Why a RESUME of a known session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The session was ended on purpose (its buffer expired through the control API).
    #[error("the session can no longer be resumed")]
    Ended,
    /// It has been disconnected longer than the expiry.
    #[error("the session was disconnected longer than the resume expiry")]
    Expired,
    /// The client claims a sequence number the session never reached.
    #[error("seq is ahead of the session")]
    SeqAhead,
    /// Some dispatch after `seq` has already left the bounded buffer.
    #[error("missed dispatches are no longer buffered")]
    NotBuffered,
}

impl Refused {
    /// The close code to answer with, when the refusal is a close rather than op 9: Discord
    /// documents 4007 for an invalid `seq`.
    pub(crate) fn close_code(self) -> Option<u16> {
        match self {
            Refused::SeqAhead => Some(4007),
            Refused::Ended | Refused::Expired | Refused::NotBuffered => None,
        }
    }
}

/// Whether `session` can be resumed from `seq` at `now`: every dispatch after `seq` must still
/// be buffered, so the client misses nothing.
pub(crate) fn check(
    session: &Session,
    seq: u64,
    policy: &ResumePolicy,
    now: Instant,
) -> Result<(), Refused> {
    if !session.resumable {
        return Err(Refused::Ended);
    }
    if session
        .disconnected_at
        .is_some_and(|at| policy.expired(at, now))
    {
        return Err(Refused::Expired);
    }
    if seq > session.seq {
        return Err(Refused::SeqAhead);
    }
    // The buffer is contiguous and ends at `session.seq`, so the first missed dispatch
    // (`seq + 1`) is there exactly when the buffer starts at or before it.
    let missed_something = seq < session.seq;
    if missed_something
        && session
            .buffer
            .front()
            .is_none_or(|(first, _)| *first > seq + 1)
    {
        return Err(Refused::NotBuffered);
    }
    Ok(())
}

/// Close codes the emulator sends after which the session is gone: 4007 and 4009 are
/// documented as "start a new session", and 4004, 4010–4014 as "do not reconnect".
pub(crate) fn close_ends_session(code: u16) -> bool {
    matches!(code, 4004 | 4007 | 4009..=4014)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Arc;

    fn session(seq: u64, buffered_from: u64) -> Session {
        let buffer: VecDeque<(u64, Arc<str>)> = (buffered_from..=seq)
            .map(|s| (s, Arc::from(format!("frame {s}"))))
            .collect();
        Session {
            id: "s".into(),
            shard: [0, 1],
            intents: 0,
            seq,
            buffer,
            conn: None,
            disconnected_at: None,
            zombie: false,
            resumes: 0,
            resumable: true,
        }
    }

    #[test]
    fn resumes_only_while_every_missed_dispatch_is_buffered() {
        let policy = ResumePolicy::default();
        let now = Instant::now();
        let s = session(10, 6);
        assert_eq!(check(&s, 5, &policy, now), Ok(()), "6..=10 are all there");
        assert_eq!(check(&s, 10, &policy, now), Ok(()), "nothing missed");
        assert_eq!(check(&s, 4, &policy, now), Err(Refused::NotBuffered));
        assert_eq!(check(&s, 0, &policy, now), Err(Refused::NotBuffered));
        assert_eq!(check(&s, 11, &policy, now), Err(Refused::SeqAhead));
    }

    #[test]
    fn an_empty_buffer_resumes_only_a_client_that_missed_nothing() {
        let policy = ResumePolicy::default();
        let mut s = session(10, 6);
        s.buffer.clear();
        let now = Instant::now();
        assert_eq!(check(&s, 10, &policy, now), Ok(()));
        assert_eq!(check(&s, 9, &policy, now), Err(Refused::NotBuffered));
    }

    #[test]
    fn a_session_disconnected_past_the_expiry_is_refused() {
        let policy = ResumePolicy {
            buffer_frames: 10,
            expiry_ms: 1_000,
        };
        let mut s = session(3, 1);
        let at = Instant::now();
        s.disconnected_at = Some(at);
        assert_eq!(
            check(&s, 3, &policy, at + Duration::from_millis(999)),
            Ok(())
        );
        assert_eq!(
            check(&s, 3, &policy, at + Duration::from_millis(1_000)),
            Err(Refused::Expired)
        );
        s.disconnected_at = None;
        assert_eq!(
            check(&s, 3, &policy, at + Duration::from_secs(3600)),
            Ok(()),
            "a connected session does not expire"
        );
    }

    #[test]
    fn an_ended_session_is_refused_even_with_everything_buffered() {
        let mut s = session(3, 1);
        s.resumable = false;
        assert_eq!(
            check(&s, 3, &ResumePolicy::default(), Instant::now()),
            Err(Refused::Ended)
        );
    }

    #[test]
    fn close_codes_that_start_a_new_session_end_the_old_one() {
        for code in [4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014] {
            assert!(close_ends_session(code), "{code}");
        }
        for code in [1000, 4000, 4001, 4002, 4003, 4005, 4008] {
            assert!(!close_ends_session(code), "{code}");
        }
    }
}
