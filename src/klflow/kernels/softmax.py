"""CPU kernels of softmax and log_softmax over the rows of a 2-D array, and their gradients.

The dispatcher (:mod:`klflow.ops.softmax`) moves the softmax dimension last and hands over a
C-contiguous ``(rows, n)`` array. Each row needs its maximum ``m`` and ``total``, the sum of
``exp(x - m)``; the total is the *exact* sum of the float64 terms (:mod:`klflow.kernels.exact_sum`)
rounded once to float64, so it is the same bits however the row is cut: over threads here, over
ranks for a global tensor split along the softmax dimension (whose states are all-reduced as
integers before :func:`round_states` rounds them). The gradients' row sums are exact too.

A local call runs :func:`forward` / :func:`backward`: one pass per row for each statistic while
the row is in cache, rows spread over klflow's threads. A split global tensor runs the same
steps one at a time (:func:`row_maxima`, :func:`row_states`, :func:`round_states`,
:func:`outputs`), exchanging the maxima and states in between. Both go through the same compiled
functions, so the bits cannot differ.

>>> import numpy as np
>>> x = np.array([[0.4296, -1.1957, 2.5463], [1.2552, -1.5747, 0.6923]], dtype=np.float32)
>>> out, maxima, totals = forward(x, log=True)
>>> np.round(out.astype(np.float64), 4).tolist()
[[-2.2513, -3.8766, -0.1346], [-0.4877, -3.3176, -1.0506]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from klflow.kernels import exact_sum, pool
from klflow.kernels import softmax_formula as formula
from klflow.kernels.bfloat16 import is_bfloat16, round_to_bfloat16
from klflow.kernels.bfloat16 import widen as widen_bfloat16
from klflow.kernels.bits import f64_as_i64, i64_as_f64
from klflow.kernels.cpu import narrow, widen
from klflow.kernels.fastmath import exp64, log64
from klflow.kernels.jit import inlinable, jit, variant
from klflow.kernels.vector_width import use_full_vector_width

BLOCK = 2048  # terms buffered per exact-sum step (L1-resident)
ROWS_SERIAL_BELOW = 1 << 15  # elements under which one thread does every row

combine_max = jit(inline="always")(formula.combine_max)
log_softmax_value = jit(inline="always")(formula.log_softmax_value)
softmax_value = jit(inline="always")(formula.softmax_value)
log_softmax_grad = jit(inline="always")(formula.log_softmax_grad)
softmax_grad = jit(inline="always")(formula.softmax_grad)

_DIGIT_BITS = exact_sum.DIGIT_BITS
_DIGIT_MASK = (1 << _DIGIT_BITS) - 1
_NDIGITS = exact_sum.NDIGITS
_LOW_EXPONENT = exact_sum.LOW_EXPONENT
_POSITIVE_INF_BITS = 0x7FF0000000000000


# ------------------------------------------------------------------ rounding an exact state
@inlinable
def state_to_float64(state: np.ndarray, digits: np.ndarray) -> float:
    """The exact sum a state holds, correctly rounded (to nearest, ties to even) to float64; what
    :func:`klflow.kernels.exact_sum.to_float64` gives, compiled, for one state per row.
    ``digits`` is scratch of ``NDIGITS`` int64."""
    nans = state[exact_sum.NAN_COUNT]
    positive_infs = state[exact_sum.POS_INF_COUNT]
    negative_infs = state[exact_sum.NEG_INF_COUNT]
    if nans != 0 or (positive_infs != 0 and negative_infs != 0):
        return np.nan
    if positive_infs != 0:
        return np.inf
    if negative_infs != 0:
        return -np.inf
    # Digits into [0, 2**32); the carry out of the top one is the sign (0 or -1).
    carry = np.int64(0)
    for k in range(_NDIGITS):
        value = state[k] + carry
        carry = value >> _DIGIT_BITS
        digits[k] = value - (carry << _DIGIT_BITS)
    negative = carry < 0
    if negative:  # the magnitude: 2**(32 * NDIGITS) minus the digits, borrowing upwards
        borrow = np.int64(0)
        for k in range(_NDIGITS):
            value = -digits[k] - borrow
            borrow = np.int64(1) if value < 0 else np.int64(0)
            digits[k] = value + (borrow << _DIGIT_BITS)
    top = _NDIGITS - 1
    while top >= 0 and digits[top] == 0:
        top -= 1
    if top < 0:
        return 0.0
    high = np.uint64(digits[top])
    middle = np.uint64(digits[top - 1]) if top >= 1 else np.uint64(0)
    low = np.uint64(digits[top - 2]) if top >= 2 else np.uint64(0)
    sticky = False
    for k in range(top - 2):
        if digits[k] != 0:
            sticky = True
            break
    width = 0  # bits of the top digit, 1..32
    probe = digits[top]
    while probe != 0:
        probe >>= 1
        width += 1
    shift_width = np.uint64(width)
    # The top 64 bits of the three digits, and the exponent of their last bit.
    window = (
        (high << (np.uint64(64) - shift_width))
        | (middle << (np.uint64(32) - shift_width))
        | (low >> shift_width)
    )
    if (low & ((np.uint64(1) << shift_width) - np.uint64(1))) != np.uint64(0):
        sticky = True
    last_bit_exponent = _LOW_EXPONENT + _DIGIT_BITS * (top - 2) + width
    # Keep 53 bits, or fewer where the result is subnormal (down to the grid 2**-1074).
    drop = max(11, -1074 - last_bit_exponent)
    drop = min(drop, 63)  # unreachable for sums of doubles, which are multiples of 2**-1074
    drop_bits = np.uint64(drop)
    kept = window >> drop_bits
    rest = window & ((np.uint64(1) << drop_bits) - np.uint64(1))
    half = np.uint64(1) << (drop_bits - np.uint64(1))
    if rest > half or (rest == half and (sticky or (kept & np.uint64(1)) != np.uint64(0))):
        kept += np.uint64(1)
    # With the implicit bit in ``kept``, adding it to the exponent field gives the bits of a
    # normal result, of a subnormal one (field 0), and the carry of a round-up, all at once.
    field = last_bit_exponent + drop + 52 + 1023 - 1
    if field >= 2046:  # beyond the largest binade: overflow (and the shift below would too)
        return -np.inf if negative else np.inf
    bits = (np.int64(field) << 52) + np.int64(kept)
    result = np.inf if bits >= _POSITIVE_INF_BITS else i64_as_f64(bits)
    return -result if negative else result


@jit(nogil=True)
def _round_rows(states: np.ndarray, maxima: np.ndarray, totals: np.ndarray) -> None:
    digits = np.empty(_NDIGITS, dtype=np.int64)
    for r in range(states.shape[0]):
        if math.isfinite(maxima[r]):
            totals[r] = state_to_float64(states[r], digits)
        else:  # a NaN or an infinity decides the row: NaN everywhere (as PyTorch)
            totals[r] = np.nan


@jit(nogil=True)
def _round_plain(states: np.ndarray, totals: np.ndarray) -> None:
    digits = np.empty(_NDIGITS, dtype=np.int64)
    for r in range(states.shape[0]):
        totals[r] = state_to_float64(states[r], digits)


# ------------------------------------------------------------------ per-row steps
_MAGNITUDE_BITS = 0x7FFFFFFFFFFFFFFF


@inlinable
def _row_max(row: np.ndarray) -> float:
    """The row's maximum as :func:`combine_max` defines it (NaN if any, +0.0 above -0.0), as an
    integer maximum of order-preserving keys, which vectorises (a float maximum does not)."""
    largest = np.int64(-_MAGNITUDE_BITS - 1)  # below every key
    nans = 0
    for j in range(row.size):
        value = widen(row[j])
        bits = f64_as_i64(value)
        largest = max(largest, bits ^ ((bits >> 63) & _MAGNITUDE_BITS))
        nans += value != value
    if nans:
        return np.nan
    if row.size == 0:
        return -np.inf
    return i64_as_f64(largest ^ ((largest >> 63) & _MAGNITUDE_BITS))


@inlinable
def _add_exp_terms(row: np.ndarray, m: float, state: np.ndarray, buffer: np.ndarray) -> None:
    """Add exp(x - m) of every element exactly (each term lies in [0, 1])."""
    for start in range(0, row.size, BLOCK):
        piece = row[start : min(start + BLOCK, row.size)]
        largest = np.int64(0)
        for j in range(piece.size):
            term = exp64(widen(piece[j]) - m)
            buffer[j] = term
            largest = max(largest, f64_as_i64(term))
        exact_sum.add_terms_bounded(state, buffer, piece.size, largest)


@inlinable
def _add_grad_terms(
    row: np.ndarray,
    grad: np.ndarray,
    m: float,
    total: float,
    log: bool,
    state: np.ndarray,
    buffer: np.ndarray,
) -> None:
    """Add every g (log_softmax) or g × softmax (softmax) of a row exactly."""
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        piece = row[start:stop]
        grads = grad[start:stop]
        largest = np.int64(0)
        for j in range(piece.size):
            g = widen(grads[j])
            if not log:
                g = g * softmax_value(exp64(widen(piece[j]) - m), total)
            buffer[j] = g
            largest = max(largest, f64_as_i64(g) & 0x7FFFFFFFFFFFFFFF)
        exact_sum.add_terms_bounded(state, buffer, piece.size, largest)


@inlinable
def _write_outputs(row: np.ndarray, out: np.ndarray, m: float, total: float, log: bool) -> None:
    if log:
        log_total = log64(total)
        for j in range(row.size):
            out[j] = narrow(out, log_softmax_value(widen(row[j]) - m, log_total))
    else:
        for j in range(row.size):
            out[j] = narrow(out, softmax_value(exp64(widen(row[j]) - m), total))


@inlinable
def _write_grads(
    row: np.ndarray, grad: np.ndarray, out: np.ndarray, m: float, total: float, grad_total: float, log: bool
) -> None:
    for j in range(row.size):
        p = softmax_value(exp64(widen(row[j]) - m), total)
        if log:
            out[j] = narrow(out, log_softmax_grad(widen(grad[j]), p, grad_total))
        else:
            out[j] = narrow(out, softmax_grad(widen(grad[j]), p, grad_total))


# ------------------------------------------------------------------ kernels (one case each)
def _make_forward_kernel(log: bool) -> Callable:
    def forward_kernel(x, out, maxima, totals):
        use_full_vector_width()
        state = np.empty(exact_sum.STATE_LEN, dtype=np.int64)
        digits = np.empty(_NDIGITS, dtype=np.int64)
        buffer = np.empty(BLOCK, dtype=np.float64)
        for r in range(x.shape[0]):
            row = x[r]
            m = _row_max(row)
            if math.isfinite(m):
                state[:] = 0
                _add_exp_terms(row, m, state, buffer)
                total = state_to_float64(state, digits)
            else:
                total = np.nan
            maxima[r] = m
            totals[r] = total
            _write_outputs(row, out[r], m, total, log)

    return forward_kernel


def _make_backward_kernel(log: bool) -> Callable:
    def backward_kernel(x, grad, maxima, totals, out):
        use_full_vector_width()
        state = np.empty(exact_sum.STATE_LEN, dtype=np.int64)
        digits = np.empty(_NDIGITS, dtype=np.int64)
        buffer = np.empty(BLOCK, dtype=np.float64)
        for r in range(x.shape[0]):
            state[:] = 0
            _add_grad_terms(x[r], grad[r], maxima[r], totals[r], log, state, buffer)
            grad_total = state_to_float64(state, digits)
            _write_grads(x[r], grad[r], out[r], maxima[r], totals[r], grad_total, log)

    return backward_kernel


def _make_maxima_kernel() -> Callable:
    def maxima_kernel(x, maxima):
        use_full_vector_width()
        for r in range(x.shape[0]):
            maxima[r] = _row_max(x[r])

    return maxima_kernel


def _make_states_kernel() -> Callable:
    def states_kernel(x, maxima, states):
        use_full_vector_width()
        buffer = np.empty(BLOCK, dtype=np.float64)
        for r in range(x.shape[0]):
            if math.isfinite(maxima[r]):
                _add_exp_terms(x[r], maxima[r], states[r], buffer)

    return states_kernel


def _make_grad_states_kernel(log: bool) -> Callable:
    def grad_states_kernel(x, grad, maxima, totals, states):
        use_full_vector_width()
        buffer = np.empty(BLOCK, dtype=np.float64)
        for r in range(x.shape[0]):
            _add_grad_terms(x[r], grad[r], maxima[r], totals[r], log, states[r], buffer)

    return grad_states_kernel


def _make_outputs_kernel(log: bool) -> Callable:
    def outputs_kernel(x, maxima, totals, out):
        use_full_vector_width()
        for r in range(x.shape[0]):
            _write_outputs(x[r], out[r], maxima[r], totals[r], log)

    return outputs_kernel


def _make_grads_kernel(log: bool) -> Callable:
    def grads_kernel(x, grad, maxima, totals, grad_totals, out):
        use_full_vector_width()
        for r in range(x.shape[0]):
            _write_grads(x[r], grad[r], out[r], maxima[r], totals[r], grad_totals[r], log)

    return grads_kernel


# ------------------------------------------------------------------ launchers
def _view(a: np.ndarray) -> np.ndarray:
    """The kernels' view: float16 as its uint16 bits (numba has no CPU float16)."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _over_rows(rows: int, n: int, call: Callable[[int, int], Any]) -> None:
    """``call(lo, hi)`` for ranges of rows spread over klflow's threads."""
    threads = pool.thread_count()
    if rows * n < ROWS_SERIAL_BELOW or threads == 1 or rows == 1:
        call(0, rows)
        return
    count = min(rows, threads * 4)
    step = -(-rows // count)
    spans = [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]
    pool.run(lambda index: call(*spans[index]), len(spans))


def forward(x: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log_softmax or softmax of every row of a C-contiguous 2-D ``x``, the row maxima, the row
    totals), the statistics in float64."""
    if is_bfloat16(x.dtype):  # the float64 kernel on the exactly widened values, rounded once
        out, maxima, totals = forward(widen_bfloat16(x), log)
        return round_to_bfloat16(out), maxima, totals
    rows, n = x.shape
    out = np.empty_like(x)
    maxima = np.empty(rows, dtype=np.float64)
    totals = np.empty(rows, dtype=np.float64)
    kernel = variant(_make_forward_kernel, log)
    xv, ov = _view(x), _view(out)
    _over_rows(rows, n, lambda lo, hi: kernel(xv[lo:hi], ov[lo:hi], maxima[lo:hi], totals[lo:hi]))
    return out, maxima, totals


def backward(
    x: np.ndarray, grad: np.ndarray, maxima: np.ndarray, totals: np.ndarray, log: bool
) -> np.ndarray:
    """d loss/d x from the output's gradient ``grad`` (like ``x``) and the forward statistics."""
    if is_bfloat16(x.dtype):
        return round_to_bfloat16(backward(widen_bfloat16(x), widen_bfloat16(grad), maxima, totals, log))
    rows, n = x.shape
    out = np.empty_like(x)
    kernel = variant(_make_backward_kernel, log)
    xv, gv, ov = _view(x), _view(grad), _view(out)
    _over_rows(rows, n, lambda lo, hi: kernel(xv[lo:hi], gv[lo:hi], maxima[lo:hi], totals[lo:hi], ov[lo:hi]))
    return out


def row_maxima(x: np.ndarray) -> np.ndarray:
    """Every row's maximum in float64 (-inf for an empty row; NaN if the row holds one)."""
    x = widen_bfloat16(x)
    rows, n = x.shape
    maxima = np.empty(rows, dtype=np.float64)
    kernel = variant(_make_maxima_kernel)
    xv = _view(x)
    _over_rows(rows, n, lambda lo, hi: kernel(xv[lo:hi], maxima[lo:hi]))
    return maxima


def row_states(x: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """The exact-sum state of exp(x - m) for every row (zero where ``m`` is not finite)."""
    x = widen_bfloat16(x)
    rows, n = x.shape
    states = np.zeros((rows, exact_sum.STATE_LEN), dtype=np.int64)
    kernel = variant(_make_states_kernel)
    xv = _view(x)
    _over_rows(rows, n, lambda lo, hi: kernel(xv[lo:hi], maxima[lo:hi], states[lo:hi]))
    return states


def round_states(states: np.ndarray, maxima: np.ndarray | None = None) -> np.ndarray:
    """Each row's state rounded to float64; with ``maxima``, NaN for rows whose maximum is not
    finite (the softmax totals)."""
    totals = np.empty(states.shape[0], dtype=np.float64)
    states = np.ascontiguousarray(states)
    if maxima is None:
        _round_plain(states, totals)
    else:
        _round_rows(states, maxima, totals)
    return totals


def outputs(x: np.ndarray, maxima: np.ndarray, totals: np.ndarray, log: bool) -> np.ndarray:
    """log_softmax or softmax of every row from known statistics."""
    if is_bfloat16(x.dtype):
        return round_to_bfloat16(outputs(widen_bfloat16(x), maxima, totals, log))
    rows, n = x.shape
    out = np.empty_like(x)
    kernel = variant(_make_outputs_kernel, log)
    xv, ov = _view(x), _view(out)
    _over_rows(rows, n, lambda lo, hi: kernel(xv[lo:hi], maxima[lo:hi], totals[lo:hi], ov[lo:hi]))
    return out


def grad_states(
    x: np.ndarray, grad: np.ndarray, maxima: np.ndarray, totals: np.ndarray, log: bool
) -> np.ndarray:
    """Every row's exact-sum state of g (log_softmax) or of g × softmax (softmax)."""
    x, grad = widen_bfloat16(x), widen_bfloat16(grad)
    rows, n = x.shape
    states = np.zeros((rows, exact_sum.STATE_LEN), dtype=np.int64)
    kernel = variant(_make_grad_states_kernel, log)
    xv, gv = _view(x), _view(grad)
    _over_rows(
        rows, n, lambda lo, hi: kernel(xv[lo:hi], gv[lo:hi], maxima[lo:hi], totals[lo:hi], states[lo:hi])
    )
    return states


def grads(
    x: np.ndarray,
    grad: np.ndarray,
    maxima: np.ndarray,
    totals: np.ndarray,
    grad_totals: np.ndarray,
    log: bool,
) -> np.ndarray:
    """d loss/d x from the forward statistics and the rows' gradient sums."""
    if is_bfloat16(x.dtype):
        wide = grads(widen_bfloat16(x), widen_bfloat16(grad), maxima, totals, grad_totals, log)
        return round_to_bfloat16(wide)
    rows, n = x.shape
    out = np.empty_like(x)
    kernel = variant(_make_grads_kernel, log)
    xv, gv, ov = _view(x), _view(grad), _view(out)

    def call(lo: int, hi: int) -> None:
        kernel(xv[lo:hi], gv[lo:hi], maxima[lo:hi], totals[lo:hi], grad_totals[lo:hi], ov[lo:hi])

    _over_rows(rows, n, call)
    return out


# ------------------------------------------------------------------ layout helpers for the dispatcher
def move_last(a: np.ndarray, dim: int) -> np.ndarray:
    """``a`` with ``dim`` moved last (a view)."""
    return np.moveaxis(a, dim, -1)


def move_back(a: np.ndarray, dim: int) -> np.ndarray:
    """The inverse of :func:`move_last`, as a C-contiguous array."""
    return np.ascontiguousarray(np.moveaxis(a, -1, dim))


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself if C-contiguous in native byte order, else a C-contiguous copy."""
    return np.ascontiguousarray(a)


def statistics(values: np.ndarray) -> np.ndarray:
    """Host row statistics where the kernels read them (on the CPU: the host)."""
    return values
