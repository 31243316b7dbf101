//! The guild calls: which guilds a pod holds, moving a guild's rows between pods (export, then
//! a delete conditional on the export's version) and a guild's stats, routed by owner.

use std::time::Duration;

use axum::body::Bytes;
use reqwest::{Method, StatusCode};

use crate::internal_paths as paths;
use crate::ownership::{GuildId, Ordinal};
use crate::store::{GuildExport, GuildVersion};
use crate::wire::{HeldGuilds, NotOwner, GUILD_VERSION_HEADER};

use super::{ok_json, PodClient, PodError};

/// An export can be large; allow it more time.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a pod answered to a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The pod deleted its copy.
    Yes,
    /// The pod still processes (or owns) the guild, or the guild changed since the export:
    /// it kept its copy.
    Refused,
}

/// What a pod answered to a read that is routed by guild.
#[derive(Debug)]
pub enum Read {
    /// The pod answered (any status but 409): passed through as is.
    Answer(StatusCode, Bytes),
    /// The pod does not own the guild (409).
    NotOwner(NotOwner),
}

impl PodClient {
    /// `GET /internal/v1/guilds?owner=<owner>`: the guilds `ordinal` holds rows for that
    /// `owner` owns under its topology.
    ///
    /// # Errors
    /// [`PodError`] when the pod cannot be reached or answers anything but the list.
    pub async fn held(&self, ordinal: Ordinal, owner: Ordinal) -> Result<Vec<GuildId>, PodError> {
        let path = paths::guilds_owned_by(owner);
        let response = self
            .call(ordinal, Method::GET, &path, self.timeouts.read)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        let held: HeldGuilds = ok_json(ordinal, "guilds", response).await?;
        Ok(held.guild_ids)
    }

    /// `GET /internal/v1/guilds/{id}/export`, with the version of the guild's rows it was
    /// taken at; `None` when the pod holds nothing of it.
    ///
    /// # Errors
    /// [`PodError`] as for [`PodClient::held`], or when the export is for another guild.
    pub async fn export(
        &self,
        ordinal: Ordinal,
        guild: GuildId,
    ) -> Result<Option<(Option<GuildVersion>, GuildExport)>, PodError> {
        let path = paths::guild_export(guild);
        let response = self
            .call(ordinal, Method::GET, &path, EXPORT_TIMEOUT)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        if matches!(
            response.status(),
            StatusCode::CONFLICT | StatusCode::NOT_FOUND
        ) {
            // Neither held nor processed there: nothing to pull.
            return Ok(None);
        }
        let failed = |reason: String| PodError::Failed { ordinal, reason };
        let version = match response.headers().get(GUILD_VERSION_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| failed(format!("bad {GUILD_VERSION_HEADER}")))?,
            ),
        };
        let export: GuildExport = ok_json(ordinal, "export", response).await?;
        if export.guild_id != guild {
            return Err(failed(format!(
                "export for guild {guild} came back for {}",
                export.guild_id
            )));
        }
        Ok(Some((version, export)))
    }

    /// `DELETE /internal/v1/guilds/{id}[?if_version=<version>]`: with a version, the pod
    /// deletes only if the guild is still at it.
    ///
    /// # Errors
    /// [`PodError`] when the pod cannot be reached or answers anything but done or refused.
    pub async fn delete(
        &self,
        ordinal: Ordinal,
        guild: GuildId,
        if_version: Option<GuildVersion>,
    ) -> Result<Deleted, PodError> {
        let path = paths::guild(guild, if_version);
        let response = self
            .call(ordinal, Method::DELETE, &path, self.timeouts.read)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        match response.status() {
            s if s.is_success() => Ok(Deleted::Yes),
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT => Ok(Deleted::Refused),
            s => Err(PodError::Failed {
                ordinal,
                reason: format!("delete answered {s}"),
            }),
        }
    }

    /// `GET /internal/v1/guilds/{guild}/stats` of `ordinal`.
    ///
    /// # Errors
    /// [`PodError`] when the pod cannot be reached, or answers 5xx or a malformed 409.
    pub async fn guild_stats(&self, ordinal: Ordinal, guild: GuildId) -> Result<Read, PodError> {
        let path = paths::guild_stats(guild);
        let response = self
            .call(ordinal, Method::GET, &path, self.timeouts.read)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        match status {
            StatusCode::CONFLICT => {
                serde_json::from_slice(&bytes)
                    .map(Read::NotOwner)
                    .map_err(|e| PodError::Failed {
                        ordinal,
                        reason: format!("malformed 409 body: {e}"),
                    })
            }
            s if s.is_server_error() => Err(PodError::Failed {
                ordinal,
                reason: format!("answered {s}"),
            }),
            s => Ok(Read::Answer(s, bytes)),
        }
    }
}
