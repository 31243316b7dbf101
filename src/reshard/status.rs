//! The cluster verdict `guildshard status` prints: from every pod's status report (or why it
//! could not be read), whether the cluster runs the expected topology with every guild on its
//! owner.

use std::fmt;

use crate::ownership::{Ordinal, Topology};
use crate::wire::StatusReport;

/// The one-line verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every member runs the expected topology, no transition, no handoff pending, and every
    /// non-member pod is empty.
    Converged,
    /// Progressing: what is still under way.
    Transitioning(String),
    /// Cannot progress without the operator: why.
    Blocked(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Converged => write!(f, "converged"),
            Verdict::Transitioning(why) => write!(f, "transitioning: {why}"),
            Verdict::Blocked(why) => write!(f, "blocked: {why}"),
        }
    }
}

/// Judges the cluster against `expected` from the reports of every probed ordinal.
pub fn verdict(expected: Topology, reports: &[(Ordinal, Result<StatusReport, String>)]) -> Verdict {
    let mut blocked = Vec::new();
    let mut moving = Vec::new();
    for (o, r) in reports {
        let member = expected.is_member(*o);
        match r {
            Err(why) if member => blocked.push(format!("gateway-{} unreachable ({why})", o.0)),
            Err(_) => {}
            Ok(s) => {
                if s.topology != expected {
                    moving.push(format!("gateway-{} runs {}", o.0, s.topology));
                } else if !s.previous_topologies.is_empty() {
                    moving.push(format!(
                        "gateway-{} still processes its previous guilds",
                        o.0
                    ));
                }
                if member && !s.ready {
                    moving.push(format!("gateway-{} not ready", o.0));
                }
                if s.handoff.pending_pull > 0 {
                    moving.push(format!(
                        "gateway-{} has {} guilds to pull",
                        o.0, s.handoff.pending_pull
                    ));
                }
                if !member && s.guilds_held > 0 {
                    moving.push(format!(
                        "gateway-{} (draining) still holds {} guilds",
                        o.0, s.guilds_held
                    ));
                }
                if member && s.handoff_pending > 0 {
                    moving.push(format!(
                        "gateway-{} holds {} guilds it does not own",
                        o.0, s.handoff_pending
                    ));
                }
                if !s.handoff.replicas_pending.is_empty() {
                    match &s.handoff.last_error {
                        Some(err) => blocked.push(format!("gateway-{}: {err}", o.0)),
                        None => moving.push(format!(
                            "gateway-{} restores the replicas of gateway-{:?}",
                            o.0, s.handoff.replicas_pending
                        )),
                    }
                }
            }
        }
    }
    if !blocked.is_empty() {
        Verdict::Blocked(blocked.join("; "))
    } else if !moving.is_empty() {
        Verdict::Transitioning(moving.join("; "))
    } else {
        Verdict::Converged
    }
}

/// The table: one line per reachable or member ordinal.
pub fn table(reports: &[(Ordinal, Result<StatusReport, String>)]) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<13} {:<10} {:<14} {:<16} {:>6} {:>6} {:>8} {:>7}  {}\n",
        "pod",
        "ready",
        "state",
        "topology",
        "previous",
        "pod count from",
        "owned",
        "held",
        "pending",
        "pulled",
        "last error"
    );
    for (o, r) in reports {
        match r {
            Ok(s) => out.push_str(&format!(
                "{:<10} {:<8} {:<13} {:<10} {:<14} {:<16} {:>6} {:>6} {:>8} {:>7}  {}\n",
                format!("gateway-{}", o.0),
                s.ready,
                s.state,
                s.topology.to_string(),
                previous(s),
                source(s),
                s.guilds_owned,
                s.guilds_held,
                s.handoff_pending + s.handoff.pending_pull,
                s.handoff.pulled + s.handoff.restored,
                s.handoff
                    .last_error
                    .as_deref()
                    .or(s.last_error.as_deref())
                    .unwrap_or("-"),
            )),
            Err(why) => out.push_str(&format!(
                "{:<10} {:<8} {why}\n",
                format!("gateway-{}", o.0),
                "down"
            )),
        }
    }
    out
}

/// The topologies a pod still processes besides its current one, oldest first.
fn previous(s: &StatusReport) -> String {
    if s.previous_topologies.is_empty() {
        return "-".into();
    }
    let all: Vec<String> = s
        .previous_topologies
        .iter()
        .map(ToString::to_string)
        .collect();
    all.join(",")
}

/// Where the pod learns the pod count, and whether it can reach it: a pod that cannot keeps
/// the last count it knew.
fn source(s: &StatusReport) -> String {
    let src = &s.topology_source;
    match (src.kind.as_str(), src.connected) {
        ("", _) => "-".into(),
        ("statefulset", false) => "statefulset DOWN".into(),
        (kind, _) => kind.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Strategy;
    use crate::wire::{HandoffProgress, PodState};

    fn report(ordinal: u32, pods: u32, handoff: HandoffProgress) -> StatusReport {
        StatusReport {
            ordinal: Ordinal(ordinal),
            topology: Topology::new(Strategy::Md5, pods).expect("positive"),
            previous_topologies: Vec::new(),
            topology_source: Default::default(),
            state: PodState::Active,
            ready: true,
            guilds_owned: 10,
            guilds_held: 10,
            handoff_pending: 0,
            events_seen: 0,
            events_owned: 0,
            events_handled: 0,
            db_size_bytes: 0,
            identifies: 1,
            last_error: None,
            covering: Vec::new(),
            handoff,
            instance: 1,
            receiving_since_ms: Some(1),
            departing: Vec::new(),
            departed_empty: Vec::new(),
            shards: Vec::new(),
            sessions: Vec::new(),
            gaps: Vec::new(),
            unacknowledged: 0,
        }
    }

    fn two() -> Topology {
        Topology::new(Strategy::Md5, 2).expect("2")
    }

    #[test]
    fn a_settled_cluster_is_converged_and_an_unreachable_member_blocks() {
        let ok = |o| (Ordinal(o), Ok(report(o, 2, HandoffProgress::default())));
        assert_eq!(verdict(two(), &[ok(0), ok(1)]), Verdict::Converged);
        let down = (Ordinal(1), Err("connection refused".to_owned()));
        assert!(matches!(
            verdict(two(), &[ok(0), down]),
            Verdict::Blocked(_)
        ));
    }

    #[test]
    fn replicas_still_to_restore_are_not_converged_yet() {
        let pending = HandoffProgress {
            replicas_pending: vec![2, 3],
            ..HandoffProgress::default()
        };
        let reports = [
            (Ordinal(0), Ok(report(0, 2, pending.clone()))),
            (Ordinal(1), Ok(report(1, 2, HandoffProgress::default()))),
        ];
        let v = verdict(two(), &reports);
        assert!(
            matches!(&v, Verdict::Transitioning(why) if why.contains("restores the replicas")),
            "{v}"
        );
        let failing = HandoffProgress {
            last_error: Some("litestream restore exited 1".into()),
            ..pending
        };
        let reports = [(Ordinal(0), Ok(report(0, 2, failing))), reports[1].clone()];
        assert!(matches!(verdict(two(), &reports), Verdict::Blocked(_)));
    }
}
