"""``exp`` and ``log`` of host arrays from klflow's own float64 functions
(:mod:`klflow.kernels.fastmath`), the same source the CUDA kernels compile, so both devices give
the same bits: each element in float64, rounded to float32 (then to float16) on the host.

>>> import numpy as np
>>> exp(np.array([0.0, 1.0])).tolist(), log(np.array([1.0, 0.0, -1.0])).tolist()[:2]
([1.0, 2.718281828459045], [0.0, -inf])
"""

from __future__ import annotations

import numpy as np

from klflow.kernels.fastmath import exp64, log64
from klflow.kernels.jit import jit
from klflow.kernels.vector_width import use_full_vector_width


@jit
def _exp(x: np.ndarray, out: np.ndarray) -> None:
    use_full_vector_width()
    for i in range(x.size):
        out[i] = exp64(x[i])


@jit
def _log(x: np.ndarray, out: np.ndarray) -> None:
    use_full_vector_width()
    for i in range(x.size):
        out[i] = log64(x[i])


def _apply(kernel, values: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)  # exact for every float dtype
    out = np.empty_like(flat)
    if flat.size:
        kernel(flat, out)
    return out.reshape(np.shape(values))


def exp(values: np.ndarray) -> np.ndarray:
    """e**x of every element, in float64."""
    return _apply(_exp, values)


def log(values: np.ndarray) -> np.ndarray:
    """The natural logarithm of every element, in float64 (NaN below 0, -inf at 0)."""
    return _apply(_log, values)
