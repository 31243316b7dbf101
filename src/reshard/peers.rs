//! The internal API of peer pods, as the resharding coordinator calls it: status, held guilds,
//! export and delete.

use std::time::Duration;

use reqwest::StatusCode;

use crate::config::{Secret, UrlTemplate};
use crate::ownership::{GuildId, Ordinal};
use crate::store::GuildExport;
use crate::wire::{HeldGuilds, StatusReport};

use super::Error;

/// How long one call to a peer may take; a peer slower than this counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// An export can be large; allow it more time.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for every peer's internal API.
#[derive(Clone, Debug)]
pub struct Peers {
    client: reqwest::Client,
    template: UrlTemplate,
    token: Secret,
}

/// What a peer answered to a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The peer deleted its copy.
    Yes,
    /// The peer still processes (or owns) the guild and kept its copy.
    Refused,
}

impl Peers {
    /// Peers reachable at `template` with bearer `token`.
    pub fn new(template: UrlTemplate, token: Secret) -> Self {
        Peers {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_default(),
            template,
            token,
        }
    }

    fn url(&self, ordinal: Ordinal, path: &str) -> String {
        format!("{}{path}", self.template.url_for(ordinal))
    }

    fn err(ordinal: Ordinal, why: impl std::fmt::Display) -> Error {
        Error::Peer {
            ordinal: ordinal.0,
            why: why.to_string(),
        }
    }

    /// `GET /internal/v1/status`.
    ///
    /// # Errors
    /// [`Error::Peer`] when the peer is unreachable or answers anything but its report.
    pub async fn status(&self, ordinal: Ordinal) -> Result<StatusReport, Error> {
        let resp = self
            .send(ordinal, "/internal/v1/status", REQUEST_TIMEOUT)
            .await?;
        Self::ok_json(ordinal, "status", resp).await
    }

    /// `GET /internal/v1/guilds`: the guilds the peer holds rows for.
    ///
    /// # Errors
    /// [`Error::Peer`] as for [`Peers::status`].
    pub async fn held(&self, ordinal: Ordinal) -> Result<Vec<GuildId>, Error> {
        let resp = self
            .send(ordinal, "/internal/v1/guilds", REQUEST_TIMEOUT)
            .await?;
        let held: HeldGuilds = Self::ok_json(ordinal, "guilds", resp).await?;
        Ok(held.guild_ids)
    }

    /// `GET /internal/v1/guilds/{id}/export`; `None` when the peer holds nothing of it.
    ///
    /// # Errors
    /// [`Error::Peer`] as for [`Peers::status`], or when the export is for another guild.
    pub async fn export(
        &self,
        ordinal: Ordinal,
        guild: GuildId,
    ) -> Result<Option<GuildExport>, Error> {
        let path = format!("/internal/v1/guilds/{guild}/export");
        let resp = self.send(ordinal, &path, EXPORT_TIMEOUT).await?;
        if matches!(resp.status(), StatusCode::CONFLICT | StatusCode::NOT_FOUND) {
            // Neither held nor processed there: nothing to pull.
            return Ok(None);
        }
        let export: GuildExport = Self::ok_json(ordinal, "export", resp).await?;
        if export.guild_id != guild {
            return Err(Self::err(
                ordinal,
                format!("export for guild {guild} came back for {}", export.guild_id),
            ));
        }
        Ok(Some(export))
    }

    /// `DELETE /internal/v1/guilds/{id}`.
    ///
    /// # Errors
    /// [`Error::Peer`] as for [`Peers::status`].
    pub async fn delete(&self, ordinal: Ordinal, guild: GuildId) -> Result<Deleted, Error> {
        let resp = self
            .client
            .delete(self.url(ordinal, &format!("/internal/v1/guilds/{guild}")))
            .bearer_auth(self.token.expose())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| Self::err(ordinal, e))?;
        match resp.status() {
            s if s.is_success() => Ok(Deleted::Yes),
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT => Ok(Deleted::Refused),
            s => Err(Self::err(ordinal, format!("delete answered {s}"))),
        }
    }

    /// An authenticated GET of one of the peer's internal API paths.
    async fn send(
        &self,
        ordinal: Ordinal,
        path: &str,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Response, Error> {
        self.client
            .get(self.url(ordinal, path))
            .bearer_auth(self.token.expose())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Self::err(ordinal, e))
    }

    /// The JSON body of a successful answer; any other status is the peer's error.
    async fn ok_json<T: serde::de::DeserializeOwned>(
        ordinal: Ordinal,
        what: &str,
        resp: reqwest::Response,
    ) -> Result<T, Error> {
        if !resp.status().is_success() {
            return Err(Self::err(
                ordinal,
                format!("{what} answered {}", resp.status()),
            ));
        }
        resp.json().await.map_err(|e| Self::err(ordinal, e))
    }
}
