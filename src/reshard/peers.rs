//! The internal API of peer pods, as the resharding coordinator calls it: status, held guilds,
//! export and delete.

use std::time::Duration;

use reqwest::StatusCode;

use crate::config::{Secret, UrlTemplate};
use crate::ownership::{GuildId, Ordinal};
use crate::store::{GuildExport, GuildVersion};
use crate::wire::{
    Delivery, DeliveryResults, HeldGuilds, Released, StatusReport, GUILD_VERSION_HEADER,
};

use super::Error;

/// How long one call to a peer may take; a peer slower than this counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// An export can be large; allow it more time.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch of dispatches is committed by the owner before it answers.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// A release waits for the shard's dispatches in flight to be acknowledged (bounded there).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);
/// The identify queue lets one shard per bucket through every 5 s: a large bot's shards wait.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(600);

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

    /// `POST /internal/v1/events`: a batch of raw Discord dispatches for the peer to process
    /// (`body` as built by [`events_body`]); one answer per dispatch.
    ///
    /// # Errors
    /// [`Error::Peer`] when the peer is unreachable, stopping or answers anything else.
    pub async fn deliver(&self, ordinal: Ordinal, body: String) -> Result<Vec<Delivery>, Error> {
        let resp = self
            .client
            .post(self.url(ordinal, "/internal/v1/events"))
            .bearer_auth(self.token.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(DELIVERY_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| Self::err(ordinal, e))?;
        let answer: DeliveryResults = Self::ok_json(ordinal, "events", resp).await?;
        Ok(answer.results)
    }

    /// `POST /internal/v1/shards/{id}/release`: asks the peer to close its connection of the
    /// shard resumably and hand its session over. `Ok(None)` when the peer refused (it still
    /// connects the shard under its view); `Ok(Some(released))` otherwise.
    ///
    /// # Errors
    /// [`Error::Peer`] when the peer is unreachable or answers anything else.
    pub async fn release(&self, ordinal: Ordinal, shard: u32) -> Result<Option<Released>, Error> {
        let resp = self
            .client
            .post(self.url(ordinal, &format!("/internal/v1/shards/{shard}/release")))
            .bearer_auth(self.token.expose())
            .timeout(RELEASE_TIMEOUT)
            .send()
            .await
            .map_err(|e| Self::err(ordinal, e))?;
        if resp.status() == StatusCode::CONFLICT {
            return Ok(None);
        }
        Self::ok_json(ordinal, "release", resp).await.map(Some)
    }

    /// `POST /internal/v1/identify/{shard}`: waits until the peer, which keeps the cluster's
    /// identify queue, lets the shard identify.
    ///
    /// # Errors
    /// [`Error::Peer`] when the peer is unreachable or answers anything else.
    pub async fn identify(&self, ordinal: Ordinal, shard: u32) -> Result<(), Error> {
        let resp = self
            .client
            .post(self.url(ordinal, &format!("/internal/v1/identify/{shard}")))
            .bearer_auth(self.token.expose())
            .timeout(IDENTIFY_TIMEOUT)
            .send()
            .await
            .map_err(|e| Self::err(ordinal, e))?;
        if !resp.status().is_success() {
            return Err(Self::err(
                ordinal,
                format!("identify answered {}", resp.status()),
            ));
        }
        Ok(())
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

/// The body of `POST /internal/v1/events`: `{"from":N,"events":[{"shard":S,"seq":Q,"frame":F}]}`
/// where each `F` is the dispatch exactly as Discord sent it (already JSON, so it is embedded
/// as is, without re-encoding).
pub fn events_body<'a>(from: Ordinal, events: impl Iterator<Item = (u32, u64, &'a str)>) -> String {
    use std::fmt::Write as _;
    let mut body = format!("{{\"from\":{},\"events\":[", from.0);
    for (i, (shard, seq, frame)) in events.enumerate() {
        if i > 0 {
            body.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            "{{\"shard\":{shard},\"seq\":{seq},\"frame\":{frame}}}"
        );
    }
    body.push_str("]}");
    body
}
