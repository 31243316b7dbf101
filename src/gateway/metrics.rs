//! The gateway pod's Prometheus metrics. Every series carries the `pod` label (set once on the
//! registry), so one scrape config covers the whole StatefulSet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::commands;
use crate::store::WriterStats;

/// Labels of per-event-type series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The dispatch name (`MESSAGE_CREATE`, ...).
    pub kind: String,
}

/// Labels of delivery series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `local` (this pod processed it) or `peer`.
    pub to: &'static str,
}

/// Labels of REST error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestLabels {
    /// What the pod was doing (`outbox`, `edit_original`, `register_commands`).
    pub call: String,
}

/// Every metric the gateway pod exports.
pub struct Metrics {
    registry: Registry,
    /// Dispatches received, by type.
    pub events_received: Family<EventLabels, Counter>,
    /// Dispatches that passed the ownership filter, by type.
    pub events_owned: Family<EventLabels, Counter>,
    /// Dispatches handled to completion, by type.
    pub events_handled: Family<EventLabels, Counter>,
    /// Dispatches serenity could not map to a known event (`Event::Unknown`), by type.
    pub events_unknown: Family<EventLabels, Counter>,
    /// Dispatches whose handling failed, by type.
    pub events_failed: Family<EventLabels, Counter>,
    /// REST calls to Discord that failed.
    pub rest_errors: Family<RestLabels, Counter>,
    /// Gateway sessions (re)started: READY received.
    pub gateway_ready: Counter,
    /// Gateway sessions resumed: RESUMED received.
    pub gateway_resumed: Counter,
    /// Messages posted by the outbox (mod-log, deletion log, DM help).
    pub outbox_sent: Counter,
    /// Interactions executed for the HTTP service, by command.
    pub interactions: Family<EventLabels, Counter>,
    /// Interactions not run because the caller had given up before they started.
    pub interactions_abandoned: Counter,
    /// Guilds this pod has seen and owns.
    pub guilds_owned: Gauge,
    /// Shard sessions that ended without a resume: the dispatches Discord had not sent yet
    /// are lost (a real gap; should stay 0).
    pub session_gaps: Counter,
    /// Times a shard reader waited because an owner's delivery queue was full.
    pub delivery_queue_full: Counter,
    /// Deliveries to an owner that failed (unreachable, stopping) and were sent again.
    pub delivery_failed: Counter,
    /// Dispatches delivered and acknowledged, by where they went (`local` or `peer`).
    pub events_delivered: Family<DeliveryLabels, Counter>,
    totals: Totals,
}

/// Plain totals for the status report (the families above are per label).
#[derive(Default)]
pub struct Totals {
    /// Dispatches received.
    pub seen: AtomicU64,
    /// Dispatches owned.
    pub owned: AtomicU64,
    /// Dispatches handled.
    pub handled: AtomicU64,
}

impl Metrics {
    /// A registry whose every series has `pod="gateway-<ordinal>"`.
    pub fn new(pod: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "guildshard",
            [("pod".into(), pod.to_owned().into())].into_iter(),
        );
        let m = Metrics {
            events_received: Family::default(),
            events_owned: Family::default(),
            events_handled: Family::default(),
            events_unknown: Family::default(),
            events_failed: Family::default(),
            rest_errors: Family::default(),
            gateway_ready: Counter::default(),
            gateway_resumed: Counter::default(),
            outbox_sent: Counter::default(),
            interactions: Family::default(),
            interactions_abandoned: Counter::default(),
            guilds_owned: Gauge::default(),
            session_gaps: Counter::default(),
            delivery_queue_full: Counter::default(),
            delivery_failed: Counter::default(),
            events_delivered: Family::default(),
            totals: Totals::default(),
            registry: Registry::default(),
        };
        registry.register(
            "gateway_events_received",
            "Dispatches received from Discord",
            m.events_received.clone(),
        );
        registry.register(
            "gateway_events_owned",
            "Dispatches that passed the ownership filter",
            m.events_owned.clone(),
        );
        registry.register(
            "gateway_events_handled",
            "Dispatches handled to completion",
            m.events_handled.clone(),
        );
        registry.register(
            "gateway_events_unknown",
            "Dispatches the client library could not parse",
            m.events_unknown.clone(),
        );
        registry.register(
            "gateway_events_failed",
            "Dispatches whose handling failed",
            m.events_failed.clone(),
        );
        registry.register(
            "rest_errors",
            "Failed REST calls to Discord",
            m.rest_errors.clone(),
        );
        registry.register(
            "gateway_ready",
            "Gateway sessions started (READY)",
            m.gateway_ready.clone(),
        );
        registry.register(
            "gateway_resumed",
            "Gateway sessions resumed (RESUMED)",
            m.gateway_resumed.clone(),
        );
        registry.register(
            "outbox_sent",
            "Messages posted from the outbox",
            m.outbox_sent.clone(),
        );
        registry.register(
            "interactions",
            "Interactions executed, by command",
            m.interactions.clone(),
        );
        registry.register(
            "interactions_abandoned",
            "Interactions not run because the HTTP service had given up on them first",
            m.interactions_abandoned.clone(),
        );
        registry.register(
            "guilds_owned",
            "Guilds seen that this pod owns",
            m.guilds_owned.clone(),
        );
        registry.register(
            "gateway_session_gaps",
            "Shard sessions that could not be resumed: dispatches after the last acknowledged one may be lost",
            m.session_gaps.clone(),
        );
        registry.register(
            "gateway_delivery_queue_full",
            "Times a shard reader waited because an owner's delivery queue was full",
            m.delivery_queue_full.clone(),
        );
        registry.register(
            "gateway_delivery_failed",
            "Deliveries to an owner that failed and were sent again",
            m.delivery_failed.clone(),
        );
        registry.register(
            "gateway_events_delivered",
            "Dispatches delivered to their owner and acknowledged",
            m.events_delivered.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts `n` dispatches acknowledged by their owner (`local`: this pod).
    pub fn delivered(&self, local: bool, n: usize) {
        let to = if local { "local" } else { "peer" };
        self.events_delivered
            .get_or_create(&DeliveryLabels { to })
            .inc_by(n as u64);
    }

    /// Counts a received dispatch.
    pub fn seen(&self, kind: &str) {
        self.totals.seen.fetch_add(1, Ordering::Relaxed);
        self.events_received.get_or_create(&label(kind)).inc();
    }

    /// Counts a dispatch that passed the filter.
    pub fn owned(&self, kind: &str) {
        self.totals.owned.fetch_add(1, Ordering::Relaxed);
        self.events_owned.get_or_create(&label(kind)).inc();
    }

    /// Counts a dispatch handled to completion.
    pub fn handled(&self, kind: &str) {
        self.totals.handled.fetch_add(1, Ordering::Relaxed);
        self.events_handled.get_or_create(&label(kind)).inc();
    }

    /// Counts a command executed for the HTTP service, by name (unknown names as `unknown`).
    pub fn interaction(&self, name: &str) {
        self.interactions.get_or_create(&command_label(name)).inc();
    }

    /// Counts a dispatch the client library could not parse.
    pub fn unknown_event(&self, kind: &str) {
        self.events_unknown.get_or_create(&label(kind)).inc();
    }

    /// Counts a dispatch whose handling failed.
    pub fn failed(&self, kind: &str) {
        self.events_failed.get_or_create(&label(kind)).inc();
    }

    /// Counts a failed REST call.
    pub fn rest_error(&self, call: &str) {
        self.rest_errors
            .get_or_create(&RestLabels {
                call: call.to_owned(),
            })
            .inc();
    }

    /// The plain totals.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The Prometheus text exposition of every metric, plus the store writer's figures.
    pub fn encode(&self, pod: &str, writer: &WriterStats, resharding: &Resharding) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        // The writer and the resharding coordinator keep their own state (they live below
        // this module); render it in the same exposition, before the OpenMetrics end marker.
        let body_end = out.rfind("# EOF").unwrap_or(out.len());
        out.truncate(body_end);
        let _ = encode_writer(&mut out, pod, writer);
        let _ = encode_resharding(&mut out, pod, resharding);
        out.push_str("# EOF\n");
        out
    }
}

/// What the resharding coordinator reports at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Resharding {
    /// Handoff progress.
    pub handoff: crate::wire::HandoffProgress,
    /// Down peers this pod covers.
    pub covering: usize,
    /// Whether the pod still processes a previous topology.
    pub transitioning: bool,
    /// Whether the pod count's source (the Kubernetes API, or the fixed override) answers.
    pub topology_source_up: bool,
    /// The SQLite WAL's size, bytes.
    pub wal_bytes: u64,
    /// Covered peers by where their restored copy stands.
    pub cover_copies: crate::reshard::cover_copy::CopyCounts,
}

fn encode_resharding(out: &mut String, pod: &str, r: &Resharding) -> std::fmt::Result {
    let h = &r.handoff;
    for (name, help, value) in [
        (
            "guildshard_handoff_pulled",
            "Guild copies pulled from peers (imported here, deleted there)",
            h.pulled,
        ),
        (
            "guildshard_handoff_restored",
            "Guilds imported from departed ordinals' Litestream replicas",
            h.restored,
        ),
    ] {
        writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} counter\n{name}_total{{pod=\"{pod}\"}} {value}"
        )?;
    }
    for (name, help, value) in [
        (
            "guildshard_handoff_pending_pull",
            "Guilds this pod owns that peers still hold",
            h.pending_pull,
        ),
        (
            "guildshard_handoff_replicas_pending",
            "Departed ordinals whose replica is still to be restored",
            h.replicas_pending.len() as u64,
        ),
        (
            "guildshard_handoff_failing",
            "1 while the last handoff step failed (see the status report's last error)",
            u64::from(h.last_error.is_some()),
        ),
        (
            "guildshard_covering_peers",
            "Down peers whose guilds this pod processes",
            r.covering as u64,
        ),
        (
            "guildshard_topology_transitioning",
            "1 while the pod still processes its previous topology's guilds",
            u64::from(r.transitioning),
        ),
        (
            "guildshard_topology_source_up",
            "0 while the Kubernetes API cannot be reached: the pod keeps the last pod count it knew",
            u64::from(r.topology_source_up),
        ),
        (
            "guildshard_store_wal_bytes",
            "Size of the SQLite WAL; only Litestream checkpoints it, so it grows while the sidecar is down",
            r.wal_bytes,
        ),
    ] {
        writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} gauge\n{name}{{pod=\"{pod}\"}} {value}"
        )?;
    }
    let c = &r.cover_copies;
    writeln!(
        out,
        "# HELP guildshard_cover_copies Covered peers by their restored copy (settings, message cache): pulling, ready, or without one (posts for their guilds may be missing).\n# TYPE guildshard_cover_copies gauge"
    )?;
    for (state, value) in [
        ("pulling", c.pulling),
        ("ready", c.ready),
        ("without", c.without),
    ] {
        writeln!(
            out,
            "guildshard_cover_copies{{pod=\"{pod}\",state=\"{state}\"}} {value}"
        )?;
    }
    Ok(())
}

fn encode_writer(out: &mut String, pod: &str, w: &WriterStats) -> std::fmt::Result {
    let counters = [
        (
            "guildshard_writer_commits",
            "Writer transactions committed",
            w.commits,
        ),
        (
            "guildshard_writer_commit_failures",
            "Writer transactions that failed",
            w.commit_failures,
        ),
        ("guildshard_writer_writes", "Writes applied", w.writes),
        (
            "guildshard_writer_failed_writes",
            "Writes that failed",
            w.failed_writes,
        ),
    ];
    for (name, help, value) in counters {
        writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} counter\n{name}_total{{pod=\"{pod}\"}} {value}"
        )?;
    }
    writeln!(out, "# HELP guildshard_writer_queue_depth Writes waiting for the writer.\n# TYPE guildshard_writer_queue_depth gauge\nguildshard_writer_queue_depth{{pod=\"{pod}\"}} {}", w.queue_depth)?;
    let histograms = [
        (
            "guildshard_writer_batch_size",
            "Writes per writer transaction",
            &w.batch_size_buckets,
            None,
        ),
        (
            "guildshard_writer_commit_seconds",
            "Time to commit one writer transaction",
            &w.commit_seconds_buckets,
            Some(w.commit_seconds_sum),
        ),
    ];
    for (name, help, buckets, sum) in histograms {
        writeln!(out, "# HELP {name} {help}.\n# TYPE {name} histogram")?;
        for (le, count) in buckets.iter() {
            writeln!(out, "{name}_bucket{{le=\"{le}\",pod=\"{pod}\"}} {count}")?;
        }
        writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\",pod=\"{pod}\"}} {}",
            w.batches()
        )?;
        writeln!(out, "{name}_count{{pod=\"{pod}\"}} {}", w.batches())?;
        if let Some(sum) = sum {
            writeln!(out, "{name}_sum{{pod=\"{pod}\"}} {sum}")?;
        }
    }
    Ok(())
}

/// The label for a dispatch name: Discord's documented names (and our `OTHER`) as they are,
/// anything else `unknown`. The name comes off the wire, and every distinct label value is a
/// series kept for the life of the process.
fn label(kind: &str) -> EventLabels {
    let kind = if DISPATCH_NAMES.contains(&kind) {
        kind
    } else {
        UNKNOWN
    };
    EventLabels {
        kind: kind.to_owned(),
    }
}

/// The label for a command name: the bot's commands as they are, anything else `unknown`
/// (the name is whatever the interaction says).
fn command_label(name: &str) -> EventLabels {
    let known = [
        commands::STATS,
        commands::LEADERBOARD,
        commands::MODLOG,
        commands::SETUP,
        commands::REPORT_MESSAGE,
    ];
    EventLabels {
        kind: if known.contains(&name) { name } else { UNKNOWN }.to_owned(),
    }
}

/// The label value for names outside the known set.
const UNKNOWN: &str = "unknown";

/// Discord's gateway dispatch names (its "Receive Events" list), plus `OTHER`, under which
/// `classify` counts events this bot does not look at.
const DISPATCH_NAMES: &[&str] = &[
    "OTHER",
    "READY",
    "RESUMED",
    "APPLICATION_COMMAND_PERMISSIONS_UPDATE",
    "AUTO_MODERATION_RULE_CREATE",
    "AUTO_MODERATION_RULE_UPDATE",
    "AUTO_MODERATION_RULE_DELETE",
    "AUTO_MODERATION_ACTION_EXECUTION",
    "CHANNEL_CREATE",
    "CHANNEL_UPDATE",
    "CHANNEL_DELETE",
    "CHANNEL_PINS_UPDATE",
    "THREAD_CREATE",
    "THREAD_UPDATE",
    "THREAD_DELETE",
    "THREAD_LIST_SYNC",
    "THREAD_MEMBER_UPDATE",
    "THREAD_MEMBERS_UPDATE",
    "ENTITLEMENT_CREATE",
    "ENTITLEMENT_UPDATE",
    "ENTITLEMENT_DELETE",
    "GUILD_CREATE",
    "GUILD_UPDATE",
    "GUILD_DELETE",
    "GUILD_AUDIT_LOG_ENTRY_CREATE",
    "GUILD_BAN_ADD",
    "GUILD_BAN_REMOVE",
    "GUILD_EMOJIS_UPDATE",
    "GUILD_STICKERS_UPDATE",
    "GUILD_INTEGRATIONS_UPDATE",
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_MEMBER_UPDATE",
    "GUILD_MEMBERS_CHUNK",
    "GUILD_ROLE_CREATE",
    "GUILD_ROLE_UPDATE",
    "GUILD_ROLE_DELETE",
    "GUILD_SCHEDULED_EVENT_CREATE",
    "GUILD_SCHEDULED_EVENT_UPDATE",
    "GUILD_SCHEDULED_EVENT_DELETE",
    "GUILD_SCHEDULED_EVENT_USER_ADD",
    "GUILD_SCHEDULED_EVENT_USER_REMOVE",
    "GUILD_SOUNDBOARD_SOUND_CREATE",
    "GUILD_SOUNDBOARD_SOUND_UPDATE",
    "GUILD_SOUNDBOARD_SOUND_DELETE",
    "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    "SOUNDBOARD_SOUNDS",
    "INTEGRATION_CREATE",
    "INTEGRATION_UPDATE",
    "INTEGRATION_DELETE",
    "INTERACTION_CREATE",
    "INVITE_CREATE",
    "INVITE_DELETE",
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "MESSAGE_DELETE_BULK",
    "MESSAGE_REACTION_ADD",
    "MESSAGE_REACTION_REMOVE",
    "MESSAGE_REACTION_REMOVE_ALL",
    "MESSAGE_REACTION_REMOVE_EMOJI",
    "MESSAGE_POLL_VOTE_ADD",
    "MESSAGE_POLL_VOTE_REMOVE",
    "PRESENCE_UPDATE",
    "STAGE_INSTANCE_CREATE",
    "STAGE_INSTANCE_UPDATE",
    "STAGE_INSTANCE_DELETE",
    "SUBSCRIPTION_CREATE",
    "SUBSCRIPTION_UPDATE",
    "SUBSCRIPTION_DELETE",
    "TYPING_START",
    "USER_UPDATE",
    "VOICE_CHANNEL_EFFECT_SEND",
    "VOICE_STATE_UPDATE",
    "VOICE_SERVER_UPDATE",
    "WEBHOOKS_UPDATE",
];

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn names_from_the_wire_map_to_a_bounded_set() {
        let metrics = Metrics::new("gateway-0");
        let long = "x".repeat(5000);
        for name in [long.as_str(), "stats ", "STATS", "", "drop table"] {
            metrics.interaction(name);
        }
        metrics.interaction("stats");
        metrics.interaction("Report message");
        for kind in [long.as_str(), "NOT_A_DISPATCH", "message_create"] {
            metrics.seen(kind);
            metrics.unknown_event(kind);
            metrics.failed(kind);
        }
        metrics.seen("MESSAGE_CREATE");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encode");
        assert!(!text.contains("xxxx"), "a long name became a label");
        assert!(!text.contains("NOT_A_DISPATCH") && !text.contains("drop table"));
        assert!(text.contains(r#"kind="unknown""#), "{text}");
        assert!(text.contains(r#"kind="stats""#), "{text}");
        assert!(text.contains(r#"kind="Report message""#), "{text}");
        assert!(text.contains(r#"kind="MESSAGE_CREATE""#), "{text}");
    }
}
