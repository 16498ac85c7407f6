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


_ROW_LANES = 8  # independent running sums per row: the additions overlap instead of waiting


@jit
def _row_sums(values: np.ndarray, sums: np.ndarray, errors: np.ndarray) -> None:
    rows, n = values.shape
    lane_sums = np.zeros(_ROW_LANES)
    lane_errors = np.zeros(_ROW_LANES)
    for r in range(rows):
        lane_sums[:] = 0.0
        lane_errors[:] = 0.0
        full = n - n % _ROW_LANES
        for i in range(0, full, _ROW_LANES):
            for lane in range(_ROW_LANES):
                value = np.float64(values[r, i + lane])
                total = lane_sums[lane]
                running = total + value
                part = running - total
                lane_errors[lane] += abs((total - (running - part)) + (value - part))  # TwoSum's error
                lane_sums[lane] = running
        magnitude = lane_errors.sum()
        total = 0.0
        for i in range(full, n):
            value = np.float64(values[r, i])
            running = total + value
            part = running - total
            magnitude += abs((total - (running - part)) + (value - part))
            total = running
        for lane in range(_ROW_LANES):  # the lanes, combined the same way
            value = lane_sums[lane]
            running = total + value
            part = running - total
            magnitude += abs((total - (running - part)) + (value - part))
            total = running
        sums[r] = total + 0.0  # an exact zero is +0.0, as the exact states give it
        errors[r] = magnitude


@jit
def _column_sums(values: np.ndarray, sums: np.ndarray, errors: np.ndarray) -> None:
    """The same for the columns of ``values`` (n, columns): vectorised across the columns."""
    n, columns = values.shape
    sums[:] = 0.0
    errors[:] = 0.0
    for i in range(n):
        for c in range(columns):
            value = np.float64(values[i, c])
            total = sums[c]
            running = total + value
            part = running - total
            errors[c] += abs((total - (running - part)) + (value - part))
            sums[c] = running
    for c in range(columns):
        sums[c] += 0.0


def round_row_sums(values: np.ndarray, divisor: int, dtype: np.dtype, columns: bool = False) -> np.ndarray:
    """:func:`round_rows` of :func:`row_states` of ``values`` (2-D; with ``columns``, of its
    transpose), faster: a row whose float64 running sums made no rounding error (TwoSum finds
    every one) holds its exact sum in that float64, rounded here at once (÷ ``divisor`` in float64
    first, as :func:`rounding.finish`); only the other rows are summed into exact states."""
    from klflow import dtypes

    values = np.ascontiguousarray(values)
    if values.dtype not in (np.float32, np.float64):  # float16, bfloat16: widened exactly
        values = values.astype(np.float32 if values.dtype == np.float16 else np.float64)
    rows = values.shape[1] if columns else values.shape[0]
    sums = np.zeros(rows, dtype=np.float64)
    errors = np.zeros(rows, dtype=np.float64)
    if values.size:
        (_column_sums if columns else _row_sums)(values, sums, errors)
    exact = errors == 0.0  # False for NaN: rows with NaN or infinities take the exact states
    out = np.empty(rows, dtype=dtype)
    with np.errstate(all="ignore"):
        quotients = sums[exact] if divisor == 1 else sums[exact] / np.float64(divisor)
    out[exact] = dtypes.cast_host(quotients, dtypes.of_array(dtype))
    if not exact.all():
        rest = values[:, ~exact].T if columns else values[~exact]
        out[~exact] = round_rows(row_states(rest), divisor, dtype)
    return out
