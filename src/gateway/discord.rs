//! The connection to Discord (or the emulator): REST client and gateway shards.
//!
//! Ownership by md5 is independent of Discord's own routing (`(guild_id >> 22) % S`), so every
//! pod runs all S shards and filters (DESIGN §6). Each shard gets its own serenity `Client`
//! started with `start_shard`: serenity 0.12's shard queuer waits a fixed 5 s between shards and
//! ignores `max_concurrency`, so the pod starts them itself, `max_concurrency` at a time.

use std::sync::Arc;
use std::time::Duration;

use serenity::client::ClientBuilder;
use serenity::gateway::ShardManager;
use serenity::http::{Http, HttpBuilder};
use serenity::model::gateway::GatewayIntents;
use serenity::model::id::ShardId;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::DiscordConfig;
use crate::gateway::handler::Handler;
use crate::gateway::pod::Pod;

/// Discord's identify window: `max_concurrency` identifies per 5 seconds.
const IDENTIFY_WINDOW: Duration = Duration::from_secs(5);
/// A close code other than 1000/1001 keeps the session resumable (Discord, gateway docs).
const RESUMABLE_CLOSE: u16 = 4000;

/// The gateway intents the bot's features need.
pub fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MEMBERS
        | GatewayIntents::GUILD_MODERATION
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
}

/// The HTTP transport every REST client of the pod shares: one connection pool and one TLS
/// configuration (root certificates included) per process, not one per shard.
///
/// # Errors
/// The TLS backend failing to initialise.
pub fn transport() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().use_rustls_tls().build()
}

/// A REST client for real Discord, or for the emulator when `api_base` is set.
pub fn rest_client(cfg: &DiscordConfig, transport: reqwest::Client) -> Http {
    let mut builder = HttpBuilder::new(cfg.token.expose()).client(transport);
    if let Some(base) = &cfg.api_base {
        // serenity only honours the proxy with its rate limiter off (it builds rate-limited
        // requests without the proxy); the emulator does not rate-limit by default.
        builder = builder.proxy(base.clone()).ratelimiter_disabled(true);
    }
    if let Some(app) = cfg.application_id {
        builder = builder.application_id(app.into());
    }
    builder.build()
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A REST call failed.
    #[error("discord {call}")]
    Rest {
        /// Which call.
        call: &'static str,
        /// The client library's error.
        source: serenity::Error,
    },
}

/// Learns the application id (needed to edit interaction responses) when not configured.
pub async fn ensure_application_id(rest: &Http) -> Result<(), ConnectError> {
    if rest.application_id().is_none() {
        let app = rest
            .get_current_application_info()
            .await
            .map_err(|source| ConnectError::Rest {
                call: "get application",
                source,
            })?;
        rest.set_application_id(app.id);
    }
    Ok(())
}

/// The running shards.
pub struct Shards {
    running: Vec<(u32, Arc<ShardManager>, JoinHandle<()>)>,
}

/// Starts every shard, `max_concurrency` at a time.
pub async fn start(
    cfg: &DiscordConfig,
    pod: Arc<Pod>,
    transport: reqwest::Client,
) -> Result<Shards, ConnectError> {
    let (total, max_concurrency) = match cfg.shard_count {
        Some(n) => (n, 1),
        None => {
            let bot = pod
                .rest
                .get_bot_gateway()
                .await
                .map_err(|source| ConnectError::Rest {
                    call: "get gateway/bot",
                    source,
                })?;
            info!(
                shards = bot.shards,
                remaining = bot.session_start_limit.remaining,
                max_concurrency = bot.session_start_limit.max_concurrency,
                "identify budget"
            );
            (
                bot.shards.max(1),
                bot.session_start_limit.max_concurrency.max(1) as u32,
            )
        }
    };
    pod.sessions.expect(total);
    let mut running = Vec::new();
    for id in 0..total {
        if id > 0 && id % max_concurrency == 0 {
            tokio::time::sleep(IDENTIFY_WINDOW).await;
        }
        // `new_with_http` keeps the proxy; `Client::builder(token)` would build a fresh Http.
        let mut client =
            ClientBuilder::new_with_http(rest_client(cfg, transport.clone()), intents())
                .raw_event_handler(Handler::new(pod.clone()))
                .await
                .map_err(|source| ConnectError::Rest {
                    call: "get gateway",
                    source,
                })?;
        let manager = client.shard_manager.clone();
        let task = tokio::spawn(async move {
            if let Err(err) = client.start_shard(id, total).await {
                // Fatal for this shard (e.g. an invalid token): the pod stays up, unready.
                warn!(shard = id, cause = %err, "gateway shard stopped");
            }
        });
        running.push((id, manager, task));
    }
    info!(shards = total, "gateway shards started");
    Ok(Shards { running })
}

impl Shards {
    /// Closes every shard with a resumable close code and stops its task, all at once: serenity
    /// waits up to 5 s for each shard to confirm, so one after another a pod running 100 shards
    /// could take minutes and outlast its termination grace period.
    pub async fn close(self) {
        futures::future::join_all(
            self.running
                .into_iter()
                .map(|(id, manager, task)| async move {
                    manager.shutdown(ShardId(id), RESUMABLE_CLOSE).await;
                    task.abort();
                }),
        )
        .await;
    }
}
