#!/usr/bin/env bash
# Benchmark with the seed's name: prints measured figures, never asserts timings
# (these machines are shared: compare figures within one run).
#   bash scripts/benchmark-unikernel-performance.sh [--launcher process|qemu] [--counts "1 5 10 20"]
# For each instance count: boot median / p95 / max, average PSS and RSS per
# instance, tool-call median / p95 (MCP echo over vsock), wall time; then MCP
# echo latency over a single session (ukload mcp bench). Nothing is killed by
# name: ukload ends what it started.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
launcher=process
counts="1 5 10 20"
while [[ $# -gt 0 ]]; do
  case $1 in
    --launcher) launcher=$2; shift 2 ;;
    --counts) counts=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "benchmark: unknown argument $1 (try --help)" >&2; exit 64 ;;
  esac
done
command -v python3 >/dev/null || { echo "benchmark: python3 is needed to read the JSON reports" >&2; exit 69; }
(cd "$here" && cargo build --release --quiet --bins)
UKLOAD="$here/target/release/ukload"
extra=()
if [[ $launcher == qemu ]]; then
  bash "$here/scripts/setup-microvm.sh" >&2
  bash "$here/scripts/build-guest-image.sh" >&2
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  extra=(--max-boot-ms 600000 --max-tool-ms 600000)
fi
logs=$(mktemp -d /tmp/ukload-bench.XXXXXX)
trap 'rm -rf "$logs"' EXIT

printf '%-6s %-9s %10s %10s %10s %10s %10s %10s %10s %8s\n' \
  launcher count boot_med boot_p95 boot_max pss_avg rss_avg tool_med tool_p95 wall_s
for n in $counts; do
  "$UKLOAD" run "$n" --launcher "$launcher" --format json -q --log-dir "$logs" \
    --tool-call 'echo:{"message":"bench"}' "${extra[@]}" > "$logs/r.json" || true
  python3 - "$logs/r.json" "$launcher" "$n" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["summary"]
b, t = s.get("boot_ms") or {}, s.get("tool_ms") or {}
booted = max(s["booted"], 1)
f = lambda v: "-" if v is None else f"{v:.1f}"
print(f"{sys.argv[2]:<8} {sys.argv[3]:<7} {f(b.get('median')):>10} {f(b.get('p95')):>10} {f(b.get('max')):>10} "
      f"{s['total_pss_kb']/1024/booted:>9.1f}M {s['total_rss_kb']/1024/booted:>9.1f}M "
      f"{f(t.get('median')):>10} {f(t.get('p95')):>10} {d['elapsed_ms']/1000:>8.2f}"
      + ("" if d["verdict"] != "FAIL" else "   (FAIL: " + "; ".join(s["reasons"]) + ")"))
PY
done

echo
echo "MCP echo over one hybrid-vsock session (ukload-guest built-in tools):"
sock="$logs/g.sock"
UKLOAD_RUN="bench-$$" "$here/target/release/ukload-guest" --listen "uds:$sock" --cid 3 >/dev/null &
guest=$!
for _ in $(seq 1 200); do [[ -S $sock ]] && break; sleep 0.01; done
"$UKLOAD" mcp bench --uds "$sock:5252" --calls 2000 --parallel 1 echo --arg message=x || true
"$UKLOAD" mcp bench --uds "$sock:5252" --calls 2000 --parallel 8 echo --arg message=x || true
kill "$guest" 2>/dev/null || true
wait "$guest" 2>/dev/null || true
