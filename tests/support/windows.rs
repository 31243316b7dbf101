//! Checking the pods' processing windows: every pod logs a [`ProcessingWindow`] each time what
//! it processes changes (and a [`ReplayedWindow`] for each one-off replay for a peer that
//! restarted unseen), and the cluster records when each pod process started and ended. From
//! all of it, [`gaps`] finds every stretch of time in which some guild had no processing pod.

use std::collections::BTreeMap;
use std::path::Path;

use guildshard::gateway::replay::HOLD_FOR;
use guildshard::local_cluster::PodLife;
use guildshard::ownership::{owner, GuildId, Ordinal};
use guildshard::wire::{ProcessingWindow, ReplayedWindow};

/// What the pods logged about what they processed.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Window records by ordinal, in time order.
    pub windows: BTreeMap<u32, Vec<ProcessingWindow>>,
    /// One-off replays.
    pub replays: Vec<ReplayedWindow>,
}

/// Every window and replay record in the log files of `log_dir`.
pub fn read(log_dir: &Path) -> Recorded {
    let mut recorded = Recorded::default();
    for entry in std::fs::read_dir(log_dir).expect("log dir").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let parse_error = |e: serde_json::Error| -> ! {
                panic!("a record that does not parse ({e}): {line}")
            };
            if let Some(window) = json["window"].as_str() {
                let window: ProcessingWindow =
                    serde_json::from_str(window).unwrap_or_else(|e| parse_error(e));
                recorded
                    .windows
                    .entry(window.ordinal.0)
                    .or_default()
                    .push(window);
            } else if let Some(replay) = json["replayed"].as_str() {
                let replay: ReplayedWindow =
                    serde_json::from_str(replay).unwrap_or_else(|e| parse_error(e));
                recorded.replays.push(replay);
            }
        }
    }
    for records in recorded.windows.values_mut() {
        records.sort_by_key(|w| w.at_ms);
    }
    recorded
}

/// A stretch of time in which a guild had no processing pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The guild.
    pub guild: u64,
    /// From (Unix ms).
    pub from_ms: u64,
    /// To (Unix ms).
    pub to_ms: u64,
}

/// Whether `guild` belongs to `ordinal` under `current` or a topology of `history`.
fn belongs_under(
    current: guildshard::ownership::Topology,
    history: &[guildshard::ownership::Topology],
    guild: GuildId,
    ordinal: Ordinal,
) -> bool {
    owner(guild, current) == ordinal || history.iter().any(|t| owner(guild, *t) == ordinal)
}

/// Whether `guild` belongs to `ordinal` under a topology the record says is in force.
fn belongs(w: &ProcessingWindow, guild: GuildId, ordinal: Ordinal) -> bool {
    belongs_under(w.current, &w.history, guild, ordinal)
}

/// The intervals in which the pod process `life` processed `guild`, from its records.
fn intervals(
    life: &PodLife,
    records: &[ProcessingWindow],
    guild: GuildId,
    until_ms: u64,
) -> Vec<(u64, u64)> {
    let end = life.ended_ms.unwrap_or(until_ms);
    let mine: Vec<&ProcessingWindow> = records
        .iter()
        .filter(|w| w.at_ms >= life.started_ms && w.at_ms <= end)
        .collect();
    let mut out = Vec::new();
    for (i, w) in mine.iter().enumerate() {
        let Some(receiving) = w.receiving_since_ms else {
            continue;
        };
        let next = mine.get(i + 1).map_or(end, |n| n.at_ms.min(end));
        if belongs(w, guild, w.ordinal) {
            out.push((w.at_ms.max(receiving), next));
        }
        for (covered, since) in &w.covering {
            if belongs(w, guild, *covered) {
                // A cover starts in the past: held events from `since` are replayed, but only
                // those still held when it started.
                out.push((receiving.max(*since).max(held_from(w.at_ms)), next));
            }
        }
    }
    out
}

/// The oldest receive time a replay taken at `at_ms` can still find held.
fn held_from(at_ms: u64) -> u64 {
    at_ms.saturating_sub(HOLD_FOR.as_millis() as u64)
}

/// Every stretch of `[from_ms, to_ms]` in which one of `guilds` had no processing pod, given
/// the pod processes' lives and their logged windows.
pub fn gaps(
    lives: &[PodLife],
    recorded: &Recorded,
    guilds: &[GuildId],
    from_ms: u64,
    to_ms: u64,
) -> Vec<Gap> {
    let mut found = Vec::new();
    for &guild in guilds {
        let mut covered: Vec<(u64, u64)> = lives
            .iter()
            .flat_map(|life| {
                let records = recorded
                    .windows
                    .get(&life.ordinal)
                    .map_or(&[][..], Vec::as_slice);
                intervals(life, records, guild, to_ms)
            })
            .chain(recorded.replays.iter().filter_map(|r| {
                // What the replaying pod held: received after it started receiving, up to
                // when it took them.
                let from = r.from_ms.max(r.receiving_since_ms?).max(held_from(r.at_ms));
                belongs_under(r.current, &r.history, guild, r.for_ordinal)
                    .then_some((from, r.to_ms.min(r.at_ms)))
            }))
            .filter(|(a, b)| a < b)
            .collect();
        covered.sort_unstable();
        let mut reached = from_ms;
        for (a, b) in covered {
            if a > reached && reached < to_ms {
                found.push(Gap {
                    guild: guild.0,
                    from_ms: reached,
                    to_ms: a.min(to_ms),
                });
            }
            reached = reached.max(b);
        }
        if reached < to_ms {
            found.push(Gap {
                guild: guild.0,
                from_ms: reached,
                to_ms,
            });
        }
    }
    found
}

#[test]
fn the_checker_finds_a_gap_and_accepts_an_overlap() {
    use guildshard::ownership::{Strategy, Topology};
    let one = Topology::new(Strategy::Md5, 1).expect("1");
    let record =
        |ordinal, at_ms, receiving: Option<u64>, covering: Vec<(Ordinal, u64)>| ProcessingWindow {
            ordinal: Ordinal(ordinal),
            at_ms,
            receiving_since_ms: receiving,
            current: one,
            history: Vec::new(),
            covering,
        };
    let guild = [GuildId(42)];
    // gateway-0 restarts: closes at 200, its next process receives from 300.
    let lives = [
        PodLife {
            ordinal: 0,
            started_ms: 0,
            ended_ms: Some(250),
        },
        PodLife {
            ordinal: 0,
            started_ms: 260,
            ended_ms: None,
        },
    ];
    let mut recorded = Recorded::default();
    let windows = &mut recorded.windows;
    windows.insert(
        0,
        vec![
            record(0, 10, Some(10), vec![]),
            record(0, 200, None, vec![]),
            record(0, 300, Some(300), vec![]),
        ],
    );
    assert_eq!(
        gaps(&lives, &recorded, &guild, 50, 1_000),
        vec![Gap {
            guild: 42,
            from_ms: 200,
            to_ms: 300
        }]
    );
    // A peer (which owns nothing of it) covers gateway-0 from 150: no gap.
    let mut lives = lives.to_vec();
    lives.push(PodLife {
        ordinal: 1,
        started_ms: 0,
        ended_ms: None,
    });
    let two_pods_one_owner = |at, covering| ProcessingWindow {
        ordinal: Ordinal(1),
        at_ms: at,
        receiving_since_ms: Some(5),
        current: one,
        history: Vec::new(),
        covering,
    };
    recorded.windows.insert(
        1,
        vec![
            two_pods_one_owner(5, vec![]),
            two_pods_one_owner(220, vec![(Ordinal(0), 150)]),
            two_pods_one_owner(320, vec![]),
        ],
    );
    assert_eq!(gaps(&lives, &recorded, &guild, 50, 1_000), vec![]);
    // ...but a cover that ends before the restart is ready leaves one.
    recorded.windows.get_mut(&1).expect("1")[2].at_ms = 280;
    assert_eq!(gaps(&lives, &recorded, &guild, 50, 1_000).len(), 1);
    // No cover at all, but the peer replayed what gateway-0 missed while it restarted unseen.
    recorded.windows.get_mut(&1).expect("1")[1].covering.clear();
    recorded.windows.get_mut(&1).expect("1")[2].at_ms = 320;
    assert_eq!(gaps(&lives, &recorded, &guild, 50, 1_000).len(), 1);
    let replay = ReplayedWindow {
        ordinal: Ordinal(1),
        at_ms: 350,
        current: one,
        history: Vec::new(),
        for_ordinal: Ordinal(0),
        from_ms: 150,
        to_ms: 400,
        receiving_since_ms: Some(5),
    };
    recorded.replays.push(replay.clone());
    assert_eq!(gaps(&lives, &recorded, &guild, 50, 1_000), vec![]);
    // A replay taken before gateway-0 was back covers only up to when it was taken.
    recorded.replays[0].at_ms = 260;
    assert_eq!(gaps(&lives, &recorded, &guild, 50, 1_000).len(), 1);

    // A cover that starts longer than the hold after its `since` replays only what is still
    // held: the stretch before that is a gap.
    let hold = HOLD_FOR.as_millis() as u64;
    recorded.replays.clear();
    let late = 300 + hold + 1_000;
    let windows = recorded.windows.get_mut(&1).expect("1");
    windows[1] = two_pods_one_owner(late, vec![(Ordinal(0), 150)]);
    windows[2].at_ms = late + 100;
    lives[1].started_ms = late + 50;
    recorded.windows.get_mut(&0).expect("0")[2] = record(0, late + 100, Some(late + 100), vec![]);
    assert_eq!(
        gaps(&lives, &recorded, &guild, 50, late + 1_000),
        vec![Gap {
            guild: 42,
            from_ms: 200,
            to_ms: late - hold
        }]
    );
}
