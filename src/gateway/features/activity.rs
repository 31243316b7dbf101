//! Message activity: every guild message is counted (ids, channel, author, time, length; the
//! content only goes to the short-lived deletion-log cache).

use serenity::model::channel::Message;

use crate::gateway::features::{snowflake_ms, FeatureError};
use crate::gateway::pod::Pod;
use crate::ownership::GuildId;
use crate::store::Write;

/// Records a guild message.
pub async fn on_message(pod: &Pod, guild: GuildId, msg: &Message) -> Result<(), FeatureError> {
    pod.store
        .apply(Write::MessageCreated {
            guild_id: guild,
            channel_id: msg.channel_id.get(),
            message_id: msg.id.get(),
            author_id: msg.author.id.get(),
            author_is_bot: msg.author.bot,
            content: msg.content.clone(),
            created_at_ms: snowflake_ms(msg.id.get()),
            outbox: Vec::new(),
        })
        .await?;
    Ok(())
}
