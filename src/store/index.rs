//! Which guilds the store holds rows for, each with a [`GuildVersion`] that changes with every
//! committed change to that guild's rows.
//!
//! The writer is the only writer, so it can keep this in memory exactly: it records what each
//! write changed and applies it here after the commit. Two things rest on it:
//! - listing the held guilds costs no query (pods report it several times a second);
//! - a delete can be made conditional on "nothing changed since this export"
//!   ([`super::Write::DeleteGuildIfUnchanged`]), which is what makes the resharding handoff's
//!   delete-after-pull safe even if the old owner wrote to the guild in between.
//!
//! Versions are `(epoch, seq)`: a random epoch per writer start and a sequence number, so a
//! version handed out before a restart never equals one handed out after it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::ownership::GuildId;

/// A version of one guild's rows in one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuildVersion {
    epoch: u64,
    seq: u64,
}

impl fmt::Display for GuildVersion {
    /// `<epoch hex>.<seq>`, as it travels in an HTTP header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}.{}", self.epoch, self.seq)
    }
}

/// A version string that is not `<epoch hex>.<seq>`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a guild version: {0:?}")]
pub struct ParseGuildVersionError(String);

impl FromStr for GuildVersion {
    type Err = ParseGuildVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseGuildVersionError(s.to_owned());
        let (epoch, seq) = s.split_once('.').ok_or_else(bad)?;
        Ok(GuildVersion {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// What one committed write did to the set of held guilds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Rows of the guild were added or changed.
    Touched(GuildId),
    /// Every row of the guild was removed.
    Removed(GuildId),
    /// Rows of many guilds may have gone (a purge): the guilds that still have rows.
    Rescanned(Vec<GuildId>),
}

impl Change {
    /// Whether this change concerns `guild`.
    pub(crate) fn concerns(&self, guild: GuildId) -> bool {
        match self {
            Change::Touched(g) | Change::Removed(g) => *g == guild,
            Change::Rescanned(_) => true,
        }
    }
}

/// The held guilds and their versions.
#[derive(Debug)]
pub(crate) struct GuildIndex {
    epoch: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    versions: BTreeMap<GuildId, u64>,
    next_seq: u64,
    /// Bumped whenever a guild is added or removed (not when one only changes).
    membership: u64,
}

impl GuildIndex {
    /// An index of `held` (what the database holds at open), each at a first version.
    pub(crate) fn new(held: impl IntoIterator<Item = GuildId>) -> GuildIndex {
        GuildIndex {
            epoch: rand::random(),
            inner: Mutex::new(Inner {
                versions: held.into_iter().map(|g| (g, 0)).collect(),
                next_seq: 1,
                membership: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section below leaves the maps whole; a panic elsewhere does not make
        // them wrong.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The held guilds, ascending.
    pub(crate) fn ids(&self) -> Vec<GuildId> {
        self.lock().versions.keys().copied().collect()
    }

    /// How many guilds are held.
    pub(crate) fn len(&self) -> usize {
        self.lock().versions.len()
    }

    /// The current version of `guild`, `None` when nothing of it is held.
    pub(crate) fn version(&self, guild: GuildId) -> Option<GuildVersion> {
        self.lock().versions.get(&guild).map(|&seq| GuildVersion {
            epoch: self.epoch,
            seq,
        })
    }

    /// A number that changes whenever a guild is added to or removed from the held set.
    pub(crate) fn membership(&self) -> u64 {
        self.lock().membership
    }

    /// Records what a committed transaction changed, in order.
    pub(crate) fn apply(&self, changes: &[Change]) {
        let mut inner = self.lock();
        for change in changes {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            match change {
                Change::Touched(g) => {
                    if inner.versions.insert(*g, seq).is_none() {
                        inner.membership += 1;
                    }
                }
                Change::Removed(g) => {
                    if inner.versions.remove(g).is_some() {
                        inner.membership += 1;
                    }
                }
                Change::Rescanned(held) => {
                    let before = inner.versions.len();
                    let kept: BTreeMap<GuildId, u64> = held
                        .iter()
                        .map(|g| (*g, inner.versions.get(g).copied().unwrap_or(seq)))
                        .collect();
                    if kept.len() != before || kept.keys().any(|g| !inner.versions.contains_key(g))
                    {
                        inner.membership += 1;
                    }
                    inner.versions = kept;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_change_with_every_change_and_survive_a_round_trip() {
        let index = GuildIndex::new([GuildId(1)]);
        let v1 = index.version(GuildId(1)).expect("held");
        assert_eq!(v1.to_string().parse::<GuildVersion>(), Ok(v1));
        assert_eq!(index.version(GuildId(2)), None);
        let membership = index.membership();

        index.apply(&[Change::Touched(GuildId(1))]);
        let v2 = index.version(GuildId(1)).expect("held");
        assert_ne!(v1, v2);
        assert_eq!(
            index.membership(),
            membership,
            "a change is not a new guild"
        );

        index.apply(&[Change::Touched(GuildId(2)), Change::Removed(GuildId(1))]);
        assert_eq!(index.ids(), vec![GuildId(2)]);
        assert_eq!(index.membership(), membership + 2);

        index.apply(&[Change::Rescanned(vec![])]);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn versions_from_another_writer_start_never_match() {
        let a = GuildIndex::new([GuildId(7)]);
        let b = GuildIndex::new([GuildId(7)]);
        assert_ne!(a.version(GuildId(7)), b.version(GuildId(7)));
    }

    #[test]
    fn malformed_versions_are_refused() {
        for text in ["", "12", "zz.1", "0a.x", "0a.-1"] {
            assert!(text.parse::<GuildVersion>().is_err(), "{text:?}");
        }
    }
}
