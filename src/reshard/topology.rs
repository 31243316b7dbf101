//! Which guilds a pod processes: those it owns under its current topology and, while a
//! topology transition is under way, those it owned under every topology it ran since the
//! last convergence (DESIGN §7.2: a second change before convergence is normal).
//!
//! Overlap between pods is harmless because every write is idempotent; a gap (a guild no pod
//! processes) is not allowed, so a pod keeps its previous guilds until every pod runs the new
//! topology.
//!
//! While a peer ordinal is down, a pod also processes that ordinal's guilds ("cover", see the
//! protocol in [`crate::reshard`]), from the moment the peer was last seen live: events
//! received since then and not processed are replayed by the gateway when the cover starts.
//!
//! Every change of the view is stamped, logged as a [`ProcessingWindow`] (so the windows can
//! be checked afterwards: no guild without a processing pod) and announced
//! ([`OwnershipView::subscribe`]), so the gateway can replay what a new cover needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::info;

use crate::ownership::{owner, owner_of_event, GuildId, Ordinal, Topology};
use crate::wire::ProcessingWindow;

/// The topologies a pod processes guilds under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Processing {
    /// The topology the pod runs under now.
    pub current: Topology,
    /// Every other topology it ran under since the last convergence, oldest first (empty once
    /// the transition converged).
    pub history: Vec<Topology>,
}

impl Processing {
    /// Every topology in force: the current one and the history.
    pub fn all(&self) -> impl Iterator<Item = Topology> + '_ {
        std::iter::once(self.current).chain(self.history.iter().copied())
    }

    /// Whether a transition is under way.
    pub fn transitioning(&self) -> bool {
        !self.history.is_empty()
    }

    /// The processing after a change to `next`: the current topology joins the history (which
    /// never holds `next` itself, nor a topology twice).
    pub fn retargeted(&self, next: Topology) -> Processing {
        if next == self.current {
            return self.clone();
        }
        let mut history: Vec<Topology> = Vec::with_capacity(self.history.len() + 1);
        for t in self.history.iter().chain([&self.current]) {
            if *t != next && !history.contains(t) {
                history.push(*t);
            }
        }
        Processing {
            current: next,
            history,
        }
    }
}

/// Everything a pod's view holds, as one consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewState {
    /// The topologies in force.
    pub processing: Processing,
    /// Down peers whose guilds this pod processes, each with the time (Unix ms) from which
    /// their events are processed: when the peer was last seen live, less a margin.
    pub covering: BTreeMap<Ordinal, u64>,
    /// Since when the pod's gateway receives events (Unix ms); `None` while it does not.
    pub receiving_since_ms: Option<u64>,
    /// When this state began (Unix ms).
    pub changed_at_ms: u64,
}

/// A pod's live view of what it processes; read on every event, changed rarely.
#[derive(Debug)]
pub struct OwnershipView {
    ordinal: Ordinal,
    state: RwLock<ViewState>,
    changes: watch::Sender<u64>,
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl OwnershipView {
    /// A view for `ordinal` processing under `processing`.
    pub fn new(ordinal: Ordinal, processing: Processing) -> Self {
        OwnershipView {
            ordinal,
            state: RwLock::new(ViewState {
                processing,
                covering: BTreeMap::new(),
                receiving_since_ms: None,
                changed_at_ms: now_ms(),
            }),
            changes: watch::channel(0).0,
        }
    }

    /// This pod's ordinal.
    pub fn ordinal(&self) -> Ordinal {
        self.ordinal
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        // A poisoned lock only means a writer panicked mid-assignment; every assignment below
        // replaces whole values, so keep serving the state.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the state with `f`; if it changed, stamps, logs and announces it.
    fn change(&self, f: impl FnOnce(&mut ViewState)) -> bool {
        let changed = {
            let mut state = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = state.clone();
            f(&mut state);
            if *state == before {
                None
            } else {
                state.changed_at_ms = now_ms();
                Some(state.clone())
            }
        };
        let Some(state) = changed else {
            return false;
        };
        let window = ProcessingWindow {
            ordinal: self.ordinal,
            at_ms: state.changed_at_ms,
            receiving_since_ms: state.receiving_since_ms,
            current: state.processing.current,
            history: state.processing.history.clone(),
            covering: state.covering.iter().map(|(o, t)| (*o, *t)).collect(),
        };
        info!(
            window = %serde_json::to_string(&window).unwrap_or_default(),
            "processing window"
        );
        self.changes.send_modify(|generation| *generation += 1);
        true
    }

    /// Records that the gateway receives events from now on (`true`: every shard has a
    /// session) or no longer does (`false`: it is closing).
    pub fn set_receiving(&self, receiving: bool) {
        self.change(|s| match (receiving, s.receiving_since_ms) {
            (true, None) => s.receiving_since_ms = Some(now_ms()),
            (false, Some(_)) => s.receiving_since_ms = None,
            _ => {}
        });
    }

    /// A receiver that sees every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The whole state, consistently.
    pub fn snapshot(&self) -> ViewState {
        self.read().clone()
    }

    /// The topologies in force.
    pub fn processing(&self) -> Processing {
        self.read().processing.clone()
    }

    /// The topology the pod runs under now.
    pub fn current(&self) -> Topology {
        self.read().processing.current
    }

    /// Ends a transition: only the current topology counts from now on.
    pub fn converge(&self) {
        self.change(|s| s.processing.history.clear());
    }

    /// Moves to new topologies (a live change of the pod count).
    pub fn set_processing(&self, processing: Processing) {
        self.change(|s| s.processing = processing);
    }

    /// The peer ordinals whose guilds this pod processes while they are down.
    pub fn covering(&self) -> BTreeSet<Ordinal> {
        self.read().covering.keys().copied().collect()
    }

    /// Replaces the covered ordinals (each with the time its events are processed from);
    /// an ordinal already covered keeps its original time. Returns whether the set changed.
    pub fn set_covering(&self, covering: BTreeMap<Ordinal, u64>) -> bool {
        self.change(|s| {
            s.covering = covering
                .into_iter()
                .map(|(o, since)| (o, s.covering.get(&o).copied().unwrap_or(since)))
                .collect();
        })
    }

    /// Every ordinal that owns a guild under a topology in force.
    pub fn ordinals_in_play(&self) -> u32 {
        self.read()
            .processing
            .all()
            .map(|t| t.pods.get())
            .max()
            .unwrap_or(1)
    }

    /// Whether this pod owns `guild` under its current topology.
    pub fn owns(&self, guild: GuildId) -> bool {
        owner(guild, self.current()) == self.ordinal
    }

    /// Whether this pod processes an event of `guild` (`None`: a guild-less event, which
    /// ordinal 0 handles).
    pub fn processes(&self, guild: Option<GuildId>) -> bool {
        self.read().processes(self.ordinal, guild)
    }

    /// The covered peer through which this pod processes an event of `guild`: `None` when the
    /// guild is this pod's own under a topology in force (or not processed here at all).
    pub fn covered_owner(&self, guild: Option<GuildId>) -> Option<Ordinal> {
        let s = self.read();
        if s.covering.is_empty() || s.belongs_to(guild, self.ordinal) {
            return None;
        }
        let covered = s
            .processing
            .all()
            .map(|t| owner_of_event(guild, t))
            .find(|o| s.covering.contains_key(o));
        covered
    }

    /// Whether no event at all is this pod's to process: its ordinal is outside every
    /// topology in force (a removed pod after convergence) and it covers no peer. Such a pod
    /// needs nobody to cover it when it stops.
    pub fn processes_nothing(&self) -> bool {
        let s = self.read();
        s.processing.all().all(|t| self.ordinal.0 >= t.pods.get()) && s.covering.is_empty()
    }
}

impl ViewState {
    /// Whether `ordinal`, in this state, processes an event of `guild`.
    pub fn processes(&self, ordinal: Ordinal, guild: Option<GuildId>) -> bool {
        self.belongs(guild, |o| o == ordinal || self.covering.contains_key(&o))
    }

    /// Whether an event of `guild` belongs to `ordinal` under a topology in force.
    pub fn belongs_to(&self, guild: Option<GuildId>, ordinal: Ordinal) -> bool {
        self.belongs(guild, |o| o == ordinal)
    }

    fn belongs(&self, guild: Option<GuildId>, to: impl Fn(Ordinal) -> bool) -> bool {
        self.processing.all().any(|t| to(owner_of_event(guild, t)))
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
                        history: vec![t(3)],
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
                history: vec![t(3)],
            },
        );
        let guilds: Vec<GuildId> = (1..3000).map(|i| GuildId(i * 7919)).collect();
        let of_two = |g: &GuildId| owner(*g, t(3)) == Ordinal(2) || owner(*g, t(5)) == Ordinal(2);
        assert!(guilds
            .iter()
            .filter(|g| of_two(g))
            .any(|g| !view.processes(Some(*g))));
        assert!(view.set_covering([(Ordinal(2), 5)].into()));
        assert!(guilds
            .iter()
            .filter(|g| of_two(g))
            .all(|g| view.processes(Some(*g))));
        for g in &guilds {
            let own = owner(*g, t(3)) == Ordinal(0) || owner(*g, t(5)) == Ordinal(0);
            let expected = (!own && of_two(g)).then_some(Ordinal(2));
            assert_eq!(view.covered_owner(Some(*g)), expected, "guild {g}");
        }
        assert!(!view.set_covering([(Ordinal(2), 9)].into()));
        assert_eq!(
            view.snapshot().covering[&Ordinal(2)],
            5,
            "a cover keeps its start"
        );
        assert_eq!(view.ordinals_in_play(), 5);
    }

    #[test]
    fn only_a_removed_pod_that_covers_nobody_processes_nothing() {
        let removed = |history| {
            OwnershipView::new(
                Ordinal(3),
                Processing {
                    current: t(3),
                    history,
                },
            )
        };
        let draining = removed(vec![t(4)]);
        assert!(!draining.processes_nothing(), "still owns under 4 pods");
        draining.converge();
        assert!(draining.processes_nothing());
        assert!(draining.set_covering([(Ordinal(1), 5)].into()));
        assert!(!draining.processes_nothing(), "covers gateway-1");

        let member = OwnershipView::new(
            Ordinal(2),
            Processing {
                current: t(3),
                history: vec![],
            },
        );
        assert!(!member.processes_nothing());
        assert!(
            removed(vec![]).processes_nothing(),
            "a removed pod after convergence"
        );
    }

    #[test]
    fn guildless_events_go_to_ordinal_zero_only() {
        let zero = OwnershipView::new(
            Ordinal(0),
            Processing {
                current: t(3),
                history: vec![],
            },
        );
        let two = OwnershipView::new(
            Ordinal(2),
            Processing {
                current: t(3),
                history: vec![],
            },
        );
        assert!(zero.processes(None));
        assert!(!two.processes(None));
    }

    #[test]
    fn a_second_change_before_convergence_keeps_every_earlier_topology() {
        let p = Processing {
            current: t(3),
            history: vec![],
        };
        let p = p.retargeted(t(4)).retargeted(t(5));
        assert_eq!(p.current, t(5));
        assert_eq!(p.history, vec![t(3), t(4)]);
        // Back to an earlier count: it is current again, not history too.
        let back = p.retargeted(t(3));
        assert_eq!(back.history, vec![t(4), t(5)]);
        assert_eq!(p.retargeted(t(5)), p, "no change, no new history");

        // 3→4→5 with md5: every guild is processed by its owner under 3, 4 and 5.
        let views: Vec<OwnershipView> = (0..5)
            .map(|o| OwnershipView::new(Ordinal(o), p.clone()))
            .collect();
        for g in (1..5000).map(|i| GuildId(i * 104_729)) {
            for n in [3, 4, 5] {
                let o = owner(g, t(n)).0 as usize;
                assert!(views[o].processes(Some(g)), "{g} under {n} pods");
            }
        }
    }

    #[test]
    fn a_removed_pod_processes_nothing() {
        let standby = OwnershipView::new(
            Ordinal(3),
            Processing {
                current: t(3),
                history: vec![],
            },
        );
        assert!((1..1000).all(|i| !standby.processes(Some(GuildId(i)))));
        assert!(!standby.processes(None));
    }
}
