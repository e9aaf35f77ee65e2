# scripts/ci/stop-pid.sh — sourced by the scripts that run daemons (etcd.sh, memcached.sh,
# cluster.sh): one way to stop a process they started.

# stop_pid PID: SIGTERM, up to 5 s for it to exit, then SIGKILL. Quiet if it is already gone.
stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}
