"""The harness's loaded stores (`scalio-ycsb --store-dir`): one directory each, kept for reuse,
and deleted least recently used first when they take more disk than a budget."""

from __future__ import annotations

import shutil
from pathlib import Path


def disk_usage(directory: Path) -> int:
    """Bytes on disk under `directory` (allocated blocks: the SSD files are sparse)."""
    total = 0
    for f in directory.rglob("*"):
        if f.is_file():
            total += f.stat().st_blocks * 512
    return total


def last_used(directory: Path) -> float:
    """The latest modification time of anything in it (a run writes to the store it reuses)."""
    times = [f.stat().st_mtime for f in directory.rglob("*")]
    return max(times, default=directory.stat().st_mtime)


def trim(root: Path, budget_bytes: float, log=print) -> list[Path]:
    """Deletes stores under `root`, least recently used first, until the rest fit `budget_bytes`;
    the most recently used one is always kept. Returns the deleted directories."""
    if not root.is_dir():
        return []
    stores = sorted((d for d in root.iterdir() if d.is_dir()), key=last_used)
    sizes = {d: disk_usage(d) for d in stores}
    total = sum(sizes.values())
    deleted = []
    for d in stores[:-1]:
        if total <= budget_bytes:
            break
        log(f"deleting the store {d} ({sizes[d] / 2**30:.1f} GiB; stores over {budget_bytes / 2**30:.0f} GiB)")
        shutil.rmtree(d)
        total -= sizes[d]
        deleted.append(d)
    return deleted
