"""Exact sums of the rows of a 2-D float array: one exact-sum state per row, and their rounding.

A whole float32 tensor takes a fast path instead (:func:`bounded_total`): compensated float64 sums
whose only inexact part, the sum of the rounding errors, is bounded as in
:mod:`klflow.kernels.bounded_sum`; the rounded result is taken where that bound proves it (nearly
always), else the caller sums exactly.

The reductions of tensors (``sum``, ``mean``, the gradient of a broadcast operand) reduce the
trailing axis of a ``(rows, n)`` view; every row's terms go exactly into its own state of
:mod:`klflow.kernels.exact_sum`, so the result is the correctly rounded sum, whatever the order of
the terms or how they are spread over ranks (states of the same row add as integers); plain float64
addition of the second row below gives 0.6000000000000001.

>>> import numpy as np
>>> states = row_states(np.array([[1e300, 1.0, -1e300], [0.1, 0.2, 0.3]]))
>>> round_rows(states, 1, np.float64).tolist()
[1.0, 0.6]
"""

from __future__ import annotations

import numpy as np

from klflow.kernels import exact_sum, rounding
from klflow.kernels.bounded_sum import BLOCK_LIMIT, BoundedSum
from klflow.kernels.jit import jit

_BLOCK = 2048  # terms per add_terms call: the scratch buffer stays in the L1 cache


@jit
def _row_states(values: np.ndarray, states: np.ndarray) -> None:
    rows, n = values.shape
    buf = np.empty(_BLOCK, dtype=np.float64)
    for r in range(rows):
        state = states[r]
        for start in range(0, n, _BLOCK):
            count = min(_BLOCK, n - start)
            for i in range(count):
                buf[i] = np.float64(values[r, start + i])
            exact_sum.add_terms(state, buf, count)


def row_states(values: np.ndarray) -> np.ndarray:
    """``(rows, STATE_LEN)`` int64 states holding the exact sum of each row of ``values`` (any
    float dtype; converted to float64 exactly)."""
    values = np.ascontiguousarray(values)
    if values.dtype != np.float64:
        values = values.astype(np.float64)  # exact for float16/32
    states = np.zeros((values.shape[0], exact_sum.STATE_LEN), dtype=np.int64)
    if values.size:
        _row_states(values, states)
    return states


def round_rows(states: np.ndarray, divisor: int, dtype: np.dtype) -> np.ndarray:
    """Each state's exact sum ÷ ``divisor`` rounded to ``dtype`` (see :func:`rounding.finish`)."""
    flat = states.reshape(-1, exact_sum.STATE_LEN)
    out = np.empty(flat.shape[0], dtype=dtype)
    for r in range(flat.shape[0]):
        out[r] = rounding.finish(flat[r], divisor, dtype)
    return out.reshape(states.shape[:-1])


_LANES = 8


@jit
def _compensated_total(values: np.ndarray, state: np.ndarray) -> float:
    """Add every element into ``state`` as ``_LANES`` running float64 sums per block with their
    exact rounding errors (Knuth's TwoSum, error-free without reassociation), and the errors'
    float64 sums; return the running total of the errors' magnitudes. Only the errors' sums are
    inexact, so the bound of :mod:`klflow.kernels.bounded_sum` applies to those terms: about
    ``2**-40`` of the errors' magnitudes, themselves below ``2**-53`` of the running sums'."""
    magnitude_total = 0.0
    n = values.size
    sums = np.zeros(_LANES)
    errors = np.zeros(_LANES)
    magnitudes = np.zeros(_LANES)
    for start in range(0, n, BLOCK_LIMIT):
        stop = min(start + BLOCK_LIMIT, n)
        sums[:] = 0.0
        errors[:] = 0.0
        magnitudes[:] = 0.0
        i = start
        while i < stop:
            for lane in range(_LANES):
                if i + lane < stop:
                    value = np.float64(values[i + lane])
                    total = sums[lane] + value
                    part = total - sums[lane]
                    error = (sums[lane] - (total - part)) + (value - part)  # exact: Knuth's TwoSum
                    sums[lane] = total
                    errors[lane] += error
                    magnitudes[lane] += abs(error)
            i += _LANES
        for lane in range(_LANES):
            exact_sum.add_float(state, sums[lane])
            exact_sum.add_float(state, errors[lane])
            magnitude_total += magnitudes[lane]
    return magnitude_total


def bounded_total(values: np.ndarray) -> BoundedSum:
    """The fast path's partial sum of every element of a float32 array: the exact state of the
    lanes' sums and error sums, with the magnitude total that bounds what it misses (see
    :func:`_compensated_total`); :func:`klflow.kernels.rounding.bounded_value` decides."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    state = exact_sum.new_state()
    magnitude_total = _compensated_total(flat, state) if flat.size else 0.0
    return BoundedSum(state, magnitude_total)
