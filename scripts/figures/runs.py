"""One invocation of `scalio-ycsb`: its parameters, command line and result file name.

A run's file name is built from every parameter that goes on its command line, so two runs with
the same name are the same measurement: a figure can reuse another figure's result file, and a
change of any parameter (including the emulation knobs) never picks up a stale result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

SYSTEMS = ("scalio", "leed", "ditto")
WORKLOADS = ("a", "b", "c", "d", "f")


@dataclass(frozen=True)
class Emulation:
    """The emulated-testbed knobs of the embedded server (0 = off)."""

    ssd_iops: int
    ssd_latency_us: int
    worker_io_cost_us: int

    def args(self) -> list[str]:
        return [
            "--ssd-iops", str(self.ssd_iops),
            "--ssd-latency-us", str(self.ssd_latency_us),
            "--worker-io-cost-us", str(self.worker_io_cost_us),
        ]  # fmt: skip


def _num(x: float) -> str:
    """A short, exact text for a parameter value (0.112 -> '0.112', 8.0 -> '8')."""
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Run:
    """One harness run against an embedded server.

    `outstanding` is per driver thread, as on the harness's command line; the paper's `io` (total
    operations in flight) is `threads * outstanding`.
    """

    system: str
    workload: str
    emulation: Emulation
    stage: int | None = None
    ssds: int = 7
    workers: int = 2
    threads: int = 2
    outstanding: int = 256
    batch: int = 8
    assoc: int = 8
    cache_ratio: float | None = 0.112
    cache_buckets: int | None = None
    records: int = 20000
    operations: int = 20000
    zipf: float = 0.99
    seed: int = 1
    warmup_ops: int = 0
    extra_properties: tuple[tuple[str, str], ...] = field(default=())
    # Where the harness keeps loaded stores (--store-dir); not part of the name: a run on a reused
    # store is the same measurement.
    store_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r} (one of {', '.join(SYSTEMS)})")
        if (self.system == "scalio") != (self.stage is not None):
            raise ValueError("a stage is given for scalio runs and only for them")
        if (self.cache_ratio is None) == (self.cache_buckets is None):
            raise ValueError("give exactly one of cache_ratio and cache_buckets")

    @property
    def label(self) -> str:
        """The harness's label: scalio-stage3, leed, ditto."""
        return f"scalio-stage{self.stage}" if self.system == "scalio" else self.system

    @property
    def io(self) -> int:
        """Operations in flight in total (the paper's `io`)."""
        return self.threads * self.outstanding

    def with_(self, **changes) -> Run:
        return replace(self, **changes)

    def name(self) -> str:
        """The result file's stem: every command-line parameter, in a fixed order."""
        e = self.emulation
        cache = f"cr{_num(self.cache_ratio)}" if self.cache_ratio is not None else f"cb{self.cache_buckets}"
        parts = [
            self.label,
            f"w{self.workload}",
            f"ssd{self.ssds}",
            f"wk{self.workers}",
            f"t{self.threads}x{self.outstanding}",
            f"b{self.batch}",
            f"a{self.assoc}",
            cache,
            f"r{self.records}",
            f"o{self.operations}",
            f"z{_num(self.zipf)}",
            f"s{self.seed}",
            f"e{e.ssd_iops}-{e.ssd_latency_us}-{e.worker_io_cost_us}",
        ]
        if self.warmup_ops:
            parts.append(f"wu{self.warmup_ops}")
        for k, v in self.extra_properties:
            parts.append(f"{k}={v}")
        return "_".join(parts)

    def properties(self) -> list[tuple[str, str]]:
        """The `-p name=value` overrides, in order."""
        props = [
            ("recordcount", str(self.records)),
            ("operationcount", str(self.operations)),
            ("zipfianconstant", _num(self.zipf)),
        ]
        return props + list(self.extra_properties)

    def args(self, binary: Path | str, json_path: Path | str) -> list[str]:
        """The full command line; the result goes to `json_path`."""
        cmd = [str(binary), "--workload", self.workload, "--system", self.system]
        if self.stage is not None:
            cmd += ["--stage", str(self.stage)]
        for k, v in self.properties():
            cmd += ["-p", f"{k}={v}"]
        cmd += [
            "--ssds", str(self.ssds),
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            "--outstanding", str(self.outstanding),
            "--batch", str(self.batch),
            "--assoc", str(self.assoc),
        ]  # fmt: skip
        if self.cache_buckets is not None:
            cmd += ["--cache-buckets", str(self.cache_buckets)]
        else:
            cmd += ["--cache-ratio", _num(self.cache_ratio)]
        cmd += self.emulation.args()
        cmd += ["--seed", str(self.seed)]
        if self.warmup_ops:
            cmd += ["--warmup-ops", str(self.warmup_ops)]
        if self.store_dir is not None:
            cmd += ["--store-dir", self.store_dir]
        cmd += ["--json", str(json_path)]
        return cmd
