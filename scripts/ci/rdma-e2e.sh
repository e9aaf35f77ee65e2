#!/bin/bash
# scripts/ci/rdma-e2e.sh — inside the guest, after scripts/vm/rxe-up.sh: the whole data path on real verbs
# and kernel NVMe-oF/RDMA.
#
# Usage: scripts/ci/rdma-e2e.sh SERVER_BIN YCSB_BIN [RECORDS] [OPERATIONS]
#
# 1. scalio-server with fabric = "verbs" on $SCALIO_RDMA_DEVICE, two file-backed SSDs on tmpfs, client
#    fills through a type-2 memory window per reservation (cache.fill_windows, the verbs default; with
#    RDMA_E2E_FILLS=trusted, verbs.trusted_fills instead: the whole table writable), no NVMe/TCP
#    target. Connection setup through rdma_cm: the server listens on the wildcard [::]:7400 (rdma_cm
#    cannot use loopback); the mixed run's clients connect to the rxe netdev's IPv4 address, the
#    read-only run's to its IPv6 link-local address with the interface as scope
#    ([fe80::…%eth0]:7400). The cache table on 2 MiB hugepages (cache.hugepages: the caller
#    reserves them, as scripts/ci/rdma.sh does).
# 2. The same SSD files exported through the kernel target over RDMA (scripts/nvmet-rdma-target.sh, one
#    subsystem each, on the rxe netdev's IPv4 address) and attached with `nvme connect -t rdma`. Each file
#    goes through a loop device with 512-byte sectors first: nvmet gives a file namespace the file
#    system's block size (4 KiB on tmpfs), and the SSD format reads 512-byte blocks with O_DIRECT.
#    The loop device reads the file through the page cache the server writes, so both see one SSD.
# 3. scalio-ycsb against the server on verbs, misses reading the attached /dev/nvmeXnY (the direct
#    block path, O_DIRECT): YCSB-A (50% reads, 50% updates), then YCSB-C (reads only) on the same data;
#    every value read is checked by the driver (a wrong one is an error).
# 4. Checks on the JSON reports: no errors; with windows, every fill had its window (granted, none
#    refused) and no queue pair failed (a fill refused by the NIC would have ended one); GETs both hit and miss; no GET is served by the server (no
#    GET RPC, no server-side value read or fill) and META_GETs are no more than misses (a hit takes no
#    RPC); the clients' block reads are at least the misses (misses read the kernel NVMe-oF/RDMA
#    namespaces); in the read-only run the server's workers read nothing from the SSDs at all.
# Prints the counters it checked. Exit status 0 when all hold.
set -euo pipefail
SERVER=$1 YCSB=$2 RECORDS=${3:-2000} OPS=${4:-6000}
FILLS=${RDMA_E2E_FILLS:-windows}
case $FILLS in
  windows) FILL_TOML="# client fills through a window per reservation (cache.fill_windows: on by default on verbs)" ;;
  trusted) FILL_TOML="trusted_fills = true" ;;
  *) echo "rdma-e2e: RDMA_E2E_FILLS must be windows or trusted" >&2; exit 2 ;;
esac
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEV=${SCALIO_RDMA_DEVICE:?run under scripts/vm/rxe-up.sh}
NETDEV=$(cat "/sys/class/infiniband/$DEV/ports/1/gid_attrs/ndevs/1" 2>/dev/null || echo eth0)
IP=$(ip -4 -o addr show dev "$NETDEV" | awk '{print $4}' | cut -d/ -f1 | head -1)
[ -n "$IP" ] || { echo "rdma-e2e: no IPv4 address on $NETDEV" >&2; exit 1; }
LL=$(ip -6 -o addr show dev "$NETDEV" scope link | awk '{print $4}' | cut -d/ -f1 | head -1)
[ -n "$LL" ] || { echo "rdma-e2e: no IPv6 link-local address on $NETDEV" >&2; exit 1; }
W=$(mktemp -d /tmp/rdma-e2e.XXXXXX)
NQN=nqn.2024-01.io.scalio:e2e-ssd
SPID=
LOOPS=()
cleanup() {
  for i in 0 1; do nvme disconnect -n "$NQN$i" >/dev/null 2>&1 || true; done
  for i in 0 1; do "$REPO/scripts/nvmet-rdma-target.sh" down --nqn "$NQN$i" >/dev/null 2>&1 || true; done
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
  return 0
}
trap cleanup EXIT

cat >"$W/server.toml" <<TOML
listen = "[::]:7400"
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
hugepages = true
# Misses take a few hundred milliseconds under emulation; a client fills through its window only
# within the first half of the lease (a WRITE after the window's revocation would end its queue pair).
lease_ms = 2000
[verbs]
device = "$DEV"
$FILL_TOML
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
  LOOPS[$i]=$(losetup --find --show --sector-size 512 "$W/ssd$i.img")
  "$REPO/scripts/nvmet-rdma-target.sh" up --device "${LOOPS[$i]}" --nqn "$NQN$i" --addr "$IP" --port 4421
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

# run NAME ADDRESS WORKLOAD EXTRA...: one scalio-ycsb run on verbs, misses over the attached namespaces.
run() {
  local name=$1 server=$2 workload=$3
  shift 3
  echo "rdma-e2e: $name run against $server"
  if ! "$YCSB" --system scalio --server "$server" --fabric verbs --rdma-device "$DEV" \
    --block-devices "${DEVS[0]},${DEVS[1]}" --block direct --threads 2 --outstanding 4 \
    --workload "$workload" -p recordcount="$RECORDS" -p operationcount="$OPS" --json "$W/$name.json" "$@" 2>"$W/$name.err"; then
    tr '\r' '\n' <"$W/$name.err" | grep -v '^\[' | tail -20; tail -20 "$W/server.log"
    echo "rdma-e2e: scalio-ycsb ($name) failed" >&2; exit 1
  fi
  tr '\r' '\n' <"$W/$name.err" | grep -v '^\[' | grep . | tail -3 || true
}
# A mixed workload (YCSB-A: 50% reads, 50% updates), then a read-only one (YCSB-C) on the same data:
# with no writes, the server's workers must read nothing from the SSDs at all.
run mixed "$IP:7400" a
run readonly "[$LL%$NETDEV]:7400" c --no-load

python3 - "$W/mixed.json" "$W/readonly.json" "$FILLS" <<'PY'
import json, sys
fails = []
windows = sys.argv[3] == "windows"
for path, read_only in ((sys.argv[1], False), (sys.argv[2], True)):
    r = json.load(open(path))["run"]
    c, s = r["client_counters"], r["server_counters"] or {}
    name = "read-only" if read_only else "mixed"
    gets, hits, misses = c["gets"], c["hits"], c["misses"]
    get_rpcs, meta_gets = c.get("rpc_get", 0), c.get("rpc_meta_get", 0)
    worker_reads = s.get("ssd_reads_worker", -1)
    server_gets, server_fills = s.get("store_server_gets", -1), s.get("table_server_fills", -1)
    print(f"rdma-e2e {name} (emulation): {r['operations']} operations, {r['errors']} errors, {r['not_found']} not found; "
          f"GETs {gets}: hits {hits}, misses {misses}; RPCs GET {get_rpcs}, META_GET {meta_gets}; "
          f"client block reads {c['block_reads']}; fills {c.get('fills', 0)}; server: worker SSD reads {worker_reads}, "
          f"server GETs {server_gets}, server fills {server_fills}, writes {c.get('writes', 0)}; {r['throughput']:.0f} ops/s")
    if r["errors"] or r["not_found"]: fails.append(f"{name}: errors or keys not found (a wrong value is an error)")
    if not hits or not misses: fails.append(f"{name}: want both hits and misses")
    if get_rpcs: fails.append(f"{name}: GET RPCs (reads served by the server)")
    if meta_gets > misses: fails.append(f"{name}: more META_GETs than misses: a hit took an RPC")
    if server_gets != 0 or server_fills != 0: fails.append(f"{name}: the server read values for GETs")
    if c["block_reads"] < misses: fails.append(f"{name}: fewer block reads than misses")
    if read_only and worker_reads != 0: fails.append(f"{name}: server workers read the SSDs")
    granted, refused = s.get("fill_windows_granted", 0), s.get("fill_windows_refused", 0)
    rl = (r.get("latency") or {}).get("READ") or {}
    print(f"rdma-e2e {name} READ latency (emulation): avg {rl.get('avg_us', 0):.0f} us, p50 {rl.get('p50_us', 0):.0f} us")
    print(f"rdma-e2e {name} fills ({sys.argv[3]}): windows granted {granted}, refused {refused}, "
          f"revoked after the fill or lease {s.get('fill_windows_revoked_done', 0)}, on re-bind "
          f"{s.get('fill_windows_revoked_rebound', 0)}, on close {s.get('fill_windows_revoked_closed', 0)}; "
          f"client reconnects {c.get('reconnects', 0)}, fills {c.get('fills', 0)}, late (not filled) {c.get('fills_late', 0)}")
    if windows:
        if granted < c.get("fills", 0) or refused: fails.append(f"{name}: fills without their window")
        if c.get("reconnects", 0): fails.append(f"{name}: a queue pair failed (a fill refused?)")
if fails:
    print("rdma-e2e: FAIL: " + "; ".join(fails)); sys.exit(1)
print("rdma-e2e: PASS")
PY
