//! What a covering pod needs to act for a peer that is down (DESIGN §6): the peer's guild
//! settings and message cache, so that the posts it makes for the peer's guilds (deletion log,
//! mod log, reports) are the ones the owner would have made.
//!
//! A pod that is down leaves one source of them: its Litestream replica. When this pod starts
//! covering ordinal k, it restores k's replica into a scratch file once k no longer answers
//! (or after [`PULL_AFTER`] while k, stuck stopping, still answers: a pod that is stopping
//! still writes, and its sidecar uploads its last writes only after it exits). The copy is
//! opened beside the pod's own store and never imported: a covered guild's reads take this
//! pod's own rows first and the copy's second, and the rows the cover writes go back to the
//! owner through the usual handoff, so a cover of a few seconds moves nothing else.
//!
//! Until the copy is ready, the pod does not take k's dispatches ([`CoverCopies::ready`]): they
//! wait, unacknowledged and bounded, at the connectors, so nothing is decided without the
//! settings. A pod with no replica configured, or whose copy could not be restored after
//! [`ATTEMPTS`] tries (or whose replica is missing), covers with what it has, and says so once
//! in the log and in `guildshard_cover_copies{state="without"}`: holding the events longer
//! would trade a possibly missing post for the whole backlog of the owner's guilds.
//!
//! When the cover ends (the owner is back), the copy is closed and removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::ownership::Ordinal;
use crate::store::{Store, StoreOptions};

use super::replica::{self, ReplicaConfig};
use super::Error;

/// How long a covered peer that still answers (stuck stopping) is waited for before its
/// replica is restored anyway.
pub const PULL_AFTER: Duration = Duration::from_secs(20);
/// Restores tried before covering without a copy.
pub const ATTEMPTS: u32 = 3;
/// The wait between two tries.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Where the copy of one covered peer stands.
enum Copy {
    /// Covered since then; its replica is restored once the peer stops answering.
    Waiting(Instant),
    /// The restore runs.
    Pulling,
    /// Restored and open.
    Ready { store: Store, path: PathBuf },
    /// Covering without a copy (no replica configured, or it could not be restored).
    Without,
}

/// How many covered peers are in each state, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyCounts {
    /// Waiting for the peer to stop, or restoring.
    pub pulling: u64,
    /// Restored.
    pub ready: u64,
    /// Covered without a copy.
    pub without: u64,
}

/// The copies of the peers this pod covers.
pub struct CoverCopies {
    replica: Option<ReplicaConfig>,
    copies: Mutex<BTreeMap<Ordinal, Copy>>,
}

impl CoverCopies {
    /// Copies restored with `replica` (none configured: every cover goes without).
    pub fn new(replica: Option<ReplicaConfig>) -> Arc<Self> {
        Arc::new(CoverCopies {
            replica,
            copies: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Ordinal, Copy>> {
        self.copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows the covered set after a poll: starts a copy for each newly covered peer,
    /// restores those whose peer stopped answering (`answering`: the peers that did), and
    /// drops the copies of peers no longer covered.
    pub fn follow(self: &Arc<Self>, covering: &BTreeSet<Ordinal>, answering: &BTreeSet<Ordinal>) {
        let mut dropped = Vec::new();
        let mut start = Vec::new();
        {
            let mut copies = self.lock();
            copies.retain(|o, copy| {
                let keep = covering.contains(o);
                if !keep {
                    dropped.push((*o, std::mem::replace(copy, Copy::Without)));
                }
                keep
            });
            for &o in covering {
                let copy = copies.entry(o).or_insert_with(|| {
                    if self.replica.is_some() {
                        Copy::Waiting(Instant::now())
                    } else {
                        info!(
                            covered = o.0,
                            "covering without the peer's settings: no Litestream replica is configured"
                        );
                        Copy::Without
                    }
                });
                if let Copy::Waiting(since) = copy {
                    if !answering.contains(&o) || since.elapsed() >= PULL_AFTER {
                        *copy = Copy::Pulling;
                        start.push(o);
                    }
                }
            }
        }
        for (o, copy) in dropped {
            if let Copy::Ready { store, path } = copy {
                info!(covered = o.0, "cover ended; removing the peer's copy");
                tokio::spawn(close_and_remove(store, path));
            }
        }
        for o in start {
            let this = self.clone();
            tokio::spawn(async move { this.pull(o).await });
        }
    }

    /// Restores `o`'s replica (retrying), then records the copy if `o` is still covered.
    async fn pull(&self, o: Ordinal) {
        let Some(cfg) = &self.replica else { return };
        let started = Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match open_copy(cfg, o).await {
                Ok(opened) => break Ok(opened),
                Err(err @ Error::ReplicaMissing { .. }) => break Err(err),
                Err(err) if attempt >= ATTEMPTS => break Err(err),
                Err(err) => {
                    warn!(covered = o.0, attempt, cause = %err, "could not restore a covered peer's replica; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    if !self.lock().contains_key(&o) {
                        return;
                    }
                }
            }
        };
        let outcome = {
            let mut copies = self.lock();
            match copies.get_mut(&o) {
                Some(copy) => {
                    record(o, copy, outcome, started);
                    None
                }
                None => outcome.ok(),
            }
        };
        // The cover ended while the restore ran.
        if let Some((store, path)) = outcome {
            close_and_remove(store, path).await;
        }
    }

    /// Whether dispatches of `o`'s guilds may be handled: its copy is ready, or the pod covers
    /// it without one. `false` while the copy is being made (and for a peer not covered).
    pub fn ready(&self, o: Ordinal) -> bool {
        matches!(
            self.lock().get(&o),
            Some(Copy::Ready { .. } | Copy::Without)
        )
    }

    /// The restored copy of covered peer `o`, if there is one.
    pub fn copy_of(&self, o: Ordinal) -> Option<Store> {
        match self.lock().get(&o) {
            Some(Copy::Ready { store, .. }) => Some(store.clone()),
            _ => None,
        }
    }

    /// How many covered peers are in each state.
    pub fn counts(&self) -> CopyCounts {
        let mut counts = CopyCounts::default();
        for copy in self.lock().values() {
            match copy {
                Copy::Waiting(_) | Copy::Pulling => counts.pulling += 1,
                Copy::Ready { .. } => counts.ready += 1,
                Copy::Without => counts.without += 1,
            }
        }
        counts
    }

    /// Closes and removes every copy (the pod is stopping).
    pub async fn close(&self) {
        let copies = std::mem::take(&mut *self.lock());
        for copy in copies.into_values() {
            if let Copy::Ready { store, path } = copy {
                close_and_remove(store, path).await;
            }
        }
    }
}

/// Restores `o`'s replica and opens it.
async fn open_copy(cfg: &ReplicaConfig, o: Ordinal) -> Result<(Store, PathBuf), Error> {
    let path = replica::restore_copy(cfg, o).await?;
    // The copy is this pod's alone and no Litestream watches it: default checkpoints.
    let opened = Store::open_with(
        &path,
        StoreOptions {
            litestream_checkpoints: false,
            ..StoreOptions::default()
        },
    )
    .await;
    match opened {
        Ok(store) => Ok((store, path)),
        Err(err) => {
            replica::remove_copy(&path);
            Err(err.into())
        }
    }
}

async fn close_and_remove(store: Store, path: PathBuf) {
    if let Err(err) = store.close().await {
        warn!(cause = %err, path = %path.display(), "closing a covered peer's copy failed");
    }
    replica::remove_copy(&path);
}

/// Records how a restore ended, for a peer still covered.
fn record(o: Ordinal, copy: &mut Copy, outcome: Result<(Store, PathBuf), Error>, started: Instant) {
    match outcome {
        Ok((store, path)) => {
            info!(
                covered = o.0,
                ms = started.elapsed().as_millis() as u64,
                "covered peer's settings and message cache restored from its replica"
            );
            *copy = Copy::Ready { store, path };
        }
        Err(err) => {
            warn!(
                covered = o.0,
                cause = %err,
                "covering without the peer's settings: its replica could not be restored, so \
                 deletion-log and mod-log posts for its guilds may be missing until it returns"
            );
            *copy = Copy::Without;
        }
    }
}
