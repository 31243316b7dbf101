//! The last few seconds of dispatches this pod received but did not process, held so that a
//! cover can start in the past.
//!
//! Every pod runs every Discord shard, so each one receives every guild's events and drops
//! the ones it does not own. When a peer dies without warning (kill -9, a lost node), its
//! peers notice only at their next status poll, and a fresh IDENTIFY never replays what was
//! missed. So each pod keeps what it dropped for [`HOLD_FOR`], and when it starts covering a
//! down peer it processes the held events of that peer's guilds from the moment the peer was
//! last seen live (less a margin). Writes are idempotent, so what the peer did commit before
//! it died merges unchanged.
//!
//! The decision "process now or hold" is taken under the buffer's lock, and a replay takes
//! the lock after the view changed: every event decided before the change is in the buffer
//! when the replay looks, and every event decided after it is processed live.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serenity::model::event::Event;

use crate::gateway::classify::Classified;
use crate::gateway::features::replayable;
use crate::reshard::topology::OwnershipView;

/// How long an unprocessed dispatch is held. A cover reaches back to when the peer was last
/// seen live (the send time of the poll it answered) less the 2 s cover margin, and starts at
/// the next poll that finds it down: up to two polls of at most a 2 s request timeout each and
/// a 250 ms interval, about 6.5 s in all. Held for more than twice that, so a slow machine
/// does not turn a cover into a gap; memory is bounded by [`HOLD_AT_MOST`] either way.
pub const HOLD_FOR: Duration = Duration::from_secs(15);
/// At most this many are held (each about 1.6 KiB, boxed), so a burst bounds the memory
/// (about 50 MiB), not the clock: above 5 000 unprocessed events/s the window is shorter than
/// [`HOLD_FOR`], and `gateway_events_hold_overflow` counts what left early.
pub const HOLD_AT_MOST: usize = 30_000;

/// A dispatch this pod did not process when it arrived.
pub struct Held {
    /// When it was received (Unix ms).
    pub received_ms: u64,
    /// Its name and guild.
    pub class: Classified,
    /// The dispatch (boxed: the deque stays small and memory is returned as events expire).
    pub event: Box<Event>,
}

/// The held dispatches, oldest first.
pub struct ReplayBuffer {
    held: Mutex<Hold>,
    hold_for_ms: u64,
    capacity: usize,
}

#[derive(Default)]
struct Hold {
    events: VecDeque<Held>,
    /// The latest receive time (Unix ms) of a dispatch that left unreplayed (expired or
    /// pushed out): a replay reaching back to this time or earlier may miss some.
    evicted_through_ms: Option<u64>,
}

/// What a replay found held.
pub struct Taken {
    /// The selected dispatches, in arrival order.
    pub events: Vec<Held>,
    /// Dispatches received up to this time (Unix ms) may have left the hold before the replay
    /// (`None`: none has).
    pub evicted_through_ms: Option<u64>,
}

/// What [`ReplayBuffer::admit`] decided.
// `Process` carries the event by value, as serenity handed it over: moving it once is cheaper
// than boxing every processed event.
#[allow(clippy::large_enum_variant)]
pub enum Admitted {
    /// The pod processes it now.
    Process(Classified, Event),
    /// Held for a possible replay (`true`: the buffer was full and dropped its oldest).
    Held(bool),
    /// Not processed and not worth holding.
    Dropped,
}

impl Default for ReplayBuffer {
    fn default() -> Self {
        ReplayBuffer::new(HOLD_FOR, HOLD_AT_MOST)
    }
}

impl ReplayBuffer {
    /// A buffer holding dispatches for `hold_for`, at most `capacity` of them.
    pub fn new(hold_for: Duration, capacity: usize) -> Self {
        ReplayBuffer {
            held: Mutex::new(Hold::default()),
            hold_for_ms: hold_for.as_millis() as u64,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hold> {
        // Pushes and drains leave the deque whole; a panic elsewhere does not corrupt it.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides, under the lock, whether the pod processes `event` now; holds it otherwise
    /// (if it is worth replaying).
    pub fn admit(
        &self,
        view: &OwnershipView,
        class: Classified,
        received_ms: u64,
        event: Event,
    ) -> Admitted {
        let mut guard = self.lock();
        let held = &mut *guard;
        if view.processes(class.guild) {
            return Admitted::Process(class, event);
        }
        if !replayable(&event) {
            return Admitted::Dropped;
        }
        let cutoff = received_ms.saturating_sub(self.hold_for_ms);
        while let Some(h) = held.events.front().filter(|h| h.received_ms < cutoff) {
            held.evicted_through_ms = held.evicted_through_ms.max(Some(h.received_ms));
            held.events.pop_front();
        }
        let overflow = held.events.len() >= self.capacity;
        if overflow {
            if let Some(h) = held.events.pop_front() {
                held.evicted_through_ms = held.evicted_through_ms.max(Some(h.received_ms));
            }
        }
        held.events.push_back(Held {
            received_ms,
            class,
            event: Box::new(event),
        });
        Admitted::Held(overflow)
    }

    /// Removes and returns, in arrival order, the held dispatches that `wanted` selects, and
    /// how far back the hold is complete.
    pub fn take(&self, wanted: impl Fn(&Held) -> bool) -> Taken {
        let mut held = self.lock();
        let (taken, kept): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut held.events)
            .into_iter()
            .partition(&wanted);
        held.events = kept;
        Taken {
            events: taken.into(),
            evicted_through_ms: held.evicted_through_ms,
        }
    }

    /// How many dispatches are held.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::{owner, GuildId, Ordinal, Strategy, Topology};
    use crate::reshard::topology::Processing;

    fn message(guild: u64, id: u64) -> Event {
        let json = serde_json::json!({
            "t": "MESSAGE_CREATE",
            "s": 1,
            "op": 0,
            "d": {
                "id": id.to_string(), "channel_id": "5", "guild_id": guild.to_string(),
                "author": {"id": "7", "username": "u", "discriminator": "0", "avatar": null},
                "content": "hi", "timestamp": "2024-01-01T00:00:00+00:00",
                "edited_timestamp": null, "tts": false, "mention_everyone": false,
                "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
                "pinned": false, "type": 0
            }
        });
        let frame: serenity::model::event::GatewayEvent =
            serde_json::from_value(json).expect("a MESSAGE_CREATE frame");
        match frame {
            serenity::model::event::GatewayEvent::Dispatch(_, event) => event,
            _ => unreachable!("built as a dispatch"),
        }
    }

    fn class(guild: u64) -> Classified {
        Classified {
            kind: "MESSAGE_CREATE".into(),
            guild: Some(GuildId(guild)),
        }
    }

    #[test]
    fn unprocessed_events_are_held_until_a_cover_takes_them() {
        let two = Topology::new(Strategy::Md5, 2).expect("2");
        let view = OwnershipView::new(
            Ordinal(0),
            Processing {
                current: two,
                history: Vec::new(),
            },
        );
        let (mine, theirs): (Vec<u64>, Vec<u64>) =
            (1..40u64).partition(|g| owner(GuildId(*g), two) == Ordinal(0));
        let buffer = ReplayBuffer::new(Duration::from_secs(10), 100);
        assert!(matches!(
            buffer.admit(&view, class(mine[0]), 1_000, message(mine[0], 1)),
            Admitted::Process(..)
        ));
        for (i, g) in theirs.iter().take(3).enumerate() {
            let held = buffer.admit(
                &view,
                class(*g),
                1_000 + i as u64,
                message(*g, 10 + i as u64),
            );
            assert!(matches!(held, Admitted::Held(false)));
        }
        assert_eq!(buffer.len(), 3);

        // Ordinal 1 goes down; the cover takes what arrived from 1 001 on.
        view.set_covering([(Ordinal(1), 1_001)].into());
        let state = view.snapshot();
        let taken =
            buffer.take(|h| h.received_ms >= 1_001 && state.belongs_to(h.class.guild, Ordinal(1)));
        assert_eq!(taken.events.len(), 2);
        assert!(taken.events.iter().all(|h| h.received_ms >= 1_001));
        assert_eq!(
            taken.evicted_through_ms, None,
            "nothing has left the hold yet"
        );
        assert_eq!(buffer.len(), 1, "the earlier one stays until it expires");
        // Covered now: processed live, not held.
        assert!(matches!(
            buffer.admit(&view, class(theirs[0]), 2_000, message(theirs[0], 99)),
            Admitted::Process(..)
        ));
    }

    #[test]
    fn the_hold_is_bounded_by_time_and_by_count() {
        let one = Topology::new(Strategy::Md5, 2).expect("2");
        let view = OwnershipView::new(
            Ordinal(0),
            Processing {
                current: one,
                history: Vec::new(),
            },
        );
        let theirs: Vec<u64> = (1..200u64)
            .filter(|g| owner(GuildId(*g), one) == Ordinal(1))
            .collect();
        let buffer = ReplayBuffer::new(Duration::from_secs(1), 3);
        for (i, g) in theirs.iter().take(3).enumerate() {
            buffer.admit(&view, class(*g), i as u64, message(*g, i as u64 + 1));
        }
        assert!(matches!(
            buffer.admit(&view, class(theirs[3]), 10, message(theirs[3], 50)),
            Admitted::Held(true)
        ));
        assert_eq!(buffer.len(), 3);
        assert_eq!(
            buffer.take(|_| false).evicted_through_ms,
            Some(0),
            "pushed out"
        );
        buffer.admit(&view, class(theirs[4]), 5_000, message(theirs[4], 60));
        assert_eq!(buffer.len(), 1, "older than the hold: gone");
        // A replay from 10 ms or earlier can no longer find everything; one from 11 ms can.
        assert_eq!(buffer.take(|_| false).evicted_through_ms, Some(10));
    }
}
