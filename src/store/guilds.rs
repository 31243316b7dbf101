//! Moving a guild between pods: `Store::export_guild` reads every row of every guild table for
//! one guild into a [`GuildExport`], [`super::Write::ImportGuild`] merges such an export with the
//! same idempotent rules as live writes, and [`super::Write::DeleteGuild`] removes the guild from
//! every table. Also the per-guild diagnostics (`guild_ids`, `row_counts`).
//!
//! Because import uses the live merge rules, exporting from A and importing into an empty B
//! reproduces A's rows; importing twice changes nothing; importing into a B that already holds
//! some of the guild's rows (both pods processed it during a rollout) converges to the union.
//! One exception, by design: message-cache rows older than B's purge cutoff are not imported
//! (B would have purged them).

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::activity::{self, ActivityRow};
use super::deletions::{self, CachedMessage};
use super::moderation::{self, ModAction, Report, SettingsRow};
use super::outbox::{self, OutboxRow};
use super::Error;
use crate::ownership::GuildId;

/// The export format this binary writes and reads.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

/// Every table that holds guild data (each has a `guild_id` column).
pub const GUILD_TABLES: &[&str] = &[
    "activity",
    "message_cache",
    "member_joins",
    "member_leaves",
    "mod_actions",
    "reports",
    "guild_settings",
    "outbox",
];

/// A member join or leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberEvent {
    /// The member.
    pub user_id: u64,
    /// When they joined (or left).
    pub at_ms: u64,
}

/// Every row of one guild, typed, in key order (so two exports of equal data are equal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuildExport {
    /// [`EXPORT_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The guild.
    pub guild_id: GuildId,
    /// Counted messages.
    pub activity: Vec<ActivityRow>,
    /// The message cache, tombstones included.
    pub message_cache: Vec<CachedMessage>,
    /// Member joins.
    pub member_joins: Vec<MemberEvent>,
    /// Member leaves.
    pub member_leaves: Vec<MemberEvent>,
    /// Mod actions.
    pub mod_actions: Vec<ModAction>,
    /// Reports.
    pub reports: Vec<Report>,
    /// `/setup` settings, if ever set.
    pub settings: Option<SettingsRow>,
    /// The guild's outbox rows, sent or not, in enqueue order.
    pub outbox: Vec<OutboxRow>,
}

impl GuildExport {
    /// The number of rows the export holds.
    pub fn rows(&self) -> usize {
        self.activity.len()
            + self.message_cache.len()
            + self.member_joins.len()
            + self.member_leaves.len()
            + self.mod_actions.len()
            + self.reports.len()
            + usize::from(self.settings.is_some())
            + self.outbox.len()
    }
}

/// Reads a guild's rows in one read transaction (a consistent snapshot).
pub(crate) fn export(conn: &Connection, guild: GuildId) -> Result<GuildExport, Error> {
    let tx = conn.unchecked_transaction()?;
    let members = |leaves| -> Result<Vec<MemberEvent>, Error> {
        Ok(activity::export_members(&tx, guild, leaves)?
            .into_iter()
            .map(|(user_id, at_ms)| MemberEvent { user_id, at_ms })
            .collect())
    };
    let export = GuildExport {
        format_version: EXPORT_FORMAT_VERSION,
        guild_id: guild,
        activity: activity::export_messages(&tx, guild)?,
        message_cache: deletions::export(&tx, guild)?,
        member_joins: members(false)?,
        member_leaves: members(true)?,
        mod_actions: moderation::export_actions(&tx, guild)?,
        reports: moderation::export_reports(&tx, guild)?,
        settings: moderation::settings_row(&tx, guild)?,
        outbox: outbox::export(&tx, guild)?,
    };
    tx.commit()?;
    Ok(export)
}

/// Merges an export; returns whether anything changed. Runs inside the writer's transaction.
pub(crate) fn import(
    conn: &Connection,
    export: &GuildExport,
    purge_cutoff: Option<u64>,
) -> Result<bool, Error> {
    if export.format_version != EXPORT_FORMAT_VERSION {
        return Err(Error::ExportFormat {
            found: export.format_version,
            supported: EXPORT_FORMAT_VERSION,
        });
    }
    let g = export.guild_id;
    let mut changed = false;
    for row in &export.activity {
        changed |= activity::insert_message(conn, g, row)?;
    }
    for row in &export.message_cache {
        changed |= deletions::merge(conn, g, row, purge_cutoff)?;
    }
    for e in &export.member_joins {
        changed |= activity::insert_join(conn, g, e.user_id, e.at_ms)?;
    }
    for e in &export.member_leaves {
        changed |= activity::insert_leave(conn, g, e.user_id, e.at_ms)?;
    }
    for a in &export.mod_actions {
        changed |= moderation::merge_action(conn, g, a)?;
    }
    for r in &export.reports {
        changed |= moderation::merge_report(conn, g, r)?;
    }
    if let Some(s) = &export.settings {
        changed |= moderation::merge_settings(conn, g, s)?;
    }
    for o in &export.outbox {
        // The body is stored text; check it is JSON so a bad export cannot poison the sender.
        serde_json::from_str::<serde_json::Value>(&o.body)?;
        changed |= outbox::insert(
            conn,
            &o.key,
            Some(g),
            o.channel_id,
            &o.body,
            o.sent_message_id,
        )? > 0;
    }
    Ok(changed)
}

/// Removes every row of a guild; returns how many. Runs inside the writer's transaction.
pub(crate) fn delete(conn: &Connection, guild: GuildId) -> Result<usize, Error> {
    let mut n = 0;
    for table in GUILD_TABLES {
        n += conn
            .prepare_cached(&format!("DELETE FROM {table} WHERE guild_id = ?1"))?
            .execute([guild.0])?;
    }
    Ok(n)
}

pub(crate) fn guild_ids(conn: &Connection) -> Result<Vec<GuildId>, Error> {
    let sql = GUILD_TABLES
        .iter()
        .map(|t| format!("SELECT DISTINCT guild_id FROM {t} WHERE guild_id IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" UNION ");
    let ids = conn
        .prepare_cached(&format!("{sql} ORDER BY 1"))?
        .query_map([], |r| r.get(0).map(GuildId))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

pub(crate) fn row_counts(
    conn: &Connection,
    guild: GuildId,
) -> Result<BTreeMap<String, u64>, Error> {
    let mut counts = BTreeMap::new();
    for table in GUILD_TABLES {
        let n: u64 = conn
            .prepare_cached(&format!("SELECT count(*) FROM {table} WHERE guild_id = ?1"))?
            .query_row([guild.0], |r| r.get(0))?;
        counts.insert((*table).to_owned(), n);
    }
    Ok(counts)
}
