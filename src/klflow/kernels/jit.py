"""How klflow compiles its CPU kernels: two decorators, the on-disk cache, and a compile notice.

``jit`` makes an entry point: ``numba.njit`` with klflow's content-keyed on-disk cache
(:mod:`klflow.kernels.cache`). ``inlinable`` makes a function that kernels call: numba compiles
it once per signature as a plain native function, without the Python wrapper (the wrapper and
its machine code cost as much compile time as a small function itself), and LLVM inlines it into
the loops that call it. A compile of klflow kernels that is still running after
``NOTICE_AFTER_S`` says so once per process on stderr, so that a first call is not a silent wait.

>>> @inlinable
... def twice(value):
...     return 2 * value
>>> @jit
... def add_twice(a, b):
...     return a + twice(b)
>>> add_twice(1, 20), twice(21)  # Python callers of an inlinable get a compiled copy too
(41, 42)
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from numba import njit
from numba.core import event
from numba.extending import overload

from klflow.kernels import cache

NOTICE_AFTER_S = 1.0
# Launchers' variables for a rank's index on its node: only the first rank of a node speaks.
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


def jit(function: Callable | None = None, **options: Any) -> Any:
    """``numba.njit(**options)`` with klflow's kernel cache; usable bare or with options.

    ``inline="always"`` asks numba to inline the function into its callers (numba-level
    inlining re-types the body at every call site, which costs compile time); without it, LLVM
    inlines small callees while optimising, which is how most kernels here are joined.
    """

    def decorate(python_function: Callable) -> Any:
        return cache.enable(njit(**options)(python_function))

    return decorate if function is None else decorate(function)


_variants: dict[tuple, Any] = {}
_variants_lock = threading.Lock()


def variant(make: Callable[..., Callable], *flags: Any) -> Any:
    """The kernel ``make(*flags)`` compiled with ``jit(nogil=True)``, built once per process.

    ``make`` returns a function whose closure holds the flags: numba treats them as constants
    and drops the branches of the other cases before compiling, so each case compiles (and is
    cached) on its own, when first used.
    """
    key = (make, *flags)
    kernel = _variants.get(key)
    if kernel is None:
        with _variants_lock:
            kernel = _variants.get(key)
            if kernel is None:
                kernel = _variants[key] = jit(nogil=True)(make(*flags))
    return kernel


def inlinable(function: Callable) -> Callable:
    """A function for kernels to call: compiled without a Python wrapper, inlined by LLVM.

    Called from Python it runs a compiled (and cached) copy, for tests and examples.
    """
    compiled_for_python: list[Any] = []

    @functools.wraps(function)
    def from_python(*args: Any) -> Any:
        if not compiled_for_python:
            compiled_for_python.append(jit(function))
        return compiled_for_python[0](*args)

    # What numba compiles where compiled code calls the function (register_jitable's route).
    overload(from_python, strict=False)(lambda *args: function)
    return from_python


class _CompileNotice(event.Listener):
    """Prints one line when a compile of klflow kernels has run for ``NOTICE_AFTER_S``."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.said = False

    @staticmethod
    def _is_klflow(event_: event.Event) -> bool:
        dispatcher = (event_.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        return module.startswith("klflow.")

    def on_start(self, event_: event.Event) -> None:
        depth = getattr(self.local, "depth", 0)
        self.local.depth = depth + 1
        if depth == 0 and not self.said and self._is_klflow(event_):
            timer = threading.Timer(NOTICE_AFTER_S, self._say)
            timer.daemon = True
            self.local.timer = timer
            timer.start()

    def on_end(self, event_: event.Event) -> None:
        self.local.depth = getattr(self.local, "depth", 1) - 1
        if self.local.depth == 0:
            timer = getattr(self.local, "timer", None)
            if timer is not None:
                timer.cancel()
                self.local.timer = None

    def _say(self) -> None:
        with self.lock:
            if self.said:
                return
            self.said = True
        if any(os.environ.get(name, "0") not in ("", "0") for name in _LOCAL_RANK_VARIABLES):
            return
        folder = cache.cache_base()
        where = f"cached in {folder}" if folder is not None else "not cached"
        print(
            f"klflow: compiling CPU kernels for this dtype and mode (once; {where}) ...",
            file=sys.stderr,
            flush=True,
        )


_notice = _CompileNotice()
event.register("numba:compile", _notice)


def _hold_the_compiler_during_fork() -> None:
    """A child forked while another thread compiles would inherit numba's compiler lock held by
    a thread that does not exist there, and hang at its first compile: fork waits for it."""
    from numba.core.compiler_lock import global_compiler_lock

    lock = global_compiler_lock._lock

    def fresh_locks_in_child() -> None:
        global _variants_lock
        _variants_lock = threading.Lock()
        lock.release()

    os.register_at_fork(
        before=lock.acquire, after_in_parent=lock.release, after_in_child=fresh_locks_in_child
    )


if hasattr(os, "register_at_fork"):
    _hold_the_compiler_during_fork()
