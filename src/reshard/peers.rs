//! The internal API of peer pods, as the resharding coordinator calls it: status, held guilds,
//! export and delete.

use std::time::Duration;

use reqwest::StatusCode;

use crate::config::{Secret, UrlTemplate};
use crate::ownership::{GuildId, Ordinal};
use crate::store::{GuildExport, GuildVersion};
use crate::wire::{HeldGuilds, StatusReport, GUILD_VERSION_HEADER};

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
    /// The peer still processes (or owns) the guild, or the guild changed since the export:
    /// it kept its copy.
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

    /// `GET /internal/v1/guilds?owner=<owner>`: the guilds the peer holds rows for that
    /// `owner` owns under the peer's topology.
    ///
    /// # Errors
    /// [`Error::Peer`] as for [`Peers::status`].
    pub async fn held(&self, ordinal: Ordinal, owner: Ordinal) -> Result<Vec<GuildId>, Error> {
        let path = format!("/internal/v1/guilds?owner={}", owner.0);
        let resp = self.send(ordinal, &path, REQUEST_TIMEOUT).await?;
        let held: HeldGuilds = Self::ok_json(ordinal, "guilds", resp).await?;
        Ok(held.guild_ids)
    }

    /// `GET /internal/v1/guilds/{id}/export`, with the version of the guild's rows it was
    /// taken at; `None` when the peer holds nothing of it.
    ///
    /// # Errors
    /// [`Error::Peer`] as for [`Peers::status`], or when the export is for another guild.
    pub async fn export(
        &self,
        ordinal: Ordinal,
        guild: GuildId,
    ) -> Result<Option<(Option<GuildVersion>, GuildExport)>, Error> {
        let path = format!("/internal/v1/guilds/{guild}/export");
        let resp = self.send(ordinal, &path, EXPORT_TIMEOUT).await?;
        if matches!(resp.status(), StatusCode::CONFLICT | StatusCode::NOT_FOUND) {
            // Neither held nor processed there: nothing to pull.
            return Ok(None);
        }
        let version = match resp.headers().get(GUILD_VERSION_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| Self::err(ordinal, format!("bad {GUILD_VERSION_HEADER}")))?,
            ),
        };
        let export: GuildExport = Self::ok_json(ordinal, "export", resp).await?;
        if export.guild_id != guild {
            return Err(Self::err(
                ordinal,
                format!("export for guild {guild} came back for {}", export.guild_id),
            ));
        }
        Ok(Some((version, export)))
    }

    /// `DELETE /internal/v1/guilds/{id}[?if_version=<version>]`: with a version, the peer
    /// deletes only if the guild is still at it.
    ///
    /// # Errors
    /// [`Error::Peer`] as for [`Peers::status`].
    pub async fn delete(
        &self,
        ordinal: Ordinal,
        guild: GuildId,
        if_version: Option<GuildVersion>,
    ) -> Result<Deleted, Error> {
        let query = if_version.map_or(String::new(), |v| format!("?if_version={v}"));
        let resp = self
            .client
            .delete(self.url(ordinal, &format!("/internal/v1/guilds/{guild}{query}")))
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
