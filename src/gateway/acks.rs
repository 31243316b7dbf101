//! Per shard: which received dispatches their owners have acknowledged, and the sequence
//! number below which every one has been (what a takeover RESUMEs from, DESIGN §6).
//!
//! A dispatch routed to `k` owners (during a topology transition an event can belong to the
//! guild's owner under each topology in force) is acknowledged once all `k` answered. One that
//! nobody needs (a kind no feature handles, READY) is acknowledged on receipt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The acknowledgement state of one shard's current session.
#[derive(Debug, Default)]
pub struct ShardAcks {
    /// Bumped at every new session: acknowledgements for an older one are ignored.
    generation: u64,
    /// The highest sequence number received in this session.
    highest: u64,
    /// Received and not yet acknowledged: sequence → owners still to answer.
    outstanding: BTreeMap<u64, u32>,
}

/// A shared handle on one shard's [`ShardAcks`].
pub type SharedAcks = Arc<Mutex<ShardAcks>>;

/// What a delivered copy of a dispatch acknowledges when its owner answers.
#[derive(Clone, Debug)]
pub struct AckTicket {
    acks: SharedAcks,
    generation: u64,
    seq: u64,
}

impl AckTicket {
    /// The owner committed it.
    pub fn ack(&self) {
        lock(&self.acks).ack(self.generation, self.seq);
    }
}

fn lock(acks: &SharedAcks) -> std::sync::MutexGuard<'_, ShardAcks> {
    // Every mutation below leaves the state consistent; a panic elsewhere does not poison it.
    acks.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ShardAcks {
    /// A new session starts (READY, or a RESUME from `from_seq`): nothing is outstanding.
    pub fn restart(&mut self, from_seq: u64) {
        self.generation += 1;
        self.highest = from_seq;
        self.outstanding.clear();
    }

    /// Dispatch `seq` arrived and goes to `copies` owners; tickets for each copy.
    pub fn received(this: &SharedAcks, seq: u64, copies: u32) -> Vec<AckTicket> {
        let mut acks = lock(this);
        acks.highest = acks.highest.max(seq);
        if copies == 0 {
            return Vec::new();
        }
        *acks.outstanding.entry(seq).or_insert(0) += copies;
        let generation = acks.generation;
        (0..copies)
            .map(|_| AckTicket {
                acks: this.clone(),
                generation,
                seq,
            })
            .collect()
    }

    fn ack(&mut self, generation: u64, seq: u64) {
        if generation != self.generation {
            return;
        }
        if let Some(left) = self.outstanding.get_mut(&seq) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.outstanding.remove(&seq);
            }
        }
    }

    /// Every dispatch up to this sequence number is acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.outstanding
            .keys()
            .next()
            .map_or(self.highest, |first| first - 1)
    }

    /// Dispatches still waiting for an owner.
    pub fn unacknowledged(&self) -> u64 {
        self.outstanding.len() as u64
    }

    /// Reads the state of a shared handle.
    pub fn read<T>(this: &SharedAcks, f: impl FnOnce(&ShardAcks) -> T) -> T {
        f(&lock(this))
    }

    /// Changes the state of a shared handle.
    pub fn write<T>(this: &SharedAcks, f: impl FnOnce(&mut ShardAcks) -> T) -> T {
        f(&mut lock(this))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_stops_below_the_oldest_unacknowledged_dispatch() {
        let acks: SharedAcks = SharedAcks::default();
        ShardAcks::write(&acks, |a| a.restart(0));
        let t1 = ShardAcks::received(&acks, 1, 1);
        let t2 = ShardAcks::received(&acks, 2, 2);
        assert!(ShardAcks::received(&acks, 3, 0).is_empty());
        assert_eq!(ShardAcks::read(&acks, ShardAcks::acked_through), 0);
        t2[0].ack();
        t1[0].ack();
        // Dispatch 2 went to two owners; one answered.
        assert_eq!(ShardAcks::read(&acks, ShardAcks::acked_through), 1);
        t2[1].ack();
        assert_eq!(ShardAcks::read(&acks, ShardAcks::acked_through), 3);
        // Acknowledging twice changes nothing.
        t2[1].ack();
        assert_eq!(ShardAcks::read(&acks, ShardAcks::unacknowledged), 0);
    }

    #[test]
    fn tickets_of_an_earlier_session_are_ignored() {
        let acks: SharedAcks = SharedAcks::default();
        let old = ShardAcks::received(&acks, 10, 1);
        ShardAcks::write(&acks, |a| a.restart(0));
        let new = ShardAcks::received(&acks, 10, 1);
        old[0].ack();
        assert_eq!(ShardAcks::read(&acks, ShardAcks::acked_through), 9);
        new[0].ack();
        assert_eq!(ShardAcks::read(&acks, ShardAcks::acked_through), 10);
    }
}
