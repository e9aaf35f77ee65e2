#!/bin/bash
# nvmet-tcp-target.sh — export a file or block device through the Linux kernel NVMe-oF target (nvmet)
# over TCP, via configfs. Works on any Linux machine whose kernel has nvmet and nvmet-tcp (modules or
# built in); on a machine without them, run it inside the guest of scripts/vm/run.sh.
#
# Usage:
#   nvmet-tcp-target.sh up (--file PATH | --device DEV) [--nqn NQN] [--addr A] [--port P]
#                          [--create-size SIZE] [--nsid N] [--buffered-io | --direct-io]
#   nvmet-tcp-target.sh down [--nqn NQN]
#   nvmet-tcp-target.sh status
#
# up      Creates subsystem NQN (any host may connect), namespace N backed by the file or block device,
#         and a TCP port listening on A:P (reusing a configured port with the same address), then links
#         them. Prints `nqn=... addr=... port=... nsid=... backing=...` and a connect hint.
#           --file PATH         a regular file; with --create-size SIZE (e.g. 64M, as for truncate) it is
#                               created (sparse) if it does not exist
#           --device DEV        a block device (e.g. /dev/nullb0, /dev/loop0)
#           --nqn NQN           default nqn.2024-01.io.scalio:nvmet-tcp
#           --addr A            IPv4 or IPv6 address to listen on, default 127.0.0.1 (0.0.0.0: all)
#           --port P            TCP port, default 4420 (the kernel also answers discovery on it)
#           --nsid N            namespace id, default 1
#           --buffered-io       serve a file through the page cache. Default for files: on when the
#                               file's filesystem refuses O_DIRECT (tmpfs), off otherwise.
#           --direct-io         force O_DIRECT for a file (nvmet's default)
# down    Unlinks NQN from its ports (removing ports left without subsystems), disables and removes its
#         namespaces, removes the subsystem. Nothing to do is not an error.
# status  Lists the subsystems (namespaces, backing, enabled) and ports (address, linked subsystems).
#
# The same script serves NVMe over RDMA: scripts/nvmet-rdma-target.sh runs it with NVMET_TRTYPE=rdma
# (module nvmet-rdma, an RDMA-capable address; see that script).
#
# Needs root, configfs and the nvmet + nvmet-tcp modules (it runs modprobe and mounts configfs on
# /sys/kernel/config when needed). Exit status 0 on success, 1 on failure (with the reason on stderr),
# 2 on bad usage.
#
# Example (then, from an initiator: nvme connect -t tcp -a 127.0.0.1 -s 4420 -n <nqn>):
#   nvmet-tcp-target.sh up --file /tmp/ns1.img --create-size 64M --port 4420
#   nvmet-tcp-target.sh down
set -euo pipefail

CFG=/sys/kernel/config
NVMET=$CFG/nvmet
TRTYPE=${NVMET_TRTYPE:-tcp}
case $TRTYPE in tcp|rdma) ;; *) echo "nvmet-$TRTYPE-target: NVMET_TRTYPE must be tcp or rdma" >&2; exit 2 ;; esac
NQN=nqn.2024-01.io.scalio:nvmet-$TRTYPE
ADDR=127.0.0.1
PORT=4420
NSID=1
FILE=
DEVICE=
CREATE_SIZE=
BUFFERED=auto
# rdma only: ask the NIC to serve the namespace (NVMe-oF target offload, e.g. ConnectX with MLNX_OFED).
OFFLOAD=0

die() { echo "nvmet-$TRTYPE-target: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
bad_usage() { echo "nvmet-$TRTYPE-target: $*" >&2; echo "run with --help for usage" >&2; exit 2; }

# Writes VALUE to a configfs attribute; configfs reports a rejected value only as EINVAL and details
# it in the kernel log, so point there.
cfg_write() {
  local value=$1 attr=$2
  if ! (echo "$value" >"$attr") 2>/dev/null; then
    die "the kernel rejected '$value' for ${attr#"$NVMET"/} (see dmesg | tail)"
  fi
}

ensure_nvmet() {
  [ "$EUID" = 0 ] || die "must run as root (configfs writes)"
  if [ ! -d "$NVMET" ]; then
    modprobe "nvmet-$TRTYPE" 2>/dev/null || modprobe nvmet 2>/dev/null || modprobe configfs 2>/dev/null || true
    if [ -d "$CFG" ] && [ ! -d "$NVMET" ]; then mount -t configfs none "$CFG" 2>/dev/null || true; fi
  fi
  if [ ! -d "$NVMET" ]; then
    [ -d "$CFG" ] || die "configfs is not available ($CFG missing, modprobe configfs failed): this kernel \
cannot host the NVMe target. Without it, use scripts/vm/run.sh"
    [ -d /sys/module/nvmet ] && die "configfs is not mounted on $CFG and mounting it failed"
    die "the kernel NVMe target is not available (modprobe nvmet failed: no CONFIG_NVME_TARGET, or no \
modules for $(uname -r)). Without it, use scripts/vm/run.sh"
  fi
  # The transport is a separate module; nvmet would request it when a port is enabled, but a
  # missing one is clearer here.
  if [ ! -d "/sys/module/nvmet_$TRTYPE" ] && ! modprobe "nvmet-$TRTYPE" 2>/dev/null; then
    die "modprobe nvmet-$TRTYPE failed: this kernel lacks CONFIG_NVME_TARGET_${TRTYPE^^}"
  fi
}

# attr VAR FILE: reads one configfs attribute into VAR (no subprocess: forks are slow under emulation).
# shellcheck disable=SC2034
attr() {
  local -n attr_out=$1   # a nameref: assigning it sets the caller's VAR
  attr_out=
  IFS= read -r attr_out <"$2" 2>/dev/null || true
}

adrfam_of() { case $1 in *:*) echo ipv6 ;; *) echo ipv4 ;; esac; }

# The port dir already listening on $TRTYPE ADDR:PORT, if any.
find_port() {
  local p trtype traddr trsvcid
  for p in "$NVMET"/ports/*; do
    [ -d "$p" ] || continue
    attr trtype "$p/addr_trtype"; attr traddr "$p/addr_traddr"; attr trsvcid "$p/addr_trsvcid"
    if [ "$trtype" = "$TRTYPE" ] && [ "$traddr" = "$1" ] && [ "$trsvcid" = "$2" ]; then
      echo "$p"; return 0
    fi
  done
  return 1
}

is_empty_dir() {
  local e=("$1"/*)
  [ ! -e "${e[0]}" ]
}

free_port_id() {
  local id=1
  while [ -e "$NVMET/ports/$id" ]; do id=$((id + 1)); done
  echo "$id"
}

# O_DIRECT support of the filesystem holding FILE (tmpfs has none; nvmet then fails with -22).
supports_odirect() { dd if="$1" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; }

cmd_up() {
  [ -n "$FILE" ] || [ -n "$DEVICE" ] || bad_usage "up needs --file PATH or --device DEV"
  [ -z "$FILE" ] || [ -z "$DEVICE" ] || bad_usage "give either --file or --device, not both"
  [ -z "$CREATE_SIZE" ] || [ -n "$FILE" ] || bad_usage "--create-size goes with --file"
  # NVMe NQN: "nqn.yyyy-mm.reverse-domain[:name]", at most 223 bytes; configfs would take anything.
  if ! [[ $NQN =~ ^nqn\.[0-9]{4}-[0-9]{2}\.[^[:space:]/]+$ ]] || [ "${#NQN}" -gt 223 ]; then
    bad_usage "bad --nqn '$NQN' (want nqn.YYYY-MM.reverse.domain:name, no spaces or '/', at most 223 bytes)"
  fi
  if ! [[ $PORT =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then bad_usage "bad --port '$PORT'"; fi
  if ! [[ $NSID =~ ^[0-9]+$ ]] || [ "$NSID" -lt 1 ]; then bad_usage "bad --nsid '$NSID'"; fi
  if [ -n "$DEVICE" ] && [ "$BUFFERED" != auto ]; then bad_usage "--buffered-io/--direct-io apply to --file only"; fi
  ensure_nvmet
  local backing buffered=0
  if [ -n "$FILE" ]; then
    if [ ! -e "$FILE" ] && [ -n "$CREATE_SIZE" ]; then
      truncate -s "$CREATE_SIZE" "$FILE" || die "cannot create $FILE with size $CREATE_SIZE"
    fi
    [ -f "$FILE" ] || die "$FILE is not a regular file (use --create-size SIZE to create it)"
    [ -s "$FILE" ] || die "$FILE is empty: a namespace needs a size"
    backing=$(readlink -f "$FILE")
    case $BUFFERED in
      on) buffered=1 ;;
      off) buffered=0 ;;
      auto) supports_odirect "$backing" || buffered=1 ;;
    esac
  else
    [ -b "$DEVICE" ] || die "$DEVICE is not a block device"
    backing=$(readlink -f "$DEVICE")
  fi

  local subsys=$NVMET/subsystems/$NQN ns port created_port=0
  if [ -d "$subsys" ]; then
    die "subsystem $NQN already exists (run: $0 down --nqn $NQN)"
  fi
  mkdir "$subsys" || die "cannot create subsystem $NQN (a valid NQN looks like nqn.YYYY-MM.reverse.domain:name)"
  # From here on, undo what was made if a later step fails.
  trap 'echo "nvmet-$TRTYPE-target: rolling back" >&2; NQN_ROLLBACK=1 cmd_down >/dev/null 2>&1 || true' EXIT
  cfg_write 1 "$subsys/attr_allow_any_host"
  if [ "$OFFLOAD" = 1 ]; then
    [ -e "$subsys/attr_offload" ] || die "this kernel's nvmet has no attr_offload (target offload needs a NIC \
and driver that offer it, e.g. ConnectX-5 or later with MLNX_OFED)"
    cfg_write 1 "$subsys/attr_offload"
  fi
  ns=$subsys/namespaces/$NSID
  mkdir "$ns" || die "cannot create namespace $NSID"
  cfg_write "$backing" "$ns/device_path"
  if [ -n "$FILE" ]; then cfg_write "$buffered" "$ns/buffered_io"; fi
  cfg_write 1 "$ns/enable"

  if port=$(find_port "$ADDR" "$PORT"); then
    :
  else
    port=$NVMET/ports/$(free_port_id)
    mkdir "$port" || die "cannot create port $port"
    created_port=1
    cfg_write "$TRTYPE" "$port/addr_trtype"
    cfg_write "$(adrfam_of "$ADDR")" "$port/addr_adrfam"
    cfg_write "$ADDR" "$port/addr_traddr"
    cfg_write "$PORT" "$port/addr_trsvcid"
  fi
  # Linking the first subsystem enables the port, i.e. the kernel starts listening: a busy address
  # fails here.
  if ! ln -s "$subsys" "$port/subsystems/$NQN" 2>/dev/null; then
    [ "$created_port" = 1 ] && rmdir "$port" 2>/dev/null
    die "cannot enable $TRTYPE port $ADDR:$PORT (address in use, or for rdma no RDMA device on it? see dmesg | tail)"
  fi
  trap - EXIT
  echo "nqn=$NQN addr=$ADDR port=$PORT trtype=$TRTYPE nsid=$NSID backing=$backing buffered_io=$buffered"
  local reach=$ADDR
  case $ADDR in 0.0.0.0) reach=127.0.0.1 ;; ::) reach=::1 ;; esac
  echo "connect with: nvme connect -t $TRTYPE -a $reach -s $PORT -n $NQN" >&2
}

cmd_down() {
  ensure_nvmet
  local subsys=$NVMET/subsystems/$NQN p ns h
  if [ ! -d "$subsys" ]; then
    [ -n "${NQN_ROLLBACK:-}" ] || echo "nvmet-$TRTYPE-target: subsystem $NQN is not configured; nothing to do" >&2
    return 0
  fi
  for p in "$NVMET"/ports/*; do
    [ -d "$p" ] || continue
    if [ -L "$p/subsystems/$NQN" ]; then
      rm "$p/subsystems/$NQN" || die "cannot unlink $NQN from port ${p##*/}"
    fi
    # Remove the port when nothing uses it any more (no subsystems, no referrals).
    if is_empty_dir "$p/subsystems" && is_empty_dir "$p/referrals"; then rmdir "$p" 2>/dev/null || true; fi
  done
  for ns in "$subsys"/namespaces/*; do
    [ -d "$ns" ] || continue
    echo 0 >"$ns/enable" 2>/dev/null || true
    rmdir "$ns" || die "cannot remove namespace ${ns##*/} of $NQN"
  done
  for h in "$subsys"/allowed_hosts/*; do
    [ -L "$h" ] && rm "$h"
  done
  rmdir "$subsys" || die "cannot remove subsystem $NQN (still in use?)"
  [ -n "${NQN_ROLLBACK:-}" ] || echo "nvmet-$TRTYPE-target: removed $NQN" >&2
}

cmd_status() {
  ensure_nvmet
  local s ns p found=0 a b c d
  for s in "$NVMET"/subsystems/*; do
    [ -d "$s" ] || continue
    found=1
    attr a "$s/attr_allow_any_host"
    echo "subsystem ${s##*/} allow_any_host=$a"
    for ns in "$s"/namespaces/*; do
      [ -d "$ns" ] || continue
      attr a "$ns/enable"; attr b "$ns/device_path"; attr c "$ns/buffered_io"
      echo "  namespace ${ns##*/} enable=$a device_path=$b buffered_io=${c:--}"
    done
  done
  [ "$found" = 1 ] || echo "no subsystems"
  found=0
  for p in "$NVMET"/ports/*; do
    [ -d "$p" ] || continue
    found=1
    attr a "$p/addr_trtype"; attr b "$p/addr_traddr"; attr c "$p/addr_trsvcid"
    d=("$p"/subsystems/*)
    [ -e "${d[0]}" ] || d=()
    echo "port ${p##*/} $a $b:$c subsystems: ${d[*]##*/}"
  done
  [ "$found" = 1 ] || echo "no ports"
}

[ $# -gt 0 ] || usage 2
CMD=$1; shift
case $CMD in -h|--help|help) usage 0 ;; up|down|status) ;; *) bad_usage "unknown command '$CMD'" ;; esac
while [ $# -gt 0 ]; do
  case $1 in
    --file) FILE=${2:?}; shift 2 ;;
    --device) DEVICE=${2:?}; shift 2 ;;
    --nqn) NQN=${2:?}; shift 2 ;;
    --addr) ADDR=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --nsid) NSID=${2:?}; shift 2 ;;
    --create-size) CREATE_SIZE=${2:?}; shift 2 ;;
    --buffered-io) BUFFERED=on; shift ;;
    --direct-io) BUFFERED=off; shift ;;
    --offload) [ "$TRTYPE" = rdma ] || bad_usage "--offload is for NVMe over RDMA"; OFFLOAD=1; shift ;;
    -h|--help) usage 0 ;;
    *) bad_usage "unknown option '$1'" ;;
  esac
done
[ "$CMD" = up ] || [ -z "$FILE$DEVICE$CREATE_SIZE" ] || bad_usage "$CMD takes no --file/--device/--create-size"
"cmd_$CMD"
