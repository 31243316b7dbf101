//! Moving one guild's copy from a peer to this pod: export there → import here (committed and
//! fsynced) → delete there, only if the peer's copy is still what was exported (the export
//! carries the version of the guild's rows, and the delete names it). Each step is idempotent,
//! so the move can be cut at any point (kill -9 of either side, or a power loss here) and
//! simply run again: a repeated import merges to the same rows, and the peer keeps its copy
//! until the delete succeeds. A peer that wrote to the guild after the export refuses the
//! delete, and the next pull takes the rest.

use tracing::{debug, info};

use crate::ownership::{GuildId, Ordinal};
use crate::pod_client::{Deleted, PodClient};
use crate::store::{Store, Write};

use super::Error;

/// How far one pull got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pulled {
    /// The peer held nothing of the guild.
    Nothing,
    /// Imported here and deleted on the peer: done.
    Moved {
        /// Rows in the peer's export.
        rows: usize,
    },
    /// Imported here; the peer still processes the guild, or wrote to it after the export, and
    /// kept its copy, so the pull is repeated later.
    ImportedOnly,
}

/// Pulls `guild` from the peer `from` into `store`.
///
/// # Errors
/// [`Error::Peer`] when the peer fails, [`Error::Store`] when the import is not committed; in
/// both cases nothing was deleted on the peer.
#[tracing::instrument(skip_all, fields(guild_id = guild.0, from = from.0))]
pub async fn pull(
    store: &Store,
    peers: &PodClient,
    from: Ordinal,
    guild: GuildId,
) -> Result<Pulled, Error> {
    let Some((version, export)) = peers.export(from, guild).await? else {
        return Ok(Pulled::Nothing);
    };
    let rows = export.rows();
    if rows > 0 {
        // `apply` returns once the batch holding the import has committed, and an import is
        // committed with an fsync: the peer deletes its copy next, so the import must survive
        // a power loss here, not only a crash of this process.
        let applied = store.apply(Write::ImportGuild(export)).await?;
        if !applied.fsynced {
            return Err(Error::Store(crate::store::Error::Commit(
                "the import was committed without an fsync; the peer keeps its copy".into(),
            )));
        }
    }
    match peers.delete(from, guild, version).await? {
        Deleted::Yes => {
            info!(rows, "guild pulled");
            Ok(Pulled::Moved { rows })
        }
        Deleted::Refused => {
            debug!(
                rows,
                "guild imported; the peer still processes it and kept its copy"
            );
            Ok(Pulled::ImportedOnly)
        }
    }
}
