#!/bin/bash
# scripts/interop/pcap-check-selftest.sh — shows that pcap-check.sh can fail: it must accept a crafted
# well-formed NVMe/TCP stream and reject crafted broken ones (each for its own reason).
# Usage: scripts/interop/pcap-check-selftest.sh [--work DIR]     (needs text2pcap and tshark)
set -uo pipefail
CHECK=pcap-check-selftest
# shellcheck source-path=SCRIPTDIR disable=SC2034  # CHECK is read by lib.sh
. "$(dirname "$0")/lib.sh"
W=$REPO/target/vm/pcap-selftest
[ "${1:-}" = --work ] && W=$2
rm -rf "$W"; mkdir -p "$W"
command -v text2pcap >/dev/null || fail "text2pcap missing (wireshark-common, pulled in by tshark)"

zeros() { printf '00%.0s' $(seq "$1"); }
# capture NAME HEX: one TCP segment 40000 -> 24420 carrying HEX.
capture() {
  echo "$2" | sed 's/../& /g' | awk '{print "000000 " $0}' >"$W/$1.txt"
  text2pcap -q -T 40000,24420 "$W/$1.txt" "$W/$1.pcap" >/dev/null 2>&1 || fail "text2pcap failed for $1"
}
ICREQ="00008000""80000000""0000""00""00""00000000$(zeros 112)"      # type 0, hlen 128, plen 128
CMD="04004800""48000000$(zeros 64)"                                  # type 4, hlen 72, plen 72, zero SQE
capture good "$ICREQ$CMD"
capture short-plen "00008000""10000000$(zeros 8)"                    # ICReq with plen 16 < hlen
capture truncated "00008000""80000000$(zeros 56)"                    # claims 128 bytes, has 64
capture bad-type "08001800""18000000$(zeros 16)"                     # type 8 does not exist
capture wrong-hlen "04001800""48000000$(zeros 64)"                   # CapsuleCmd with hlen 24

failed=0
expect() {   # expect pass|fail NAME [pcap-check args]
  local want=$1 name=$2; shift 2
  if "$INTEROP_DIR/pcap-check.sh" --label "selftest:$name" --port 24420 "$@" "$W/$name.pcap" >"$W/$name.log" 2>&1; then
    got=pass; else got=fail; fi
  if [ "$got" = "$want" ]; then
    log "$name: ${got}ed as it should$(grep -m1 FAIL "$W/$name.log" | sed "s/.*FAIL: / (/; s/$/)/")"
  else
    log "$name: ${got}ed but should have ${want}ed:"; cat "$W/$name.log" >&2; failed=1
  fi
}
expect pass good --expect ICReq,CapsuleCmd
expect fail good --expect R2T
expect fail short-plen
expect fail truncated
expect fail bad-type
expect fail wrong-hlen
[ "$failed" = 0 ] || fail "pcap-check.sh misjudged a crafted capture"
log "PASS"
