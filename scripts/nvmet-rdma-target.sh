#!/bin/bash
# nvmet-rdma-target.sh — export a file or block device through the Linux kernel NVMe-oF target (nvmet)
# over RDMA (nvmet-rdma), via configfs: what a scalio server's SSDs are on a real deployment, read by
# clients with the kernel host (`nvme connect -t rdma`) and the `direct` block path.
#
# Usage: the same as scripts/nvmet-tcp-target.sh (up | down | status, same options), plus:
#   up ... --offload   ask the NIC to serve the namespace itself (NVMe-oF target offload: nvmet's
#                      subsystem attribute attr_offload, present with MLNX_OFED on ConnectX-5 or later;
#                      refused with a message where the kernel has no such attribute)
# Defaults that differ: --nqn nqn.2024-01.io.scalio:nvmet-rdma. --addr must be an address of an RDMA
# netdev (rdma_cm resolves the device from it): the RoCE interface's IP, not 127.0.0.1 (rdma_cm cannot
# route over loopback). For an IPv6 link-local address nvmet takes the address without a scope; the host
# then connects with the scoped form (nvme connect -t rdma -a fe80::...%eth0).
#
# Example (Soft-RoCE, e.g. in the guest of scripts/vm/run.sh after scripts/vm/rxe-up.sh):
#   nvmet-rdma-target.sh up --file /tmp/ssd0.img --create-size 64M --addr 10.0.2.15 --port 4421
#   nvme connect -t rdma -a 10.0.2.15 -s 4421 -n nqn.2024-01.io.scalio:nvmet-rdma
#   nvmet-rdma-target.sh down
set -euo pipefail
NVMET_TRTYPE=rdma exec "$(dirname "${BASH_SOURCE[0]}")/nvmet-tcp-target.sh" "$@"
