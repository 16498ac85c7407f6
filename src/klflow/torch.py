"""``klflow.torch``: klflow's KL divergence on PyTorch tensors, with PyTorch autograd.

``kl_div(input, target, reduction=..., log_target=...)`` returns a torch tensor; its backward in
torch's autograd is klflow's fused gradient. The torch tensors are shared with klflow through
DLPack (no copies: host tensors, and CUDA tensors through ``__cuda_array_interface__``), and so
are the results and gradients handed back. OneFlow's semantics apply (``docs/semantics.md``):
equal shapes and dtypes, a target at or below 0 contributes exactly 0 and no input gradient.

With ``placement=`` and ``sbp=`` the torch tensors are *this rank's components* of global
tensors, and the result is the exact global loss (the same bits on any number of ranks): a
PyTorch job launched with ``mpiexec`` gets klflow's reproducible, distributed KL, and
``loss.backward()`` reaches its own model. A reduced loss is the logical value on every rank;
``reduction='none'`` returns this rank's component. Every rank must make the same calls.

Torch gets first derivatives: a second one through this loss is refused (its gradient carries no
torch graph; klflow's own tensors have second derivatives). Needs PyTorch
(``pip install klflow[torch]``); klflow itself never imports it.

>>> import torch, klflow.torch
>>> x = torch.tensor([[-1.0, -0.5]], requires_grad=True)
>>> loss = klflow.torch.kl_div(x, torch.tensor([[0.25, 0.75]]), reduction="batchmean")
>>> loss.backward(); x.grad
tensor([[-0.2500, -0.7500]])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import klflow as flow
import klflow.nn.functional as F
from klflow.utils.dlpack import from_dlpack

__all__ = ["kl_div"]


def _to_klflow(t: torch.Tensor) -> flow.Tensor:
    """A klflow tensor sharing ``t``'s memory (``t`` detached from torch's graph)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"klflow.torch.kl_div expects torch tensors, got {type(t).__name__}")
    t = t.detach()
    if t.is_cuda:
        from klflow import cuda

        wrapped = cuda.wrap_interface(t)  # torch's __cuda_array_interface__: the same memory
        return flow.Tensor(wrapped, device=cuda.device_of(wrapped))
    if t.device.type != "cpu":
        raise TypeError(f"klflow.torch.kl_div takes CPU or CUDA tensors, got one on {t.device}")
    if t.dtype == torch.bfloat16:  # NumPy's DLPack has no bfloat16: share the bits as int16
        from klflow.kernels.bfloat16 import BFLOAT16

        return flow.from_numpy(t.view(torch.int16).numpy().view(BFLOAT16))
    return from_dlpack(t)


def _to_torch(t: flow.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A torch tensor sharing the memory of a local klflow tensor, on ``like``'s device."""
    t = t.detach()
    if t.is_cuda:
        if t.ndim == 0:  # a reduced loss: one number, finished on the host
            return torch.tensor(t.item(), dtype=getattr(torch, t.dtype.numpy.name), device=like.device)
        return torch.as_tensor(t._data, device=like.device)  # through __cuda_array_interface__
    data = t._data
    if t.dtype == flow.bfloat16:
        return torch.from_numpy(np.array(data).view(np.int16)).view(torch.bfloat16)
    if data.ndim == 0 or not data.flags.writeable:
        return torch.from_numpy(np.array(data))  # a 0-d result: one number
    return torch.from_dlpack(t)


class _KLDiv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, reduction, log_target, placement, sbp):
        x, y = _to_klflow(input), _to_klflow(target)
        x.requires_grad = bool(ctx.needs_input_grad[0])
        y.requires_grad = bool(ctx.needs_input_grad[1])
        with flow.enable_grad():  # torch turns its own recording off here, not klflow's
            gx, gy = x, y
            if placement is not None:
                gx, gy = x.to_global(placement, sbp), y.to_global(placement, sbp)
            loss = F.kl_div(gx, gy, reduction=reduction, log_target=log_target)
        ctx.klflow = (x, y, loss, placement, reduction)
        if placement is None:
            return _to_torch(loss, input)
        if reduction == "none":
            return _to_torch(loss.to_local(), input)
        value = loss.numpy()  # the logical value, on every rank (collective)
        return torch.as_tensor(np.array(value), device=input.device)

    @staticmethod
    @torch.autograd.function.once_differentiable  # klflow's gradient has no torch graph
    def backward(ctx, grad_output):
        x, y, loss, placement, reduction = ctx.klflow
        if not loss.requires_grad:
            return None, None, None, None, None, None
        gradient = _to_klflow(grad_output.contiguous())
        if gradient.dtype != loss.dtype:
            gradient = gradient.to(loss.dtype)
        if placement is not None:
            # A reduced loss's gradient is one logical number (rank 0's, as broadcast means); a
            # 'none' loss's gradient arrives as this rank's component of the output's layout.
            sbp = loss.sbp if reduction == "none" else tuple(flow.sbp.broadcast for _ in loss.sbp)
            gradient = gradient.to_global(placement, sbp)
        loss.backward(gradient)
        ctx.klflow = None
        grads = [
            _to_torch(t.grad, grad_output) if needed and t.grad is not None else None
            for t, needed in ((x, ctx.needs_input_grad[0]), (y, ctx.needs_input_grad[1]))
        ]
        return grads[0], grads[1], None, None, None, None


def kl_div(
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    log_target: bool = False,
    *,
    placement: Any = None,
    sbp: Any = None,
) -> torch.Tensor:
    """klflow's ``kl_div`` (OneFlow's semantics) of torch tensors, differentiable in torch.

    ``placement``/``sbp`` (both or neither) make ``input`` and ``target`` this rank's components
    of global tensors with that layout; see the module docstring.
    """
    F.check_reduction(reduction)
    F.check_log_target(log_target)
    if (placement is None) != (sbp is None):
        raise ValueError("placement and sbp go together: give both (global tensors) or neither (local)")
    return _KLDiv.apply(input, target, reduction, log_target, placement, sbp)
