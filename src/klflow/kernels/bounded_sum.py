"""Plain float64 sums with a proven error bound: the fast path of reductions to float32/float16.

A block of at most ``BLOCK_LIMIT`` terms is added in float64 in whatever order vectorises best
(:func:`add_any_order`), and so are the magnitudes of its terms. The sum of each block then goes
into an exact accumulator (:mod:`klflow.kernels.exact_sum`), and the magnitudes into one float64
running total ``A``. :func:`error_bound` turns ``A`` into ``E`` with

    |(exact sum of the block sums) - (exact sum of the terms)| <= E.

A caller that rounds its result to float32 or float16 takes the rounded value of the exact sum
of block sums only where ``sum - E`` and ``sum + E`` round to the same bits: rounding is monotone,
so the exact sum of the terms, which lies between them, rounds to those bits as well. The result
is then bit for bit what the exact summation of every term gives, whatever the number of threads
and blocks; elsewhere the caller recomputes exactly. ``E`` is about ``2**-40`` of the sum of
magnitudes, far below a float32 ulp, so the second pass is for sums that sit within that distance
of a rounding boundary (or hold NaN or infinities).

Why ``E`` bounds the error (``u = 2**-53``, ``g(k) = k u / (1 - k u)``):

* Any order of adding ``n`` doubles, vectorised lanes and their zero starting values included,
  is a tree whose root-to-leaf paths have fewer than ``n + LANE_LIMIT`` additions, so a block sum
  errs by at most ``g(k) * sum|t|`` with ``k = BLOCK_LIMIT + LANE_LIMIT`` (Higham, *Accuracy and
  Stability of Numerical Algorithms*, 2nd ed., §4.2; addition in gradual underflow is exact, so
  the bound needs no absolute term).
* Only the depth counts, not the number of terms: the CUDA kernels' block sums hold far more
  than ``BLOCK_LIMIT`` terms, added by a tree no path of which is longer than ``k`` (see
  :mod:`klflow.kernels.cuda`), and the bound holds for them unchanged.
* The block's magnitude sum ``a`` satisfies ``a >= (1 - g(k)) sum|t|``, and ``A``, a float64 sum
  of at most ``2**43`` such ``a``, satisfies ``A >= (1 - g(2**43)) sum a``.
* Hence the total error is at most ``g(k) / ((1 - g(k)) (1 - g(2**43))) * A < 1.01 k u A``;
  ``E = fl(2 k u A) + 2**-1074`` exceeds that by a margin that covers the rounding of the
  product, also when it lands among the subnormals (the error, a difference of doubles, is a
  multiple of ``2**-1074``).

>>> error_bound(0.0), 2.0**-40 < error_bound(1.0) < 2.0**-39
(0.0, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import types
from numba.extending import intrinsic

# Result dtypes the bounded fast path can prove: its bound (~2**-40) is far below their ulp.
BOUNDED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
BLOCK_LIMIT = 4096  # the most terms one block sum may take
LANE_LIMIT = 1024  # generous bound on the starting zeros a vectorised sum adds
_ORDER_TERMS = BLOCK_LIMIT + LANE_LIMIT
_UNIT_ROUNDOFF = 2.0**-53
_BOUND_FACTOR = 2.0 * _ORDER_TERMS * _UNIT_ROUNDOFF  # about 2**-40
_SMALLEST_SUBNORMAL = 5e-324


@intrinsic
def add_any_order(typingctx, total, term):
    """``total + term`` as a float64 addition LLVM may reassociate (``reassoc`` flag only), so
    that a loop summing with it vectorises into lanes. Nothing else in the loop is affected:
    the terms are computed exactly as elsewhere."""
    if total != types.float64 or term != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1], flags=("reassoc",))

    return types.float64(types.float64, types.float64), codegen


def error_bound(magnitude_total: float) -> float:
    """``E`` for a running total ``A`` of block magnitude sums (see the module docstring); NaN
    or infinity if ``A`` is (no bound then). A zero ``A`` means every term was zero, and every
    sum of them exactly zero. Plain Python: it runs once per reduction, on the host."""
    if magnitude_total == 0.0:
        return 0.0
    return magnitude_total * _BOUND_FACTOR + _SMALLEST_SUBNORMAL


@dataclass(frozen=True)
class BoundedSum:
    """The bounded fast path's partial sum: ``state`` holds the exact sum of the float64 block
    sums, ``magnitude_total`` the running total of their magnitude sums. Partials of several
    ranks combine by adding both; :func:`klflow.kernels.rounding.bounded_value` then decides (or
    the exact path runs)."""

    state: np.ndarray
    magnitude_total: float
