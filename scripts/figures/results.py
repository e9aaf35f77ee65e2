"""Loading `scalio-ycsb` result JSON (schema 1) and extracting the series the figures plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .runs import Run

SCHEMA = 1


class ResultError(Exception):
    """A result file that is missing, not JSON, or not a schema-1 harness result."""


def load_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultError(f"{path}: no result file") from None
    except (OSError, ValueError) as e:
        raise ResultError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{path}: not a JSON object")
    if data.get("schema") != SCHEMA:
        raise ResultError(f"{path}: schema {data.get('schema')!r}, expected {SCHEMA}")
    if _number(dig(data, "run", "throughput")) is None:
        raise ResultError(f"{path}: no run.throughput")
    return data


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]... or None where a level is missing or null."""
    for k in keys:
        if not isinstance(data, dict) or data.get(k) is None:
            return None
        data = data[k]
    return data


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


# The metrics the figures plot: each returns None where the JSON has no (or a null) value.
def throughput(r: dict) -> float | None:
    return _number(dig(r, "run", "throughput"))


def hit_ratio(r: dict) -> float | None:
    return _number(dig(r, "run", "cache_hit_ratio"))


def avg_latency_us(r: dict) -> float | None:
    return _number(dig(r, "run", "latency", "ALL", "avg_us"))


def ssd_iops(r: dict) -> float | None:
    return _number(dig(r, "run", "ssd_iops"))


def worker_cores(r: dict) -> float | None:
    return _number(dig(r, "run", "worker_cores"))


Metric = Callable[[dict], "float | None"]

# Fields of the spec the figures rely on, by metric (for reporting what a harness JSON lacks).
NEEDED_FIELDS = {
    "run.throughput": throughput,
    "run.cache_hit_ratio": hit_ratio,
    "run.latency.ALL.avg_us": avg_latency_us,
    "run.ssd_iops": ssd_iops,
    "run.worker_cores": worker_cores,
}


def summary(r: dict) -> str:
    """One line for the progress log."""
    parts = [f"{throughput(r) or 0:,.0f} ops/s"]
    if (h := hit_ratio(r)) is not None:
        parts.append(f"hit {h:.2f}")
    if (lat := avg_latency_us(r)) is not None:
        parts.append(f"avg {lat:,.0f} us")
    if (c := worker_cores(r)) is not None:
        parts.append(f"workers {c:.2f} cores")
    errors = dig(r, "run", "errors")
    if errors:
        parts.append(f"{errors} errors")
    return ", ".join(parts)


@dataclass(frozen=True)
class Point:
    """A planned run and its result (None: missing or failed)."""

    run: Run
    result: dict | None

    def value(self, metric: Metric) -> float | None:
        return None if self.result is None else metric(self.result)


def collect(runs: Iterable[Run], out_dir: Path) -> list[Point]:
    """The plan's points with whatever results `out_dir` holds."""
    points = []
    for run in runs:
        try:
            result = load_result(out_dir / f"{run.name()}.json")
        except ResultError:
            result = None
        points.append(Point(run, result))
    return points


def select(points: Iterable[Point], **match: Any) -> list[Point]:
    """The points whose run has all the given attribute values (e.g. system="scalio")."""
    return [p for p in points if all(getattr(p.run, k) == v for k, v in match.items())]


def series(
    points: Iterable[Point], x: Callable[[Run], Any], metric: Metric, **match: Any
) -> list[tuple[Any, float | None]]:
    """(x, value) pairs sorted by x, value None for a missing run or a null metric."""
    chosen = select(points, **match)
    return sorted(((x(p.run), p.value(metric)) for p in chosen), key=lambda xy: xy[0])


def missing(points: Iterable[Point]) -> list[Run]:
    return [p.run for p in points if p.result is None]


def lacking_fields(points: Iterable[Point], fields: Iterable[str]) -> list[str]:
    """Of `fields` (keys of NEEDED_FIELDS), those null or absent in every loaded result."""
    loaded = [p.result for p in points if p.result is not None]
    if not loaded:
        return []
    return [f for f in fields if all(NEEDED_FIELDS[f](r) is None for r in loaded)]


def values_of(results: list[dict], *keys: str) -> list:
    seen = []
    for r in results:
        v = dig(r, *keys)
        if v is not None and v not in seen:
            seen.append(v)
    return sorted(seen, key=lambda v: (isinstance(v, str), v))


def _fmt(values: list, unit: str = "", thousands: bool = False) -> str:
    if not values:
        return "?"
    shown = [f"{v:,}" if thousands and isinstance(v, int) else f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return "/".join(shown) + unit


def testbed_note(points: Iterable[Point]) -> str:
    """What the results were measured on, read from their JSON: emulation knobs, workers, sizes."""
    results = [p.result for p in points if p.result is not None]
    if not results:
        return "No results."
    emulated = {bool(r.get("emulated")) for r in results}
    lines = []
    if True in emulated:
        ssd = f"SSD {_fmt(values_of(results, 'emulation', 'ssd_iops'), ' IOPS', True)}"
        ssd += f" + {_fmt(values_of(results, 'emulation', 'ssd_latency_us'), ' µs')} latency"
        cost = f"worker {_fmt(values_of(results, 'emulation', 'worker_io_cost_us'), ' µs')} per SSD I/O"
        head = "Emulated testbed" if emulated == {True} else "Partly emulated testbed"
        lines.append(f"{head}: {ssd}; {cost}; {_fmt(values_of(results, 'config', 'workers'))} workers.")
    else:
        lines.append(f"Not emulated (this host's speed); {_fmt(values_of(results, 'config', 'workers'))} workers.")
    sizes = (
        f"{_fmt(values_of(results, 'workload', 'recordcount'), thousands=True)} records, "
        f"{_fmt(values_of(results, 'workload', 'operationcount'), thousands=True)} operations, "
        f"{_fmt(values_of(results, 'workload', 'fieldlength'))}-B values"
    )
    slots = values_of(results, "config", "cache_slots")  # null for systems without the Scalio table
    sizes += f"; cache {_fmt(slots, thousands=True)} slots." if slots else "."
    lines.append(sizes)
    return " ".join(lines)


def scale_note(points: Iterable[Point]) -> str:
    """The scale the figure ran at, for its caption: records, cache slots and operations per run,
    from the JSON (the planned runs' values where no result exists)."""
    points = list(points)
    results = [p.result for p in points if p.result is not None]
    records = values_of(results, "workload", "recordcount") or sorted({p.run.records for p in points})
    operations = values_of(results, "workload", "operationcount") or sorted({p.run.operations for p in points})
    slots = values_of(results, "config", "cache_slots")
    text = f"Scale: {_fmt(records, thousands=True)} records, {_fmt(operations, thousands=True)} operations per run"
    return text + (f", {_fmt(slots, thousands=True)} cache slots" if slots else "")
