"""Exact sums of the rows of a 2-D float array: one exact-sum state per row, and their rounding.

The reductions of tensors (``sum``, ``mean``, the gradient of a broadcast operand) reduce the
trailing axis of a ``(rows, n)`` view; every row's terms go exactly into its own state of
:mod:`klflow.kernels.exact_sum`, so the result is the correctly rounded sum, whatever the order of
the terms or how they are spread over ranks (states of the same row add as integers); plain float64
addition of the second row below gives 0.6000000000000001.

>>> import numpy as np
>>> states = row_states(np.array([[1e300, 1.0, -1e300], [0.1, 0.2, 0.3]]))
>>> round_rows(states, 1, np.float64).tolist()
[1.0, 0.6]
"""

from __future__ import annotations

import numpy as np

from klflow.kernels import exact_sum, rounding
from klflow.kernels.jit import jit

_BLOCK = 2048  # terms per add_terms call: the scratch buffer stays in the L1 cache


@jit
def _row_states(values: np.ndarray, states: np.ndarray) -> None:
    rows, n = values.shape
    buf = np.empty(_BLOCK, dtype=np.float64)
    for r in range(rows):
        state = states[r]
        for start in range(0, n, _BLOCK):
            count = min(_BLOCK, n - start)
            for i in range(count):
                buf[i] = np.float64(values[r, start + i])
            exact_sum.add_terms(state, buf, count)


def row_states(values: np.ndarray) -> np.ndarray:
    """``(rows, STATE_LEN)`` int64 states holding the exact sum of each row of ``values`` (any
    float dtype; converted to float64 exactly)."""
    values = np.ascontiguousarray(values)
    if values.dtype != np.float64:
        values = values.astype(np.float64)  # exact for float16/32
    states = np.zeros((values.shape[0], exact_sum.STATE_LEN), dtype=np.int64)
    if values.size:
        _row_states(values, states)
    return states


def round_rows(states: np.ndarray, divisor: int, dtype: np.dtype) -> np.ndarray:
    """Each state's exact sum ÷ ``divisor`` rounded to ``dtype`` (see :func:`rounding.finish`)."""
    flat = states.reshape(-1, exact_sum.STATE_LEN)
    out = np.empty(flat.shape[0], dtype=dtype)
    for r in range(flat.shape[0]):
        out[r] = rounding.finish(flat[r], divisor, dtype)
    return out.reshape(states.shape[:-1])
