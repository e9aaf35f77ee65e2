#!/bin/bash
# scripts/vm/run.sh — run a command inside a throw-away QEMU guest (software emulation, TCG) that has
# real Linux NVMe-oF (nvmet, nvmet-tcp, nvme-tcp) and sees this machine's files.
#
# Usage: scripts/vm/run.sh [options] [--] <command> [args...]
#
# The guest boots Debian's generic kernel (fetched by scripts/vm/setup.sh, which must have run once),
# mounts this machine's root over 9p read-only (cached: do not change files the guest uses while it
# runs), puts a tmpfs overlay on top (the guest may write anywhere; nothing reaches the host), and runs
# <command> chrooted there, in the current directory, with the host's PATH, stdin /dev/null. Host-built
# binaries thus run unchanged in the guest. Guest /tmp and /run are fresh tmpfs: files in the host's
# /tmp are not visible (except the top directory the command runs in, if that is under /tmp, such as
# a clone of the repository in /tmp); use --share to exchange files. /lib/modules holds the guest kernel's modules, so `modprobe` works in the guest.
# Loaded at boot: crc32 and crc32c (before nvmet/rdma users: modprobe does not pull them in),
# virtio_net, configfs (mounted on /sys/kernel/config), nvmet, nvmet-tcp, nvme-tcp.
# The guest has eth0 = 10.0.2.15/24 (QEMU user networking) and lo. run.sh's exit status is the
# command's; the guest console (command output plus kernel warnings) is printed as it comes.
#
# Options:
#   --timeout SECS   power the guest off after SECS seconds (default 300); exit status 124 then
#   --fwd H:G        forward host 127.0.0.1:H to guest port G (TCP; repeatable), e.g. --fwd 14420:4420
#   --host-access    let the guest connect to ports on the host's 127.0.0.1 through 10.0.2.2:PORT
#                    (QEMU user networking without `restrict`; the guest then also has outbound NAT)
#   --share DIR      host directory mounted read-write in the guest at /run/vm-share ($SCALIO_VM_SHARE);
#                    the way to hand files to and from the guest. Default: a temporary dir, removed after.
#                    run.sh creates DIR/.guest-ready when the command starts in the guest, and the guest
#                    writes DIR/.exit-status when it ends.
#   --cwd DIR        directory the command starts in (default: the current directory)
#   --smp N          vCPUs (default 2)
#   --mem MB         guest RAM in MiB (default 2048)
#   --cpu MODEL      QEMU CPU model (default max)
#   --modules "M..." extra kernel modules to load at boot (e.g. "null_blk loop")
#   --log FILE       where the full console log goes (default: <vm dir>/last-console.log, written
#                    when the run ends)
#   --pcap FILE      record the guest NIC's traffic (everything through --fwd/--host-access, not the
#                    guest's loopback) as a pcap file, for tshark
#   --quiet          do not echo the console (it is still in --log; printed anyway on failure)
#   --dir DIR        the cache directory setup.sh used (default: $SCALIO_VM_DIR, else <repo>/target/vm)
#
# Exit status: the command's; 124 on timeout; 125 when the guest did not run the command (boot failure,
# bad options, setup.sh not run). SIGTERM/SIGINT to run.sh kill the guest.
# Inside the guest: SCALIO_VM=1, SCALIO_VM_SHARE=/run/vm-share, TMPDIR=/tmp.
#
# Examples:
#   scripts/vm/run.sh -- nvme version
#   scripts/vm/run.sh --fwd 14420:4420 --share /tmp/s -- sh -c 'scripts/nvmet-tcp-target.sh up ...; sleep 60'
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_DIR=${SCALIO_VM_DIR:-$REPO/target/vm}
TIMEOUT=300
FWDS=()
HOST_ACCESS=0
SHARE=
CWD=$PWD
SMP=2
MEM=2048
CPU=max
EXTRA_MODULES=
LOG=
PCAP=
QUIET=0

usage_exit() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "[vm] error: $*" >&2; exit 125; }

while [ $# -gt 0 ]; do
  case $1 in
    --timeout) TIMEOUT=$2; shift 2 ;;
    --fwd) FWDS+=("$2"); shift 2 ;;
    --host-access) HOST_ACCESS=1; shift ;;
    --share) SHARE=$2; shift 2 ;;
    --cwd) CWD=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --cpu) CPU=$2; shift 2 ;;
    --modules) EXTRA_MODULES=$2; shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    --pcap) PCAP=$2; shift 2 ;;
    --quiet) QUIET=1; shift ;;
    --dir) VM_DIR=$2; shift 2 ;;
    -h|--help) usage_exit 0 ;;
    --) shift; break ;;
    -*) echo "[vm] unknown option '$1'" >&2; usage_exit 125 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "[vm] no command given" >&2; usage_exit 125; }
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants seconds, got '$TIMEOUT'"
for f in "${FWDS[@]}"; do [[ $f =~ ^[0-9]+:[0-9]+$ ]] || die "--fwd wants HOSTPORT:GUESTPORT, got '$f'"; done

# --- the kernel setup.sh prepared -------------------------------------------------------------------
[ -s "$VM_DIR/kernel/current" ] || die "no guest kernel in $VM_DIR: run scripts/vm/setup.sh first"
KVER=$(cat "$VM_DIR/kernel/current")
KDIR=$VM_DIR/kernel/$KVER
[ -f "$KDIR/.complete" ] || die "kernel $KVER in $KDIR is incomplete: run scripts/vm/setup.sh again"
KDIR=$(cd "$KDIR" && pwd -P)   # the guest finds the modules at this path inside the 9p root
# setup.sh extracts the uncompressed ELF kernel: QEMU boots it through its PVH entry point, which skips
# the firmware and the in-guest decompression of the bzImage (about 3.5 s of emulated time).
KERNEL=$KDIR/boot/vmlinuz-$KVER
[ -f "$KDIR/boot/vmlinux-$KVER" ] && [ "${SCALIO_VM_BZIMAGE:-0}" != 1 ] && KERNEL=$KDIR/boot/vmlinux-$KVER
for tool in qemu-system-x86_64 busybox cpio depmod; do
  command -v "$tool" >/dev/null || die "$tool missing: run scripts/vm/setup.sh"
done

BOOT_MODULES="crc32_generic crc32-pclmul crc32c_generic crc32c-intel virtio_net configfs nvmet nvmet-tcp nvme-tcp"

# --- initramfs: busybox, /init and the few modules needed to mount the 9p root ----------------------
# Everything else is loaded from the 9p root, which carries the extracted kernel tree. Cached by content.
INIT_SCRIPT=$(cat <<'INIT'
#!/bin/sh
PATH=/bin; export PATH
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
# What udev would add: /dev/fd (bash process substitution needs it), stdio links, ptys.
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
mkdir -p /dev/pts && mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
say() { echo "[vm-init] $*"; }
fail() { say "FATAL: $*"; echo 125 >/mnt/share/.exit-status 2>/dev/null; sync; poweroff -f; sleep 10; }
for m in virtio_pci 9pnet_virtio 9p; do modprobe "$m" || fail "modprobe $m"; done
mkdir -p /mnt/lower /mnt/share /mnt/rw /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share /mnt/share || fail "mount 9p share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostroot /mnt/lower || fail "mount 9p hostroot"
. /mnt/share/.vm.conf
mount -o bind "/mnt/lower$KDIR/lib/modules" /lib/modules || fail "bind modules from $KDIR"
for m in $MODULES; do modprobe "$m" 2>/dev/null || say "warning: modprobe $m failed"; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 || say "warning: eth0 setup failed"
[ -d /sys/kernel/config ] && mount -t configfs configfs /sys/kernel/config
# Writable root: tmpfs upper over the read-only host root.
mount -t tmpfs -o mode=755 rw /mnt/rw && mkdir /mnt/rw/upper /mnt/rw/work
modprobe overlay
if ! mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /host; then
  say "warning: overlay over 9p failed, the root is read-only"; mount -o bind /mnt/lower /host
fi
for d in proc sys dev; do mount -o rbind "/$d" "/host/$d" || fail "bind /$d"; done
# A fresh /tmp, except the directory the command runs in when that is under the host's /tmp
# (e.g. a clone in /tmp): it stays visible through the overlay.
if [ -n "$KEEP_TMP" ]; then mkdir -p /mnt/keep && mount -o bind "/host/tmp/$KEEP_TMP" /mnt/keep; fi
mount -t tmpfs -o mode=1777 tmp /host/tmp; mount -t tmpfs -o mode=755 run /host/run
if [ -n "$KEEP_TMP" ]; then mkdir -p "/host/tmp/$KEEP_TMP" && mount -o bind /mnt/keep "/host/tmp/$KEEP_TMP"; fi
[ -d /host/dev/shm ] && mount -t tmpfs -o mode=1777 shm /host/dev/shm
mkdir -p /host/run/vm-share && mount -o bind /mnt/share /host/run/vm-share
mkdir -p /host/lib/modules 2>/dev/null && mount -o bind /lib/modules /host/lib/modules
touch /mnt/share/.guest-ready
chroot /host /usr/bin/env -i PATH="$GUEST_PATH" HOME=/root TERM=dumb TMPDIR=/tmp LANG=C.UTF-8 \
  SCALIO_VM=1 SCALIO_VM_SHARE=/run/vm-share /bin/bash /run/vm-share/.cmd.sh </dev/null
rc=$?
echo "$rc" >/mnt/share/.exit-status
say "command exited with status $rc"
sync; poweroff -f; sleep 10
INIT
)
INITRD_KEY=$(printf '%s\n%s\n%s\n' "$KVER" "$INIT_SCRIPT" "$(busybox 2>&1 | head -1)" | sha256sum | cut -c1-16)
INITRD=$VM_DIR/initrd-$INITRD_KEY.cpio.gz
build_initrd() {
  local root mod rel
  root=$(mktemp -d "$VM_DIR/initrd-root.XXXXXX")
  mkdir -p "$root"/{bin,proc,sys,dev,tmp,mnt,lib/modules/"$KVER"}
  cp "$(command -v busybox)" "$root/bin/busybox"
  for a in sh mount umount mkdir modprobe insmod ip chroot poweroff sleep cat echo touch sync; do
    ln -s busybox "$root/bin/$a"
  done
  for mod in virtio_pci 9pnet_virtio 9p; do
    modprobe -d "$KDIR" -S "$KVER" --show-depends "$mod" | awk '$1=="insmod" {print $2}'
  done | sort -u | while read -r mod; do
    rel=${mod#"$KDIR"/lib/modules/"$KVER"/}; rel=${rel#./}
    rel=${rel#lib/modules/"$KVER"/}
    mkdir -p "$root/lib/modules/$KVER/$(dirname "$rel")"
    cp "$mod" "$root/lib/modules/$KVER/$rel"
  done
  cp "$KDIR/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$KVER/"
  depmod -b "$root" "$KVER"
  printf '%s\n' "$INIT_SCRIPT" >"$root/init"
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$root"
}
if [ ! -f "$INITRD" ]; then
  exec 8>"$VM_DIR/.initrd.lock"; flock 8
  [ -f "$INITRD" ] || build_initrd
  exec 8>&-
fi

# --- per-run share dir: configuration and command in, status out ------------------------------------
mkdir -p "$VM_DIR/runs"
TEMP_SHARE=0
if [ -z "$SHARE" ]; then SHARE=$(mktemp -d "$VM_DIR/runs/share.XXXXXX"); TEMP_SHARE=1; fi
mkdir -p "$SHARE"
SHARE=$(cd "$SHARE" && pwd -P)
rm -f "$SHARE/.exit-status" "$SHARE/.guest-ready"
# Without --log, each run writes its own file (runs may overlap) and leaves it as last-console.log.
LOG_KEPT=${LOG:-$VM_DIR/last-console.log}
: "${LOG:=$VM_DIR/runs/console.$$.log}"
mkdir -p "$(dirname "$LOG")"; : >"$LOG"
QEMU_ERR=$LOG.qemu-stderr

shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # single-quote for the guest's busybox sh
{
  echo "KDIR=$(shq "$KDIR")"
  echo "MODULES=$(shq "$BOOT_MODULES $EXTRA_MODULES")"
  echo "GUEST_PATH=$(shq "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH")"
  keep=
  cwd_phys=$(cd "$CWD" 2>/dev/null && pwd -P) || cwd_phys=
  case $cwd_phys in /tmp/?*) keep=${cwd_phys#/tmp/}; keep=${keep%%/*} ;; esac
  echo "KEEP_TMP=$(shq "$keep")"
} >"$SHARE/.vm.conf"
{
  echo "cd -- $(printf '%q' "$CWD") || exit 125"
  printf '%q ' "$@"; echo
} >"$SHARE/.cmd.sh"

NETDEV="user,id=n0,restrict=$([ "$HOST_ACCESS" = 1 ] && echo off || echo on)"
for f in "${FWDS[@]}"; do NETDEV+=",hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"; done

PCAP_ARGS=()
if [ -n "$PCAP" ]; then
  mkdir -p "$(dirname "$PCAP")"; rm -f "$PCAP"
  PCAP_ARGS=(-object "filter-dump,id=dump0,netdev=n0,file=$PCAP")
fi

QPID=
TAILPID=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null
  [ -n "$TAILPID" ] && kill "$TAILPID" 2>/dev/null
  [ "$TEMP_SHARE" = 1 ] && rm -rf "$SHARE"
  if [ "$LOG" != "$LOG_KEPT" ]; then mv -f "$LOG" "$LOG_KEPT"; mv -f "$QEMU_ERR" "$LOG_KEPT.qemu-stderr"; fi
  return 0
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# `timeout` kills qemu when the guest hangs; killing the timeout process (by its pid) stops qemu too.
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -monitor none \
  -accel tcg,thread=multi -cpu "$CPU" -smp "$SMP" -m "$MEM" -no-reboot \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
  -chardev file,id=con,path="$LOG" -serial chardev:con \
  -netdev "$NETDEV" -device virtio-net-pci,netdev=n0,romfile= "${PCAP_ARGS[@]}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$SHARE",mount_tag=share,security_model=none \
  </dev/null >"$QEMU_ERR" 2>&1 &
QPID=$!
if [ "$QUIET" = 0 ]; then
  tail -n +1 -s 0.2 -f --pid="$QPID" "$LOG" | sed -u 's/\r$//; /reboot: Power down$/d; s/\x1b\[[0-9;?]*[a-zA-Z]//g' &
  TAILPID=$!
fi
set +e
wait "$QPID"; qrc=$?
QPID=
[ -n "$TAILPID" ] && wait "$TAILPID" 2>/dev/null
TAILPID=
set -e

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "[vm] guest timed out after ${TIMEOUT}s (console log: $LOG_KEPT)" >&2
  exit 124
fi
if [ ! -s "$SHARE/.exit-status" ]; then
  echo "[vm] guest did not report an exit status (qemu exit $qrc; console log: $LOG_KEPT)" >&2
  [ "$QUIET" = 1 ] && tail -n 40 "$LOG" >&2
  grep -v -e 'TCG doesn.t support requested feature' "$QEMU_ERR" >&2 || true
  exit 125
fi
rc=$(cat "$SHARE/.exit-status")
[ "$QUIET" = 1 ] && [ "$rc" != 0 ] && tail -n 40 "$LOG" >&2
exit "$rc"
