//! Recovering the guilds of a departed ordinal (removed before it drained, or whose volume is
//! gone) from its Litestream replica: `litestream restore -o <tmp>` with `POD_ORDINAL=<k>`
//! (the replica path is `$CLUSTER_NAME/$POD_NAMESPACE/gateway-$POD_ORDINAL`), then import the
//! guilds this pod owns. The restore may run as long as it makes progress ([`watchdog`]).

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use crate::config::{ReplicaPrefix, ENV_CLUSTER_NAME, ENV_POD_NAMESPACE};
use crate::ownership::{owner, Ordinal, Topology};
use crate::store::{Store, StoreOptions, Write};

use super::{watchdog, Error};

/// How long a restore may show no progress (no output growth, no log line) before it is
/// killed, unless configured otherwise. A restore that keeps progressing may take as long as
/// the replica needs.
pub const DEFAULT_RESTORE_STALL: Duration = Duration::from_secs(60);

/// How to run Litestream for a restore.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The `litestream` executable.
    pub binary: PathBuf,
    /// The Litestream configuration (`litestream/litestream.yml`), which names the replica by
    /// `$POD_ORDINAL` and the database by `$DATABASE_PATH`.
    pub config: PathBuf,
    /// This pod's `DATABASE_PATH` (the key of the database in the configuration).
    pub database_path: PathBuf,
    /// A directory for the temporary restored copies.
    pub scratch: PathBuf,
    /// How long a restore may show no progress before it is killed and counted as failed.
    pub stall_limit: Duration,
    /// The cluster and namespace the configuration's replica path starts with (given to
    /// Litestream as `CLUSTER_NAME` and `POD_NAMESPACE`, as the pod spec gives them).
    pub prefix: ReplicaPrefix,
}

/// What a restore brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// Imported this many guilds owned by this pod.
    Imported(u64),
}

/// Restores `departed`'s replica into a temporary file and imports into `store` every guild
/// found there that `me` owns under `topology`.
///
/// # Errors
/// [`Error::Replica`] when Litestream fails, [`Error::ReplicaMissing`] when no replica is
/// found, [`Error::Store`] when reading the copy or the import fails.
#[tracing::instrument(skip_all, fields(departed = departed.0))]
pub async fn restore_and_import(
    cfg: &ReplicaConfig,
    store: &Store,
    me: Ordinal,
    topology: Topology,
    departed: Ordinal,
) -> Result<Restored, Error> {
    let copy = restore_copy(cfg, departed).await?;
    let result = import_owned(&copy, store, me, topology).await;
    remove_copy(&copy);
    let imported = result?;
    info!(
        imported,
        "guilds restored from a departed ordinal's replica"
    );
    Ok(Restored::Imported(imported))
}

/// Restores `ordinal`'s replica into a new file under the scratch directory and returns its
/// path; the caller removes it with [`remove_copy`].
///
/// # Errors
/// [`Error::Replica`] when Litestream fails or stalls, [`Error::ReplicaMissing`] when the
/// configuration finds no replica.
pub async fn restore_copy(cfg: &ReplicaConfig, ordinal: Ordinal) -> Result<PathBuf, Error> {
    let fail = |why: String| Error::Replica {
        ordinal: ordinal.0,
        why,
    };
    std::fs::create_dir_all(&cfg.scratch).map_err(|e| fail(e.to_string()))?;
    let tmp = cfg.scratch.join(format!(
        "restore-gateway-{}-{:016x}.db",
        ordinal.0,
        rand::random::<u64>()
    ));
    let mut cmd = tokio::process::Command::new(&cfg.binary);
    // No `-if-replica-exists`: a departed ordinal always had a replica (its sidecar starts
    // with it), so "none found" means the configuration points elsewhere (a typo in the bucket
    // or the path), and treating that as "nothing to restore" would drop its guilds silently.
    cmd.args(["restore", "-config"])
        .arg(&cfg.config)
        .arg("-o")
        .arg(&tmp)
        .arg(&cfg.database_path)
        .env("POD_ORDINAL", ordinal.0.to_string())
        .env("DATABASE_PATH", &cfg.database_path)
        .env(ENV_CLUSTER_NAME, &cfg.prefix.cluster)
        .env(ENV_POD_NAMESPACE, &cfg.prefix.namespace);
    let out = watchdog::run(cmd, &tmp, cfg.stall_limit)
        .await
        .map_err(|e| match e {
            watchdog::Error::Io(e) => fail(format!("running {}: {e}", cfg.binary.display())),
            stalled => fail(format!("litestream restore: {stalled}")),
        });
    let out = match out {
        Ok(out) => out,
        Err(err) => {
            remove_copy(&tmp);
            return Err(err);
        }
    };
    let stderr = &out.stderr;
    if !out.status.success() || !tmp.exists() {
        remove_copy(&tmp);
        if stderr.contains("no matching backup") || out.status.success() {
            return Err(Error::ReplicaMissing {
                ordinal: ordinal.0,
                location: replica_location(cfg, ordinal),
            });
        }
        return Err(fail(format!(
            "litestream restore exited {}: {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(tmp)
}

/// Removes a restored copy and whatever Litestream or SQLite left beside it.
pub fn remove_copy(tmp: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", ".tmp"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
}

/// Where the configuration puts `departed`'s replica, for the operator: the `type`, `bucket`
/// and `path` (or `url`) of its replica, with the configuration's `${VAR}`s expanded as
/// Litestream expands them for that ordinal.
fn replica_location(cfg: &ReplicaConfig, departed: Ordinal) -> String {
    let Ok(text) = std::fs::read_to_string(&cfg.config) else {
        return format!("the replica of {}", cfg.config.display());
    };
    let var = |name: &str| match name {
        "POD_ORDINAL" => departed.0.to_string(),
        "DATABASE_PATH" => cfg.database_path.display().to_string(),
        ENV_CLUSTER_NAME => cfg.prefix.cluster.clone(),
        ENV_POD_NAMESPACE => cfg.prefix.namespace.clone(),
        _ => std::env::var(name).unwrap_or_default(),
    };
    let mut found: Vec<(String, String)> = Vec::new();
    let mut in_replica = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim_end();
        if line.trim_start().starts_with("replica:") {
            in_replica = true;
            continue;
        }
        let Some((key, value)) = line.trim_start().split_once(':') else {
            continue;
        };
        if in_replica && ["type", "url", "bucket", "path"].contains(&key) {
            found.push((key.to_owned(), expand(value.trim(), var)));
        }
    }
    let get = |k: &str| {
        found
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match (get("url"), get("type"), get("bucket"), get("path")) {
        (Some(url), ..) => url,
        (None, Some(kind), Some(bucket), path) => {
            format!("{kind}://{bucket}/{}", path.unwrap_or_default())
        }
        (None, _, None, Some(path)) => path,
        _ => format!("the replica of {}", cfg.config.display()),
    }
}

/// `$VAR` and `${VAR}` replaced by `var(VAR)`, as Litestream expands its configuration.
fn expand(text: &str, var: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            match braced.split_once('}') {
                Some((name, tail)) => (name, tail),
                None => (braced, ""),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push_str(&var(name));
        rest = tail;
    }
    out.push_str(rest);
    out
}

async fn import_owned(
    copy: &std::path::Path,
    store: &Store,
    me: Ordinal,
    topology: Topology,
) -> Result<u64, Error> {
    // The copy is ours alone and no Litestream watches it: default checkpoints.
    let restored = Store::open_with(
        copy,
        StoreOptions {
            litestream_checkpoints: false,
            ..StoreOptions::default()
        },
    )
    .await?;
    let mut imported = 0;
    let result = async {
        for guild in restored.guild_ids().await? {
            if owner(guild, topology) != me {
                continue;
            }
            let export = restored.export_guild(guild).await?;
            store.apply(Write::ImportGuild(export)).await?;
            imported += 1;
        }
        Ok::<_, Error>(())
    }
    .await;
    restored.close().await?;
    result.map(|()| imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_replica_is_named_by_its_expanded_location() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("litestream.yml");
        std::fs::write(
            &config,
            "# the path: gateway-${POD_ORDINAL}\ndbs:\n  - path: ${DATABASE_PATH}\n    replica:\n      \
             type: s3\n      bucket: replicas-prod\n      \
             path: ${CLUSTER_NAME}/${POD_NAMESPACE}/gateway-${POD_ORDINAL}\n",
        )
        .expect("write");
        let cfg = ReplicaConfig {
            binary: "litestream".into(),
            config,
            database_path: "/data/bot.db".into(),
            scratch: dir.path().into(),
            stall_limit: DEFAULT_RESTORE_STALL,
            prefix: ReplicaPrefix {
                cluster: "eu-1".into(),
                namespace: "bots".into(),
            },
        };
        assert_eq!(
            replica_location(&cfg, Ordinal(4)),
            "s3://replicas-prod/eu-1/bots/gateway-4"
        );
        assert_eq!(expand("a-$X-${Y}z", |v| v.to_lowercase()), "a-x-yz");
    }
}
