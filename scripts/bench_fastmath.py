"""Time the vectorisable ``log64``/``exp64`` against NumPy and against numba loops over ``math``.

Each kernel maps 2**24 float64 values (128 MiB in, 128 MiB out) and is timed single-threaded and
with ``parallel=True``/``prange``; the table shows medians in milliseconds and each time divided by
that of the ``fastmath`` loop.

    PYTHONPATH=src .venv/bin/python scripts/bench_fastmath.py [--repeats 15] [--log2-size 24]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange

from klflow.kernels.fastmath import exp64, log64


def _serial_loop(function: Callable[[float], float]) -> Callable[[np.ndarray, np.ndarray], None]:
    @njit
    def loop(values: np.ndarray, out: np.ndarray) -> None:
        for i in range(values.size):
            out[i] = function(values[i])

    return loop


def _parallel_loop(function: Callable[[float], float]) -> Callable[[np.ndarray, np.ndarray], None]:
    @njit(parallel=True)
    def loop(values: np.ndarray, out: np.ndarray) -> None:
        for i in prange(values.size):
            out[i] = function(values[i])

    return loop


@njit(inline="always")
def _math_log(x: float) -> float:
    # math.log raises on 0 and negatives in Python but not in numba; keep it to positive inputs.
    return math.log(x)


@njit(inline="always")
def _math_exp(x: float) -> float:
    return math.exp(x)


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # compile / warm the pages
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--log2-size", type=int, default=24)
    args = parser.parse_args()

    size = 1 << args.log2_size
    rng = np.random.default_rng(0)
    cases = {
        # Positive values over a wide exponent range, as the log of a probability sees.
        "log": (np.exp2(rng.uniform(-60.0, 60.0, size)), log64, _math_log, np.log),
        # Arguments whose exp neither overflows nor underflows.
        "exp": (rng.uniform(-700.0, 700.0, size), exp64, _math_exp, np.exp),
    }
    threads = numba.get_num_threads()
    print(f"{size} float64 values, {args.repeats} repeats, numba threads for prange: {threads}")
    header = f"{'kernel':<6} {'variant':<22} {'median ms':>10} {'x fastmath':>11} {'GB/s':>7}"
    print(header)
    print("-" * len(header))
    for name, (values, fast, libm, numpy_function) in cases.items():
        out = np.empty_like(values)
        moved_bytes = 2 * values.nbytes
        rows = {
            "fastmath serial": _serial_loop(fast),
            "math serial": _serial_loop(libm),
            "fastmath prange": _parallel_loop(fast),
            "math prange": _parallel_loop(libm),
        }
        timings = {label: _median_ms(lambda loop=loop: loop(values, out), args.repeats)
                   for label, loop in rows.items()}
        timings[f"np.{name} (1 thread)"] = _median_ms(
            lambda: numpy_function(values, out=out), args.repeats)
        for label, ms in timings.items():
            reference = timings["fastmath prange" if "prange" in label else "fastmath serial"]
            print(f"{name:<6} {label:<22} {ms:10.2f} {ms / reference:11.2f} "
                  f"{moved_bytes / ms / 1e6:7.1f}")


if __name__ == "__main__":
    main()
