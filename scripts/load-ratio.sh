#!/usr/bin/env bash
# scripts/load-ratio.sh — how many records the harness's load puts in each durable device write.
#
# Usage: scripts/load-ratio.sh [RECORDS] [LOAD_BATCH] [SSDS]     (defaults: 100000 256 1)
#
# In one run, on the file system of target/load-ratio/: fio measures O_DSYNC 4 KiB sequential
# writes at queue depth 4 (4 jobs of synchronous writes: the server's 4 I/O threads per SSD, with
# O_DIRECT as the server opens its SSD files), then scalio-ycsb loads RECORDS records (workload C,
# 1 SSD, 2 threads x 256 in flight, --load-batch LOAD_BATCH), then fio measures again. The ratio is
# the load's puts/s over the mean of the two fio rates. Installs Debian's fio if it is missing
# (root, apt-get). Builds the release harness if it is missing.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RECORDS=${1:-100000}
LOAD_BATCH=${2:-256}
SSDS=${3:-1}
WORK=$REPO/target/load-ratio
BIN=$REPO/target/release/scalio-ycsb

install_fio() {
  command -v fio >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || { echo "load-ratio.sh: fio is missing and installing it needs root" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
  }
}

# Prints the write IOPS of 10 s of O_DSYNC 4 KiB writes at queue depth 4.
fio_iops() {
  fio --name=dsync4k --filename="$WORK/fio.img" --size=256M --rw=write --bs=4k --ioengine=psync \
    --sync=dsync --direct=1 --numjobs=4 --group_reporting --time_based --runtime=10 \
    --output-format=terse --terse-version=3 | awk -F';' '{ printf "%.0f\n", $49 }'
}

install_fio
[ -x "$BIN" ] || (cd "$REPO" && cargo build --release -p scalio-bench --bin scalio-ycsb)
mkdir -p "$WORK"
rm -rf "$WORK/stores"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(fio --version); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
before=$(fio_iops)
echo "fio before: $before O_DSYNC 4 KiB writes/s (QD 4)"
load_cmd=("$BIN" --workload c -p "recordcount=$RECORDS" -p operationcount=1 --ssds "$SSDS" --threads 2
  --outstanding 256 --load-batch "$LOAD_BATCH" --store-dir "$WORK/stores" --json "$WORK/load.json")
echo "load: ${load_cmd[*]}"
"${load_cmd[@]}" >/dev/null 2>"$WORK/load.log"
rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['load']['throughput']))" "$WORK/load.json")
after=$(fio_iops)
echo "fio after: $after O_DSYNC 4 KiB writes/s (QD 4)"
rm -rf "$WORK/stores" "$WORK/fio.img"
python3 - "$rate" "$before" "$after" "$RECORDS" "$LOAD_BATCH" "$SSDS" <<'PY'
import sys
rate, before, after = (float(x) for x in sys.argv[1:4])
device = (before + after) / 2
print(f"load: {int(sys.argv[4]):,} records, --load-batch {sys.argv[5]}, {sys.argv[6]} SSD(s): {rate:,.0f} puts/s")
print(f"ratio: {rate / device:.2f} puts per O_DSYNC 4 KiB device write ({rate:,.0f} / {device:,.0f})")
PY
