"""The worker threads that run CPU kernels on chunks of the data.

The CPU kernels are serial ``nogil`` functions; a launcher cuts the data into chunks and hands
them to :func:`run`, which works through them on the calling thread and on up to
``thread_count() - 1`` shared worker threads. klflow therefore uses none of numba's threading
layers (OpenMP, TBB, workqueue), which cannot all be forked or called from several Python
threads at once, and its thread cap is one number for the whole process, whichever Python thread
calls.

>>> squares = [0] * 5
>>> def work(i):
...     squares[i] = i * i
>>> run(work, 5)
>>> squares
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable

_lock = threading.Lock()  # guards the fields below (not held while kernels run)
_thread_count = 1
_tasks: queue.SimpleQueue = queue.SimpleQueue()
_workers: list[threading.Thread] = []
_STOP = None  # a worker that takes this from the queue ends


def thread_count() -> int:
    """The most threads one kernel launch uses, the calling thread included."""
    return _thread_count


def set_thread_count(count: int) -> None:
    """Let kernel launches use up to ``count`` threads (the caller and ``count - 1`` workers)."""
    global _thread_count
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"the thread count must be a positive integer, got {count!r}")
    with _lock:
        _thread_count = count
        surplus = len(_workers) - (count - 1)
        for _ in range(max(0, surplus)):
            _tasks.put(_STOP)
        if surplus > 0:
            del _workers[count - 1 :]


def worker_count() -> int:
    """Worker threads started so far (they start on first need and stay until the cap drops)."""
    return len(_workers)


def _work_loop(tasks: queue.SimpleQueue) -> None:
    while True:
        task = tasks.get()
        if task is _STOP:
            return
        task()


def _ensure_workers(wanted: int) -> None:
    with _lock:
        while len(_workers) < min(wanted, _thread_count - 1):
            worker = threading.Thread(
                target=_work_loop, args=(_tasks,), name=f"klflow-worker-{len(_workers)}", daemon=True
            )
            worker.start()
            _workers.append(worker)


class _Batch:
    """Chunks ``0 .. count-1`` of one launch; any thread may take the next one."""

    def __init__(self, work: Callable[[int], object], count: int) -> None:
        self.work = work
        self.count = count
        self.next_index = itertools.count().__next__  # atomic under the GIL
        self.remaining = count
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def take_chunks(self) -> None:
        while (index := self.next_index()) < self.count:
            try:
                self.work(index)
            except BaseException as error:  # handed to the launching thread
                self.error = self.error or error
            with self.lock:
                self.remaining -= 1
                if self.remaining == 0:
                    self.done.set()


def run(work: Callable[[int], object], count: int) -> None:
    """Call ``work(i)`` for every ``i`` in ``range(count)``, spread over the threads; return when
    all are done, raising the first exception any of them raised."""
    helpers = min(count, _thread_count) - 1
    if helpers <= 0:
        for index in range(count):
            work(index)
        return
    _ensure_workers(helpers)
    batch = _Batch(work, count)
    for _ in range(helpers):
        _tasks.put(batch.take_chunks)
    batch.take_chunks()  # the calling thread works too, and finishes alone if the workers are busy
    batch.done.wait()
    if batch.error is not None:
        raise batch.error


def _forget_workers_after_fork() -> None:
    """In a forked child the workers do not exist: start afresh, with new locks and queue."""
    global _lock, _tasks, _workers
    _lock = threading.Lock()
    _tasks = queue.SimpleQueue()
    _workers = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_after_fork)
