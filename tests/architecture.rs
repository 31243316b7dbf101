//! The module levels of `src/lib.rs`: imports only point down. One crate cannot enforce this the
//! way separate crates would, so this test reads `src/` and rejects `crate::` paths that point
//! up or sideways where the design forbids it.

use std::path::{Path, PathBuf};

/// `(module, modules it must not use)`.
const RULES: &[(&str, &[&str])] = &[
    // Level 0: nothing above.
    (
        "ownership",
        &[
            "config",
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
            "wire",
            "commands",
        ],
    ),
    (
        "config",
        &[
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    (
        "calendar",
        &[
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
            "config",
            "ownership",
        ],
    ),
    (
        "commands",
        &[
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    (
        "listener",
        &[
            "config",
            "store",
            "emulator",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    (
        "shutdown",
        &[
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    (
        "telemetry",
        &[
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    (
        "wire",
        &[
            "store",
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    // Level 1.
    (
        "store",
        &[
            "emulator",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    (
        "emulator",
        &[
            "store",
            "kube_api",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    // The Kubernetes API stand-in is for tests and `dev`: production code (reshard, gateway,
    // http) reaches Kubernetes through a client over HTTP, never through it.
    (
        "kube_api",
        &[
            "store",
            "emulator",
            "reshard",
            "gateway",
            "http",
            "local_cluster",
            "dev",
            "bench",
        ],
    ),
    // Level 2.
    (
        "reshard",
        &[
            "emulator",
            "kube_api",
            "gateway",
            "http",
            "local_cluster",
            "dev",
        ],
    ),
    // Level 3: the HTTP service is stateless and never touches a database.
    (
        "gateway",
        &["http", "emulator", "kube_api", "local_cluster", "dev"],
    ),
    (
        "http",
        &[
            "store",
            "gateway",
            "emulator",
            "kube_api",
            "local_cluster",
            "dev",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files of a module: `src/<m>.rs` or everything under `src/<m>/`.
fn module_files(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        files.push(file);
    }
    let dir = src.join(module);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    files
}

fn uses(text: &str, target: &str) -> Vec<String> {
    let needles = [
        format!("crate::{target}::"),
        format!("crate::{target};"),
        format!("crate::{target}}}"),
        format!("crate::{{{target}"),
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| needles.iter().any(|n| line.contains(n.as_str())))
        .map(str::to_owned)
        .collect()
}

#[test]
fn imports_only_point_down_the_levels() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (module, forbidden) in RULES {
        let files = module_files(&src, module);
        assert!(!files.is_empty(), "module {module} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            for target in *forbidden {
                for line in uses(&text, target) {
                    violations.push(format!(
                        "{}: {module} uses {target}: {}",
                        file.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports pointing up the levels:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_violation() {
    // Guards the test above against matching nothing.
    assert_eq!(uses("use crate::store::Store;", "store").len(), 1);
    assert_eq!(uses("use crate::{store, wire};", "store").len(), 1);
    assert!(uses("// use crate::store::Store;", "store").is_empty());
    assert!(uses("use crate::storefront::X;", "store").is_empty());
}
