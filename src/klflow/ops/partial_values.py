"""Exact records of partial-sum tensors made by arithmetic and reductions.

A partial-sum global tensor's components sum to its value; summed as floats, that sum would
depend on how many ranks hold them. A tensor made by klflow's own reductions or arithmetic
therefore carries, beside its components, a record from which every rank gets the value with
the single-process bits (boxing and ``numpy()`` use it: :func:`klflow.distributed.boxing.
redistribute` calls ``record.materialize(group, call)``):

* :class:`ExactStates`: a sum over a split dim — one exact-sum state per element of this rank's
  component; the ranks all-reduce the integer states and every one rounds the same exact sums.
* :class:`Deferred`: an operation on partial-sum tensors that keeps them partial (``P + P``,
  ``P * c``, ``P + c``, ``sum(P)``): its value is the operation applied to the operands' *values*
  (each materialised from its own record), which is what the single process computes on them.
  So ``(loss1 + loss2).item()`` is the float sum of the two correctly rounded losses, and
  ``(loss * 0.5).item()`` the rounded loss times 0.5, on any number of ranks.

A partial-sum tensor made from plain components (``to_global(sbp=partial_sum)``) has no record;
its value is the float all-reduce of its components, and so are the results of operations on it.

>>> import numpy as np
>>> from klflow.distributed import comm
>>> from klflow.kernels import exact_rows
>>> record = ExactStates(exact_rows.row_states(np.array([[0.1, 0.2]]))[0], 1, np.dtype(np.float64))
>>> Deferred(lambda v: v * 2, (record,)).materialize(comm.world(), "an example")
array(0.6)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from klflow.distributed.comm import Communicator
from klflow.kernels import exact_rows, exact_sum


@dataclass
class ExactStates:
    """Exact-sum states (``(*component_shape, STATE_LEN)`` int64) of this rank's share of a sum,
    the ``divisor`` of a mean (1 for a sum) and the result's ``dtype``."""

    states: np.ndarray
    divisor: int
    dtype: np.dtype

    def materialize(self, group: Communicator, call: str) -> np.ndarray:
        total = self.states
        if group.size > 1:
            with group.collective(call) as c:
                local = self.states.copy()
                if group.size > exact_sum.RAW_STATES_SUMMABLE:
                    for row in local.reshape(-1, exact_sum.STATE_LEN):
                        exact_sum.normalize(row)
                total = c.allreduce_sum(local)
        return exact_rows.round_rows(total, self.divisor, self.dtype)


@dataclass
class Deferred:
    """``function(*values)``, where each operand is a record (materialised first, in order) or a
    host array (a value every rank of the group already holds)."""

    function: Callable[..., np.ndarray]
    operands: Sequence[Any]

    def materialize(self, group: Communicator, call: str) -> np.ndarray:
        values = [
            op.materialize(group, f"{call}, operand {i}") if is_record(op) else op
            for i, op in enumerate(self.operands)
        ]
        return np.asarray(self.function(*values))


def is_record(value: Any) -> bool:
    return hasattr(value, "materialize")
