//! Moderation: mod actions (bans, unbans, timeouts), message reports and the guild's `/setup`
//! settings, and the `/modlog` query.
//!
//! Merge rules:
//! - A mod action is keyed by (guild, audit-log entry id). Entries are immutable, so a repeat is
//!   ignored; only an executor or reason missing from the stored row is filled in (a ban seen
//!   before its audit entry), the smaller value winning a disagreement so the result does not
//!   depend on order.
//! - A report is unique per (guild, message, reporter). Of two reports of one message by one
//!   user, the one with the smaller (earlier) interaction id is kept whole.
//! - Settings: each channel is last-writer-wins by the interaction id that set it (snowflakes
//!   grow with time, so an old replay never wins; a tie takes the larger channel id). A `/setup`
//!   that names only one channel leaves the other as it is.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::Error;
use crate::ownership::GuildId;

/// What a mod action did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModActionKind {
    /// A ban.
    Ban,
    /// An unban.
    Unban,
    /// A timeout until the given time.
    Timeout {
        /// When the timeout ends (Unix ms).
        until_ms: u64,
    },
    /// A timeout lifted early.
    TimeoutRemoved,
}

impl ModActionKind {
    fn as_str(self) -> &'static str {
        match self {
            ModActionKind::Ban => "ban",
            ModActionKind::Unban => "unban",
            ModActionKind::Timeout { .. } => "timeout",
            ModActionKind::TimeoutRemoved => "timeout_removed",
        }
    }

    fn until_ms(self) -> Option<u64> {
        match self {
            ModActionKind::Timeout { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    fn from_columns(kind: &str, until_ms: Option<u64>) -> rusqlite::Result<Self> {
        Ok(match (kind, until_ms) {
            ("ban", _) => ModActionKind::Ban,
            ("unban", _) => ModActionKind::Unban,
            ("timeout", Some(until_ms)) => ModActionKind::Timeout { until_ms },
            ("timeout_removed", _) => ModActionKind::TimeoutRemoved,
            (other, _) => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown mod action kind {other:?}").into(),
                ))
            }
        })
    }
}

/// A recorded mod action.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModAction {
    /// The audit-log entry id.
    pub entry_id: u64,
    /// What happened.
    pub kind: ModActionKind,
    /// To whom.
    pub target_id: u64,
    /// By whom, if known.
    pub executor_id: Option<u64>,
    /// Why, if given.
    pub reason: Option<String>,
    /// When.
    pub at_ms: u64,
}

/// A stored report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Report {
    /// The reported message.
    pub message_id: u64,
    /// Who reported.
    pub reporter_id: u64,
    /// The interaction that reported.
    pub interaction_id: u64,
    /// The message's channel.
    pub channel_id: u64,
    /// The message's author.
    pub reported_user_id: u64,
    /// The start of the message's text.
    pub content_excerpt: String,
    /// When it was reported.
    pub at_ms: u64,
}

/// A guild's `/setup` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuildSettings {
    /// Where reports and mod actions are posted.
    pub mod_log_channel: Option<u64>,
    /// Where deleted messages are posted.
    pub deletion_log_channel: Option<u64>,
}

/// A guild's settings row as exported, with the interaction that set each channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRow {
    /// The mod-log channel.
    pub mod_log_channel: Option<u64>,
    /// The interaction that set it.
    pub mod_log_set_by: Option<u64>,
    /// The deletion-log channel.
    pub deletion_log_channel: Option<u64>,
    /// The interaction that set it.
    pub deletion_log_set_by: Option<u64>,
}

impl SettingsRow {
    /// Both rows merged as the store merges an imported row: per channel, the one set by the
    /// later interaction wins (on a tie, the larger channel id, so the merge is symmetric).
    #[must_use]
    pub fn merged(self, other: SettingsRow) -> SettingsRow {
        let pick = |a: (Option<u64>, Option<u64>), b: (Option<u64>, Option<u64>)| {
            // A channel without the interaction that set it cannot be ordered; it loses.
            let a = a.1.and(a.0).map(|_| a);
            let b = b.1.and(b.0).map(|_| b);
            match (a, b) {
                (Some(a), Some(b)) => {
                    if (b.1, b.0) > (a.1, a.0) {
                        b
                    } else {
                        a
                    }
                }
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) => (None, None),
            }
        };
        let (mod_log_channel, mod_log_set_by) = pick(
            (self.mod_log_channel, self.mod_log_set_by),
            (other.mod_log_channel, other.mod_log_set_by),
        );
        let (deletion_log_channel, deletion_log_set_by) = pick(
            (self.deletion_log_channel, self.deletion_log_set_by),
            (other.deletion_log_channel, other.deletion_log_set_by),
        );
        SettingsRow {
            mod_log_channel,
            mod_log_set_by,
            deletion_log_channel,
            deletion_log_set_by,
        }
    }
}

impl From<SettingsRow> for GuildSettings {
    fn from(s: SettingsRow) -> Self {
        GuildSettings {
            mod_log_channel: s.mod_log_channel,
            deletion_log_channel: s.deletion_log_channel,
        }
    }
}

/// `/modlog user`: a user's reports and mod actions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModLog {
    /// Distinct reports of the user's messages.
    pub report_count: u64,
    /// The most recent reports, newest first.
    pub reports: Vec<Report>,
    /// The most recent mod actions on the user, newest first.
    pub actions: Vec<ModAction>,
}

pub(crate) fn merge_action(
    conn: &Connection,
    guild: GuildId,
    a: &ModAction,
) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT INTO mod_actions
                 (guild_id, entry_id, kind, until_ms, target_id, executor_id, reason, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (guild_id, entry_id) DO UPDATE SET
                 executor_id = COALESCE(MIN(executor_id, excluded.executor_id),
                                        executor_id, excluded.executor_id),
                 reason = COALESCE(MIN(reason, excluded.reason), reason, excluded.reason)
             WHERE excluded.executor_id IS NOT NULL
                   AND (executor_id IS NULL OR excluded.executor_id < executor_id)
                OR excluded.reason IS NOT NULL AND (reason IS NULL OR excluded.reason < reason)",
        )?
        .execute(params![
            guild.0,
            a.entry_id,
            a.kind.as_str(),
            a.kind.until_ms(),
            a.target_id,
            a.executor_id,
            a.reason,
            a.at_ms
        ])?;
    Ok(n > 0)
}

pub(crate) fn merge_report(conn: &Connection, guild: GuildId, r: &Report) -> Result<bool, Error> {
    let n = conn
        .prepare_cached(
            "INSERT INTO reports (guild_id, message_id, reporter_id, interaction_id, channel_id,
                                  reported_user_id, content_excerpt, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (guild_id, message_id, reporter_id) DO UPDATE SET
                 interaction_id = excluded.interaction_id,
                 channel_id = excluded.channel_id,
                 reported_user_id = excluded.reported_user_id,
                 content_excerpt = excluded.content_excerpt,
                 at_ms = excluded.at_ms
             WHERE excluded.interaction_id < interaction_id",
        )?
        .execute(params![
            guild.0,
            r.message_id,
            r.reporter_id,
            r.interaction_id,
            r.channel_id,
            r.reported_user_id,
            r.content_excerpt,
            r.at_ms
        ])?;
    Ok(n > 0)
}

pub(crate) fn report_exists(
    conn: &Connection,
    guild: GuildId,
    message_id: u64,
    reporter_id: u64,
) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM reports WHERE guild_id = ?1 AND message_id = ?2 AND reporter_id = ?3",
        )?
        .query_row(params![guild.0, message_id, reporter_id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(crate) fn report_count(conn: &Connection, guild: GuildId, user: u64) -> Result<u64, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM reports WHERE guild_id = ?1 AND reported_user_id = ?2",
        )?
        .query_row(params![guild.0, user], |r| r.get(0))?)
}

pub(crate) fn merge_settings(
    conn: &Connection,
    guild: GuildId,
    s: &SettingsRow,
) -> Result<bool, Error> {
    // A channel without the interaction that set it cannot be ordered; drop it.
    let mod_log = s.mod_log_set_by.and(s.mod_log_channel);
    let deletion_log = s.deletion_log_set_by.and(s.deletion_log_channel);
    let mod_log_by = mod_log.and(s.mod_log_set_by);
    let deletion_log_by = deletion_log.and(s.deletion_log_set_by);
    if mod_log.is_none() && deletion_log.is_none() {
        return Ok(false);
    }
    let n = conn
        .prepare_cached(
            "INSERT INTO guild_settings (guild_id, mod_log_channel, mod_log_set_by,
                                         deletion_log_channel, deletion_log_set_by)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (guild_id) DO UPDATE SET
                 mod_log_channel = CASE WHEN excluded.mod_log_set_by IS NOT NULL AND (
                         mod_log_set_by IS NULL
                         OR excluded.mod_log_set_by > mod_log_set_by
                         OR excluded.mod_log_set_by = mod_log_set_by
                            AND excluded.mod_log_channel > mod_log_channel)
                     THEN excluded.mod_log_channel ELSE mod_log_channel END,
                 mod_log_set_by = COALESCE(MAX(mod_log_set_by, excluded.mod_log_set_by),
                                           mod_log_set_by, excluded.mod_log_set_by),
                 deletion_log_channel = CASE WHEN excluded.deletion_log_set_by IS NOT NULL AND (
                         deletion_log_set_by IS NULL
                         OR excluded.deletion_log_set_by > deletion_log_set_by
                         OR excluded.deletion_log_set_by = deletion_log_set_by
                            AND excluded.deletion_log_channel > deletion_log_channel)
                     THEN excluded.deletion_log_channel ELSE deletion_log_channel END,
                 deletion_log_set_by = COALESCE(MAX(deletion_log_set_by, excluded.deletion_log_set_by),
                                                deletion_log_set_by, excluded.deletion_log_set_by)
             WHERE excluded.mod_log_set_by IS NOT NULL AND (
                       mod_log_set_by IS NULL
                       OR excluded.mod_log_set_by > mod_log_set_by
                       OR excluded.mod_log_set_by = mod_log_set_by
                          AND excluded.mod_log_channel > mod_log_channel)
                OR excluded.deletion_log_set_by IS NOT NULL AND (
                       deletion_log_set_by IS NULL
                       OR excluded.deletion_log_set_by > deletion_log_set_by
                       OR excluded.deletion_log_set_by = deletion_log_set_by
                          AND excluded.deletion_log_channel > deletion_log_channel)",
        )?
        .execute(params![guild.0, mod_log, mod_log_by, deletion_log, deletion_log_by])?;
    Ok(n > 0)
}

pub(crate) fn settings_row(
    conn: &Connection,
    guild: GuildId,
) -> Result<Option<SettingsRow>, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT mod_log_channel, mod_log_set_by, deletion_log_channel, deletion_log_set_by
             FROM guild_settings WHERE guild_id = ?1",
        )?
        .query_row([guild.0], |r| {
            Ok(SettingsRow {
                mod_log_channel: r.get(0)?,
                mod_log_set_by: r.get(1)?,
                deletion_log_channel: r.get(2)?,
                deletion_log_set_by: r.get(3)?,
            })
        })
        .optional()?)
}

pub(crate) fn settings(conn: &Connection, guild: GuildId) -> Result<GuildSettings, Error> {
    Ok(settings_row(conn, guild)?
        .map(GuildSettings::from)
        .unwrap_or_default())
}

fn action_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModAction> {
    let kind: String = r.get(1)?;
    Ok(ModAction {
        entry_id: r.get(0)?,
        kind: ModActionKind::from_columns(&kind, r.get(2)?)?,
        target_id: r.get(3)?,
        executor_id: r.get(4)?,
        reason: r.get(5)?,
        at_ms: r.get(6)?,
    })
}

fn report_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Report> {
    Ok(Report {
        message_id: r.get(0)?,
        reporter_id: r.get(1)?,
        interaction_id: r.get(2)?,
        channel_id: r.get(3)?,
        reported_user_id: r.get(4)?,
        content_excerpt: r.get(5)?,
        at_ms: r.get(6)?,
    })
}

const ACTION_COLUMNS: &str = "entry_id, kind, until_ms, target_id, executor_id, reason, at_ms";
const REPORT_COLUMNS: &str = "message_id, reporter_id, interaction_id, channel_id, \
                              reported_user_id, content_excerpt, at_ms";

pub(crate) fn modlog(
    conn: &Connection,
    guild: GuildId,
    user: u64,
    limit: u32,
) -> Result<ModLog, Error> {
    let reports = conn
        .prepare_cached(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE guild_id = ?1 AND reported_user_id = ?2
             ORDER BY at_ms DESC, interaction_id DESC LIMIT ?3"
        ))?
        .query_map(params![guild.0, user, limit], report_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let actions = conn
        .prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM mod_actions WHERE guild_id = ?1 AND target_id = ?2
             ORDER BY at_ms DESC, entry_id DESC LIMIT ?3"
        ))?
        .query_map(params![guild.0, user, limit], action_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModLog {
        report_count: report_count(conn, guild, user)?,
        reports,
        actions,
    })
}

pub(crate) fn export_actions(conn: &Connection, guild: GuildId) -> Result<Vec<ModAction>, Error> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM mod_actions WHERE guild_id = ?1 ORDER BY entry_id"
        ))?
        .query_map([guild.0], action_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(crate) fn export_reports(conn: &Connection, guild: GuildId) -> Result<Vec<Report>, Error> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE guild_id = ?1
             ORDER BY message_id, reporter_id"
        ))?
        .query_map([guild.0], report_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mod_log: Option<(u64, u64)>, deletion_log: Option<(u64, u64)>) -> SettingsRow {
        SettingsRow {
            mod_log_channel: mod_log.map(|m| m.0),
            mod_log_set_by: mod_log.map(|m| m.1),
            deletion_log_channel: deletion_log.map(|d| d.0),
            deletion_log_set_by: deletion_log.map(|d| d.1),
        }
    }

    #[test]
    fn merged_settings_take_each_channel_from_the_later_interaction_in_any_order() {
        let owners = row(Some((10, 5)), Some((20, 5)));
        // Set during a cover, by a later interaction: only the mod-log changed.
        let covers = row(Some((11, 9)), None);
        let want = row(Some((11, 9)), Some((20, 5)));
        assert_eq!(owners.clone().merged(covers.clone()), want);
        assert_eq!(covers.merged(owners.clone()), want);
        // A tie on the interaction is broken by the channel, the same way both ways.
        let tie = row(Some((12, 5)), None);
        assert_eq!(
            owners.clone().merged(tie.clone()),
            tie.clone().merged(owners.clone())
        );
        // A channel with no interaction cannot be ordered and never wins.
        let unordered = SettingsRow {
            mod_log_channel: Some(99),
            ..SettingsRow::default()
        };
        assert_eq!(owners.clone().merged(unordered), owners);
        assert_eq!(
            SettingsRow::default().merged(SettingsRow::default()),
            SettingsRow::default()
        );
    }
}
