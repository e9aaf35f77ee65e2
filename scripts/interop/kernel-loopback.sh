#!/bin/bash
# scripts/interop/kernel-loopback.sh — proves the guest infrastructure with kernel-only parts: the Linux
# NVMe/TCP target (set up by scripts/nvmet-tcp-target.sh) and the Linux NVMe/TCP host (nvme-cli)
# talk over 127.0.0.1 inside the guest; data written through the host is read back byte for byte,
# through the host with O_DIRECT and straight from the backing file. Then the same for a block-device
# namespace (a loop device). Runs inside the guest:
#   scripts/vm/run.sh -- scripts/interop/kernel-loopback.sh
set -euo pipefail
CHECK=kernel-loopback
# shellcheck source-path=SCRIPTDIR disable=SC2034  # CHECK is read by lib.sh
. "$(dirname "$0")/lib.sh"
require_guest

NQN=nqn.2024-01.io.scalio:kernel-loopback
NQN_DEV=nqn.2024-01.io.scalio:kernel-loopback-dev
PORT=4420
W=$(mktemp -d)
LOOP=
cleanup() {
  nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
  nvme disconnect -n "$NQN_DEV" >/dev/null 2>&1 || true
  "$TARGET_SH" down --nqn "$NQN" 2>/dev/null || true
  "$TARGET_SH" down --nqn "$NQN_DEV" 2>/dev/null || true
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

t0=$(now_ms)
"$TARGET_SH" up --file "$W/ns.img" --create-size 64M --nqn "$NQN" --port "$PORT" >&2
"$TARGET_SH" status >&2

nvme discover -t tcp -a 127.0.0.1 -s "$PORT" >"$W/discover.txt" || fail "nvme discover failed"
grep -q "subnqn: *$NQN\$" "$W/discover.txt" || { cat "$W/discover.txt" >&2; fail "$NQN not in the discovery log"; }
log "discovery log lists $NQN"

nvme connect -t tcp -a 127.0.0.1 -s "$PORT" -n "$NQN" >&2 || fail "nvme connect failed"
DEV=$(nvme_ns_dev "$NQN") || fail "no block device appeared for $NQN"
log "connected: $DEV ($(blockdev --getsize64 "$DEV") bytes)"
[ "$(blockdev --getsize64 "$DEV")" = $((64 << 20)) ] || fail "namespace size is not 64 MiB"

make_pattern "$W/pattern" 1024
# At LBA 0 and in the last MiB: catches offset and size mistakes.
dd if="$W/pattern" of="$DEV" bs=64k oflag=direct status=none || fail "O_DIRECT write to $DEV failed"
dd if="$W/pattern" of="$DEV" bs=64k seek=$((63 * 16)) oflag=direct status=none || fail "write at 63 MiB failed"
dd if="$DEV" of="$W/back0" bs=64k count=16 iflag=direct status=none || fail "O_DIRECT read from $DEV failed"
dd if="$DEV" of="$W/back63" bs=64k skip=$((63 * 16)) count=16 iflag=direct status=none || fail "read at 63 MiB failed"
same_bytes "read back at 0 MiB through the kernel host" "$W/pattern" "$W/back0"
same_bytes "read back at 63 MiB through the kernel host" "$W/pattern" "$W/back63"
dd if="$W/ns.img" of="$W/file63" bs=64k skip=$((63 * 16)) count=16 status=none
same_bytes "backing file at 63 MiB" "$W/pattern" "$W/file63"
nvme disconnect -n "$NQN" >&2 || fail "nvme disconnect failed"
"$TARGET_SH" down --nqn "$NQN"
log "file namespace OK ($(($(now_ms) - t0)) ms)"

t0=$(now_ms)
truncate -s 16M "$W/dev.img"
[ -e /dev/loop-control ] || modprobe loop || fail "modprobe loop failed"
LOOP=$(losetup --find --show "$W/dev.img") || fail "losetup failed"
"$TARGET_SH" up --device "$LOOP" --nqn "$NQN_DEV" --port "$PORT" >&2
nvme connect -t tcp -a 127.0.0.1 -s "$PORT" -n "$NQN_DEV" >&2 || fail "nvme connect ($NQN_DEV) failed"
DEV=$(nvme_ns_dev "$NQN_DEV") || fail "no block device appeared for $NQN_DEV"
dd if="$W/pattern" of="$DEV" bs=64k oflag=direct status=none || fail "write to $DEV failed"
dd if="$DEV" of="$W/back-dev" bs=64k count=16 iflag=direct status=none || fail "read from $DEV failed"
same_bytes "block-device namespace, read back" "$W/pattern" "$W/back-dev"
nvme disconnect -n "$NQN_DEV" >&2 || fail "nvme disconnect ($NQN_DEV) failed"
"$TARGET_SH" down --nqn "$NQN_DEV"
"$TARGET_SH" status >&2
[ -z "$(ls -A /sys/kernel/config/nvmet/ports)" ] || fail "a port is left after down"
log "block-device namespace OK ($(($(now_ms) - t0)) ms)"
log "PASS"
