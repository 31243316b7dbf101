//! Which pods take part in the gateway tier right now, as this pod sees it from its last status
//! poll of every peer: the shard map, the delivery router and the identify queue all read it.

use crate::ownership::Ordinal;
use crate::wire::StatusReport;

/// This pod's view of its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// Pods that connect shards and take dispatches: members of the current topology that
    /// answered the last poll and are not stopping (this pod included while it takes part).
    pub live: Vec<Ordinal>,
    /// Every peer that answered the last poll, stopping or removed ones included (they may
    /// still hold shard sessions to hand over).
    pub reachable: Vec<Ordinal>,
    /// Whether a poll has been made at all (nothing is decided before).
    pub polled: bool,
}

/// The view after a poll: `me` takes part if `taking` (not stopping) and it is a member of a
/// topology of `pods` pods.
pub fn from_poll<'a, E: 'a>(
    me: Ordinal,
    taking: bool,
    pods: u32,
    reports: impl IntoIterator<Item = &'a (Ordinal, Result<StatusReport, E>)>,
) -> Members {
    let mut live = Vec::new();
    let mut reachable = Vec::new();
    if taking && me.0 < pods {
        live.push(me);
    }
    for (o, report) in reports {
        let Ok(report) = report else { continue };
        if *o == me {
            continue;
        }
        reachable.push(*o);
        if o.0 < pods && !report.state.is_stopping() {
            live.push(*o);
        }
    }
    live.sort_unstable();
    reachable.sort_unstable();
    Members {
        live,
        reachable,
        polled: true,
    }
}
