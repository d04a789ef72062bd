#!/usr/bin/env bash
# Soak: `ukload cycles --cycles 1000` (spawn -> boot -> terminate, repeated),
# failing if ukload's own open fds, threads or RSS grow beyond the
# tolerances in src/cycles.rs, or if any cycle is not clean.
# Usage: scripts/soak-cycles.sh [CYCLES] [extra `ukload cycles` flags...]
# Env: UKLOAD (the ukload binary; default: build it in debug and use it).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-1000}"
shift || true
if [[ -z "${UKLOAD:-}" ]]; then
    cargo build --quiet --bins
    UKLOAD=target/debug/ukload
fi
exec "$UKLOAD" cycles --cycles "$cycles" "$@"
