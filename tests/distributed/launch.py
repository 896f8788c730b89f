"""Starting real MPI jobs from tests: ``run("script.py", n=2)`` runs a script beside this
file under ``mpiexec -n 2 python -m mpi4py``, with a timeout, and returns the finished
process (stdout and stderr captured; ranks' lines may interleave)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TIMEOUT = 120


def mpiexec() -> str:
    """The mpich wheel's mpiexec beside this Python (CI's venv), else one on PATH; the
    test skips when there is none."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install 'optdsl[mpi]' brings mpich's)")
    return found


def run(script: str | Path, *args: str, n: int = 2,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``mpiexec -n N python -m mpi4py SCRIPT ARGS`` from the repository root; a relative
    ``script`` is beside this file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py",
                           str(HERE / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
