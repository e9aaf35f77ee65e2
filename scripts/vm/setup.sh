#!/bin/bash
# scripts/vm/setup.sh — prepare this machine to run a QEMU (TCG) guest with real Linux NVMe-oF.
#
# Usage: scripts/vm/setup.sh [--dir DIR] [--no-tshark] [--no-kernel] [--rdma]
#
#   --dir DIR     cache directory for the guest kernel (default: $SCALIO_VM_DIR, else <repo>/target/vm)
#   --no-tshark   do not install tshark (only the interop packet-capture check needs it)
#   --no-kernel   install packages only, do not fetch the guest kernel
#   --rdma        also what real verbs need: rdma-core's libraries and Soft-RoCE provider
#                 (libibverbs1, librdmacm1, ibverbs-providers), their tools (ibverbs-utils,
#                 rdmacm-utils, perftest: ibv_devices, rping, ib_read_lat) and what building
#                 the `rdma` feature needs (cmake, libclang-dev, clang: sideway's bindgen step).
#                 The guest runs this machine's files, so these serve both host and guest.
#
# What it does (idempotent; a second run only checks and takes well under a second):
#   1. apt-get installs, without recommends, whatever is missing of: qemu-system-x86, busybox-static,
#      kmod, cpio, nvme-cli, xz-utils, tshark.
#   2. Resolves Debian's generic kernel (`apt-cache depends linux-image-amd64` -> linux-image-<ABI>-amd64;
#      the ABI changes with security updates, so it is never hard-coded), downloads that .deb,
#      extracts it into DIR/kernel/<kver>/ and runs depmod there (the .deb ships no modules.dep).
#      DIR/kernel/current then names the kernel scripts/vm/run.sh boots.
#      The generic flavour has nvmet, nvmet-tcp, nvme-tcp, 9p and virtio-net as modules; the cloud
#      flavour lacks 9p, so it is not used. It also unpacks the bzImage's xz payload into
#      boot/vmlinux-<kver>, an ELF that QEMU boots directly through its PVH entry (3.5 s faster under TCG).
# Needs root for apt-get (only when something is missing). Non-interactive (DEBIAN_FRONTEND=noninteractive).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_DIR=${SCALIO_VM_DIR:-$REPO/target/vm}
WANT_TSHARK=1
WANT_KERNEL=1
WANT_RDMA=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) VM_DIR=$2; shift 2 ;;
    --no-tshark) WANT_TSHARK=0; shift ;;
    --no-kernel) WANT_KERNEL=0; shift ;;
    --rdma) WANT_RDMA=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[vm-setup] $*" >&2; }
die() { echo "[vm-setup] error: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

# --- 1. packages ---------------------------------------------------------------------------------
PKGS=(qemu-system-x86 busybox-static kmod cpio nvme-cli xz-utils)
[ "$WANT_TSHARK" = 1 ] && PKGS+=(tshark)
[ "$WANT_RDMA" = 1 ] && PKGS+=(libibverbs1 librdmacm1 ibverbs-providers ibverbs-utils rdmacm-utils perftest iproute2
  cmake libclang-dev clang)
missing=()
for p in "${PKGS[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then missing+=("$p"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root: run as root or apt-get install them"
  apt_update_once
  log "apt-get install ${missing[*]}"
  # wireshark-common asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >/dev/null ||
    die "apt-get install ${missing[*]} failed"
fi

[ "$WANT_KERNEL" = 1 ] || exit 0

# --- 2. guest kernel -----------------------------------------------------------------------------
mkdir -p "$VM_DIR/kernel"
exec 9>"$VM_DIR/kernel/.lock"
flock 9   # two setups at once (parallel CI jobs) must not extract into the same dir

resolve_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}'
}
# The bzImage carries the kernel as an xz stream after the real-mode setup and decompressor stub.
# Unpack it into an ELF vmlinux; without one, run.sh falls back to the (slower to boot) bzImage.
extract_vmlinux() {
  local bz=$1 out=$2 off
  off=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$bz" | head -1 | cut -d: -f1)
  rm -f "$out.tmp"
  # xz complains about the bytes after its stream (the bzImage's trailer): the ELF check decides.
  if [ -n "$off" ]; then tail -c +"$((off + 1))" "$bz" | xz -dc >"$out.tmp" 2>/dev/null || true; fi
  if [ "$(head -c 4 "$out.tmp" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; then
    mv "$out.tmp" "$out"
  else
    rm -f "$out.tmp"; log "warning: could not unpack an ELF vmlinux from $bz; the guest boots the bzImage"
  fi
}

KPKG=$(resolve_kernel_pkg)
if [ -z "$KPKG" ]; then
  apt_update_once
  KPKG=$(resolve_kernel_pkg)
fi
if [ -z "$KPKG" ]; then
  if [ -s "$VM_DIR/kernel/current" ] && [ -f "$VM_DIR/kernel/$(cat "$VM_DIR/kernel/current")/.complete" ]; then
    log "cannot resolve linux-image-amd64 (apt lists?); keeping cached kernel $(cat "$VM_DIR/kernel/current")"
    exit 0
  fi
  die "cannot resolve the kernel package behind linux-image-amd64 (apt-cache depends gave nothing)"
fi
KVER=${KPKG#linux-image-}
KDIR=$VM_DIR/kernel/$KVER

if [ ! -f "$KDIR/.complete" ]; then
  log "fetching $KPKG"
  rm -rf "$KDIR" "$VM_DIR/kernel/dl"
  mkdir -p "$VM_DIR/kernel/dl"
  # apt-get download writes into the current directory; as root it warns about the _apt sandbox.
  (cd "$VM_DIR/kernel/dl" && apt-get download -q "$KPKG" >/dev/null 2>&1) || {
    apt_update_once
    (cd "$VM_DIR/kernel/dl" && apt-get download -q "$KPKG" >/dev/null 2>&1)
  } || die "apt-get download $KPKG failed"
  log "extracting $KPKG"
  dpkg-deb -x "$VM_DIR/kernel/dl/${KPKG}"_*.deb "$KDIR"
  rm -rf "$VM_DIR/kernel/dl"
  [ -f "$KDIR/boot/vmlinuz-$KVER" ] || die "$KPKG has no boot/vmlinuz-$KVER"
  [ -d "$KDIR/lib/modules/$KVER" ] || die "$KPKG has no lib/modules/$KVER"
  depmod -b "$KDIR" "$KVER"
  touch "$KDIR/.complete"
fi
[ -f "$KDIR/boot/vmlinux-$KVER" ] || extract_vmlinux "$KDIR/boot/vmlinuz-$KVER" "$KDIR/boot/vmlinux-$KVER"
echo "$KVER" >"$VM_DIR/kernel/current"
log "guest kernel $KVER ready in $KDIR"
