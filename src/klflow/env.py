"""``klflow.env``: the job's rank and size, and the CPU thread count per rank.

>>> import klflow as flow
>>> flow.env.get_rank(), flow.env.get_world_size()
(0, 1)
"""

from __future__ import annotations

import os

from klflow.distributed import comm
from klflow.kernels import pool

# Variables launchers set for the number of ranks sharing this node (MPICH/Hydra, Open MPI, Slurm).
_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")
# ... and for this process's rank in the job (PMI: Hydra, Intel MPI, srun --mpi=pmi2; Open MPI; PMIx; Slurm).
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def get_rank() -> int:
    """This process's rank in the job (0 when not launched by mpiexec)."""
    return comm.rank()


def get_world_size() -> int:
    """Number of ranks in the job (1 when not launched by mpiexec)."""
    return comm.world_size()


def launcher_rank() -> int:
    """This process's rank as its launcher announced it, read without starting MPI (0 without one).

    For what must happen before MPI starts, such as printing ``--help`` once per job.
    """
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def get_local_rank() -> int:
    """This process's index among the ranks on its node, from the launcher's environment."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def ranks_on_this_node() -> int:
    """How many ranks share this node, read from the launcher (1 when launched without one)."""
    for name in _LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    size = os.environ.get("PMI_SIZE", "")
    return int(size) if size.isdigit() and int(size) > 0 else 1  # unknown: assume one node


def _cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_thread_count() -> int:
    """Cores available to this process divided by the ranks on the node, at least 1."""
    return max(1, _cores() // ranks_on_this_node())


def configure_threads() -> int:
    """Size klflow's CPU thread pool so that ranks × threads ≤ cores, unless NUMBA_NUM_THREADS is
    set (then it is that number). Returns the thread count. numba's own threading layer is not
    touched: klflow's kernels do not use it."""
    variable = os.environ.get("NUMBA_NUM_THREADS", "")
    threads = int(variable) if variable.isdigit() and int(variable) > 0 else default_thread_count()
    set_num_threads(threads)
    comm.set_oversubscribed(ranks_on_this_node() > _cores())
    return threads


def set_num_threads(count: int) -> None:
    """Let each klflow CPU kernel launch use up to ``count`` threads, whichever Python thread
    calls (the calling thread and ``count - 1`` workers shared by the whole process).

    >>> import klflow as flow
    >>> before = flow.env.get_num_threads()
    >>> flow.env.set_num_threads(1); flow.env.get_num_threads()
    1
    >>> flow.env.set_num_threads(before)
    """
    pool.set_thread_count(count)


def get_num_threads() -> int:
    """The most threads one klflow CPU kernel launch uses."""
    return pool.thread_count()
