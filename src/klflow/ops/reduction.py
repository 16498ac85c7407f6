"""Reductions of the exact loss sum: the divisor of each mode, the final rounding, OneFlow's names.

>>> reduction_divisor("batchmean", (4, 10)), reduction_divisor("mean", (4, 10))
(4, 40)
"""

from __future__ import annotations

import numpy as np

# OneFlow builds each reduction from a primitive op; its grad_fn is named after the last one.
_OP_NAMES = {"none": "kl_div_loss", "sum": "reduce_sum", "mean": "scalar_mul", "batchmean": "scalar_mul"}


def reduction_divisor(reduction: str, shape: tuple[int, ...]) -> int:
    """What the sum is divided by: 1, numel (``mean``) or shape[0] (``batchmean``).

    OneFlow leaves an empty ``mean`` as the sum (0) instead of 0/0; ``batchmean`` over a
    zero-length batch is 0/0 = NaN, as in OneFlow.
    """
    if reduction == "sum":
        return 1
    if reduction == "batchmean":
        return shape[0]
    numel = int(np.prod(shape, dtype=np.int64))
    return numel if numel > 0 else 1


def grad_name(reduction: str, shape: tuple[int, ...]) -> str:
    if reduction == "mean" and int(np.prod(shape, dtype=np.int64)) <= 1:
        return "reduce_sum"  # OneFlow skips the multiply by 1/numel when numel is 0 or 1
    return _OP_NAMES[reduction]
