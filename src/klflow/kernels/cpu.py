"""CPU kernels (numba, compiled per case on first use) and their launchers.

Tiers: the scalar math lives in :mod:`klflow.kernels.formula`; the ``_make_*_kernel`` functions
here build the serial loops over flat contiguous arrays, one compiled kernel per case; the
launcher functions at the bottom accept arrays of any shape and memory layout, cut them into
chunks for klflow's worker threads (:mod:`klflow.kernels.pool`) and allocate outputs. No
validation happens here.

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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numba import types
from numba.extending import overload

from klflow.kernels import bounded_sum, exact_sum, formula, pool
from klflow.kernels.bits import f64_as_i64, f64_to_half_bits, half_bits_to_f32
from klflow.kernels.bounded_sum import BOUNDED_DTYPES, BoundedSum, add_any_order
from klflow.kernels.fastmath import exp64, log64, log64_normal, log64_positive
from klflow.kernels.jit import jit, variant
from klflow.kernels.prefetch import prefetch_span
from klflow.kernels.rounding import bounded_value, finish
from klflow.kernels.vector_width import use_full_vector_width

BLOCK = 2048  # terms buffered per exact-sum step: small enough to stay in L1, large to amortise
assert BLOCK <= bounded_sum.BLOCK_LIMIT  # the bounded fast path sums a BLOCK at a time
SERIAL_BELOW = 1 << 16  # elements under which handing out chunks costs more than it saves
CHUNKS_PER_THREAD = 4  # chunks are taken in turn, so a thread that starts late does less
MIN_CHUNK = 1 << 16  # below this a chunk's Python-side cost (slices, a kernel call) shows
SLAB_ELEMENTS = 1 << 18  # contiguous staging size for inputs with irregular strides
ABS_BITS = 0x7FFFFFFFFFFFFFFF  # clears the sign: the bits of |t| order like |t| (NaN above inf)

# The per-element helpers are small: LLVM inlines them into the loops that call them (and then
# vectorises those loops), which compiles faster than numba-level inlining.
kl_term = jit(inline="always")(formula.kl_term)
kl_term_log_target = jit(inline="always")(formula.kl_term_log_target)
input_grad = jit(inline="always")(formula.input_grad)
input_grad_log_target = jit(inline="always")(formula.input_grad_log_target)
target_grad = jit(inline="always")(formula.target_grad)
target_grad_log_target = jit(inline="always")(formula.target_grad_log_target)


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


def log_finite_positive(value):  # pragma: no cover - replaced by the overload inside compiled code
    """log of an element as stored (float16 as its bits), widened to float64: exact for finite
    elements above zero, an unspecified finite value otherwise. Skipping the special values is a
    third of ``log64``'s work, and float32/float16 elements also skip the subnormal scaling."""
    raise NotImplementedError


@overload(log_finite_positive, inline="always")
def _log_finite_positive(value):
    # Widened float32 and float16 elements are normal doubles; float64 ones can be subnormal.
    if value == types.float64:
        return lambda value: log64_positive(value)
    return lambda value: log64_normal(widen(value))


@jit(inline="always")
def _term(x, y):
    """The loss element of two array elements as stored (float16 as its bits), probability target."""
    wide_y = widen(y)
    # kl_term masks zero, negative and NaN targets itself; only +inf needs its true log.
    log_y = log_finite_positive(y)
    log_y = wide_y if wide_y == np.inf else log_y
    return kl_term(widen(x), wide_y, log_y)


@jit(inline="always")
def _term_unless_infinite_target(x, y):
    """``_term`` for a target that is not ``+inf``; for one that is, a non-finite value (NaN or
    an infinity) that is not necessarily ``_term``'s. The bounded path uses it: a non-finite term
    leaves the block's magnitude sum non-finite, and an unproven result is recomputed exactly
    with ``_term`` (:func:`klflow.kernels.rounding.bounded_value`), so the select is not needed."""
    wide_y = widen(y)
    # For y = +inf, y * (finite - x) is an infinity or NaN whatever the finite log stands in.
    return kl_term(widen(x), wide_y, log_finite_positive(y))


@jit(inline="always")
def _term_log_target(x, y):
    """The loss element of two array elements as stored, log-probability target."""
    wide_y = widen(y)
    return kl_term_log_target(widen(x), wide_y, exp64(wide_y))


@jit(inline="always")
def _term_and_input_grad_log_target(x, y, coef):
    """(the loss element, coef × d element/d x) for a log-probability target, sharing one exp."""
    wide_y = widen(y)
    exp_y = exp64(wide_y)
    return kl_term_log_target(widen(x), wide_y, exp_y), coef * input_grad_log_target(exp_y)


@jit(inline="always")
def _prefetch_next_block(x, y, stop):
    """Ask for the inputs' block after the one that ends at ``stop`` (AVX2 and older code only,
    see :mod:`klflow.kernels.prefetch`). Only the bounded kernel does: in the pointwise kernel
    (with its output stream) it made AVX2 code 35 % slower, and the exact kernel's own pass over
    its buffer gained nothing from it."""
    ahead = stop + BLOCK if stop + BLOCK < x.size else x.size
    prefetch_span(x, stop, ahead)
    prefetch_span(y, stop, ahead)


# ------------------------------------------------------------------ kernels (flat, contiguous)
# Each kernel is built for one case (log_target, fused gradient, ...): the flags are closure
# constants, so numba drops the other cases' loops before compiling, and a call compiles only
# the loop it runs. Each runs serially on the slice it is given and releases the GIL; the
# launchers below hand the slices to the threads of :mod:`klflow.kernels.pool`. Each asks for
# 512-bit vectors where the CPU has them (:mod:`klflow.kernels.vector_width`).
def _make_sum_kernel(log_target: bool, with_grad: bool) -> Callable:
    def sum_kernel(x, y, coef, grad, state, buffer):
        """Add the terms of ``x``/``y`` exactly into ``state`` (and, ``with_grad``, write grad =
        coef × d element/d x in the same pass), ``BLOCK`` terms at a time through ``buffer``.
        The caller allocates both (numba's allocation routines cost compile time)."""
        use_full_vector_width()
        for start in range(0, x.size, BLOCK):
            stop = start + BLOCK if start + BLOCK < x.size else x.size
            count = stop - start
            xs, ys, gs = x[start:stop], y[start:stop], grad[start:stop]
            # The largest |term| as bits (an integer maximum vectorises where a float one does
            # not) spares the exact sum a pass. One loop per case, so that each vectorises; the
            # gradient stores share the term loop (as a loop of their own, streaming from memory
            # ran 5 to 15 % slower here, the opposite of the bounded kernel: both measured).
            largest = np.int64(0)
            if with_grad and log_target:
                for i in range(count):
                    term, grad_value = _term_and_input_grad_log_target(xs[i], ys[i], coef)
                    buffer[i] = term
                    largest = max(largest, f64_as_i64(term) & ABS_BITS)
                    gs[i] = narrow(gs, grad_value)
            elif with_grad:
                for i in range(count):
                    term = _term(xs[i], ys[i])
                    buffer[i] = term
                    largest = max(largest, f64_as_i64(term) & ABS_BITS)
                    gs[i] = narrow(gs, coef * input_grad(widen(ys[i])))
            elif log_target:
                for i in range(count):
                    term = _term_log_target(xs[i], ys[i])
                    buffer[i] = term
                    largest = max(largest, f64_as_i64(term) & ABS_BITS)
            else:
                for i in range(count):
                    term = _term(xs[i], ys[i])
                    buffer[i] = term
                    largest = max(largest, f64_as_i64(term) & ABS_BITS)
            exact_sum.add_terms_bounded(state, buffer, count, largest)

    return sum_kernel


def _make_bounded_kernel(log_target: bool, with_grad: bool) -> Callable:
    def bounded_kernel(x, y, coef, grad, state):
        """The bounded fast path (:mod:`klflow.kernels.bounded_sum`): add the float64 sum of each
        ``BLOCK`` of terms exactly into ``state`` and return the running total of their
        magnitude sums; with ``with_grad``, also write the fused gradient."""
        use_full_vector_width()
        magnitude_total = 0.0
        for start in range(0, x.size, BLOCK):
            stop = start + BLOCK if start + BLOCK < x.size else x.size
            count = stop - start
            _prefetch_next_block(x, y, stop)
            xs, ys, gs = x[start:stop], y[start:stop], grad[start:stop]
            total = 0.0
            magnitude = 0.0
            if log_target and with_grad:
                # One loop: the term and the gradient share exp(y), which costs more than the
                # stores (a separate gradient loop made this 1.8× slower).
                for i in range(count):
                    term, grad_value = _term_and_input_grad_log_target(xs[i], ys[i], coef)
                    total = add_any_order(total, term)
                    magnitude = add_any_order(magnitude, abs(term))
                    gs[i] = narrow(gs, grad_value)
            elif log_target:
                for i in range(count):
                    term = _term_log_target(xs[i], ys[i])
                    total = add_any_order(total, term)
                    magnitude = add_any_order(magnitude, abs(term))
            else:
                for i in range(count):
                    term = _term_unless_infinite_target(xs[i], ys[i])
                    total = add_any_order(total, term)
                    magnitude = add_any_order(magnitude, abs(term))
                if with_grad:
                    # Over the block just read (in L1 now): with these stores inside the term
                    # loop, streaming from memory ran 1.6× slower per element.
                    for i in range(count):
                        gs[i] = narrow(gs, coef * input_grad(widen(ys[i])))
            exact_sum.add_float(state, total)
            magnitude_total += magnitude
        return magnitude_total

    return bounded_kernel


def _make_pointwise_kernel(log_target: bool) -> Callable:
    def pointwise_kernel(x, y, out):
        use_full_vector_width()
        if log_target:
            for i in range(x.size):
                out[i] = narrow(out, _term_log_target(x[i], y[i]))
        else:
            for i in range(x.size):
                out[i] = narrow(out, _term(x[i], y[i]))

    return pointwise_kernel


def _make_input_grad_kernel(log_target: bool, per_element: bool) -> Callable:
    def input_grad_kernel(y, upstream, coef, out):
        use_full_vector_width()
        # ``upstream`` is y-shaped (reduction='none') or holds one float64 (a reduced loss).
        scale = coef * widen(upstream[0])
        if per_element and log_target:
            for i in range(y.size):
                grad = input_grad_log_target(exp64(widen(y[i])))
                out[i] = narrow(out, coef * widen(upstream[i]) * grad)
        elif per_element:
            for i in range(y.size):
                out[i] = narrow(out, coef * widen(upstream[i]) * input_grad(widen(y[i])))
        elif log_target:
            for i in range(y.size):
                out[i] = narrow(out, scale * input_grad_log_target(exp64(widen(y[i]))))
        else:
            for i in range(y.size):
                out[i] = narrow(out, scale * input_grad(widen(y[i])))

    return input_grad_kernel


def _make_target_grad_kernel(log_target: bool, per_element: bool) -> Callable:
    def target_grad_kernel(x, y, upstream, coef, out):
        use_full_vector_width()
        scale = coef * widen(upstream[0])
        if per_element and log_target:
            for i in range(y.size):
                wide_x, wide_y = widen(x[i]), widen(y[i])
                grad = target_grad_log_target(wide_x, wide_y, exp64(wide_y))
                out[i] = narrow(out, coef * widen(upstream[i]) * grad)
        elif per_element:
            for i in range(y.size):
                grad = target_grad(widen(x[i]), log64(widen(y[i])))
                out[i] = narrow(out, coef * widen(upstream[i]) * grad)
        elif log_target:
            for i in range(y.size):
                wide_x, wide_y = widen(x[i]), widen(y[i])
                out[i] = narrow(out, scale * target_grad_log_target(wide_x, wide_y, exp64(wide_y)))
        else:
            for i in range(y.size):
                out[i] = narrow(out, scale * target_grad(widen(x[i]), log64(widen(y[i]))))

    return target_grad_kernel


def sum_kernel(log_target: bool, with_grad: bool) -> Any:
    """The exact-path reduction kernel ``(x, y, coef, grad, state, buffer)`` for one case."""
    return variant(_make_sum_kernel, log_target, with_grad)


def bounded_kernel(log_target: bool, with_grad: bool) -> Any:
    """The bounded-path kernel ``(x, y, coef, grad, state) -> magnitude_total`` for one case."""
    return variant(_make_bounded_kernel, log_target, with_grad)


def _spans(n: int) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into the pieces the threads take in turn: one below ``SERIAL_BELOW``,
    else one per thread at least and ``CHUNKS_PER_THREAD`` per thread at most, none smaller than
    ``MIN_CHUNK``; every boundary but the last falls on a multiple of ``BLOCK``."""
    threads = pool.thread_count()
    if n < SERIAL_BELOW or threads == 1:
        return [(0, n)]
    count = min(threads * CHUNKS_PER_THREAD, max(threads, n // MIN_CHUNK))
    step = -(-n // count)
    step = -(-step // BLOCK) * BLOCK
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def _over_chunks(n: int, call: Callable[[int, int], Any]) -> list:
    """``call(lo, hi)`` for pieces of ``range(n)``, spread over the threads; their results."""
    spans = _spans(n)
    if len(spans) == 1:
        return [call(0, n)]
    results: list[Any] = [None] * len(spans)

    def work(index: int) -> None:
        results[index] = call(*spans[index])

    pool.run(work, len(spans))
    return results


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


def _sum_flat(x, y, log_target, coef, grad, with_grad):
    """The exact-sum state of flat, contiguous inputs (and the fused gradient into ``grad``)."""
    kernel = sum_kernel(log_target, with_grad)

    def call(lo: int, hi: int) -> np.ndarray:
        state = exact_sum.new_state()
        kernel(x[lo:hi], y[lo:hi], coef, grad[lo:hi] if with_grad else grad, state, np.empty(BLOCK))
        return state

    states = _over_chunks(x.size, call)
    return states[0] if len(states) == 1 else exact_sum.sum_states(states)


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
    kernel = variant(_make_pointwise_kernel, log_target)

    def run(xs: np.ndarray, ys: np.ndarray, out: np.ndarray) -> None:
        _over_chunks(xs.size, lambda lo, hi: kernel(xs[lo:hi], ys[lo:hi], out[lo:hi]))

    if _same_memory_order(x, y):
        out = np.empty_like(x)  # keeps the inputs' memory order
        if x.size:
            run(_kernel_view(x), _kernel_view(y), _kernel_view(out))
        return out
    out = np.empty(x.shape, dtype=x.dtype)
    for index, (xs, ys) in _staged(x, y):
        piece = np.empty_like(xs)
        run(xs, ys, piece)
        out[index] = piece.view(out.dtype).reshape(out[index].shape)
    return out


def _grad_launch(
    make: Callable, inputs: list[np.ndarray], upstream: float | np.ndarray, coef: float, log_target: bool
) -> np.ndarray:
    """Run the gradient kernel that ``make`` builds over ``inputs`` (x and/or y), shaped like the
    last of them. ``upstream`` is one number (the gradient of a reduced loss) or an array shaped
    like the inputs (``reduction='none'``)."""
    like = inputs[-1]
    per_element = isinstance(upstream, np.ndarray) and upstream.ndim > 0
    kernel = variant(make, log_target, per_element)
    if per_element:
        inputs = [*inputs, upstream]
    single = np.array([0.0 if per_element else float(upstream)])

    def run(views: list[np.ndarray], out: np.ndarray) -> None:
        def call(lo: int, hi: int) -> None:
            pieces = [view[lo:hi] for view in views]
            if per_element:
                kernel(*pieces, coef, out[lo:hi])
            else:
                kernel(*pieces, single, coef, out[lo:hi])

        _over_chunks(out.size, call)

    if _same_memory_order(*inputs):
        out = np.empty_like(like)
        if like.size:
            run([_kernel_view(a) for a in inputs], _kernel_view(out))
        return out
    out = np.empty(like.shape, dtype=like.dtype)
    for index, views in _staged(*inputs):
        piece = np.empty(views[0].size, dtype=views[0].dtype)
        run(views, piece)
        out[index] = piece.view(out.dtype).reshape(out[index].shape)
    return out


def input_grad_array(
    y: np.ndarray, upstream: float | np.ndarray, coef: float, log_target: bool
) -> np.ndarray:
    """d loss/d x = coef × upstream × d element/d x; ``upstream`` is one value or y-shaped."""
    return _grad_launch(_make_input_grad_kernel, [y], upstream, coef, log_target)


def target_grad_array(
    x: np.ndarray, y: np.ndarray, upstream: float | np.ndarray, coef: float, log_target: bool
) -> np.ndarray:
    """d loss/d y = coef × upstream × d element/d y; ``upstream`` is one value or y-shaped."""
    return _grad_launch(_make_target_grad_kernel, [x, y], upstream, coef, log_target)


def _bounded_reduce(
    x: np.ndarray, y: np.ndarray, log_target: bool, grad_coef: float | None
) -> tuple[BoundedSum, np.ndarray | None]:
    """(the bounded fast path's partial sum, the fused gradient or None) for inputs in the same
    memory order."""
    with_grad = grad_coef is not None
    coef = float(grad_coef) if with_grad else 0.0
    grad = np.empty_like(x) if with_grad else np.empty(0, dtype=x.dtype)
    xv, yv, gv = _kernel_view(x), _kernel_view(y), _kernel_view(grad)
    kernel = bounded_kernel(log_target, with_grad)

    def call(lo: int, hi: int) -> tuple[np.ndarray, float]:
        state = exact_sum.new_state()
        return state, kernel(xv[lo:hi], yv[lo:hi], coef, gv[lo:hi] if with_grad else gv, state)

    parts = _over_chunks(xv.size, call)
    if len(parts) == 1:
        state, magnitude_total = parts[0]
    else:
        state = exact_sum.sum_states([part[0] for part in parts])
        magnitude_total = sum(part[1] for part in parts)
    return BoundedSum(state, float(magnitude_total)), grad if with_grad else None


def reduce(
    x: np.ndarray, y: np.ndarray, log_target: bool, divisor: int, grad_coef: float | None = None
) -> tuple[np.ndarray, np.ndarray | BoundedSum, np.ndarray | None]:
    """(the sum ÷ divisor rounded to x's dtype, the partial sum, the fused gradient or None).

    float32 and float16 results of non-empty inputs in one memory order come from the bounded
    fast path (:mod:`klflow.kernels.bounded_sum`) where it proves them, and the partial is then
    its :class:`~klflow.kernels.bounded_sum.BoundedSum`; otherwise every term is added exactly
    and the partial is the exact-sum state. The value is the same bits either way.
    """
    fast = x.size > 0 and x.dtype in BOUNDED_DTYPES and _same_memory_order(x, y)  # grad: same order
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
