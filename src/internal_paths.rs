//! The paths of the gateway pods' internal API, in one place for both sides: the pod's router
//! registers the templates, and every client builds concrete paths from the same templates, so
//! a route renamed on one side cannot silently 404 on the other.
//!
//! Level 0: strings only, no I/O.

use std::fmt::Display;

use crate::ownership::{GuildId, Ordinal};

/// `GET`: the pod's [`StatusReport`](crate::wire::StatusReport).
pub const STATUS: &str = "/internal/v1/status";
/// `POST`: one Discord interaction for the owner pod to answer.
pub const INTERACTIONS: &str = "/internal/v1/interactions";
/// `POST`: a batch of dispatches a connector routes to the pod processing their guilds.
pub const EVENTS: &str = "/internal/v1/events";
/// `POST`: asks the pod to close its connection of shard `{id}` resumably and hand it over.
pub const SHARD_RELEASE: &str = "/internal/v1/shards/{id}/release";
/// `POST`: waits until shard `{shard}` may identify (the cluster's identify queue).
pub const IDENTIFY: &str = "/internal/v1/identify/{shard}";
/// `GET`: the guilds the pod holds rows for (`?owner=<ordinal>` narrows them).
pub const GUILDS: &str = "/internal/v1/guilds";
/// `GET`: every row of guild `{id}`, for the new owner to import.
pub const GUILD_EXPORT: &str = "/internal/v1/guilds/{id}/export";
/// `GET`: row counts and daily stats of guild `{id}`.
pub const GUILD_STATS: &str = "/internal/v1/guilds/{id}/stats";
/// `DELETE`: the pod's copy of guild `{id}` (`?if_version=<version>` makes it conditional).
pub const GUILD: &str = "/internal/v1/guilds/{id}";

/// Every route of the internal API, each once.
pub const ALL: [&str; 9] = [
    STATUS,
    INTERACTIONS,
    EVENTS,
    SHARD_RELEASE,
    IDENTIFY,
    GUILDS,
    GUILD_EXPORT,
    GUILD_STATS,
    GUILD,
];

/// `template` with its one `{placeholder}` segment replaced by `value`.
fn fill(template: &str, value: impl Display) -> String {
    match (template.find('{'), template.find('}')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{value}{}", &template[..open], &template[close + 1..])
        }
        // Only templates of this module are filled, and the tests check each has a placeholder.
        _ => template.to_owned(),
    }
}

/// [`SHARD_RELEASE`] of `shard`.
pub fn shard_release(shard: u32) -> String {
    fill(SHARD_RELEASE, shard)
}

/// [`IDENTIFY`] of `shard`.
pub fn identify(shard: u32) -> String {
    fill(IDENTIFY, shard)
}

/// [`GUILDS`] narrowed to the guilds `owner` owns under the answering pod's topology.
pub fn guilds_owned_by(owner: Ordinal) -> String {
    format!("{GUILDS}?owner={}", owner.0)
}

/// [`GUILD_EXPORT`] of `guild`.
pub fn guild_export(guild: GuildId) -> String {
    fill(GUILD_EXPORT, guild)
}

/// [`GUILD_STATS`] of `guild`.
pub fn guild_stats(guild: GuildId) -> String {
    fill(GUILD_STATS, guild)
}

/// [`GUILD`] of `guild`, deleted only if still at `if_version` when one is given (the version
/// an export carried, as its header spelt it).
pub fn guild(guild: GuildId, if_version: Option<impl Display>) -> String {
    let path = fill(GUILD, guild);
    match if_version {
        Some(version) => format!("{path}?if_version={version}"),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` (query left off) is one that axum would route to `template`: the same
    /// segments, a `{placeholder}` matching any one non-empty segment.
    fn matches(template: &str, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or_default();
        let (t, p): (Vec<&str>, Vec<&str>) =
            (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len()
            && t.iter().zip(&p).all(|(t, p)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !p.is_empty()
                } else {
                    t == p
                }
            })
    }

    #[test]
    fn every_builder_yields_a_path_of_its_route_and_no_other() {
        let guild_id = GuildId(81_384_788_765_712_384);
        let built = [
            (shard_release(7), SHARD_RELEASE),
            (identify(3), IDENTIFY),
            (guilds_owned_by(Ordinal(2)), GUILDS),
            (guild_export(guild_id), GUILD_EXPORT),
            (guild_stats(guild_id), GUILD_STATS),
            (guild(guild_id, None::<u64>), GUILD),
            (guild(guild_id, Some("1f.42")), GUILD),
            (STATUS.to_owned(), STATUS),
            (INTERACTIONS.to_owned(), INTERACTIONS),
            (EVENTS.to_owned(), EVENTS),
        ];
        for (path, template) in &built {
            let routes: Vec<&str> = ALL.iter().copied().filter(|t| matches(t, path)).collect();
            assert_eq!(routes, [*template], "{path} routes to {routes:?}");
        }
        assert_eq!(shard_release(7), "/internal/v1/shards/7/release");
        assert_eq!(guilds_owned_by(Ordinal(2)), "/internal/v1/guilds?owner=2");
        assert_eq!(
            guild(guild_id, Some("1f.42")),
            "/internal/v1/guilds/81384788765712384?if_version=1f.42"
        );
    }

    #[test]
    fn the_routes_are_distinct_and_every_template_has_one_placeholder_at_most() {
        for (i, route) in ALL.iter().enumerate() {
            assert!(!ALL[..i].contains(route), "{route} listed twice");
            assert!(route.starts_with("/internal/v1/"), "{route}");
            assert!(route.matches('{').count() <= 1, "{route}");
            assert_eq!(route.matches('{').count(), route.matches('}').count());
        }
    }
}
