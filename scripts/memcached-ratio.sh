#!/bin/bash
# scripts/memcached-ratio.sh — the software NIC against memcached on the job one-sided READs exist
# to win: YCSB-C, every GET a cache hit, scalio (embedded server, tcp fabric on loopback) and
# memcached (2 threads) measured back to back in one run on this machine. Prints both and the
# throughput and p50 ratios.
#
# Usage: scripts/memcached-ratio.sh [RECORDS] [OPS]   (defaults 100000 and 400000; the warm-up
#        is as long as the measured phase)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
RECORDS=${1:-100000}
OPS=${2:-400000}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

cargo build --release -q -p scalio-bench --bin scalio-ycsb
YCSB=target/release/scalio-ycsb
common=(--workload c -p "recordcount=$RECORDS" -p "operationcount=$OPS" --warmup-ops "$OPS" --threads 2 --outstanding 32)

"$YCSB" --system scalio --cache-ratio 2 "${common[@]}" --json "$OUT/scalio.json" >/dev/null
bash scripts/ci/memcached.sh run --threads 2 -- bash -c \
  "\"$YCSB\" --system memcached --server \"\$SCALIO_MEMCACHED_ADDR\" ${common[*]@Q} --json \"$OUT/memcached.json\" >/dev/null"

python3 - "$OUT/scalio.json" "$OUT/memcached.json" <<'PY'
import json, sys, datetime
s, m = (json.load(open(p)) for p in sys.argv[1:3])
def row(r):
    run = r["run"]
    return run["throughput"], run["latency"]["READ"]["p50_us"], run.get("cache_hit_ratio")
st, sp, sh = row(s)
mt, mp, _ = row(m)
print(f"date {datetime.date.today()}  YCSB-C {s['workload']['recordcount']} records, 2 threads x 32 outstanding")
print(f"scalio    {st:10.0f} ops/s  p50 {sp:7.1f} us  hit ratio {sh}")
print(f"memcached {mt:10.0f} ops/s  p50 {mp:7.1f} us")
print(f"throughput ratio scalio/memcached {st / mt:.2f}; p50 ratio {sp / mp:.2f}")
PY
