#!/usr/bin/env bash
# Echo throughput of the WebSocket client libraries. Each run is one client process sending
# COUNT binary messages of SIZE bytes to an echo server in another process, keeping at most 64
# unanswered, and waiting for all echoes; it reports messages per second and its own CPU time.
# Each library runs 3 times per size, interleaved (A B C D A B C D ...), and the medians are
# compared with tokio-tungstenite's (without compression) or ratchet_rs's (with it) of the
# same run. Servers: tokio-tungstenite without compression, ratchet_rs with permessage-deflate
# (tokio-tungstenite has none). The payloads are text-like (about 4 bits of entropy per byte),
# different in each message, so deflate has work to do.
#
#   benches/ws-libs/throughput.sh [plain|deflate]...   (default: both)
#
# Output: target/ws-libs/throughput/{runs.txt,summary.md}.
set -euo pipefail

source "$(dirname "$0")/build-agents.sh"
OUT=$WS_LIBS_TARGET/throughput
WINDOW=64
RUNS=3
# SIZE:COUNT pairs, so that one run takes a few seconds.
PLAIN_SIZES=(16:500000 1024:300000 65536:40000)
DEFLATE_SIZES=(16:100000 1024:30000 65536:1500)
PLAIN_AGENTS=(tokio-tungstenite yawc soketto ratchet_rs)
DEFLATE_AGENTS=(ratchet_rs yawc soketto-flate2-1.1.10)
export RUST_BACKTRACE=0

modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(plain deflate)

for agent in all tokio-tungstenite yawc soketto soketto-flate2-1.1.10 ratchet_rs; do
    build_agent "$agent"
done
mkdir -p "$OUT"
: >"$OUT/runs.txt"

server=
trap '[ -z "$server" ] || kill $server 2>/dev/null || true' EXIT

for mode in "${modes[@]}"; do
    case $mode in
        plain) port=9110 flag= sizes=("${PLAIN_SIZES[@]}") agents=("${PLAIN_AGENTS[@]}") ;;
        deflate) port=9111 flag=deflate sizes=("${DEFLATE_SIZES[@]}") agents=("${DEFLATE_AGENTS[@]}") ;;
        *) echo "unknown mode $mode" >&2; exit 1 ;;
    esac
    "$WS_LIBS_BIN/ws-libs-all" serve "127.0.0.1:$port" $flag >"$OUT/server-$mode.log" 2>&1 &
    server=$!
    sleep 1
    for pair in "${sizes[@]}"; do
        size=${pair%:*} count=${pair#*:}
        for run in $(seq $RUNS); do
            for agent in "${agents[@]}"; do
                line=$(timeout 300 "$WS_LIBS_BIN/ws-libs-$agent" throughput "$(agent_lib "$agent")" \
                    "ws://127.0.0.1:$port/" "$size" "$count" "$WINDOW" $flag 2>&1 | tail -1) || true
                echo "mode=$mode agent=$agent run=$run size=$size $line" | tee -a "$OUT/runs.txt"
            done
        done
    done
    kill $server
    wait $server 2>/dev/null || true
    server=
done

python3 - "$OUT/runs.txt" <<'PY' | tee "$OUT/summary.md"
import re, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    key = (fields["mode"], int(fields["size"]) if "size" in fields else None, fields["agent"])
    if key not in order:
        order.append(key)
    if "msgs_per_s" in fields:
        runs[key].append((float(fields["msgs_per_s"]), float(fields["cpu_s"]), int(fields["count"])))
    else:
        runs[key].append(None)

for mode, baseline in [("plain", "tokio-tungstenite"), ("deflate", "ratchet_rs")]:
    keys = [k for k in order if k[0] == mode]
    if not keys:
        continue
    print(f"\n### {mode} (median of {max(len(runs[k]) for k in keys)} runs; ratios vs {baseline})\n")
    print("| size | library | msgs/s | ratio | client CPU µs/msg | ratio | failed runs |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    medians = {}
    for key in keys:
        ok = [r for r in runs[key] if r]
        if ok:
            medians[key] = (statistics.median(r[0] for r in ok),
                            statistics.median(r[1] / r[2] * 1e6 for r in ok))
    for key in keys:
        _, size, agent = key
        failed = sum(1 for r in runs[key] if r is None)
        base = medians.get((mode, size, baseline))
        if key not in medians:
            print(f"| {size} | {agent} | - | - | - | - | {failed} |")
            continue
        rate, cpu = medians[key]
        ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
        print(f"| {size} | {agent} | {rate:,.0f} | {ratio(rate, base[0]) if base else '-'} "
              f"| {cpu:.1f} | {ratio(cpu, base[1]) if base else '-'} | {failed} |")
PY
