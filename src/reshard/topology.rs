//! Which guilds a pod processes: those it owns under its current topology and, while a
//! topology transition is under way, those it owned under the previous one (DESIGN §7.1).
//!
//! Overlap between pods is harmless because every write is idempotent; a gap (a guild no pod
//! processes) is not allowed, so a pod keeps its previous guilds until every pod runs the new
//! topology.

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
}

impl OwnershipView {
    /// A view for `ordinal` processing under `processing`.
    pub fn new(ordinal: Ordinal, processing: Processing) -> Self {
        OwnershipView {
            ordinal,
            processing: RwLock::new(processing),
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

    /// Whether this pod owns `guild` under its current topology.
    pub fn owns(&self, guild: GuildId) -> bool {
        owner(guild, self.processing().current) == self.ordinal
    }

    /// Whether this pod processes an event of `guild` (`None`: a guild-less event, which
    /// ordinal 0 handles).
    pub fn processes(&self, guild: Option<GuildId>) -> bool {
        let p = self.processing();
        let under = |t: Topology| owner_of_event(guild, t) == self.ordinal;
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
