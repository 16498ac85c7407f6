"""Launch a small program under mpiexec from a single-process test, never waiting forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MPIEXEC = Path(sys.executable).with_name("mpiexec")
needs_mpiexec = pytest.mark.skipif(not MPIEXEC.exists(), reason="mpiexec from the mpich wheel is missing")


def run_job(
    script: Path,
    ranks: int,
    hang_guard_s: float,
    extra_env: dict | None = None,
    mpi4py_main: bool = True,
):
    """Run ``script`` on ``ranks`` ranks, as the README says (``python -m mpi4py``) or, with
    ``mpi4py_main=False``, as a plain ``python script.py``; fail the test, after killing the
    whole job, if it has not ended within ``hang_guard_s``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(extra_env or {}))
    launcher = ["-m", "mpi4py"] if mpi4py_main else []
    process = subprocess.Popen(
        [str(MPIEXEC), "-n", str(ranks), sys.executable, *launcher, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=hang_guard_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the job on {ranks} ranks hung instead of ending")
    return subprocess.CompletedProcess(process.args, process.returncode, out)
