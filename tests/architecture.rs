//! The module levels of `src/lib.rs`: imports only point down. One crate cannot enforce this the
//! way separate crates would, so this test reads `src/` and rejects `crate::` paths that point
//! up or sideways where the design forbids it.

use std::path::{Path, PathBuf};

/// Every module of `src/lib.rs` (checked by [`every_module_of_lib_rs_has_a_rule`]):
/// `(module, level, modules of its own level or below that it must not use either)`.
///
/// The levels are those of the crate doc's `# Layout`, and each module's `//!` states its own.
/// A module never uses one of a higher level; that part is derived from the level numbers, so a
/// module only needs the right level to be checked, and only sideways bans are listed.
const RULES: &[(&str, u8, &[&str])] = &[
    // Level 0. `ownership` and `calendar` use nothing else in the crate.
    (
        "ownership",
        0,
        &[
            "calendar",
            "commands",
            "config",
            "listener",
            "shutdown",
            "telemetry",
            "wire",
        ],
    ),
    (
        "calendar",
        0,
        &[
            "commands",
            "config",
            "listener",
            "ownership",
            "shutdown",
            "telemetry",
            "wire",
        ],
    ),
    ("config", 0, &[]),
    // Pure data and serde types: nothing that does I/O.
    ("commands", 0, &["listener", "shutdown", "telemetry"]),
    ("wire", 0, &["listener", "shutdown", "telemetry"]),
    // The internal API's paths: strings built from `ownership`'s ids, nothing else.
    (
        "internal_paths",
        0,
        &[
            "calendar",
            "commands",
            "config",
            "listener",
            "shutdown",
            "telemetry",
            "wire",
        ],
    ),
    ("listener", 0, &["config"]),
    ("shutdown", 0, &[]),
    ("telemetry", 0, &[]),
    // Level 1: the store, and the stand-ins for Discord and Kubernetes, which use level 0 only
    // (a stand-in that used the bot's own code could not catch the bot misreading the API).
    ("store", 1, &["emulator", "kube_api"]),
    ("emulator", 1, &["store", "kube_api"]),
    ("kube_api", 1, &["store", "emulator"]),
    // Level 2. The pods' client decodes the store's guild export, so it sits above the store;
    // resharding calls peers through it, never the other way round.
    ("reshard", 2, &[]),
    ("pod_client", 2, &["reshard"]),
    // Level 3: the two services know each other only over HTTP, and the HTTP service is
    // stateless: it never touches a database.
    ("gateway", 3, &["http"]),
    ("http", 3, &["gateway", "store"]),
    // Level 4: `dev` drives the local cluster, not the other way round.
    ("local_cluster", 4, &["dev"]),
    ("dev", 4, &[]),
    // Level 5: measures everything below.
    ("bench", 5, &[]),
];

/// What `module` must not use: every module of a higher level, and its sideways bans.
fn forbidden(module: &str) -> Vec<&'static str> {
    let (_, level, sideways) = RULES
        .iter()
        .find(|(m, ..)| *m == module)
        .unwrap_or_else(|| panic!("no rule for {module}"));
    RULES
        .iter()
        .filter(|(_, l, _)| l > level)
        .map(|(m, ..)| *m)
        .chain(sideways.iter().copied())
        .collect()
}

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
    for (module, ..) in RULES {
        let files = module_files(&src, module);
        assert!(!files.is_empty(), "module {module} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            for target in forbidden(module) {
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

#[test]
fn the_levels_keep_the_stand_ins_and_the_services_apart() {
    // The bans the design states outright, so a change of levels cannot drop one unnoticed.
    for stand_in in ["emulator", "kube_api"] {
        for bot in ["gateway", "http", "reshard", "store"] {
            assert!(
                forbidden(stand_in).contains(&bot),
                "{stand_in} may use {bot}"
            );
        }
    }
    for (service, other) in [("gateway", "http"), ("http", "gateway")] {
        for banned in [other, "local_cluster", "dev", "bench"] {
            assert!(
                forbidden(service).contains(&banned),
                "{service} may use {banned}"
            );
        }
    }
    assert!(forbidden("http").contains(&"store"));
    assert!(!forbidden("dev").contains(&"local_cluster"));
    assert!(forbidden("bench").is_empty());
}

/// `use crate::{a, b::c}` names several modules in one statement, and once rustfmt spreads it
/// over lines the modules no longer follow `crate::`, so the level check cannot see them. One
/// `use` per module keeps every crate path greppable; braces below a module
/// (`use crate::store::{Store, Write}`) are fine.
fn brace_imports(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| {
            let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            squeezed.contains("usecrate::{")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn crate_imports_name_one_module_each() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for line in brace_imports(&text) {
            found.push(format!("{}: {}", file.display(), line.trim()));
        }
    }
    assert!(
        found.is_empty(),
        "split these into one `use crate::<module>::...` per module:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_brace_check_sees_a_brace_import() {
    assert_eq!(brace_imports("use crate::{store, wire};").len(), 1);
    assert_eq!(brace_imports("    use crate::{a, b::c};").len(), 1);
    assert_eq!(brace_imports("pub(crate) use crate::{").len(), 1);
    assert_eq!(brace_imports("use crate :: { store };").len(), 1);
    assert!(brace_imports("use crate::store::{Store, Write};").is_empty());
    assert!(brace_imports("// use crate::{store, wire};").is_empty());
}

/// The `pub mod`s of `src/lib.rs`.
fn lib_modules() -> Vec<String> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let text = std::fs::read_to_string(lib).expect("read lib.rs");
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub mod ")?;
            Some(rest.strip_suffix(';')?.trim().to_owned())
        })
        .collect()
}

/// A module without a rule would be checked against nothing, and one of a lower level could
/// import it unnoticed: every module gets a level when it is added.
#[test]
fn every_module_of_lib_rs_has_a_rule() {
    let modules = lib_modules();
    assert!(modules.len() > 10, "lib.rs read: {modules:?}");
    let ruled: Vec<&str> = RULES.iter().map(|(m, ..)| *m).collect();
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| !ruled.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "modules of src/lib.rs without a rule (give each its level in RULES): {missing:?}"
    );
    // A rule naming a module that is gone (or misspelt) would check nothing.
    let unknown: Vec<&str> = RULES
        .iter()
        .flat_map(|(m, _, sideways)| std::iter::once(*m).chain(sideways.iter().copied()))
        .filter(|m| !modules.iter().any(|l| l == m))
        .collect();
    assert!(
        unknown.is_empty(),
        "RULES name modules that src/lib.rs does not have: {unknown:?}"
    );
}
