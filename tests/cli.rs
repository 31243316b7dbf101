//! The command line: `owner`, `plan`, and configuration errors, run as the real binary.

use crate::support::process::run_cli;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn owner_prints_the_reference_ordinal() {
    let out = run_cli(&["owner", "81384788765712384", "--pods", "3"], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "81384788765712384 2\n");
}

#[test]
fn owner_reads_ids_from_stdin_and_honours_the_strategy() {
    let out = run_cli(
        &["owner", "--pods", "64", "--strategy", "jump"],
        &[],
        Some("0\n1\n\n81384788765712384\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Values from tests/vectors/ownership.json (computed by Node).
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "0 25");
    assert_eq!(lines[1], "1 19");
    assert_eq!(lines.len(), 3);
}

#[test]
fn owner_rejects_bad_input_with_one_line_and_exit_two() {
    for args in [
        &["owner", "12a", "--pods", "3"][..],
        &["owner", "1", "--pods", "0"][..],
        &["owner", "1", "--pods", "3", "--strategy", "ring"][..],
        // Above i64::MAX: no such guild can be stored, so none is accepted.
        &["owner", "9223372036854775808", "--pods", "3"][..],
    ] {
        let out = run_cli(args, &[], None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim().lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "no partial output for {args:?}");
    }
}

#[test]
fn plan_prints_the_moved_fraction_and_matrix() {
    let out = run_cli(
        &["plan", "--from", "3", "--to", "4", "--strategy", "jump"],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().expect("a summary line");
    assert!(first.starts_with("jump/3 -> jump/4: "), "{first}");
    assert!(first.contains("of 100000 guilds move"), "{first}");
    // A header plus one row per source ordinal.
    assert_eq!(text.lines().count(), 1 + 1 + 3, "{text}");
}

#[test]
fn plan_over_a_guild_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guilds.txt");
    std::fs::write(&path, "81384788765712384\n0\n1\n").expect("write");
    let out = run_cli(
        &[
            "plan",
            "--from",
            "1",
            "--to",
            "3",
            "--guilds",
            path.to_str().expect("utf-8"),
        ],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("md5/1 -> md5/3: "),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("of 3 guilds move"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn gateway_with_a_bad_env_var_exits_with_one_line_naming_it() {
    let env = [
        ("POD_ORDINAL", "0"),
        ("NUM_GATEWAY_PODS", "three"),
        ("DISCORD_TOKEN", "t"),
        ("DATABASE_PATH", "/nonexistent/bot.db"),
        ("INTERNAL_AUTH_TOKEN", "0123456789abcdef0123"),
    ];
    let out = run_cli(&["gateway"], &env, None);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("NUM_GATEWAY_PODS"), "{err}");
}

/// The README's main command: the whole local cluster starts (with object storage and a
/// Litestream sidecar per pod, the tools being installed), handles traffic, answers a
/// simulated command through the HTTP service, shows each replica's lag, and stops cleanly by
/// itself.
#[test]
fn dev_runs_the_local_cluster_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let path = std::env::var("PATH").unwrap_or_default();
    let tools = crate::support::objstore::tools().bin.display().to_string();
    let out = run_cli(
        &[
            "dev",
            "--pods",
            "2",
            "--guilds",
            "20",
            "--rate",
            "40",
            "--duration",
            "8",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &[
            ("PATH", path.as_str()),
            ("GUILDSHARD_TOOLS_BIN", tools.as_str()),
        ],
        None,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("gateway-0") && text.contains("gateway-1"),
        "{text}"
    );
    assert!(text.contains("object storage (SeaweedFS) on"), "{text}");
    assert!(text.contains("replica lag"), "{text}");
    assert!(text.contains("stopped cleanly"), "{text}");
    assert!(data.join("data/gateway-1/bot.db").exists());
    for ordinal in 0..2 {
        let log =
            std::fs::read_to_string(data.join(format!("logs/gateway-{ordinal}-litestream.log")))
                .unwrap_or_default();
        assert!(
            log.contains("path=local/") && log.contains(&format!("/gateway-{ordinal}")) && log.contains("litestream shut down"),
            "gateway-{ordinal}'s sidecar replicated to its own path and stopped with a final sync:\n{log}"
        );
    }
}

/// A database the pod cannot use is a deployment problem like a bad variable: exit 64 and one
/// line that says which file and why, not the cause repeated down an error chain.
#[test]
fn gateway_with_an_unusable_database_exits_64_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).expect("write");
    let future = dir.path().join("future.db");
    {
        let conn = rusqlite::Connection::open(&future).expect("create");
        conn.execute_batch("CREATE TABLE t(x); PRAGMA user_version = 9999;")
            .expect("stamp a future schema version");
    }
    for (path, cause) in [(&garbage, "not a database"), (&future, "is newer than")] {
        let path = path.to_str().expect("utf-8");
        let env = [
            ("POD_ORDINAL", "0"),
            ("NUM_GATEWAY_PODS", "1"),
            ("DISCORD_TOKEN", "t"),
            ("DATABASE_PATH", path),
            ("INTERNAL_AUTH_TOKEN", "0123456789abcdef0123"),
            ("PUBLIC_BIND_ADDR", "127.0.0.1:0"),
            ("INTERNAL_BIND_ADDR", "127.0.0.1:0"),
            ("CLUSTER_NAME", "test"),
            ("POD_NAMESPACE", "test"),
            ("RUST_LOG", "off"),
        ];
        let out = run_cli(&["gateway"], &env, None);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{path}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{path}: {err}");
        assert!(err.contains(path), "{err}");
        assert_eq!(err.matches(cause).count(), 1, "{err}");
    }
}
