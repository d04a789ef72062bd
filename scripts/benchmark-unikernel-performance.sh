#!/usr/bin/env bash
# Benchmark with the seed's name: prints measured figures, never asserts timings
# (these machines are shared: compare figures within one run).
#   bash scripts/benchmark-unikernel-performance.sh [--launcher process|qemu] [--counts "1 5 10 20"]
#   bash scripts/benchmark-unikernel-performance.sh --scale [--process "10 100 1000"] [--vms "1 10"]
# For each instance count: boot median / p95 / max, average PSS and RSS per
# instance, tool-call median / p95 (MCP echo over vsock), wall time; then MCP
# echo latency over a single session (ukload mcp bench). Nothing is killed by
# name: ukload ends what it started. Set UKLOAD to use a prebuilt ukload
# (its ukload-guest beside it).
# --scale: for N process guests and M microVMs: all spawned, boot median /
# p95 / max, boot error against the guest's own ready stamp (p50 / p95),
# teardown, total wall, ukload's own CPU time and peak RSS, what was left.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
launcher=process
counts="1 5 10 20"
scale=0
scale_process="10 100 1000"
scale_vms="1 10"
while [[ $# -gt 0 ]]; do
  case $1 in
    --launcher) launcher=$2; shift 2 ;;
    --counts) counts=$2; shift 2 ;;
    --scale) scale=1; shift ;;
    --process) scale_process=$2; shift 2 ;;
    --vms) scale_vms=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "benchmark: unknown argument $1 (try --help)" >&2; exit 64 ;;
  esac
done
command -v python3 >/dev/null || { echo "benchmark: python3 is needed to read the JSON reports" >&2; exit 69; }
if [[ -z ${UKLOAD:-} ]]; then
  (cd "$here" && cargo build --release --quiet --bins)
  UKLOAD="$here/target/release/ukload"
fi
guest_bin="$(dirname "$UKLOAD")/ukload-guest"
extra=()
if [[ $launcher == qemu ]]; then
  bash "$here/scripts/setup-microvm.sh" >&2
  bash "$here/scripts/build-guest-image.sh" >&2
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  extra=(--max-boot-ms 600000 --max-tool-ms 600000)
fi
logs=$(mktemp -d /tmp/ukload-bench.XXXXXX)
trap 'rm -rf "$logs"' EXIT

if [[ $scale == 1 ]]; then
  scale_row() { # launcher count extra-args...
    local l=$1 n=$2; shift 2
    "$UKLOAD" run "$n" --launcher "$l" --format json -q --log-dir "$logs" \
      --cid-range 3000-3999 --max-boot-ms 600000 --max-mem-mb 100000 "$@" > "$logs/r.json" || true
    python3 - "$logs/r.json" "$l" "$n" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, t, h = d["summary"], d["timeline"], d["harness"]
b = s.get("boot_ms") or {}
over = sorted(i["probe_overhead_ms"] for i in d["instances"] if i.get("probe_overhead_ms") is not None)
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] if v else None
f = lambda v: "-" if v is None else f"{v:.1f}"
g = lambda v: "-" if v is None else f"{v:.2f}"
left = len(d["teardown"]["survivors"])
print(f"{sys.argv[2]:<8} {sys.argv[3]:>5} {t['spawned_ms']:>9.0f} {f(b.get('median')):>8} {f(b.get('p95')):>8} "
      f"{f(b.get('max')):>8} {g(q(over, 0.5)):>8} {g(q(over, 0.95)):>8} "
      f"{t['teardown_end_ms'] - t['teardown_start_ms']:>9.0f} {d['elapsed_ms']:>9.0f} "
      f"{h['cpu_user_ms'] + h['cpu_sys_ms']:>8.0f} {h['peak_rss_kb'] / 1024:>7.1f}M {left:>4} {d['verdict']}")
PY
  }
  printf '%-8s %5s %9s %8s %8s %8s %8s %8s %9s %9s %8s %8s %4s %s\n' \
    launcher n spawned boot_med boot_p95 boot_max err_p50 err_p95 teardown wall_ms cpu_ms peak_rss left verdict
  for n in $scale_process; do scale_row process "$n"; done
  if [[ -n $scale_vms ]]; then
    bash "$here/scripts/setup-microvm.sh" >&2
    bash "$here/scripts/build-guest-image.sh" >&2
    export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
    for n in $scale_vms; do scale_row qemu "$n"; done
  fi
  echo "(ms unless noted; spawned = when the last launcher was started; err = boot minus the"
  echo " guest's own ready stamp (VMs: the guest's ready → its reply); VM boots split into vmm/guest/probe in JSON)"
  exit 0
fi

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
UKLOAD_RUN="bench-$$" "$guest_bin" --listen "uds:$sock" --cid 3 >/dev/null &
guest=$!
for _ in $(seq 1 200); do [[ -S $sock ]] && break; sleep 0.01; done
"$UKLOAD" mcp bench --uds "$sock:5252" --calls 2000 --parallel 1 echo --arg message=x || true
"$UKLOAD" mcp bench --uds "$sock:5252" --calls 2000 --parallel 8 echo --arg message=x || true
kill "$guest" 2>/dev/null || true
wait "$guest" 2>/dev/null || true
