//! Configuration read once from the environment (DESIGN §3).
//!
//! Level 0. Every variable is named by an `ENV_*` constant. Values are first collected as raw
//! strings with `envy`, then validated one by one, so an error always names the variable and says
//! what is wrong in one line. Production passes `std::env::vars()`, tests pass a list of pairs:
//! nothing here reads the process environment by itself.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use crate::ownership::{Ordinal, Strategy, Topology};

/// This pod's StatefulSet ordinal.
pub const ENV_POD_ORDINAL: &str = "POD_ORDINAL";
/// The pod name (`gateway-3`); its trailing number is the ordinal when `POD_ORDINAL` is unset.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// Set by Kubernetes to the pod name; the last fallback for the ordinal.
pub const ENV_HOSTNAME: &str = "HOSTNAME";
/// How many gateway pods own guilds: a fixed override of the StatefulSet's `spec.replicas`, for
/// places without the Kubernetes API.
pub const ENV_NUM_GATEWAY_PODS: &str = "NUM_GATEWAY_PODS";
/// A kubeconfig file for reaching the Kubernetes API (local runs; in a cluster the pod's
/// service account is used).
pub const ENV_KUBECONFIG: &str = "KUBECONFIG";
/// Set by Kubernetes in every pod: the in-cluster API is there.
pub const ENV_KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
/// The namespace of the gateway StatefulSet (downward API `metadata.namespace`; default: the
/// service account's or the kubeconfig context's namespace).
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
/// The gateway StatefulSet's name (default `gateway`).
pub const ENV_STATEFULSET_NAME: &str = "STATEFULSET_NAME";
/// `md5` (default) or `jump`.
pub const ENV_SHARD_STRATEGY: &str = "SHARD_STRATEGY";
/// The bot token. Never logged.
pub const ENV_DISCORD_TOKEN: &str = "DISCORD_TOKEN";
/// The application (bot user) id.
pub const ENV_DISCORD_APPLICATION_ID: &str = "DISCORD_APPLICATION_ID";
/// The application's Ed25519 public key, hex, for verifying interactions.
pub const ENV_DISCORD_PUBLIC_KEY: &str = "DISCORD_PUBLIC_KEY";
/// Unset for real Discord; `http://127.0.0.1:PORT` for the emulator.
pub const ENV_DISCORD_API_BASE: &str = "DISCORD_API_BASE";
/// How many Discord shards to run (default: as `GET /gateway/bot` says).
pub const ENV_DISCORD_SHARD_COUNT: &str = "DISCORD_SHARD_COUNT";
/// The pod's SQLite database file.
pub const ENV_DATABASE_PATH: &str = "DATABASE_PATH";
/// Bearer token between the HTTP service and gateway pods. Never logged.
pub const ENV_INTERNAL_AUTH_TOKEN: &str = "INTERNAL_AUTH_TOKEN";
/// How to reach a gateway pod's internal API, with `{ordinal}` standing for its ordinal.
pub const ENV_GATEWAY_INTERNAL_URL_TEMPLATE: &str = "GATEWAY_INTERNAL_URL_TEMPLATE";
/// Where a gateway pod serves `/healthz`, `/readyz` and `/metrics`.
pub const ENV_PUBLIC_BIND_ADDR: &str = "PUBLIC_BIND_ADDR";
/// Where a gateway pod serves its internal API.
pub const ENV_INTERNAL_BIND_ADDR: &str = "INTERNAL_BIND_ADDR";
/// Where the HTTP service listens.
pub const ENV_HTTP_BIND_ADDR: &str = "HTTP_BIND_ADDR";
/// `true` (default) when a Litestream sidecar manages checkpoints; `false` lets SQLite
/// checkpoint by itself (local runs without Litestream).
pub const ENV_LITESTREAM_ENABLED: &str = "LITESTREAM_ENABLED";
/// The Litestream configuration file; when set, a pod restores a departed peer's replica during
/// resharding (the replica fallback).
pub const ENV_LITESTREAM_CONFIG: &str = "LITESTREAM_CONFIG";
/// The `litestream` executable for the replica fallback (default: `litestream` on PATH).
pub const ENV_LITESTREAM_BIN: &str = "LITESTREAM_BIN";
/// How long a replica restore may show no progress before it is killed (seconds).
pub const ENV_LITESTREAM_RESTORE_STALL_SECONDS: &str = "LITESTREAM_RESTORE_STALL_SECONDS";
/// The cluster's name: with the namespace, it prefixes every Litestream replica path
/// (`<cluster>/<namespace>/gateway-<ordinal>`), so two clusters or namespaces sharing a bucket
/// never write into one path.
pub const ENV_CLUSTER_NAME: &str = "CLUSTER_NAME";
/// Sent outbox rows and DM-help records older than this many days are deleted.
pub const ENV_RETENTION_DAYS: &str = "RETENTION_DAYS";
/// How often the retention task runs (seconds).
pub const ENV_RETENTION_INTERVAL_SECONDS: &str = "RETENTION_INTERVAL_SECONDS";
/// Fault injection for tests and drills: delay every command by this many milliseconds.
pub const ENV_FAULT_COMMAND_DELAY_MS: &str = "FAULT_COMMAND_DELAY_MS";

const DEFAULT_PUBLIC_BIND: &str = "0.0.0.0:8080";
const DEFAULT_INTERNAL_BIND: &str = "0.0.0.0:8081";
const DEFAULT_URL_TEMPLATE: &str = "http://gateway-{ordinal}.gateway-internal:8081";
const DEFAULT_RESTORE_STALL_SECONDS: u64 = 60;
const DEFAULT_RETENTION_DAYS: u64 = 30;
const DEFAULT_RETENTION_INTERVAL_SECONDS: u64 = 3600;

/// A configuration value that was missing or malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it, in a few words.
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            var,
            problem: problem.into(),
        }
    }
}

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value is `Bearer <this secret>`. The comparison has no
    /// early exit, so the time it takes does not reveal how much of a guess matched.
    pub fn is_bearer(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let (a, b) = (presented.as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The raw environment as envy sees it (envy lower-cases the keys): every value optional and
/// unparsed.
#[derive(Deserialize, Default)]
struct RawEnv {
    pod_ordinal: Option<String>,
    pod_name: Option<String>,
    hostname: Option<String>,
    num_gateway_pods: Option<String>,
    kubeconfig: Option<String>,
    kubernetes_service_host: Option<String>,
    pod_namespace: Option<String>,
    statefulset_name: Option<String>,
    shard_strategy: Option<String>,
    discord_token: Option<String>,
    discord_application_id: Option<String>,
    discord_public_key: Option<String>,
    discord_api_base: Option<String>,
    discord_shard_count: Option<String>,
    database_path: Option<String>,
    internal_auth_token: Option<String>,
    gateway_internal_url_template: Option<String>,
    public_bind_addr: Option<String>,
    internal_bind_addr: Option<String>,
    http_bind_addr: Option<String>,
    litestream_enabled: Option<String>,
    litestream_config: Option<String>,
    litestream_bin: Option<String>,
    litestream_restore_stall_seconds: Option<String>,
    cluster_name: Option<String>,
    retention_days: Option<String>,
    retention_interval_seconds: Option<String>,
    fault_command_delay_ms: Option<String>,
}

impl RawEnv {
    fn from_pairs<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // Only our own variables are handed to envy, so unrelated environment entries can
        // never fail deserialization; empty values count as unset.
        let ours = vars
            .into_iter()
            .filter(|(k, v)| KNOWN.contains(&k.as_str()) && !v.trim().is_empty());
        envy::from_iter(ours).map_err(|e| ConfigError::new("environment", e.to_string()))
    }
}

const KNOWN: &[&str] = &[
    ENV_POD_ORDINAL,
    ENV_POD_NAME,
    ENV_HOSTNAME,
    ENV_NUM_GATEWAY_PODS,
    ENV_KUBECONFIG,
    ENV_KUBERNETES_SERVICE_HOST,
    ENV_POD_NAMESPACE,
    ENV_STATEFULSET_NAME,
    ENV_SHARD_STRATEGY,
    ENV_DISCORD_TOKEN,
    ENV_DISCORD_APPLICATION_ID,
    ENV_DISCORD_PUBLIC_KEY,
    ENV_DISCORD_API_BASE,
    ENV_DISCORD_SHARD_COUNT,
    ENV_DATABASE_PATH,
    ENV_INTERNAL_AUTH_TOKEN,
    ENV_GATEWAY_INTERNAL_URL_TEMPLATE,
    ENV_PUBLIC_BIND_ADDR,
    ENV_INTERNAL_BIND_ADDR,
    ENV_HTTP_BIND_ADDR,
    ENV_LITESTREAM_ENABLED,
    ENV_LITESTREAM_CONFIG,
    ENV_LITESTREAM_BIN,
    ENV_LITESTREAM_RESTORE_STALL_SECONDS,
    ENV_CLUSTER_NAME,
    ENV_RETENTION_DAYS,
    ENV_RETENTION_INTERVAL_SECONDS,
    ENV_FAULT_COMMAND_DELAY_MS,
];

/// How to reach Discord (or the emulator).
#[derive(Clone, Debug)]
pub struct DiscordConfig {
    /// The bot token.
    pub token: Secret,
    /// The application id, when configured (the gateway learns it from READY otherwise).
    pub application_id: Option<u64>,
    /// `None` for real Discord; the emulator's base URL otherwise.
    pub api_base: Option<String>,
    /// A fixed shard count, instead of asking `GET /gateway/bot`.
    pub shard_count: Option<u32>,
}

impl DiscordConfig {
    /// Reads only the Discord settings (`DISCORD_TOKEN`, `DISCORD_APPLICATION_ID`,
    /// `DISCORD_API_BASE`, `DISCORD_SHARD_COUNT`), for commands that only talk to Discord.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable that is missing or malformed.
    pub fn from_env<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        discord(&RawEnv::from_pairs(vars)?)
    }
}

/// Where a gateway pod's internal API lives, by ordinal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlTemplate(String);

impl UrlTemplate {
    /// Checks that the template has exactly one `{ordinal}` and looks like an http URL.
    pub fn parse(template: &str) -> Result<Self, String> {
        if template.matches("{ordinal}").count() != 1 {
            return Err(format!(
                "must contain {{ordinal}} exactly once, got {template:?}"
            ));
        }
        if !(template.starts_with("http://") || template.starts_with("https://")) {
            return Err(format!(
                "must start with http:// or https://, got {template:?}"
            ));
        }
        Ok(UrlTemplate(template.trim_end_matches('/').to_owned()))
    }

    /// The base URL of `ordinal`'s internal API.
    pub fn url_for(&self, ordinal: Ordinal) -> String {
        self.0.replace("{ordinal}", &ordinal.to_string())
    }
}

/// How the Kubernetes API is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeAccess {
    /// The pod's service account (token, CA and namespace mounted by Kubernetes).
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
}

/// The gateway StatefulSet whose `spec.replicas` is the pod count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatefulSetRef {
    /// How to reach the API.
    pub access: KubeAccess,
    /// Its namespace; `None`: the service account's (or kubeconfig context's) namespace.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

/// Where the number of gateway pods comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodCountSource {
    /// `NUM_GATEWAY_PODS`: fixed for the life of the process.
    Fixed {
        /// The pod count.
        pods: u32,
        /// Whether a Kubernetes API was also configured (and is ignored): said in the log.
        api_ignored: bool,
    },
    /// The StatefulSet's `spec.replicas`, watched live.
    StatefulSet(StatefulSetRef),
}

/// Where this cluster's Litestream replicas live in the bucket: `<cluster>/<namespace>/`,
/// then `gateway-<ordinal>` (the same expansion as `litestream/litestream.yml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPrefix {
    /// `CLUSTER_NAME`.
    pub cluster: String,
    /// `POD_NAMESPACE`.
    pub namespace: String,
}

impl ReplicaPrefix {
    /// The replica path of `ordinal` inside the bucket.
    pub fn path_for(&self, ordinal: Ordinal) -> String {
        format!("{}/{}/gateway-{ordinal}", self.cluster, self.namespace)
    }
}

/// What the retention task deletes, and how often it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Sent outbox rows and DM-help records older than this are deleted.
    pub keep: std::time::Duration,
    /// How often the task runs.
    pub every: std::time::Duration,
}

/// Configuration of `guildshard gateway`.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// This pod's ordinal.
    pub ordinal: Ordinal,
    /// Where the pod count comes from.
    pub pod_count: PodCountSource,
    /// How guilds are assigned to pods.
    pub strategy: Strategy,
    /// Discord connection settings.
    pub discord: DiscordConfig,
    /// The SQLite database file.
    pub database_path: PathBuf,
    /// Bearer token for the internal API.
    pub internal_token: Secret,
    /// How to reach peer pods (for resharding).
    pub url_template: UrlTemplate,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub public_bind: SocketAddr,
    /// `/internal/v1/*`.
    pub internal_bind: SocketAddr,
    /// Whether Litestream manages the database's checkpoints.
    pub litestream: bool,
    /// The Litestream configuration, for restoring a departed peer's replica.
    pub litestream_config: Option<PathBuf>,
    /// The `litestream` executable.
    pub litestream_bin: PathBuf,
    /// How long a replica restore may show no progress before it is killed.
    pub restore_stall: std::time::Duration,
    /// The replica path prefix; set whenever Litestream is in use (required then).
    pub replica_prefix: Option<ReplicaPrefix>,
    /// The retention task's settings.
    pub retention: Retention,
    /// Fault injection: how long every command waits before running.
    pub command_delay: std::time::Duration,
}

impl GatewayConfig {
    /// Reads and validates the gateway's configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable that is missing or malformed.
    pub fn from_env<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let raw = RawEnv::from_pairs(vars)?;
        let litestream = match raw.litestream_enabled.as_deref().map(str::trim) {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(ConfigError::new(
                    ENV_LITESTREAM_ENABLED,
                    format!("must be true or false, got {other:?}"),
                ))
            }
        };
        Ok(GatewayConfig {
            ordinal: ordinal(&raw)?,
            pod_count: pod_count(&raw)?,
            strategy: strategy(&raw)?,
            discord: discord(&raw)?,
            database_path: PathBuf::from(required(ENV_DATABASE_PATH, &raw.database_path)?),
            internal_token: internal_token(&raw)?,
            url_template: url_template(&raw)?,
            public_bind: bind(
                ENV_PUBLIC_BIND_ADDR,
                &raw.public_bind_addr,
                DEFAULT_PUBLIC_BIND,
            )?,
            internal_bind: bind(
                ENV_INTERNAL_BIND_ADDR,
                &raw.internal_bind_addr,
                DEFAULT_INTERNAL_BIND,
            )?,
            litestream,
            litestream_config: raw
                .litestream_config
                .as_deref()
                .map(|v| PathBuf::from(v.trim())),
            litestream_bin: PathBuf::from(
                raw.litestream_bin
                    .as_deref()
                    .map_or("litestream", str::trim),
            ),
            restore_stall: std::time::Duration::from_secs(positive(
                ENV_LITESTREAM_RESTORE_STALL_SECONDS,
                &raw.litestream_restore_stall_seconds,
                DEFAULT_RESTORE_STALL_SECONDS,
                "seconds",
            )?),
            replica_prefix: replica_prefix(&raw, litestream)?,
            retention: Retention {
                keep: std::time::Duration::from_secs(
                    positive(
                        ENV_RETENTION_DAYS,
                        &raw.retention_days,
                        DEFAULT_RETENTION_DAYS,
                        "days",
                    )?
                    .saturating_mul(86_400),
                ),
                every: std::time::Duration::from_secs(positive(
                    ENV_RETENTION_INTERVAL_SECONDS,
                    &raw.retention_interval_seconds,
                    DEFAULT_RETENTION_INTERVAL_SECONDS,
                    "seconds",
                )?),
            },
            command_delay: std::time::Duration::from_millis(
                raw.fault_command_delay_ms
                    .as_deref()
                    .map(|v| parse_num(ENV_FAULT_COMMAND_DELAY_MS, v, "milliseconds"))
                    .transpose()?
                    .unwrap_or(0),
            ),
        })
    }
}

impl GatewayConfig {
    /// The StatefulSet a pod would watch in this environment, ignoring everything else (for
    /// `guildshard status`, which runs beside the pods); `None` without a Kubernetes API.
    pub fn statefulset_from_env<I>(vars: I) -> Option<StatefulSetRef>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut raw = RawEnv::from_pairs(vars).ok()?;
        raw.num_gateway_pods = None;
        match pod_count(&raw) {
            Ok(PodCountSource::StatefulSet(sts)) => Some(sts),
            _ => None,
        }
    }
}

/// Configuration of `guildshard http`.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The topology to route by until the gateway pods report theirs (`NUM_GATEWAY_PODS`, or
    /// one pod: every pod answers a guild it does not own with its topology).
    pub initial_topology: Topology,
    /// The Ed25519 key interactions are signed with.
    pub public_key: [u8; 32],
    /// Bearer token for the gateway pods' internal API.
    pub internal_token: Secret,
    /// How to reach a gateway pod by ordinal.
    pub url_template: UrlTemplate,
    /// Discord connection settings, when `DISCORD_TOKEN` is set. The service itself never
    /// calls Discord (the owner pods edit deferred responses), so the bot token need not be
    /// given to the internet-facing pods.
    pub discord: Option<DiscordConfig>,
    /// Where the service listens.
    pub bind: SocketAddr,
}

impl HttpConfig {
    /// Reads and validates the HTTP service's configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable that is missing or malformed.
    pub fn from_env<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let raw = RawEnv::from_pairs(vars)?;
        Ok(HttpConfig {
            initial_topology: Topology::new(
                strategy(&raw)?,
                raw.num_gateway_pods
                    .as_deref()
                    .map(pods_override)
                    .transpose()?
                    .unwrap_or(1),
            )
            .ok_or_else(|| ConfigError::new(ENV_NUM_GATEWAY_PODS, "must be positive"))?,
            public_key: public_key(&raw)?,
            internal_token: internal_token(&raw)?,
            url_template: url_template(&raw)?,
            discord: match raw.discord_token {
                Some(_) => Some(discord(&raw)?),
                None => None,
            },
            bind: bind(ENV_HTTP_BIND_ADDR, &raw.http_bind_addr, DEFAULT_PUBLIC_BIND)?,
        })
    }
}

fn required<'a>(var: &'static str, value: &'a Option<String>) -> Result<&'a str, ConfigError> {
    value
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| ConfigError::new(var, "is required but not set"))
}

fn parse_num<T: FromStr>(var: &'static str, value: &str, what: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(var, format!("must be {what}, got {value:?}")))
}

/// An optional positive count (`default` when unset).
fn positive(
    var: &'static str,
    value: &Option<String>,
    default: u64,
    unit: &str,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match parse_num::<u64>(var, value, &format!("a positive number of {unit}"))? {
        0 => Err(ConfigError::new(
            var,
            format!("must be a positive number of {unit}, got \"0\""),
        )),
        n => Ok(n),
    }
}

/// The replica path prefix. Required whenever Litestream is in use (a sidecar replicates the
/// database, or the pod restores departed peers' replicas): without it, every cluster and
/// namespace that shares a bucket would write `gateway-0` into the same place, and each
/// would corrupt the others' backups and restore their guilds.
fn replica_prefix(raw: &RawEnv, litestream: bool) -> Result<Option<ReplicaPrefix>, ConfigError> {
    let needed = litestream || raw.litestream_config.is_some();
    let cluster = raw.cluster_name.as_deref().map(str::trim);
    let namespace = raw.pod_namespace.as_deref().map(str::trim);
    if let Some(c) = cluster.filter(|c| !is_dns_label(c)) {
        return Err(ConfigError::new(
            ENV_CLUSTER_NAME,
            format!("must be lower-case letters, digits and '-' (a DNS label), got {c:?}"),
        ));
    }
    let why = "is required while Litestream is in use: it prefixes the replica path \
               <cluster>/<namespace>/gateway-<ordinal> (set LITESTREAM_ENABLED=false without Litestream)";
    match (cluster, namespace) {
        (Some(cluster), Some(namespace)) => Ok(Some(ReplicaPrefix {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
        })),
        _ if !needed => Ok(None),
        (None, _) => Err(ConfigError::new(ENV_CLUSTER_NAME, why)),
        (Some(_), None) => Err(ConfigError::new(ENV_POD_NAMESPACE, why)),
    }
}

fn ordinal(raw: &RawEnv) -> Result<Ordinal, ConfigError> {
    if let Some(v) = &raw.pod_ordinal {
        return parse_num(ENV_POD_ORDINAL, v, "a non-negative integer").map(Ordinal);
    }
    for (var, value) in [(ENV_POD_NAME, &raw.pod_name), (ENV_HOSTNAME, &raw.hostname)] {
        if let Some(name) = value {
            let suffix = name.trim().rsplit_once('-').map(|(_, n)| n);
            return suffix
                .and_then(|n| n.parse().ok())
                .map(Ordinal)
                .ok_or_else(|| {
                    ConfigError::new(
                        var,
                        format!("must end in -<ordinal> when POD_ORDINAL is unset, got {name:?}"),
                    )
                });
        }
    }
    Err(ConfigError::new(
        ENV_POD_ORDINAL,
        "is required (or POD_NAME/HOSTNAME ending in -<ordinal>)",
    ))
}

fn pods_override(value: &str) -> Result<u32, ConfigError> {
    match parse_num(ENV_NUM_GATEWAY_PODS, value, "a positive integer")? {
        0 => Err(ConfigError::new(
            ENV_NUM_GATEWAY_PODS,
            "must be a positive integer, got \"0\"",
        )),
        n => Ok(n),
    }
}

fn pod_count(raw: &RawEnv) -> Result<PodCountSource, ConfigError> {
    // Checked even when NUM_GATEWAY_PODS wins, so a typo shows before it matters.
    let name = raw.statefulset_name.as_deref().map_or("gateway", str::trim);
    if !is_dns_label(name) {
        return Err(ConfigError::new(
            ENV_STATEFULSET_NAME,
            format!("must be a Kubernetes object name, got {name:?}"),
        ));
    }
    let namespace = raw.pod_namespace.as_deref().map(str::trim);
    if let Some(ns) = namespace.filter(|ns| !is_dns_label(ns)) {
        return Err(ConfigError::new(
            ENV_POD_NAMESPACE,
            format!("must be a Kubernetes namespace name, got {ns:?}"),
        ));
    }
    let access = match (&raw.kubeconfig, &raw.kubernetes_service_host) {
        (Some(path), _) => Some(KubeAccess::Kubeconfig(PathBuf::from(path.trim()))),
        (None, Some(_)) => Some(KubeAccess::InCluster),
        (None, None) => None,
    };
    if let Some(pods) = &raw.num_gateway_pods {
        return Ok(PodCountSource::Fixed {
            pods: pods_override(pods)?,
            api_ignored: access.is_some(),
        });
    }
    let Some(access) = access else {
        return Err(ConfigError::new(
            ENV_NUM_GATEWAY_PODS,
            "is required when no Kubernetes API is configured \
             (an in-cluster service account, or KUBECONFIG)",
        ));
    };
    Ok(PodCountSource::StatefulSet(StatefulSetRef {
        access,
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }))
}

/// An RFC 1123 label: what Kubernetes accepts as a namespace or StatefulSet name.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn strategy(raw: &RawEnv) -> Result<Strategy, ConfigError> {
    match &raw.shard_strategy {
        None => Ok(Strategy::default()),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(ENV_SHARD_STRATEGY, format!("{e}"))),
    }
}

fn discord(raw: &RawEnv) -> Result<DiscordConfig, ConfigError> {
    let token = required(ENV_DISCORD_TOKEN, &raw.discord_token)?;
    let application_id = raw
        .discord_application_id
        .as_deref()
        .map(|v| parse_num(ENV_DISCORD_APPLICATION_ID, v, "a snowflake"))
        .transpose()?;
    let api_base = match &raw.discord_api_base {
        None => None,
        Some(v) => {
            let v = v.trim().trim_end_matches('/');
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(ConfigError::new(
                    ENV_DISCORD_API_BASE,
                    format!("must be an http(s) URL, got {v:?}"),
                ));
            }
            Some(v.to_owned())
        }
    };
    let shard_count = match raw.discord_shard_count.as_deref() {
        None => None,
        Some(v) => match parse_num::<u32>(ENV_DISCORD_SHARD_COUNT, v, "a positive integer")? {
            0 => {
                return Err(ConfigError::new(
                    ENV_DISCORD_SHARD_COUNT,
                    "must be a positive integer, got \"0\"",
                ))
            }
            n => Some(n),
        },
    };
    Ok(DiscordConfig {
        token: Secret::new(token),
        application_id,
        api_base,
        shard_count,
    })
}

fn internal_token(raw: &RawEnv) -> Result<Secret, ConfigError> {
    let token = required(ENV_INTERNAL_AUTH_TOKEN, &raw.internal_auth_token)?;
    if token.len() < 16 {
        return Err(ConfigError::new(
            ENV_INTERNAL_AUTH_TOKEN,
            "must be at least 16 characters",
        ));
    }
    Ok(Secret::new(token))
}

fn url_template(raw: &RawEnv) -> Result<UrlTemplate, ConfigError> {
    let template = raw
        .gateway_internal_url_template
        .as_deref()
        .unwrap_or(DEFAULT_URL_TEMPLATE);
    UrlTemplate::parse(template.trim())
        .map_err(|e| ConfigError::new(ENV_GATEWAY_INTERNAL_URL_TEMPLATE, e))
}

fn bind(
    var: &'static str,
    value: &Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    parse_num(
        var,
        value.as_deref().unwrap_or(default),
        "an address like 0.0.0.0:8080",
    )
}

fn public_key(raw: &RawEnv) -> Result<[u8; 32], ConfigError> {
    let hex_key = required(ENV_DISCORD_PUBLIC_KEY, &raw.discord_public_key)?;
    let bytes = hex::decode(hex_key).map_err(|_| {
        ConfigError::new(
            ENV_DISCORD_PUBLIC_KEY,
            "must be 64 hex characters (an Ed25519 public key)",
        )
    })?;
    bytes.try_into().map_err(|_| {
        ConfigError::new(
            ENV_DISCORD_PUBLIC_KEY,
            "must be 64 hex characters (an Ed25519 public key)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn gateway_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("POD_ORDINAL", "1"),
            ("NUM_GATEWAY_PODS", "3"),
            ("DISCORD_TOKEN", "bot-token-value"),
            ("DATABASE_PATH", "/data/bot.db"),
            ("INTERNAL_AUTH_TOKEN", "internal-token-0123456789"),
            // No Litestream: the replica prefix is tested on its own below.
            ("LITESTREAM_ENABLED", "false"),
            ("UNRELATED", "whatever"),
        ]
    }

    fn gateway_with(
        overrides: &[(&'static str, &'static str)],
    ) -> Result<GatewayConfig, ConfigError> {
        let mut pairs = gateway_env();
        pairs.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
        pairs.extend(overrides.iter().filter(|(_, v)| *v != "<unset>"));
        GatewayConfig::from_env(env(&pairs))
    }

    #[test]
    fn reads_a_complete_gateway_config() {
        let cfg = gateway_with(&[]).expect("valid");
        assert_eq!(cfg.ordinal, Ordinal(1));
        assert_eq!(
            cfg.pod_count,
            PodCountSource::Fixed {
                pods: 3,
                api_ignored: false
            }
        );
        assert_eq!(cfg.strategy, Strategy::Md5);
        assert_eq!(
            cfg.url_template.url_for(Ordinal(2)),
            "http://gateway-2.gateway-internal:8081"
        );
    }

    #[test]
    fn ordinal_falls_back_to_pod_name_then_hostname() {
        let cfg = gateway_with(&[("POD_ORDINAL", "<unset>"), ("POD_NAME", "gateway-2")]);
        assert_eq!(cfg.expect("valid").ordinal, Ordinal(2));
        let cfg = gateway_with(&[("POD_ORDINAL", "<unset>"), ("HOSTNAME", "gateway-12")]);
        assert_eq!(cfg.expect("valid").ordinal, Ordinal(12));
        let err = gateway_with(&[("POD_ORDINAL", "<unset>"), ("HOSTNAME", "laptop")])
            .expect_err("no ordinal");
        assert_eq!(err.var, "HOSTNAME");
        let err = gateway_with(&[("POD_ORDINAL", "<unset>")]).expect_err("no ordinal");
        assert_eq!(err.var, "POD_ORDINAL");
    }

    #[test]
    fn the_pod_count_comes_from_the_statefulset_unless_overridden() {
        let cfg = gateway_with(&[("NUM_GATEWAY_PODS", "<unset>"), ("KUBECONFIG", "/k/config")])
            .expect("valid");
        assert_eq!(
            cfg.pod_count,
            PodCountSource::StatefulSet(StatefulSetRef {
                access: KubeAccess::Kubeconfig("/k/config".into()),
                namespace: None,
                name: "gateway".into(),
            })
        );
        let cfg = gateway_with(&[
            ("NUM_GATEWAY_PODS", "<unset>"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("POD_NAMESPACE", "bots"),
            ("STATEFULSET_NAME", "gw"),
        ])
        .expect("valid");
        assert_eq!(
            cfg.pod_count,
            PodCountSource::StatefulSet(StatefulSetRef {
                access: KubeAccess::InCluster,
                namespace: Some("bots".into()),
                name: "gw".into(),
            })
        );
        // Both: the override wins, and the log says so.
        let cfg = gateway_with(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]).expect("valid");
        assert_eq!(
            cfg.pod_count,
            PodCountSource::Fixed {
                pods: 3,
                api_ignored: true
            }
        );
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&'static str, &'static str)] = &[
            ("NUM_GATEWAY_PODS", "0"),
            ("NUM_GATEWAY_PODS", "three"),
            ("NUM_GATEWAY_PODS", "<unset>"),
            ("STATEFULSET_NAME", "Gateway_0"),
            ("SHARD_STRATEGY", "ring"),
            ("POD_ORDINAL", "-1"),
            ("DISCORD_TOKEN", "<unset>"),
            ("DISCORD_API_BASE", "127.0.0.1:9"),
            ("DISCORD_SHARD_COUNT", "0"),
            ("DISCORD_APPLICATION_ID", "app"),
            ("INTERNAL_AUTH_TOKEN", "short"),
            ("GATEWAY_INTERNAL_URL_TEMPLATE", "http://gateway:8081"),
            ("PUBLIC_BIND_ADDR", "localhost"),
            ("DATABASE_PATH", "<unset>"),
            ("CLUSTER_NAME", "Prod_EU"),
            ("LITESTREAM_RESTORE_STALL_SECONDS", "0"),
            ("RETENTION_DAYS", "0"),
            ("RETENTION_DAYS", "a week"),
            ("RETENTION_INTERVAL_SECONDS", "-5"),
        ];
        for (var, value) in cases {
            let err = gateway_with(&[(var, value)]).expect_err(var);
            assert_eq!(err.var, *var, "{var}={value}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn litestream_needs_the_cluster_and_namespace_for_its_replica_path() {
        for enabled in [
            ("LITESTREAM_ENABLED", "<unset>"),
            ("LITESTREAM_ENABLED", "true"),
        ] {
            let err = gateway_with(&[enabled]).expect_err("no cluster name");
            assert_eq!(err.var, "CLUSTER_NAME", "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
            let err =
                gateway_with(&[enabled, ("CLUSTER_NAME", "prod-eu")]).expect_err("no namespace");
            assert_eq!(err.var, "POD_NAMESPACE", "{err}");
        }
        // The replica fallback alone needs it too: it restores peers' replicas by that path.
        let err = gateway_with(&[("LITESTREAM_CONFIG", "/etc/litestream/litestream.yml")])
            .expect_err("no cluster name");
        assert_eq!(err.var, "CLUSTER_NAME", "{err}");

        let cfg = gateway_with(&[
            ("LITESTREAM_ENABLED", "<unset>"),
            ("CLUSTER_NAME", "prod-eu"),
            ("POD_NAMESPACE", "bots"),
        ])
        .expect("valid");
        let prefix = cfg.replica_prefix.expect("a prefix");
        assert_eq!(prefix.path_for(Ordinal(2)), "prod-eu/bots/gateway-2");
        assert!(cfg.litestream);
        // Without Litestream nothing is replicated, so nothing is required.
        assert_eq!(gateway_with(&[]).expect("valid").replica_prefix, None);
    }

    #[test]
    fn retention_and_restore_stall_have_defaults_and_can_be_set() {
        let cfg = gateway_with(&[]).expect("valid");
        assert_eq!(
            cfg.retention.keep,
            std::time::Duration::from_secs(30 * 86_400)
        );
        assert_eq!(cfg.retention.every, std::time::Duration::from_secs(3600));
        assert_eq!(cfg.restore_stall, std::time::Duration::from_secs(60));
        let cfg = gateway_with(&[
            ("RETENTION_DAYS", "7"),
            ("RETENTION_INTERVAL_SECONDS", "600"),
            ("LITESTREAM_RESTORE_STALL_SECONDS", "300"),
        ])
        .expect("valid");
        assert_eq!(
            cfg.retention.keep,
            std::time::Duration::from_secs(7 * 86_400)
        );
        assert_eq!(cfg.retention.every, std::time::Duration::from_secs(600));
        assert_eq!(cfg.restore_stall, std::time::Duration::from_secs(300));
    }

    #[test]
    fn bearer_check_accepts_only_the_exact_token() {
        let secret = Secret::new("s3cret-token");
        assert!(secret.is_bearer(Some("Bearer s3cret-token")));
        for bad in [
            None,
            Some("s3cret-token"),
            Some("Bearer s3cret-tokeN"),
            Some("Bearer s3cret"),
            Some("bearer s3cret-token"),
        ] {
            assert!(!secret.is_bearer(bad), "{bad:?}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cfg = gateway_with(&[]).expect("valid");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("bot-token-value"), "{debug}");
        assert!(!debug.contains("internal-token-0123456789"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert_eq!(cfg.discord.token.expose(), "bot-token-value");
    }

    #[test]
    fn http_config_needs_a_valid_public_key() {
        let mut pairs = gateway_env();
        pairs.push(("DISCORD_PUBLIC_KEY", "zz"));
        let err = HttpConfig::from_env(env(&pairs)).expect_err("bad key");
        assert_eq!(err.var, "DISCORD_PUBLIC_KEY");
        pairs.pop();
        let key = "11".repeat(32);
        let mut pairs = env(&pairs);
        pairs.push(("DISCORD_PUBLIC_KEY".into(), key));
        let cfg = HttpConfig::from_env(pairs.clone()).expect("valid");
        assert_eq!(cfg.public_key, [0x11; 32]);
        assert!(cfg.discord.is_some());
        // The internet-facing service runs without the bot token.
        pairs.retain(|(k, _)| k != "DISCORD_TOKEN");
        let cfg = HttpConfig::from_env(pairs).expect("valid without a token");
        assert!(cfg.discord.is_none());
    }
}
