"""Which runs each figure needs (section 7.2 of the artifact notes), at a given scale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .runs import Run
from .settings import PAPER_ASSOC, Settings

# Legend order of the systems in figs 11/12 and the sensitivity figures.
FIG11_SYSTEMS = ("scalio", "ditto", "leed")
PAIR_SYSTEMS = ("scalio", "ditto")
FIG15_WORKLOADS = ("a", "b", "c", "f")  # the paper runs no D at varying skew


def plan_fig5(s: Settings) -> list[Run]:
    """LEED, YCSB-C, uniform keys (zipfianconstant 0, as the artifact), #SSD swept."""
    if not s.workloads(("c",)):
        return []
    return [s.run("leed", "c", ssds=n, zipf=0.0) for n in s.scale.ssd_counts]


def plan_fig11(s: Settings) -> list[Run]:
    """Scalio stage 3, LEED+Ditto and LEED; A B C D F (the paper scale: A C); #SSD swept."""
    return [
        s.run(system, w, ssds=n)
        for w in s.workloads(s.scale.main_workloads)
        for system in FIG11_SYSTEMS
        for n in s.scale.ssd_counts
    ]


def plan_fig13(s: Settings) -> list[Run]:
    """Scalio stages 0-3 (baseline, +offloaded read, +inline cache, +batched write), 7 SSDs."""
    return [s.run("scalio", w, stage=stage) for w in s.workloads(s.scale.main_workloads) for stage in (0, 1, 2, 3)]


def fig14_batch(io: int) -> int:
    """The artifact's batch size for Scalio with batching: min(io / 16, 8)."""
    return max(1, min(io // 16, 8))


def plan_fig14(s: Settings) -> list[Run]:
    """Latency vs throughput over total outstanding operations; 7 SSDs."""
    runs = []
    for w in s.throughput_workloads():
        for io in s.scale.io_points:
            runs.append(s.run("scalio", w, stage=3, io=io, batch=fig14_batch(io)))
            runs.append(s.run("scalio", w, stage=2, io=io, batch=1))
            runs.append(s.run("ditto", w, io=io))
    return runs


def plan_fig15(s: Settings) -> list[Run]:
    """Zipf skew; Scalio vs LEED+Ditto. Each θ is a fresh server (the artifact warms one server)."""
    wanted = tuple(w for w in s.scale.sensitivity_workloads if w in FIG15_WORKLOADS)
    return [s.run(system, w, zipf=t) for w in s.workloads(wanted) for t in s.scale.thetas for system in PAIR_SYSTEMS]


def fixed_cache_buckets(records: int, ratio: float, assoc: int = PAPER_ASSOC) -> int:
    """Buckets giving `ratio` cache slots per record at `assoc` slots per bucket."""
    return max(1, math.ceil(records * ratio / assoc))


def plan_fig16(s: Settings) -> list[Run]:
    """Dataset size x1..x4 with the cache size fixed at the x1 size, so the hit ratio falls."""
    buckets = s.cache_buckets_at_x1()
    return [
        s.run(system, w, records=s.record_count * m, cache_buckets=buckets)
        for w in s.workloads(s.scale.sensitivity_workloads)
        for m in s.scale.dataset_multipliers
        for system in PAIR_SYSTEMS
    ]


def workers_of_paper_cores(cores: int) -> int:
    """The artifact's MAX_SSD_WORKERS = n_cores / 2 (the rest are RPC threads)."""
    return max(1, cores // 2)


def plan_fig17(s: Settings) -> list[Run]:
    """DPU cores 4/8/16 = 2/4/8 workers, io = 64 x cores; Scalio vs LEED+Ditto."""
    return [
        s.run(system, w, workers=workers_of_paper_cores(c), io=64 * c)
        for w in s.throughput_workloads()
        for c in s.scale.paper_cores
        for system in PAIR_SYSTEMS
    ]


def plan_fig18(s: Settings) -> list[Run]:
    """Slots per bucket; the bucket count stays that of 8 slots, so capacity scales with assoc."""
    buckets = s.cache_buckets_at_x1()
    return [
        s.run("scalio", w, assoc=a, cache_buckets=buckets)
        for w in s.workloads(s.scale.sensitivity_workloads)
        for a in s.scale.slots
    ]


@dataclass(frozen=True)
class Figure:
    key: str  # fig11
    title: str
    results_dir: str  # under results/: the runs' JSON
    plan: Callable[[Settings], list[Run]]


FIGURES: dict[str, Figure] = {
    f.key: f
    for f in (
        Figure("fig5", "LEED throughput and CPU for SSD I/O vs #SSD (YCSB-C, uniform)", "fig5", plan_fig5),
        Figure("fig11", "Throughput vs #SSD", "fig11", plan_fig11),
        Figure("fig12", "Measured SSD IOPS vs #SSD (the runs of Fig. 11)", "fig11", plan_fig11),
        Figure("fig13", "Breakdown: Scalio stages, 7 SSDs", "fig13", plan_fig13),
        Figure("fig14", "Average latency vs throughput, 7 SSDs", "fig14", plan_fig14),
        Figure("fig15", "Throughput and hit ratio vs Zipf skew", "fig15", plan_fig15),
        Figure("fig16", "Throughput and hit ratio vs dataset size (cache size fixed)", "fig16", plan_fig16),
        Figure("fig17", "Throughput vs DPU cores", "fig17", plan_fig17),
        Figure("fig18", "Throughput and hit ratio vs slots per bucket (bucket count fixed)", "fig18", plan_fig18),
    )
}

# `all` runs the figures in this order: those about the cache first (at the paper scale they are
# its point, and a run cut short should have them), fig11 before fig12 (which draws from its runs).
ALL = ("fig15", "fig18", "fig16", "fig11", "fig12", "fig5", "fig13", "fig14", "fig17")
