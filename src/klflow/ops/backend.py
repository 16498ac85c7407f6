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

from klflow.kernels import rounding
from klflow.kernels.bfloat16 import bfloat16_dtype, is_bfloat16, round_to_bfloat16, widen
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


class WidenedBackend:
    """bfloat16 on the CPU: the float64 kernels on inputs widened exactly, every result rounded
    once to bfloat16. The kernels' arithmetic is float64 for every dtype, so the elements are
    the values the float16 path computes for its inputs; the reductions add the same terms
    exactly and round the exact sum once (or divide its correctly rounded float64 value), as for
    float16, and outputs and gradients are rounded straight from float64, never through float32.
    A reduction without the fused gradient runs on float32 copies (exact) instead, to take the
    bounded fast path: the same terms, and a bfloat16 result the bound proves (or the exact one).
    """

    __name__ = "klflow.ops.backend.WidenedBackend"

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def pointwise(self, x: Any, y: Any, log_target: bool) -> Any:
        return round_to_bfloat16(self.inner.pointwise(widen(x), widen(y), log_target))

    def reduce(
        self, x: Any, y: Any, log_target: bool, divisor: int, grad_coef: float | None = None
    ) -> tuple[Any, Partial, Any]:
        if grad_coef is None:
            # float32 holds every bfloat16 exactly and its kernels compute the same float64 terms,
            # through the bounded fast path; the bound then decides the bfloat16 result itself.
            _, partial, _ = self.inner.reduce(
                np.asarray(x).astype(np.float32), np.asarray(y).astype(np.float32), log_target, divisor
            )
            found = self.inner.host_partial(partial)
            if not isinstance(found, BoundedSum):
                return rounding.finish(found, divisor, bfloat16_dtype()), partial, None
            value = rounding.bounded_value(found.state, found.magnitude_total, divisor, bfloat16_dtype())
            if value is not None:
                return value, partial, None
            state, _ = self.reduce_sum(x, y, log_target)  # not proven: add every term exactly
            return rounding.finish(state, divisor, bfloat16_dtype()), state, None
        state, grad = self.inner.reduce_sum(widen(x), widen(y), log_target, grad_coef)
        return rounding.finish(state, divisor, bfloat16_dtype()), state, _narrowed(grad)

    def reduce_sum(
        self, x: Any, y: Any, log_target: bool, grad_coef: float | None = None
    ) -> tuple[np.ndarray, Any]:
        state, grad = self.inner.reduce_sum(widen(x), widen(y), log_target, grad_coef)
        return state, _narrowed(grad)

    def host_partial(self, partial: Partial) -> np.ndarray | BoundedSum:
        return self.inner.host_partial(partial)

    def input_grad_array(self, y: Any, upstream: Any, coef: float, log_target: bool) -> Any:
        return round_to_bfloat16(self.inner.input_grad_array(widen(y), _wide(upstream), coef, log_target))

    def target_grad_array(self, x: Any, y: Any, upstream: Any, coef: float, log_target: bool) -> Any:
        grad = self.inner.target_grad_array(widen(x), widen(y), _wide(upstream), coef, log_target)
        return round_to_bfloat16(grad)


def _wide(upstream: Any) -> Any:
    return widen(upstream) if isinstance(upstream, np.ndarray) else upstream


def _narrowed(grad: Any) -> Any:
    return None if grad is None else round_to_bfloat16(grad)


def backend_for(t: Tensor) -> Backend:
    """The kernels for a tensor's device: :mod:`klflow.kernels.cpu` or the CUDA one (bfloat16
    through :class:`WidenedBackend`)."""
    if t.device.type == "cpu":
        from klflow.kernels import cpu

        return WidenedBackend(cpu) if is_bfloat16(t.dtype) else cpu
    from klflow.kernels import cuda as cuda_kernels

    return cuda_kernels
