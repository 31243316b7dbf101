//! Reads of a guild's data that see a covered owner's copy (DESIGN §6).
//!
//! While this pod covers a peer that is down, the peer's settings and message cache are in a
//! copy restored from its replica ([`crate::reshard::cover_copy`]), and what happened since
//! is in this pod's own store. A covered guild's reads merge both, by the store's own merge
//! rules, so the posts and answers are the ones the owner would have made. A guild this pod
//! owns reads only its own store.

use crate::gateway::pod::Pod;
use crate::ownership::GuildId;
use crate::store::{CachedMessage, Error, GuildSettings, Store};

/// The restored copy of the covered owner of `guild`, if this pod processes it as a cover and
/// the copy is ready.
fn copy_for(pod: &Pod, guild: GuildId) -> Option<Store> {
    let covered = pod.ownership.covered_owner(Some(guild))?;
    pod.coordinator.cover_copies().copy_of(covered)
}

/// The guild's `/setup` channels.
///
/// # Errors
/// The store's, when a read fails.
pub async fn settings(pod: &Pod, guild: GuildId) -> Result<GuildSettings, Error> {
    let own = pod.store.settings_row(guild).await?.unwrap_or_default();
    let merged = match copy_for(pod, guild) {
        Some(copy) => own.merged(copy.settings_row(guild).await?.unwrap_or_default()),
        None => own,
    };
    Ok(merged.into())
}

/// A message from the cache (or its tombstone), if known here or in the owner's copy.
///
/// # Errors
/// The store's, when a read fails.
pub async fn cached_message(
    pod: &Pod,
    guild: GuildId,
    message_id: u64,
) -> Result<Option<CachedMessage>, Error> {
    let own = pod.store.cached_message(guild, message_id).await?;
    let Some(copy) = copy_for(pod, guild) else {
        return Ok(own);
    };
    let theirs = copy.cached_message(guild, message_id).await?;
    Ok(match (own, theirs) {
        (Some(a), Some(b)) => Some(a.merged(&b)),
        (a, b) => a.or(b),
    })
}

/// Several messages from the cache (those known here or in the owner's copy), in id order.
///
/// # Errors
/// The store's, when a read fails.
pub async fn cached_messages(
    pod: &Pod,
    guild: GuildId,
    message_ids: Vec<u64>,
) -> Result<Vec<CachedMessage>, Error> {
    let Some(copy) = copy_for(pod, guild) else {
        return pod.store.cached_messages(guild, message_ids).await;
    };
    let own = pod
        .store
        .cached_messages(guild, message_ids.clone())
        .await?;
    let theirs = copy.cached_messages(guild, message_ids).await?;
    let mut by_id: std::collections::BTreeMap<u64, CachedMessage> =
        std::collections::BTreeMap::new();
    for m in own.into_iter().chain(theirs) {
        let merged = match by_id.remove(&m.message_id) {
            Some(known) => known.merged(&m),
            None => m,
        };
        by_id.insert(merged.message_id, merged);
    }
    Ok(by_id.into_values().collect())
}

/// The store that holds `guild`'s history for the read-only commands (stats, leaderboard,
/// mod log): the owner's copy while this pod covers it (everything up to the owner's last
/// replicated write; the few events since are in this pod's store and join the owner's rows
/// when it returns), else this pod's own.
pub fn history(pod: &Pod, guild: GuildId) -> Store {
    copy_for(pod, guild).unwrap_or_else(|| pod.store.clone())
}
