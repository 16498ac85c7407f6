"""CUDA kernels of softmax and log_softmax: the GPU twin of :mod:`klflow.kernels.softmax`, the
same bits.

The elements come from the same Python source as on the CPU (:mod:`klflow.kernels.softmax_formula`,
and ``exp64``/``log64`` of :mod:`klflow.kernels.fastmath` as :mod:`klflow.kernels.cuda` compiles
them), so they are the CPU's operations one for one. The row statistics are exact: one block
per row finds the maximum with a tree in shared memory (a maximum does not depend on the order),
and its threads add every term into the block's shared exact-sum digits with integer atomics,
through a three-digit window in registers (:func:`klflow.kernels.cuda.add_to_window`), whose
order does not matter either. The states go to the host, where the CPU's own compiled rounding
(:func:`klflow.kernels.softmax.round_states`) gives the totals; a global tensor all-reduces the
states before that, as on the CPU.

A thread's window takes less than ``2**32`` per term into a digit, and the block's digits are
normalised before they become the row's state, so a row may hold up to ``2**31`` elements.
Moving a softmax dimension that is not last goes through the host (a transposing copy); the last
dimension, the usual case, is read in place.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from klflow.kernels import cuda as base
from klflow.kernels import exact_sum, softmax_formula
from klflow.kernels import softmax as cpu_softmax

_STATE_LEN = exact_sum.STATE_LEN
_SHARED = base.MAX_BLOCK  # shared-memory slots for a block's tree (the largest block)

if base.SIMULATED:
    from klflow.kernels import pyfloat

    _mul_add, _divide = pyfloat.fma, pyfloat.divide
else:
    _mul_add, _divide = base._fused_multiply_add, base._divide

_formula = softmax_formula.compiled_for(
    functools.partial(cuda.jit, device=True), mul_add=_mul_add, divide=_divide
)
combine_max = _formula.combine_max
log_softmax_value = _formula.log_softmax_value
softmax_value = _formula.softmax_value
log_softmax_grad = _formula.log_softmax_grad
softmax_grad = _formula.softmax_grad
exp64, log64 = base.exp64, base.log64
add_to_window, add_digits, normalize_digits = base.add_to_window, base.add_digits, base.normalize_digits
_kernel, _device = base._kernel, base._device


@_kernel
def row_max_kernel(x, n, maxima):
    """One block per row: ``maxima[row]`` (NaN if the row holds one, -inf if it is empty)."""
    tree = cuda.shared.array(_SHARED, np.float64)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    m = -math.inf
    for j in range(tid, n, cuda.blockDim.x):
        m = combine_max(m, np.float64(x[row * n + j]))
    tree[tid] = m
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            tree[tid] = combine_max(tree[tid], tree[tid + step])
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        maxima[row] = tree[0]


@_device
def _row_state(states, row, digits):
    """Block epilogue: the block's shared digits, normalised, become the row's state (one block
    per row owns its state: no atomics needed)."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        normalize_digits(digits)
    cuda.syncthreads()
    for j in range(cuda.threadIdx.x, _STATE_LEN, cuda.blockDim.x):
        states[row * _STATE_LEN + j] = digits[j]


@_device
def _clear(digits):
    for j in range(cuda.threadIdx.x, _STATE_LEN, cuda.blockDim.x):
        digits[j] = 0
    cuda.syncthreads()


@_kernel
def row_states_kernel(x, n, maxima, states):
    """One block per row: every exp(x - m) added exactly into the row's state. Each thread keeps a
    three-digit window in registers (:func:`klflow.kernels.cuda.add_to_window`) and adds it to the
    block's shared digits only when a term leaves it, as the loss's exact pass does."""
    digits = cuda.shared.array(_STATE_LEN, np.int64)
    row = cuda.blockIdx.x
    _clear(digits)
    m = maxima[row]
    if m - m == 0.0:  # finite (NaN or an infinity: the row is NaN, its state unused)
        window = -1
        w0 = w1 = w2 = 0
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            term = exp64(np.float64(x[row * n + j]) - m)
            window, w0, w1, w2 = add_to_window(digits, window, w0, w1, w2, term)
        if window >= 0:
            add_digits(digits, window, w0, w1, w2)
    _row_state(states, row, digits)


@_kernel
def grad_states_kernel(x, grad, n, maxima, totals, log, states):
    """One block per row: every g (log_softmax) or g × softmax (softmax) added exactly."""
    digits = cuda.shared.array(_STATE_LEN, np.int64)
    row = cuda.blockIdx.x
    _clear(digits)
    m = maxima[row]
    total = totals[row]
    window = -1
    w0 = w1 = w2 = 0
    for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        i = row * n + j
        g = np.float64(grad[i])
        if not log:
            g = g * softmax_value(exp64(np.float64(x[i]) - m), total)
        window, w0, w1, w2 = add_to_window(digits, window, w0, w1, w2, g)
    if window >= 0:
        add_digits(digits, window, w0, w1, w2)
    _row_state(states, row, digits)


@_kernel
def log_rows_kernel(totals, out):
    for r in range(cuda.grid(1), totals.size, cuda.gridsize(1)):
        out[r] = log64(totals[r])


@_kernel
def outputs_kernel(x, n, maxima, totals, log_totals, log, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        row = i // n
        shifted = np.float64(x[i]) - maxima[row]
        if log:
            out[i] = log_softmax_value(shifted, log_totals[row])  # rounded once to out's dtype
        else:
            out[i] = softmax_value(exp64(shifted), totals[row])


@_kernel
def grads_kernel(x, grad, n, maxima, totals, grad_totals, log, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        row = i // n
        p = softmax_value(exp64(np.float64(x[i]) - maxima[row]), totals[row])
        if log:
            out[i] = log_softmax_grad(np.float64(grad[i]), p, grad_totals[row])
        else:
            out[i] = softmax_grad(np.float64(grad[i]), p, grad_totals[row])


# ------------------------------------------------------------------ launchers (the CPU module's API)
def _block() -> int:
    return base.launch_config(1 << 20)[1]


def _flat(rows):
    return rows.reshape(rows.size)


def row_maxima(x):
    rows, n = x.shape
    maxima = cuda.device_array(rows, dtype=np.float64)
    if rows:
        row_max_kernel[rows, _block()](_flat(x), n, maxima)
    return maxima


def row_states(x, maxima) -> object:
    """The rows' exact-sum states on the device (zero where the maximum is not finite)."""
    rows, n = x.shape
    states = cuda.to_device(np.zeros(rows * _STATE_LEN, dtype=np.int64))
    if rows:
        row_states_kernel[rows, _block()](_flat(x), n, maxima, states)
    return states


def round_states(states, maxima=None) -> np.ndarray:
    """Host states (or device ones) rounded on the host by the CPU's compiled rounding."""
    if not isinstance(states, np.ndarray):
        states = states.copy_to_host()
    host_maxima = None
    if maxima is not None:
        host_maxima = maxima if isinstance(maxima, np.ndarray) else maxima.copy_to_host()
    return cpu_softmax.round_states(states.reshape(-1, _STATE_LEN), host_maxima)


def statistics(values: np.ndarray):
    """Host row statistics moved to the device."""
    return cuda.to_device(np.ascontiguousarray(values))


def outputs(x, maxima, totals, log: bool):
    rows, n = x.shape
    out = cuda.device_array(x.shape, dtype=x.dtype)
    if x.size:
        log_totals = cuda.device_array(rows, dtype=np.float64)
        blocks, threads = base.launch_config(rows)
        log_rows_kernel[blocks, threads](totals, log_totals)
        blocks, threads = base.launch_config(x.size)
        outputs_kernel[blocks, threads](_flat(x), n, maxima, totals, log_totals, log, _flat(out))
    return out


def forward(x, log: bool):
    """(softmax or log_softmax of every row, the row maxima, the row totals), all on the device."""
    maxima = row_maxima(x)
    totals = statistics(round_states(row_states(x, maxima), maxima))
    return outputs(x, maxima, totals, log), maxima, totals


def grad_states(x, grad, maxima, totals, log: bool):
    rows, n = x.shape
    states = cuda.to_device(np.zeros(rows * _STATE_LEN, dtype=np.int64))
    if rows:
        grad_states_kernel[rows, _block()](_flat(x), _flat(grad), n, maxima, totals, log, states)
    return states


def grads(x, grad, maxima, totals, grad_totals, log: bool):
    rows, n = x.shape
    out = cuda.device_array(x.shape, dtype=x.dtype)
    if x.size:
        blocks, threads = base.launch_config(x.size)
        grads_kernel[blocks, threads](_flat(x), _flat(grad), n, maxima, totals, grad_totals, log, _flat(out))
    return out


def backward(x, grad, maxima, totals, log: bool):
    grad_totals = statistics(round_states(grad_states(x, grad, maxima, totals, log)))
    return grads(x, grad, maxima, totals, grad_totals, log)


# ------------------------------------------------------------------ layout helpers for the dispatcher
def move_last(a, dim: int):
    """``a`` with ``dim`` moved last, through the host (a transposing copy)."""
    return cuda.to_device(np.ascontiguousarray(np.moveaxis(a.copy_to_host(), dim, -1)))


def move_back(a, dim: int):
    return cuda.to_device(np.ascontiguousarray(np.moveaxis(a.copy_to_host(), -1, dim)))


def contiguous(a):
    return a if base._is_c_contiguous(a) else base._contiguous_copy(a)
