"""Building the harness and running a figure's plan: one JSON file per run under results/<fig>/.

A run whose JSON exists is skipped (unless forced); a run whose file name exists under another
figure's directory is the same measurement and is copied from there. A failed run (non-zero exit,
timeout, missing or unreadable JSON) leaves `<name>.failed.txt` with its command line and stderr
and is reported; the figure is drawn from what succeeded.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import stores
from .results import ResultError, load_result, summary
from .runs import Run

BINARY_RELATIVE = Path("target/release/scalio-ycsb")
BUILD_COMMAND = ["cargo", "build", "--release", "-p", "scalio-bench", "--bin", "scalio-ycsb"]
STDERR_TAIL_LINES = 40

Log = Callable[[str], None]


@dataclass
class Failure:
    run: Run
    command: list[str]
    reason: str  # "exit status 1", "timed out after 300 s", ...
    stderr: str

    def report(self) -> str:
        tail = "\n".join(self.stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:])
        return f"FAILED ({self.reason}): {shlex.join(self.command)}\n--- stderr (last lines) ---\n{tail}\n---"


@dataclass
class Outcome:
    """What `execute` did with a plan."""

    ran: int = 0
    skipped: int = 0  # result already there
    reused: int = 0  # copied from another figure's directory
    would_run: list[list[str]] = field(default_factory=list)  # --dry-run
    failures: list[Failure] = field(default_factory=list)


def build(root: Path, log: Log, dry_run: bool = False) -> None:
    """`cargo build --release -p scalio-bench --bin scalio-ycsb` in the workspace `root`."""
    log(f"$ (cd {shlex.quote(str(root))} && {shlex.join(BUILD_COMMAND)})")
    if dry_run:
        return
    subprocess.run(BUILD_COMMAND, cwd=root, check=True)


def result_path(out_dir: Path, run: Run) -> Path:
    return out_dir / f"{run.name()}.json"


def failure_path(out_dir: Path, run: Run) -> Path:
    return out_dir / f"{run.name()}.failed.txt"


def _usable(path: Path) -> bool:
    try:
        load_result(path)
        return True
    except ResultError:
        return False


def _find_elsewhere(results_root: Path, out_dir: Path, run: Run, among: set[Path] | None) -> Path | None:
    """The same run's result in another figure's directory (only among `among` if given)."""
    name = result_path(out_dir, run).name
    for candidate in sorted(results_root.glob(f"*/{name}")):
        if candidate.parent.resolve() == out_dir.resolve():
            continue
        if among is not None and candidate.resolve() not in among:
            continue
        if _usable(candidate):
            return candidate
    return None


def run_one(run: Run, binary: Path, out_dir: Path, timeout_s: float) -> tuple[dict | None, Failure | None]:
    """Runs the harness once; on success the JSON is at result_path(out_dir, run)."""
    final = result_path(out_dir, run)
    tmp = out_dir / f".{run.name()}.json.tmp"
    tmp.unlink(missing_ok=True)
    cmd = run.args(binary, tmp)
    shown = run.args(binary, final)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        tmp.unlink(missing_ok=True)
        return None, Failure(run, shown, f"timed out after {timeout_s:g} s", err)
    except OSError as e:
        return None, Failure(run, shown, f"could not start: {e}", "")
    (logs / f"{run.name()}.log").write_text(
        f"$ {shlex.join(shown)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        return None, Failure(run, shown, f"exit status {proc.returncode}", proc.stderr)
    try:
        result = load_result(tmp)
    except ResultError as e:
        tmp.unlink(missing_ok=True)
        return None, Failure(run, shown, f"exit status 0 but {e}", proc.stderr)
    tmp.replace(final)
    return result, None


def execute(
    runs: list[Run],
    out_dir: Path,
    binary: Path,
    *,
    results_root: Path,
    timeout_s: float,
    force: bool = False,
    dry_run: bool = False,
    log: Log = print,
    tag: str = "",
    attempted: set[Path] | None = None,
    store_budget_bytes: float | None = None,
) -> Outcome:
    """Makes sure every run of the plan has its JSON in `out_dir` (or is reported as failed).

    `attempted` (updated here) holds the result files run or tried earlier in this invocation:
    they are not run again, even with `force`, and with `force` only they are reused elsewhere.
    """
    out = Outcome()
    attempted = set() if attempted is None else attempted
    if not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
    todo: list[Run] = []
    for run in runs:
        path = result_path(out_dir, run)
        if path.resolve() in attempted or (not force and path.exists() and _usable(path)):
            out.skipped += 1
            continue
        source = _find_elsewhere(results_root, out_dir, run, attempted if force else None)
        if source is not None:
            if not dry_run:
                shutil.copyfile(source, path)
                attempted.add(path.resolve())
            out.reused += 1
            continue
        todo.append(run)
    for i, run in enumerate(todo, 1):
        if dry_run:
            out.would_run.append(run.args(binary, result_path(out_dir, run)))
            attempted.add(result_path(out_dir, run).resolve())
            continue
        attempted.add(result_path(out_dir, run).resolve())
        started = time.monotonic()
        result, failure = run_one(run, binary, out_dir, timeout_s)
        took = time.monotonic() - started
        head = f"[{tag} {i}/{len(todo)}] {run.name()}"
        if failure is not None:
            out.failures.append(failure)
            failure_path(out_dir, run).write_text(failure.report() + "\n")
            log(f"{head}: {failure.reason} ({took:.1f} s)")
        else:
            out.ran += 1
            failure_path(out_dir, run).unlink(missing_ok=True)
            log(f"{head}: {summary(result)} ({took:.1f} s)")
        if run.store_dir is not None and store_budget_bytes is not None:
            stores.trim(Path(run.store_dir), store_budget_bytes, log)
    return out
