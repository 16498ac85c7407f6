"""The compile notice, the decorators, and the worker threads the CPU kernels run on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from klflow.kernels import jit, pool

HANG_GUARD_S = 900

FIRST_CALLS = textwrap.dedent("""
    import numpy as np
    import klflow as flow
    from klflow.kernels import jit
    jit.NOTICE_AFTER_S = 0.0  # any compile counts as long here
    x = np.linspace(-1.0, 1.0, 100)
    for reduction in ("none", "sum", "mean"):
        for dtype in (np.float32, np.float64):
            flow.nn.functional.kl_div(x.astype(dtype), np.abs(x).astype(dtype), reduction=reduction)
""")


def test_a_long_compile_says_so_once_and_a_cached_run_is_silent(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("MPI_LOCALRANKID", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", FIRST_CALLS], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    notices = [line for line in runs[0].stderr.splitlines() if line.startswith("klflow: compiling")]
    assert len(notices) == 1, runs[0].stderr  # six kernels compiled, one line
    assert str(tmp_path) in notices[0]
    assert "klflow:" not in runs[1].stderr  # everything loaded from the cache


def test_only_the_first_rank_of_a_node_speaks(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "MPI_LOCALRANKID": "1"}
    run = subprocess.run(
        [sys.executable, "-c", FIRST_CALLS], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert run.returncode == 0 and "klflow:" not in run.stderr, run.stderr


def test_an_inlinable_runs_compiled_from_python_and_inside_kernels():
    @jit.inlinable
    def halve(value):
        return value / 2

    @jit.jit
    def quarter(value):
        return halve(halve(value))

    assert halve(3.0) == 1.5 and quarter(3.0) == 0.75
    assert halve.__wrapped__.__name__ == "halve"


# ------------------------------------------------------------------ the worker threads
@pytest.fixture
def three_threads():
    before = pool.thread_count()
    pool.set_thread_count(3)
    yield
    pool.set_thread_count(before)


def test_every_chunk_runs_once(three_threads):
    done = []
    lock = threading.Lock()

    def work(index):
        with lock:
            done.append(index)

    pool.run(work, 50)
    assert sorted(done) == list(range(50))
    pool.run(work, 0)
    assert len(done) == 50


def test_an_error_in_a_chunk_reaches_the_caller_after_the_others_finish(three_threads):
    finished = []

    def work(index):
        if index == 3:
            raise ZeroDivisionError("chunk 3")
        finished.append(index)

    with pytest.raises(ZeroDivisionError, match="chunk 3"):
        pool.run(work, 10)
    assert sorted(finished) == [i for i in range(10) if i != 3]


def test_the_workers_follow_the_cap(three_threads):
    pool.run(lambda index: None, 8)
    assert pool.worker_count() <= 2
    pool.set_thread_count(1)
    assert pool.worker_count() == 0
    ran_on = set()
    pool.run(lambda index: ran_on.add(threading.get_ident()), 6)
    assert ran_on == {threading.get_ident()}  # one thread: the caller alone


@pytest.mark.parametrize("bad", [0, -2, 2.0, None])
def test_a_bad_thread_count_is_refused(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        pool.set_thread_count(bad)
