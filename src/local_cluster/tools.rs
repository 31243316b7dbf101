//! The external programs the local cluster runs beside the pods: the real Litestream binary and
//! SeaweedFS (`weed mini`, an S3-compatible server that checks signatures). Both are pinned and
//! installed by `.ci/install-tools.sh` into `<repo>/.cache/tools/venv/bin`; CI and the tests use
//! the same script.

use std::path::{Path, PathBuf};

/// What a developer runs to install the tools (printed when they are missing).
pub const INSTALL_HINT: &str = "bash .ci/install-tools.sh";

/// The environment variable that names the tools' directory (the installer prints it).
pub const ENV_TOOLS_BIN: &str = "GUILDSHARD_TOOLS_BIN";

/// Where the installer puts the tools, relative to the repository root.
const DEFAULT_BIN: &str = ".cache/tools/venv/bin";

/// A directory holding `litestream` and `weed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    bin: PathBuf,
}

impl Tools {
    /// The tools in `bin` (not checked).
    pub fn at(bin: impl Into<PathBuf>) -> Tools {
        Tools { bin: bin.into() }
    }

    /// Finds installed tools: `$GUILDSHARD_TOOLS_BIN`, then `.cache/tools/venv/bin` under the
    /// current directory, then the first `PATH` entry that has both. `None` when none has.
    pub fn find() -> Option<Tools> {
        let from_env = std::env::var_os(ENV_TOOLS_BIN).map(PathBuf::from);
        let local = Some(PathBuf::from(DEFAULT_BIN));
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        from_env
            .into_iter()
            .chain(local)
            .chain(on_path)
            // Absolute, so children started in another directory find them too.
            .filter_map(|dir| std::fs::canonicalize(dir).ok())
            .map(Tools::at)
            .find(Tools::complete)
    }

    /// Whether both programs are present and executable files.
    pub fn complete(&self) -> bool {
        is_executable(&self.litestream()) && is_executable(&self.weed())
    }

    /// The `litestream` executable.
    pub fn litestream(&self) -> PathBuf {
        self.bin.join("litestream")
    }

    /// The `weed` executable (SeaweedFS).
    pub fn weed(&self) -> PathBuf {
        self.bin.join("weed")
    }

    /// The directory itself.
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_both_programs_is_incomplete() {
        let dir = std::env::temp_dir().join(format!("guildshard-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let tools = Tools::at(&dir);
        let chmod = |name: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        };
        assert!(!tools.complete(), "empty");
        std::fs::write(dir.join("litestream"), "#!/bin/sh\n").expect("write");
        chmod("litestream", 0o755);
        assert!(!tools.complete(), "weed missing");
        std::fs::write(dir.join("weed"), "#!/bin/sh\n").expect("write");
        assert!(!tools.complete(), "weed not executable");
        chmod("weed", 0o755);
        assert!(tools.complete());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
