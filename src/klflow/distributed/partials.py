"""The partial sum of a reduced global loss: what each rank holds, and how the ranks combine it.

A rank's partial is an exact-sum state (:mod:`klflow.kernels.exact_sum`) of float64 block sums
with the running total of their magnitudes (the bounded fast path, :mod:`klflow.kernels.
bounded_sum`), or of its terms themselves (then the magnitude total is 0: nothing to bound).
Materialising all-reduces both as integers over the ranks the loss is partial across, so every
rank holds the same totals and takes the same decision: the value where the error bound proves
it (the exact path's bits), else every rank recomputes its exact state and a second all-reduce
gives the correctly rounded result. Either way the value does not depend on how the data was
spread over the ranks.

>>> import numpy as np
>>> from klflow import float32
>>> from klflow.distributed import comm
>>> from klflow.kernels import exact_sum
>>> state = exact_sum.new_state(); exact_sum.add_float(state, 1.5)
>>> PartialSum(state, 0.0, 1, float32).materialize(comm.world(), "an example")
array(1.5, dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from klflow import dtypes
from klflow.distributed.comm import Communicator
from klflow.kernels import exact_sum, rounding


def _make_summable(state: np.ndarray, ranks: int) -> None:
    """Ready a state for a digitwise all-reduce over ``ranks`` ranks: raw states sum safely
    ``RAW_STATES_SUMMABLE`` at a time, normalised ones far more (see :mod:`exact_sum`)."""
    if ranks > exact_sum.RAW_STATES_SUMMABLE:
        exact_sum.normalize(state)


@dataclass
class PartialSum:
    """One rank's share of a reduced loss, ``divisor`` (numel, batch size or 1) and result
    ``dtype``. ``exact_state`` recomputes the exact state of this rank's terms for the rare
    sums the bound cannot decide; it keeps the rank's input components for that, as the backward
    pass does (modifying them in place before the loss is materialised changes that
    recomputation, as it changes the gradient). ``None`` means ``state`` is already exact."""

    state: np.ndarray
    magnitude_total: float
    divisor: int
    dtype: dtypes.dtype
    exact_state: Callable[[], np.ndarray] | None = None

    def materialize(self, group: Communicator, call: str) -> np.ndarray:
        """The loss's value on every rank of ``group`` (collective over it)."""
        if group.size == 1:  # nothing to combine: decide from this rank's own partial
            value = rounding.bounded_value(self.state, self.magnitude_total, self.divisor, self.dtype.numpy)
            if value is not None:
                return value
            exact = self.exact_state() if self.exact_state is not None else self.state
            return rounding.finish(exact, self.divisor, self.dtype.numpy)
        half = exact_sum.STATE_LEN
        with group.collective(call) as c:
            local = np.concatenate([self.state, exact_sum.new_state()])
            exact_sum.add_float(local[half:], self.magnitude_total)  # exact; NaN/inf go to counters
            _make_summable(local[:half], group.size)
            _make_summable(local[half:], group.size)
            total = c.allreduce_sum(local)
        magnitude_total = exact_sum.to_float64(total[half:])
        value = rounding.bounded_value(total[:half], magnitude_total, self.divisor, self.dtype.numpy)
        if value is not None:
            return value
        with group.collective(f"{call}, exactly (the bound could not decide)") as c:
            exact = (self.exact_state() if self.exact_state is not None else self.state).copy()
            _make_summable(exact, group.size)
            total = c.allreduce_sum(exact)
        return rounding.finish(total, self.divisor, self.dtype.numpy)
