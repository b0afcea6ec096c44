#!/usr/bin/env bash
# Issue 12's figure: CPU per routed message of the chat scenario with the
# archive (mod_mam) on, against the same binary with it off.
#   bench/mam_ratio.sh [PAIRS] [OUT_PREFIX]
# Runs PAIRS (default 4) pairs of chat runs, archive on then off, open loop at
# PALAVER_BENCH_RATE messages/s (default 15000), 2,000 accounts, 1,000 chatting
# for 20 s (bench/palaver.sh, SQLite unless PALAVER_BENCH_DB=pgsql), then prints
# each run's CPU per message (run_server_cpu_s / delivered), each pair's ratio
# and the medians. Pairs, not two series: on the benchmark machines a binary's
# figure drifts by 10-20 % within minutes, so only runs close in time compare.
# PALAVER_BIN=/path/to/palaver runs that binary (else this checkout, built).
# Results are appended to OUT_PREFIX-on.jsonl and OUT_PREFIX-off.jsonl
# (default /tmp/mam-ratio).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PAIRS="${1:-4}"
OUT="${2:-/tmp/mam-ratio}"
RATE="${PALAVER_BENCH_RATE:-15000}"
export PALAVER_BENCH_SCENARIOS=chat PALAVER_BENCH_CHAT="--rate $RATE"
rm -f "$OUT-on.jsonl" "$OUT-off.jsonl"
for _ in $(seq 1 "$PAIRS"); do
  PALAVER_BENCH_MODULES=mod_mam "$HERE/palaver.sh" 2000 "$OUT-on.jsonl" >/dev/null
  PALAVER_BENCH_MODULES= "$HERE/palaver.sh" 2000 "$OUT-off.jsonl" >/dev/null
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def figures(path):
    runs = [json.loads(l) for l in open(path)]
    runs = [r for r in runs if r["scenario"] == "chat"]
    for r in runs:
        if r["lost"]:
            print(f"warning: {path}: {r['lost']} messages lost", file=sys.stderr)
    return [r["run_server_cpu_s"] / r["delivered"] * 1e6 for r in runs]
on, off = figures(out + "-on.jsonl"), figures(out + "-off.jsonl")
ratios = [a / b for a, b in zip(on, off)]
print("archive on  (µs/msg):", ", ".join(f"{x:.1f}" for x in on))
print("archive off (µs/msg):", ", ".join(f"{x:.1f}" for x in off))
print("ratio per pair:      ", ", ".join(f"{x:.2f}" for x in ratios))
print(f"median ratio {statistics.median(ratios):.2f}; "
      f"medians {statistics.median(on):.1f} / {statistics.median(off):.1f} = "
      f"{statistics.median(on) / statistics.median(off):.2f}")
PY
