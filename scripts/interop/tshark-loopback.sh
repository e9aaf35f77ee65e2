#!/bin/bash
# scripts/interop/tshark-loopback.sh — check (c): our initiator against our target on this machine's
# loopback (no guest), captured and decoded by Wireshark's NVMe/TCP dissector.
#
# Usage: scripts/interop/tshark-loopback.sh [--port P] [--discovery-port D] [--work DIR]
#
# Starts `scalio-nvme serve` on 127.0.0.1:P (default 24420, not the standard 4420, so the decode-as
# path is exercised) with discovery on D (default 28009), captures both ports on lo with dumpcap, runs
# discover, identify, a 1 MiB write (beyond in-capsule size: R2T/H2CData) and reads that are compared
# byte for byte, stops the target, then runs pcap-check.sh: every PDU decodes, nothing malformed, and
# ICReq/ICResp, CapsuleCmd/CapsuleResp, C2HData, R2T, H2CData all appear. A capture that missed
# segments is inconclusive and the session is captured again (up to six times). Needs root
# (capture) and tshark.
set -uo pipefail
CHECK=tshark-loopback
# shellcheck source-path=SCRIPTDIR disable=SC2034  # CHECK is read by lib.sh
. "$(dirname "$0")/lib.sh"

PORT=24420
DISC_PORT=28009
W=$REPO/target/vm/tshark
while [ $# -gt 0 ]; do
  case $1 in
    --port) PORT=$2; shift 2 ;;
    --discovery-port) DISC_PORT=$2; shift 2 ;;
    --work) W=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "tshark-loopback: unknown option '$1'" >&2; exit 2 ;;
  esac
done
require_our_cli
command -v dumpcap >/dev/null || fail "dumpcap (tshark) missing: run scripts/vm/setup.sh"
NQN=nqn.2024-01.io.scalio:tshark-loopback

CAP_PID=
OUR_SERVE_PID=
cleanup() {
  [ -n "$OUR_SERVE_PID" ] && kill "$OUR_SERVE_PID" 2>/dev/null
  [ -n "$CAP_PID" ] && kill "$CAP_PID" 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT

# One capture session: start dumpcap, run the whole exchange against a fresh target, stop both, and
# judge the capture. Returns pcap-check's status (3: the capture missed segments, inconclusive).
capture_session() {
  rm -rf "$W"; mkdir -p "$W"
  # A big kernel buffer (-B, MiB): loopback carries 64 KiB segments faster than the default 2 MiB drains.
  dumpcap -q -B 256 -i lo -f "tcp port $PORT or tcp port $DISC_PORT" -w "$W/lo.pcapng" 2>"$W/dumpcap.log" &
  CAP_PID=$!
  local deadline=$((EPOCHSECONDS + 20))
  until grep -q '^File:' "$W/dumpcap.log" 2>/dev/null; do
    kill -0 "$CAP_PID" 2>/dev/null || { cat "$W/dumpcap.log" >&2; fail "dumpcap could not capture on lo"; }
    [ "$EPOCHSECONDS" -lt "$deadline" ] || fail "dumpcap did not start"
    sleep 0.1
  done

  make_pattern "$W/backing.img" 4096
  cp "$W/backing.img" "$W/expected.img"
  our_serve_start "$W/backing.img" "$NQN" 127.0.0.1 "$PORT" "$DISC_PORT" "$W/serve.log"
  wait_tcp_port 127.0.0.1 "$PORT" 20 || { cat "$W/serve.log" >&2; fail "our target does not listen on $PORT"; }
  wait_tcp_port 127.0.0.1 "$DISC_PORT" 5 || fail "our target does not listen on $DISC_PORT (discovery)"

  our_discover 127.0.0.1 "$DISC_PORT" >"$W/discover.txt" || fail "discover failed"
  grep -q "$NQN" "$W/discover.txt" || { cat "$W/discover.txt" >&2; fail "discovery log does not list $NQN"; }
  our_identify 127.0.0.1 "$PORT" "$NQN" >"$W/identify.txt" || fail "identify failed"
  make_pattern "$W/write.bin" 1024
  our_write 127.0.0.1 "$PORT" "$NQN" $((64 << 10)) "$W/write.bin" || fail "write of 1 MiB failed"
  dd if="$W/write.bin" of="$W/expected.img" bs=64k seek=1 conv=notrunc status=none
  our_read 127.0.0.1 "$PORT" "$NQN" $((64 << 10)) $((1 << 20)) "$W/read-back.bin" || fail "read-back failed"
  same_bytes "1 MiB written then read back" "$W/write.bin" "$W/read-back.bin"
  our_read 127.0.0.1 "$PORT" "$NQN" 0 $((4 << 20)) "$W/read-all.bin" || fail "read of 4 MiB failed"
  same_bytes "whole 4 MiB namespace" "$W/expected.img" "$W/read-all.bin"
  kill -TERM "$OUR_SERVE_PID"; wait "$OUR_SERVE_PID" 2>/dev/null; OUR_SERVE_PID=
  same_bytes "backing file after the session" "$W/expected.img" "$W/backing.img"

  sleep 0.5   # let dumpcap write the last segments
  kill -INT "$CAP_PID"; wait "$CAP_PID" 2>/dev/null; CAP_PID=
  grep -h '^Packets received/dropped' "$W/dumpcap.log" >&2 || true
  "$INTEROP_DIR/pcap-check.sh" --label "$CHECK" --port "$PORT" --port "$DISC_PORT" \
    --expect ICReq,ICResp,CapsuleCmd,CapsuleResp,C2HData,R2T,H2CData "$W/lo.pcapng"
}

# A capture that missed segments proves nothing either way (dumpcap on a loaded 2-core machine, or
# in the emulated guest, can lose a 64 KiB loopback segment without counting a drop): capture the
# whole session again, up to ATTEMPTS times (a session takes seconds; CI on 2026-12-03 saw three
# incomplete captures in a row in the guest). Any other verdict is final.
ATTEMPTS=6
for attempt in $(seq "$ATTEMPTS"); do
  capture_session && rc=0 || rc=$?
  [ "$rc" = 3 ] && [ "$attempt" -lt "$ATTEMPTS" ] || break
  log "attempt $attempt: the capture is incomplete; capturing the session again"
done
case $rc in
  0) log "PASS" ;;
  3) fail "$ATTEMPTS captures in a row missed segments: no verdict on the wire format" ;;
  *) fail "capture check failed" ;;
esac
