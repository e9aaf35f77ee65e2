"""Synthetic `scalio-ycsb` results that follow HARNESS_SPEC.md (schema 1) exactly.

The numbers come from a toy model, only so that drawn test figures have some shape; they are not
predictions of the harness.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures.runs import Run  # noqa: E402

PROPORTIONS = {  # read, update, insert, read-modify-write
    "a": (0.5, 0.5, 0.0, 0.0),
    "b": (0.95, 0.05, 0.0, 0.0),
    "c": (1.0, 0.0, 0.0, 0.0),
    "d": (0.95, 0.0, 0.05, 0.0),
    "f": (0.5, 0.0, 0.0, 0.5),
}


def _latency(avg: float) -> dict:
    return {"count": 1, "avg_us": avg, "p50_us": avg * 0.9, "p99_us": avg * 3, "p999_us": avg * 5, "max_us": avg * 9}


def toy_throughput_and_hit(run: Run) -> tuple[float, float | None]:
    e = run.emulation
    ssd_cap = run.ssds * max(e.ssd_iops, 1)
    worker_cap = min(run.workers, run.ssds) * 1e6 / max(e.worker_io_cost_us, 1)
    slots = run.cache_buckets * run.assoc if run.cache_buckets is not None else run.records * run.cache_ratio
    hit = None
    if run.system == "leed" or (run.system == "scalio" and run.stage in (0, 1)):
        io_per_op = 2.0
        thr = min(ssd_cap, worker_cap) / io_per_op if run.stage != 1 else ssd_cap / io_per_op
    else:
        hit = max(0.0, min(0.95, 0.35 + 0.3 * math.log10(1 + 10 * slots / run.records) * run.zipf))
        hit = hit if run.system == "scalio" else hit * 0.8
        miss_cost = 2.0 * (1 - hit)
        cap = ssd_cap if run.system == "scalio" else min(ssd_cap, worker_cap)
        thr = cap / max(miss_cost, 0.05)
    return min(thr, 60000.0) * min(1.0, run.io / 128), hit


def result_for(run: Run) -> dict:
    """A schema-1 result for `run`."""
    thr, hit = toy_throughput_and_hit(run)
    read, update, insert, rmw = PROPORTIONS[run.workload]
    seconds = run.operations / thr
    e = run.emulation
    cores = min(run.workers, thr * 2 * e.worker_io_cost_us / 1e6) if run.system == "leed" else 0.3
    counters = {"rpc_get": run.operations} if run.system == "leed" else {"rpc_meta_get": run.operations // 3}
    return {
        "schema": 1,
        "system": run.system,
        "stage": run.stage,
        "label": run.label,
        "emulated": bool(e.ssd_iops or e.ssd_latency_us or e.worker_io_cost_us),
        "emulation": {"ssd_iops": e.ssd_iops, "ssd_latency_us": e.ssd_latency_us, "worker_io_cost_us": e.worker_io_cost_us},
        "workload": {
            "name": f"workload{run.workload}", "recordcount": run.records, "operationcount": run.operations,
            "readproportion": read, "updateproportion": update, "insertproportion": insert,
            "readmodifywriteproportion": rmw,
            "requestdistribution": "latest" if run.workload == "d" else "zipfian",
            "zipfianconstant": run.zipf, "fieldcount": 1, "fieldlength": 64,
        },  # fmt: skip
        "config": {
            "threads": run.threads, "outstanding": run.outstanding, "server": "embedded", "ssds": run.ssds,
            "workers": run.workers, "assoc": run.assoc,
            "cache_buckets": run.cache_buckets or math.ceil(run.records * run.cache_ratio / run.assoc),
            "cache_slots": (run.cache_buckets or math.ceil(run.records * run.cache_ratio / run.assoc)) * run.assoc,
            "cache_ratio": run.cache_ratio if run.cache_ratio is not None else run.cache_buckets * run.assoc / run.records,
            "batch": run.batch, "block_path": "local", "seed": run.seed,
        },  # fmt: skip
        "load": {"records": run.records, "seconds": 1.5, "throughput": run.records / 1.5},
        "run": {
            "seconds": seconds,
            "operations": run.operations,
            "errors": 0,
            "throughput": thr,
            "latency": {"READ": _latency(run.io / thr * 1e6), "ALL": _latency(run.io / thr * 1e6)},
            "cache_hit_ratio": hit,
            "rpcs_per_op": 1.0 if hit is None else 1 - hit,
            "ssd_reads_per_op": {"worker": 2.0, "client": 0.0} if run.system == "leed" else {"worker": 0.0, "client": 0.8},
            "ssd_writes_per_op": update + insert + rmw,
            "ssd_iops": thr * 1.6,
            "cpu_us_per_op": {"worker": 5.0, "worker_virtual": 50.0, "nic": 3.0, "target": 0.0},
            "worker_cores": cores,
            "server_counters": counters,
            "client_counters": {"gets": int(run.operations * read)},
        },
    }


def write_results(runs: list[Run], out_dir: Path, skip=lambda run: False) -> list[Path]:
    """Writes one result file per run (named as reproduce.py names them), except those `skip`s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in runs:
        if skip(run):
            continue
        path = out_dir / f"{run.name()}.json"
        path.write_text(json.dumps(result_for(run), indent=1))
        paths.append(path)
    return paths
