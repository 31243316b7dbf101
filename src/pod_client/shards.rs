//! The calls between connectors and pods: routed dispatches, handing a shard over, and the
//! cluster's identify queue.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::internal_paths as paths;
use crate::ownership::Ordinal;
use crate::wire::{Delivery, DeliveryResults, Released};

use super::{ok_json, PodClient, PodError};

/// A batch of dispatches is committed by the owner before it answers.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// A release waits for the shard's dispatches in flight to be acknowledged (bounded there).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);
/// The identify queue lets one shard per bucket through every 5 s: a large bot's shards wait.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(600);

impl PodClient {
    /// `POST /internal/v1/events`: a batch of raw Discord dispatches for the pod to process
    /// (`body` as built by [`events_body`]); one answer per dispatch.
    ///
    /// # Errors
    /// [`PodError`] when the pod is unreachable, stopping or answers anything else.
    pub async fn deliver(&self, ordinal: Ordinal, body: String) -> Result<Vec<Delivery>, PodError> {
        let response = self
            .call(ordinal, Method::POST, paths::EVENTS, DELIVERY_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        let answer: DeliveryResults = ok_json(ordinal, "events", response).await?;
        Ok(answer.results)
    }

    /// `POST /internal/v1/shards/{id}/release`: asks the pod to close its connection of the
    /// shard resumably and hand its session over. `Ok(None)` when the pod refused (it still
    /// connects the shard under its view); `Ok(Some(released))` otherwise.
    ///
    /// # Errors
    /// [`PodError`] when the pod is unreachable or answers anything else.
    pub async fn release(
        &self,
        ordinal: Ordinal,
        shard: u32,
    ) -> Result<Option<Released>, PodError> {
        let path = paths::shard_release(shard);
        let response = self
            .call(ordinal, Method::POST, &path, RELEASE_TIMEOUT)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        if response.status() == StatusCode::CONFLICT {
            return Ok(None);
        }
        ok_json(ordinal, "release", response).await.map(Some)
    }

    /// `POST /internal/v1/identify/{shard}`: waits until the pod, which keeps the cluster's
    /// identify queue, lets the shard identify.
    ///
    /// # Errors
    /// [`PodError`] when the pod is unreachable or answers anything else.
    pub async fn identify(&self, ordinal: Ordinal, shard: u32) -> Result<(), PodError> {
        let path = paths::identify(shard);
        let response = self
            .call(ordinal, Method::POST, &path, IDENTIFY_TIMEOUT)
            .send()
            .await
            .map_err(|e| PodError::classify(ordinal, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PodError::Failed {
                ordinal,
                reason: format!("identify answered {status}"),
            });
        }
        Ok(())
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
