#!/bin/bash
# scripts/vm/rxe-up.sh — inside the guest (scripts/vm/run.sh --modules "rdma_rxe ib_uverbs rdma_ucm"):
# bring up Soft-RoCE on eth0 as rxe0 and wait until its GIDs are usable, then run the command given.
#
# Usage: scripts/vm/rxe-up.sh [--] [command args...]
# Exports SCALIO_RDMA_DEVICE=rxe0 and SCALIO_REQUIRE_RDMA=1 (so that the verbs tests fail instead of
# skipping if the device is missing). Prints the device's GID table. Exit status: the command's, or
# 3 if rxe0 could not be created.
set -euo pipefail
[ "${1:-}" = -- ] && shift
if [ ! -d /sys/class/infiniband/rxe0 ]; then
  rdma link add rxe0 type rxe netdev eth0 || { echo "rxe-up: rdma link add failed (rdma_rxe loaded? crc32 first)" >&2; exit 3; }
fi
# IPv6 duplicate address detection leaves the link-local GID tentative for a moment.
for _ in $(seq 50); do
  grep -q . /sys/class/infiniband/rxe0/ports/1/gids/1 2>/dev/null && ! ip -6 addr show dev eth0 | grep -q tentative && break
  sleep 0.1
done
rdma link show rxe0/1
for i in 0 1 2; do echo "rxe0 gid $i: $(cat /sys/class/infiniband/rxe0/ports/1/gids/$i)"; done
export SCALIO_RDMA_DEVICE=rxe0 SCALIO_REQUIRE_RDMA=1
[ $# -gt 0 ] || exit 0
exec "$@"
