//! Which guilds a pod processes: those it owns under its current topology and, while a
//! topology transition is under way, those it owned under the previous one (DESIGN §7.1).
//!
//! Overlap between pods is harmless because every write is idempotent; a gap (a guild no pod
//! processes) is not allowed, so a pod keeps its previous guilds until every pod runs the new
//! topology.
//!
//! While a peer ordinal is down, a pod also processes that ordinal's guilds ("cover", see the
//! protocol in [`crate::reshard`]).

use std::collections::BTreeSet;
use std::sync::RwLock;

use crate::ownership::{owner, owner_of_event, GuildId, Ordinal, Topology};

/// The topologies a pod processes guilds under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processing {
    /// The topology the pod was started with.
    pub current: Topology,
    /// The topology it ran under before, until the transition has converged.
    pub previous: Option<Topology>,
}

/// A pod's live view of what it processes; read on every event, changed rarely.
#[derive(Debug)]
pub struct OwnershipView {
    ordinal: Ordinal,
    processing: RwLock<Processing>,
    covering: RwLock<BTreeSet<Ordinal>>,
}

impl OwnershipView {
    /// A view for `ordinal` processing under `processing`.
    pub fn new(ordinal: Ordinal, processing: Processing) -> Self {
        OwnershipView {
            ordinal,
            processing: RwLock::new(processing),
            covering: RwLock::new(BTreeSet::new()),
        }
    }

    /// This pod's ordinal.
    pub fn ordinal(&self) -> Ordinal {
        self.ordinal
    }

    /// The topologies in force.
    pub fn processing(&self) -> Processing {
        // A poisoned lock only means a writer panicked mid-assignment of a Copy value; the
        // value itself is always whole, so keep serving it.
        *self
            .processing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends a transition: only the current topology counts from now on.
    pub fn converge(&self) {
        let mut p = self
            .processing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.previous = None;
    }

    /// The peer ordinals whose guilds this pod processes while they are down.
    pub fn covering(&self) -> BTreeSet<Ordinal> {
        self.covering
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the set of covered ordinals; returns whether it changed.
    pub fn set_covering(&self, covering: BTreeSet<Ordinal>) -> bool {
        let mut c = self
            .covering
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *c != covering;
        *c = covering;
        changed
    }

    /// Every ordinal that owns a guild under the current or previous topology.
    pub fn ordinals_in_play(&self) -> u32 {
        let p = self.processing();
        p.current
            .pods
            .get()
            .max(p.previous.map_or(0, |t| t.pods.get()))
    }

    /// Whether this pod owns `guild` under its current topology.
    pub fn owns(&self, guild: GuildId) -> bool {
        owner(guild, self.processing().current) == self.ordinal
    }

    /// Whether this pod processes an event of `guild` (`None`: a guild-less event, which
    /// ordinal 0 handles).
    pub fn processes(&self, guild: Option<GuildId>) -> bool {
        let p = self.processing();
        let covering = self
            .covering
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let under = |t: Topology| {
            let o = owner_of_event(guild, t);
            o == self.ordinal || covering.contains(&o)
        };
        under(p.current) || p.previous.is_some_and(under)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Strategy;

    fn t(n: u32) -> Topology {
        Topology::new(Strategy::Md5, n).expect("n > 0")
    }

    #[test]
    fn a_pod_processes_its_guilds_under_both_topologies_until_converged() {
        let guilds: Vec<GuildId> = (1..2000).map(|i| GuildId(i * 7919)).collect();
        let views: Vec<OwnershipView> = (0..5)
            .map(|o| {
                OwnershipView::new(
                    Ordinal(o),
                    Processing {
                        current: t(5),
                        previous: Some(t(3)),
                    },
                )
            })
            .collect();
        for &g in &guilds {
            let old = owner(g, t(3)).0 as usize;
            let new = owner(g, t(5)).0 as usize;
            assert!(views[old].processes(Some(g)) && views[new].processes(Some(g)));
        }
        for v in &views {
            v.converge();
        }
        for &g in &guilds {
            let processing = views.iter().filter(|v| v.processes(Some(g))).count();
            assert_eq!(processing, 1);
        }
    }

    #[test]
    fn a_pod_covers_a_down_peer_under_both_topologies() {
        let view = OwnershipView::new(
            Ordinal(0),
            Processing {
                current: t(5),
                previous: Some(t(3)),
            },
        );
        let guilds: Vec<GuildId> = (1..3000).map(|i| GuildId(i * 7919)).collect();
        let of_two = |g: &GuildId| owner(*g, t(3)) == Ordinal(2) || owner(*g, t(5)) == Ordinal(2);
        assert!(guilds
            .iter()
            .filter(|g| of_two(g))
            .any(|g| !view.processes(Some(*g))));
        assert!(view.set_covering([Ordinal(2)].into()));
        assert!(guilds
            .iter()
            .filter(|g| of_two(g))
            .all(|g| view.processes(Some(*g))));
        assert!(!view.set_covering([Ordinal(2)].into()));
        assert_eq!(view.ordinals_in_play(), 5);
    }

    #[test]
    fn guildless_events_go_to_ordinal_zero_only() {
        let zero = OwnershipView::new(
            Ordinal(0),
            Processing {
                current: t(3),
                previous: None,
            },
        );
        let two = OwnershipView::new(
            Ordinal(2),
            Processing {
                current: t(3),
                previous: None,
            },
        );
        assert!(zero.processes(None));
        assert!(!two.processes(None));
    }

    #[test]
    fn a_standby_pod_processes_nothing() {
        let standby = OwnershipView::new(
            Ordinal(3),
            Processing {
                current: t(3),
                previous: None,
            },
        );
        assert!((1..1000).all(|i| !standby.processes(Some(GuildId(i)))));
        assert!(!standby.processes(None));
    }
}
