//! Direct messages: ordinal 0 answers a DM with a short help text, at most once per user per
//! UTC day (the store records the day, and the reply is queued under a key naming it).

use serde_json::json;
use serenity::model::channel::Message;

use crate::gateway::features::{snowflake_ms, FeatureError};
use crate::gateway::pod::Pod;
use crate::store::utc_day;
use crate::store::{OutboxMessage, Write};

/// The help text sent in reply to a DM.
pub const HELP_TEXT: &str = "👋 I'm a moderation and community bot. I work inside servers: \
use `/stats`, `/leaderboard` and `/modlog` there, right-click a message → Apps → **Report message** \
to alert the moderators, and ask an admin to run `/setup` to choose the log channels.";

/// Replies to a user's DM once per day; the bot's own messages and other bots are ignored.
pub async fn on_direct_message(pod: &Pod, msg: &Message) -> Result<(), FeatureError> {
    if msg.author.bot {
        return Ok(());
    }
    let user = msg.author.id.get();
    // The day of the message itself, so a replay on another day still maps to the same key.
    let day = utc_day(snowflake_ms(msg.id.get()));
    pod.store
        .apply(Write::DmHelp {
            user_id: user,
            channel_id: msg.channel_id.get(),
            day,
            outbox: vec![OutboxMessage {
                key: format!("dm-help:{user}:{day}"),
                guild_id: None,
                channel_id: msg.channel_id.get(),
                body: json!({ "content": HELP_TEXT }),
            }],
        })
        .await?;
    pod.outbox_wake.notify_one();
    Ok(())
}
