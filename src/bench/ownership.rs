//! The `ownership` scenario: ns per [`owner`] call under md5 and jump, against the md5 digest
//! of the same ids alone (the floor: `owner` is the digest plus formatting the id and a modulo
//! or a jump), on the same ids in the same run.

use std::hint::black_box;
use std::time::Instant;

use md5::{Digest, Md5};

use super::{median, spread, Options, Row};
use crate::ownership::{owner, GuildId, Strategy, Topology};
use crate::reshard::plan::generated_snowflakes;

/// Measures. Synchronous: it only spins the CPU.
pub(crate) fn run(options: &Options) -> Vec<Row> {
    let (count, rounds) = if options.quick {
        (1_000, 2)
    } else {
        (10_000, 100)
    };
    let ids = generated_snowflakes(count, 8);
    // The digest alone hashes the same decimal forms `owner` hashes, formatted beforehand.
    let decimals: Vec<String> = ids.iter().map(|g| g.0.to_string()).collect();
    let calls = (ids.len() * rounds) as f64;

    let digest = || {
        let start = Instant::now();
        for _ in 0..rounds {
            for text in &decimals {
                black_box(Md5::digest(black_box(text.as_bytes())));
            }
        }
        start.elapsed().as_nanos() as f64 / calls
    };
    let id_slice: &[GuildId] = &ids;
    let call = move |topology: Topology| {
        move || {
            let start = Instant::now();
            for _ in 0..rounds {
                for id in id_slice {
                    black_box(owner(black_box(*id), black_box(topology)));
                }
            }
            start.elapsed().as_nanos() as f64 / calls
        }
    };
    let topo = |strategy, pods| Topology::new(strategy, pods).expect("pod counts here are > 0");
    let cases: Vec<(String, Box<dyn Fn() -> f64 + '_>)> = vec![
        ("md5 digest alone".into(), Box::new(digest)),
        (
            "owner() md5, N=8".into(),
            Box::new(call(topo(Strategy::Md5, 8))),
        ),
        (
            "owner() jump, N=8".into(),
            Box::new(call(topo(Strategy::Jump, 8))),
        ),
        (
            "owner() jump, N=1000".into(),
            Box::new(call(topo(Strategy::Jump, 1000))),
        ),
    ];
    // Interleave the cases within each run, so a burst of load from elsewhere on the machine
    // hits all of them alike and the ratios stay fair.
    let mut samples = vec![Vec::with_capacity(options.runs); cases.len()];
    for _ in 0..options.runs.max(1) {
        for (i, (_, case)) in cases.iter().enumerate() {
            samples[i].push(case());
        }
    }
    let ns = |v: f64| format!("{v:.1} ns");
    let floor = median(&samples[0]);
    let mut rows: Vec<Row> = cases
        .iter()
        .zip(&samples)
        .map(|((name, _), s)| {
            let m = median(s);
            let ratio = if floor > 0.0 { m / floor } else { 0.0 };
            Row::new(
                format!("{name} ({} ids)", ids.len()),
                ns(m),
                format!("{:.2}× digest; {}", ratio, spread(s, ns)),
            )
        })
        .collect();
    // The figure that matters to a pod: how many events per second the filter alone could take.
    let md5 = median(&samples[1]);
    if md5 > 0.0 {
        rows.push(Row::new(
            "ownership filter ceiling, md5",
            super::per_sec(1e9 / md5),
            "owner() calls per second on one core",
        ));
    }
    rows
}
