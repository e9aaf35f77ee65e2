#!/bin/bash
# scripts/ci/cluster-check.sh — the cluster on a real etcd, as CI runs it:
#   1. etcd and 3 scalio-servers on loopback with replication factor 2 (scripts/cluster.sh;
#      3 s leases so that a dead server leaves the map quickly);
#   2. scalio-cluster-check: a mixed workload with concurrent readers, every writer's GET
#      checked, every key read back by a fresh client, the whole history checked for
#      linearizability (fails on any mismatch, error or violation);
#   3. scalio-ycsb --cluster: workload A across the servers (values verified by the harness);
#   4. the failure test: a second checked workload (every key written first, then mixed writes
#      and readers for 12 s) during which server s3 is killed with kill -9. Its chains are
#      reconfigured in a new epoch with the surviving replica as tail; no acknowledged write
#      may be lost and the history (GETs during and after the failure) must be linearizable.
#   5. rebuild, add and drain: a third checked workload (every key written first, then mixed
#      writes and readers for 60 s) during which s3's lost replicas are rebuilt on the
#      survivors, a fourth server s4 joins (cluster.sh add: the partitions it takes are copied
#      to it in the background) and s1 is drained (scalio-admin drain --wait) and stopped.
#      Every acknowledged write must read back and the history must be linearizable; the
#      servers' metrics show the keys and bytes copied and the copy time.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
# shellcheck source=scripts/ci/stop-pid.sh
. "$REPO/scripts/ci/stop-pid.sh"
DIR=$REPO/target/cluster-ci
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
cargo build --release -p scalio-server --bin scalio-server --bin scalio-admin \
  -p scalio-bench --bin scalio-cluster-check --bin scalio-ycsb

rm -rf "$DIR"
bash scripts/cluster.sh start --servers 3 --dir "$DIR" --bin "$BIN" --ssd-size 128MiB --replication 2 \
  --server-arg --lease-ttl=3
trap 'bash scripts/cluster.sh stop --dir "$DIR"' EXIT
URL=etcd://127.0.0.1:23790/scalio

"$BIN/scalio-cluster-check" --cluster "$URL" --keys 3000 --ops 20000 --readers 2 --json "$DIR/check.json"
"$BIN/scalio-ycsb" --cluster "$URL" --workload a -p recordcount=5000 -p operationcount=10000 --json "$DIR/ycsb.json"

# scrape PORT: a server's Prometheus text.
scrape() { timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3"; }

# Server s1's Prometheus endpoint shows its epoch and the partition ranges it owns.
metrics=$(scrape 7701)
grep -E '^scalio_(cluster_(epoch|partitions)|chain_forwarded) ' <<<"$metrics"
grep -q '^scalio_cluster_owned_range{role="tail"' <<<"$metrics" || { echo "cluster-check.sh: no owned ranges in s1's metrics" >&2; exit 1; }
# The members reach each other with the peer secret (scripts/cluster.sh): s1's successors'
# connections to it were accepted as members', and none of its member requests was refused.
grep -E '^scalio_peer_(hellos_accepted|requests_refused) ' <<<"$metrics"
grep -qE '^scalio_peer_hellos_accepted [1-9]' <<<"$metrics" || { echo "cluster-check.sh: no member connection was introduced to s1" >&2; exit 1; }
grep -qE '^scalio_peer_requests_refused 0$' <<<"$metrics" || { echo "cluster-check.sh: s1 refused member requests" >&2; exit 1; }

echo "cluster-check.sh: the failure test: kill -9 of server s3 under a checked mixed write load"
"$BIN/scalio-cluster-check" --cluster "$URL" --prefix kill --keys 2000 --load --ops 4000 --seconds 12 \
  --readers 4 --json "$DIR/check-kill.json" &
check=$!
sleep 4
kill -KILL "$(cat "$DIR/s3.pid")"
rm -f "$DIR/s3.pid"
wait "$check"
# The run must have crossed the failure: the map it ended with dropped s3.
python3 - "$DIR/check-kill.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("cluster-check.sh: failure test:", {k: r[k] for k in ("writes_acked", "gets_checked", "reader_gets", "read_back", "mismatches", "errors", "unreachable_retries", "epoch_start", "epoch_end", "history_ops", "linearizable")})
if r["epoch_end"] <= r["epoch_start"]:
    sys.exit("cluster-check.sh: the map did not change during the failure test")
PY
grep -h "cluster map" "$DIR"/s1.log | tail -n 2

echo "cluster-check.sh: rebuild, add and drain under a checked mixed write load"
# wait_settled SECS: until the map has no move left (every copy reported ready).
wait_settled() {
  local end=$((SECONDS + $1)) status
  while [ $SECONDS -lt $end ]; do
    status=$("$BIN/scalio-admin" --cluster "$URL" status)
    if grep -q '^moves 0$' <<<"$status"; then
      grep -E '^(epoch|member)' <<<"$status"
      return 0
    fi
    sleep 0.5
  done
  echo "cluster-check.sh: moves still in progress after $1 s" >&2
  "$BIN/scalio-admin" --cluster "$URL" status >&2
  return 1
}
"$BIN/scalio-cluster-check" --cluster "$URL" --prefix grow --keys 2000 --load --ops 4000 --seconds 60 \
  --readers 4 --json "$DIR/check-grow.json" &
check=$!
start=$SECONDS
wait_settled 60   # s3's replicas rebuilt on the survivors
echo "cluster-check.sh: rebuilt after $((SECONDS - start)) s; adding s4"
bash scripts/cluster.sh add --index 4 --dir "$DIR" --bin "$BIN" --ssd-size 128MiB --replication 2 \
  --server-arg --lease-ttl=3
wait_settled 60
echo "cluster-check.sh: s4 took its partitions after $((SECONDS - start)) s; draining s1"
"$BIN/scalio-admin" --cluster "$URL" drain s1 --wait 60
stop_pid "$(cat "$DIR/s1.pid")"
rm -f "$DIR/s1.pid"
echo "cluster-check.sh: s1 drained and stopped after $((SECONDS - start)) s"
if ! kill -0 "$check" 2>/dev/null; then
  echo "cluster-check.sh: the checked load ended before the moves did (they took $((SECONDS - start)) s)" >&2
  exit 1
fi
wait "$check"
moved() {
  local m
  m=$(scrape "$1")
  for c in move_keys_copied move_bytes_copied move_copy_ms move_partitions_ready move_copies_skipped move_keys_repaired; do
    printf '%s=%s ' "$c" "$(grep -E "^scalio_$c " <<<"$m" | cut -d' ' -f2)"
  done
}
echo "cluster-check.sh: s2 received: $(moved 7702)"
echo "cluster-check.sh: s4 received: $(moved 7704)"
# Writes refused partway down their chains left keys in doubt on the members that applied them
# (README, "Writes the chain did not complete"); once the load is over every doubt is settled.
doubts() {
  local m
  m=$(scrape "$1")
  for c in cluster_doubts cluster_doubts_raised cluster_doubts_settled_from_peer cluster_doubts_kept \
    cluster_doubts_forgotten cluster_doubt_reads_refused; do
    printf '%s=%s ' "$c" "$(grep -E "^scalio_$c " <<<"$m" | cut -d' ' -f2)"
  done
}
# (The scrape is kept before grep -q reads it: grep -q exits at its match, and under pipefail
# the scrape's broken pipe would fail the pipeline.)
settled() { local m; m=$(scrape "$1") && grep -qE '^scalio_cluster_doubts 0$' <<<"$m"; }
for port in 7702 7704; do
  end=$((SECONDS + 10))
  while [ $SECONDS -lt $end ] && ! settled "$port"; do sleep 0.2; done
  echo "cluster-check.sh: doubts on :$port: $(doubts "$port")"
  settled "$port" || { echo "cluster-check.sh: keys still in doubt on :$port" >&2; exit 1; }
done
python3 - "$DIR/check-grow.json" "$(scrape 7704 | grep -E '^scalio_move_keys_copied ' | cut -d' ' -f2)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("cluster-check.sh: rebuild/add/drain test:", {k: r[k] for k in ("writes_acked", "gets_checked", "reader_gets", "read_back", "mismatches", "errors", "wrong_owner_retries", "unreachable_retries", "epoch_start", "epoch_end", "history_ops", "linearizable")})
if r["epoch_end"] <= r["epoch_start"]:
    sys.exit("cluster-check.sh: the map did not change during the rebuild/add/drain test")
if int(sys.argv[2] or 0) == 0:
    sys.exit("cluster-check.sh: s4 received no copied key")
PY
