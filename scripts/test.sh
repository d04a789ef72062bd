#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first (Debian):
#   bash scripts/test.sh [extra cargo test args...]
# Installs Node.js (for the MCP echo server tests), Chromium (the HTML
# report is rendered headless in a test) and, unless
# UKLOAD_SKIP_MICROVM=1, the microVM pieces (QEMU, the guest kernel,
# vhost-device-vsock) through scripts/setup-microvm.sh. A test whose
# prerequisite is still missing says so and skips, except under CI=true
# (as .ci/run runs it), where it fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: cannot install $* (need root and apt-get); tests needing it will skip" >&2
    return 0
  fi
  if [[ -z ${UKLOAD_APT_UPDATED:-} ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    export UKLOAD_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v node >/dev/null 2>&1 || apt_install nodejs
command -v setsid >/dev/null 2>&1 || apt_install util-linux
command -v make >/dev/null 2>&1 || apt_install make
command -v script >/dev/null 2>&1 || apt_install bsdutils
# Debian's python3 at /usr/bin: scripts/module-cycles.py, and the rootfs tests
# build an image of exactly that interpreter (a python3 on PATH may be a
# pyenv shim, which is a shell script).
[[ -x /usr/bin/python3 ]] || apt_install python3
# ukload image rootfs builds erofs images (MCP servers inside microVMs); its
# tests check them with fsck.erofs.
command -v mkfs.erofs >/dev/null 2>&1 || apt_install erofs-utils
# The HTML report is looked at in a real headless browser.
command -v chromium >/dev/null 2>&1 || apt_install chromium

if [[ ${UKLOAD_SKIP_MICROVM:-0} != 1 ]]; then
  if bash scripts/setup-microvm.sh; then
    bash scripts/build-guest-image.sh || echo "test.sh: guest image build failed; microVM tests will say why and skip" >&2
  else
    echo "test.sh: microVM setup failed; microVM tests will say why and skip" >&2
  fi
fi
# cargo install puts vhost-device-vsock here.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"


echo "== module dependencies (no cycles)"
python3 scripts/module-cycles.py
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo build --quiet --bins --examples
cargo test --all-targets "$@"
echo "== cargo test, marker containment (cgroups disabled: the fallback path)"
UKLOAD_CONTAINMENT=marker cargo test --test run_tests --test fault_tests \
  --test harness_kill_tests --test cycles_tests --test containment_tests --test scale_tests "$@"
