"""Dispatch of the KL-divergence loss: pick the backend, apply the reduction, record the backward.

Inputs arrive validated (see :mod:`klflow.nn.functional`). Global inputs go to
:mod:`klflow.distributed.loss`, which computes on the local components with the same functions.

>>> import klflow as flow
>>> x = flow.tensor([0.5, 1.0]); y = flow.tensor([0.25, 0.75])
>>> kl_div(x, y, "mean", False)
tensor(-0.7187, dtype=klflow.float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klflow.autograd import graph
from klflow.ops.reduction import grad_name, reduction_divisor
from klflow.tensor import Tensor


def backend_for(t: Tensor) -> Any:
    """The kernel module for a tensor's device: :mod:`klflow.kernels.cpu` or the CUDA one."""
    if t.device.type == "cpu":
        from klflow.kernels import cpu

        return cpu
    from klflow.kernels import cuda as cuda_kernels

    return cuda_kernels


class KlDivBackward(graph.Node):
    """Gradients of the loss for both inputs, scaled by the reduction.

    For a reduced loss whose input needs a gradient, the forward pass already wrote
    d loss/d input for an upstream gradient of 1 (one fused pass over the data); backward hands
    that array over when the upstream gradient is 1 and recomputes otherwise.
    """

    def __init__(
        self,
        input: Tensor,
        target: Tensor,
        reduction: str,
        log_target: bool,
        coef: float,
        fused_input_grad: Any,
        op_name: str,
    ) -> None:
        super().__init__([input, target])
        self.op_name = op_name
        self.x = input._data
        self.y = target._data
        self.reduction = reduction
        self.log_target = log_target
        self.coef = coef
        self.fused_input_grad = fused_input_grad
        self.backend = backend_for(input)
        self.device = input.device

    def backward(self, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        upstream = _local_upstream(grad_output, self.reduction)
        grads: list[Tensor | None] = [None, None]
        if self.needs_input_grad(0):
            if self.fused_input_grad is not None and _is_one(upstream):
                data, self.fused_input_grad = self.fused_input_grad, None
            else:
                data = self.backend.input_grad_array(self.y, upstream, self.coef, self.log_target)
            grads[0] = Tensor(data, device=self.device)
        if self.needs_input_grad(1):
            data = self.backend.target_grad_array(self.x, self.y, upstream, self.coef, self.log_target)
            grads[1] = Tensor(data, device=self.device)
        return tuple(grads)

    def release(self) -> None:
        super().release()
        self.x = self.y = self.fused_input_grad = None


def _local_upstream(grad_output: Tensor, reduction: str) -> Any:
    if reduction == "none":
        return grad_output._data
    if grad_output._fill_value is not None:  # the implicit seed: no need to read it back
        return float(grad_output._fill_value)
    from klflow.conversion import host_values

    return float(np.asarray(host_values(grad_output), dtype=np.float64).reshape(()))


def _is_one(upstream: Any) -> bool:
    return isinstance(upstream, float) and upstream == 1.0


def kl_div_local(
    input: Tensor,
    target: Tensor,
    reduction: str,
    log_target: bool,
    divisor_shape: tuple[int, ...] | None = None,
    exact_state_needed: bool = True,
) -> tuple[Tensor, Any]:
    """The loss of local tensors. Returns the output and, for reduced modes, the backend's partial
    sum (an exact-sum state on the CPU; ``backend.exact_state`` turns a device total into one).
    ``exact_state_needed=False`` lets the backend take a faster path to the same value, whose
    partial may then be of its own kind (``cpu.BoundedSum``); ``none`` returns no partial.

    ``divisor_shape`` is the logical shape used for ``mean``/``batchmean`` (a global tensor's
    component divides by the whole tensor's numel or batch size).
    """
    backend = backend_for(input)
    record = graph.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    logical_shape = tuple(divisor_shape if divisor_shape is not None else input.shape)
    if reduction == "none":
        out_data = backend.pointwise(input._data, target._data, log_target)
        out = Tensor(out_data, device=input.device)
        state = None
        coef = 1.0
        fused = None
    else:
        divisor = reduction_divisor(reduction, logical_shape)
        coef = 1.0 / divisor if divisor else float("nan")
        want_fused = record and input.requires_grad
        value, state, fused = backend.reduce(
            input._data,
            target._data,
            log_target,
            divisor,
            coef if want_fused else None,
            exact_state_needed=exact_state_needed,
        )
        out = Tensor(value, device=input.device)
    if record:
        out.grad_fn = KlDivBackward(
            input,
            target,
            reduction,
            log_target,
            coef,
            fused,
            grad_name(reduction, logical_shape),
        )
        out._requires_grad = True
    return out, state


def kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    """The loss for validated inputs (both local, or both global on one placement)."""
    if input.is_global:
        from klflow.distributed import loss as global_loss

        return global_loss.kl_div(input, target, reduction, log_target)
    out, _ = kl_div_local(input, target, reduction, log_target, exact_state_needed=False)
    return out
