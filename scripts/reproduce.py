#!/usr/bin/env python3
"""Reproduce the Scalio paper's figures (5, 11-18) with the scalio-ycsb harness on an emulated testbed.

  scripts/reproduce.py --quick all          # every figure, small dataset, fewer points (< 10 min on 2 cores)
  scripts/reproduce.py fig11 fig12          # full scale (see --help for the expected time)
  scripts/reproduce.py --paper fig15        # the paper's 20M records and 2,244,608 cache slots
  scripts/reproduce.py --dry-run --quick fig14   # print the commands only
  scripts/reproduce.py --plot-only all      # redraw from the JSON already under results/
  scripts/reproduce.py scaling              # the cluster figure: throughput vs 1-4 servers (needs etcd)

Each run's JSON goes to results/<fig>/<parameters>.json (existing ones are kept unless --force);
figures go to results/figures/figN.png and .pdf. The emulated-testbed defaults and why they are
what they are: scripts/figures/settings.py. Matplotlib comes from scripts/.venv, created and
filled by this script on first use.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

from figures import venv  # noqa: E402
from figures.execute import BINARY_RELATIVE, Failure, build, execute  # noqa: E402
from figures.plans import ALL, FIGURES  # noqa: E402
from figures.results import NEEDED_FIELDS, collect, lacking_fields  # noqa: E402
from figures.runs import WORKLOADS, Emulation  # noqa: E402
from figures.settings import (  # noqa: E402
    DEFAULT_EMULATION,
    DEFAULT_IO,
    DEFAULT_THREADS,
    DEFAULT_WORKERS,
    FULL,
    PAPER,
    PAPER_CACHE_RATIO,
    QUICK,
    Settings,
)

# What each figure reads from the JSON (to say what a harness result lacks).
FIELDS_OF = {
    "fig5": ["run.throughput", "run.worker_cores"],
    "fig11": ["run.throughput"],
    "fig12": ["run.ssd_iops"],
    "fig13": ["run.throughput"],
    "fig14": ["run.throughput", "run.latency.ALL.avg_us"],
    "fig15": ["run.throughput", "run.cache_hit_ratio"],
    "fig16": ["run.throughput", "run.cache_hit_ratio"],
    "fig17": ["run.throughput"],
    "fig18": ["run.throughput", "run.cache_hit_ratio"],
}
assert all(f in NEEDED_FIELDS for fs in FIELDS_OF.values() for f in fs)


def parse_args(argv: list[str]) -> argparse.Namespace:
    e = DEFAULT_EMULATION
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"Expected time of `all`: --quick {QUICK.estimate}; full scale {FULL.estimate}; "
        f"--paper {PAPER.estimate}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("figures", nargs="+", choices=[*FIGURES, "all", "scaling"], metavar="FIG",
                   help=f"one or more of {', '.join(FIGURES)}, or all; scaling: the cluster figure "
                        "(1-4 servers on loopback, scripts/figures/scaling.py; not part of all)")  # fmt: skip
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="small dataset and fewer points")
    scale.add_argument("--paper", action="store_true",
                       help="the paper's 20M records and 2,244,608 slots, stores loaded once and reused")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    p.add_argument("--dry-run", action="store_true", help="print the commands; run and draw nothing")
    p.add_argument("--plot-only", action="store_true", help="draw from the JSON there is; run nothing")
    p.add_argument("--build", action="store_true", help="cargo build the harness even if it exists")
    p.add_argument("--bin", type=Path, default=ROOT / BINARY_RELATIVE, help="the scalio-ycsb binary")
    p.add_argument("--results", type=Path, default=ROOT / "results", help="results directory")
    g = p.add_argument_group("emulated testbed (the same for every system; see scripts/figures/settings.py)")
    g.add_argument("--ssd-iops", type=int, default=e.ssd_iops, help="I/Os per second per SSD")
    g.add_argument("--ssd-latency-us", type=int, default=e.ssd_latency_us, help="added latency per SSD I/O")
    g.add_argument("--worker-io-cost-us", type=int, default=e.worker_io_cost_us,
                   help="worker time charged per SSD I/O it issues")  # fmt: skip
    g.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker threads (fig17 sweeps its own)")
    r = p.add_argument_group("runs")
    r.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="driver threads")
    r.add_argument("--io", type=int, default=DEFAULT_IO, help="operations in flight in total (paper: 512)")
    r.add_argument("--cache-ratio", type=float, default=PAPER_CACHE_RATIO, help="cache slots / records")
    r.add_argument("--records", type=int, help=f"recordcount (default {QUICK.records} quick, {FULL.records} full)")
    r.add_argument("--operations", type=int,
                   help=f"operationcount (default {QUICK.operations} quick, {FULL.operations} full)")  # fmt: skip
    r.add_argument("--workloads", help="only these workloads, e.g. a,c")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--warmup-ops", type=int, help="operations before measuring (default: the scale's)")
    r.add_argument("--store-dir", type=Path,
                   help="keep loaded stores here and reuse them (default with --paper: RESULTS/stores)")  # fmt: skip
    r.add_argument("--store-budget-gb", type=float, default=16.0,
                   help="delete the least recently used stores past this many GB on disk")  # fmt: skip
    r.add_argument("--timeout", type=float, help="seconds per run (default: the scale's)")
    p.add_argument("--no-venv", action="store_true", help="use this interpreter (needs matplotlib)")
    args = p.parse_args(argv)
    if args.workloads:
        wanted = tuple(w.strip().lower().removeprefix("workload") for w in args.workloads.split(","))
        unknown = [w for w in wanted if w not in WORKLOADS]
        if unknown:
            p.error(f"unknown workload(s) {', '.join(unknown)} (of {', '.join(WORKLOADS)}; E is not run)")
        args.workloads = wanted
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    store_dir = args.store_dir
    scale = PAPER if args.paper else QUICK if args.quick else FULL
    if store_dir is None and scale.reuse_stores:
        store_dir = args.results / "stores"
    return Settings(
        scale=scale,
        emulation=Emulation(args.ssd_iops, args.ssd_latency_us, args.worker_io_cost_us),
        workers=args.workers,
        threads=args.threads,
        io=args.io,
        cache_ratio=args.cache_ratio,
        seed=args.seed,
        warmup_ops=args.warmup_ops,
        store_dir=None if store_dir is None else str(store_dir.resolve()),
        records=args.records,
        operations=args.operations,
        workload_filter=args.workloads,
    )


def expand(figures: list[str]) -> list[str]:
    chosen: list[str] = []
    for f in figures:
        for g in ALL if f == "all" else (f,):
            if g not in chosen:
                chosen.append(g)
    return chosen


def log(msg: str) -> None:
    print(msg, flush=True)


def run_scaling(args: argparse.Namespace) -> int:
    """The cluster figure: its own runs (a cluster per point) and drawing."""
    from figures import scaling

    bin_dir = args.bin.parent
    if not args.plot_only and not args.dry_run:
        if args.build or not (bin_dir / "scalio-server").exists():
            import subprocess

            subprocess.run(["cargo", "build", "--release", "-p", "scalio-server", "--bin", "scalio-server",
                            "-p", "scalio-bench", "--bin", "scalio-ycsb"], cwd=ROOT, check=True)  # fmt: skip
        scaling.run_all(ROOT, bin_dir, args.results, args.records or 20_000, args.operations or 20_000,
                        args.force, log)  # fmt: skip
    if args.dry_run:
        log("scaling: scripts/cluster.sh run --servers N -- scalio-ycsb --cluster ... for N in 1..4")
        return 0
    paths = scaling.draw(args.results, args.results / "figures")
    log(f"scaling: drew {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    needs_drawing = not args.dry_run
    if needs_drawing and not args.no_venv and not venv.inside():
        venv.reexec_inside(Path(__file__).resolve(), argv, log)
    if "scaling" in args.figures:
        status = run_scaling(args)
        args.figures = [f for f in args.figures if f != "scaling"]
        if not args.figures:
            return status
    s = settings_of(args)
    figures = expand(args.figures)
    e = s.emulation
    log(
        f"scale {s.scale.name} ({s.record_count:,} records, {s.operation_count:,} operations; "
        f"`all` takes {s.scale.estimate}); emulation: SSD {e.ssd_iops} IOPS + {e.ssd_latency_us} us, "
        f"worker {e.worker_io_cost_us} us per SSD I/O, {s.workers} workers; {s.threads} threads, io {s.io}"
    )
    binary = args.bin
    running = not args.plot_only
    if running and (args.build or not binary.exists()):
        build(ROOT, log, dry_run=args.dry_run)
    started = time.monotonic()
    failures: list[Failure] = []
    draw_errors: list[str] = []
    drawn: list[Path] = []
    timeout = args.timeout or s.scale.timeout_s
    attempted: set[Path] = set()  # result files run (or tried) in this invocation: --force runs each once
    for key in figures:
        fig = FIGURES[key]
        runs = fig.plan(s)
        out_dir = args.results / fig.results_dir
        if running:
            t0 = time.monotonic()
            outcome = execute(runs, out_dir, binary, results_root=args.results, timeout_s=timeout,
                              force=args.force, dry_run=args.dry_run, log=log, tag=key, attempted=attempted,
                              store_budget_bytes=args.store_budget_gb * 2**30)  # fmt: skip
            failures += outcome.failures
            if args.dry_run:
                log(f"# {key}: {len(runs)} runs, {outcome.skipped} have results, {outcome.reused} reused from other figures")
                for cmd in outcome.would_run:
                    log(shlex.join(cmd))
                continue
            log(f"{key}: {len(runs)} runs: {outcome.ran} ran, {len(outcome.failures)} failed, "
                f"{outcome.skipped} had results, {outcome.reused} reused ({time.monotonic() - t0:.0f} s)")  # fmt: skip
        if args.dry_run:
            continue
        points = collect(runs, out_dir)
        lacking = lacking_fields(points, FIELDS_OF[key])
        if lacking:
            log(f"{key}: the results lack {', '.join(lacking)} (null or absent in every JSON)")
        try:
            from figures.draw import DRAW

            caption = [s.scale.reductions[key]] if key in s.scale.reductions else []
            paths = DRAW[key](points, args.results / "figures", caption)
            drawn += paths
            log(f"{key}: drew {', '.join(str(p) for p in paths)}")
        except Exception as exc:  # keep drawing the other figures; reported below
            draw_errors.append(f"{key}: {type(exc).__name__}: {exc}")
            log(f"{key}: drawing failed: {type(exc).__name__}: {exc}")
    if args.dry_run:
        return 0
    log(f"done in {time.monotonic() - started:.0f} s; {len(drawn) // 2} figures drawn")
    if failures:
        log(f"\n{len(failures)} runs failed (their points are marked missing):")
        for f in failures:
            log(f.report())
    for d in draw_errors:
        log(f"drawing failed: {d}")
    return 1 if failures or draw_errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # e.g. `--dry-run | head`
        sys.exit(0)
