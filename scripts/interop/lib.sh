#!/bin/bash
# scripts/interop/lib.sh — helpers shared by the interop checks (sourced, not run).
# shellcheck disable=SC2034  # variables here are used by the scripts that source this file

INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$INTEROP_DIR/../.." && pwd)
TARGET_SH=$REPO/scripts/nvmet-tcp-target.sh
# The release build of our CLI (scripts/ci/interop.sh builds it); SCALIO_NVME overrides.
SCALIO_NVME=${SCALIO_NVME:-$REPO/target/release/scalio-nvme}
# Errors from our CLI (anyhow) without a stack trace, so the message is what a log tail shows; panics
# still follow RUST_BACKTRACE.
export RUST_LIB_BACKTRACE=0
# Each client command of our CLI gets this long (seconds) before it is killed: a hang must fail a check,
# not the CI run.
OUR_TIMEOUT=${OUR_TIMEOUT:-120}
DISCOVERY_NQN=nqn.2014-08.org.nvmexpress.discovery

# A check's name, set by the script, prefixes its messages.
CHECK=${CHECK:-interop}
log() { echo "[$CHECK] $*" >&2; }
fail() { echo "[$CHECK] FAIL: $*" >&2; exit 1; }

# now_ms: wall clock in milliseconds, for the timings the checks print.
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }

# fmt_secs MS: milliseconds as seconds with one decimal.
fmt_secs() { printf '%d.%d' $(($1 / 1000)) $((($1 % 1000) / 100)); }

# make_pattern FILE SIZE_KIB: FILE gets SIZE_KIB KiB of random bytes (compared byte for byte later).
make_pattern() { head -c "$(($2 * 1024))" /dev/urandom >"$1"; }

# same_bytes WHAT A B: A and B are byte-for-byte equal, or fail with the first differing offsets.
same_bytes() {
  if ! cmp -s "$2" "$3"; then
    log "$1: $2 and $3 differ; first differing bytes (offset, octal a, octal b):"
    cmp -l "$2" "$3" 2>&1 | head -5 >&2 || true
    fail "$1: data mismatch"
  fi
  log "$1: $(stat -c %s "$2") bytes identical"
}

# show_log FILE: the file, or its first 20 and last 50 lines when it is long.
show_log() {
  echo "----- $1"
  if [ "$(wc -l <"$1")" -le 80 ]; then cat "$1"; else head -n 20 "$1"; echo "[...]"; tail -n 50 "$1"; fi
}

# wait_tcp_port HOST PORT SECONDS: wait until something accepts TCP connections there.
wait_tcp_port() {
  local deadline=$((EPOCHSECONDS + $3))
  while [ "$EPOCHSECONDS" -lt "$deadline" ]; do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# nvme_ns_dev NQN: the block device (/dev/nvmeXnY) of the connected subsystem NQN, waiting up to 15 s
# for the kernel's namespace scan. Looks at both the multipath (nvme-subsystem) and per-controller
# layouts of sysfs.
nvme_ns_dev() {
  local nqn=$1 deadline=$((EPOCHSECONDS + 15)) d ns subnqn
  while [ "$EPOCHSECONDS" -lt "$deadline" ]; do
    for d in /sys/class/nvme-subsystem/* /sys/class/nvme/*; do
      subnqn=
      [ -r "$d/subsysnqn" ] && read -r subnqn <"$d/subsysnqn"
      [ "$subnqn" = "$nqn" ] || continue
      for ns in "$d"/nvme*n*; do
        ns=${ns##*/}
        if [[ $ns =~ ^nvme[0-9]+n[0-9]+$ ]] && [ -b "/dev/$ns" ]; then echo "/dev/$ns"; return 0; fi
      done
    done
    sleep 0.2
  done
  return 1
}

# in_guest: true inside a guest of scripts/vm/run.sh (or any machine with the kernel NVMe target).
require_guest() {
  [ "${SCALIO_VM:-0}" = 1 ] || [ -d /sys/kernel/config/nvmet ] ||
    fail "needs the kernel NVMe-oF modules: run it through scripts/vm/run.sh"
}

# --- our CLI (benches/src/bin/scalio-nvme.rs): the only place that knows its flags ------------------
require_our_cli() {
  [ -x "$SCALIO_NVME" ] || fail "$SCALIO_NVME missing: cargo build --release -p scalio-bench --bin scalio-nvme"
}

# our_identify ADDR PORT NQN: Identify Controller and Namespace, printed on stdout.
our_identify() { timeout -k 5 "$OUR_TIMEOUT" "$SCALIO_NVME" identify --addr "$1:$2" --nqn "$3"; }

# our_block_size ADDR PORT NQN: sets OUR_BS to namespace 1's block size, from identify's
# "namespace 1: N blocks of B bytes" line (cached per target; no subshell, so the cache sticks).
declare -A OUR_BLOCK_SIZE=()
our_block_size() {
  local key="$1:$2/$3"
  if [ -z "${OUR_BLOCK_SIZE[$key]:-}" ]; then
    OUR_BLOCK_SIZE[$key]=$(our_identify "$1" "$2" "$3" |
      sed -n 's/^namespace 1: [0-9]* blocks of \([0-9]*\) bytes.*/\1/p')
  fi
  OUR_BS=${OUR_BLOCK_SIZE[$key]}
  if ! [[ $OUR_BS =~ ^[0-9]+$ ]] || [ "$OUR_BS" = 0 ]; then
    unset "OUR_BLOCK_SIZE[$key]"
    echo "cannot get the block size of $3 at $1:$2 from scalio-nvme identify" >&2
    return 1
  fi
}

# our_read ADDR PORT NQN OFFSET LENGTH OUT: LENGTH bytes of namespace 1 from byte OFFSET into OUT
# (both multiples of the block size).
our_read() {
  our_block_size "$1" "$2" "$3" || return 1
  if (($4 % OUR_BS != 0 || $5 % OUR_BS != 0)); then
    echo "our_read: $4+$5 is not in whole $OUR_BS-byte blocks" >&2; return 1
  fi
  timeout -k 5 "$OUR_TIMEOUT" "$SCALIO_NVME" read --addr "$1:$2" --nqn "$3" \
    --lba $(($4 / OUR_BS)) --count $(($5 / OUR_BS)) --output "$6"
}

# our_write ADDR PORT NQN OFFSET IN: the bytes of IN into namespace 1 at byte OFFSET.
our_write() {
  our_block_size "$1" "$2" "$3" || return 1
  if (($4 % OUR_BS != 0)); then echo "our_write: offset $4 is not on a $OUR_BS-byte block" >&2; return 1; fi
  timeout -k 5 "$OUR_TIMEOUT" "$SCALIO_NVME" write --addr "$1:$2" --nqn "$3" --lba $(($4 / OUR_BS)) --file "$5"
}

# our_discover ADDR PORT: the discovery log, on stdout.
our_discover() { timeout -k 5 "$OUR_TIMEOUT" "$SCALIO_NVME" discover --addr "$1:$2"; }

# our_serve_start FILE NQN ADDR PORT DISCOVERY_PORT LOG: starts our target in the background, exporting
# FILE (writable) as namespace 1 of NQN, with a separate discovery listener; sets OUR_SERVE_PID.
our_serve_start() {
  "$SCALIO_NVME" serve --listen "$3:$4" --discovery "$3:$5" --file "$1:$2" --allow-writes >"$6" 2>&1 &
  OUR_SERVE_PID=$!
}
