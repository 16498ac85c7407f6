"""The softmax formulas: plain scalar functions, compiled for the CPU and for CUDA from this source.

Every element is computed in float64 whatever the input dtype (float16 and float32 inputs are
widened exactly) and rounded once to the output dtype. For a row ``x`` with maximum ``m`` and
``total = sum(exp(x - m))`` (the exact sum, correctly rounded to float64, so that it does not
depend on how the row is split over threads or ranks):

* ``log_softmax(x)_i = (x_i - m) - log(total)``
* ``softmax(x)_i = exp(x_i - m) / total``
* backward of log_softmax: ``g_i - softmax_i * sum(g)``
* backward of softmax: ``softmax_i * (g_i - sum(g * softmax))``

The sums in the backward formulas are exact sums correctly rounded to float64 as well. ``exp``
and ``log`` are the caller's (each target's build of :mod:`klflow.kernels.fastmath`), and the one
multiply-add is written as ``_mul_add`` (rounded once), because NVVM would otherwise fuse a plain
``g - p * s`` on the GPU and not on the CPU; the division is ``_divide`` (IEEE, without numba's
zero check, which would stop the CPU loops vectorising). :func:`compiled_for` rebuilds the
functions with another target's ``_mul_add`` and ``_divide``.

>>> log_softmax_value(-1.0, 0.6931471805599453)
-1.6931471805599454
>>> combine_max(-0.0, 0.0), combine_max(float("nan"), 1.0)
(0.0, nan)
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType, SimpleNamespace

from klflow.kernels.fastmath import _divide, _mul_add

__all__ = [
    "combine_max",
    "compiled_for",
    "log_softmax_grad",
    "log_softmax_value",
    "softmax_grad",
    "softmax_value",
]


def combine_max(a, b):
    """The larger of two float64 values, NaN if either is NaN, +0.0 above -0.0: independent of
    the order (but for a NaN's payload, which no result shows: a NaN row is NaN everywhere)."""
    if a > b:
        return a
    if b > a:
        return b
    if a != a:
        return a
    if b != b:
        return b
    return a + b if a == 0.0 else a  # equal: only zeros may differ, in sign (-0 + 0 = +0)


def log_softmax_value(shifted, log_total):
    """One element of log_softmax from ``x - m`` and ``log(total)``."""
    return shifted - log_total


def softmax_value(exp_shifted, total):
    """One element of softmax from ``exp(x - m)`` and the row's total."""
    return _divide(exp_shifted, total)


def log_softmax_grad(grad, probability, grad_total):
    """d loss/d x_i of log_softmax: ``g_i - p_i * sum(g)``, rounded once."""
    return _mul_add(-probability, grad_total, grad)


def softmax_grad(grad, probability, weighted_total):
    """d loss/d x_i of softmax: ``p_i * (g_i - sum(g * p))``."""
    return probability * (grad - weighted_total)


_FUNCTIONS = (combine_max, log_softmax_value, softmax_value, log_softmax_grad, softmax_grad)


def compiled_for(decorate: Callable, *, mul_add: Callable, divide: Callable) -> SimpleNamespace:
    """The functions above compiled by ``decorate`` with ``mul_add`` as the fused multiply-add and
    ``divide`` as IEEE division (``cuda.jit(device=True)``, ``cuda.fma`` and ``div.rn`` on the
    GPU; the identity and :mod:`klflow.kernels.pyfloat`'s primitives run them as Python).

    >>> from klflow.kernels import pyfloat
    >>> python = compiled_for(lambda f: f, mul_add=pyfloat.fma, divide=pyfloat.divide)
    >>> python.log_softmax_grad(1.0, 0.25, 2.0)
    0.5
    """
    namespace = dict(globals())
    namespace["_mul_add"] = mul_add
    namespace["_divide"] = divide
    compiled = {}
    for function in _FUNCTIONS:
        clone = FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
        clone.__qualname__, clone.__doc__ = function.__qualname__, function.__doc__
        namespace[function.__name__] = compiled[function.__name__] = decorate(clone)
    return SimpleNamespace(**compiled)
