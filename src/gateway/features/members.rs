//! Member joins and leaves, counted per day for `/stats server`.

use serenity::model::event::GuildMemberRemoveEvent;
use serenity::model::guild::Member;

use crate::gateway::features::{now_ms, timestamp_ms, FeatureError};
use crate::gateway::pod::Pod;
use crate::ownership::GuildId;
use crate::store::Write;

/// Records a join, keyed by (guild, user, joined_at) so a replay counts once.
pub async fn on_join(pod: &Pod, member: &Member) -> Result<(), FeatureError> {
    let joined_at_ms = member.joined_at.as_ref().map_or_else(now_ms, timestamp_ms);
    pod.store
        .apply(Write::MemberJoined {
            guild_id: GuildId(member.guild_id.get()),
            user_id: member.user.id.get(),
            joined_at_ms,
            outbox: Vec::new(),
        })
        .await?;
    Ok(())
}

/// Records a leave: it closes the user's open membership, so a replay changes nothing.
pub async fn on_leave(pod: &Pod, event: &GuildMemberRemoveEvent) -> Result<(), FeatureError> {
    pod.store
        .apply(Write::MemberLeft {
            guild_id: GuildId(event.guild_id.get()),
            user_id: event.user.id.get(),
            left_at_ms: now_ms(),
            outbox: Vec::new(),
        })
        .await?;
    Ok(())
}
