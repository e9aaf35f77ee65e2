"""The figures, in the paper's layout. Each `draw_figN(points, out_dir)` writes figN.png and figN.pdf.

Every figure carries a footnote read from its results' JSON (emulation knobs, workers, records)
and marks planned runs without a result with a red x at the bottom of the axis.
"""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from . import ideal as ideal_model  # noqa: E402
from . import results as R  # noqa: E402
from .plans import FIGURES, fig14_batch, workers_of_paper_cores  # noqa: E402
from .results import Point  # noqa: E402
from .runs import Run  # noqa: E402

SYSTEM_STYLE = {  # label -> (legend, color, marker)
    "scalio-stage3": ("Scalio", "tab:red", "o"),
    "ditto": ("LEED+Ditto", "tab:blue", "s"),
    "leed": ("LEED", "tab:gray", "^"),
}
STAGE_STYLE = {
    0: ("Baseline", "tab:gray"),
    1: ("+ Offloaded read", "tab:orange"),
    2: ("+ Inline cache", "tab:green"),
    3: ("+ Batched write", "tab:red"),
}
MISSING_COLOR = "crimson"
HIT_NOTE = "Hit ratio = GETs served by the cache / GETs (the artifact's formula counts all operations)."


def _workload_title(w: str, i: int) -> str:
    return f"({chr(ord('a') + i)}) YCSB-{w.upper()}"


def _workloads(points: Sequence[Point]) -> list[str]:
    seen: list[str] = []
    for p in points:
        if p.run.workload not in seen:
            seen.append(p.run.workload)
    return seen


def _kilo(v: float | None) -> float | None:
    return None if v is None else v / 1000.0


def _mark_missing(ax, x: float, color: str = MISSING_COLOR) -> None:
    """A red x at data-x `x`, at the bottom of the axes (works on log axes too)."""
    t = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot([x], [0.03], marker="x", color=color, markersize=9, markeredgewidth=2.2, transform=t, clip_on=False, zorder=5)


def _subplots(n: int, width: float = 3.3, height: float = 2.7):
    """A row of `n` panels, `height` inches tall (_finish adds room for title, legend and footnote)."""
    fig, axes = plt.subplots(1, max(n, 1), figsize=(max(width * n, 6.0), height), squeeze=False)
    return fig, list(axes[0])


def _handles(axes, points: Sequence[Point]) -> list:
    """Legend entries of all panels (twins included), each label once, then the missing-run mark."""
    seen: dict[str, object] = {}
    for ax in axes:
        for a in [ax, *getattr(ax, "_scalio_twins", [])]:
            for h, label in zip(*a.get_legend_handles_labels()):
                if not label.startswith("_"):
                    seen.setdefault(label, h)
    handles = list(seen.values())
    if R.missing(points):
        handles.append(Line2D([], [], color=MISSING_COLOR, marker="x", linestyle="", markeredgewidth=2, label="missing run"))
    return handles


def _finish(fig, key: str, points: Sequence[Point], out_dir: Path, handles: list, notes: Sequence[str] = ()) -> list[Path]:
    """Title, legend, footnote (testbed from the JSON, missing runs); saves PNG and PDF."""
    spec = FIGURES[key]
    emulated = any(p.result is not None and p.result.get("emulated") for p in points)
    number = key.removeprefix("fig")
    width_in = fig.get_figwidth()
    title = textwrap.fill(f"Figure {number}: {spec.title}" + (" — emulated testbed" if emulated else ""), int(width_in * 10))
    title += "\n" + textwrap.fill(R.scale_note(points), int(width_in * 12))
    lost = R.missing(points)
    foot = [R.testbed_note(points), *notes]
    if lost:
        foot.append(f"Red x: {len(lost)} of {len(points)} planned runs have no result (failed or not run).")
    text = "\n".join(textwrap.fill(line, int(width_in * 14)) for line in foot)
    # Grow the figure (the panels keep their height) by the room of title, legend and footnote.
    title_h = 0.2 * (title.count("\n") + 1) + 0.1
    ncol = _legend_columns([h.get_label() for h in handles], width_in)
    legend_h = 0.3 * math.ceil(len(handles) / ncol) if handles else 0.0
    foot_h = 0.13 * (text.count("\n") + 1) + 0.1
    h = fig.get_figheight() + title_h + legend_h + foot_h
    fig.set_figheight(h)
    fig.suptitle(title, y=1 - 0.05 / h, va="top", fontsize=11)
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - title_h / h),
                   ncol=ncol, fontsize=8, frameon=False)  # fmt: skip
    fig.text(0.01, 0.05 / h, text, fontsize=7.5, va="bottom", ha="left", color="#333333")
    # (tight_layout makes room for the suptitle itself.)
    fig.tight_layout(rect=(0, foot_h / h, 1, 1 - legend_h / h))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{key}.png", out_dir / f"{key}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def _legend_columns(labels: Sequence[str], width_in: float) -> int:
    """Legend columns (at most 6) for entries to fit the figure's width: a one-panel figure's
    legend wraps into rows instead of running off its sides."""
    if not labels:
        return 1
    # At fontsize 8: about 0.055 in per character, 0.45 in for the marker and the gaps.
    needed = sum(0.055 * len(label) + 0.45 for label in labels)
    rows = max(1, math.ceil(needed / (0.95 * width_in)), math.ceil(len(labels) / 6))
    return math.ceil(len(labels) / rows)


def _twin(ax):
    """ax.twinx(), remembered so that its legend entries are collected."""
    t = ax.twinx()
    ax._scalio_twins = [*getattr(ax, "_scalio_twins", []), t]
    return t


def _lines_vs(ax, points: Sequence[Point], x_of: Callable[[Run], float], metric, scale: Callable, labels) -> None:
    """One line per system label; missing points leave a gap and a red x."""
    for label in labels:
        chosen = [p for p in points if p.run.label == label]
        if not chosen:
            continue
        name, color, marker = SYSTEM_STYLE[label]
        pts = sorted(((x_of(p.run), scale(p.value(metric))) for p in chosen), key=lambda xy: xy[0])
        xs = [x for x, _ in pts]
        ys = [float("nan") if y is None else y for _, y in pts]
        ax.plot(xs, ys, marker=marker, color=color, label=name)
        for x, y in pts:
            if y is None:
                _mark_missing(ax, x, color)


def _bar_xs(centres: list[float], n: int, i: int, width: float = 0.8) -> list[float]:
    """The x of series i's bar in each group of `n` bars."""
    w = width / max(n, 1)
    return [c - width / 2 + w * (i + 0.5) for c in centres]


def _bars(ax, groups: list, series: list[tuple[str, str, list[float | None]]], width: float = 0.8,
          alpha: float = 1.0) -> list[float]:  # fmt: skip
    """Grouped bars: `series` = (legend, color, one value per group); returns the group centres."""
    n = max(len(series), 1)
    centres = list(range(len(groups)))
    for i, (name, color, values) in enumerate(series):
        xs = _bar_xs(centres, n, i, width)
        ax.bar(xs, [0 if v is None else v for v in values], width / n, color=color, label=name, edgecolor="black",
               linewidth=0.4, alpha=alpha)  # fmt: skip
        for x, v in zip(xs, values):
            if v is None:
                _mark_missing(ax, x, color)
    ax.set_xticks(centres)
    ax.set_xticklabels([str(g) for g in groups])
    return centres


HIT_AXIS_LABEL = "cache hit ratio (◆ measured, ★ ideal)"


def _hit_markers(ax2, centres: list[float], series: list[tuple[str, str, list[float | None]]],
                 ideal: list[tuple[float, float] | None] | None = None) -> None:  # fmt: skip
    """Each system's measured hit ratio as a large black-edged diamond on its own bar, and the ideal
    cache's (a perfect cache of the same slots: scripts/figures/ideal.py) as a black star with its
    error bound, centred on the group. The bars are translucent so that the markers stand out."""
    n = max(len(series), 1)
    for i, (name, color, values) in enumerate(series):
        xs = _bar_xs(centres, n, i)
        ys = [float("nan") if v is None else v for v in values]
        ax2.plot(xs, ys, linestyle="none", marker="D", markersize=8, color=color, markeredgecolor="black",
                 markeredgewidth=1.3, label=f"{name} hit ratio", zorder=6)  # fmt: skip
    if ideal and any(v is not None for v in ideal):
        xs = [c for c, v in zip(centres, ideal) if v is not None]
        ys = [v[0] for v in ideal if v is not None]
        errs = [v[1] for v in ideal if v is not None]
        ax2.errorbar(xs, ys, yerr=errs, linestyle="none", marker="*", markersize=13, color="black",
                     markerfacecolor="gold", markeredgecolor="black", capsize=3, zorder=7,
                     label="ideal hit ratio (perfect cache)")  # fmt: skip
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel(HIT_AXIS_LABEL)


def _value_at(points: Sequence[Point], metric, **match) -> float | None:
    chosen = R.select(points, **match)
    return chosen[0].value(metric) if chosen else None


# ---------------------------------------------------------------------------------------------
def draw_fig5(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    fig, (ax,) = _subplots(1, width=5.2, height=3.4)
    ssds = sorted({p.run.ssds for p in points})
    thr = [_kilo(_value_at(points, R.throughput, ssds=n)) for n in ssds]
    cores = [_value_at(points, R.worker_cores, ssds=n) for n in ssds]
    centres = _bars(ax, ssds, [("LEED throughput", "tab:gray", thr)], width=0.6)
    ax.set_xlabel("# SSDs")
    ax.set_ylabel("throughput (Kops/s)")
    ax2 = _twin(ax)
    ax2.plot(centres, [float("nan") if c is None else c for c in cores], color="tab:red", marker="o",
             label="CPU usage for SSD I/O")  # fmt: skip
    workers = R.values_of([p.result for p in points if p.result], "config", "workers")
    top = max([w for w in workers if isinstance(w, (int, float))] + [c for c in cores if c is not None] + [1])
    ax2.set_ylim(0, top * 1.15)
    ax2.set_ylabel("CPU usage for SSD I/O (cores)")
    note = "CPU usage = (worker CPU time + emulated worker time) / run time (JSON run.worker_cores)."
    return _finish(fig, "fig5", points, out_dir, _handles([ax], points), [note, *caption])


def _per_ssd_figure(key: str, points: Sequence[Point], out_dir: Path, metric, ylabel: str, notes=()) -> list[Path]:
    workloads = _workloads(points)
    fig, axes = _subplots(len(workloads))
    for i, (ax, w) in enumerate(zip(axes, workloads)):
        mine = R.select(points, workload=w)
        _lines_vs(ax, mine, lambda r: r.ssds, metric, _kilo, SYSTEM_STYLE.keys())
        ax.set_title(_workload_title(w, i), fontsize=10)
        ax.set_xlabel("# SSDs")
        ax.set_xticks(sorted({p.run.ssds for p in mine}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    return _finish(fig, key, points, out_dir, _handles(axes, points), notes)


def draw_fig11(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    return _per_ssd_figure("fig11", points, out_dir, R.throughput, "throughput (Kops/s)", caption)


def draw_fig12(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    note = "SSD IOPS measured: all SSD reads and writes during the run / run time (JSON run.ssd_iops), not the artifact's estimate."
    return _per_ssd_figure("fig12", points, out_dir, R.ssd_iops, "SSD IOPS (K)", [note, *caption])


def _log_minor_label(v: float, _pos=None) -> str:
    """Labels 2x and 5x a power of ten only, so that minor ticks of a short log axis do not crowd."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v))
    return f"{v:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 5)) else ""


def draw_fig13(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    fig, (ax,) = _subplots(1, width=7.5, height=3.6)
    workloads = _workloads(points)
    stages = sorted({p.run.stage for p in points})
    series = [
        (STAGE_STYLE[s][0], STAGE_STYLE[s][1], [_kilo(_value_at(points, R.throughput, workload=w, stage=s)) for w in workloads])
        for s in stages
    ]
    _bars(ax, [f"YCSB-{w.upper()}" for w in workloads], series)
    positive = [v for _, _, values in series for v in values if v]
    ax.set_yscale("log")
    # Bars start from 0, which a log axis cannot show: start the axis below the smallest bar.
    ax.set_ylim(*((min(positive) / 3, max(positive) * 2) if positive else (0.1, 10)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(_log_minor_label))
    ax.set_ylabel("throughput (Kops/s, log)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ssds = R.values_of([p.result for p in points if p.result], "config", "ssds")
    notes = [f"Scalio with {'/'.join(map(str, ssds)) or '?'} SSDs.", *caption]
    return _finish(fig, "fig13", points, out_dir, _handles([ax], points), notes)


def draw_fig14(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    workloads = _workloads(points)
    fig, axes = _subplots(len(workloads), height=3.1)
    variants = [  # (legend, color, marker, match)
        ("Scalio w/ batching", "tab:red", "o", dict(system="scalio", stage=3)),
        ("Scalio w/o batching", "tab:orange", "v", dict(system="scalio", stage=2)),
        ("LEED+Ditto", "tab:blue", "s", dict(system="ditto")),
    ]
    lost_notes = []
    latencies = [v for p in points if (v := p.value(R.avg_latency_us)) is not None]
    in_ms = bool(latencies) and max(latencies) >= 10_000
    unit, per_unit = ("ms", 1000.0) if in_ms else ("µs", 1.0)
    for i, (ax, w) in enumerate(zip(axes, workloads)):
        for name, color, marker, match in variants:
            mine = sorted(R.select(points, workload=w, **match), key=lambda p: p.run.io)
            if not mine:
                continue
            xs, ys = [], []
            for p in mine:
                thr, lat = _kilo(p.value(R.throughput)), p.value(R.avg_latency_us)
                if thr is None or lat is None:
                    lost_notes.append(f"YCSB-{w.upper()} {name} io={p.run.io}")
                    continue
                lat /= per_unit
                xs.append(thr)
                ys.append(lat)
                ax.annotate(str(p.run.io), (thr, lat), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            ax.plot(xs, ys, marker=marker, color=color, label=name)
        ax.set_title(_workload_title(w, i), fontsize=10)
        ax.set_xlabel("throughput (Kops/s)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"average latency ({unit})")
    batches = ", ".join(f"io {io}: {fig14_batch(io)}" for io in sorted({p.run.io for p in points}))
    notes = [f"Point labels: operations in flight in total (io). Batch with batching = min(io/16, 8) ({batches}); without = 1."]
    if lost_notes:
        notes.append("Missing points: " + "; ".join(lost_notes) + ".")
    return _finish(fig, "fig14", points, out_dir, _handles(axes, points), [*notes, *caption])


def _slots_of(p: Point) -> int | None:
    """The cache slots of a run: from its JSON, else as the harness computes them."""
    if p.result is not None and isinstance(slots := R.dig(p.result, "config", "cache_slots"), int):
        return slots
    r = p.run
    if r.cache_buckets is not None:
        return r.cache_buckets * r.assoc
    return max(1, math.ceil(r.records * r.cache_ratio / r.assoc)) * r.assoc


def _ideal_of(points: Sequence[Point]) -> tuple[float, float] | None:
    """(hit ratio, error bound) of a perfect cache for the group's runs, or None where the model
    does not apply (workload D draws keys by `latest`, not the scrambled zipfian)."""
    with_slots = [(p, _slots_of(p)) for p in points if p.run.label.startswith("scalio")] or [
        (p, _slots_of(p)) for p in points
    ]
    if not with_slots or points[0].run.workload not in IDEAL_WORKLOADS:
        return None
    p, slots = with_slots[0]
    if slots is None:
        return None
    est = _ideal_cached(p.run.records, p.run.zipf, slots)
    return est.hit_ratio, est.error_bound


# Workloads without inserts whose keys come from the scrambled zipfian (see ideal.py).
IDEAL_WORKLOADS = ("a", "b", "c", "f")


@functools.lru_cache(maxsize=None)
def _ideal_cached(records: int, theta: float, slots: int) -> ideal_model.Ideal:
    # Hash 100 ranks per record (at least 10^6, at most the model's default 10^7): seconds per
    # point, with an error bound shown as the star's bar.
    head = min(ideal_model.DEFAULT_HEAD, max(1_000_000, 100 * records))
    return ideal_model.ideal_hit_ratio(records, theta, slots, head=head)


def _pair_with_hits(key, points, out_dir, group_of: Callable[[Run], object], group_label, xlabel, systems, notes, hits=True):
    workloads = _workloads(points)
    fig, axes = _subplots(len(workloads), width=3.8, height=3.3)
    bounds: list[float] = []
    for i, (ax, w) in enumerate(zip(axes, workloads)):
        mine = R.select(points, workload=w)
        groups = sorted({group_of(p.run) for p in mine})
        bars, hit = [], []
        for label in systems:
            name, color, _ = SYSTEM_STYLE[label]
            of_label = [p for p in mine if p.run.label == label]
            if not of_label:
                continue
            by_group = {group_of(p.run): p for p in of_label}
            bars.append((name, color, [_kilo(by_group[g].value(R.throughput)) if g in by_group else None for g in groups]))
            hit.append((name, color, [by_group[g].value(R.hit_ratio) if g in by_group else None for g in groups]))
        centres = _bars(ax, [group_label(g) for g in groups], bars, alpha=0.5 if hits else 1.0)
        ax.set_title(_workload_title(w, i), fontsize=10)
        ax.set_xlabel(xlabel)
        if hits:
            ideal = [_ideal_of([p for p in mine if group_of(p.run) == g]) for g in groups]
            bounds += [b for v in ideal if v is not None for b in (v[1],)]
            _hit_markers(_twin(ax), centres, hit, ideal)
    axes[0].set_ylabel("throughput (Kops/s, bars)" if hits else "throughput (Kops/s)")
    if hits and (filled := _evictions_note(points, group_of, group_label)):
        notes = [*notes, filled]
    if hits and (warmed := _warmup_note(points, group_of, group_label)):
        notes = [*notes, warmed]
    if hits:
        worst = f" (error bound ≤ {max(bounds):.3f}, the star's bar)" if bounds else ""
        notes = [*notes, "Ideal: the hit ratio of a perfect cache of the same slots holding the most likely keys of "
                 f"YCSB's scrambled zipfian (scripts/figures/ideal.py){worst}; none for YCSB-D (latest)."]  # fmt: skip
    return _finish(fig, key, points, out_dir, _handles(axes, points), notes)


def _evictions_note(points: Sequence[Point], group_of: Callable[[Run], object], group_label) -> str | None:
    """Scalio's cache evictions in each measured run (server counter table_evictions): few or
    none mean the cache had not filled, so its hit ratio was bound by the warm-up, not its size."""
    found = []
    for p in points:
        n = R.dig(p.result, "run", "server_counters", "table_evictions") if p.result else None
        if p.run.label == "scalio-stage3" and isinstance(n, int):
            found.append((p.run.workload, group_of(p.run), n))
    if not found:
        return None
    parts = [f"{w.upper()} {' '.join(str(group_label(g)).split())}: {n:,}" for w, g, n in sorted(found, key=lambda t: (t[0], t[1]))]
    text = "Scalio cache evictions in the measured run: " + "; ".join(parts) + "."
    if any(n < 1000 for _, _, n in found):
        text += " Few or none: that cache had not filled, so its hit ratio is bound by the warm-up, not by its size."
    return text


def _warmup_note(points: Sequence[Point], group_of: Callable[[Run], object], group_label) -> str | None:
    """How long each run with a cache warmed up and whether its hit ratio settled (scalio-ycsb
    stops a warm-up when two consecutive windows' hit ratios differ by less than its epsilon)."""
    found = []
    for p in points:
        w = R.dig(p.result, "warmup") if p.result else None
        if not isinstance(w, dict) or w.get("settled") is None or not w.get("operations"):
            continue
        name = SYSTEM_STYLE[p.run.label][0] if p.run.label in SYSTEM_STYLE else p.run.label
        where = " ".join(str(group_label(group_of(p.run))).split())
        # Settled on two whole windows: scalio-ycsb before that rule (2026-12-03) also counted
        # a shorter last window, the rest of the cap, whose smaller rise is no sign of settling.
        last_two = (w.get("windows") or [])[-2:]
        whole = len(last_two) == 2 and all(x.get("operations") == w.get("window") for x in last_two)
        state = "settled" if w["settled"] and whole else "NOT settled"
        found.append((p.run.workload, group_of(p.run), where, name, f"{w['operations'] / 1e6:.1f}M {state}"))
    if not found:
        return None
    parts = [f"{w.upper()} {g} {n}: {t}" for w, _, g, n, t in sorted(found, key=lambda t: (t[0], t[1], t[3]))]
    suspended = any(R.dig(p.result, "warmup", "emulated") is False for p in points if p.result)
    how = ", emulation suspended" if suspended else ""
    return (f"Warm-up, until two whole windows' hit ratios are within ε or at the cap{how}: "
            + "; ".join(parts) + ".")  # fmt: skip


def _slots(points: Sequence[Point]) -> str:
    values = R.values_of([p.result for p in points if p.result], "config", "cache_slots")
    return "/".join(f"{v:,}" for v in values) or "?"


def draw_fig15(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    reused = any(p.result is not None and R.dig(p.result, "load", "reused") for p in points)
    how = ("Each θ starts on the same loaded store, recovered, with an empty cache warmed by --warmup-ops"
           if reused else "Each θ runs on a freshly loaded server")  # fmt: skip
    notes = [HIT_NOTE, f"{how} (the artifact loads once at θ=0.5 and carries the warm cache).", *caption]
    return _pair_with_hits("fig15", points, out_dir, lambda r: r.zipf, lambda g: f"{g:g}", "Zipf θ",
                           ("scalio-stage3", "ditto"), notes)  # fmt: skip


def draw_fig16(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    base = min((p.run.records for p in points), default=1)
    slots = _slots(points)
    notes = [HIT_NOTE, f"The cache stays at {slots} slots (the ×1 size) for every dataset size, as in the paper, "
             "so the hit ratio falls.", *caption]  # fmt: skip
    return _pair_with_hits("fig16", points, out_dir, lambda r: r.records,
                           lambda g: f"×{g / base:g}\n({g // 1000:,}K)", "records",
                           ("scalio-stage3", "ditto"), notes)  # fmt: skip


def draw_fig17(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    notes = ["Paper cores = 2 x workers (the rest are RPC threads); operations in flight = 64 x paper cores.", *caption]
    return _pair_with_hits("fig17", points, out_dir, lambda r: 2 * r.workers,
                           lambda g: f"{g}\n({workers_of_paper_cores(g)} wk)", "DPU cores (workers)",
                           ("scalio-stage3", "ditto"), notes, hits=False)  # fmt: skip


def draw_fig18(points: Sequence[Point], out_dir: Path, caption: Sequence[str] = ()) -> list[Path]:
    buckets = R.values_of([p.result for p in points if p.result], "config", "cache_buckets")
    notes = [HIT_NOTE, f"The bucket count stays fixed ({'/'.join(f'{b:,}' for b in buckets) or '?'} buckets: "
             "8 slots per bucket at --cache-ratio), so the cache capacity scales with the slots per bucket.", *caption]  # fmt: skip
    return _pair_with_hits("fig18", points, out_dir, lambda r: r.assoc, str, "slots per bucket",
                           ("scalio-stage3",), notes)  # fmt: skip


DRAW = {
    "fig5": draw_fig5,
    "fig11": draw_fig11,
    "fig12": draw_fig12,
    "fig13": draw_fig13,
    "fig14": draw_fig14,
    "fig15": draw_fig15,
    "fig16": draw_fig16,
    "fig17": draw_fig17,
    "fig18": draw_fig18,
}
