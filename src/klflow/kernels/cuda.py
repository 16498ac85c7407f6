"""CUDA kernels (numba ``@cuda.jit``) and their launchers: the GPU twin of :mod:`klflow.kernels.cpu`,
bit for bit.

**Elements.** Every element is computed in float64 whatever the input dtype, from the same Python
source as on the CPU: the formulas of :mod:`klflow.kernels.formula` and ``log64``/``exp64`` of
:mod:`klflow.kernels.fastmath`, compiled here by :func:`~klflow.kernels.fastmath.compiled_for`
with CUDA's primitives (``cuda.fma`` for the fused multiply-adds, libdevice's bit casts). The
operations are the CPU's one for one, and each is a correctly rounded IEEE operation on both,
so ``none`` outputs and gradients are the CPU's bits (NaN payloads aside: the two produce
different NaN bit patterns). NVVM fuses a plain ``a * b + c`` into one FMA by default (numba-cuda
compiles without ``-fma=0``); the shared source never leaves such a pair unfused where it matters
(see :mod:`klflow.kernels.fastmath`), and the sums here add with libdevice's ``__dadd_rn``, which
neither NVVM nor ptxas contracts with the product that made the term.

**Reductions** give the CPU's bits too: the correctly rounded value of the exact sum of the
terms, finished on the host by the CPU's own code (:func:`klflow.kernels.rounding.bounded_value` and
:func:`~klflow.kernels.rounding.finish`). The device produces the integer states of
:mod:`klflow.kernels.exact_sum`; they are added into with integer atomics only, whose order does
not matter, so the states (and the result) do not depend on the launch shape or on timing.

* float32 and float16 results take the bounded path of :mod:`klflow.kernels.bounded_sum`, in one
  pass that reads each input once: every thread adds its terms (and their magnitudes) in
  float64, each block combines its threads with a tree in shared memory, and the block's two
  sums go exactly into two states with six int64 atomics. The CPU's error bound holds for this
  summation tree: a thread adds at most ``TERMS_PER_THREAD`` terms to a zero start and the tree
  adds ``log2(blockDim) <= 10`` levels, so every root-to-leaf path has at most
  ``TERMS_PER_THREAD + 11 < BLOCK_LIMIT + LANE_LIMIT`` additions, the depth the bound's ``k``
  allows (it depends on the depth, not on the number of terms a block holds). The total of the
  magnitude sums is their exact sum rounded once, within the ``1 - g(2**43)`` factor the bound
  allows. The host then proves the result or, rarely, runs the exact pass below.
* float64 results, and the sums the bound cannot prove, take the exact pass: each term is split
  into the state's digits (:func:`klflow.kernels.exact_sum.scaled_int_digits`). A thread keeps a
  three-digit window in registers and adds to the block's shared digits (integer atomics) only
  when a term's digits leave the window; each block normalises its digits and adds them to the
  global state with integer atomics.

Results are lazy: a reduction returns at once with a 0-d array (:class:`PendingScalar`) whose
value is finished on the host the first time it is read (``item()``, ``numpy()``, printing) or
used on the device. The states travel to pinned host memory behind the kernel, so reading a
value waits only for its own kernel. Inputs are kept for a possible exact pass until the value
is known; later reductions finish the earlier ones whose states have arrived, so an unread loss
does not hold its inputs for long.

Launch sizes come from the device: a power-of-two block (256 by default) and enough blocks to
fill every multiprocessor, more where a thread would otherwise add more than
``TERMS_PER_THREAD`` terms. ``KLFLOW_CUDA_BLOCK`` (or :func:`set_block_size`) overrides the block
size; the tests use tiny blocks under the simulator so that multi-block and tail paths run.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
import weakref
from typing import Any

import numpy as np
from numba import cuda  # a module global: numba's simulator swaps it inside kernels
from numba.core import config as numba_config

from klflow.kernels import bounded_sum, exact_sum, fastmath, formula, rounding

MAX_BLOCK = 1024  # shared-memory size of the block reduction; blocks never exceed it
# The most terms one thread adds in sequence: keeps the bounded path's summation tree within the
# depth its error bound allows (see the module docstring), with a margin for the vector tail.
TERMS_PER_THREAD = bounded_sum.BLOCK_LIMIT // 2
_TREE_LEVELS = (MAX_BLOCK - 1).bit_length()
assert TERMS_PER_THREAD + 8 + 1 + _TREE_LEVELS < bounded_sum.BLOCK_LIMIT + bounded_sum.LANE_LIMIT
STATE_LEN = exact_sum.STATE_LEN
SIMULATED = bool(numba_config.ENABLE_CUDASIM)
_block_override: int | None = None


def set_block_size(size: int | None) -> None:
    """Force a block size (a power of two ≤ 1024), or ``None`` for the device's default."""
    global _block_override
    if size is not None and (size < 1 or size > MAX_BLOCK or size & (size - 1)):
        raise ValueError(f"a CUDA block size must be a power of two in [1, {MAX_BLOCK}], got {size}")
    _block_override = size


def _cuda() -> Any:
    """numba.cuda once a usable device (or the simulator) is confirmed, else a clear error."""
    from klflow import cuda as klflow_cuda

    return klflow_cuda._cuda()


@functools.cache
def _device_limits(device_id: int) -> tuple[int, int, int]:
    """(multiprocessors, threads per multiprocessor, threads per block) of a device, asked once."""
    # The simulator has no device object; its defaults (one multiprocessor) still exercise tails.
    get_device = getattr(cuda, "get_current_device", None)
    device = get_device() if get_device is not None else None
    return (
        getattr(device, "MULTIPROCESSOR_COUNT", 1),
        getattr(device, "MAX_THREADS_PER_MULTIPROCESSOR", 0),
        getattr(device, "MAX_THREADS_PER_BLOCK", MAX_BLOCK),
    )


def _current_device_id() -> int:
    get_device = getattr(cuda, "get_current_device", None)
    return getattr(get_device(), "id", 0) if get_device is not None else 0  # simulators: one device


def launch_config(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``n`` elements on the current device."""
    _cuda()
    sms, threads_per_sm, max_block = _device_limits(_current_device_id())
    env_block = os.environ.get("KLFLOW_CUDA_BLOCK")
    if _block_override or env_block:
        block = _block_override or int(env_block)
    else:
        # Eight resident blocks per multiprocessor (256 threads on Hopper), a power of two for
        # the tree reduction.
        block = 1 << (max(32, (threads_per_sm or 2048) // 8).bit_length() - 1)
    block = min(block, max_block, MAX_BLOCK)
    per_sm = max(1, (threads_per_sm or 2 * block) // block)
    blocks = max(1, min(sms * per_sm, -(-n // block)))
    # Enough threads that none adds more than TERMS_PER_THREAD terms.
    return max(blocks, -(-n // (block * TERMS_PER_THREAD))), block


# ------------------------------------------------------------------ target primitives
# The shared source's target-specific operations: CUDA's on a GPU; exact Python under the
# simulator, where device functions run as plain Python.
if SIMULATED:
    from klflow.kernels import pyfloat

    add_rounded = pyfloat.add
    f64_as_i64 = pyfloat.f64_as_i64
    _math = pyfloat.compiled_fastmath()
else:
    from numba.cuda import libdevice

    add_rounded = libdevice.dadd_rn  # add.rn.f64: never fused with the product before it
    f64_as_i64 = libdevice.double_as_longlong

    # cuda.fma is typed only as an attribute of the cuda module, hence the wrapper.
    @cuda.jit(device=True)
    def _fused_multiply_add(a, b, c):
        return cuda.fma(a, b, c)  # fma.rn.f64: rounded once

    @cuda.jit(device=True)
    def _divide(numerator, denominator):
        return numerator / denominator  # div.rn.f64, with no zero check

    _math = fastmath.compiled_for(
        functools.partial(cuda.jit, device=True),
        mul_add=_fused_multiply_add,
        divide=_divide,
        f64_as_i64=libdevice.double_as_longlong,
        i64_as_f64=libdevice.longlong_as_double,
    )

log64, log64_normal, log64_positive, exp64 = (
    _math.log64,
    _math.log64_normal,
    _math.log64_positive,
    _math.exp64,
)
_device = functools.partial(cuda.jit, device=True, cache=True)  # NVVM inlines these small helpers
_kernel = functools.partial(cuda.jit, cache=True)
kl_term = _device(formula.kl_term)
kl_term_log_target = _device(formula.kl_term_log_target)
input_grad = _device(formula.input_grad)
input_grad_log_target = _device(formula.input_grad_log_target)
target_grad = _device(formula.target_grad)
target_grad_log_target = _device(formula.target_grad_log_target)
float_parts = _device(exact_sum.float_parts)
scaled_int_digits = _device(exact_sum.scaled_int_digits)
normalize_digits = _device(exact_sum.normalize_digits)


# ------------------------------------------------------------------ elements (cpu._term's steps)
@_device
def term(x, y, log_target, subnormal):
    """The loss element of two array elements, in float64. ``subnormal`` says whether the
    elements can be subnormal once widened (float64 inputs); float32 and float16 ones cannot,
    which lets ``log`` skip its scaling, as on the CPU."""
    wide_y = np.float64(y)
    if log_target:
        return kl_term_log_target(np.float64(x), wide_y, exp64(wide_y))
    # kl_term masks zero, negative and NaN targets itself; only +inf needs its true log.
    log_y = log64_positive(wide_y) if subnormal else log64_normal(wide_y)
    log_y = wide_y if wide_y == np.inf else log_y
    return kl_term(np.float64(x), wide_y, log_y)


@_device
def term_and_input_grad(x, y, log_target, subnormal, coef):
    """(the loss element, coef × d element/d x), sharing one exp for log-probability targets."""
    if log_target:
        wide_y = np.float64(y)
        exp_y = exp64(wide_y)
        return kl_term_log_target(np.float64(x), wide_y, exp_y), coef * input_grad_log_target(exp_y)
    return term(x, y, False, subnormal), coef * input_grad(np.float64(y))


@_device
def element(x, y, i, log_target, subnormal, coef, grad, with_grad):
    """The loss element of ``x, y``; with ``with_grad`` it also writes ``grad[i]``."""
    if with_grad:
        value, gradient = term_and_input_grad(x, y, log_target, subnormal, coef)
        grad[i] = gradient
        return value
    return term(x, y, log_target, subnormal)


@_device
def d_input(y, log_target):
    """d element / d x for a float64 target."""
    if log_target:
        return input_grad_log_target(exp64(y))
    return input_grad(y)


@_device
def d_target(x, y, log_target):
    """d element / d y for float64 elements."""
    if log_target:
        return target_grad_log_target(x, y, exp64(y))
    return target_grad(x, log64(y))


# ------------------------------------------------------------------ integer states on the device
@_device
def add_digits(digits, k, low, middle, high):
    """Add the parts of :func:`~klflow.kernels.exact_sum.scaled_int_digits` at digit ``k``."""
    if low != 0:
        cuda.atomic.add(digits, k, low)
    if middle != 0:
        cuda.atomic.add(digits, k + 1, middle)
    if high != 0:
        cuda.atomic.add(digits, k + 2, high)


@_device
def add_float_atomic(states, offset, value):
    """Add one double exactly to the state at ``states[offset:offset + STATE_LEN]``."""
    special, significand, exponent = float_parts(f64_as_i64(value))
    if special >= 0:
        cuda.atomic.add(states, offset + special, 1)
    elif significand != 0:
        k, low, middle, high = scaled_int_digits(significand, exponent)
        add_digits(states, offset + k, low, middle, high)


@_device
def add_to_window(digits, window, w0, w1, w2, value):
    """Add one double to a thread's window: three digits starting at digit ``window`` (-1: none
    yet), kept in registers. A term outside the window first flushes it into ``digits``.
    Returns the new window."""
    special, significand, exponent = float_parts(f64_as_i64(value))
    if special >= 0:
        cuda.atomic.add(digits, special, 1)
        return window, w0, w1, w2
    if significand == 0:
        return window, w0, w1, w2
    k, low, middle, high = scaled_int_digits(significand, exponent)
    if k == window:
        return window, w0 + low, w1 + middle, w2 + high
    if window >= 0:
        add_digits(digits, window, w0, w1, w2)
    return k, low, middle, high


@_device
def clear_following(following):
    """Block 0 zeroes the state buffer of the next launch (see ``_StateBuffers``)."""
    if cuda.blockIdx.x == 0:
        for j in range(cuda.threadIdx.x, following.size, cuda.blockDim.x):
            following[j] = 0


@_device
def add_block_sums(total, magnitude, states):
    """Sum both values over the block with a fixed tree in shared memory, then add the block's
    sums exactly into the two states (thread 0, integer atomics)."""
    totals = cuda.shared.array(MAX_BLOCK, np.float64)
    magnitudes = cuda.shared.array(MAX_BLOCK, np.float64)
    tid = cuda.threadIdx.x
    totals[tid] = total
    magnitudes[tid] = magnitude
    cuda.syncthreads()
    width = cuda.blockDim.x // 2
    while width > 0:
        if tid < width:
            totals[tid] = add_rounded(totals[tid], totals[tid + width])
            magnitudes[tid] = add_rounded(magnitudes[tid], magnitudes[tid + width])
        cuda.syncthreads()
        width //= 2
    if tid == 0:
        add_float_atomic(states, 0, totals[0])
        add_float_atomic(states, STATE_LEN, magnitudes[0])


# ------------------------------------------------------------------ reduction kernels
@_kernel
def bounded_kernel(x, y, log_target, subnormal, coef, grad, with_grad, states, following):
    """The bounded path: block sums of the terms and of their magnitudes into two states."""
    clear_following(following)
    n = x.size
    stride = cuda.blockDim.x * cuda.gridDim.x
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    total = 0.0
    magnitude = 0.0
    # Four elements per thread per step, all loaded before any arithmetic, so each thread keeps
    # several memory requests in flight.
    while i + 3 * stride < n:
        x0, x1, x2, x3 = x[i], x[i + stride], x[i + 2 * stride], x[i + 3 * stride]
        y0, y1, y2, y3 = y[i], y[i + stride], y[i + 2 * stride], y[i + 3 * stride]
        t0 = element(x0, y0, i, log_target, subnormal, coef, grad, with_grad)
        t1 = element(x1, y1, i + stride, log_target, subnormal, coef, grad, with_grad)
        t2 = element(x2, y2, i + 2 * stride, log_target, subnormal, coef, grad, with_grad)
        t3 = element(x3, y3, i + 3 * stride, log_target, subnormal, coef, grad, with_grad)
        total = add_rounded(add_rounded(add_rounded(add_rounded(total, t0), t1), t2), t3)
        magnitude = add_rounded(
            add_rounded(add_rounded(add_rounded(magnitude, abs(t0)), abs(t1)), abs(t2)), abs(t3)
        )
        i += 4 * stride
    while i < n:
        t = element(x[i], y[i], i, log_target, subnormal, coef, grad, with_grad)
        total = add_rounded(total, t)
        magnitude = add_rounded(magnitude, abs(t))
        i += stride
    add_block_sums(total, magnitude, states)


@_kernel
def exact_kernel(x, y, log_target, subnormal, coef, grad, with_grad, states, following):
    """The exact pass: every term split into digits, summed in integers."""
    clear_following(following)
    digits = cuda.shared.array(STATE_LEN, np.int64)
    tid = cuda.threadIdx.x
    for j in range(tid, STATE_LEN, cuda.blockDim.x):
        digits[j] = 0
    cuda.syncthreads()
    window = -1
    w0 = w1 = w2 = 0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        value = element(x[i], y[i], i, log_target, subnormal, coef, grad, with_grad)
        window, w0, w1, w2 = add_to_window(digits, window, w0, w1, w2, value)
    if window >= 0:
        add_digits(digits, window, w0, w1, w2)
    cuda.syncthreads()
    if tid == 0:
        normalize_digits(digits)  # below 2**32 each: the global digits take 2**31 blocks safely
    cuda.syncthreads()
    for j in range(tid, STATE_LEN, cuda.blockDim.x):
        if digits[j] != 0:
            cuda.atomic.add(states, j, digits[j])


try:
    if SIMULATED:
        raise ImportError("the simulator has no inline PTX")
    from klflow.kernels.cuda_vector import aligned, load4, store4
except ImportError:
    load4 = store4 = aligned = None

if load4 is not None:

    @_kernel
    def bounded_kernel_f32x4(x, y, log_target, subnormal, coef, grad, with_grad, states, following):
        """``bounded_kernel`` for aligned float32 data: each thread moves 16 bytes per load."""
        clear_following(following)
        n = x.size
        quads = n // 4
        stride = cuda.blockDim.x * cuda.gridDim.x
        thread = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        total = 0.0
        magnitude = 0.0
        q = thread
        while q < quads:
            j = 4 * q
            x0, x1, x2, x3 = load4(x, j)
            y0, y1, y2, y3 = load4(y, j)
            if with_grad:
                t0, g0 = term_and_input_grad(x0, y0, log_target, False, coef)
                t1, g1 = term_and_input_grad(x1, y1, log_target, False, coef)
                t2, g2 = term_and_input_grad(x2, y2, log_target, False, coef)
                t3, g3 = term_and_input_grad(x3, y3, log_target, False, coef)
                store4(grad, j, g0, g1, g2, g3)
            else:
                t0 = term(x0, y0, log_target, False)
                t1 = term(x1, y1, log_target, False)
                t2 = term(x2, y2, log_target, False)
                t3 = term(x3, y3, log_target, False)
            total = add_rounded(add_rounded(add_rounded(add_rounded(total, t0), t1), t2), t3)
            magnitude = add_rounded(
                add_rounded(add_rounded(add_rounded(magnitude, abs(t0)), abs(t1)), abs(t2)), abs(t3)
            )
            q += stride
        tail = 4 * quads + thread
        if tail < n:
            t = element(x[tail], y[tail], tail, log_target, False, coef, grad, with_grad)
            total = add_rounded(total, t)
            magnitude = add_rounded(magnitude, abs(t))
        add_block_sums(total, magnitude, states)

    @_kernel
    def pointwise_kernel_f32x4(x, y, log_target, out):
        """``pointwise_kernel`` for aligned float32 data: 16-byte loads and stores."""
        n = x.size
        quads = n // 4
        stride = cuda.blockDim.x * cuda.gridDim.x
        thread = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        q = thread
        while q < quads:
            j = 4 * q
            x0, x1, x2, x3 = load4(x, j)
            y0, y1, y2, y3 = load4(y, j)
            store4(
                out,
                j,
                term(x0, y0, log_target, False),
                term(x1, y1, log_target, False),
                term(x2, y2, log_target, False),
                term(x3, y3, log_target, False),
            )
            q += stride
        tail = 4 * quads + thread
        if tail < n:
            out[tail] = term(x[tail], y[tail], log_target, False)
else:
    bounded_kernel_f32x4 = pointwise_kernel_f32x4 = None


# ------------------------------------------------------------------ elementwise kernels
@_kernel
def pointwise_kernel(x, y, log_target, subnormal, out):
    start = cuda.grid(1)
    for i in range(start, x.size, cuda.gridsize(1)):
        out[i] = term(x[i], y[i], log_target, subnormal)  # rounded once to out's dtype


@_kernel
def input_grad_kernel(y, upstream, coef, log_target, out):
    # ``upstream`` has one element (a reduced loss) or as many as ``y``; the CPU's association.
    start = cuda.grid(1)
    if upstream.size == 1:
        scale = coef * np.float64(upstream[0])
        for i in range(start, y.size, cuda.gridsize(1)):
            out[i] = scale * d_input(np.float64(y[i]), log_target)
    else:
        for i in range(start, y.size, cuda.gridsize(1)):
            out[i] = coef * np.float64(upstream[i]) * d_input(np.float64(y[i]), log_target)


@_kernel
def target_grad_kernel(x, y, upstream, coef, log_target, out):
    start = cuda.grid(1)
    if upstream.size == 1:
        scale = coef * np.float64(upstream[0])
        for i in range(start, y.size, cuda.gridsize(1)):
            out[i] = scale * d_target(np.float64(x[i]), np.float64(y[i]), log_target)
    else:
        for i in range(start, y.size, cuda.gridsize(1)):
            gradient = d_target(np.float64(x[i]), np.float64(y[i]), log_target)
            out[i] = coef * np.float64(upstream[i]) * gradient


@_kernel
def cast_kernel(source, out):
    for i in range(cuda.grid(1), source.size, cuda.gridsize(1)):
        out[i] = source[i]


@_kernel
def fill_kernel(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


@_kernel
def add_kernel(a, b, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


KERNELS = dict(
    bounded=bounded_kernel,
    exact=exact_kernel,
    pointwise=pointwise_kernel,
    input_grad=input_grad_kernel,
    target_grad=target_grad_kernel,
    cast=cast_kernel,
    fill=fill_kernel,
    add=add_kernel,
)


def _kernels() -> dict[str, Any]:
    """The kernels, once a usable device (or the simulator) is confirmed."""
    _cuda()
    return KERNELS


# ------------------------------------------------------------------ layout helpers
def _flat(array: Any) -> Any:
    """A 1-D view of a C-contiguous device array (others are copied once, in C order)."""
    if array.ndim == 1 and array.strides[0] == array.dtype.itemsize:
        return array
    if _is_c_contiguous(array):
        return array.reshape(array.size)
    return _contiguous_copy(array).reshape(array.size)


def _is_c_contiguous(array: Any) -> bool:
    expected = array.dtype.itemsize
    for extent, stride in zip(reversed(array.shape), reversed(array.strides), strict=True):
        if extent > 1 and stride != expected:
            return False
        expected *= extent
    return True


def _contiguous_copy(array: Any) -> Any:
    # Strided device arrays are rare (a view from another framework); go through the host once.
    cuda = _cuda()
    return cuda.to_device(np.ascontiguousarray(array.copy_to_host()))


# Freed device buffers by byte size, reused by later allocations of the same size. Every klflow
# kernel runs on the default stream, so work on a recycled buffer is queued after the work of its
# previous owner: the reuse needs no synchronisation. Without this each call would pay for a
# cuMemAlloc, and numba's batched cuMemFree, which synchronises the device.
_free_buffers: dict[int, list[Any]] = collections.defaultdict(list)
_pool_lock = threading.Lock()


def _allocate(nbytes: int) -> Any:
    try:
        return cuda.device_array(nbytes, dtype=np.uint8)
    except Exception:  # out of memory: hand the cached buffers back to the driver and retry
        empty_cache()
        return cuda.device_array(nbytes, dtype=np.uint8)


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """An uninitialised device array from the buffer cache; its buffer returns when it dies.

    The buffer goes back to the cache when the returned array is garbage-collected, so only that
    array (or objects holding it, such as a Tensor or another framework's view through
    ``__cuda_array_interface__``) may escape: derive nothing that outlives it.
    """
    dtype = np.dtype(dtype)
    nbytes = max(math.prod(shape) * dtype.itemsize, dtype.itemsize)
    with _pool_lock:
        cached = _free_buffers[nbytes]
        base = cached.pop() if cached else None
    if base is None:
        base = _allocate(nbytes)
    count = math.prod(shape)
    array = base.view(dtype)[:count].reshape(shape)
    weakref.finalize(array, _recycle, nbytes, base)
    return array


def _recycle(nbytes: int, base: Any) -> None:
    with _pool_lock:
        _free_buffers[nbytes].append(base)


def empty_cache() -> None:
    """Give every cached, unused device buffer back to the driver."""
    with _pool_lock:
        _free_buffers.clear()
    deallocations = getattr(cuda.current_context(), "deallocations", None)  # none in the simulator
    if deallocations is not None:
        deallocations.clear()


def _launch(kernel: Any, n: int, *args: Any) -> None:
    blocks, threads = launch_config(max(n, 1))
    kernel[blocks, threads](*args)


def _scratch(key: tuple, shape: tuple[int, ...], dtype: Any) -> Any:
    """A device buffer kept for reuse by the launchers (never handed out)."""
    buffer = _scratch_buffers.get(key)
    if buffer is None:
        buffer = _scratch_buffers[key] = cuda.device_array(shape, dtype=dtype)
    return buffer


_scratch_buffers: dict[tuple, Any] = {}


def _vectorisable(*arrays: Any) -> bool:
    return bounded_kernel_f32x4 is not None and all(
        a.dtype == np.float32 and a.ndim == 1 and aligned(a) for a in arrays
    )


# ------------------------------------------------------------------ states: device to host
class _StateBuffers:
    """Two zeroed device state buffers per device, used by alternate launches: each reduction
    kernel adds into one and zeroes the other for the next launch, which the default stream
    runs after the copy of the first one to the host. No launch spends a memset on it."""

    def __init__(self) -> None:
        self._buffers: dict[int, list[Any]] = {}
        self._turn: dict[int, int] = {}
        self._lock = threading.Lock()

    def next_pair(self) -> tuple[Any, Any]:
        """(the buffer this launch adds into, the buffer it zeroes for the next launch)."""
        device = _current_device_id()
        with self._lock:
            if device not in self._buffers:
                zeros = np.zeros(2 * STATE_LEN, np.int64)
                self._buffers[device] = [cuda.to_device(zeros), cuda.to_device(zeros)]
                self._turn[device] = 0
            turn = self._turn[device]
            self._turn[device] = 1 - turn
            pair = self._buffers[device]
            return pair[turn], pair[1 - turn]


_state_buffers = _StateBuffers()
# Per device: pinned memory and events belong to the context that made them.
_landings_free: dict[int, list[tuple[np.ndarray, Any]]] = collections.defaultdict(list)


def _landing(device: int) -> tuple[np.ndarray, Any]:
    """(a pinned host buffer for one launch's states, an event to mark their arrival), recycled:
    allocating pinned memory and events costs more than a launch."""
    with _pool_lock:
        if _landings_free[device]:
            return _landings_free[device].pop()
    event = cuda.event() if SIMULATED else cuda.event(timing=False)
    return cuda.pinned_array(2 * STATE_LEN, dtype=np.int64), event


def _release_landing(device: int, landing: tuple[np.ndarray, Any]) -> None:
    # Safe even while a copy into the buffer may still be queued: every later copy into it is
    # queued behind that one on the default stream, and read only after its own event.
    with _pool_lock:
        _landings_free[device].append(landing)


def _stream() -> Any:
    return cuda.default_stream() if hasattr(cuda, "default_stream") else 0


class DeviceSum:
    """A reduction running on the device; its states are finished on the host once, when first
    needed. ``bounded``: the bounded path's two states (float32/float16 results); else the exact
    state of every term.

    Launched on construction. The inputs are kept only by the bounded kind, for the exact pass
    the bound may still call for, and dropped once the value is known.
    """

    def __init__(
        self,
        bounded: bool,
        x: Any,
        y: Any,
        log_target: bool,
        divisor: int,
        grad_coef: float | None = None,
        grad: Any = None,
    ) -> None:
        self.bounded = bounded
        self.divisor = divisor
        self.dtype = np.dtype(x.dtype)
        self._inputs = (x, y, log_target) if bounded else None
        self._states: tuple[np.ndarray, float] | None = None
        self._exact: np.ndarray | None = None
        self._value: np.ndarray | None = None
        with_grad = grad_coef is not None
        if not with_grad:
            grad = _scratch(("no gradient", self.dtype.str), (1,), self.dtype)
        blocks, threads = launch_config(max(x.size, 1))
        if bounded:
            vector = _vectorisable(x, y, *([grad] if with_grad else []))
            kernel = bounded_kernel_f32x4 if vector else bounded_kernel
        else:
            kernel = exact_kernel
        states, following = _state_buffers.next_pair()
        subnormal = self.dtype == np.float64
        coef = float(grad_coef) if with_grad else 0.0
        kernel[blocks, threads](x, y, log_target, subnormal, coef, grad, with_grad, states, following)
        device = _current_device_id()
        landing = _landing(device)
        weakref.finalize(self, _release_landing, device, landing)
        self._host, self._arrival = landing
        stream = _stream()
        states.copy_to_host(self._host, stream=stream)
        self._arrival.record(stream)
        if bounded:
            _track(self)

    @property
    def arrived(self) -> bool:
        """Whether the states are in host memory (never waits)."""
        query = getattr(self._arrival, "query", None)  # the simulator's events have none
        return self._states is not None or query is None or query()

    @property
    def resolved(self) -> bool:
        return self._value is not None

    def states(self) -> tuple[np.ndarray, float]:
        """(the exact sum of the block sums, or of every term; the magnitudes' total, 0.0 for the
        exact kind), waiting for the device if need be."""
        if self._states is None:
            self._arrival.synchronize()
            raw = np.array(self._host)
            state = raw[:STATE_LEN]
            exact_sum.normalize(state)  # a digitwise sum of block states: carries still pending
            magnitude_total = exact_sum.to_float64(raw[STATE_LEN:]) if self.bounded else 0.0
            self._states = (state, magnitude_total)
        return self._states

    def host_partial(self) -> bounded_sum.BoundedSum | np.ndarray:
        """The partial sum in the CPU backend's kinds: a :class:`~klflow.kernels.bounded_sum.BoundedSum`
        for the bounded path, else the exact state."""
        state, magnitude_total = self.states()
        return bounded_sum.BoundedSum(state, magnitude_total) if self.bounded else state

    def exact_state(self) -> np.ndarray:
        """The exact state of every term (the bounded kind runs the exact pass for it)."""
        if not self.bounded:
            return self.states()[0]
        if self._exact is None:
            if self._inputs is None:
                raise RuntimeError("the inputs of this bounded device sum were released")
            x, y, log_target = self._inputs
            self._exact, _ = reduce_sum(x, y, log_target)
        return self._exact

    def value(self) -> np.ndarray:
        """The sum ÷ divisor rounded to the inputs' dtype, a 0-d host array: the CPU's bits."""
        if self._value is None:
            state, magnitude_total = self.states()
            value = None
            if self.bounded:
                value = rounding.bounded_value(state, magnitude_total, self.divisor, self.dtype)
            if value is None:  # not proven: every term exactly
                value = rounding.finish(self.exact_state(), self.divisor, self.dtype)
            self._value = value
            self._inputs = None
        return self._value


_unfinished: list[weakref.ref] = []


def _track(pending: DeviceSum) -> None:
    with _pool_lock:
        _unfinished.append(weakref.ref(pending))


def _finish_arrived() -> None:
    """Finish the bounded sums whose states have arrived, which releases their inputs."""
    with _pool_lock:
        candidates = [ref() for ref in _unfinished]
        _unfinished.clear()
    waiting = []
    for pending in candidates:
        if pending is None or pending.resolved:
            continue
        if pending.arrived:
            pending.value()
        else:
            waiting.append(weakref.ref(pending))
    with _pool_lock:
        _unfinished.extend(waiting)


class PendingScalar:
    """The 0-d device array holding a reduction's value, made when first needed.

    ``copy_to_host`` (``item()``, ``numpy()``, printing) waits for the reduction's states and
    finishes it on the host; any other use (a kernel argument, ``__cuda_array_interface__``)
    also puts the value in device memory, and from then on this behaves as that device array.
    """

    _DELEGATED_DUNDERS = frozenset({"__cuda_array_interface__"})

    def __init__(self, source: DeviceSum) -> None:
        self._source = source
        self._device: Any = None
        self.shape: tuple[int, ...] = ()
        self.ndim = 0
        self.size = 1
        self.strides: tuple[int, ...] = ()
        self.dtype = source.dtype

    def copy_to_host(self, ary: np.ndarray | None = None, stream: Any = 0) -> np.ndarray:
        if self._device is not None:
            return self._device.copy_to_host(ary, stream=stream)
        value = self._source.value()
        if ary is None:
            return value.copy()
        ary[...] = value
        return ary

    def on_device(self) -> Any:
        """The value as a device array (copied there once)."""
        if self._device is None:
            self._device = cuda.to_device(self._source.value())
        return self._device

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") and name not in self._DELEGATED_DUNDERS:
            raise AttributeError(name)
        return getattr(self.on_device(), name)


# ------------------------------------------------------------------ launchers (the backend API)
def reduce(
    x: Any, y: Any, log_target: bool, divisor: int, grad_coef: float | None = None
) -> tuple[PendingScalar, DeviceSum, Any]:
    """(the sum ÷ divisor as a 0-d array of x's dtype, the partial sum, d loss/d x × grad_coef or
    None), with the CPU's bits. One launch; nothing waits for the device until the value is read.

    float32 and float16 results take the bounded path, as on the CPU: the partial's
    :meth:`DeviceSum.host_partial` then gives a :class:`~klflow.kernels.bounded_sum.BoundedSum`,
    as the CPU backend's partial would be. The value is the same bits either way.
    """
    _cuda()
    _finish_arrived()
    with_grad = grad_coef is not None
    grad = _empty(x.shape, x.dtype) if with_grad else None
    bounded = np.dtype(x.dtype) in bounded_sum.BOUNDED_DTYPES
    flat_grad = _flat(grad) if with_grad else None
    pending = DeviceSum(bounded, _flat(x), _flat(y), log_target, divisor, grad_coef, flat_grad)
    return PendingScalar(pending), pending, grad


def reduce_sum(x: Any, y: Any, log_target: bool, grad_coef: float | None = None) -> tuple[np.ndarray, Any]:
    """The exact-sum state of all loss elements (host memory; waits for the device); with
    ``grad_coef``, also d loss/d x × grad_coef, written in the same pass."""
    _cuda()
    with_grad = grad_coef is not None
    grad = _empty(x.shape, x.dtype) if with_grad else None
    pending = DeviceSum(
        False, _flat(x), _flat(y), log_target, 1, grad_coef, _flat(grad) if with_grad else None
    )
    return pending.exact_state(), grad


def exact_state(partial: DeviceSum) -> np.ndarray:
    """The exact-sum state of a reduction (host), for combining over MPI ranks."""
    return partial.exact_state()


def host_partial(partial: DeviceSum) -> bounded_sum.BoundedSum | np.ndarray:
    """The partial sum as the CPU backend gives it (host), for combining over MPI ranks."""
    return partial.host_partial()


def pointwise(x: Any, y: Any, log_target: bool) -> Any:
    out = _empty(x.shape, x.dtype)
    if x.size:
        xf, yf, of = _flat(x), _flat(y), _flat(out)
        if _vectorisable(xf, yf, of):
            _launch(pointwise_kernel_f32x4, x.size, xf, yf, log_target, of)
        else:
            _launch(_kernels()["pointwise"], x.size, xf, yf, log_target, xf.dtype == np.float64, of)
    return out


def _upstream_array(upstream: Any) -> Any:
    if isinstance(upstream, (float, int, np.floating)):
        return _cuda().to_device(np.array([float(upstream)], dtype=np.float64))
    return _flat(upstream)


def _grad(kernel_name: str, inputs: list[Any], upstream: Any, coef: float, log_target: bool) -> Any:
    """Run a gradient kernel over ``inputs`` (x and/or y); the result is shaped like the last."""
    like = inputs[-1]
    out = _empty(like.shape, like.dtype)
    if like.size:
        arguments = [_flat(a) for a in inputs] + [_upstream_array(upstream)]
        _launch(_kernels()[kernel_name], like.size, *arguments, float(coef), log_target, _flat(out))
    return out


def input_grad_array(y: Any, upstream: Any, coef: float, log_target: bool) -> Any:
    """d loss/d x = coef × upstream × d element/d x; ``upstream`` is one value or y-shaped."""
    return _grad("input_grad", [y], upstream, coef, log_target)


def target_grad_array(x: Any, y: Any, upstream: Any, coef: float, log_target: bool) -> Any:
    """d loss/d y = coef × upstream × d element/d y; ``upstream`` is one value or y-shaped."""
    return _grad("target_grad", [x, y], upstream, coef, log_target)


def copy(array: Any) -> Any:
    out = _empty(array.shape, array.dtype)
    if array.size:
        _launch(_kernels()["cast"], array.size, _flat(array), _flat(out))
    return out


def cast(array: Any, dtype: np.dtype) -> Any:
    out = _empty(array.shape, np.dtype(dtype))
    if array.size:
        _launch(_kernels()["cast"], array.size, _flat(array), _flat(out))
    return out


def full(shape: tuple[int, ...], value: float, dtype: np.dtype) -> Any:
    out = _empty(tuple(shape), np.dtype(dtype))
    fill(out, value)
    return out


def fill(array: Any, value: float) -> None:
    if array.size:
        _launch(_kernels()["fill"], array.size, _flat(array), value)


def add(a: Any, b: Any) -> Any:
    out = _empty(a.shape, a.dtype)
    if a.size:
        _launch(_kernels()["add"], a.size, _flat(a), _flat(b), _flat(out))
    return out
