//! Scenarios whose measurement is not written yet. Each returns rows that say plainly what is
//! not measured and why, so the table shows the gap instead of hiding it. Replace a function
//! here with a scenario file once it is written.

use super::Row;

/// `interactions`: the HTTP service exists; the load generator for signed interactions does not.
pub(crate) fn interactions() -> Vec<Row> {
    vec![Row::new(
        "interactions p50/p99/p99.9 at 1k/2k/5k req/s",
        "not measured",
        "not yet measured: the HTTP service and owner routing work (tests/http.rs), but this \
         bench has no load generator for signed interactions yet; target p99 < 5 ms at 2k req/s unverified",
    )]
}

/// `rescale`: resharding exists (`LocalCluster::rescale`); this bench does not drive it yet.
pub(crate) fn rescale() -> Vec<Row> {
    vec![Row::new(
        "rescale 3→4, 4→3 (md5, jump): guilds/rows moved, time to converge, events lost",
        "not measured",
        "not yet measured: resharding works (tests/reshard.rs, `guildshard dev --scale-to`) but \
             this bench does not yet time it at 10k/100k guilds; `guildshard plan --from 3 --to 4` \
             prints how many guilds would move",
    )]
}
