//! The owner's side of delivery (DESIGN §6): the dispatches a connector routed to this pod,
//! checked against the pod's own view, parsed fully once, handed to the feature that owns them,
//! and acknowledged only once their writes are committed.
//!
//! A dispatch of a guild this pod does not process under its view is answered
//! [`Delivery::NotMine`] and not acknowledged: the connector keeps it and tries again where
//! its view says (the two views agree again within a status poll or two). So is a dispatch of
//! a peer this pod covers while the peer's settings are still being restored
//! ([`crate::reshard::cover_copy`]).
//!
//! Dispatches of one guild are handled in the order they came; different guilds in parallel.

use std::collections::HashMap;

use futures::StreamExt;
use serenity::model::event::{Event, GatewayEvent};
use tracing::{debug, warn, Instrument};

use crate::gateway::classify::{classify, Classified};
use crate::gateway::envelope;
use crate::gateway::features;
use crate::gateway::pod::Pod;
use crate::ownership::GuildId;
use crate::wire::Delivery;

/// Guilds of one batch handled at once.
const GUILDS_AT_ONCE: usize = 64;

/// The pod no longer takes dispatches (it is shutting down): the connector tries another.
#[derive(Debug, thiserror::Error)]
#[error("the pod is shutting down and takes no more dispatches")]
pub struct Closed;

/// One routed dispatch: its shard, sequence number and the frame as Discord sent it.
pub type Routed<'a> = (u32, u64, &'a str);

/// Handles a batch of routed dispatches; one answer per dispatch, in order.
///
/// # Errors
/// [`Closed`] once the pod stopped taking dispatches (nothing of the batch was handled).
pub async fn take(pod: &Pod, batch: &[Routed<'_>]) -> Result<Vec<Delivery>, Closed> {
    if pod.inflight.is_closed() {
        return Err(Closed);
    }
    // Registered before any work so shutdown waits for this batch before flushing.
    let _inflight = pod.inflight.token();
    let mut answers = vec![Delivery::NotMine; batch.len()];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<Option<GuildId>, usize> = HashMap::new();
    for (i, (_, _, frame)) in batch.iter().enumerate() {
        let guild = match envelope::read(frame) {
            Ok(e) => e.guild,
            Err(err) => {
                // Nothing can be done with it, now or later: acknowledge and count it.
                pod.metrics.unknown_event("UNREADABLE");
                warn!(pod = %pod.name, cause = %err, "a routed dispatch could not be read");
                answers[i] = Delivery::Done;
                continue;
            }
        };
        if !pod.ownership.processes(guild) {
            continue;
        }
        // A covered peer's dispatches wait at the connectors until this pod has the peer's
        // settings, so every post is decided as the owner would have decided it.
        if let Some(covered) = pod.ownership.covered_owner(guild) {
            if !pod.coordinator.cover_copies().ready(covered) {
                continue;
            }
        }
        let g = *group_of.entry(guild).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let done: Vec<usize> = futures::stream::iter(groups)
        .map(|group| async move {
            for &i in &group {
                handle(pod, batch[i].2).await;
            }
            group
        })
        .buffer_unordered(GUILDS_AT_ONCE)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    for i in done {
        answers[i] = Delivery::Done;
    }
    Ok(answers)
}

/// Parses one dispatch and hands it to its feature.
async fn handle(pod: &Pod, frame: &str) {
    let event = match serde_json::from_str::<GatewayEvent>(frame) {
        Ok(GatewayEvent::Dispatch(_, event)) => event,
        Ok(_) => return,
        Err(err) => {
            pod.metrics.unknown_event("UNPARSED");
            warn!(pod = %pod.name, cause = %err, "a routed dispatch the client library could not parse");
            return;
        }
    };
    if let Event::Unknown(unknown) = &event {
        // serenity turns a known event whose payload it cannot parse into Unknown; count it so
        // a protocol drift shows up instead of silently losing data.
        pod.metrics.unknown_event(&unknown.kind);
        warn!(pod = %pod.name, kind = %unknown.kind, "dispatch the client library could not parse");
        return;
    }
    let class = classify(&event);
    handle_owned(pod, &class, event).await;
}

/// Handles a dispatch this pod processes: the feature that owns it writes, and the outcome is
/// counted. A feature's error is logged and counted, and the dispatch is acknowledged anyway:
/// retrying an event a feature rejects would only stop the shard's acknowledgements for good.
pub(crate) async fn handle_owned(pod: &Pod, class: &Classified, event: Event) {
    pod.metrics.owned(&class.kind);
    // Debug level: at the default level a span per event costs more than it tells, and nothing
    // on this path logs below `warn`, which names pod, kind and guild itself.
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
