//! Which live pod connects which Discord shard (DESIGN §6): rendezvous (highest random weight)
//! hashing of `(shard, ordinal)` over the pods that are up.
//!
//! Each shard goes to the live ordinal with the highest weight. When a pod leaves, only its
//! shards move (each to its next-highest pod); when one joins, only the shards it now wins
//! move, about S/(N+1). Every pod computes the same answer from the same live set, with no
//! coordination; pods whose views differ for a moment are fenced by Discord itself (one
//! connection per session) and by the release handshake of [`crate::gateway::connector`].
//!
//! Unlike guild ownership, this map is free to use any hash: nothing outside the cluster
//! depends on it. md5 is already a dependency and is cheap at S ≤ a few thousand.

use md5::{Digest, Md5};

use crate::ownership::Ordinal;

/// The weight of `ordinal` for `shard`: the first 8 bytes of md5 over both, big-endian.
fn weight(shard: u32, ordinal: Ordinal) -> u64 {
    let mut hasher = Md5::new();
    hasher.update(shard.to_be_bytes());
    hasher.update(ordinal.0.to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The live ordinal that connects `shard`, or `None` when nothing is live.
pub fn connector_of(shard: u32, live: &[Ordinal]) -> Option<Ordinal> {
    // Ties (practically impossible) go to the lower ordinal, so the answer never depends on
    // the order of `live`.
    live.iter()
        .copied()
        .max_by_key(|o| (weight(shard, *o), std::cmp::Reverse(o.0)))
}

/// The shards of `0..shards` that `me` connects when `live` are up.
pub fn shards_of(me: Ordinal, shards: u32, live: &[Ordinal]) -> Vec<u32> {
    (0..shards)
        .filter(|s| connector_of(*s, live) == Some(me))
        .collect()
}

/// The ordinal whose guilds' events go to `cover` while `down` is unreachable: the live ordinal
/// with the highest weight for the down ordinal (the same rendezvous, keyed by the ordinal), so
/// every connector picks the same covering pod.
pub fn cover_of(down: Ordinal, live: &[Ordinal]) -> Option<Ordinal> {
    live.iter()
        .copied()
        .filter(|o| *o != down)
        .max_by_key(|o| (weight(u32::MAX - down.0, *o), std::cmp::Reverse(o.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(n: u32) -> Vec<Ordinal> {
        (0..n).map(Ordinal).collect()
    }

    #[test]
    fn every_shard_has_exactly_one_connector_and_the_load_is_spread() {
        for n in 1..8 {
            let counts: Vec<usize> = (0..n)
                .map(|o| shards_of(Ordinal(o), 1000, &live(n)).len())
                .collect();
            assert_eq!(counts.iter().sum::<usize>(), 1000);
            let fair = 1000 / n as usize;
            for c in counts {
                assert!(c > fair / 2 && c < fair * 2, "{n} pods: {c} shards");
            }
        }
    }

    #[test]
    fn a_pod_leaving_moves_only_its_own_shards() {
        let before = live(5);
        let after: Vec<Ordinal> = before.iter().copied().filter(|o| o.0 != 2).collect();
        for s in 0..2000 {
            let (b, a) = (connector_of(s, &before), connector_of(s, &after));
            if b != Some(Ordinal(2)) {
                assert_eq!(a, b, "shard {s} moved although its pod stayed");
            }
        }
    }

    #[test]
    fn a_pod_joining_takes_only_shards_it_wins_and_about_its_share() {
        let before = live(3);
        let after = live(4);
        let mut moved = 0;
        for s in 0..4000 {
            let (b, a) = (connector_of(s, &before), connector_of(s, &after));
            if a != b {
                assert_eq!(a, Some(Ordinal(3)), "shard {s} moved between old pods");
                moved += 1;
            }
        }
        assert!((700..1300).contains(&moved), "{moved} of 4000 moved");
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_of_the_live_set() {
        let mut shuffled = vec![Ordinal(4), Ordinal(0), Ordinal(2), Ordinal(1), Ordinal(3)];
        for s in 0..500 {
            let sorted = connector_of(s, &live(5));
            assert_eq!(connector_of(s, &shuffled), sorted);
            shuffled.rotate_left(1);
        }
    }

    #[test]
    fn the_cover_of_a_down_pod_is_another_live_pod() {
        let up = live(4);
        for down in 0..4 {
            let cover = cover_of(Ordinal(down), &up).expect("a live pod");
            assert_ne!(cover, Ordinal(down));
        }
        assert_eq!(cover_of(Ordinal(0), &[Ordinal(0)]), None);
        assert_eq!(connector_of(7, &[]), None);
    }
}
