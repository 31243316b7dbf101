//! Logging setup: JSON lines (or human-readable text) with the pod's identity on every line.
//!
//! Level 0. Metrics live with the component that records them (`gateway::metrics`,
//! `http::metrics`); each registry carries a `pod` label.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production, and what tests parse).
    Json,
    /// Human-readable text (the `dev` command, the CLI).
    Text,
}

/// The filter when `RUST_LOG` is unset: `info` for this crate and everything else, `warn` for
/// serenity, whose `#[instrument]`ed `Shard::handle_event` would otherwise format every
/// dispatch with `Debug` into a span (an eighth of a busy pod's CPU, measured).
pub const DEFAULT_FILTER: &str = "info,serenity=warn";

/// Installs the global subscriber. `RUST_LOG` overrides [`DEFAULT_FILTER`]. Logs go to stderr
/// so that stdout stays free for command output.
pub fn init(format: LogFormat) {
    init_with_default(format, DEFAULT_FILTER);
}

/// Like [`init`], with another default filter when `RUST_LOG` is unset (the `dev` command keeps
/// its screen for the live view and shows only warnings).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (tests that run several entry points in one process) keeps the first one.
    let _ = result;
}
