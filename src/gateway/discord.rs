//! The connection to Discord (or the emulator): the REST client and the gateway's layout.
//!
//! The shard connections themselves are in [`crate::gateway::connector`]; this module builds
//! the REST client and asks Discord how the bot's gateway is laid out.

use serenity::http::{Http, HttpBuilder};
use serenity::model::gateway::GatewayIntents;
use tracing::info;

use crate::config::DiscordConfig;

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

/// What the gateway tier needs to know of the bot's gateway before its shards connect.
#[derive(Clone, Debug)]
pub struct GatewayPlan {
    /// Shards of the bot.
    pub shards: u32,
    /// Identifies per 5 s window, bot-wide.
    pub max_concurrency: u32,
    /// The gateway URL to connect to.
    pub url: String,
}

/// Asks `GET /gateway/bot` for the shard count (unless configured), `max_concurrency` and the
/// gateway URL.
pub async fn plan(cfg: &DiscordConfig, rest: &Http) -> Result<GatewayPlan, ConnectError> {
    let bot = rest
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
    Ok(GatewayPlan {
        shards: cfg.shard_count.unwrap_or(bot.shards).max(1),
        max_concurrency: (bot.session_start_limit.max_concurrency as u32).max(1),
        url: bot.url,
    })
}

/// The intents in the shard connections' type.
pub fn shard_intents() -> twilight_gateway::Intents {
    twilight_gateway::Intents::from_bits_truncate(intents().bits())
}
