#!/usr/bin/env python3
"""A stand-in for target/release/scalio-ycsb in tests: parses the harness's command line (the flags
of HARNESS_SPEC.md), and writes a synthetic schema-1 result to --json.

FAKE_FAIL_SSDS=N makes runs with --ssds N fail (exit 3, a message on stderr), as a failed run would.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures.runs import Emulation, Run  # noqa: E402
from synthetic import result_for  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True)
    p.add_argument("--system", default="scalio")
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("-p", action="append", default=[])
    for flag in ("--ssds", "--workers", "--threads", "--outstanding", "--batch", "--assoc", "--cache-buckets",
                 "--ssd-iops", "--ssd-latency-us", "--worker-io-cost-us", "--seed", "--warmup-ops"):
        p.add_argument(flag, type=int)
    p.add_argument("--cache-ratio", type=float)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    props = dict(kv.split("=", 1) for kv in a.p)
    if os.environ.get("FAKE_FAIL_SSDS") == str(a.ssds):
        print(f"Error: run phase: emulated failure with {a.ssds} SSDs", file=sys.stderr)
        return 3
    run = Run(
        system=a.system, workload=a.workload, stage=a.stage if a.system == "scalio" else None,
        emulation=Emulation(a.ssd_iops, a.ssd_latency_us, a.worker_io_cost_us), ssds=a.ssds, workers=a.workers,
        threads=a.threads, outstanding=a.outstanding, batch=a.batch, assoc=a.assoc,
        cache_ratio=None if a.cache_buckets is not None else a.cache_ratio, cache_buckets=a.cache_buckets,
        records=int(props["recordcount"]), operations=int(props["operationcount"]),
        zipf=float(props["zipfianconstant"]), seed=a.seed, warmup_ops=a.warmup_ops or 0,
    )  # fmt: skip
    Path(a.json).write_text(json.dumps(result_for(run)))
    print(f"{run.label} {a.workload}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
