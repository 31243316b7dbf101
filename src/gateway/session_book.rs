//! Every shard session this pod knows of: its own, and those its peers publish in their status
//! reports. A pod that takes a shard over (its connector died, or handed it over) resumes the
//! newest record, so the sessions survive any one pod (DESIGN §6).
//!
//! The book is also saved in the pod's database when the pod stops, so a cluster restarted as a
//! whole (replicas 0, then back) resumes instead of identifying while Discord still buffers.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::wire::ShardSession;

/// The meta key the book is saved under.
pub const META_SESSIONS: &str = "gateway.sessions";

/// The newest known record of each shard's session.
#[derive(Debug, Default)]
pub struct SessionBook {
    sessions: Mutex<BTreeMap<u32, ShardSession>>,
}

impl SessionBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, ShardSession>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `record` if it is newer than what the book has for its shard.
    pub fn learn(&self, record: ShardSession) {
        let mut sessions = self.lock();
        match sessions.get(&record.shard) {
            Some(known) if !record.supersedes(known) => {}
            _ => {
                sessions.insert(record.shard, record);
            }
        }
    }

    /// The newest record of `shard`.
    pub fn get(&self, shard: u32) -> Option<ShardSession> {
        self.lock().get(&shard).cloned()
    }

    /// Every record, by shard.
    pub fn all(&self) -> Vec<ShardSession> {
        self.lock().values().cloned().collect()
    }

    /// The book as saved in the database.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.all()).unwrap_or_else(|_| "[]".into())
    }

    /// Learns the records of a saved book; a damaged one is ignored (the shards identify).
    pub fn learn_saved(&self, saved: &str) -> usize {
        let records: Vec<ShardSession> = serde_json::from_str(saved).unwrap_or_default();
        let n = records.len();
        records.into_iter().for_each(|r| self.learn(r));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(shard: u32, id: &str, seq: u64, epoch: u64) -> ShardSession {
        ShardSession {
            shard,
            session_id: id.into(),
            resume_url: "ws://127.0.0.1:1".into(),
            acked_seq: seq,
            epoch,
        }
    }

    #[test]
    fn the_newest_record_wins_whatever_the_order_it_arrives_in() {
        let book = SessionBook::default();
        book.learn(record(0, "a", 10, 1));
        book.learn(record(0, "a", 5, 1));
        assert_eq!(book.get(0).map(|r| r.acked_seq), Some(10));
        // A new session after an invalidation has a higher epoch and a lower sequence.
        book.learn(record(0, "b", 2, 2));
        book.learn(record(0, "a", 50, 1));
        assert_eq!(book.get(0).map(|r| r.session_id), Some("b".into()));
    }

    #[test]
    fn a_saved_book_round_trips_and_a_damaged_one_is_ignored() {
        let book = SessionBook::default();
        book.learn(record(3, "x", 7, 4));
        let again = SessionBook::default();
        assert_eq!(again.learn_saved(&book.to_json()), 1);
        assert_eq!(again.get(3), book.get(3));
        assert_eq!(again.learn_saved("{not json"), 0);
    }
}
