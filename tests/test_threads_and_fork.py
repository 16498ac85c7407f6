"""klflow from several Python threads and in forked children, under every numba threading layer.

klflow's CPU kernels run on its own worker threads (kernels/pool.py), never on numba's threading
layer, so what numba's layers cannot do (GNU OpenMP cannot be forked, workqueue aborts when two
threads enter it) does not reach klflow. Each layer installable here runs the scenarios in a
process of its own, started with ``NUMBA_THREADING_LAYER`` set; at the end the process runs a
numba ``prange`` loop itself, which shows the layer was really the one asked for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HANG_GUARD_S = 900  # forks, eight threads and a few compiles; only a hang takes this long
THREAD_CAP = 2

SCENARIOS = textwrap.dedent("""
    import hashlib, multiprocessing, sys, threading
    import numpy as np
    import klflow as flow
    import klflow.nn.functional as F
    from klflow.kernels import cpu, pool

    CAP = int(sys.argv[1])
    N = 3 * cpu.SERIAL_BELOW + 123  # several chunks: the worker threads take part

    def case(seed):
        # forward and backward: the float32 bounded path, the float64 exact path, 'none'
        rng = np.random.default_rng(seed)
        digests = []
        for dtype, reduction in ((np.float32, "mean"), (np.float64, "sum"), (np.float32, "none")):
            x = flow.tensor(rng.standard_normal(N).astype(dtype), requires_grad=True)
            y = flow.tensor(rng.random(N).astype(dtype), requires_grad=True)
            out = F.kl_div(x, y, reduction=reduction)
            out.backward(flow.tensor(np.ones(N, dtype)) if reduction == "none" else None)
            for array in (out.numpy(), x.grad.numpy(), y.grad.numpy()):
                digests.append(hashlib.sha256(array.tobytes()).hexdigest())
        return digests

    # Threads seen by each launch, to check the cap from every Python thread.
    original_run = pool.run
    threads_per_launch = []

    def recording_run(work, count):
        seen, lock = set(), threading.Lock()

        def tracked(index):
            with lock:
                seen.add(threading.get_ident())
            work(index)

        original_run(tracked, count)
        threads_per_launch.append(len(seen))

    pool.run = recording_run


    reference = [case(seed) for seed in range(4)]
    assert flow.env.get_num_threads() == CAP, flow.env.get_num_threads()

    # 1. fork-started children use klflow after the parent did (GNU OpenMP kills them)
    with multiprocessing.get_context("fork").Pool(2) as workers:
        forked = workers.map_async(case, range(4)).get(timeout=600)
    assert forked == reference, "forked children disagree"

    # 2. eight Python threads at once, forward and backward, bit-identical
    results, caps, errors = [None] * 8, [None] * 8, []
    barrier = threading.Barrier(8)

    def in_thread(index):
        try:
            barrier.wait()
            caps[index] = flow.env.get_num_threads()
            results[index] = [case(seed) for seed in range(3)]
        except BaseException as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert all(result == reference[:3] for result in results), "threads disagree"

    # 3. the per-rank cap holds in every Python thread
    assert caps == [CAP] * 8, caps
    assert threads_per_launch and max(threads_per_launch) <= CAP, threads_per_launch
    assert pool.worker_count() <= CAP - 1
    assert sum(t.name.startswith("klflow-worker") for t in threading.enumerate()) <= CAP - 1

    # 4. klflow never started numba's threading layer; a prange loop now starts the one asked for
    from numba.np.ufunc import parallel
    assert not parallel._is_initialized, "klflow started numba's threading layer"
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def count_up(a):
        for i in prange(a.size):
            a[i] += 1

    count_up(np.zeros(100))
    print("layer", numba.threading_layer(), flush=True)
""")


def _tbb_library_folder() -> str | None:
    """Where the PyPI ``tbb`` wheel put libtbb (its folder must be on the loader path for numba)."""
    folder = Path(sys.prefix) / "lib"
    return str(folder) if any(folder.glob("libtbb.so.12*")) else None


def _layer_environment(layer: str) -> dict | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_THREADING", "MPI_LOCAL"))}
    env.update(NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS=str(THREAD_CAP))
    if layer == "tbb":
        folder = _tbb_library_folder()
        if folder is None:
            return None
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (folder, env.get("LD_LIBRARY_PATH")) if p)
    return env


@pytest.mark.parametrize("layer", ["omp", "workqueue", "tbb"])
def test_threads_fork_and_the_thread_cap_under_each_threading_layer(layer):
    env = _layer_environment(layer)
    if env is None:
        pytest.skip("the tbb package is not installed (pip install tbb)")
    done = subprocess.run(
        [sys.executable, "-c", SCENARIOS, str(THREAD_CAP)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert f"layer {layer}" in done.stdout, done.stdout + done.stderr
