"""``exp`` and ``log`` of host arrays from klflow's own float64 functions
(:mod:`klflow.kernels.fastmath`), the same source the CUDA kernels compile, so both devices give
the same bits: each element in float64, rounded to float32 (then to float16) on the host.

>>> import numpy as np
>>> exp(np.array([0.0, 1.0])).tolist(), log(np.array([1.0, 0.0, -1.0])).tolist()[:2]
([1.0, 2.718281828459045], [0.0, -inf])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klflow.kernels.fastmath import exp64, log64
from klflow.kernels.jit import jit
from klflow.kernels.vector_width import use_full_vector_width


@jit
def _exp(x: np.ndarray, out: np.ndarray) -> None:
    use_full_vector_width()
    for i in range(x.size):
        out[i] = exp64(np.float64(x[i]))  # a float32 output rounds the float64 value once


@jit
def _log(x: np.ndarray, out: np.ndarray) -> None:
    use_full_vector_width()
    for i in range(x.size):
        out[i] = log64(np.float64(x[i]))


def _apply(kernel, values: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype not in (np.float32, np.float64):  # float16, bfloat16: widened exactly first
        values = values.astype(np.float64)
    flat = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(flat.shape, dtype=out_dtype)
    if flat.size:
        kernel(flat, out)
    return out.reshape(values.shape)


def exp(values: np.ndarray, out_dtype: Any = np.float64) -> np.ndarray:
    """e**x of every element, computed in float64 and stored as ``out_dtype`` (float64 or
    float32: rounded once)."""
    return _apply(_exp, values, out_dtype)


def log(values: np.ndarray, out_dtype: Any = np.float64) -> np.ndarray:
    """The natural logarithm of every element (NaN below 0, -inf at 0), computed in float64 and
    stored as ``out_dtype``."""
    return _apply(_log, values, out_dtype)
