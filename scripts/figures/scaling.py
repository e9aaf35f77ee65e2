"""The cluster scaling figure: throughput against the number of servers (1 to 4), on loopback.

Each point starts a fresh cluster with `scripts/cluster.sh run --servers N` (an etcd and N
scalio-servers, replication 1, each with one emulated SSD), loads it with scalio-ycsb
--cluster and runs a workload; the JSON goes to results/scaling/<workload>-n<N>.json and the
figure to results/figures/scaling.png and .pdf. Every server emulates the same SSD
([emulation] in the config this module writes), and its cache table is kept small so that
most GETs read the SSD: the figure shows how the emulated SSD capacity adds up across servers
through the cluster map's routing, on one 2-core host shared by every server and the client.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Callable

SERVERS = (1, 2, 3, 4)
WORKLOADS = ("c", "a")
EMULATION = {"ssd_iops": 2000, "ssd_latency_us": 80, "worker_io_cost_us": 125}
CACHE_BUCKETS = 64  # x 8 slots: far fewer than the records, so most GETs miss
ETCD_PORT = 23990  # not CI's, nor scripts/cluster.sh's default


def config_text() -> str:
    lines = ["workers = 1", "[cache]", f"buckets = {CACHE_BUCKETS}", "assoc = 8", "[emulation]"]
    lines += [f"{k} = {v}" for k, v in EMULATION.items()]
    return "\n".join(lines) + "\n"


def run_all(root: Path, bin_dir: Path, results: Path, records: int, operations: int, force: bool,
            log: Callable[[str], None]) -> list[Path]:  # fmt: skip
    out_dir = results / "scaling"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = out_dir / "server.toml"
    cfg.write_text(config_text())
    done = []
    for w in WORKLOADS:
        for n in SERVERS:
            out = out_dir / f"{w}-n{n}.json"
            done.append(out)
            if out.exists() and not force:
                continue
            state = root / "target" / f"scaling-n{n}"
            cmd = [
                "bash", str(root / "scripts/cluster.sh"), "run", "--servers", str(n), "--dir", str(state),
                "--bin", str(bin_dir), "--ssd-size", "128MiB", "--replication", "1", "--etcd-port", str(ETCD_PORT),
                "--port", "7800", "--server-arg", f"--config={cfg}", "--",
                str(bin_dir / "scalio-ycsb"), "--cluster", f"etcd://127.0.0.1:{ETCD_PORT}/scalio", "--workload", w,
                "-p", f"recordcount={records}", "-p", f"operationcount={operations}", "--json", str(out),
            ]  # fmt: skip
            t0 = time.monotonic()
            r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            if r.returncode != 0:
                log(f"scaling: {w} with {n} servers failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
                out.unlink(missing_ok=True)
                continue
            log(f"scaling: workload {w}, {n} servers: {throughput(out):,.0f} ops/s ({time.monotonic() - t0:.0f} s)")
    return done


def throughput(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["run"]["throughput"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def draw(results: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for w, color in zip(WORKLOADS, ("tab:red", "tab:blue")):
        ys = [throughput(results / "scaling" / f"{w}-n{n}.json") for n in SERVERS]
        xs = [n for n, y in zip(SERVERS, ys) if y is not None]
        ax.plot(xs, [y / 1000 for y in ys if y is not None], marker="o", color=color, label=f"YCSB-{w.upper()}")
        base = next((y for y in ys if y is not None), None)
        if base:
            ax.plot(SERVERS, [base * n / 1000 for n in SERVERS], ls=":", color=color, lw=0.8)
    ax.set_xlabel("servers (replication 1)")
    ax.set_ylabel("throughput (K ops/s)")
    ax.set_xticks(SERVERS)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    e = EMULATION
    ax.set_title("Cluster scaling on loopback — emulated testbed", fontsize=9)
    fig.text(0.01, 0.01, f"each server: 1 SSD emulated at {e['ssd_iops']} IOPS + {e['ssd_latency_us']} us, "
             f"1 worker ({e['worker_io_cost_us']} us/IO), {CACHE_BUCKETS * 8} cache slots; dotted: linear.\n"
             "All servers, etcd and the client share one 2-core host.", fontsize=6)  # fmt: skip
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "scaling.png", out_dir / "scaling.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths
