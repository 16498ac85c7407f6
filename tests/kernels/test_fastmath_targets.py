"""``fastmath.compiled_for``: the float64 log/exp source compiled for another target gives the CPU's
bits. Here the other target is plain Python with ``klflow.kernels.pyfloat``'s exact primitives,
which is what numba's CUDA simulator runs; on a GPU the CUDA suite compares the device's bits."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from klflow.kernels import fastmath, pyfloat

PYTHON = pyfloat.compiled_fastmath()


@njit
def _cpu_values(values):
    out = np.empty((4, values.size))
    for i in range(values.size):
        v = values[i]
        out[0, i] = fastmath.log64(v)
        out[1, i] = fastmath.exp64(v)
        out[2, i] = fastmath.log64_positive(abs(v))
        out[3, i] = fastmath.log64_normal(abs(v))
    return out


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    bit_patterns = rng.integers(0, np.iinfo(np.int64).max, 4000, dtype=np.int64)
    bit_patterns[::2] *= -1
    return np.concatenate(
        [
            bit_patterns.view(np.float64),  # every exponent, subnormals, NaN payloads
            rng.uniform(-750.0, 712.0, 3000),  # exp's whole range and its thresholds
            rng.uniform(0.0, 3.0, 3000),  # log near 1, where rounding is hardest
            np.float32(rng.uniform(0, 1, 1000)).astype(np.float64),  # widened float32 targets
            [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e-310, 1.0, 2.0, 709.782712893384, -745.2],
        ]
    )


def _same(got: float, want: np.float64) -> bool:
    return np.float64(got).tobytes() == want.tobytes() or (np.isnan(got) and np.isnan(want))


@pytest.mark.parametrize("which", ["log64", "exp64", "log64_positive", "log64_normal"])
def test_python_target_gives_the_cpu_bits(which):
    values = _inputs()
    row = ["log64", "exp64", "log64_positive", "log64_normal"].index(which)
    expected = _cpu_values(values)[row]
    function = getattr(PYTHON, which)
    for v, want in zip(values.tolist(), expected, strict=True):
        argument = abs(v) if which in ("log64_positive", "log64_normal") else v
        if which != "log64" and which != "exp64":
            # These two are specified for positive finite (normal) inputs only.
            if not (np.isfinite(argument) and argument > 0):
                continue
            if which == "log64_normal" and argument < np.finfo(np.float64).tiny:
                continue
        assert _same(function(argument), want), (which, v, function(argument), want)


def test_compiled_functions_call_their_own_targets_versions():
    # log64 calls log64_positive, which calls _log_reduced: all three must be the Python ones,
    # so the result is a Python float, not a CPU dispatcher's.
    assert type(PYTHON.log64(2.0)) is float and type(PYTHON.log64_normal(2.0)) is float
    assert PYTHON.log64 is not fastmath.log64
