#!/bin/bash
# scripts/ci/memcached.sh — a memcached for the memcached baseline's tests and benchmarks.
#
# Usage:
#   scripts/ci/memcached.sh install
#       installs Debian's memcached package if `memcached` is missing (root, apt-get).
#   scripts/ci/memcached.sh start [--port P] [--memory MB] [--threads N] [--pidfile F]
#       installs if needed, starts a daemon on 127.0.0.1:P (UDP off), waits until it answers, and
#       prints SCALIO_MEMCACHED_ADDR=127.0.0.1:P.
#   scripts/ci/memcached.sh stop [--port P] [--pidfile F]
#       stops the daemon started with the same pidfile (or port).
#   scripts/ci/memcached.sh run [--port P] [--memory MB] [--threads N] -- CMD [ARGS...]
#       start, run CMD with SCALIO_MEMCACHED_ADDR set, stop (also when CMD fails or on a signal);
#       exits with CMD's status.
#
# Defaults: port 11311, 256 MB, 2 threads, pidfile target/memcached-PORT.pid in the repository.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/ci/stop-pid.sh
. "$REPO/scripts/ci/stop-pid.sh"

PORT=11311
MEMORY=256
THREADS=2
PIDFILE=

die() { echo "memcached.sh: $*" >&2; exit 2; }

install() {
  if command -v memcached >/dev/null 2>&1; then
    return 0
  fi
  echo "memcached.sh: installing Debian's memcached package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq memcached >&2 || die "apt-get install memcached failed"
  command -v memcached >/dev/null 2>&1 || die "memcached is still missing after installing it"
}

# Whether a memcached answers `version` on 127.0.0.1:$PORT.
answers() {
  local reply
  reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf 'version\r\n' >&3 && head -c 8 <&3" 2>/dev/null) || return 1
  [ "$reply" = "VERSION " ]
}

start() {
  install
  mkdir -p "$(dirname "$PIDFILE")"
  if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    die "a memcached from $PIDFILE (pid $(cat "$PIDFILE")) is already running"
  fi
  if answers; then
    die "something already answers on 127.0.0.1:$PORT"
  fi
  rm -f "$PIDFILE"
  # -u root: memcached refuses to run as root without it (CI runs as root).
  memcached -p "$PORT" -U 0 -l 127.0.0.1 -m "$MEMORY" -t "$THREADS" -u root -d -P "$PIDFILE" \
    || die "memcached did not start"
  for _ in $(seq 1 100); do
    if answers; then
      echo "SCALIO_MEMCACHED_ADDR=127.0.0.1:$PORT"
      return 0
    fi
    sleep 0.1
  done
  stop
  die "memcached did not answer on 127.0.0.1:$PORT within 10 s"
}

stop() {
  [ -s "$PIDFILE" ] || { echo "memcached.sh: no pidfile $PIDFILE; nothing to stop" >&2; return 0; }
  stop_pid "$(cat "$PIDFILE")"
  rm -f "$PIDFILE"
}

[ $# -ge 1 ] || die "usage: $0 install | start | stop | run [options] -- CMD"
ACTION=$1
shift
CMD=()
while [ $# -gt 0 ]; do
  case $1 in
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --memory) MEMORY=${2:?--memory needs a value}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a value}; shift 2 ;;
    --pidfile) PIDFILE=${2:?--pidfile needs a value}; shift 2 ;;
    --) shift; CMD=("$@"); break ;;
    *) die "unknown option '$1'" ;;
  esac
done
case $PORT in ''|*[!0-9]*) die "--port must be a number, not '$PORT'" ;; esac
PIDFILE=${PIDFILE:-$REPO/target/memcached-$PORT.pid}

case $ACTION in
  install) install ;;
  start) start ;;
  stop) stop ;;
  run)
    [ ${#CMD[@]} -gt 0 ] || die "run needs a command after --"
    start >/dev/null
    trap stop EXIT
    trap 'exit 130' INT TERM
    status=0
    SCALIO_MEMCACHED_ADDR="127.0.0.1:$PORT" "${CMD[@]}" || status=$?
    exit "$status"
    ;;
  *) die "unknown action '$ACTION' (install, start, stop, run)" ;;
esac
