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
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
DIR=$REPO/target/cluster-ci
BIN=$REPO/target/release
cargo build --release -p scalio-server --bin scalio-server -p scalio-bench --bin scalio-cluster-check --bin scalio-ycsb

rm -rf "$DIR"
bash scripts/cluster.sh start --servers 3 --dir "$DIR" --bin "$BIN" --ssd-size 128MiB --replication 2 \
  --server-arg --lease-ttl=3
trap 'bash scripts/cluster.sh stop --dir "$DIR"' EXIT
URL=etcd://127.0.0.1:23790/scalio

"$BIN/scalio-cluster-check" --cluster "$URL" --keys 3000 --ops 20000 --readers 2 --json "$DIR/check.json"
"$BIN/scalio-ycsb" --cluster "$URL" --workload a -p recordcount=5000 -p operationcount=10000 --json "$DIR/ycsb.json"

# Server s1's Prometheus endpoint shows its epoch and the partition ranges it owns.
metrics=$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/7701 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3')
grep -E '^scalio_(cluster_(epoch|partitions)|chain_forwarded) ' <<<"$metrics"
grep -q '^scalio_cluster_owned_range{role="tail"' <<<"$metrics" || { echo "cluster-check.sh: no owned ranges in s1's metrics" >&2; exit 1; }

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
