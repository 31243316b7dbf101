//! `guildshard bench`: every scenario runs at minimal sizes (`--quick`) and prints a table with
//! its rows, and cleans up its scratch directory. Figures are never asserted: they are timing.

use crate::support::process::run_cli;

/// Runs `guildshard bench <scenario> --quick` in a fresh work dir; returns stdout.
fn quick(scenario: &str) -> String {
    let work = tempfile::tempdir().expect("temp dir");
    let path = std::env::var("PATH").unwrap_or_default();
    // Scenarios that need Litestream and SeaweedFS find them here.
    let tools = crate::support::objstore::tools().bin.display().to_string();
    let out = run_cli(
        &[
            "bench",
            scenario,
            "--quick",
            "--work-dir",
            work.path().to_str().expect("utf-8 temp path"),
        ],
        &[
            ("PATH", &path),
            ("RUST_LOG", "warn"),
            ("GUILDSHARD_TOOLS_BIN", &tools),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {scenario} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(work.path())
        .expect("read work dir")
        .collect();
    assert!(left.is_empty(), "bench {scenario} left {left:?} behind");
    stdout
}

/// The data rows of a printed table whose figure column starts with `prefix`.
fn rows<'a>(table: &'a str, prefix: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.starts_with(&format!("| {prefix}")))
        .collect()
}

#[test]
fn ownership_prints_digest_md5_and_jump_rows() {
    let out = quick("ownership");
    assert!(out.starts_with("## ownership"), "{out}");
    for figure in ["md5 digest alone", "owner() md5", "owner() jump"] {
        let found = rows(&out, figure);
        assert!(!found.is_empty(), "no {figure} row in\n{out}");
        assert!(found.iter().all(|r| r.contains(" ns |")), "{out}");
    }
}

#[test]
fn store_prints_writer_export_and_import_rows() {
    let out = quick("store");
    for figure in ["writer:", "export_guild", "import_guild"] {
        assert_eq!(rows(&out, figure).len(), 1, "{figure} in\n{out}");
    }
    assert!(
        out.contains("1000 rows"),
        "500 messages make 1000 guild rows\n{out}"
    );
}

#[test]
fn ingest_runs_a_pod_and_prints_the_parse_anchor() {
    let out = quick("ingest");
    assert_eq!(rows(&out, "N=1, requested").len(), 1, "{out}");
    assert_eq!(rows(&out, "bare parse: serde_json").len(), 1, "{out}");
    assert_eq!(rows(&out, "bare parse limit ÷").len(), 1, "{out}");
}

#[test]
fn memory_reports_rss_and_owned_guilds() {
    let out = quick("memory");
    let found = rows(&out, "20 guilds, N=1");
    assert_eq!(found.len(), 1, "{out}");
    assert!(
        found[0].contains("MiB") && found[0].contains("owns 20 guilds"),
        "{out}"
    );
}

#[test]
fn interactions_time_both_paths_and_every_request_is_answered() {
    let out = quick("interactions");
    for figure in [
        "guildshard: offered",
        "bare axum: offered",
        "guildshard: peak",
        "bare axum: peak",
    ] {
        let found = rows(&out, figure);
        assert_eq!(found.len(), 1, "{figure} in\n{out}");
    }
    for row in rows(&out, "guildshard: offered") {
        assert!(row.contains(" ms |") && row.contains("(0 failed"), "{out}");
    }
}

#[test]
fn rescale_moves_guilds_and_loses_nothing() {
    let out = quick("rescale");
    let found = rows(&out, "200 guilds, md5 3→4");
    assert_eq!(found.len(), 1, "{out}");
    assert!(found[0].contains(" s |"), "{out}");
    assert!(found[0].contains("events lost: 0 |"), "{out}");
}

#[test]
fn failover_restarts_a_killed_pod_and_times_it() {
    let out = quick("failover");
    let found = rows(&out, "kill -9");
    assert_eq!(found.len(), 1, "{out}");
    assert!(found[0].contains(" ms |"), "{out}");
    assert_eq!(rows(&out, "restore a").len(), 1, "{out}");
    assert_eq!(rows(&out, "replication lag p50 / p99").len(), 1, "{out}");
}

#[test]
fn zero_runs_is_a_usage_error() {
    let out = run_cli(&["bench", "store", "--runs", "0"], &[], None);
    assert_eq!(out.status.code(), Some(2));
}
