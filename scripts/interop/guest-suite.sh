#!/bin/bash
# scripts/interop/guest-suite.sh — the guest half of scripts/interop/vm-checks.sh (one boot for all).
# Runs inside the guest of scripts/vm/run.sh; talks to the host half through files in $SCALIO_VM_SHARE.
#
#   kernel-loopback  kernel target + kernel host (infrastructure baseline; skipped with SKIP_KERNEL_LOOPBACK=1)
#   a  Linux kernel target for our initiator: exports pattern.img through nvmet-tcp on 0.0.0.0:4420,
#      writes a.ready, lets the host run our initiator through the forwarded port, waits for a.done,
#      then checks that the data our initiator wrote (a-write.bin at the offset in a.done) reached the
#      backing file. A second subsystem (NQN_A2, 4 MiB scratch) on the same port serves the client
#      crate's own interop test (client/tests/nvme_interop.rs), which the host also runs.
#   b  the Linux kernel host against our target: `scalio-nvme serve` exports a copy of pattern.img;
#      nvme discover (port 8009) must list it; nvme connect to the traddr/trsvcid of its entry; O_DIRECT reads of the whole namespace
#      equal the file; an O_DIRECT write reads back and reaches the backing file; nvme disconnect; the
#      target must still be alive and stop on SIGTERM.
# Each check appends "NAME PASS|FAIL SECONDS" to $SHARE/results and its log to $SHARE/NAME.log.
# Exit status: 0 when every check passed.
set -uo pipefail
CHECK=guest-suite
# shellcheck source-path=SCRIPTDIR disable=SC2034  # CHECK is read by lib.sh
. "$(dirname "$0")/lib.sh"
require_guest
SHARE=${SCALIO_VM_SHARE:?not in a scripts/vm/run.sh guest}

NQN_A=nqn.2024-01.io.scalio:interop-kernel-target
NQN_A2=nqn.2024-01.io.scalio:interop-kernel-target-scratch
NQN_B=nqn.2024-01.io.scalio:interop-our-target
A_WAIT_SECS=${A_WAIT_SECS:-240}

# run_check NAME FUNCTION: runs FUNCTION in a subshell (set -e there), logs to SHARE/NAME.log, records.
failures=0
run_check() {
  local name=$1 fn=$2 t0 rc
  t0=$(now_ms)
  log "--- $name"
  ( set -eo pipefail; CHECK=$name; "$fn" ) > >(tee "$SHARE/$name.log") 2>&1
  rc=$?
  local secs
  secs=$(fmt_secs $(($(now_ms) - t0)))
  if [ "$rc" = 0 ]; then
    echo "$name PASS $secs" >>"$SHARE/results"
  else
    echo "$name FAIL $secs" >>"$SHARE/results"; failures=$((failures + 1))
  fi
}

check_kernel_loopback() { "$INTEROP_DIR/kernel-loopback.sh"; }

check_a() {
  cp "$SHARE/pattern.img" /tmp/a.img
  trap '"$TARGET_SH" down --nqn "$NQN_A" >/dev/null 2>&1; "$TARGET_SH" down --nqn "$NQN_A2" >/dev/null 2>&1' EXIT
  "$TARGET_SH" up --file /tmp/a.img --nqn "$NQN_A" --addr 0.0.0.0 --port 4420 >&2
  # A second subsystem on the same port, scratch space for the client crate's own interop test.
  "$TARGET_SH" up --file /tmp/a2.img --create-size 4M --nqn "$NQN_A2" --addr 0.0.0.0 --port 4420 >&2
  echo "$NQN_A" >"$SHARE/a.ready"
  log "kernel target up; waiting for the host's initiator (up to ${A_WAIT_SECS}s)"
  local deadline=$((EPOCHSECONDS + A_WAIT_SECS)) offset=
  while [ ! -s "$SHARE/a.done" ]; do
    [ "$EPOCHSECONDS" -lt "$deadline" ] || fail "the host did not finish within ${A_WAIT_SECS}s"
    sleep 0.5
  done
  read -r offset <"$SHARE/a.done"
  [[ $offset =~ ^[0-9]+$ ]] || fail "the host side failed before writing (a.done says '$offset')"
  local len
  len=$(stat -c %s "$SHARE/a-write.bin")
  dd if=/tmp/a.img of=/tmp/a-written bs=4096 skip=$((offset / 4096)) count=$((len / 4096)) status=none
  same_bytes "our initiator's write, seen in the kernel target's backing file" "$SHARE/a-write.bin" /tmp/a-written
  # Everything else must be untouched.
  cp "$SHARE/pattern.img" /tmp/a-expected
  dd if="$SHARE/a-write.bin" of=/tmp/a-expected bs=4096 seek=$((offset / 4096)) conv=notrunc status=none
  same_bytes "the whole backing file after our write" /tmp/a-expected /tmp/a.img
  "$TARGET_SH" down --nqn "$NQN_A" >&2
  "$TARGET_SH" down --nqn "$NQN_A2" >&2
}

check_b() {
  local serve_pid dev size
  cp "$SHARE/pattern.img" /tmp/b.img
  size=$(stat -c %s /tmp/b.img)
  our_serve_start /tmp/b.img "$NQN_B" 127.0.0.1 4420 8009 "$SHARE/b-serve.log"
  serve_pid=$OUR_SERVE_PID
  trap 'nvme disconnect -n "$NQN_B" >/dev/null 2>&1; kill "$serve_pid" 2>/dev/null' EXIT
  wait_tcp_port 127.0.0.1 4420 30 || { cat "$SHARE/b-serve.log" >&2; fail "our target does not listen on 4420"; }
  wait_tcp_port 127.0.0.1 8009 10 || fail "our target does not listen on 8009 (discovery)"
  log "our target is up (pid $serve_pid)"

  nvme discover -t tcp -a 127.0.0.1 -s 8009 >/tmp/b-discover.txt || fail "nvme discover on 8009 failed"
  cat /tmp/b-discover.txt >&2
  grep -q "subnqn: *$NQN_B\$" /tmp/b-discover.txt || fail "$NQN_B not in our discovery log"
  # Connect where the discovery log entry says: that checks the entry, not only its presence.
  local entry traddr trsvcid
  entry=$(awk -v nqn="$NQN_B" '/^=====Discovery Log Entry/ {if (hit) exit; e = ""; next}
    {e = e $0 "\n"} $1 == "subnqn:" && $2 == nqn {hit = 1} END {if (hit) printf "%s", e}' /tmp/b-discover.txt)
  traddr=$(awk '$1 == "traddr:" {print $2}' <<<"$entry")
  trsvcid=$(awk '$1 == "trsvcid:" {print $2}' <<<"$entry")
  if [ -z "$traddr" ] || [ -z "$trsvcid" ]; then fail "cannot read traddr/trsvcid of $NQN_B's discovery entry"; fi
  log "discovery entry for $NQN_B: $traddr:$trsvcid"

  nvme connect -t tcp -a "$traddr" -s "$trsvcid" -n "$NQN_B" >&2 || fail "nvme connect to our target failed"
  dev=$(nvme_ns_dev "$NQN_B") || fail "no block device appeared for $NQN_B"
  log "connected: $dev"
  nvme id-ctrl "$dev" >/tmp/b-id-ctrl.txt 2>&1 && grep -E '^(mn|sn|fr|subnqn|mdts|ioccsz) ' /tmp/b-id-ctrl.txt >&2
  [ "$(blockdev --getsize64 "$dev")" = "$size" ] ||
    fail "namespace is $(blockdev --getsize64 "$dev") bytes, the file $size"

  dd if="$dev" of=/tmp/b-read bs=1M iflag=direct status=none || fail "O_DIRECT read of $dev failed"
  same_bytes "whole namespace read by the kernel host (O_DIRECT)" /tmp/b.img /tmp/b-read
  # A small read at an odd LBA: offsets must be honoured.
  dd if="$dev" of=/tmp/b-read-small bs=4096 skip=777 count=3 iflag=direct status=none || fail "small read failed"
  dd if=/tmp/b.img of=/tmp/b-expect-small bs=4096 skip=777 count=3 status=none
  same_bytes "3 blocks at LBA 777 (4 KiB units)" /tmp/b-expect-small /tmp/b-read-small

  # A write large enough for R2T/H2CData (beyond any in-capsule size), then read back.
  make_pattern /tmp/b-write 512
  dd if=/tmp/b-write of="$dev" bs=512k seek=3 oflag=direct status=none || fail "O_DIRECT write to $dev failed"
  dd if="$dev" of=/tmp/b-write-back bs=512k skip=3 count=1 iflag=direct status=none || fail "read-back failed"
  same_bytes "512 KiB written at 1.5 MiB, read back through the kernel host" /tmp/b-write /tmp/b-write-back

  nvme disconnect -n "$NQN_B" >&2 || fail "nvme disconnect failed"
  kill -0 "$serve_pid" 2>/dev/null || fail "our target died during the session"
  dd if=/tmp/b.img of=/tmp/b-file-region bs=512k skip=3 count=1 status=none
  same_bytes "our target's backing file after the write" /tmp/b-write /tmp/b-file-region
  kill -TERM "$serve_pid"
  local deadline=$((EPOCHSECONDS + 10))
  while kill -0 "$serve_pid" 2>/dev/null && [ "$EPOCHSECONDS" -lt "$deadline" ]; do sleep 0.2; done
  ! kill -0 "$serve_pid" 2>/dev/null || fail "our target did not stop on SIGTERM"
  trap - EXIT
}

: >"$SHARE/results"
[ "${SKIP_KERNEL_LOOPBACK:-0}" = 1 ] || run_check kernel-loopback check_kernel_loopback
[ "${SKIP_A:-0}" = 1 ] || run_check a-our-initiator-vs-kernel-target check_a
[ "${SKIP_B:-0}" = 1 ] || run_check b-kernel-host-vs-our-target check_b
log "$failures check(s) failed"
[ "$failures" = 0 ]
