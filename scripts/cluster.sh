#!/bin/bash
# scripts/cluster.sh — a scalio cluster on loopback: an etcd and N scalio-servers that join it.
#
# Usage:
#   scripts/cluster.sh run [options] -- CMD [ARGS...]
#       starts etcd and the servers, waits until the cluster map names all N, runs CMD with
#       SCALIO_CLUSTER=etcd://127.0.0.1:PORT/PREFIX set, then stops everything (also when CMD
#       fails or on a signal); exits with CMD's status.
#   scripts/cluster.sh start [options]
#       the same without a command: leaves the cluster running and prints SCALIO_CLUSTER=...
#   scripts/cluster.sh add --index I [options]
#       starts one more server, sI, joining the running cluster (its partitions are copied to
#       it in the background); waits until the cluster map names it.
#   scripts/cluster.sh stop [--dir D]
#       stops the servers and the etcd started with the same directory.
#
# A server is removed without loss by draining it first:
#   target/release/scalio-admin --cluster etcd://127.0.0.1:23790/scalio drain sI --wait 120
#   kill "$(cat D/sI.pid)"
#
# Options:
#   --servers N        servers (default 3)
#   --dir D            state directory: SSD files, logs, pidfiles (default target/cluster)
#   --etcd-port P      etcd client port (default 23790; peer port P+1)
#   --port B           server i (1..N) listens on B+i for the fabric, B+100+i for NVMe/TCP and
#                      B+200+i for its Prometheus metrics (default 7500)
#   --ssd-size S       size of each server's SSD file (default 256MiB)
#   --replication R    servers per replica chain, 1 to 3 (default: scalio-server's, 2)
#   --bin DIR          where scalio-server is (default target/release; built if missing)
#   --server-arg ARG   one more scalio-server argument, for every server (repeatable)
#
# The servers prove to each other that a connection is a member's with a peer secret,
# D/peer-secret (made on first start, 32 random hex characters, readable by its owner only): only
# such connections may send forwarded writes, copy reads and scans (README, "Threat model").
#
# Servers log to D/sI.log; `kill -9 $(cat D/sI.pid)` kills one (its lease then expires and the
# others recompute the map without it).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/ci/stop-pid.sh
. "$REPO/scripts/ci/stop-pid.sh"

SERVERS=3
DIR=$REPO/target/cluster
ETCD_PORT=23790
PORT=7500
SSD_SIZE=256MiB
BIN=$REPO/target/release
SERVER_ARGS=()
PREFIX=/scalio
INDEX=

die() { echo "cluster.sh: $*" >&2; exit 2; }

etcd_sh() { bash "$REPO/scripts/ci/etcd.sh" "$1" --port "$ETCD_PORT" --dir "$DIR/etcd"; }

# Prints how many servers the cluster map in etcd names (0 if there is no map yet).
map_members() {
  python3 - "$ETCD_PORT" "$PREFIX/map" <<'PY'
import base64, json, sys, urllib.request
port, key = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/range",
    data=json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode())
try:
    kvs = json.load(urllib.request.urlopen(req, timeout=2)).get("kvs", [])
    print(len(json.loads(base64.b64decode(kvs[0]["value"]))["nodes"]) if kvs else 0)
except Exception:
    print(0)
PY
}

# The cluster's peer secret, made once per state directory.
peer_secret() {
  if [ ! -s "$DIR/peer-secret" ]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/peer-secret")
  fi
  echo "$DIR/peer-secret"
}

# Starts server I (1-based) in the background.
start_server() {
  local i=$1 url="etcd://127.0.0.1:$ETCD_PORT$PREFIX" secret
  secret=$(peer_secret)
  "$BIN/scalio-server" --peer-secret-file "$secret" --listen "127.0.0.1:$((PORT + i))" --target "127.0.0.1:$((PORT + 100 + i))" \
    --ssd-dir "$DIR/s$i" --ssd-size "$SSD_SIZE" --cluster "$url" --node-id "s$i" --initial-members "$SERVERS" \
    --metrics "127.0.0.1:$((PORT + 200 + i))" "${SERVER_ARGS[@]}" \
    >"$DIR/s$i.out" 2>"$DIR/s$i.log" </dev/null &
  echo $! >"$DIR/s$i.pid"
}

# Starts server INDEX in a running cluster and waits until the map names it.
add() {
  case $INDEX in ''|*[!0-9]*|0) die "add needs --index I (a positive number)" ;; esac
  [ -e "$DIR/s$INDEX.pid" ] && die "server s$INDEX is already running"
  local before
  before=$(map_members)
  start_server "$INDEX"
  for _ in $(seq 1 300); do
    if [ "$(map_members)" -gt "$before" ]; then
      echo "cluster.sh: s$INDEX joined"
      return 0
    fi
    kill -0 "$(cat "$DIR/s$INDEX.pid")" 2>/dev/null || { tail -n 20 "$DIR/s$INDEX.log" >&2; die "server s$INDEX exited"; }
    sleep 0.1
  done
  die "the cluster map did not name s$INDEX within 30 s (log: $DIR/s$INDEX.log)"
}

start() {
  case $SERVERS in ''|*[!0-9]*|0) die "--servers must be a positive number" ;; esac
  if [ ! -x "$BIN/scalio-server" ]; then
    (cd "$REPO" && cargo build --release -p scalio-server --bin scalio-server) >&2
  fi
  mkdir -p "$DIR"
  etcd_sh start >/dev/null
  local url="etcd://127.0.0.1:$ETCD_PORT$PREFIX"
  for i in $(seq 1 "$SERVERS"); do
    start_server "$i"
  done
  for _ in $(seq 1 300); do
    if [ "$(map_members)" = "$SERVERS" ]; then
      echo "SCALIO_CLUSTER=$url"
      return 0
    fi
    for i in $(seq 1 "$SERVERS"); do
      kill -0 "$(cat "$DIR/s$i.pid")" 2>/dev/null || { tail -n 20 "$DIR/s$i.log" >&2; stop; die "server s$i exited"; }
    done
    sleep 0.1
  done
  stop
  die "the cluster map did not name all $SERVERS servers within 30 s (logs: $DIR/s*.log)"
}

stop() {
  local f
  for f in "$DIR"/s*.pid; do
    [ -e "$f" ] || continue
    stop_pid "$(cat "$f")"
    rm -f "$f"
  done
  etcd_sh stop
}

[ $# -ge 1 ] || die "usage: $0 start | add --index I | stop | run [options] -- CMD"
ACTION=$1
shift
CMD=()
while [ $# -gt 0 ]; do
  case $1 in
    --servers) SERVERS=${2:?}; shift 2 ;;
    --index) INDEX=${2:?}; shift 2 ;;
    --dir) DIR=${2:?}; shift 2 ;;
    --etcd-port) ETCD_PORT=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --ssd-size) SSD_SIZE=${2:?}; shift 2 ;;
    --replication) SERVER_ARGS+=(--replication "${2:?}"); shift 2 ;;
    --bin) BIN=${2:?}; shift 2 ;;
    --server-arg) SERVER_ARGS+=("${2:?}"); shift 2 ;;
    --) shift; CMD=("$@"); break ;;
    *) die "unknown option '$1'" ;;
  esac
done

case $ACTION in
  start) start ;;
  add) add ;;
  stop) stop ;;
  run)
    [ ${#CMD[@]} -gt 0 ] || die "run needs a command after --"
    start >/dev/null
    trap stop EXIT
    trap 'exit 130' INT TERM
    status=0
    SCALIO_CLUSTER="etcd://127.0.0.1:$ETCD_PORT$PREFIX" "${CMD[@]}" || status=$?
    exit "$status"
    ;;
  *) die "unknown action '$ACTION' (start, add, stop, run)" ;;
esac
