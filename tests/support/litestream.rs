//! A stand-in for the `litestream` binary, for tests of the replica fallback that need to
//! control how a restore behaves (its speed, a stall) without object storage.

use std::path::{Path, PathBuf};

/// A stand-in for `litestream restore -o <out>`: a shell script that finds `<out>` in its
/// arguments and runs `body`, where `$source` is the departed pod's database.
pub fn fake_litestream(dir: &Path, name: &str, source: &Path, body: &str) -> PathBuf {
    let script = dir.join(name);
    let text = format!(
        "#!/bin/sh\nout=''\nwhile [ $# -gt 0 ]; do\n  [ \"$1\" = -o ] && out=$2\n  shift\ndone\n\
         [ -n \"$out\" ] || exit 2\nsource='{}'\n{body}\n",
        source.display()
    );
    std::fs::write(&script, text).expect("write the stand-in");
    let mut perms = std::fs::metadata(&script).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod");
    script
}
