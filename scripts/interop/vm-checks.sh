#!/bin/bash
# scripts/interop/vm-checks.sh — interop checks (a) and (b) against the real Linux NVMe/TCP target and
# host, in ONE boot of the scripts/vm/run.sh guest (plus the kernel-only baseline).
#
# Usage: scripts/interop/vm-checks.sh [--skip-kernel-loopback] [--only-kernel] [--client-test BIN]
#                                     [--timeout SECS] [--work DIR]
#
#   kernel-loopback                   kernel target + kernel host in the guest (proves the infrastructure)
#   a-our-initiator-vs-kernel-target  the guest exports an 8 MiB random file through the kernel target
#                                     (nvmet-tcp-target.sh, 0.0.0.0:4420); on the host, our scalio-nvme
#                                     reaches it through host 127.0.0.1:$A_HOST_PORT (forwarded): identify
#                                     (the model must be Linux's), read the whole namespace and compare,
#                                     write 256 KiB at an unaligned-to-64K offset and read it back; the guest
#                                     then checks its backing file is the pattern plus exactly that write.
#   a-wire                            the guest NIC's capture of that session decodes cleanly with tshark
#                                     (pcap-check.sh), with ICReq/ICResp, CapsuleCmd/Resp, C2HData, R2T, H2CData
#   b-kernel-host-vs-our-target       in the guest: our `scalio-nvme serve`, then nvme discover (port 8009),
#                                     connect, O_DIRECT reads and a write compared byte for byte, disconnect
#                                     (see guest-suite.sh)
#   a-client-test, a-client-test-digests
#                                     with --client-test BIN (the built client/tests/nvme_interop.rs): that
#                                     test (discovery, 2 I/O queues, read, write+flush+read, keep-alive,
#                                     disconnect) against a scratch subsystem of the same kernel target,
#                                     without and with header+data digests
#   --only-kernel   run the kernel baseline alone (no scalio-nvme needed)
#   --timeout SECS  guest timeout (default 600)
#   --work DIR      where the patterns, logs and captures go (default <repo>/target/vm/interop)
# Prints "PASS|FAIL name seconds" per check (also in DIR/summary) and exits non-zero when one failed.
set -uo pipefail
CHECK=vm-checks
# shellcheck source-path=SCRIPTDIR disable=SC2034  # CHECK is read by lib.sh
. "$(dirname "$0")/lib.sh"

SKIP_KERNEL_LOOPBACK=0
ONLY_KERNEL=0
TIMEOUT=600
W=$REPO/target/vm/interop
A_HOST_PORT=${A_HOST_PORT:-14420}
NQN_A=nqn.2024-01.io.scalio:interop-kernel-target
NQN_A2=nqn.2024-01.io.scalio:interop-kernel-target-scratch
CLIENT_TEST=
while [ $# -gt 0 ]; do
  case $1 in
    --skip-kernel-loopback) SKIP_KERNEL_LOOPBACK=1; shift ;;
    --only-kernel) ONLY_KERNEL=1; shift ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --work) W=$2; shift 2 ;;
    --client-test) CLIENT_TEST=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "vm-checks: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ "$ONLY_KERNEL" = 1 ] || require_our_cli

SHARE=$W/share
rm -rf "$W"; mkdir -p "$SHARE"
: >"$W/summary"
make_pattern "$SHARE/pattern.img" 8192
make_pattern "$SHARE/a-write.bin" 256
A_OFFSET=$(((1 << 20) + 5 * 4096))

record() { echo "$2 $1 $3" >>"$W/summary"; }   # record NAME PASS|FAIL SECS

guest_env=(SKIP_KERNEL_LOOPBACK="$SKIP_KERNEL_LOOPBACK")
[ "$ONLY_KERNEL" = 1 ] && guest_env+=(SKIP_A=1 SKIP_B=1)

t_start=$(now_ms)
"$REPO/scripts/vm/run.sh" --quiet --timeout "$TIMEOUT" --share "$SHARE" --log "$W/console.log" \
  --fwd "$A_HOST_PORT:4420" --pcap "$W/a-wire.pcap" -- \
  env "${guest_env[@]}" "$INTEROP_DIR/guest-suite.sh" 2>"$W/run.log" &
VM_PID=$!
trap 'kill "$VM_PID" 2>/dev/null; wait "$VM_PID" 2>/dev/null' EXIT

# The host half of (a): our initiator against the guest's kernel target, through the forwarded port.
host_a() {
  set -eo pipefail
  CHECK=a-host
  local t
  our_identify 127.0.0.1 "$A_HOST_PORT" "$NQN_A" >"$W/a-identify.txt" || fail "identify failed"
  cat "$W/a-identify.txt" >&2
  grep -q Linux "$W/a-identify.txt" || fail "identify output does not show the kernel target's model (Linux)"
  t=$(now_ms)
  our_read 127.0.0.1 "$A_HOST_PORT" "$NQN_A" 0 $((8 << 20)) "$W/a-read.bin" || fail "read failed"
  log "read 8 MiB in $(($(now_ms) - t)) ms"
  same_bytes "8 MiB namespace read by our initiator" "$SHARE/pattern.img" "$W/a-read.bin"
  t=$(now_ms)
  our_write 127.0.0.1 "$A_HOST_PORT" "$NQN_A" "$A_OFFSET" "$SHARE/a-write.bin" || fail "write failed"
  log "wrote 256 KiB at byte $A_OFFSET in $(($(now_ms) - t)) ms"
  our_read 127.0.0.1 "$A_HOST_PORT" "$NQN_A" "$A_OFFSET" $((256 << 10)) "$W/a-read-back.bin" || fail "read-back failed"
  same_bytes "256 KiB written by our initiator, read back" "$SHARE/a-write.bin" "$W/a-read-back.bin"
}

# client_test NAME [ENV=VALUE...]: the client crate's interop test against the scratch subsystem; it
# must run its one test (it skips silently without its environment) and pass.
client_test() {
  local name=$1 t rc
  shift
  t=$(now_ms)
  timeout -k 5 "$OUR_TIMEOUT" env RUST_BACKTRACE=0 SCALIO_NVME_ADDR="127.0.0.1:$A_HOST_PORT" SCALIO_NVME_NQN="$NQN_A2" \
    SCALIO_NVME_DISCOVERY="127.0.0.1:$A_HOST_PORT" SCALIO_NVME_WRITABLE=1 "$@" \
    "$CLIENT_TEST" --test-threads=1 --nocapture >"$W/$name.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ] && grep -q 'test result: ok. 1 passed' "$W/$name.log"; then v=PASS; else v=FAIL; fi
  CLIENT_RESULTS[$name]="$v $(fmt_secs $(($(now_ms) - t)))"
}
declare -A CLIENT_RESULTS=()

boot_ms=
a_host=skipped
while kill -0 "$VM_PID" 2>/dev/null; do
  [ -z "$boot_ms" ] && [ -f "$SHARE/.guest-ready" ] && boot_ms=$(($(now_ms) - t_start))
  if [ -s "$SHARE/a.ready" ]; then
    t=$(now_ms)
    if (host_a) >"$W/a-host.log" 2>&1; then a_host=PASS; else a_host=FAIL; fi
    a_host_secs=$(fmt_secs $(($(now_ms) - t)))
    if [ -n "$CLIENT_TEST" ]; then
      client_test a-client-test
      client_test a-client-test-digests SCALIO_NVME_DIGESTS=1
    fi
    # Only now may the guest check its backing file and stop the kernel target.
    if [ "$a_host" = PASS ]; then echo "$A_OFFSET" >"$SHARE/a.done"; else echo FAIL >"$SHARE/a.done"; fi
    break
  fi
  sleep 0.2
done
wait "$VM_PID"; vm_rc=$?
trap - EXIT
total_ms=$(($(now_ms) - t_start))

# Results of the guest half: "NAME PASS|FAIL SECS" lines.
declare -A guest
while read -r name verdict secs; do guest[$name]="$verdict $secs"; done <"$SHARE/results" 2>/dev/null

if [ "$SKIP_KERNEL_LOOPBACK" = 0 ]; then
  read -r v s <<<"${guest[kernel-loopback]:-FAIL -}"; record kernel-loopback "$v" "$s"
fi
if [ "$ONLY_KERNEL" = 0 ]; then
  read -r v s <<<"${guest[a-our-initiator-vs-kernel-target]:-FAIL -}"
  if [ "$a_host" = PASS ] && [ "$v" = PASS ]; then v=PASS; else v=FAIL; fi
  record a-our-initiator-vs-kernel-target "$v" "${a_host_secs:-?}+$s"
  t=$(now_ms)
  if "$INTEROP_DIR/pcap-check.sh" --label a-wire --port 4420 \
       --expect ICReq,ICResp,CapsuleCmd,CapsuleResp,C2HData,R2T,H2CData "$W/a-wire.pcap" >"$W/a-wire.log" 2>&1; then
    v=PASS; else v=FAIL; fi
  record a-wire "$v" "$(fmt_secs $(($(now_ms) - t)))"
  if [ -n "$CLIENT_TEST" ]; then
    for name in a-client-test a-client-test-digests; do
      read -r v s <<<"${CLIENT_RESULTS[$name]:-FAIL -}"; record "$name" "$v" "$s"
    done
  fi
  read -r v s <<<"${guest[b-kernel-host-vs-our-target]:-FAIL -}"; record b-kernel-host-vs-our-target "$v" "$s"
fi

log "guest: boot to command ${boot_ms:-?} ms, whole run $total_ms ms (run.sh exit $vm_rc)"
failed=0
while read -r verdict name secs; do
  echo "$verdict $name ${secs}s"
  if [ "$verdict" != PASS ]; then
    failed=1
    logs=("$SHARE/$name.log")
    case $name in
      a-our-*) logs+=("$W/a-host.log") ;;
      a-wire|a-client-test*) logs=("$W/$name.log") ;;
    esac
    for f in "${logs[@]}"; do if [ -s "$f" ]; then show_log "$f"; fi; done
  fi
done <"$W/summary"
# 124: timeout, 125: the guest did not run the suite; any other non-zero status comes from failed checks.
if [ "$vm_rc" = 124 ] || [ "$vm_rc" = 125 ] || { [ "$vm_rc" != 0 ] && [ "$failed" = 0 ]; }; then
  echo "FAIL guest-run - (run.sh exit $vm_rc; console: $W/console.log)"
  cat "$W/run.log"; tail -n 40 "$W/console.log"; failed=1
fi
exit "$failed"
