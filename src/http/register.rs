//! Registers the bot's command set with Discord by bulk overwrite
//! (`PUT /applications/{id}/commands` with [`crate::commands::definitions`]). Discord replaces
//! the whole set and keeps the ids of commands that did not change, so running it again is a
//! no-op: safe at every start and from `guildshard register-commands`.

use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::DiscordConfig;

/// Discord's REST base (API v10).
pub const DISCORD_API: &str = "https://discord.com/api/v10";

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The request could not be made.
    #[error("request to discord failed")]
    Http(#[from] reqwest::Error),
    /// Discord refused it.
    #[error("discord answered {status} to {call}: {body}")]
    Refused {
        /// Which call.
        call: &'static str,
        /// The status.
        status: StatusCode,
        /// Discord's error body (never contains the token).
        body: String,
    },
}

/// The REST base for `cfg`: real Discord, or the emulator's `/api/v10`.
pub fn api_base(cfg: &DiscordConfig) -> String {
    match &cfg.api_base {
        Some(base) => format!("{base}/api/v10"),
        None => DISCORD_API.to_owned(),
    }
}

#[derive(Deserialize)]
struct Application {
    id: String,
}

async fn checked(
    call: &'static str,
    response: reqwest::Response,
) -> Result<reqwest::Response, RegisterError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(RegisterError::Refused { call, status, body })
}

/// Overwrites the application's global commands with the full set; returns how many Discord
/// now has. Learns the application id from `GET /oauth2/applications/@me` when unset.
///
/// # Errors
/// [`RegisterError`] when Discord cannot be reached or refuses.
pub async fn register_commands(cfg: &DiscordConfig) -> Result<usize, RegisterError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let base = api_base(cfg);
    let auth = format!("Bot {}", cfg.token.expose());
    let application_id = match cfg.application_id {
        Some(id) => id.to_string(),
        None => {
            let response = client
                .get(format!("{base}/oauth2/applications/@me"))
                .header(reqwest::header::AUTHORIZATION, &auth)
                .send()
                .await?;
            checked("get application", response)
                .await?
                .json::<Application>()
                .await?
                .id
        }
    };
    let response = client
        .put(format!("{base}/applications/{application_id}/commands"))
        .header(reqwest::header::AUTHORIZATION, &auth)
        .json(&crate::commands::definitions())
        .send()
        .await?;
    let registered: Vec<serde_json::Value> = checked("bulk overwrite commands", response)
        .await?
        .json()
        .await?;
    Ok(registered.len())
}
