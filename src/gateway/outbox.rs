//! Posts what the features queued in the store's outbox (mod-log, deletion log, DM help).
//!
//! Each post carries a Discord `nonce` derived from its outbox key with `enforce_nonce`, so if
//! the pod dies after Discord accepted a post but before the row was marked sent, the retry
//! returns the existing message instead of posting twice.

use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use serenity::model::id::ChannelId;
use tracing::{debug, warn};

use crate::gateway::pod::Pod;
use crate::store::{PendingOutbox, Write};

/// Rows taken per round.
const BATCH: u32 = 50;
/// How often the outbox is checked without a wake-up (rows left by an earlier run, retries).
const POLL: Duration = Duration::from_secs(1);

/// Sends pending outbox rows until `stop` completes.
pub async fn run(pod: Arc<Pod>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut backoff = POLL;
    loop {
        let clean = send_pending(&pod).await;
        backoff = if clean {
            POLL
        } else {
            (backoff * 2).min(Duration::from_secs(30))
        };
        tokio::select! {
            () = &mut stop => return,
            () = pod.outbox_wake.notified() => {}
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Sends what is pending; `false` when a retryable failure stopped the round.
async fn send_pending(pod: &Pod) -> bool {
    let rows = match pod.store.pending_outbox(BATCH).await {
        Ok(rows) => rows,
        Err(err) => {
            warn!(cause = %err, "cannot read the outbox");
            return false;
        }
    };
    for row in rows {
        match send(pod, &row).await {
            Sent::Posted(message_id) => mark_sent(pod, row.key, message_id).await,
            Sent::Rejected(status) => {
                // The channel is gone or the bot may not post there: retrying cannot help, so
                // the row is closed (message id 0) and the failure is reported.
                pod.metrics.rest_error("outbox");
                pod.record_error(format!("outbox post {} rejected with {status}", row.key));
                warn!(key = %row.key, channel_id = row.channel_id, status, "outbox post rejected");
                mark_sent(pod, row.key, 0).await;
            }
            Sent::Retry(reason) => {
                pod.metrics.rest_error("outbox");
                warn!(key = %row.key, cause = %reason, "outbox post failed; will retry");
                return false;
            }
        }
    }
    true
}

enum Sent {
    Posted(u64),
    Rejected(u16),
    Retry(String),
}

async fn send(pod: &Pod, row: &PendingOutbox) -> Sent {
    let mut body = row.body.clone();
    if let Some(map) = body.as_object_mut() {
        map.insert("nonce".into(), nonce(&row.key).into());
        map.insert("enforce_nonce".into(), true.into());
    }
    match pod
        .rest
        .send_message(ChannelId::new(row.channel_id.max(1)), vec![], &body)
        .await
    {
        Ok(message) => {
            pod.metrics.outbox_sent.inc();
            debug!(key = %row.key, message_id = message.id.get(), "outbox post sent");
            Sent::Posted(message.id.get())
        }
        Err(serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(resp)))
            if resp.status_code.is_client_error() && resp.status_code.as_u16() != 429 =>
        {
            Sent::Rejected(resp.status_code.as_u16())
        }
        Err(err) => Sent::Retry(err.to_string()),
    }
}

async fn mark_sent(pod: &Pod, key: String, message_id: u64) {
    if let Err(err) = pod.store.apply(Write::OutboxSent { key, message_id }).await {
        warn!(cause = %err, "cannot mark an outbox row sent");
    }
}

/// Discord nonces are at most 25 characters: the first 25 hex digits of md5(key).
pub fn nonce(key: &str) -> String {
    let digest = Md5::digest(key.as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(25);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_fit_discord_and_follow_the_key() {
        let a = nonce("deleted:123");
        assert_eq!(a.len(), 25);
        assert_eq!(a, nonce("deleted:123"));
        assert_ne!(a, nonce("deleted:124"));
    }
}
