//! The bot's application commands as Discord sees them: names, options, default permissions.
//!
//! Level 0: pure data. Gateway pods execute these commands; ordinal 0 and `guildshard
//! register-commands` register them with one bulk overwrite (`PUT /applications/{id}/commands`),
//! which is idempotent, so registering on every start is safe.

use serde_json::{json, Value};

/// `/stats user [user]` and `/stats server [days]`.
pub const STATS: &str = "stats";
/// `/leaderboard [days]`.
pub const LEADERBOARD: &str = "leaderboard";
/// `/modlog user:`.
pub const MODLOG: &str = "modlog";
/// `/setup mod-log:#channel deletion-log:#channel`.
pub const SETUP: &str = "setup";
/// The message context-menu command.
pub const REPORT_MESSAGE: &str = "Report message";

/// Discord permission bits used by the commands.
pub mod permissions {
    /// ADMINISTRATOR.
    pub const ADMINISTRATOR: u64 = 1 << 3;
    /// MANAGE_GUILD.
    pub const MANAGE_GUILD: u64 = 1 << 5;
    /// MODERATE_MEMBERS (time out members).
    pub const MODERATE_MEMBERS: u64 = 1 << 40;
}

// Discord's application command and option type numbers.
const CHAT_INPUT: u8 = 1;
const MESSAGE: u8 = 3;
const SUB_COMMAND: u8 = 1;
const INTEGER: u8 = 4;
const USER: u8 = 6;
const CHANNEL: u8 = 7;
const GUILD_TEXT: u8 = 0;
// Interaction contexts: guilds only (0); these commands make no sense in DMs.
const GUILD_CONTEXT: u8 = 0;

/// The full command set, in the form `PUT /applications/{id}/commands` takes.
pub fn definitions() -> Vec<Value> {
    vec![
        json!({
            "name": STATS, "type": CHAT_INPUT, "contexts": [GUILD_CONTEXT],
            "description": "Message activity of a member or of the whole server",
            "options": [
                { "type": SUB_COMMAND, "name": "user", "description": "A member's activity",
                  "options": [{ "type": USER, "name": "user", "description": "Whose activity (default: you)", "required": false }] },
                { "type": SUB_COMMAND, "name": "server", "description": "Messages, joins and leaves per day",
                  "options": [{ "type": INTEGER, "name": "days", "description": "How many days back (default 7)", "required": false, "min_value": 1, "max_value": 90 }] }
            ]
        }),
        json!({
            "name": LEADERBOARD, "type": CHAT_INPUT, "contexts": [GUILD_CONTEXT],
            "description": "The most active members",
            "options": [{ "type": INTEGER, "name": "days", "description": "How many days back (default 7)", "required": false, "min_value": 1, "max_value": 365 }]
        }),
        json!({
            "name": MODLOG, "type": CHAT_INPUT, "contexts": [GUILD_CONTEXT],
            "description": "A member's reports and moderation history",
            "default_member_permissions": permissions::MODERATE_MEMBERS.to_string(),
            "options": [{ "type": USER, "name": "user", "description": "The member", "required": true }]
        }),
        json!({
            "name": SETUP, "type": CHAT_INPUT, "contexts": [GUILD_CONTEXT],
            "description": "Choose the mod-log and deletion-log channels",
            "default_member_permissions": permissions::MANAGE_GUILD.to_string(),
            "options": [
                { "type": CHANNEL, "name": "mod-log", "description": "Where reports and mod actions are posted", "required": false, "channel_types": [GUILD_TEXT] },
                { "type": CHANNEL, "name": "deletion-log", "description": "Where deleted messages are posted", "required": false, "channel_types": [GUILD_TEXT] }
            ]
        }),
        json!({ "name": REPORT_MESSAGE, "type": MESSAGE, "contexts": [GUILD_CONTEXT] }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let defs = definitions();
        let mut names: Vec<&str> = defs.iter().filter_map(|d| d["name"].as_str()).collect();
        assert_eq!(names.len(), 5);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 5);
        for d in &defs {
            let name = d["name"].as_str().unwrap_or_default();
            if d["type"] == CHAT_INPUT {
                // Discord: 1-32 lower-case characters for chat-input commands.
                assert!(
                    name.len() <= 32 && name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                );
                assert!(d["description"].as_str().is_some_and(|s| s.len() <= 100));
            }
        }
    }
}
