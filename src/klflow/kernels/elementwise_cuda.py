"""Elementwise CUDA kernels for tensor arithmetic: one broadcasting binary kernel, one unary kernel.

Operands are flat device arrays with NumPy broadcasting strides (in elements, 0 along a broadcast
dim); the output is C-contiguous. Every value is computed in float64 and rounded to float32 before
it is stored in a float32 or float16 output: for ``+ - * /`` of float32 operands that is the
correctly rounded float32 result (float64 holds more than twice float32's precision), so the bits
are NumPy's on the CPU, and a float16 output rounds that float32 value once more, as the CPU does.
``exp`` and ``log`` are klflow's own float64 functions, compiled from the CPU's source (the same
bits on both devices); ``pow`` uses CUDA's in float64 (within an ulp of the CPU's).

>>> OPS["add"], UNARY_OPS["exp"]
(0, 1)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

OPS = {
    "add": 0,
    "sub": 1,
    "mul": 2,
    "div": 3,
    "pow": 4,
    "eq": 5,
    "ne": 6,
    "lt": 7,
    "le": 8,
    "gt": 9,
    "ge": 10,
    "left": 11,  # the first operand broadcast to the output shape (expand)
}
UNARY_OPS = {"neg": 0, "exp": 1, "log": 2}
MAX_DIMS = 16


@cuda.jit(device=True)
def _binary(op, a, b):
    if op == 0:
        return a + b
    if op == 1:
        return a - b
    if op == 2:
        return a * b
    if op == 3:
        return a / b
    if op == 4:
        return a**b
    if op == 11:
        return a
    return 0.0


@cuda.jit(device=True)
def _compare(op, a, b):
    if op == 5:
        return a == b
    if op == 6:
        return a != b
    if op == 7:
        return a < b
    if op == 8:
        return a <= b
    if op == 9:
        return a > b
    return a >= b


@cuda.jit(device=True)
def _offsets(i, a_strides, b_strides, shape, ndim):
    rest = i
    ia = 0
    ib = 0
    for k in range(ndim - 1, -1, -1):
        index = rest % shape[k]
        rest //= shape[k]
        ia += index * a_strides[k]
        ib += index * b_strides[k]
    return ia, ib


@cuda.jit
def binary_kernel(op, a, b, a_strides, b_strides, shape, ndim, narrow, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ia, ib = _offsets(i, a_strides, b_strides, shape, ndim)
        r = _binary(op, np.float64(a[ia]), np.float64(b[ib]))
        if narrow:
            out[i] = np.float32(r)
        else:
            out[i] = r


@cuda.jit
def compare_kernel(op, a, b, a_strides, b_strides, shape, ndim, narrow, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ia, ib = _offsets(i, a_strides, b_strides, shape, ndim)
        out[i] = _compare(op, np.float64(a[ia]), np.float64(b[ib]))


def _unary_kernel():
    # exp64/log64 compiled for the device from the CPU's source (see klflow.kernels.cuda).
    from klflow.kernels.cuda import exp64, log64

    @cuda.jit
    def unary_kernel(op, a, narrow, out):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            x = np.float64(a[i])
            if op == 0:
                r = -x
            elif op == 1:
                r = exp64(x)
            else:
                r = log64(x)
            if narrow:
                out[i] = np.float32(r)
            else:
                out[i] = r

    return unary_kernel


_unary_kernels: list = []


def _launch(kernel: Any, n: int, *args: Any) -> None:
    from klflow.kernels import cuda as cuda_kernels

    blocks, threads = cuda_kernels.launch_config(max(n, 1))
    kernel[blocks, threads](*args)


def _broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Element strides of a C-contiguous array of ``shape`` read as ``out_shape`` (0 where broadcast)."""
    extra = len(shape) - len(out_shape)  # a (1,)-shaped scalar read into a 0-dim output
    if extra > 0:
        shape = shape[extra:]
    strides = [0] * len(out_shape)
    step = 1
    offset = len(out_shape) - len(shape)
    for k in range(len(shape) - 1, -1, -1):
        strides[offset + k] = 0 if shape[k] == 1 else step
        step *= shape[k]
    return np.array(strides or [0], dtype=np.int64)


def binary(op: str, a: Any, b: Any, out_shape: tuple[int, ...], out_dtype: np.dtype) -> Any:
    """``a op b`` broadcast to ``out_shape`` (device arrays; ``b`` may be a 1-element scalar array)."""
    from klflow.kernels import cuda as cuda_kernels

    out_dtype = np.dtype(out_dtype)
    out = cuda_kernels._empty(tuple(out_shape), out_dtype)
    n = math.prod(out_shape)
    if len(out_shape) > MAX_DIMS:
        raise ValueError(f"CUDA elementwise operations take at most {MAX_DIMS} dimensions")
    if n:
        shape = np.array(out_shape or (1,), dtype=np.int64)
        _launch(
            compare_kernel if out_dtype == np.bool_ else binary_kernel,
            n,
            OPS[op],
            cuda_kernels._flat(a),
            cuda_kernels._flat(b),
            cuda.to_device(_broadcast_strides(tuple(a.shape), tuple(out_shape))),
            cuda.to_device(_broadcast_strides(tuple(b.shape), tuple(out_shape))),
            cuda.to_device(shape),
            len(out_shape),
            out_dtype != np.float64 and out_dtype != np.bool_,
            cuda_kernels._flat(out),
        )
    return out


def unary(op: str, a: Any) -> Any:
    """``op(a)`` elementwise, in ``a``'s dtype."""
    from klflow.kernels import cuda as cuda_kernels

    out = cuda_kernels._empty(tuple(a.shape), a.dtype)
    if not _unary_kernels:
        _unary_kernels.append(_unary_kernel())
    if a.size:
        _launch(
            _unary_kernels[0],
            a.size,
            UNARY_OPS[op],
            cuda_kernels._flat(a),
            a.dtype != np.float64,
            cuda_kernels._flat(out),
        )
    return out


# ------------------------------------------------------------------ whole-tensor sums
SUM_TERMS_PER_THREAD = 2048  # each thread's error sum stays within bounded_sum's depth


@cuda.jit
def compensated_sum_kernel(values, stride, sums, errors, magnitudes):
    """Thread t adds elements t, t + stride, ... in float64 with TwoSum (as
    :func:`klflow.kernels.exact_rows._compensated_total`): its running sum, the sum of the
    rounding errors, and the errors' magnitudes."""
    t = cuda.grid(1)
    if t >= stride:
        return
    total = 0.0
    error_sum = 0.0
    magnitude = 0.0
    for i in range(t, values.size, stride):
        value = np.float64(values[i])
        running = total + value
        part = running - total
        error = (total - (running - part)) + (value - part)
        total = running
        error_sum += error
        magnitude += abs(error)
    sums[t] = total
    errors[t] = error_sum
    magnitudes[t] = magnitude


def compensated_sum(values: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """(every thread's running sum, its error sum — host arrays — and the total of the errors'
    magnitudes) for a whole device array; the host adds the first two exactly and decides."""
    from klflow.kernels import cuda as cuda_kernels

    flat = cuda_kernels._flat(values)
    threads = max(1, -(-flat.size // SUM_TERMS_PER_THREAD))
    sums = cuda.device_array(threads, dtype=np.float64)
    errors = cuda.device_array(threads, dtype=np.float64)
    magnitudes = cuda.device_array(threads, dtype=np.float64)
    block = min(128, threads)
    compensated_sum_kernel[-(-threads // block), block](flat, threads, sums, errors, magnitudes)
    magnitude_total = 0.0
    for m in magnitudes.copy_to_host():  # a float64 running total, as bounded_sum's bound assumes
        magnitude_total += float(m)
    return sums.copy_to_host(), errors.copy_to_host(), magnitude_total
