"""The one interface the dispatcher asks of a device's kernels, and the choice of backend.

:mod:`klflow.kernels.cpu` and :mod:`klflow.kernels.cuda` both satisfy :class:`Backend`: the same
operations on flat arrays of their device, the same partial-sum kinds for reductions (an
exact-sum state, or the bounded fast path's :class:`~klflow.kernels.bounded_sum.BoundedSum`), so
that the dispatcher, the global layer and the final rounding (:mod:`klflow.kernels.rounding`) do
not depend on the device.

>>> import klflow as flow
>>> backend_for(flow.tensor([1.0])).__name__
'klflow.kernels.cpu'
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from klflow.kernels.bounded_sum import BoundedSum
from klflow.tensor import Tensor

Partial = Any  # the backend's own partial sum: :meth:`Backend.host_partial` gives a host kind


class Backend(Protocol):
    """A device's kernels. ``x``/``y`` are the input and target arrays of that device, of one
    shape and dtype; ``upstream`` is one number (the gradient of a reduced loss) or an array
    shaped like the inputs (``reduction='none'``)."""

    def pointwise(self, x: Any, y: Any, log_target: bool) -> Any:
        """Every loss element, in the inputs' dtype and shape."""

    def reduce(
        self, x: Any, y: Any, log_target: bool, divisor: int, grad_coef: float | None = None
    ) -> tuple[Any, Partial, Any]:
        """(the sum ÷ divisor rounded to the inputs' dtype, a 0-d array; the partial sum; with
        ``grad_coef``, d loss/d x × grad_coef written in the same pass, else None). The value is
        the correctly rounded exact sum (÷ divisor), the same bits on every backend."""

    def reduce_sum(
        self, x: Any, y: Any, log_target: bool, grad_coef: float | None = None
    ) -> tuple[np.ndarray, Any]:
        """(the exact-sum state of every term, on the host; the fused gradient or None)."""

    def host_partial(self, partial: Partial) -> np.ndarray | BoundedSum:
        """A partial sum of :meth:`reduce` on the host: an exact-sum state or a bounded one."""

    def input_grad_array(self, y: Any, upstream: Any, coef: float, log_target: bool) -> Any:
        """d loss/d x = coef × upstream × d element/d x."""

    def target_grad_array(self, x: Any, y: Any, upstream: Any, coef: float, log_target: bool) -> Any:
        """d loss/d y = coef × upstream × d element/d y."""


def backend_for(t: Tensor) -> Backend:
    """The kernels for a tensor's device: :mod:`klflow.kernels.cpu` or the CUDA one."""
    if t.device.type == "cpu":
        from klflow.kernels import cpu

        return cpu
    from klflow.kernels import cuda as cuda_kernels

    return cuda_kernels
