//! The serenity event handler: every dispatch is classified, passes the ownership filter, and
//! only then reaches a feature; what the pod does not process is held a few seconds for a
//! possible cover ([`crate::gateway::replay`]). Errors are logged and counted; they never stop
//! the pod.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serenity::client::{Context, RawEventHandler};
use serenity::model::event::Event;
use tracing::{debug, warn, Instrument};

use crate::gateway::classify::{classify, Classified};
use crate::gateway::features::{self, now_ms};
use crate::gateway::pod::Pod;
use crate::gateway::replay::Admitted;

/// Receives every dispatch of every shard this pod runs.
pub struct Handler {
    pod: Arc<Pod>,
}

impl Handler {
    /// A handler working for `pod`.
    pub fn new(pod: Arc<Pod>) -> Self {
        Handler { pod }
    }
}

#[serenity::async_trait]
impl RawEventHandler for Handler {
    async fn raw_event(&self, _ctx: Context, event: Event) {
        let pod = &self.pod;
        let class = classify(&event);
        pod.metrics.seen(&class.kind);
        match &event {
            Event::Unknown(unknown) => {
                // serenity turns a known event whose payload it cannot parse into Unknown; count
                // it so a protocol drift shows up instead of silently losing data.
                pod.metrics.unknown_event(&unknown.kind);
                warn!(pod = %pod.name, kind = %unknown.kind, "dispatch the client library could not parse");
                return;
            }
            Event::Ready(ready) => {
                pod.identifies.fetch_add(1, Ordering::Relaxed);
                let shard = ready.ready.shard.map_or(0, |s| s.id.0);
                if pod.sessions.ready(shard) {
                    pod.ownership.set_receiving(true);
                }
                pod.metrics.gateway_ready.inc();
                tracing::info!(pod = %pod.name, shard = ?ready.ready.shard.map(|s| s.id.0), session = %ready.ready.session_id, "gateway session ready");
            }
            Event::Resumed(_) => {
                pod.metrics.gateway_resumed.inc();
                tracing::info!(pod = %pod.name, "gateway session resumed");
            }
            _ => {}
        }
        match pod.replay.admit(&pod.ownership, class, now_ms(), event) {
            Admitted::Process(class, event) => handle_owned(pod, &class, event).await,
            Admitted::Held(true) => {
                pod.metrics.events_hold_overflow.inc();
            }
            Admitted::Held(false) | Admitted::Dropped => {}
        }
    }
}

/// Handles a dispatch this pod processes (live, or replayed for a new cover): the feature
/// that owns it writes, and the outcome is counted. Errors are logged; they never stop the pod.
pub(crate) async fn handle_owned(pod: &Pod, class: &Classified, event: Event) {
    pod.metrics.owned(&class.kind);
    // Registered before any work so shutdown waits for this event before flushing.
    let _inflight = pod.inflight.token();
    // serenity runs each handler as its own task, outside the pod's span: name the pod here.
    // Debug level: at the default level a span per event costs more than the filter saves,
    // and nothing on this path logs below `warn`, which names pod, kind and guild itself.
    let span = tracing::debug_span!(
        "event",
        pod = %pod.name,
        kind = %class.kind,
        guild_id = class.guild.map(|g| g.0),
    );
    match features::dispatch(pod, event).instrument(span).await {
        Ok(()) => pod.metrics.handled(&class.kind),
        Err(err) => {
            pod.metrics.failed(&class.kind);
            pod.record_error(&err);
            warn!(pod = %pod.name, kind = %class.kind, guild_id = class.guild.map(|g| g.0), cause = %err, "event handling failed");
        }
    }
    debug!(kind = %class.kind, "event done");
}
