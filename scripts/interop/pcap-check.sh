#!/bin/bash
# scripts/interop/pcap-check.sh — checks with Wireshark's NVMe/TCP dissector (tshark) that a capture
# holds well-formed NVMe/TCP and nothing else on the given ports.
#
# Usage: scripts/interop/pcap-check.sh [--port P]... [--expect T[,T...]] [--allow-termreq] [--label L] PCAP
#
#   --port P          TCP port carrying NVMe/TCP (repeatable; default 4420). Decoded with
#                     `-d tcp.port==P,nvme-tcp`, so non-standard ports work; only these ports are checked.
#   --expect T,...    PDU types that must appear at least once, among ICReq ICResp CapsuleCmd
#                     CapsuleResp H2CData C2HData R2T H2CTermReq C2HTermReq (case-insensitive)
#   --allow-termreq   do not fail on H2CTermReq/C2HTermReq (fatal-error PDUs)
#   --label L         prefix of the messages
#
# Fails (exit 1) when: the capture misses segments (drops); no NVMe/TCP PDU is found; any TCP payload byte on those ports is not inside a
# decoded PDU (per connection and direction, the TCP payload must equal the sum of the PDUs' plen:
# catches a wrong plen/framing that the dissector would otherwise leave pending); a frame is malformed
# (`_ws.malformed`) or carries an expert item of severity Error; a PDU type is unknown; a TermReq
# appears; an expected type is missing; a PDU header is inconsistent (hlen not the type's, plen < hlen,
# ICReq/ICResp plen not 128, data on a CapsuleResp/R2T or none on a data PDU, pdo inside the header),
# or the dissector shows bytes it could not interpret. Prints the PDU counts by type.
# Exit 3 instead when the capture itself is incomplete (segments the capturing kernel never handed to
# dumpcap): the byte accounting cannot be judged then, and the caller may capture again.
set -euo pipefail

PORTS=()
EXPECT=
ALLOW_TERMREQ=0
LABEL=pcap-check
while [ $# -gt 0 ]; do
  case $1 in
    --port) PORTS+=("$2"); shift 2 ;;
    --expect) EXPECT=$2; shift 2 ;;
    --allow-termreq) ALLOW_TERMREQ=1; shift ;;
    --label) LABEL=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "pcap-check: unknown option '$1'" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# = 1 ] || { echo "pcap-check: give one capture file (see --help)" >&2; exit 2; }
PCAP=$1
[ -s "$PCAP" ] || { echo "[$LABEL] FAIL: capture $PCAP is missing or empty" >&2; exit 1; }
command -v tshark >/dev/null || { echo "[$LABEL] FAIL: tshark not installed (scripts/vm/setup.sh)" >&2; exit 1; }
[ ${#PORTS[@]} -gt 0 ] || PORTS=(4420)

decode_as=()
port_filter=
for p in "${PORTS[@]}"; do
  [[ $p =~ ^[0-9]+$ ]] || { echo "pcap-check: bad port '$p'" >&2; exit 2; }
  decode_as+=(-d "tcp.port==$p,nvme-tcp")
  port_filter+="${port_filter:+ || }tcp.port == $p"
done

# One pass: per frame, the connection, direction, TCP payload length, and the NVMe/TCP PDUs that
# complete in it (types and lengths, comma-separated when several), expert severities, malformed.
fields=$(tshark -r "$PCAP" -n "${decode_as[@]}" -Y "($port_filter) && !tcp.analysis.retransmission" \
  -T fields -E occurrence=a -E aggregator=, -E separator=/t \
  -e frame.number -e tcp.stream -e tcp.srcport -e tcp.len -e nvme-tcp.type -e nvme-tcp.plen \
  -e _ws.expert.severity -e _ws.malformed -e nvme-tcp.hlen -e nvme-tcp.pdo -e nvme-tcp.unknown_data \
  2>/dev/null) || {
  echo "[$LABEL] FAIL: tshark could not read $PCAP" >&2; exit 1; }

# A lossy capture (the capturing kernel dropped packets) looks like undecodable bytes: say so plainly.
lost=$(tshark -r "$PCAP" -n -Y "($port_filter) && tcp.analysis.lost_segment" -T fields -e frame.number 2>/dev/null |
  wc -l)
if [ "$lost" != 0 ]; then
  echo "[$LABEL] FAIL: the capture is incomplete: $lost segment(s) were not captured (capture drops, not a" \
    "protocol error; capture with a larger buffer)" >&2
fi

awk -F'\t' -v label="$LABEL" -v expect="$EXPECT" -v allow_termreq="$ALLOW_TERMREQ" '
BEGIN {
  name[0] = "ICReq"; name[1] = "ICResp"; name[2] = "H2CTermReq"; name[3] = "C2HTermReq"
  name[4] = "CapsuleCmd"; name[5] = "CapsuleResp"; name[6] = "H2CData"; name[7] = "C2HData"; name[9] = "R2T"
  # Header length of each type (NVMe/TCP 1.0): the dissector shows a mismatch only as "Unknown Data".
  hlen_of[0] = 128; hlen_of[1] = 128; hlen_of[2] = 24; hlen_of[3] = 24; hlen_of[4] = 72
  hlen_of[5] = 24; hlen_of[6] = 24; hlen_of[7] = 24; hlen_of[9] = 24
  ERROR_SEVERITY = 8388608   # PI_ERROR (0x00800000)
  bad = 0
}
function problem(msg) { printf "[%s] FAIL: %s\n", label, msg > "/dev/stderr"; bad = 1 }
{
  key = $2 " " $3
  payload[key] += $4
  if ($5 != "") {
    nt = split($5, types, ","); split($6, lens, ","); split($9, hlens, ","); split($10, pdos, ",")
    for (i = 1; i <= nt; i++) {
      t = types[i] + 0; plen = lens[i] + 0; hlen = hlens[i] + 0; pdo = pdos[i] + 0
      pdu_bytes[key] += plen
      if (!(t in name)) { problem("frame " $1 ": unknown PDU type " types[i]); continue }
      count[name[t]]++; total++
      where = "frame " $1 ": " name[t] " "
      if (hlen != hlen_of[t]) problem(where "hlen " hlen ", expected " hlen_of[t])
      if (plen < hlen) problem(where "plen " plen " < hlen " hlen)
      if ((t == 0 || t == 1) && plen != 128) problem(where "plen " plen ", expected 128")
      if ((t == 5 || t == 9) && plen != hlen && plen != hlen + 4) problem(where "carries data (plen " plen ")")
      if ((t == 6 || t == 7) && (pdo < hlen || plen <= pdo)) problem(where "has no data (pdo " pdo ", plen " plen ")")
      if (pdo != 0 && pdo < hlen) problem(where "pdo " pdo " inside the header")
    }
  }
  if ($11 != "") problem("frame " $1 ": bytes the dissector could not interpret (Unknown Data)")
  if ($7 != "") {
    ns = split($7, sev, ",")
    for (i = 1; i <= ns; i++) if (sev[i] + 0 >= ERROR_SEVERITY) { errors++; if (errors <= 5) problem("frame " $1 ": expert item of severity Error") }
  }
  if ($8 != "") { malformed++; if (malformed <= 5) problem("frame " $1 ": malformed (" $8 ")") }
}
END {
  if (total == 0) problem("no NVMe/TCP PDU decoded")
  for (k in payload) {
    if (payload[k] != pdu_bytes[k] + 0) {
      split(k, kk, " ")
      problem(sprintf("connection %s from port %s: %d TCP payload bytes but %d bytes in decoded PDUs", kk[1], kk[2], payload[k], pdu_bytes[k]))
    }
    bytes += payload[k]; conns[substr(k, 1, index(k, " ") - 1)] = 1
  }
  nconn = 0; for (c in conns) nconn++
  if (!allow_termreq && (count["H2CTermReq"] + count["C2HTermReq"]) > 0) problem("a TermReq (fatal transport error) was sent")
  n = split(expect, want, ",")
  for (i = 1; i <= n; i++) {
    found = 0
    for (t in name) if (tolower(name[t]) == tolower(want[i])) { found = 1; if (count[name[t]] == 0) problem("no " name[t] " PDU") }
    if (!found) problem("--expect: unknown PDU type " want[i])
  }
  summary = ""
  for (t = 0; t <= 9; t++) if ((t in name) && count[name[t]] > 0) summary = summary " " name[t] "=" count[name[t]]
  printf "[%s] %d PDUs in %d TCP connection(s), %d payload bytes:%s\n", label, total, nconn, bytes, summary > "/dev/stderr"
  if (errors + malformed > 0) printf "[%s] %d malformed frame(s), %d expert error(s)\n", label, malformed + 0, errors + 0 > "/dev/stderr"
  exit bad
}' <<<"$fields" && rc=0 || rc=$?
# An incomplete capture makes every byte count after the gap wrong: the verdict is "inconclusive".
if [ "$lost" != 0 ]; then exit 3; fi
exit "$rc"

