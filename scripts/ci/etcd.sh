#!/bin/bash
# scripts/ci/etcd.sh — an etcd for the cluster's tests, scripts/cluster.sh and benchmarks.
#
# Usage:
#   scripts/ci/etcd.sh install
#       installs Debian's etcd-server package if `etcd` is missing (root, apt-get).
#   scripts/ci/etcd.sh start [--port P] [--dir D]
#       installs if needed, starts a single-member etcd with its client port on 127.0.0.1:P
#       (peer port P+1) and its data in D, waits until it answers, and prints
#       SCALIO_ETCD=127.0.0.1:P.
#   scripts/ci/etcd.sh stop [--port P] [--dir D]
#       stops the etcd started with the same data directory and removes that directory.
#   scripts/ci/etcd.sh run [--port P] [--dir D] -- CMD [ARGS...]
#       start, run CMD with SCALIO_ETCD set, stop (also when CMD fails or on a signal); exits with
#       CMD's status.
#
# Defaults: port 23790 (not etcd's 2379, to stay clear of a system etcd), data directory
# target/etcd-PORT in the repository; the log is DIR.log.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/ci/stop-pid.sh
. "$REPO/scripts/ci/stop-pid.sh"

PORT=23790
DIR=

die() { echo "etcd.sh: $*" >&2; exit 2; }

install() {
  if command -v etcd >/dev/null 2>&1; then
    return 0
  fi
  echo "etcd.sh: installing Debian's etcd-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  # The package's service is not wanted (and there is no init system in CI): we start our own.
  apt-get install -y -qq --no-install-recommends etcd-server >&2 || die "apt-get install etcd-server failed"
  command -v etcd >/dev/null 2>&1 || die "etcd is still missing after installing it"
}

# Whether an etcd answers on 127.0.0.1:$PORT through the v3 gateway.
answers() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && grep -q '\"health\":\"true\"' <&3" 2>/dev/null
}

start() {
  install
  mkdir -p "$(dirname "$DIR")"
  if [ -s "$DIR.pid" ] && kill -0 "$(cat "$DIR.pid")" 2>/dev/null; then
    die "an etcd from $DIR.pid (pid $(cat "$DIR.pid")) is already running"
  fi
  if answers; then
    die "something already answers on 127.0.0.1:$PORT"
  fi
  rm -rf "$DIR"
  local peer=$((PORT + 1))
  # Unsafe no-fsync: the data is thrown away after the run, and CI disks are slow.
  nohup etcd --name scalio-ci --data-dir "$DIR" \
    --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "scalio-ci=http://127.0.0.1:$peer" --unsafe-no-fsync \
    >"$DIR.log" 2>&1 </dev/null &
  echo $! >"$DIR.pid"
  for _ in $(seq 1 100); do
    if answers; then
      echo "SCALIO_ETCD=127.0.0.1:$PORT"
      return 0
    fi
    kill -0 "$(cat "$DIR.pid")" 2>/dev/null || { tail -n 20 "$DIR.log" >&2; die "etcd exited"; }
    sleep 0.1
  done
  stop
  die "etcd did not answer on 127.0.0.1:$PORT within 10 s (log: $DIR.log)"
}

stop() {
  [ -s "$DIR.pid" ] || { echo "etcd.sh: no pidfile $DIR.pid; nothing to stop" >&2; return 0; }
  stop_pid "$(cat "$DIR.pid")"
  rm -f "$DIR.pid"
  rm -rf "$DIR"
}

[ $# -ge 1 ] || die "usage: $0 install | start | stop | run [options] -- CMD"
ACTION=$1
shift
CMD=()
while [ $# -gt 0 ]; do
  case $1 in
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    --) shift; CMD=("$@"); break ;;
    *) die "unknown option '$1'" ;;
  esac
done
case $PORT in ''|*[!0-9]*) die "--port must be a number, not '$PORT'" ;; esac
DIR=${DIR:-$REPO/target/etcd-$PORT}

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
    SCALIO_ETCD="127.0.0.1:$PORT" "${CMD[@]}" || status=$?
    exit "$status"
    ;;
  *) die "unknown action '$ACTION' (install, start, stop, run)" ;;
esac
