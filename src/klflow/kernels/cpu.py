"""CPU kernels (numba ``@njit``, parallel) and their launchers.

Tiers: the scalar math lives in :mod:`klflow.kernels.formula`; the ``_kernel`` functions here loop
over flat contiguous arrays; the launcher functions at the bottom accept arrays of any shape and
memory layout, pick the thread split and allocate outputs. No validation happens here.

Every array enters as float32, float64 or float16; float16 travels as its uint16 bit pattern
(numba has no CPU float16) and is widened to float64 on load. All arithmetic is float64, and the
reduced modes add the float64 terms into an exact accumulator (:mod:`klflow.kernels.exact_sum`),
so their value does not depend on the number of threads or on how the data was cut. Float32 and
float16 results of a local loss first try a faster route to the same bits: plain float64 block
sums with a proven error bound (:mod:`klflow.kernels.bounded_sum`).

>>> import numpy as np
>>> x = np.array([-0.9021705, 0.08798598, 1.04686249], np.float32)
>>> y = np.array([1.22386942, -0.89729659, 0.01615712], np.float32)
>>> pointwise(x, y, log_target=False).round(4)
array([ 1.3514,  0.    , -0.0836], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from klflow.kernels import bounded_sum, exact_sum, formula
from klflow.kernels.bits import f64_as_i64, f64_to_half_bits, half_bits_to_f32
from klflow.kernels.bounded_sum import add_any_order
from klflow.kernels.fastmath import exp64, log64, log64_normal, log64_positive

BLOCK = 2048  # terms buffered per exact-sum step: small enough to stay in L1, large to amortise
assert BLOCK <= bounded_sum.BLOCK_LIMIT  # the bounded fast path sums a BLOCK at a time
SERIAL_BELOW = 1 << 15  # elements under which a parallel launch costs more than it saves
SLAB_ELEMENTS = 1 << 18  # contiguous staging size for inputs with irregular strides
ABS_BITS = 0x7FFFFFFFFFFFFFFF  # clears the sign: the bits of |t| order like |t| (NaN above inf)
# Result dtypes the bounded fast path can prove: its bound (~2**-40) is far below their ulp.
BOUNDED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

_jit = dict(cache=True, nogil=True)
_inline = dict(inline="always", cache=True)

kl_term = njit(**_inline)(formula.kl_term)
kl_term_log_target = njit(**_inline)(formula.kl_term_log_target)
input_grad = njit(**_inline)(formula.input_grad)
input_grad_log_target = njit(**_inline)(formula.input_grad_log_target)
target_grad = njit(**_inline)(formula.target_grad)
target_grad_log_target = njit(**_inline)(formula.target_grad_log_target)


# ------------------------------------------------------------------ loads and stores by dtype
def widen(value):  # pragma: no cover - replaced by the overload inside compiled code
    """An element as float64 (float16 arrives as its uint16 bits)."""
    raise NotImplementedError


@overload(widen, inline="always")
def _widen(value):
    if value == types.uint16:
        return lambda value: np.float64(half_bits_to_f32(value))
    return lambda value: np.float64(value)


def narrow(template, value):  # pragma: no cover - replaced by the overload inside compiled code
    """A float64 rounded once to the element type of ``template``'s array."""
    raise NotImplementedError


@overload(narrow, inline="always")
def _narrow(template, value):
    dtype = template.dtype
    if dtype == types.uint16:
        return lambda template, value: f64_to_half_bits(value)
    if dtype == types.float32:
        return lambda template, value: np.float32(value)
    return lambda template, value: value


def can_be_subnormal(value):  # pragma: no cover - replaced by the overload inside compiled code
    """Whether an element as stored can be subnormal once widened to float64 (a constant)."""
    raise NotImplementedError


@overload(can_be_subnormal, inline="always")
def _can_be_subnormal(value):
    # Widened float32 and float16 elements are normal doubles; float64 ones can be subnormal.
    subnormal = value == types.float64
    return lambda value: subnormal


@njit(**_inline)
def log_finite_positive(value):
    """log of an element as stored (float16 as its bits), widened to float64: exact for finite
    elements above zero, an unspecified finite value otherwise. Skipping the special values is a
    third of ``log64``'s work, and float32/float16 elements also skip the subnormal scaling."""
    wide = widen(value)
    if can_be_subnormal(value):
        return log64_positive(wide)
    return log64_normal(wide)


@njit(**_inline)
def _term(x, y, log_target):
    """The loss element of two array elements as stored (float16 as its bits)."""
    wide_y = widen(y)
    if log_target:
        return kl_term_log_target(widen(x), wide_y, exp64(wide_y))
    # kl_term masks zero, negative and NaN targets itself; only +inf needs its true log.
    log_y = log_finite_positive(y)
    log_y = wide_y if wide_y == np.inf else log_y
    return kl_term(widen(x), wide_y, log_y)


@njit(**_inline)
def _term_and_input_grad_log_target(x, y, coef):
    """(the loss element, coef × d element/d x) for a log-probability target, sharing one exp."""
    wide_y = widen(y)
    exp_y = exp64(wide_y)
    return kl_term_log_target(widen(x), wide_y, exp_y), coef * input_grad_log_target(exp_y)


@njit(**_inline)
def _input_grad(y, log_target):
    if log_target:
        return input_grad_log_target(exp64(y))
    return input_grad(y)


@njit(**_inline)
def _target_grad(x, y, log_target):
    if log_target:
        return target_grad_log_target(x, y, exp64(y))
    return target_grad(x, log64(y))


# ------------------------------------------------------------------ kernels (flat, contiguous)
@njit(**_inline)
def _fill_terms(x, y, log_target, buffer, count):
    """Write the terms into ``buffer``; return the largest |term| as bits (an integer maximum
    vectorises where a float one does not), which spares the exact sum a pass."""
    largest = np.int64(0)
    # Two loops instead of a branch per element, so each one vectorises.
    if log_target:
        for i in range(count):
            term = _term(x[i], y[i], True)
            buffer[i] = term
            largest = max(largest, f64_as_i64(term) & ABS_BITS)
    else:
        for i in range(count):
            term = _term(x[i], y[i], False)
            buffer[i] = term
            largest = max(largest, f64_as_i64(term) & ABS_BITS)
    return largest


@njit(**_inline)
def _fill_terms_and_grad(x, y, log_target, coef, grad, buffer, count):
    """``_fill_terms`` that also writes grad = coef × d element/d x. The stores share the term
    loop here: as a loop of their own, streaming from memory ran 5 to 15 % slower (the opposite of
    the bounded path's ``_block_sums``; both measured each way)."""
    largest = np.int64(0)
    if log_target:
        for i in range(count):
            term, grad_value = _term_and_input_grad_log_target(x[i], y[i], coef)
            buffer[i] = term
            largest = max(largest, f64_as_i64(term) & ABS_BITS)
            grad[i] = narrow(grad, grad_value)
    else:
        for i in range(count):
            term = _term(x[i], y[i], False)
            buffer[i] = term
            largest = max(largest, f64_as_i64(term) & ABS_BITS)
            grad[i] = narrow(grad, coef * _input_grad(widen(y[i]), False))
    return largest


@njit(**_inline)
def _fill_input_grad(y, coef, grad, count):
    """grad = coef × d element/d x for probability targets over a block just read (in L1 now), for
    ``_block_sums``: with these stores inside its term loop, streaming from memory ran 1.6× slower
    per element."""
    for i in range(count):
        grad[i] = narrow(grad, coef * _input_grad(widen(y[i]), False))


@njit(**_inline)
def sum_range(x, y, log_target, coef, grad, with_grad, lo, hi, state, buffer):
    """One thread's share of a reduction: add the terms of elements ``lo:hi`` into ``state``,
    ``BLOCK`` at a time through ``buffer`` (and, with ``with_grad``, write their input gradient
    times ``coef`` into ``grad`` in the same pass)."""
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        count = stop - start
        if with_grad:
            largest = _fill_terms_and_grad(
                x[start:stop], y[start:stop], log_target, coef, grad[start:stop], buffer, count
            )
        else:
            largest = _fill_terms(x[start:stop], y[start:stop], log_target, buffer, count)
        exact_sum.add_terms_bounded(state, buffer, count, largest)


@njit(**_jit)
def _merged(states):
    """One state holding the sum of every row of ``states`` (the threads' partial states)."""
    total = states[0].copy()
    for row in range(1, states.shape[0]):
        exact_sum.merge(total, states[row])
    return total


@njit(parallel=True, **_jit)
def _sum_kernel_parallel(x, y, log_target, coef, grad, with_grad, chunks):
    n = x.size
    states = np.zeros((chunks, exact_sum.STATE_LEN), dtype=np.int64)
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        buffer = np.empty(BLOCK, dtype=np.float64)
        lo = min(chunk * per_chunk, n)
        hi = min(lo + per_chunk, n)
        sum_range(x, y, log_target, coef, grad, with_grad, lo, hi, states[chunk], buffer)
    return _merged(states)


@njit(**_jit)
def _sum_kernel_serial(x, y, log_target, coef, grad, with_grad):
    state = np.zeros(exact_sum.STATE_LEN, dtype=np.int64)
    buffer = np.empty(BLOCK, dtype=np.float64)
    sum_range(x, y, log_target, coef, grad, with_grad, 0, x.size, state, buffer)
    return state


@njit(**_inline)
def _block_sums(x, y, log_target, coef, grad, with_grad, count):
    """(the float64 sum of a block's terms in any order, the same of their magnitudes), and the
    fused gradient. One loop per case, so that each vectorises."""
    total = 0.0
    magnitude = 0.0
    if log_target and with_grad:
        # One loop: the term and the gradient share exp(y), which costs more than the stores
        # (a separate gradient loop made this 1.8× slower).
        for i in range(count):
            term, grad_value = _term_and_input_grad_log_target(x[i], y[i], coef)
            total = add_any_order(total, term)
            magnitude = add_any_order(magnitude, abs(term))
            grad[i] = narrow(grad, grad_value)
        return total, magnitude
    if log_target:
        for i in range(count):
            term = _term(x[i], y[i], True)
            total = add_any_order(total, term)
            magnitude = add_any_order(magnitude, abs(term))
    else:
        for i in range(count):
            term = _term(x[i], y[i], False)
            total = add_any_order(total, term)
            magnitude = add_any_order(magnitude, abs(term))
    if with_grad:
        _fill_input_grad(y, coef, grad, count)
    return total, magnitude


@njit(**_jit)
def _add_block_sum(state, total):
    # A call, not inlined: add_float's early returns inside a prange body stop it running in
    # parallel.
    exact_sum.add_float(state, total)


@njit(**_inline)
def bounded_range(x, y, log_target, coef, grad, with_grad, lo, hi, state):
    """One thread's share of the bounded fast path: add the float64 sum of each ``BLOCK`` of
    elements ``lo:hi`` exactly into ``state`` and return the running total of their magnitude
    sums (see :mod:`klflow.kernels.bounded_sum`)."""
    magnitude_total = 0.0
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        total, magnitude = _block_sums(
            x[start:stop], y[start:stop], log_target, coef, grad[start:stop], with_grad, stop - start
        )
        _add_block_sum(state, total)
        magnitude_total += magnitude
    return magnitude_total


@njit(parallel=True, **_jit)
def _bounded_kernel_parallel(x, y, log_target, coef, grad, with_grad, chunks):
    n = x.size
    states = np.zeros((chunks, exact_sum.STATE_LEN), dtype=np.int64)
    magnitudes = np.zeros(chunks)
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        lo = min(chunk * per_chunk, n)
        hi = min(lo + per_chunk, n)
        magnitudes[chunk] = bounded_range(x, y, log_target, coef, grad, with_grad, lo, hi, states[chunk])
    return _merged(states), magnitudes.sum()


@njit(**_jit)
def _bounded_kernel_serial(x, y, log_target, coef, grad, with_grad):
    state = np.zeros(exact_sum.STATE_LEN, dtype=np.int64)
    magnitude_total = bounded_range(x, y, log_target, coef, grad, with_grad, 0, x.size, state)
    return state, magnitude_total


@njit(parallel=True, **_jit)
def _pointwise_kernel(x, y, log_target, out):
    if log_target:
        for i in prange(x.size):
            out[i] = narrow(out, _term(x[i], y[i], True))
    else:
        for i in prange(x.size):
            out[i] = narrow(out, _term(x[i], y[i], False))


@njit(parallel=True, **_jit)
def _input_grad_kernel(y, upstream, coef, log_target, out):
    # ``upstream`` has one element (a reduced loss) or as many as ``y`` (reduction='none').
    if upstream.size == 1:
        scale = coef * widen(upstream[0])
        for i in prange(y.size):
            out[i] = narrow(out, scale * _input_grad(widen(y[i]), log_target))
    else:
        for i in prange(y.size):
            out[i] = narrow(out, coef * widen(upstream[i]) * _input_grad(widen(y[i]), log_target))


@njit(parallel=True, **_jit)
def _target_grad_kernel(x, y, upstream, coef, log_target, out):
    if upstream.size == 1:
        scale = coef * widen(upstream[0])
        for i in prange(y.size):
            out[i] = narrow(out, scale * _target_grad(widen(x[i]), widen(y[i]), log_target))
    else:
        for i in prange(y.size):
            out[i] = narrow(
                out, coef * widen(upstream[i]) * _target_grad(widen(x[i]), widen(y[i]), log_target)
            )


# ------------------------------------------------------------------ layout handling
def _kernel_view(a: np.ndarray) -> np.ndarray:
    """A 1-D view in memory order, float16 as uint16 bits (numba has no CPU float16)."""
    flat = a.ravel(order="K")  # a view for any dense C- or F-ordered array
    return flat.view(np.uint16) if flat.dtype == np.float16 else flat


def _same_memory_order(*arrays: np.ndarray) -> bool:
    """True if every array is one dense block and element i of each flat view is the same index."""
    first = arrays[0]
    if first.flags.c_contiguous:
        return all(a.flags.c_contiguous for a in arrays)
    if first.flags.f_contiguous:
        return all(a.flags.f_contiguous for a in arrays)
    return False


def _slabs(shape: tuple[int, ...], limit: int) -> Iterator[tuple]:
    """Index tuples cutting ``shape`` into row-major pieces of at most ``limit`` elements."""
    if not shape:
        yield ()
        return
    inner = math.prod(shape[1:])
    if inner <= limit or len(shape) == 1:
        step = max(1, limit // max(inner, 1))
        for start in range(0, shape[0], step):
            yield (slice(start, start + step),)
        return
    for i in range(shape[0]):
        for rest in _slabs(shape[1:], limit):
            yield (i, *rest)


def _staged(*arrays: np.ndarray) -> Iterator[tuple[tuple, list[np.ndarray]]]:
    """Pieces of equally shaped arrays as contiguous flat copies, a bounded slab at a time."""
    for index in _slabs(arrays[0].shape, SLAB_ELEMENTS):
        yield index, [_kernel_view(np.ascontiguousarray(a[index])) for a in arrays]


def _chunks_for(n: int) -> int:
    return max(1, min(numba.get_num_threads() * 4, n // BLOCK))


def _sum_flat(x, y, log_target, coef, grad, with_grad):
    if x.size < SERIAL_BELOW:
        return _sum_kernel_serial(x, y, log_target, coef, grad, with_grad)
    return _sum_kernel_parallel(x, y, log_target, coef, grad, with_grad, _chunks_for(x.size))


# ------------------------------------------------------------------ launchers (the backend API)
def reduce_sum(
    x: np.ndarray, y: np.ndarray, log_target: bool, grad_coef: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The exact-sum state of all loss elements; with ``grad_coef``, also d loss/d x × grad_coef,
    written in the same pass (the fused forward+backward)."""
    with_grad = grad_coef is not None
    coef = float(grad_coef) if with_grad else 0.0
    grad = np.empty_like(x) if with_grad else np.empty(0, dtype=x.dtype)
    if x.size == 0:
        return exact_sum.new_state(), grad if with_grad else None
    if _same_memory_order(x, y, grad) if with_grad else _same_memory_order(x, y):
        state = _sum_flat(_kernel_view(x), _kernel_view(y), log_target, coef, _kernel_view(grad), with_grad)
        return state, grad if with_grad else None
    state = exact_sum.new_state()
    scratch = np.empty(0, dtype=_kernel_view(grad).dtype)
    for index, (xs, ys) in _staged(x, y):
        piece = np.empty(xs.size, dtype=scratch.dtype) if with_grad else scratch
        exact_sum.merge(state, _sum_flat(xs, ys, log_target, coef, piece, with_grad))
        if with_grad:
            grad[index] = piece.view(grad.dtype).reshape(grad[index].shape)
    return state, grad if with_grad else None


def pointwise(x: np.ndarray, y: np.ndarray, log_target: bool) -> np.ndarray:
    """Every loss element (``reduction='none'``), in the inputs' dtype and shape."""
    if _same_memory_order(x, y):
        out = np.empty_like(x)  # keeps the inputs' memory order
        if x.size:
            _pointwise_kernel(_kernel_view(x), _kernel_view(y), log_target, _kernel_view(out))
        return out
    out = np.empty(x.shape, dtype=x.dtype)
    for index, (xs, ys) in _staged(x, y):
        piece = np.empty_like(xs)
        _pointwise_kernel(xs, ys, log_target, piece)
        out[index] = piece.view(out.dtype).reshape(out[index].shape)
    return out


def _grad_launch(
    kernel, inputs: list[np.ndarray], upstream: float | np.ndarray, coef: float, log_target: bool
) -> np.ndarray:
    """Run a gradient kernel over ``inputs`` (x and/or y), shaped like the last of them.

    ``upstream`` is one number (the gradient of a reduced loss) or an array shaped like the
    inputs (``reduction='none'``); the kernel tells them apart by size.
    """
    like = inputs[-1]
    per_element = isinstance(upstream, np.ndarray) and upstream.ndim > 0
    if per_element:
        inputs = [*inputs, upstream]
        single = None
    else:
        single = np.array([float(upstream)])
    if _same_memory_order(*inputs):
        out = np.empty_like(like)
        if like.size:
            views = [_kernel_view(a) for a in inputs]
            kernel(*views, *([] if per_element else [single]), coef, log_target, _kernel_view(out))
        return out
    out = np.empty(like.shape, dtype=like.dtype)
    for index, views in _staged(*inputs):
        piece = np.empty(views[0].size, dtype=views[0].dtype)
        kernel(*views, *([] if per_element else [single]), coef, log_target, piece)
        out[index] = piece.view(out.dtype).reshape(out[index].shape)
    return out


def input_grad_array(
    y: np.ndarray, upstream: float | np.ndarray, coef: float, log_target: bool
) -> np.ndarray:
    """d loss/d x = coef × upstream × d element/d x; ``upstream`` is one value or y-shaped."""
    return _grad_launch(_input_grad_kernel, [y], upstream, coef, log_target)


def target_grad_array(
    x: np.ndarray, y: np.ndarray, upstream: float | np.ndarray, coef: float, log_target: bool
) -> np.ndarray:
    """d loss/d y = coef × upstream × d element/d y; ``upstream`` is one value or y-shaped."""
    return _grad_launch(_target_grad_kernel, [x, y], upstream, coef, log_target)


def finish(state: np.ndarray, divisor: int, dtype: np.dtype) -> np.ndarray:
    """The exact sum rounded once to ``dtype``, or divided by ``divisor``: a 0-d array.

    A plain sum is rounded straight from the exact state (correctly rounded in any dtype); a
    quotient divides the correctly rounded float64 sum in float64 and rounds that to ``dtype``.
    """
    dtype = np.dtype(dtype)
    if divisor == 1:
        rounders = {np.float32: exact_sum.to_float32, np.float16: exact_sum.to_float16}
        value = rounders.get(dtype.type, exact_sum.to_float64)(state)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.float64(exact_sum.to_float64(state)) / np.float64(divisor)
    return np.array(value, dtype=dtype)


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
    low, high = state.copy(), state.copy()
    exact_sum.add_float(low, -bound)
    exact_sum.add_float(high, bound)
    low_value, high_value = finish(low, divisor, dtype), finish(high, divisor, dtype)
    return low_value if low_value.tobytes() == high_value.tobytes() else None


@dataclass(frozen=True)
class BoundedSum:
    """The bounded fast path's partial sum: ``state`` holds the exact sum of the float64 block
    sums, ``magnitude_total`` the running total of their magnitude sums. Partials of several
    ranks combine by adding both; :func:`bounded_value` then decides (or the exact path runs)."""

    state: np.ndarray
    magnitude_total: float


def _bounded_reduce(
    x: np.ndarray, y: np.ndarray, log_target: bool, grad_coef: float | None
) -> tuple[BoundedSum, np.ndarray | None]:
    """(the bounded fast path's partial sum, the fused gradient or None) for inputs in the same
    memory order."""
    with_grad = grad_coef is not None
    coef = float(grad_coef) if with_grad else 0.0
    grad = np.empty_like(x) if with_grad else np.empty(0, dtype=x.dtype)
    views = _kernel_view(x), _kernel_view(y), log_target, coef, _kernel_view(grad), with_grad
    if x.size < SERIAL_BELOW:
        state, magnitude_total = _bounded_kernel_serial(*views)
    else:
        state, magnitude_total = _bounded_kernel_parallel(*views, _chunks_for(x.size))
    return BoundedSum(state, float(magnitude_total)), grad if with_grad else None


def reduce(
    x: np.ndarray,
    y: np.ndarray,
    log_target: bool,
    divisor: int,
    grad_coef: float | None = None,
    exact_state_needed: bool = True,
) -> tuple[np.ndarray, np.ndarray | BoundedSum, np.ndarray | None]:
    """(the sum ÷ divisor rounded to x's dtype, the partial sum, the fused gradient or None).

    The partial sum is the exact-sum state. With ``exact_state_needed=False``, float32 and float16
    results of non-empty inputs in one memory order come from the bounded fast path
    (:mod:`klflow.kernels.bounded_sum`) where it proves them, and the partial is then its
    :class:`BoundedSum`; the value is the same bits either way.
    """
    fast = (
        not exact_state_needed
        and x.size > 0
        and x.dtype in BOUNDED_DTYPES
        and _same_memory_order(x, y)  # the gradient is allocated in the same order
    )
    if fast:
        partial, grad = _bounded_reduce(x, y, log_target, grad_coef)
        value = bounded_value(partial.state, partial.magnitude_total, divisor, x.dtype)
        if value is not None:
            return value, partial, grad
        state, _ = reduce_sum(x, y, log_target)  # not proven: add every term exactly
        return finish(state, divisor, x.dtype), state, grad
    state, grad = reduce_sum(x, y, log_target, grad_coef)
    return finish(state, divisor, x.dtype), state, grad


def exact_state(state: np.ndarray) -> np.ndarray:
    """The exact-sum state of a reduction (on the CPU the partial already is one)."""
    return state


def host_partial(partial: np.ndarray | BoundedSum) -> np.ndarray | BoundedSum:
    """A reduction's partial sum in host memory (on the CPU it already is there)."""
    return partial
