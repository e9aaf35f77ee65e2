#!/bin/bash
# scripts/ci/rdma.sh — CI fragment: the verbs fabric backend (cargo feature `rdma`) on this machine
# and on real verbs (Soft-RoCE, rdma_rxe) inside the QEMU guest of scripts/vm/.
#
# Usage: scripts/ci/rdma.sh            (on the host; needs root for apt the first time)
#        scripts/ci/rdma.sh --guest BIN (what the host runs inside the guest; not for direct use)
#
# Host steps, each printed with PASS/FAIL and its time:
#   setup        scripts/vm/setup.sh --rdma --no-tshark (rdma-core, perftest, cmake/libclang, guest kernel)
#   build        cargo build -p scalio-common --features rdma
#   clippy       cargo clippy on common, server, client, bench with the rdma features, -D warnings
#   host-skip    the verbs tests on this machine: with no RDMA device each says it skipped and why
#   build-e2e    cargo build --features rdma of scalio-server and scalio-ycsb (debug, as the tests)
#   guest        one guest boot: rxe0 on eth0, 32 hugepages reserved, the fabric tests with
#                SCALIO_REQUIRE_RDMA=1, SCALIO_REQUIRE_MW=1 and SCALIO_REQUIRE_HUGEPAGES=1 (the whole
#                fabric conformance suite on real verbs through rdma_cm, type-2 memory windows,
#                hugepage-backed regions registered on rxe0), ib_read_lat (perftest) for reference,
#                then scripts/ci/rdma-e2e.sh (scalio-server and scalio-ycsb on verbs, client fills
#                through a memory window per reservation, misses over kernel NVMe-oF/RDMA)
# Exit status 0 only if every step passed. Work files: target/vm/ (or $SCALIO_VM_DIR).
set -uo pipefail
exec </dev/null
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1

if [ "${1:-}" = --guest ]; then
  BIN=$2 SERVER=$3 YCSB=$4
  # 2 MiB hugepages for the hugepage-backed registration test and the e2e server's cache.hugepages.
  echo 32 >/proc/sys/vm/nr_hugepages
  echo "=== guest: $(grep HugePages_Free /proc/meminfo) (2 MiB each)"
  export SCALIO_REQUIRE_HUGEPAGES=1
  echo "=== guest: the verbs tests on ${SCALIO_RDMA_DEVICE:-?} (and hugepage regions)"
  # Soft-RoCE has type-2 memory windows: the fill windows the e2e step uses need them.
  SCALIO_REQUIRE_MW=1 "$BIN" fabric::verbs fabric::region::tests::hugepage --test-threads=1 --nocapture
  rc=$?
  echo "=== guest: ib_read_lat (perftest) on the same device, for reference (emulation)"
  ib_read_lat -d "$SCALIO_RDMA_DEVICE" -x 1 -s 64 -n 2000 >/dev/null 2>&1 &
  srv=$!
  sleep 1
  timeout 60 ib_read_lat -d "$SCALIO_RDMA_DEVICE" -x 1 -s 64 -n 2000 127.0.0.1 2>/dev/null | grep -A1 'bytes' || echo "(ib_read_lat failed)"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
  [ "$rc" = 0 ] || exit "$rc"
  echo "=== guest: end to end on verbs and kernel NVMe-oF/RDMA"
  exec scripts/ci/rdma-e2e.sh "$SERVER" "$YCSB" 300 600
fi

SUMMARY=()
failed=0
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
step() {   # step NAME COMMAND...
  local name=$1 t0 rc
  shift
  echo "=== rdma $name: $*"
  t0=$(now_ms)
  "$@"; rc=$?
  local secs=$(( ($(now_ms) - t0) / 1000 ))
  if [ "$rc" = 0 ]; then SUMMARY+=("PASS $name ${secs}s"); else SUMMARY+=("FAIL $name ${secs}s"); failed=$((failed + 1)); fi
  return "$rc"
}
finish() {
  echo "=== rdma summary"
  printf '%s\n' "${SUMMARY[@]}"
  [ "$failed" = 0 ]
  exit $?
}

host_skip() {
  local out
  out=$(cargo test -p scalio-common --features rdma --lib fabric::verbs -- --nocapture --test-threads=1 2>&1) || { echo "$out"; return 1; }
  echo "$out" | grep -o 'skipped: .*' | sort | uniq -c
  echo "$out" | grep -E '^test result:'
}

test_binary() {
  cargo test -p scalio-common --features rdma --lib --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1
}

step setup scripts/vm/setup.sh --rdma --no-tshark || finish
step build cargo build -p scalio-common --features rdma || finish
step clippy cargo clippy -p scalio-common -p scalio-server -p scalio-client -p scalio-bench \
  --features scalio-server/rdma,scalio-client/rdma,scalio-bench/rdma --all-targets -- -D warnings
step host-skip host_skip
BIN=$(test_binary)
step build-e2e cargo build -p scalio-server -p scalio-bench --features scalio-server/rdma,scalio-bench/rdma \
  --bin scalio-server --bin scalio-ycsb
TARGET=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -x "$BIN" ] && [ -x "$TARGET/debug/scalio-server" ] && [ -x "$TARGET/debug/scalio-ycsb" ]; then
  step guest scripts/vm/run.sh --timeout 480 --modules "rdma_rxe ib_uverbs rdma_ucm nvmet-rdma nvme-rdma loop" -- \
    scripts/vm/rxe-up.sh -- scripts/ci/rdma.sh --guest "$BIN" "$TARGET/debug/scalio-server" "$TARGET/debug/scalio-ycsb"
else
  SUMMARY+=("FAIL guest (no test binary)"); failed=$((failed + 1))
fi
finish
