#!/usr/bin/env bash
# Unikernel load test with the seed's interface:
#   bash scripts/load-test-unikernels.sh [N] [extra ukload run flags...]
# N defaults to 15. Runs `ukload run N` with the seed's defaults (port 5252,
# CIDs 200-299, boot < 500 ms, < 80 MB per instance, 60 s timeout, logs in
# /tmp/osvm-load-test). No prompts. Exit code is ukload's: 0 PASS, 2 PARTIAL,
# 1 FAIL, 64 bad usage, 69 a needed program is missing.
#
# Launcher: kraft if it is installed and the guest image exists, otherwise
# the process launcher (ukload-guest as host processes); override with
# --launcher. Set UKLOAD to use a prebuilt ukload binary.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
count=15
if [[ $# -gt 0 && $1 != -* ]]; then
  count=$1
  shift
fi
if ! [[ $count =~ ^[0-9]+$ ]] || [[ $count -eq 0 ]]; then
  echo "load-test-unikernels.sh: N must be a whole number >= 1 (got '$count')" >&2
  exit 64
fi

if [[ -z ${UKLOAD:-} ]]; then
  if ! command -v cargo >/dev/null 2>&1; then
    echo "load-test-unikernels.sh: cargo not found; install Rust (https://rustup.rs) or set UKLOAD=/path/to/ukload" >&2
    exit 69
  fi
  (cd "$here" && cargo build --release --quiet --bins)
  UKLOAD="$here/target/release/ukload"
fi

launcher_args=()
have_launcher=0
want_qemu=0
prev=
for a in "$@"; do
  [[ $a == --launcher || $a == --launcher=* ]] && have_launcher=1
  [[ $a == --launcher=qemu || ( $prev == --launcher && $a == qemu ) ]] && want_qemu=1
  prev=$a
done
if [[ $want_qemu -eq 1 ]]; then
  # Real microVMs: QEMU, the guest kernel, vhost-device-vsock and the guest
  # image, installed and built once (idempotent, quick when cached).
  bash "$here/scripts/setup-microvm.sh" >&2
  bash "$here/scripts/build-guest-image.sh" >&2
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
fi
if [[ $have_launcher -eq 0 ]]; then
  if command -v kraft >/dev/null 2>&1 && [[ -f $HOME/.osvm/unikernels/unikraft_tool_executor ]]; then
    launcher_args=(--launcher kraft)
  else
    echo "load-test-unikernels.sh: kraft or its image not found; using the process launcher (ukload-guest on the host)" >&2
    launcher_args=(--launcher process)
  fi
fi

# The seed's defaults, unless the caller gave the flag.
defaults=()
add_default() {
  local flag=$1 value=$2 a
  for a in "${@:3}"; do
    [[ $a == "$flag" || $a == "$flag="* ]] && return 0
  done
  defaults+=("$flag" "$value")
}
add_default --port 5252 "$@"
add_default --cid-range 200-299 "$@"
add_default --max-boot-ms 500 "$@"
add_default --max-mem-mb 80 "$@"
add_default --boot-timeout 60 "$@"
add_default --log-dir /tmp/osvm-load-test "$@"

exec "$UKLOAD" run "$count" "${defaults[@]}" "${launcher_args[@]}" "$@"
