#!/bin/bash
# scripts/ci/rdma-e2e.sh — inside the guest, after scripts/vm/rxe-up.sh: the whole data path on real verbs
# and kernel NVMe-oF/RDMA.
#
# Usage: scripts/ci/rdma-e2e.sh SERVER_BIN YCSB_BIN [RECORDS] [OPERATIONS]
#
# 1. scalio-server with fabric = "verbs" on $SCALIO_RDMA_DEVICE, two file-backed SSDs on tmpfs, client
#    fills (verbs.trusted_fills: verbs has no strided keys), no NVMe/TCP target.
# 2. The same SSD files exported through the kernel target over RDMA (scripts/nvmet-rdma-target.sh, one
#    subsystem each, on the rxe netdev's IPv4 address) and attached with `nvme connect -t rdma`.
# 3. scalio-ycsb against the server on verbs, misses reading the attached /dev/nvmeXnY (the direct
#    block path, O_DIRECT), YCSB-A (50% reads, 50% updates), every value read checked by the driver.
# 4. Checks on the JSON report: no errors; GETs hit the cache; the run's GET RPCs (GET, META_GET) are no
#    more than its misses (a hit takes none); the server's workers read nothing from the SSDs (misses
#    are served by the kernel target); the clients' block reads are at least the misses.
# Prints the counters it checked. Exit status 0 when all hold.
set -euo pipefail
SERVER=$1 YCSB=$2 RECORDS=${3:-2000} OPS=${4:-6000}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEV=${SCALIO_RDMA_DEVICE:?run under scripts/vm/rxe-up.sh}
NETDEV=$(cat "/sys/class/infiniband/$DEV/ports/1/gid_attrs/ndevs/1" 2>/dev/null || echo eth0)
IP=$(ip -4 -o addr show dev "$NETDEV" | awk '{print $4}' | cut -d/ -f1 | head -1)
[ -n "$IP" ] || { echo "rdma-e2e: no IPv4 address on $NETDEV" >&2; exit 1; }
W=$(mktemp -d /tmp/rdma-e2e.XXXXXX)
NQN=nqn.2024-01.io.scalio:e2e-ssd
SPID=
cleanup() {
  for i in 0 1; do nvme disconnect -n "$NQN$i" >/dev/null 2>&1 || true; done
  for i in 0 1; do "$REPO/scripts/nvmet-rdma-target.sh" down --nqn "$NQN$i" >/dev/null 2>&1 || true; done
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
  return 0
}
trap cleanup EXIT

cat >"$W/server.toml" <<TOML
listen = "127.0.0.1:7400"
fabric = "verbs"
workers = 2
[[ssd]]
path = "$W/ssd0.img"
size = "64MiB"
[[ssd]]
path = "$W/ssd1.img"
size = "64MiB"
[cache]
buckets = 256
client_fills = true
[verbs]
device = "$DEV"
trusted_fills = true
[target]
enabled = false
TOML
"$SERVER" --config "$W/server.toml" >"$W/server.log" 2>&1 &
SPID=$!
for _ in $(seq 300); do grep -q "listening" "$W/server.log" && break; kill -0 "$SPID" || break; sleep 0.1; done
grep -q "listening" "$W/server.log" || { cat "$W/server.log"; echo "rdma-e2e: the server did not start" >&2; exit 1; }
echo "rdma-e2e: $(grep listening "$W/server.log")"

declare -a DEVS
for i in 0 1; do
  "$REPO/scripts/nvmet-rdma-target.sh" up --file "$W/ssd$i.img" --nqn "$NQN$i" --addr "$IP" --port 4421
  nvme connect -t rdma -a "$IP" -s 4421 -n "$NQN$i" >/dev/null
done
# SSD i is the namespace of the controller whose subsystem is NQN<i>.
for _ in $(seq 50); do
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/subsysnqn" ] || continue
    n=$(cat "$c/subsysnqn")
    for i in 0 1; do [ "$n" = "$NQN$i" ] && DEVS[$i]=/dev/$(basename "$c")n1; done
  done
  [ -b "${DEVS[0]:-/nonexistent}" ] && [ -b "${DEVS[1]:-/nonexistent}" ] && break
  sleep 0.1
done
[ -b "${DEVS[0]:-/nonexistent}" ] && [ -b "${DEVS[1]:-/nonexistent}" ] || { echo "rdma-e2e: namespaces did not appear" >&2; exit 1; }
echo "rdma-e2e: SSD 0 -> ${DEVS[0]}, SSD 1 -> ${DEVS[1]} (nvme-rdma to $IP:4421)"

if ! "$YCSB" --system scalio --server 127.0.0.1:7400 --fabric verbs --rdma-device "$DEV" \
  --block-devices "${DEVS[0]},${DEVS[1]}" --block direct --threads 2 --outstanding 4 \
  --workload a -p recordcount="$RECORDS" -p operationcount="$OPS" --json "$W/report.json" 2>"$W/ycsb.err"; then
  tr '\r' '\n' <"$W/ycsb.err" | grep -v '^\[' | tail -20; tail -20 "$W/server.log"; echo "rdma-e2e: scalio-ycsb failed" >&2; exit 1
fi
tr '\r' '\n' <"$W/ycsb.err" | grep -v '^\[' | grep . | tail -5 || true

python3 - "$W/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["run"]
c, s = r["client_counters"], r["server_counters"] or {}
gets, hits, misses = c["gets"], c["hits"], c["misses"]
get_rpcs = c.get("rpc_GET", 0) + c.get("rpc_META_GET", 0)
worker_reads = s.get("ssd_reads_worker", 0)
print(f"rdma-e2e (emulation): {r['operations']} operations, {r['errors']} errors, {r['not_found']} not found; "
      f"GETs {gets}: hits {hits}, misses {misses}; GET RPCs {get_rpcs} (GET {c.get('rpc_GET', 0)}, "
      f"META_GET {c.get('rpc_META_GET', 0)}); client block reads {c['block_reads']}; "
      f"server worker SSD reads {worker_reads}; writes {c['writes']}; {r['throughput']:.0f} ops/s")
fails = []
if r["errors"] != 0: fails.append("errors (a wrong value is one)")
if r["not_found"] != 0: fails.append("keys not found")
if hits == 0 or misses == 0: fails.append("want both hits and misses")
if get_rpcs > misses: fails.append("more GET RPCs than misses: a hit took an RPC")
if worker_reads != 0: fails.append("server workers read the SSDs")
if c["block_reads"] < misses: fails.append("fewer block reads than misses")
if fails:
    print("rdma-e2e: FAIL: " + "; ".join(fails)); sys.exit(1)
print("rdma-e2e: PASS")
PY
