//! The command line (bin-only): clap definitions and the glue from each subcommand to the
//! library. Errors here are `anyhow` with context; the library's own errors are typed.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use guildshard::config::{ConfigError, DiscordConfig, GatewayConfig, HttpConfig};
use guildshard::ownership::{owner, GuildId, Strategy, Topology};
use guildshard::reshard::plan::{generated_snowflakes, Plan};

/// A runtime failure.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Bad arguments (clap uses 2 as well).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Bad configuration in the environment (`EX_USAGE`, as linkerd2-proxy exits on a bad env).
pub(crate) const EXIT_CONFIG: u8 = 64;

/// guildshard: a Discord moderation and community bot sharded across Kubernetes pods.
#[derive(Parser, Debug)]
#[command(name = "guildshard", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a gateway pod (configured from the environment).
    Gateway,
    /// Run the stateless HTTP service (configured from the environment).
    Http,
    /// Run the local Discord emulator.
    Emulator(EmulatorArgs),
    /// Run the whole system on this machine: emulator, gateway pods, HTTP service, traffic.
    Dev(DevArgs),
    /// Print the ordinal that owns each guild: `<guild_id> <ordinal>` per line.
    Owner(OwnerArgs),
    /// Show how many guilds move, and where, when the pod count changes.
    Plan(PlanArgs),
    /// Show the cluster as the gateway pods report it (reads GATEWAY_INTERNAL_URL_TEMPLATE,
    /// INTERNAL_AUTH_TOKEN; the expected pod count from --pods, NUM_GATEWAY_PODS, the
    /// StatefulSet through KUBECONFIG or the in-cluster service account, or else the pods).
    Status(StatusArgs),
    /// Register the bot's commands with Discord (bulk overwrite; idempotent).
    RegisterCommands,
    /// Measure a part of the system and print its figures as a Markdown table.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    scenario: guildshard::bench::Scenario,
    /// Repetitions per figure (figures are medians); default depends on the scenario.
    #[arg(long)]
    runs: Option<usize>,
    /// Minimal sizes: checks that the scenario runs; its figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Total guild counts for `memory` (default 1000,10000) and `rescale` (default 10000),
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    guilds: Vec<usize>,
    /// For `rescale`: only these changes of the pod count (`STRATEGY:FROM-TO`, e.g.
    /// `jump:4-3`), comma-separated; default md5:3-4,md5:4-3,jump:3-4,jump:4-3.
    #[arg(long = "change", value_delimiter = ',')]
    changes: Vec<guildshard::bench::rescale::Change>,
    /// Scratch directory (default: the system temp dir); removed afterwards.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the scratch directories (pods' logs and databases) to inspect a run.
    #[arg(long)]
    keep_work: bool,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Poll until the cluster has converged; exit 0 then, 1 on timeout.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The pod count to judge against (default: NUM_GATEWAY_PODS, else the StatefulSet's
    /// replicas, else what the pods report). Lets `kubectl exec gateway-0 -- guildshard
    /// status --pods 3` run in the image, which has no shell to set variables with.
    #[arg(long)]
    pods: Option<u32>,
}

#[derive(clap::Args, Debug)]
struct EmulatorArgs {
    /// Address to bind (keep it on loopback: the control API has no auth).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Members per guild at start.
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Text channels per guild at start.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Shards recommended by GET /gateway/bot.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// session_start_limit.max_concurrency.
    #[arg(long, default_value_t = 1)]
    max_concurrency: u32,
    /// HELLO heartbeat interval in milliseconds.
    #[arg(long = "heartbeat-ms", default_value_t = 41_250)]
    heartbeat_ms: u64,
    /// Where interactions are POSTed.
    #[arg(long)]
    interactions_url: Option<String>,
    /// The bot token clients must present.
    #[arg(long, default_value = "emulator-bot-token")]
    token: String,
    /// Global REST budget in requests per second (default: unlimited).
    #[arg(long)]
    rest_rate_limit: Option<u32>,
    /// Guilds to create at start.
    #[arg(long, default_value_t = 10)]
    guilds: usize,
    /// Generated events per second (0: no traffic).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seed for generated guilds and traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Gateway pods to run.
    #[arg(long, default_value_t = 3)]
    pods: u32,
    /// Guilds in the emulator.
    #[arg(long, default_value_t = 200)]
    guilds: usize,
    /// Generated events per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Where the pods keep their databases and logs (kept across runs, like PVCs).
    #[arg(long, default_value = ".guildshard-dev")]
    data_dir: PathBuf,
    /// Hash strategy: md5 or jump.
    #[arg(long, default_value = "md5")]
    strategy: String,
    /// Run without the HTTP service.
    #[arg(long)]
    no_http: bool,
    /// Run without object storage and Litestream, even when they are installed.
    #[arg(long)]
    no_replication: bool,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Rescale live to this many pods, following the runbook, while traffic flows.
    #[arg(long)]
    scale_to: Option<u32>,
    /// Seconds after start at which --scale-to happens.
    #[arg(long, default_value_t = 20)]
    after: u64,
}

#[derive(clap::Args, Debug)]
struct OwnerArgs {
    /// Guild ids; read from stdin (one per line) when none are given.
    guild_ids: Vec<String>,
    /// Number of gateway pods.
    #[arg(long)]
    pods: u32,
    /// Hash strategy: md5 or jump.
    #[arg(long, default_value = "md5")]
    strategy: String,
}

#[derive(clap::Args, Debug)]
struct PlanArgs {
    /// Pod count before the change.
    #[arg(long)]
    from: u32,
    /// Pod count after the change.
    #[arg(long)]
    to: u32,
    /// Hash strategy: md5 or jump.
    #[arg(long, default_value = "md5")]
    strategy: String,
    /// A file of guild ids, one per line (default: 100k generated snowflakes).
    #[arg(long)]
    guilds: Option<PathBuf>,
}

/// A usage error: printed as one line, exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let result = match cli.command {
        Command::Owner(args) => cmd_owner(args),
        Command::Plan(args) => cmd_plan(args),
        Command::Gateway => {
            let config = match GatewayConfig::from_env(std::env::vars()) {
                Ok(config) => config,
                Err(err) => return Ok(config_error(&err)),
            };
            return Ok(operator_must_act(cmd_gateway(config))?.unwrap_or(ExitCode::SUCCESS));
        }
        Command::Http => {
            let config = match HttpConfig::from_env(std::env::vars()) {
                Ok(config) => config,
                Err(err) => return Ok(config_error(&err)),
            };
            cmd_http(config)
        }
        Command::RegisterCommands => {
            let config = match DiscordConfig::from_env(std::env::vars()) {
                Ok(config) => config,
                Err(err) => return Ok(config_error(&err)),
            };
            cmd_register_commands(&config)
        }
        Command::Emulator(args) => cmd_emulator(args),
        Command::Dev(args) => cmd_dev(args),
        Command::Status(args) => return cmd_status(args),
        Command::Bench(args) => cmd_bench(args),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                eprintln!("guildshard: error: {usage}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            Err(err)
        }
    }
}

/// Prints a configuration error as one line naming the variable; exit 64.
fn config_error(err: &ConfigError) -> ExitCode {
    eprintln!("guildshard: invalid configuration: {err}");
    ExitCode::from(EXIT_CONFIG)
}

fn topology_arg(strategy: &str, pods: u32, flag: &str) -> Result<Topology, UsageError> {
    let strategy: Strategy = strategy
        .parse()
        .map_err(|e| UsageError(format!("--strategy: {e}")))?;
    Topology::new(strategy, pods)
        .ok_or_else(|| UsageError(format!("{flag}: must be a positive integer, got 0")))
}

fn parse_guild(text: &str) -> Result<GuildId, UsageError> {
    text.trim().parse().map_err(|e| UsageError(format!("{e}")))
}

fn cmd_owner(args: OwnerArgs) -> anyhow::Result<()> {
    let topology = topology_arg(&args.strategy, args.pods, "--pods")?;
    let ids: Vec<String> = if args.guild_ids.is_empty() {
        read_lines(std::io::stdin().lock()).context("reading guild ids from stdin")?
    } else {
        args.guild_ids
    };
    // Validate everything before printing anything, so a bad id never leaves partial output.
    let guilds = ids
        .iter()
        .map(|id| parse_guild(id))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for guild in guilds {
        writeln!(out, "{guild} {}", owner(guild, topology))?;
    }
    out.flush()?;
    Ok(())
}

fn cmd_plan(args: PlanArgs) -> anyhow::Result<()> {
    let from = topology_arg(&args.strategy, args.from, "--from")?;
    let to = topology_arg(&args.strategy, args.to, "--to")?;
    let guilds = match &args.guilds {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let lines = read_lines(std::io::BufReader::new(file))
                .with_context(|| format!("reading {}", path.display()))?;
            lines
                .iter()
                .map(|l| parse_guild(l))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => generated_snowflakes(100_000, 1),
    };
    if guilds.is_empty() {
        bail!(UsageError("no guild ids to plan over".into()));
    }
    print!("{}", Plan::compute(guilds, from, to));
    Ok(())
}

fn cmd_emulator(args: EmulatorArgs) -> anyhow::Result<()> {
    use guildshard::emulator::{self, EmulatorConfig, TrafficRequest};
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!(UsageError("--rate: must be a non-negative number".into()));
    }
    guildshard::telemetry::init(guildshard::telemetry::LogFormat::Text);
    let cfg = EmulatorConfig {
        seed: args.seed,
        guilds: args.guilds,
        members_per_guild: args.members,
        channels_per_guild: args.channels,
        heartbeat_interval_ms: args.heartbeat_ms.max(1),
        shards: args.shards.max(1),
        max_concurrency: args.max_concurrency.max(1),
        token: args.token,
        interactions_url: args.interactions_url,
        rest_rate_limit: args.rest_rate_limit,
        ..EmulatorConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let addr = std::net::SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let shutdown = guildshard::shutdown::Shutdown::new();
        let emu = emulator::start(cfg, listener, shutdown.clone())
            .await
            .context("starting the emulator")?;
        let app = emu.application();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "emulator listening on {}", emu.addr())?;
            writeln!(out, "application id {}", app.id)?;
            writeln!(out, "public key {}", app.public_key_hex)?;
            writeln!(out, "token {}", app.token)?;
            out.flush()?;
        }
        if args.rate > 0.0 {
            emu.start_traffic(TrafficRequest {
                rate: args.rate,
                count: None,
                duration_ms: None,
                seed: Some(args.seed),
            })
            .context("starting traffic")?;
        }
        guildshard::shutdown::signal().await;
        shutdown.drain(std::time::Duration::from_secs(5)).await;
        Ok(())
    })
}

fn cmd_bench(args: BenchArgs) -> anyhow::Result<()> {
    use guildshard::bench::{self, Options, Scenario};
    if args.runs == Some(0) {
        bail!(UsageError("--runs: must be at least 1".into()));
    }
    // Logs go to stderr; the table on stdout is the output.
    guildshard::telemetry::init(guildshard::telemetry::LogFormat::Text);
    let default_runs = match args.scenario {
        Scenario::Ownership => 11,
        Scenario::Store => 5,
        _ => 3,
    };
    let options = Options {
        runs: if args.quick {
            1
        } else {
            args.runs.unwrap_or(default_runs)
        },
        quick: args.quick,
        binary: std::env::current_exe().context("locating the guildshard binary for the pods")?,
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
        guilds: args.guilds,
        changes: args.changes,
        keep_work: args.keep_work,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime
        .block_on(bench::run(args.scenario, &options))
        .with_context(|| format!("bench {}", args.scenario.name()))?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    out.flush()?;
    Ok(())
}

/// How long a gateway pod may take to stop after SIGTERM before it gives up waiting: a pod
/// removed by a scale-down first hands its guilds over (bounded by the StatefulSet's grace
/// period, at most `DRAIN_LIMIT`), then closes and flushes (20 s).
const GATEWAY_GRACE: std::time::Duration =
    std::time::Duration::from_secs(guildshard::gateway::DRAIN_LIMIT.as_secs() + 20);

/// A database that cannot be opened (corrupt, not a database, from a newer binary), or a pod
/// count the Kubernetes API refuses (RBAC, the StatefulSet's name), is a deployment problem
/// like a bad variable: one line and [`EXIT_CONFIG`], as the README says. Other failures pass
/// through.
fn operator_must_act(result: anyhow::Result<()>) -> anyhow::Result<Option<ExitCode>> {
    let Err(err) = result else {
        return Ok(None);
    };
    match err.downcast_ref::<guildshard::gateway::Error>() {
        // The store's message already carries its cause, so print it alone, not the chain.
        Some(open @ guildshard::gateway::Error::OpenDatabase { source, .. }) => {
            eprintln!("guildshard: error: {open}: {source}");
            Ok(Some(ExitCode::from(EXIT_CONFIG)))
        }
        Some(refused @ guildshard::gateway::Error::PodCount(_)) => {
            eprintln!("guildshard: error: {refused}");
            Ok(Some(ExitCode::from(EXIT_CONFIG)))
        }
        _ => Err(err),
    }
}

fn cmd_gateway(config: GatewayConfig) -> anyhow::Result<()> {
    guildshard::telemetry::init(guildshard::telemetry::LogFormat::Json);
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let public = tokio::net::TcpListener::bind(config.public_bind)
            .await
            .with_context(|| format!("binding PUBLIC_BIND_ADDR {}", config.public_bind))?;
        let internal = tokio::net::TcpListener::bind(config.internal_bind)
            .await
            .with_context(|| format!("binding INTERNAL_BIND_ADDR {}", config.internal_bind))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "public listening on {}", public.local_addr()?)?;
            writeln!(out, "internal listening on {}", internal.local_addr()?)?;
            out.flush()?;
        }
        let shutdown = guildshard::shutdown::Shutdown::new();
        let pod = tokio::spawn(guildshard::gateway::run(
            config,
            guildshard::gateway::Listeners { public, internal },
            shutdown.clone(),
        ));
        tokio::pin!(pod);
        tokio::select! {
            result = &mut pod => return result.context("gateway task")?.context("gateway pod"),
            () = guildshard::shutdown::signal() => {}
        }
        shutdown.trigger();
        match tokio::time::timeout(GATEWAY_GRACE, &mut pod).await {
            Ok(result) => result.context("gateway task")?.context("gateway pod"),
            Err(_) => bail!("shutdown took longer than {GATEWAY_GRACE:?}"),
        }
    })
}

/// How long the HTTP service may take to finish in-flight requests after SIGTERM (each is
/// bounded by Discord's 3 s deadline).
const HTTP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn cmd_http(config: HttpConfig) -> anyhow::Result<()> {
    guildshard::telemetry::init(guildshard::telemetry::LogFormat::Json);
    // The Deployment's pod name labels the metrics; `http` when run by hand.
    let pod = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "http".to_owned());
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let state = guildshard::http::AppState::new(&config, &pod).context("http service")?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding HTTP_BIND_ADDR {}", config.bind))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "http listening on {}", listener.local_addr()?)?;
            out.flush()?;
        }
        let shutdown = guildshard::shutdown::Shutdown::new();
        let server = tokio::spawn(guildshard::http::serve(state, listener, shutdown.clone()));
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.context("http task")?.context("http service"),
            () = guildshard::shutdown::signal() => {}
        }
        shutdown.trigger();
        match tokio::time::timeout(HTTP_GRACE, &mut server).await {
            Ok(result) => result.context("http task")?.context("http service"),
            Err(_) => bail!("shutdown took longer than {HTTP_GRACE:?}"),
        }
    })
}

fn cmd_register_commands(config: &DiscordConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let count = runtime
        .block_on(guildshard::http::register::register_commands(config))
        .context("registering commands")?;
    println!("registered {count} commands");
    Ok(())
}

fn cmd_dev(args: DevArgs) -> anyhow::Result<()> {
    let topology = topology_arg(&args.strategy, args.pods, "--pods")?;
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!(UsageError("--rate: must be a non-negative number".into()));
    }
    guildshard::telemetry::init_with_default(guildshard::telemetry::LogFormat::Text, "warn");
    let opts = guildshard::dev::DevOptions {
        binary: std::env::current_exe().context("finding this executable")?,
        pods: topology.pods.get(),
        guilds: args.guilds,
        rate: args.rate,
        strategy: topology.strategy,
        data_dir: args.data_dir,
        http: !args.no_http,
        replication: if args.no_replication {
            guildshard::dev::ReplicationChoice::Off
        } else {
            guildshard::dev::ReplicationChoice::IfInstalled(guildshard::local_cluster::Tools::find())
        },
        duration: args.duration.map(std::time::Duration::from_secs),
        scale_to: args.scale_to,
        scale_after: std::time::Duration::from_secs(args.after),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = guildshard::shutdown::Shutdown::new();
        let trip = shutdown.clone();
        tokio::spawn(async move {
            guildshard::shutdown::signal().await;
            trip.trigger();
        });
        guildshard::dev::run(opts, shutdown)
            .await
            .context("dev cluster")
    })
}

/// Non-blank lines, trimmed.
fn read_lines(reader: impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if !line.trim().is_empty() {
            lines.push(line.trim().to_owned());
        }
    }
    Ok(lines)
}

/// Ordinals probed beyond NUM_GATEWAY_PODS, to show draining pods of a scale-down.
const STATUS_PROBE_BEYOND: u32 = 8;

fn cmd_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use guildshard::config::{Secret, UrlTemplate};
    use guildshard::pod_client::PodClient;
    use guildshard::reshard::status::{table, verdict, Verdict};

    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let strategy: Option<Strategy> = match env("SHARD_STRATEGY").map(|v| v.parse()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(err)) => {
            eprintln!("guildshard: SHARD_STRATEGY: {err}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let template = match env("GATEWAY_INTERNAL_URL_TEMPLATE").map(|v| UrlTemplate::parse(&v)) {
        Some(Ok(t)) => t,
        Some(Err(why)) => {
            eprintln!("guildshard: GATEWAY_INTERNAL_URL_TEMPLATE: {why}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        None => {
            eprintln!("guildshard: GATEWAY_INTERNAL_URL_TEMPLATE: must be set");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let Some(token) = env("INTERNAL_AUTH_TOKEN") else {
        eprintln!("guildshard: INTERNAL_AUTH_TOKEN: must be set");
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let fixed = match (args.pods, env("NUM_GATEWAY_PODS").map(|v| v.parse::<u32>())) {
        (Some(0), _) => {
            eprintln!("guildshard: --pods: must be a positive integer");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        (Some(n), _) => Some(n),
        (None, Some(Ok(n))) if n > 0 => Some(n),
        (None, Some(_)) => {
            eprintln!("guildshard: NUM_GATEWAY_PODS: must be a positive integer");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        (None, None) => None,
    };
    let statefulset = guildshard::config::GatewayConfig::statefulset_from_env(std::env::vars());
    let peers = PodClient::new(
        template,
        Secret::new(token),
        guildshard::reshard::PEER_TIMEOUTS,
    )
    .context("building the client of the pods' internal API")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let source = match (fixed, statefulset) {
            (None, Some(sts)) => Some(
                guildshard::reshard::statefulset::StatefulSetSource::connect(&sts)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            _ => None,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout);
        loop {
            // The StatefulSet is read again each round: a scale during --wait is followed.
            let pods = match (&source, fixed) {
                (_, Some(n)) => Some(n),
                (Some(src), None) => match src.get().await {
                    Ok((t, _)) => Some(t.replicas),
                    Err(err) => {
                        eprintln!("guildshard: {err}");
                        None
                    }
                },
                (None, None) => None,
            };
            let (expected, reports) = probe(&peers, pods, strategy).await;
            let Some(expected) = expected else {
                println!(
                    "blocked: no gateway pod answered and the pod count is unknown (pass --pods N)"
                );
                if !args.wait || std::time::Instant::now() >= deadline {
                    return Ok(ExitCode::from(EXIT_FAILURE));
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            };
            let v = verdict(expected, &reports);
            let done = v == Verdict::Converged;
            if !args.wait || done || std::time::Instant::now() >= deadline {
                print!("{}", table(&reports));
                println!("expected: {expected}");
                println!("{v}");
                return Ok(if done || !args.wait {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILURE)
                });
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

/// Asks every pod that may exist for its status. With `pods` unknown (no override, no API),
/// the expected topology is the newest the pods report, as the HTTP service learns it.
async fn probe(
    peers: &guildshard::pod_client::PodClient,
    pods: Option<u32>,
    strategy: Option<Strategy>,
) -> (
    Option<Topology>,
    Vec<(
        guildshard::ownership::Ordinal,
        Result<guildshard::wire::StatusReport, String>,
    )>,
) {
    use guildshard::ownership::Ordinal;
    let ask = |upto: u32| {
        let probes = (0..upto).map(Ordinal).map(|o| {
            let peers = peers.clone();
            async move { (o, peers.status(o).await.map_err(|e| e.to_string())) }
        });
        futures::future::join_all(probes)
    };
    // With no count to go by, ask a first few and follow the largest count reported.
    let mut upto = pods.unwrap_or(1) + STATUS_PROBE_BEYOND;
    let mut all = ask(upto).await;
    let reported = all
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.topology.pods.get())
        .max()
        .unwrap_or(0);
    if pods.is_none() && reported + STATUS_PROBE_BEYOND > upto {
        upto = reported + STATUS_PROBE_BEYOND;
        all = ask(upto).await;
    }
    let answered: Vec<&guildshard::wire::StatusReport> =
        all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let learned = guildshard::http::topology::newest(&answered);
    let expected = match pods {
        Some(n) => Topology::new(
            strategy.or(learned.map(|t| t.strategy)).unwrap_or_default(),
            n,
        ),
        None => learned,
    };
    // Unreachable ordinals beyond N are simply not there; keep them out of the table.
    let reports = all
        .into_iter()
        .filter(|(o, r)| r.is_ok() || expected.is_some_and(|t| t.is_member(*o)))
        .collect();
    (expected, reports)
}
