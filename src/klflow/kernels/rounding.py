"""Rounding a reduction's exact sum to its result, on the host: the one code both backends finish
with (the CPU's and the GPU's integer states are the same), for local and global losses alike.

:func:`finish` rounds an exact-sum state (:mod:`klflow.kernels.exact_sum`) once to the result's
dtype, or divides the correctly rounded float64 sum; :func:`bounded_value` gives that same result
from the bounded fast path's block sums (:mod:`klflow.kernels.bounded_sum`) where the error bound
proves it, else None.

>>> import numpy as np
>>> from klflow.kernels import exact_sum
>>> state = exact_sum.new_state(); exact_sum.add_float(state, 1.0); exact_sum.add_float(state, 2.0**-24)
>>> finish(state, 1, np.float32), finish(state, 3, np.float32)  # a tie goes to even; 1/3 rounds twice
(array(1., dtype=float32), array(0.33333334, dtype=float32))
"""

from __future__ import annotations

import math

import numpy as np

from klflow.kernels import bounded_sum, exact_sum
from klflow.kernels.bfloat16 import is_bfloat16, round_to_bfloat16

_FORMATS = {  # precision bits, smallest and largest normal exponent
    np.dtype(np.float64): (53, -1022, 1023),
    np.dtype(np.float32): (24, -126, 127),
    np.dtype(np.float16): (11, -14, 15),
}
_BFLOAT16_FORMAT = (8, -126, 127)


def _format(dtype: np.dtype) -> tuple[int, int, int]:
    return _BFLOAT16_FORMAT if is_bfloat16(dtype) else _FORMATS[dtype]


_FLOAT64 = _FORMATS[np.dtype(np.float64)]


def _divided(value: float, divisor: int, dtype: np.dtype) -> np.ndarray:
    """``value / divisor`` in float64 (IEEE division, as NumPy's), then rounded to ``dtype``."""
    if divisor == 0:  # an empty batch: 0/0 is NaN, and x/0 an infinity of x's sign
        quotient = math.nan if value == 0 or math.isnan(value) else math.copysign(math.inf, value)
    else:
        quotient = value / float(divisor)
    return _as_dtype(quotient, dtype)


def _as_dtype(value: float, dtype: np.dtype) -> np.ndarray:
    """A float64 as a 0-d array of ``dtype``, rounded once (bfloat16 straight from float64)."""
    if is_bfloat16(dtype):
        return round_to_bfloat16(np.array(value))
    return np.array(value, dtype=dtype)


def finish(state: np.ndarray, divisor: int, dtype: np.dtype) -> np.ndarray:
    """The exact sum rounded once to ``dtype``, or divided by ``divisor``: a 0-d array.

    A plain sum is rounded straight from the exact state (correctly rounded in any dtype); a
    quotient divides the correctly rounded float64 sum in float64 and rounds that to ``dtype``.
    """
    dtype = np.dtype(dtype)
    if divisor == 1:
        return _as_dtype(exact_sum.round_to_float(state, *_format(dtype)), dtype)
    return _divided(exact_sum.round_to_float(state, *_FLOAT64), divisor, dtype)


def bounded_value(
    state: np.ndarray, magnitude_total: float, divisor: int, dtype: np.dtype
) -> np.ndarray | None:
    """``finish`` of the exact sum of the terms, where the bounded fast path proves it; else None.

    ``state`` holds the exact sum of the block sums and ``magnitude_total`` their magnitudes'
    running total (:mod:`klflow.kernels.bounded_sum`). ``finish`` is monotone in the value it
    rounds, so if both ends of the error interval give the same bits, so does the exact sum
    inside it. Bits are compared, not values: -0.0 and +0.0 must not pass for each other.
    """
    bound = bounded_sum.error_bound(magnitude_total)
    if not math.isfinite(bound):  # a NaN or infinite term, or magnitudes beyond float64
        return None
    dtype = np.dtype(dtype)
    if state[exact_sum.NAN_COUNT] or state[exact_sum.POS_INF_COUNT] or state[exact_sum.NEG_INF_COUNT]:
        # NaN or infinite terms decide, whatever the error
        return finish(state, divisor, dtype)
    center, width = exact_sum.exact_value(state), exact_sum.units(bound)
    ends = []
    for value in (center - width, center + width):
        if divisor == 1:
            ends.append(_as_dtype(exact_sum.round_value(value, *_format(dtype)), dtype))
        else:
            ends.append(_divided(exact_sum.round_value(value, *_FLOAT64), divisor, dtype))
    low, high = ends
    return low if low.tobytes() == high.tobytes() else None
