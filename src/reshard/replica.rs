//! Recovering the guilds of a departed ordinal (removed before it drained, or whose volume is
//! gone) from its Litestream replica: `litestream restore -o <tmp>` with `POD_ORDINAL=<k>`
//! (the replica path is `gateway-$POD_ORDINAL`), then import the guilds this pod owns.

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use crate::ownership::{owner, Ordinal, Topology};
use crate::store::{Store, StoreOptions, Write};

use super::Error;

/// How long one restore may take.
const RESTORE_LIMIT: Duration = Duration::from_secs(120);

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
}

/// What a restore brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The departed ordinal has no replica (it never replicated, or replication is off).
    NoReplica,
    /// Imported this many guilds owned by this pod.
    Imported(u64),
}

/// Restores `departed`'s replica into a temporary file and imports into `store` every guild
/// found there that `me` owns under `topology`.
///
/// # Errors
/// [`Error::Replica`] when Litestream fails, [`Error::Store`] when reading the copy or the
/// import fails.
#[tracing::instrument(skip_all, fields(departed = departed.0))]
pub async fn restore_and_import(
    cfg: &ReplicaConfig,
    store: &Store,
    me: Ordinal,
    topology: Topology,
    departed: Ordinal,
) -> Result<Restored, Error> {
    let fail = |why: String| Error::Replica {
        ordinal: departed.0,
        why,
    };
    std::fs::create_dir_all(&cfg.scratch).map_err(|e| fail(e.to_string()))?;
    let tmp = cfg.scratch.join(format!(
        "restore-gateway-{}-{:016x}.db",
        departed.0,
        rand::random::<u64>()
    ));
    let mut cmd = tokio::process::Command::new(&cfg.binary);
    cmd.args(["restore", "-if-replica-exists", "-config"])
        .arg(&cfg.config)
        .arg("-o")
        .arg(&tmp)
        .arg(&cfg.database_path)
        .env("POD_ORDINAL", departed.0.to_string())
        .env("DATABASE_PATH", &cfg.database_path)
        .kill_on_drop(true);
    let out = tokio::time::timeout(RESTORE_LIMIT, cmd.output())
        .await
        .map_err(|_| fail(format!("litestream restore took over {RESTORE_LIMIT:?}")))?
        .map_err(|e| fail(format!("running {}: {e}", cfg.binary.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "litestream restore exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !tmp.exists() {
        return Ok(Restored::NoReplica);
    }
    let result = import_owned(&tmp, store, me, topology).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    let imported = result?;
    info!(
        imported,
        "guilds restored from a departed ordinal's replica"
    );
    Ok(Restored::Imported(imported))
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
