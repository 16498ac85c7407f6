"""Time the vectorisable ``log``/``exp`` against NumPy and against numba loops over ``math``.

Each kernel maps 2**24 values (float64: 128 MiB in and out; float32: half that) and is timed
single-threaded and with ``parallel=True``/``prange``; the table shows medians in milliseconds, each
time divided by that of the ``fastmath`` loop run the same way, and the bytes read and written per
second (from the median). A plain copy loop gives the memory-bound floor. The minimum is printed
too: on a machine shared with other work, it is the steadier figure.

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

from klflow.kernels.fastmath import exp32, exp64, log32, log64


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


@njit(inline="always")
def _identity(x: float) -> float:
    return x


def _median_and_min_ms(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    run()  # compile / warm the pages
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--log2-size", type=int, default=24)
    args = parser.parse_args()

    size = 1 << args.log2_size
    rng = np.random.default_rng(0)
    # Positive values over a wide exponent range, as the log of a probability sees, and arguments
    # whose exp neither overflows nor underflows.
    log_arguments = np.exp2(rng.uniform(-60.0, 60.0, size))
    exp_arguments = rng.uniform(-80.0, 80.0, size)
    cases = {
        "log64": (log_arguments, log64, _math_log, np.log),
        "exp64": (exp_arguments, exp64, _math_exp, np.exp),
        "log32": (log_arguments.astype(np.float32), log32, _math_log, np.log),
        "exp32": (exp_arguments.astype(np.float32), exp32, _math_exp, np.exp),
    }
    print(
        f"{size} values per kernel, {args.repeats} repeats, "
        f"numba threads for prange: {numba.get_num_threads()}"
    )
    header = f"{'kernel':<6} {'variant':<22} {'median ms':>10} {'min ms':>8} {'x fastmath':>11} {'GB/s':>7}"
    print(header)
    print("-" * len(header))
    for name, (values, fast, libm, numpy_function) in cases.items():
        out = np.empty_like(values)
        moved_bytes = 2 * values.nbytes
        rows = {
            "fastmath serial": _serial_loop(fast),
            "math serial": _serial_loop(libm),
            "copy serial": _serial_loop(_identity),
            "fastmath prange": _parallel_loop(fast),
            "math prange": _parallel_loop(libm),
            "copy prange": _parallel_loop(_identity),
        }
        timings = {
            label: _median_and_min_ms(lambda loop=loop: loop(values, out), args.repeats)
            for label, loop in rows.items()
        }
        timings[f"np.{numpy_function.__name__} (1 thread)"] = _median_and_min_ms(
            lambda: numpy_function(values, out=out), args.repeats
        )
        for label, (median_ms, min_ms) in timings.items():
            reference = timings["fastmath prange" if "prange" in label else "fastmath serial"][0]
            print(
                f"{name:<6} {label:<22} {median_ms:10.2f} {min_ms:8.2f} "
                f"{median_ms / reference:11.2f} {moved_bytes / median_ms / 1e6:7.1f}"
            )


if __name__ == "__main__":
    main()
