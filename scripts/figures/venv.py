"""The scripts' own virtual environment, scripts/.venv, with scripts/requirements.txt installed.

Created with `python3 -m venv` on first use; reinstalled when requirements.txt changes. Nothing
is installed system-wide.
"""

from __future__ import annotations

import hashlib
import os
import site
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1]
VENV = SCRIPTS / ".venv"
REQUIREMENTS = SCRIPTS / "requirements.txt"
STAMP = VENV / ".requirements.sha256"


def python() -> Path:
    return VENV / "bin" / "python"


def inside() -> bool:
    """Whether this interpreter is the venv's."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def _wanted_stamp() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure(log=print) -> Path:
    """Creates the venv and installs the requirements if needed; returns its python."""
    if not python().exists():
        log(f"creating {VENV} (python3 -m venv)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not STAMP.exists() or STAMP.read_text().strip() != _wanted_stamp():
        log(f"installing {REQUIREMENTS.name} into {VENV}")
        pip = [str(python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run(pip + ["-r", str(REQUIREMENTS)], check=True)
        STAMP.write_text(_wanted_stamp() + "\n")
    return python()


def reexec_inside(script: Path, argv: list[str], log=print) -> None:
    """Replaces this process with `script argv...` under the venv's python (never returns)."""
    py = ensure(log)
    os.execv(str(py), [str(py), str(script), *argv])


def make_importable(log=print) -> None:
    """Lets this interpreter import the venv's packages (same Python version), e.g. for tests."""
    ensure(log)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = VENV / "lib" / version / "site-packages"
    if not site_packages.is_dir():
        raise RuntimeError(f"{VENV} was made for another Python than {version}; delete it to recreate it")
    site.addsitedir(str(site_packages))
