#!/usr/bin/env bash
# Keeps the seed's name: builds the static guest agent (ukload-guest, the tool
# executor) and installs it where a kraft setup runs it:
#   ~/.osvm/unikernels/unikraft_tool_executor
# The build itself is scripts/build-guest-image.sh --binary-only (one place
# that knows the static build flags).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly DEST_DIR="$HOME/.osvm/unikernels"
readonly DEST="$DEST_DIR/unikraft_tool_executor"

bin="$("$HERE/build-guest-image.sh" --binary-only | tail -n1)"
[ -x "$bin" ] || {
    echo "build-unikraft-tool-executor: error: build produced no binary" >&2
    exit 1
}
mkdir -p "$DEST_DIR"
install -m 0755 "$bin" "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
echo "build-unikraft-tool-executor: installed $DEST ($(du -h "$DEST" | cut -f1), static)"
