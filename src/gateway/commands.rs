//! Executes the bot's commands for the guilds this pod owns, on behalf of the HTTP service
//! (`POST /internal/v1/interactions`), and keeps Discord's deadline.
//!
//! The HTTP service passes how long it may wait. If the command finishes in time its response
//! is returned; otherwise the pod answers "deferred" at the deadline (the HTTP service then sends
//! Discord a type 5 response) and, when the work is done, edits the original response itself.
//! Exactly one of the two paths delivers the answer, so the user never sees two replies.
//!
//! The deadline counts from when the request reached this pod's listener, so the pod answers
//! (or defers) before the HTTP service's call times out, however long the request waited
//! first. A command the caller gave up on before it started is not started: the HTTP service
//! has told that user "restarting, try again", and running it as well would make their retry
//! run a report or `/setup` twice. (The other choice, deferring on every timeout and letting
//! the pod finish, leaves the user with a reply that never comes whenever the pod is really
//! stuck.) A command already running when its caller gives up finishes, and edits the
//! original response with its result; no store write is ever cut in half.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use serenity::model::application::{
    CommandDataOption, CommandDataOptionValue, CommandInteraction, CommandType,
};
use tracing::{info, warn, Instrument};

use crate::commands::{self, permissions};
use crate::gateway::features::deletion_log::log_body;
use crate::gateway::features::{excerpt, now_ms, snowflake_ms};
use crate::gateway::pod::Pod;
use crate::gateway::reads;
use crate::ownership::GuildId;
use crate::store::{OutboxMessage, Write};
use crate::wire::InteractionOutcome;

/// Interaction response type: a message.
const CHANNEL_MESSAGE: u8 = 4;
/// Message flag: only the invoking user sees it.
const EPHEMERAL: u64 = 1 << 6;
const DAY_MS: u64 = 86_400_000;

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
}

/// A command's answer: the message data and whether only the invoker sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// `content` and friends, as in an interaction response's `data`.
    pub data: Value,
    /// Whether the answer is ephemeral.
    pub ephemeral: bool,
}

impl Reply {
    fn public(content: String) -> Self {
        Reply {
            data: json!({ "content": content, "allowed_mentions": { "parse": [] } }),
            ephemeral: false,
        }
    }

    fn private(content: String) -> Self {
        Reply {
            data: json!({ "content": content, "allowed_mentions": { "parse": [] }, "flags": EPHEMERAL }),
            ephemeral: true,
        }
    }

    /// An ephemeral answer with plain text.
    pub fn private_text(text: &str) -> Self {
        Reply::private(text.to_owned())
    }

    /// The interaction response object (type 4).
    pub fn into_response(self) -> Value {
        json!({ "type": CHANNEL_MESSAGE, "data": self.data })
    }
}

/// Whether a command answers privately (known before it runs, for a deferred response).
pub fn is_ephemeral(interaction: &CommandInteraction) -> bool {
    interaction.data.name != commands::STATS && interaction.data.name != commands::LEADERBOARD
}

/// The deadline had passed before the command could start, so it was not run.
#[derive(Debug, thiserror::Error)]
#[error("the deadline passed before the command started; it was not run")]
pub struct TooLate;

/// What the caller of [`execute_within`] has done, as the worker sees it before starting.
const CALLER_WAITING: u8 = 0;
/// The caller was answered "deferred": the worker must edit the original response.
const CALLER_DEFERRED: u8 = 1;
/// The caller went away before any answer (its request was cancelled): do not start.
const CALLER_GONE: u8 = 2;

/// Marks the caller gone when [`execute_within`]'s future is dropped before it answered
/// (hyper drops it when the HTTP service closes the connection on its timeout).
struct CallerGuard(Arc<AtomicU8>);

impl Drop for CallerGuard {
    fn drop(&mut self) {
        let _ = self.0.compare_exchange(
            CALLER_WAITING,
            CALLER_GONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Runs a command, answering by `deadline` or deferring (see the module docs).
///
/// # Errors
/// [`TooLate`] when `deadline` has already passed: nothing is run.
pub async fn execute_within(
    pod: Arc<Pod>,
    interaction: CommandInteraction,
    deadline: Instant,
) -> Result<InteractionOutcome, TooLate> {
    if Instant::now() >= deadline {
        return Err(TooLate);
    }
    let ephemeral = is_ephemeral(&interaction);
    let token = interaction.token.clone();
    let name = interaction.data.name.clone();
    let span = tracing::info_span!(
        "interaction",
        command = %name,
        guild_id = interaction.guild_id.map(|g| g.get()),
        interaction_id = interaction.id.get(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<Reply>();
    let caller = Arc::new(AtomicU8::new(CALLER_WAITING));
    let guard = CallerGuard(caller.clone());
    let worker_pod = pod.clone();
    // The work runs as its own tracked task so that it finishes (and edits the original
    // response) even after the deadline answered, and so that shutdown waits for it.
    pod.inflight.spawn(
        async move {
            // FAULT_COMMAND_DELAY_MS: a command that is slow to start.
            if !worker_pod.command_delay.is_zero() {
                tokio::time::sleep(worker_pod.command_delay).await;
            }
            if caller.load(Ordering::Acquire) == CALLER_GONE {
                worker_pod.metrics.interactions_abandoned.inc();
                info!("the caller gave up before the command started; not running it");
                return;
            }
            let reply = run(&worker_pod, &interaction).await;
            if let Err(reply) = tx.send(reply) {
                // The caller answered "deferred", or went away after the command started:
                // either way the original response is where the user looks.
                edit_original(&worker_pod, &token, reply).await;
            }
        }
        .instrument(span),
    );
    let outcome = tokio::select! {
        reply = rx => match reply {
            Ok(reply) => InteractionOutcome::Respond { response: reply.into_response() },
            // The worker panicked; answer rather than leave the user waiting.
            Err(_) => InteractionOutcome::Respond {
                response: Reply::private("Something went wrong running that command.".into()).into_response(),
            },
        },
        () = tokio::time::sleep_until(deadline.into()) => {
            // Recorded before answering, so the worker edits even if this answer is the
            // last thing the caller hears.
            guard.0.store(CALLER_DEFERRED, Ordering::Release);
            info!(command = %name, "command slower than the deadline; deferring");
            InteractionOutcome::Deferred { ephemeral }
        }
    };
    drop(guard);
    Ok(outcome)
}

async fn edit_original(pod: &Pod, token: &str, reply: Reply) {
    if let Err(err) = pod
        .rest
        .edit_original_interaction_response(token, &reply.data, vec![])
        .await
    {
        pod.metrics.rest_error("edit_original");
        pod.record_error(format!("editing a deferred response: {err}"));
        warn!(cause = %err, "could not edit the deferred response");
    }
}

async fn run(pod: &Pod, interaction: &CommandInteraction) -> Reply {
    pod.metrics.interaction(&interaction.data.name);
    match dispatch(pod, interaction).await {
        Ok(reply) => reply,
        Err(err) => {
            pod.record_error(&err);
            warn!(cause = %err, "command failed");
            Reply::private("Something went wrong running that command; please try again.".into())
        }
    }
}

async fn dispatch(pod: &Pod, i: &CommandInteraction) -> Result<Reply, CommandError> {
    let Some(guild) = i.guild_id.map(|g| GuildId(g.get())) else {
        return Ok(Reply::private("This command works inside a server.".into()));
    };
    let name = i.data.name.as_str();
    match (i.data.kind, name) {
        (CommandType::ChatInput, commands::STATS) => stats(pod, guild, i).await,
        (CommandType::ChatInput, commands::LEADERBOARD) => leaderboard(pod, guild, i).await,
        (CommandType::ChatInput, commands::MODLOG) => modlog(pod, guild, i).await,
        (CommandType::ChatInput, commands::SETUP) => setup(pod, guild, i).await,
        (CommandType::Message, commands::REPORT_MESSAGE) => report(pod, guild, i).await,
        _ => Ok(Reply::private(format!(
            "I don't know the command `{name}`. It may have been removed; try again in a minute."
        ))),
    }
}

/// The permission bits of the invoking member (Discord computes them, including overwrites).
fn member_permissions(i: &CommandInteraction) -> u64 {
    i.member
        .as_ref()
        .and_then(|m| m.permissions)
        .map_or(0, |p| p.bits())
}

fn has_any(i: &CommandInteraction, bits: u64) -> bool {
    let p = member_permissions(i);
    p & permissions::ADMINISTRATOR != 0 || p & bits != 0
}

fn option<'a>(options: &'a [CommandDataOption], name: &str) -> Option<&'a CommandDataOptionValue> {
    options.iter().find(|o| o.name == name).map(|o| &o.value)
}

fn days_option(options: &[CommandDataOption], default: u64, max: u64) -> u64 {
    match option(options, "days") {
        Some(CommandDataOptionValue::Integer(d)) => u64::try_from(*d).unwrap_or(1).clamp(1, max),
        _ => default,
    }
}

async fn stats(pod: &Pod, guild: GuildId, i: &CommandInteraction) -> Result<Reply, CommandError> {
    let (sub, sub_options) = match i.data.options.first() {
        Some(CommandDataOption {
            name,
            value: CommandDataOptionValue::SubCommand(opts),
            ..
        }) => (name.as_str(), opts.as_slice()),
        _ => ("user", &[][..]),
    };
    if sub == "server" {
        let days = days_option(sub_options, 7, 90);
        let since = now_ms().saturating_sub(days * DAY_MS);
        let rows = reads::history(pod, guild)
            .server_stats(guild, since)
            .await?;
        let (messages, joined, left) = rows.iter().fold((0, 0, 0), |(m, j, l), r| {
            (m + r.messages, j + r.joined, l + r.left)
        });
        let mut text = format!(
            "📊 **Server activity, last {days} days**: {messages} messages, {joined} joined, {left} left"
        );
        for r in rows.iter().rev().take(14) {
            text.push_str(&format!(
                "\n`{}` {} messages, +{} / -{}",
                r.date, r.messages, r.joined, r.left
            ));
        }
        return Ok(Reply::public(text));
    }
    let user = match option(sub_options, "user") {
        Some(CommandDataOptionValue::User(u)) => u.get(),
        _ => i.user.id.get(),
    };
    let since = now_ms().saturating_sub(30 * DAY_MS);
    let s = reads::history(pod, guild)
        .user_stats(guild, user, since)
        .await?;
    let text = if s.messages == 0 {
        format!("📊 <@{user}> has sent no messages here in the last 30 days.")
    } else {
        format!(
            "📊 <@{user}>, last 30 days: **{}** messages in {} channels (first <t:{}:R>, last <t:{}:R>)",
            s.messages,
            s.channels,
            s.first_message_ms.unwrap_or_default() / 1000,
            s.last_message_ms.unwrap_or_default() / 1000
        )
    };
    Ok(Reply::public(text))
}

async fn leaderboard(
    pod: &Pod,
    guild: GuildId,
    i: &CommandInteraction,
) -> Result<Reply, CommandError> {
    let days = days_option(&i.data.options, 7, 365);
    let rows = reads::history(pod, guild)
        .leaderboard(guild, now_ms().saturating_sub(days * DAY_MS), 10)
        .await?;
    if rows.is_empty() {
        return Ok(Reply::public(format!(
            "🏆 No messages in the last {days} days yet."
        )));
    }
    let mut text = format!("🏆 **Most active, last {days} days**");
    for (rank, (user, count)) in rows.iter().enumerate() {
        text.push_str(&format!("\n{}. <@{user}> — {count} messages", rank + 1));
    }
    Ok(Reply::public(text))
}

async fn modlog(pod: &Pod, guild: GuildId, i: &CommandInteraction) -> Result<Reply, CommandError> {
    if !has_any(i, permissions::MODERATE_MEMBERS | permissions::MANAGE_GUILD) {
        return Ok(Reply::private(
            "You need the Moderate Members permission to read the mod log.".into(),
        ));
    }
    let Some(CommandDataOptionValue::User(user)) = option(&i.data.options, "user") else {
        return Ok(Reply::private("Please choose a member.".into()));
    };
    let user = user.get();
    let log = reads::history(pod, guild).modlog(guild, user, 10).await?;
    let mut text = format!(
        "📁 <@{user}>: **{}** reports, **{}** mod actions",
        log.report_count,
        log.actions.len()
    );
    for r in &log.reports {
        text.push_str(&format!(
            "\n🚩 <t:{}:d> by <@{}>: {}",
            r.at_ms / 1000,
            r.reporter_id,
            excerpt(&r.content_excerpt, 80)
        ));
    }
    for a in &log.actions {
        text.push_str(&format!(
            "\n{}",
            crate::gateway::features::modlog::describe(
                &a.kind,
                user,
                a.executor_id,
                a.reason.as_deref()
            )
        ));
    }
    Ok(Reply::private(text))
}

async fn setup(pod: &Pod, guild: GuildId, i: &CommandInteraction) -> Result<Reply, CommandError> {
    if !has_any(i, permissions::MANAGE_GUILD) {
        return Ok(Reply::private(
            "You need the Manage Server permission to run /setup.".into(),
        ));
    }
    let channel = |name| match option(&i.data.options, name) {
        Some(CommandDataOptionValue::Channel(c)) => Some(c.get()),
        _ => None,
    };
    let (mod_log, deletion_log) = (channel("mod-log"), channel("deletion-log"));
    if mod_log.is_none() && deletion_log.is_none() {
        let s = reads::settings(pod, guild).await?;
        return Ok(Reply::private(format!(
            "Current setup: mod-log {}, deletion-log {}. Pass a channel to change one.",
            mention_channel(s.mod_log_channel),
            mention_channel(s.deletion_log_channel)
        )));
    }
    pod.store
        .apply(Write::Setup {
            guild_id: guild,
            interaction_id: i.id.get(),
            mod_log_channel: mod_log,
            deletion_log_channel: deletion_log,
            outbox: Vec::new(),
        })
        .await?;
    let s = reads::settings(pod, guild).await?;
    Ok(Reply::private(format!(
        "✅ Saved. Mod-log: {}, deletion-log: {}.",
        mention_channel(s.mod_log_channel),
        mention_channel(s.deletion_log_channel)
    )))
}

fn mention_channel(channel: Option<u64>) -> String {
    channel.map_or_else(|| "not set".to_owned(), |c| format!("<#{c}>"))
}

async fn report(pod: &Pod, guild: GuildId, i: &CommandInteraction) -> Result<Reply, CommandError> {
    let target = i.data.target_id.map(|t| t.get());
    let message = target.and_then(|t| {
        i.data
            .resolved
            .messages
            .iter()
            .find(|(id, _)| id.get() == t)
            .map(|(_, m)| m)
    });
    let Some(message) = message else {
        return Ok(Reply::private(
            "I couldn't see that message; please try again.".into(),
        ));
    };
    let reporter = i.user.id.get();
    let reported = message.author.id.get();
    if reporter == reported {
        return Ok(Reply::private("You can't report your own message.".into()));
    }
    let content_excerpt = excerpt(&message.content, 300);
    let settings = reads::settings(pod, guild).await?;
    // The post names the report's number, so count before writing; the store enqueues the post
    // only with the first report of this message by this reporter, so a repeat posts nothing.
    let before = reads::history(pod, guild)
        .modlog(guild, reported, 0)
        .await?
        .report_count;
    let outbox = settings
        .mod_log_channel
        .map(|mod_log| OutboxMessage {
            key: format!("report:{guild}:{}:{reporter}", message.id.get()),
            guild_id: Some(guild),
            channel_id: mod_log,
            body: log_body(format!(
                "🚩 **Report** #{} against <@{reported}> by <@{reporter}> in <#{}>:\n>>> {}\nhttps://discord.com/channels/{guild}/{}/{}",
                before + 1,
                message.channel_id.get(),
                content_excerpt,
                message.channel_id.get(),
                message.id.get()
            )),
        })
        .into_iter()
        .collect();
    let applied = pod
        .store
        .apply(Write::Report {
            guild_id: guild,
            interaction_id: i.id.get(),
            reporter_id: reporter,
            channel_id: message.channel_id.get(),
            message_id: message.id.get(),
            reported_user_id: reported,
            content_excerpt,
            at_ms: snowflake_ms(i.id.get()),
            outbox,
        })
        .await?;
    if applied.outbox_enqueued > 0 {
        pod.outbox_wake.notify_one();
    }
    if settings.mod_log_channel.is_none() {
        return Ok(Reply::private(
            "Report recorded. This server has no mod-log channel yet, so no moderator was \
             notified; an admin can choose one with /setup."
                .into(),
        ));
    }
    Ok(Reply::private(
        "Thanks, the moderators have been notified.".into(),
    ))
}
