"""Every MPI call klflow makes, and nothing else imports mpi4py: the guarded collective path.

MPI starts on first use; a plain ``python script.py`` is a world of one and communicates nothing.
On more ranks every collective klflow issues runs in two steps on a :class:`Communicator`:

1. **Agreement.** Each rank sends the coordinator (rank 0 of the communicator) three integers: the
   call's sequence number on this communicator, a digest of what it is about to do (the operation,
   the call's description, which every rank must give identically — tensor identity within the
   program order, shape, dtype, placement, SBP, … — and the calling thread's name) and whether
   preparing the call failed here. The coordinator compares and answers. If all agree, the data
   moves. Otherwise every rank sends its full description, and every rank raises the same
   exception: the problems found (a ``TypeError``/``ValueError`` as raised, any other class as a
   :class:`CollectiveError` naming it), or a :class:`CollectiveMismatchError` naming each rank's
   call (``rank 0: item() of tensor #12 … (call 41); rank 1: to_global() … (call 41)``).
2. **Data.** Array data moves only through mpi4py's buffer-based non-blocking collectives
   (``Iallreduce``, ``Iallgatherv``, …); pickling carries small metadata only.

Nothing waits forever. A rank that has waited longer than ``KLFLOW_COLLECTIVE_TIMEOUT`` seconds
(default 600) in an agreement or a collective prints what it waits in and which ranks have not
arrived, then aborts the job with exit code 124. A rank that ends its program (``sys.exit``, the
end of the script) while others still call collectives answers their calls with a
:class:`CollectiveMismatchError` ("rank 1 has ended its program") until every rank has ended; an
uncaught exception on a rank of a job aborts the job, as ``python -m mpi4py`` would.

Collectives of one communicator are serialised across the threads of a rank (a lock), and the
thread's name is part of the agreement: a call from thread A on one rank meeting a call from
thread B on another is a mismatch naming both, never a mixed-up value.

:data:`collective_counts` counts agreements and data collectives, so tests can check what an
operation communicated.

>>> from klflow.distributed import comm
>>> comm.world_size() >= 1
True
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import math
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_TIMEOUT_S = 600.0
WATCHDOG_EXIT_CODE = 124  # as timeout(1): the job was ended because a rank waited too long
TIMEOUT_VARIABLE = "KLFLOW_COLLECTIVE_TIMEOUT"
# A rank waiting for the coordinator's answer gives the coordinator this long to report first:
# only the coordinator knows which ranks have not arrived.
_REPORT_GRACE_S = 2.0
_SPIN_S = 1e-4  # busy-poll this long, then yield the CPU between polls
_YIELD_S = 0.02  # an agreement that has waited this long sleeps between polls
_MAX_SLEEP_S = 0.005

_TAG_ARRIVE, _TAG_VERDICT, _TAG_DETAIL, _TAG_DETAIL_VERDICT = 1, 2, 3, 4
_OK, _PROBLEM = 0, 1
_DIGEST_MASK = (1 << 62) - 1
EXIT_CALL = "the end of its program (no more klflow calls)"

collective_counts: collections.Counter[str] = collections.Counter()


class CollectiveError(RuntimeError):
    """An exception other than ``TypeError``/``ValueError`` raised on some rank while preparing a
    collective, raised on every rank; the message keeps the original class and text."""


class CollectiveMismatchError(ValueError):
    """The ranks called different collectives (a skipped call, another order, another thread, a
    rank that has ended its program); raised on every rank, naming each rank's call."""


# ----------------------------------------------------------------- program-order identities
# Global tensors are numbered in the order a rank creates them: SPMD programs create them in the
# same order on every rank, so the number names "the same tensor" in an agreement. After the
# ranks disagree (a program that catches the error and goes on), every rank continues from the
# highest number any rank reached, so tensors made from then on are numbered alike again.
_ids_lock = threading.Lock()
_next_id = 1


def next_global_id() -> int:
    """The number of the next global tensor this rank creates."""
    global _next_id
    with _ids_lock:
        value = _next_id
        _next_id += 1
        return value


def _advance_global_ids(to: int) -> None:
    global _next_id
    with _ids_lock:
        _next_id = max(_next_id, to)


_MPI: Any = None


def _mpi() -> Any:
    global _MPI
    if _MPI is None:
        from mpi4py import MPI

        _MPI = MPI
        _install_fault_handlers(MPI)
    return _MPI


def rank() -> int:
    """This process's rank in the job (0 without mpiexec)."""
    return _mpi().COMM_WORLD.Get_rank()


def world_size() -> int:
    """Number of processes in the job (1 without mpiexec)."""
    return _mpi().COMM_WORLD.Get_size()


def reset_counts() -> None:
    collective_counts.clear()


# ----------------------------------------------------------------- waiting, bounded
_timeout_override: float | None = None
_timeout_from_environment: float | None = None


def collective_timeout() -> float:
    """Seconds a rank may wait in one klflow collective before the job is aborted
    (``KLFLOW_COLLECTIVE_TIMEOUT``, read once; default 600; ``inf`` waits forever)."""
    global _timeout_from_environment
    if _timeout_override is not None:
        return _timeout_override
    if _timeout_from_environment is None:
        _timeout_from_environment = _read_timeout()
    return _timeout_from_environment


def _read_timeout() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:  # also refuses NaN
        raise ValueError(
            f"{TIMEOUT_VARIABLE}={text!r} is not a positive number of seconds (e.g. 600, or inf to "
            f"wait forever)"
        )
    return value


def set_collective_timeout(seconds: float | None) -> None:
    """Override ``KLFLOW_COLLECTIVE_TIMEOUT`` in this process (``None`` reads it again)."""
    global _timeout_override, _timeout_from_environment
    _timeout_from_environment = None
    if seconds is not None and not seconds > 0:
        raise ValueError(f"the collective timeout must be a positive number of seconds, got {seconds!r}")
    _timeout_override = seconds


def _abort(message: str) -> None:
    """Print why, then end every rank of the job (MPI_Abort never returns)."""
    sys.stdout.flush()
    sys.stderr.write(f"klflow: rank {rank()}: {message}\n")
    sys.stderr.flush()
    _mpi().COMM_WORLD.Abort(WATCHDOG_EXIT_CODE)


def _wait(
    ready: Callable[[], bool],
    waiting_in: str | Callable[[], str],
    missing: Callable[[], str],
    patient: bool,
    timeout: float,
) -> None:
    """Poll ``ready`` until it is true; abort the job after ``timeout`` seconds.

    MPI progresses non-blocking calls only while they are polled, so a data collective is polled
    without sleeping (yielding the CPU to other ranks on the node after a short spin). An
    agreement may wait on a rank that is still computing: after a while it sleeps between polls,
    a little longer the longer it has waited (at most 5 ms).
    """
    if ready():
        return
    start = time.monotonic()
    while not ready():
        waited = time.monotonic() - start
        if waited > timeout:
            where = waiting_in() if callable(waiting_in) else waiting_in
            _abort(
                f"waited {waited:.1f} s in {where}; {missing()}. Aborting the job "
                f"({TIMEOUT_VARIABLE}={timeout:g} s)."
            )
        if waited < _SPIN_S:
            continue
        if patient and waited > _YIELD_S:
            time.sleep(min(_MAX_SLEEP_S, waited * 0.05))
        else:
            os.sched_yield()


# ----------------------------------------------------------------- agreement records
def _digest(op: str, call: str, thread: str) -> int:
    text = f"{op}\x1f{call}\x1f{thread}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & _DIGEST_MASK


@dataclass(frozen=True)
class _Record:
    """One rank's full description of a call, exchanged only when the ranks disagree."""

    sequence: int
    op: str
    call: str
    context: str
    thread: str
    problem: tuple[str, str] | None  # (exception class name, message)
    next_id: int  # this rank's next global-tensor number

    def label(self, show_thread: bool) -> str:
        if self.call == EXIT_CALL:
            return f"has ended its program (call {self.sequence})"
        thread = f", thread {self.thread!r}" if show_thread else ""
        return f"{self.call} (call {self.sequence}{thread})"


def describe_problem(problem: BaseException | None) -> tuple[str, str] | None:
    return None if problem is None else (type(problem).__name__, str(problem))


def _verdict(records: Sequence[_Record]) -> tuple[str, str]:
    """(exception class name, message) that every rank raises for these records."""
    problems = [(r, rec) for r, rec in enumerate(records) if rec.problem is not None]
    if problems:
        kinds = {rec.problem[0] for _, rec in problems}
        if kinds == {"TypeError"}:
            kind = "TypeError"
        elif kinds <= {"TypeError", "ValueError", "CollectiveMismatchError"}:
            kind = "ValueError"
        else:
            kind = "CollectiveError"

        def text(rec: _Record) -> str:
            name, message = rec.problem
            return message if kind != "CollectiveError" else f"{name}: {message}"

        messages = {text(rec) for _, rec in problems}
        if len(problems) == len(records) and len(messages) == 1:
            return kind, messages.pop()
        context = problems[0][1].context
        return kind, f"{context} failed: " + "; ".join(f"rank {r}: {text(rec)}" for r, rec in problems)
    show_thread = any(rec.thread != "MainThread" for rec in records) or len({r.thread for r in records}) > 1
    ended = [r for r, rec in enumerate(records) if rec.call == EXIT_CALL]
    if ended and len(ended) < len(records):
        lead = (
            f"rank{'s' if len(ended) > 1 else ''} {', '.join(map(str, ended))} "
            f"{'have' if len(ended) > 1 else 'has'} ended {'their' if len(ended) > 1 else 'its'} program "
            f"while other ranks still call klflow collectives"
        )
    else:
        lead = (
            "the ranks called different klflow collectives (every rank must make the same calls in "
            "the same order)"
        )
    return "CollectiveMismatchError", f"{lead}: " + "; ".join(
        f"rank {r}: {rec.label(show_thread)}" for r, rec in enumerate(records)
    )


def _answer_not_taken() -> str:
    return "a rank did not take the coordinator's answer"


def _coordinator_silent() -> str:
    return (
        "rank 0, which coordinates every agreement, has not answered (it has not arrived, or waits "
        "for another rank)"
    )


_EXCEPTIONS: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "CollectiveError": CollectiveError,
    "CollectiveMismatchError": CollectiveMismatchError,
}


# ----------------------------------------------------------------- communicators
class Communicator:
    """A group of ranks with its own sequence of agreed collectives (MPI traffic on a private
    duplicate of ``parent``, made by every rank's first collective on it)."""

    def __init__(self, parent: Any, name: str) -> None:
        self.name = name
        self._parent = parent
        self._comm: Any = None
        self.rank = parent.Get_rank()
        self.size = parent.Get_size()
        self.sequence = 0  # agreements so far: the same on every rank of the communicator
        self._lock = threading.RLock()
        # Agreement buffers, reused under the lock (every send completes before agree returns).
        self._mine = np.zeros(3, np.int64)  # sequence number, digest, problem flag
        self._arrivals = np.zeros((self.size, 3), np.int64)
        self._verdict = np.zeros(2, np.int64)
        self._testall = _mpi().Request.Testall

    # -- setup ---------------------------------------------------------------------------
    def _mpi_comm(self) -> Any:
        if self._comm is None:
            dup, request = self._parent.Idup()
            _wait(
                request.Test,
                f"setting up {self.name} (every rank's first klflow collective)",
                lambda: "some rank has not made its first klflow collective call",
                patient=True,
                timeout=collective_timeout(),
            )
            self._comm = dup
        return self._comm

    # -- agreement -------------------------------------------------------------------------
    def agree(
        self,
        op: str,
        call: str,
        problem: BaseException | None = None,
        *,
        context: str | None = None,
        forever: bool = False,
    ) -> None:
        """Return when every rank describes the same ``op``/``call`` and none reports a
        ``problem``; otherwise raise the same exception on every rank. ``context`` names the
        operation in problem messages (default: ``call``); ``forever`` waits without a timeout
        (a rank that has ended its program waits for the others, as ``MPI_Finalize`` would)."""
        collective_counts["agreement"] += 1
        with self._lock:
            self.sequence += 1
            if self.size == 1:
                if problem is not None:
                    raise problem
                return
            comm = self._mpi_comm()
            timeout = math.inf if forever else collective_timeout()
            sequence, thread = self.sequence, threading.current_thread().name
            mine = self._mine
            mine[0] = sequence
            mine[1] = _digest(op, call, thread)
            mine[2] = _OK if problem is None else _PROBLEM

            def waiting_in() -> str:
                return f"the agreement on {call} (call {sequence})"

            if self.rank == 0:
                agreed = self._coordinate(comm, waiting_in, timeout)
            else:
                agreed = self._follow(comm, waiting_in, timeout)
            if agreed:
                return
            record = _Record(sequence, op, call, context or call, thread, describe_problem(problem), _next_id)
            kind, message, next_id = self._exchange_details(comm, record, waiting_in(), timeout)
            _advance_global_ids(next_id)
        error = _EXCEPTIONS[kind](message)
        if problem is not None:
            raise error from problem
        raise error

    def _coordinate(self, comm: Any, waiting_in: Callable[[], str], timeout: float) -> bool:
        arrivals, testall = self._arrivals, self._testall
        arrivals[0] = self._mine
        receives = [comm.Irecv(arrivals[r], source=r, tag=_TAG_ARRIVE) for r in range(1, self.size)]

        def missing() -> str:
            late = [r for r, request in enumerate(receives, start=1) if not request.Test()]
            return f"ranks {late} of {self.name} have not arrived"

        _wait(lambda: testall(receives), waiting_in, missing, True, timeout)
        rows = arrivals.tolist()
        sequence, digest, _ = rows[0]
        agreed = all(row[0] == sequence and row[1] == digest and row[2] == _OK for row in rows)
        verdict = self._verdict
        verdict[0], verdict[1] = sequence, _OK if agreed else _PROBLEM
        sends = [comm.Isend(verdict, dest=r, tag=_TAG_VERDICT) for r in range(1, self.size)]
        _wait(lambda: testall(sends), waiting_in, _answer_not_taken, False, timeout)
        return agreed

    def _follow(self, comm: Any, waiting_in: Callable[[], str], timeout: float) -> bool:
        verdict, testall = self._verdict, self._testall
        requests = [
            comm.Isend(self._mine, dest=0, tag=_TAG_ARRIVE),
            comm.Irecv(verdict, source=0, tag=_TAG_VERDICT),
        ]
        _wait(lambda: testall(requests), waiting_in, _coordinator_silent, True, timeout + _REPORT_GRACE_S)
        return int(verdict[1]) == _OK

    def _exchange_details(
        self, comm: Any, record: _Record, waiting_in: str, timeout: float
    ) -> tuple[str, str, int]:
        """Gather every rank's record at the coordinator, which composes one verdict for all:
        (exception class name, message, the global-tensor number every rank continues from)."""
        if self.rank == 0:
            records = [record]
            for source in range(1, self.size):
                records.append(self._receive_object(comm, source, _TAG_DETAIL, waiting_in, timeout))
            verdict = (*_verdict(records), max(rec.next_id for rec in records))
            sends = [comm.isend(verdict, dest=r, tag=_TAG_DETAIL_VERDICT) for r in range(1, self.size)]
            _wait(
                lambda: _mpi().Request.Testall(sends),
                waiting_in,
                lambda: "the verdict was not taken",
                False,
                timeout,
            )
            return verdict
        send = comm.isend(record, dest=0, tag=_TAG_DETAIL)
        verdict = self._receive_object(comm, 0, _TAG_DETAIL_VERDICT, waiting_in, timeout + _REPORT_GRACE_S)
        _wait(send.Test, waiting_in, lambda: "rank 0 did not take this rank's description", False, timeout)
        return verdict

    @staticmethod
    def _receive_object(comm: Any, source: int, tag: int, waiting_in: str, timeout: float) -> Any:
        found: list[Any] = []

        def ready() -> bool:
            message = comm.improbe(source=source, tag=tag)
            if message is not None:
                found.append(message.recv())
            return bool(found)

        _wait(ready, waiting_in, lambda: f"rank {source} has not sent its description", True, timeout)
        return found[0]

    # -- data --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def collective(self, call: str, context: str | None = None) -> Iterator[Region]:
        """A region that prepares and runs one data collective: an exception raised in it before
        the collective's agreement reaches every rank as the same error (through the agreement)."""
        with self._lock:
            region = Region(self, call, context)
            try:
                yield region
            except Exception as problem:
                if region.agreeing:
                    raise
                self.agree("prepare", call, problem, context=context)
                raise  # not reached: agree raises the collective error


class Region:
    """One data collective on a :class:`Communicator`, agreed before its data moves."""

    def __init__(self, communicator: Communicator, call: str, context: str | None) -> None:
        self._communicator = communicator
        self.call = call
        self.context = context
        self.agreeing = False  # set once the agreement starts: later errors are not reported again

    def _start(self, op: str, signature: str) -> Any:
        if self.agreeing:
            raise RuntimeError(f"a collective region runs one collective; {self.call} asked for a second")
        self.agreeing = True
        communicator = self._communicator
        communicator.agree(op, f"{self.call} [{op} {signature}]", context=self.context)
        collective_counts[op] += 1
        return communicator._comm if communicator.size > 1 else None

    def _complete(self, request: Any, op: str) -> None:
        _wait(
            request.Test,
            f"{op} for {self.call} (call {self._communicator.sequence})",
            lambda: "every rank agreed to it, but some rank has not completed it",
            False,
            collective_timeout(),
        )

    def check(self) -> None:
        """Agree without moving data."""
        self._start("check", "")

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """The elementwise sum of every rank's ``values`` (same shape and dtype everywhere)."""
        send = np.asarray(values, dtype=_sum_dtype(values.dtype), order="C")
        recv = np.empty_like(send)
        comm = self._start("allreduce", f"{send.shape} {send.dtype.str}")
        if comm is None:
            recv[...] = send
        else:
            self._complete(comm.Iallreduce(send, recv, op=_mpi().SUM), "allreduce")
        return recv.astype(values.dtype, copy=False)

    def broadcast_from(
        self, values: np.ndarray | None, root: int, shape: Sequence[int], dtype: Any
    ) -> np.ndarray:
        """``root``'s array on every rank (others pass None or anything; ``shape``/``dtype`` known)."""
        dtype = np.dtype(dtype)
        is_root = self._communicator.rank == root
        buffer = np.array(values, dtype=dtype, order="C") if is_root else np.empty(tuple(shape), dtype=dtype)
        if tuple(buffer.shape) != tuple(shape):
            raise ValueError(f"the broadcast value has shape {list(buffer.shape)}, expected {list(shape)}")
        comm = self._start("broadcast", f"root {root} {tuple(shape)} {dtype.str}")
        if comm is not None:
            self._complete(comm.Ibcast(buffer.reshape(-1).view(np.uint8), root=root), "broadcast")
        return buffer

    def allgatherv(self, local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Concatenation of every rank's flat ``local`` (rank r sends ``counts[r]`` elements)."""
        itemsize = local.dtype.itemsize
        send = np.asarray(local, order="C").reshape(-1).view(np.uint8)
        recv = np.empty(int(sum(counts)) * itemsize, dtype=np.uint8)
        byte_counts = [int(c) * itemsize for c in counts]
        comm = self._start("allgatherv", f"{list(counts)} {local.dtype.str}")
        if comm is None:
            recv[...] = send
        else:
            spec = [recv, (byte_counts, _displacements(byte_counts)), _mpi().BYTE]
            self._complete(comm.Iallgatherv(send, spec), "allgatherv")
        return recv.view(local.dtype)

    def alltoallv(
        self, send: np.ndarray, send_counts: Sequence[int], recv_counts: Sequence[int]
    ) -> np.ndarray:
        """Personalised exchange: ``send`` holds consecutive blocks for ranks 0, 1, …"""
        itemsize = send.dtype.itemsize
        send_bytes = np.asarray(send, order="C").reshape(-1).view(np.uint8)
        sb = [int(c) * itemsize for c in send_counts]
        rb = [int(c) * itemsize for c in recv_counts]
        recv = np.empty(sum(rb), dtype=np.uint8)
        comm = self._start("alltoallv", send.dtype.str)
        if comm is None:
            recv[...] = send_bytes
        else:
            byte = _mpi().BYTE
            request = comm.Ialltoallv(
                [send_bytes, (sb, _displacements(sb)), byte], [recv, (rb, _displacements(rb)), byte]
            )
            self._complete(request, "alltoallv")
        return recv.view(send.dtype)

    def reduce_scatterv(self, send: np.ndarray, recv_counts: Sequence[int]) -> np.ndarray:
        """Sum every rank's ``send`` and give rank r its block of ``recv_counts[r]`` elements."""
        work = np.asarray(send, dtype=_sum_dtype(send.dtype), order="C").reshape(-1)
        recv = np.empty(int(recv_counts[self._communicator.rank]), dtype=work.dtype)
        comm = self._start("reduce_scatter", f"{list(recv_counts)} {send.dtype.str}")
        if comm is None:
            recv[...] = work
        else:
            counts = [int(c) for c in recv_counts]
            self._complete(
                comm.Ireduce_scatter(work, recv, recvcounts=counts, op=_mpi().SUM), "reduce_scatter"
            )
        return recv.astype(send.dtype, copy=False)

    def allgather_objects(self, item: Any) -> list[Any]:
        """Every rank's small picklable ``item`` (shapes, dtype names), in rank order."""
        payload = np.frombuffer(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
        comm = self._start("allgather_objects", "")
        if comm is None:
            return [item]
        sizes = np.empty(self._communicator.size, np.int64)
        self._complete(comm.Iallgather(np.array([payload.size], np.int64), sizes), "allgather_objects")
        recv = np.empty(int(sizes.sum()), np.uint8)
        counts = [int(s) for s in sizes]
        request = comm.Iallgatherv(payload, [recv, (counts, _displacements(counts)), _mpi().BYTE])
        self._complete(request, "allgather_objects")
        starts = np.cumsum([0, *counts])
        return [pickle.loads(recv[starts[r] : starts[r + 1]].tobytes()) for r in range(len(counts))]


_FLOAT32 = np.dtype(np.float32)


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    # MPI has no portable float16 sum: add half-precision data in float32 and round once after.
    return _FLOAT32 if dtype.char == "e" else dtype


def _displacements(counts: Sequence[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        out.append(total)
        total += c
    return out


# ----------------------------------------------------------------- the world and faults
_world: Communicator | None = None
_world_lock = threading.Lock()


def world() -> Communicator:
    """Every rank of the job."""
    global _world
    if _world is None:
        with _world_lock:
            if _world is None:
                _world = Communicator(_mpi().COMM_WORLD, "the world communicator")
    return _world


_mpi4py_abort_status = 0


def _install_fault_handlers(MPI: Any) -> None:
    """In a job of several ranks: an uncaught exception or an ``os._exit`` of the MPI process
    aborts the job, and a rank that ends its program answers the others' collectives until they
    end too. (A plain ``python script.py`` is a world of one: nothing is changed.)"""
    if MPI.COMM_WORLD.Get_size() == 1:
        return
    previous_hook = sys.excepthook

    def abort_on_uncaught(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
        previous_hook(kind, error, traceback)
        if MPI.Is_initialized() and not MPI.Is_finalized():
            sys.stderr.write(
                f"klflow: rank {MPI.COMM_WORLD.Get_rank()}: uncaught {kind.__name__}; aborting the job\n"
            )
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = abort_on_uncaught
    _guard_abrupt_exit(MPI)
    _watch_mpi4py_abort_status(MPI)
    atexit.register(_serve_until_every_rank_ends)


def _guard_abrupt_exit(MPI: Any) -> None:
    """``os._exit`` in an MPI rank skips ``MPI_Finalize``: the others can never finish, and
    MPICH's launcher then kills them and may report success (it counts the ranks it kills as
    exit code 0). Turn it into ``MPI_Abort`` with a non-zero code. Processes forked from the rank
    (``multiprocessing`` workers) keep the plain ``os._exit``."""
    process_id = os.getpid()
    plain_exit = os._exit

    def exit_aborting_the_job(status: int) -> None:
        if os.getpid() == process_id and MPI.Is_initialized() and not MPI.Is_finalized():
            code = status or 1
            sys.stderr.write(
                f"klflow: rank {MPI.COMM_WORLD.Get_rank()} called os._exit({status}) while the job's MPI "
                f"is running; the other ranks could not finish, so the job is aborted (code {code})\n"
            )
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(code)
        plain_exit(status)

    os._exit = exit_aborting_the_job


def _watch_mpi4py_abort_status(MPI: Any) -> None:
    """``python -m mpi4py`` records a failing exit (``sys.exit(3)``, an error) and aborts the job
    when the process ends; keep a copy, so that the exit hook does not delay that abort."""
    original = getattr(MPI, "_set_abort_status", None)
    if original is None:
        return

    def recording(status: int) -> None:
        global _mpi4py_abort_status
        _mpi4py_abort_status = status
        original(status)

    MPI._set_abort_status = recording


def _serve_until_every_rank_ends() -> None:
    MPI = _mpi()
    communicator = _world
    if communicator is None or communicator._comm is None or MPI.Is_finalized() or _mpi4py_abort_status:
        return
    if not communicator._lock.acquire(timeout=1.0):
        return  # a daemon thread is inside a collective: MPI_Finalize decides
    noted = False
    try:
        while True:
            try:
                communicator.agree("exit", EXIT_CALL, forever=True)
                return
            except (CollectiveMismatchError, CollectiveError, TypeError, ValueError) as err:
                if not noted:
                    sys.stderr.write(
                        f"klflow: rank {communicator.rank} has ended its program; it answers the other "
                        f"ranks' klflow calls with an error until they end too: {err}\n"
                    )
                    sys.stderr.flush()
                    noted = True
    finally:
        communicator._lock.release()


# ----------------------------------------------------------------- module-level conveniences
def agree(call: str, problem: BaseException | None = None, context: str | None = None) -> None:
    """An agreement with no data on the world: the same exception on every rank if any rank found
    a ``problem`` or describes ``call`` differently."""
    world().agree("check", call, problem, context=context)


def collective(call: str, context: str | None = None) -> contextlib.AbstractContextManager[Region]:
    """A :class:`Region` on the world communicator: ``with comm.collective(call) as c: ...``."""
    return world().collective(call, context)


def allreduce_sum(values: np.ndarray, *, call: str) -> np.ndarray:
    with collective(call) as c:
        return c.allreduce_sum(values)


def allgather_objects(
    item: Any, *, call: str, problem: BaseException | None = None, context: str | None = None
) -> list[Any]:
    """Every rank's small ``item``, after an agreement that reports any rank's ``problem``."""
    with collective(call, context) as c:
        if problem is not None:
            raise problem
        return c.allgather_objects(item)
