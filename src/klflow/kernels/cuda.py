"""CUDA kernels (numba ``@cuda.jit``) and their launchers: the GPU twin of :mod:`klflow.kernels.cpu`.

The loss's math comes from the same scalar functions in :mod:`klflow.kernels.formula`, compiled
here as device functions. float16 and float32 inputs are computed in float32 (the GPU's fast
``logf``/``expf``), float64 in float64; every reduction accumulates in float64.

Reductions are deterministic: each thread adds its grid-stride elements in a fixed order, each
block combines its threads with a fixed tree in shared memory, and one final block combines the
block partials in a fixed order — no floating-point atomics, so the same input on the same GPU
gives the same bits on every run. (The CPU path is exact; this one is deterministic.)

Launch sizes come from the device: a power-of-two block (256 by default) and enough blocks to
fill every multiprocessor, capped by the work. ``KLFLOW_CUDA_BLOCK`` (or :func:`set_block_size`)
overrides the block size; the tests use tiny blocks under the simulator so that multi-block and
tail paths run.
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

from klflow.kernels import formula

MAX_BLOCK = 1024  # shared-memory size of the block reduction; blocks never exceed it
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
    return get_device().id if get_device is not None else 0


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
    return blocks, block


# The transcendental functions: the GPU's own; under the simulator (kernels run as Python, whose
# math.log/exp raise where the GPU returns -inf/NaN/inf) NumPy's, which follow IEEE like the GPU.
log, exp = (np.log, np.exp) if numba_config.ENABLE_CUDASIM else (math.log, math.exp)
_device = functools.partial(cuda.jit, device=True, cache=True)  # NVVM inlines these small helpers
_kernel = functools.partial(cuda.jit, cache=True)
kl_term = _device(formula.kl_term)
kl_term_log_target = _device(formula.kl_term_log_target)
input_grad = _device(formula.input_grad)
input_grad_log_target = _device(formula.input_grad_log_target)
target_grad = _device(formula.target_grad)
target_grad_log_target = _device(formula.target_grad_log_target)
f32_one = np.float32(1.0)


@_device
def term(x, y, log_target):
    # x * float32(1) keeps float32 (and widens float16 to float32); float64 stays float64.
    xi = x * f32_one
    yi = y * f32_one
    if log_target:
        return kl_term_log_target(xi, yi, exp(yi))
    return kl_term(xi, yi, log(yi))


@_device
def d_input(y, log_target):
    yi = y * f32_one
    if log_target:
        return input_grad_log_target(exp(yi))
    return input_grad(yi)


@_device
def d_target(x, y, log_target):
    xi = x * f32_one
    yi = y * f32_one
    if log_target:
        return target_grad_log_target(xi, yi, exp(yi))
    return target_grad(xi, log(yi))


@_device
def block_sum(value):
    """Fixed-order tree sum of one float64 per thread; the total is valid in thread 0."""
    shared = cuda.shared.array(MAX_BLOCK, np.float64)
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    width = cuda.blockDim.x // 2
    while width > 0:
        if tid < width:
            shared[tid] += shared[tid + width]
        cuda.syncthreads()
        width //= 2
    return shared[0]


@_device
def finish_if_last(acc, partials, counter, divisor, out, total_out):
    """Store this block's partial; the block that finishes last adds all partials in index order.

    The last block is found with one integer atomic (no floating-point atomics), and the final
    order of additions does not depend on which block it is: the total is deterministic. The
    last block also resets the counter for the next launch on the stream.
    """
    total = block_sum(acc)
    is_last = cuda.shared.array(1, np.int32)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total
        cuda.threadfence()  # the partial is visible device-wide before the ticket is taken
        ticket = cuda.atomic.add(counter, 0, 1)
        is_last[0] = 1 if ticket == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    if is_last[0] == 1:
        acc = 0.0
        for i in range(cuda.threadIdx.x, cuda.gridDim.x, cuda.blockDim.x):
            acc += partials[i]
        total = block_sum(acc)
        if cuda.threadIdx.x == 0:
            total_out[0] = total
            out[0] = total if divisor == 1.0 else total / divisor
            counter[0] = 0


@_kernel
def sum_kernel(x, y, log_target, coef, grad, with_grad, partials, counter, divisor, out, total_out):
    n = x.size
    stride = cuda.blockDim.x * cuda.gridDim.x
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    acc = 0.0
    # Four elements per thread per step, all loaded before any arithmetic, so each thread keeps
    # several memory requests in flight; the order of additions stays fixed for a given launch.
    while i + 3 * stride < n:
        x0, x1, x2, x3 = x[i], x[i + stride], x[i + 2 * stride], x[i + 3 * stride]
        y0, y1, y2, y3 = y[i], y[i + stride], y[i + 2 * stride], y[i + 3 * stride]
        acc += term(x0, y0, log_target)
        acc += term(x1, y1, log_target)
        acc += term(x2, y2, log_target)
        acc += term(x3, y3, log_target)
        if with_grad:
            grad[i] = coef * d_input(y0, log_target)
            grad[i + stride] = coef * d_input(y1, log_target)
            grad[i + 2 * stride] = coef * d_input(y2, log_target)
            grad[i + 3 * stride] = coef * d_input(y3, log_target)
        i += 4 * stride
    while i < n:
        acc += term(x[i], y[i], log_target)
        if with_grad:
            grad[i] = coef * d_input(y[i], log_target)
        i += stride
    finish_if_last(acc, partials, counter, divisor, out, total_out)


try:
    if numba_config.ENABLE_CUDASIM:
        raise ImportError("the simulator has no inline PTX")
    from klflow.kernels.cuda_vector import aligned, load4, store4
except ImportError:
    load4 = store4 = aligned = None

if load4 is not None:

    @_kernel
    def sum_kernel_f32x4(x, y, log_target, coef, grad, with_grad, partials, counter, divisor, out, total_out):
        """``sum_kernel`` for aligned float32 data: each thread moves 16 bytes per load."""
        n = x.size
        quads = n // 4
        stride = cuda.blockDim.x * cuda.gridDim.x
        thread = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        acc = 0.0
        q = thread
        while q < quads:
            j = 4 * q
            x0, x1, x2, x3 = load4(x, j)
            y0, y1, y2, y3 = load4(y, j)
            acc += term(x0, y0, log_target)
            acc += term(x1, y1, log_target)
            acc += term(x2, y2, log_target)
            acc += term(x3, y3, log_target)
            if with_grad:
                store4(
                    grad,
                    j,
                    coef * d_input(y0, log_target),
                    coef * d_input(y1, log_target),
                    coef * d_input(y2, log_target),
                    coef * d_input(y3, log_target),
                )
            q += stride
        tail = 4 * quads + thread
        if tail < n:
            acc += term(x[tail], y[tail], log_target)
            if with_grad:
                grad[tail] = coef * d_input(y[tail], log_target)
        finish_if_last(acc, partials, counter, divisor, out, total_out)

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
                term(x0, y0, log_target),
                term(x1, y1, log_target),
                term(x2, y2, log_target),
                term(x3, y3, log_target),
            )
            q += stride
        tail = 4 * quads + thread
        if tail < n:
            out[tail] = term(x[tail], y[tail], log_target)
else:
    sum_kernel_f32x4 = pointwise_kernel_f32x4 = None


@_kernel
def pointwise_kernel(x, y, log_target, out):
    start = cuda.grid(1)
    for i in range(start, x.size, cuda.gridsize(1)):
        out[i] = term(x[i], y[i], log_target)


@_kernel
def input_grad_kernel(y, upstream, coef, log_target, out):
    start = cuda.grid(1)
    single = upstream.size == 1
    for i in range(start, y.size, cuda.gridsize(1)):
        u = upstream[0] if single else upstream[i]
        out[i] = coef * np.float64(u) * d_input(y[i], log_target)


@_kernel
def target_grad_kernel(x, y, upstream, coef, log_target, out):
    start = cuda.grid(1)
    single = upstream.size == 1
    for i in range(start, y.size, cuda.gridsize(1)):
        u = upstream[0] if single else upstream[i]
        out[i] = coef * np.float64(u) * d_target(x[i], y[i], log_target)


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
    sum=sum_kernel,
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


# ------------------------------------------------------------------ launchers (the backend API)
def _scratch(key: tuple, shape: tuple[int, ...], dtype: Any) -> Any:
    """A device buffer kept for reuse by the launchers (never handed out)."""
    buffer = _scratch_buffers.get(key)
    if buffer is None:
        buffer = _scratch_buffers[key] = cuda.device_array(shape, dtype=dtype)
    return buffer


_scratch_buffers: dict[tuple, Any] = {}


def _vectorisable(*arrays: Any) -> bool:
    return sum_kernel_f32x4 is not None and all(
        a.dtype == np.float32 and a.ndim == 1 and aligned(a) for a in arrays
    )


def reduce(
    x: Any,
    y: Any,
    log_target: bool,
    divisor: int,
    grad_coef: float | None = None,
    exact_state_needed: bool = True,
) -> tuple[Any, Any, Any]:
    """One launch: (the sum ÷ divisor as a 0-d array of x's dtype, the float64 total,
    d loss/d x × grad_coef or None). All of it stays on the device; nothing synchronises.
    ``exact_state_needed`` is accepted for the CPU backend's sake: the device total is turned
    into an exact state only when asked (``exact_state``), so there is nothing to skip here."""
    _cuda()
    with_grad = grad_coef is not None
    n = x.size
    grad = _empty(x.shape, x.dtype) if with_grad else _scratch(("dummy", x.dtype.str), (1,), x.dtype)
    xf, yf, gf = _flat(x), _flat(y), _flat(grad)
    blocks, threads = launch_config(max(n, 1))
    device = _current_device_id()
    partials = _scratch(("partials", device, blocks), (blocks,), np.float64)
    counter = _scratch_counter(device)
    out = _empty((), x.dtype)
    total = _empty((1,), np.float64)
    vector = _vectorisable(xf, yf, *([gf] if with_grad else []))
    kernel = sum_kernel_f32x4 if vector else sum_kernel
    kernel[blocks, threads](
        xf,
        yf,
        log_target,
        float(grad_coef or 0.0),
        gf,
        with_grad,
        partials,
        counter,
        float(divisor),
        _flat(out),
        total,
    )
    return out, DeviceTotal(total), (grad if with_grad else None)


def _scratch_counter(device: int) -> Any:
    counter = _scratch_buffers.get(("counter", device))
    if counter is None:  # zeroed once; every launch leaves it at zero again
        counter = _scratch_buffers[("counter", device)] = cuda.to_device(np.zeros(1, np.int32))
    return counter


class DeviceTotal:
    """The float64 total of a reduction, left on the device until an exact state is needed."""

    def __init__(self, total: Any) -> None:
        self.total = total

    def to_state(self) -> np.ndarray:
        from klflow.kernels import exact_sum

        state = exact_sum.new_state()
        exact_sum.add_float(state, float(self.total.copy_to_host()[0]))
        return state


def exact_state(partial: DeviceTotal) -> np.ndarray:
    """The total as an exact-sum state (host), for combining over MPI ranks."""
    return partial.to_state()


def pointwise(x: Any, y: Any, log_target: bool) -> Any:
    out = _empty(x.shape, x.dtype)
    if x.size:
        xf, yf, of = _flat(x), _flat(y), _flat(out)
        kernel = pointwise_kernel_f32x4 if _vectorisable(xf, yf, of) else _kernels()["pointwise"]
        _launch(kernel, x.size, xf, yf, log_target, of)
    return out


def _upstream_array(upstream: Any, dtype: np.dtype) -> Any:
    if isinstance(upstream, (float, int, np.floating)):
        return _cuda().to_device(np.array([float(upstream)], dtype=np.float64))
    return _flat(upstream)


def _grad(kernel_name: str, inputs: list[Any], upstream: Any, coef: float, log_target: bool) -> Any:
    """Run a gradient kernel over ``inputs`` (x and/or y); the result is shaped like the last."""
    like = inputs[-1]
    out = _empty(like.shape, like.dtype)
    if like.size:
        arguments = [_flat(a) for a in inputs] + [_upstream_array(upstream, like.dtype)]
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
